package proto

import (
	"encoding/json"
	"errors"
	"unicode/utf8"
)

var errNotObject = errors.New("not a JSON object")

// Fields calls fn for each member of the JSON object in data, in order,
// with its key (unescaped) and the raw bytes of its value. Keys match
// exactly (unlike encoding/json's case-folding struct fields); a repeated
// key is reported each time, so the last one wins for a caller that
// overwrites. It finds the extent of each value without validating
// numbers or literals: callers decode the values they use. Both slices
// may point into data; a caller comparing the key with string(key) in a
// switch or a map lookup allocates nothing.
func Fields(data []byte, fn func(key, value []byte)) error {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return errNotObject
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return trailing(data, i+1)
	}
	for {
		if i >= len(data) || data[i] != '"' {
			return errNotObject
		}
		end, err := stringEnd(data, i)
		if err != nil {
			return err
		}
		key, err := decodeKey(data[i:end])
		if err != nil {
			return err
		}
		i = skipSpace(data, end)
		if i >= len(data) || data[i] != ':' {
			return errNotObject
		}
		i = skipSpace(data, i+1)
		vend, err := valueEnd(data, i)
		if err != nil {
			return err
		}
		fn(key, data[i:vend])
		i = skipSpace(data, vend)
		if i >= len(data) {
			return errNotObject
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			return trailing(data, i+1)
		default:
			return errNotObject
		}
	}
}

func trailing(data []byte, i int) error {
	if skipSpace(data, i) != len(data) {
		return errNotObject
	}
	return nil
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && isSpace(data[i]) {
		i++
	}
	return i
}

// stringEnd returns the index just past the string starting at data[i].
func stringEnd(data []byte, i int) (int, error) {
	for j := i + 1; j < len(data); j++ {
		switch data[j] {
		case '\\':
			j++
		case '"':
			return j + 1, nil
		}
	}
	return 0, errNotObject
}

// valueEnd returns the index just past the value starting at data[i].
func valueEnd(data []byte, i int) (int, error) {
	if i >= len(data) {
		return 0, errNotObject
	}
	switch data[i] {
	case '"':
		return stringEnd(data, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(data); j++ {
			switch data[j] {
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1, nil
				}
			case '"':
				end, err := stringEnd(data, j)
				if err != nil {
					return 0, err
				}
				j = end - 1
			}
		}
		return 0, errNotObject
	case ',', '}', ']', ':':
		return 0, errNotObject
	}
	j := i
	for j < len(data) && !isSpace(data[j]) && data[j] != ',' && data[j] != '}' && data[j] != ']' {
		j++
	}
	return j, nil
}

func decodeKey(quoted []byte) ([]byte, error) {
	if body, ok := plainBytes(quoted); ok {
		return body, nil
	}
	var s string
	if err := json.Unmarshal(quoted, &s); err != nil {
		return nil, errNotObject
	}
	return []byte(s), nil
}

// plainString returns the contents of a JSON string with no escapes, the
// common case that needs no decoding.
func plainString(quoted []byte) (string, bool) {
	body, ok := plainBytes(quoted)
	if !ok {
		return "", false
	}
	return string(body), true
}

// plainBytes is plainString without the copy: the contents, in quoted.
func plainBytes(quoted []byte) ([]byte, bool) {
	if len(quoted) < 2 || quoted[0] != '"' || quoted[len(quoted)-1] != '"' {
		return nil, false
	}
	body := quoted[1 : len(quoted)-1]
	for _, c := range body {
		if c == '\\' || c == '"' || c < 0x20 {
			return nil, false
		}
	}
	if !utf8.Valid(body) {
		return nil, false
	}
	return body, true
}

// String decodes a raw JSON value that must be a string.
func String(raw []byte) (string, bool) {
	if s, ok := plainString(raw); ok {
		return s, true
	}
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}
