package proto

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Object encodes alternating keys and values as a compact JSON object,
// keeping the given key order so lines read like the protocol document
// ({"cmd":…,"result":…,…}). A json.RawMessage value is written as is.
func Object(kv ...any) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(fmt.Sprint(kv[i]))
		b.Write(k)
		b.WriteByte(':')
		v, err := json.Marshal(kv[i+1])
		if err != nil {
			v = []byte("null")
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes()
}

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
