package workers

import (
	"encoding/json"

	"github.com/chatd-io/chatd/internal/proto"
)

func obj(kv ...any) []byte { return proto.Object(kv...) }

func result(cmd, r string, extra ...any) []byte { return proto.Result(cmd, r, extra...) }

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
