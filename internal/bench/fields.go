package bench

import (
	"encoding/json"
	"errors"
)

// Fields holds the top-level fields of one server line that the generator
// looks at. The generator shares the machine with the server it measures,
// and decoding every line with encoding/json would cost it about as much
// CPU as the server spends on the message, so lines are scanned in place:
// string values alias the line (valid only as long as the line is) unless
// they contain escapes. Fields absent from the line are nil.
type Fields struct {
	Cmd, Result, Reason, Text, User, UserFrom, UserTo, Group, Friend, Filename []byte
	// ID is the request id the server echoes, when it is a string.
	ID []byte
	// Port and Length may be JSON numbers or strings; they hold the
	// number's text or the string's contents.
	Port, Length []byte
	// LengthIsString records which form Length had, because the server
	// must echo the form the client used.
	LengthIsString bool
}

var (
	errNotObject = errors.New("not a JSON object")
	errSyntax    = errors.New("malformed JSON")
)

// Parse fills f from one line. It checks the structure enough never to
// misread a field, but it is not a validator: a malformed number inside a
// value it skips goes unnoticed, which is fine for a load generator.
func (f *Fields) Parse(b []byte) error {
	*f = Fields{}
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return errNotObject
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return trailing(b, i+1)
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return errSyntax
		}
		key, next, _, err := scanString(b, i)
		if err != nil {
			return err
		}
		i = skipWS(b, next)
		if i >= len(b) || b[i] != ':' {
			return errSyntax
		}
		i = skipWS(b, i+1)
		if i >= len(b) {
			return errSyntax
		}
		var val []byte
		isStr := b[i] == '"'
		if isStr {
			raw, next, escaped, err := scanString(b, i)
			if err != nil {
				return err
			}
			val = raw
			if escaped {
				// Rare (the generator's own names need no escapes), so
				// the allocating decoder is fine here.
				var s string
				if json.Unmarshal(b[i:next], &s) != nil {
					return errSyntax
				}
				val = []byte(s)
			}
			i = next
		} else {
			next, err := skipValue(b, i)
			if err != nil {
				return err
			}
			val = b[i:next]
			i = next
		}
		f.set(key, val, isStr)
		i = skipWS(b, i)
		if i >= len(b) {
			return errSyntax
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			return trailing(b, i+1)
		default:
			return errSyntax
		}
	}
}

func (f *Fields) set(key, val []byte, isStr bool) {
	switch string(key) {
	case "port":
		f.Port = val
		return
	case "length":
		f.Length, f.LengthIsString = val, isStr
		return
	}
	if !isStr {
		return // a non-string where a string belongs reads as absent
	}
	switch string(key) {
	case "cmd":
		f.Cmd = val
	case "result":
		f.Result = val
	case "reason":
		f.Reason = val
	case "text":
		f.Text = val
	case "user":
		f.User = val
	case "user_from":
		f.UserFrom = val
	case "user_to":
		f.UserTo = val
	case "group":
		f.Group = val
	case "friend":
		f.Friend = val
	case "filename":
		f.Filename = val
	case "id":
		f.ID = val
	}
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

func trailing(b []byte, i int) error {
	if skipWS(b, i) != len(b) {
		return errSyntax
	}
	return nil
}

// scanString reads the string starting at b[i] == '"' and returns its raw
// contents, the index after the closing quote, and whether it has escapes.
func scanString(b []byte, i int) (raw []byte, next int, escaped bool, err error) {
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '\\':
			escaped = true
			j++ // the escaped byte cannot end the string
		case c == '"':
			return b[i+1 : j], j + 1, escaped, nil
		case c < 0x20:
			return nil, 0, false, errSyntax
		}
	}
	return nil, 0, false, errSyntax
}

// skipValue returns the index after the non-string value at b[i].
func skipValue(b []byte, i int) (int, error) {
	if c := b[i]; c == '{' || c == '[' {
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				_, next, _, err := scanString(b, j)
				if err != nil {
					return 0, err
				}
				j = next - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, errSyntax
	}
	j := i
	for j < len(b) && literalByte(b[j]) {
		j++
	}
	if j == i {
		return 0, errSyntax
	}
	return j, nil
}

func literalByte(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '.' || c == '-' || c == '+'
}

// parseUint parses a decimal without sign; ok is false for anything else,
// including overflow past 2^62 (far beyond any counter here).
func parseUint(b []byte) (v int64, ok bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
	}
	return v, true
}

// parseStamp splits the generator's message text "k:seq:nanos" (three
// decimals) as written by appendStamp.
func parseStamp(b []byte) (k, seq, ts int64, ok bool) {
	var parts [3]int64
	n := 0
	start := 0
	for i := 0; i <= len(b); i++ {
		if i < len(b) && b[i] != ':' {
			continue
		}
		if n == len(parts) {
			return 0, 0, 0, false
		}
		v, ok := parseUint(b[start:i])
		if !ok {
			return 0, 0, 0, false
		}
		parts[n] = v
		n++
		start = i + 1
	}
	if n != len(parts) {
		return 0, 0, 0, false
	}
	return parts[0], parts[1], parts[2], true
}
