package workers

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// obj encodes alternating keys and values as a compact JSON object, keeping
// the given key order so replies read like the protocol document
// ({"cmd":…,"result":…,…}).
func obj(kv ...any) []byte {
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

// result is the common {"cmd":"<cmd>_reply","result":r, extra…} reply.
func result(cmd, r string, extra ...any) []byte {
	return obj(append([]any{"cmd", cmd + "_reply", "result", r}, extra...)...)
}

// fields is a request object decoded one field at a time, so that a wrong
// type in one field is reported as that field being invalid rather than
// the whole request failing to decode.
type fields map[string]json.RawMessage

// str returns a string field. present is false when the field is absent or
// null; ok is false when it is present with another type.
func (f fields) str(name string) (v string, present, ok bool) {
	raw, found := f[name]
	if !found || string(raw) == "null" {
		return "", false, true
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", true, false
	}
	return v, true, true
}
