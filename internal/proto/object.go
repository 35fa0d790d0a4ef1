package proto

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// Object encodes alternating keys and values as a compact JSON object,
// keeping the given key order so lines read like the protocol document
// ({"cmd":…,"result":…,…}). A json.RawMessage value is written as is.
// Strings, integers and booleans are encoded without reflection: every
// message and reply is built here.
func Object(kv ...any) []byte {
	b := make([]byte, 0, 64+16*len(kv))
	b = append(b, '{')
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b = append(b, ',')
		}
		k, _ := kv[i].(string)
		b = AppendString(b, k)
		b = append(b, ':')
		b = appendValue(b, kv[i+1])
	}
	return append(b, '}')
}

func appendValue(b []byte, v any) []byte {
	switch v := v.(type) {
	case string:
		return AppendString(b, v)
	case int:
		return strconv.AppendInt(b, int64(v), 10)
	case int64:
		return strconv.AppendInt(b, v, 10)
	case uint64:
		return strconv.AppendUint(b, v, 10)
	case bool:
		return strconv.AppendBool(b, v)
	case json.RawMessage:
		if len(v) == 0 {
			return append(b, "null"...)
		}
		return append(b, v...)
	}
	j, err := json.Marshal(v)
	if err != nil {
		return append(b, "null"...)
	}
	return append(b, j...)
}

// AppendString appends s as a JSON string, escaped as encoding/json does
// (including <, > and & as \u003c…, and invalid UTF-8 as \ufffd).
func AppendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// Result is the common {"cmd":"<cmd>_reply","result":r, extra…} reply.
func Result(cmd, r string, extra ...any) []byte {
	return Object(append([]any{"cmd", cmd + "_reply", "result", r}, extra...)...)
}

// StrField returns the value of a string field of a compact object this
// package built, without decoding it: for reading "cmd" and "result" of
// replies on hot paths. Values with escapes are not supported; it returns
// "" when the field is absent.
func StrField(obj []byte, key string) string {
	for i := 0; i+len(key)+5 <= len(obj); i++ {
		if obj[i] != '"' || string(obj[i+1:i+1+len(key)]) != key || string(obj[i+1+len(key):i+4+len(key)]) != `":"` {
			continue
		}
		v := obj[i+4+len(key):]
		for j, b := range v {
			if b == '"' {
				return string(v[:j])
			}
		}
		return ""
	}
	return ""
}
