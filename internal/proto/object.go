package proto

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nuid"
)

// Object encodes alternating keys and values as a compact JSON object,
// keeping the given key order so lines read like the protocol document
// ({"cmd":…,"result":…,…}). A json.RawMessage value is written as is.
// Strings, integers and booleans are encoded without reflection, and any
// other value as null: every message and reply is built here.
func Object(kv ...any) []byte {
	b := make([]byte, 0, 64+16*len(kv))
	b = append(b, '{')
	return append(appendMembers(b, kv), '}')
}

// appendMembers appends kv's members, each after a comma unless it is
// the object's first.
func appendMembers(b []byte, kv []any) []byte {
	for i := 0; i+1 < len(kv); i += 2 {
		if b[len(b)-1] != '{' {
			b = append(b, ',')
		}
		k, _ := kv[i].(string)
		b = AppendString(b, k)
		b = append(b, ':')
		b = appendValue(b, kv[i+1])
	}
	return b
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
	// Other types are not written: encoding them by reflection would make
	// every argument escape, and each message built here cost an
	// allocation per value boxed by the caller.
	return append(b, "null"...)
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
	return AppendResult(make([]byte, 0, 64+len(cmd)+len(r)+16*len(extra)), cmd, r, extra...)
}

// AppendResult appends Result(cmd, r, extra...) to b.
func AppendResult(b []byte, cmd, r string, extra ...any) []byte {
	b = AppendString(append(b, `{"cmd":`...), cmd)
	b = append(b[:len(b)-1], `_reply","result":`...) // "_reply" needs no escaping
	b = AppendString(b, r)
	return append(appendMembers(b, extra), '}')
}

// StrField returns the value of a string field of a compact object this
// package built, without decoding it: for reading "cmd" and "result" of
// replies on hot paths. Values with escapes are not supported; it returns
// "" when the field is absent.
func StrField(obj []byte, key string) string { return string(FieldBytes(obj, key)) }

// FieldBytes is StrField without the copy: the value, in obj.
func FieldBytes(obj []byte, key string) []byte {
	for i := 0; i+len(key)+5 <= len(obj); i++ {
		if obj[i] != '"' || string(obj[i+1:i+1+len(key)]) != key || string(obj[i+1+len(key):i+4+len(key)]) != `":"` {
			continue
		}
		v := obj[i+4+len(key):]
		for j, b := range v {
			if b == '"' {
				return v[:j]
			}
		}
		return nil
	}
	return nil
}

// PrivateMessage is the line a private message is delivered as. id is the
// sending edge's choice (see HdrMsgID); a new one is made when it is
// empty or too long to be one of ours.
func PrivateMessage(from, to, text, id string) []byte {
	if id == "" || len(id) > 64 {
		id = nuid.Next()
	}
	return Object("cmd", "private_chat", "user_from", from, "user_to", to, "text", text,
		"time", time.Now().UnixMilli(), "msg_id", id)
}
