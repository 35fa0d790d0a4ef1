package workers

import (
	"encoding/json"

	"github.com/chatd-io/chatd/internal/proto"
)

func obj(kv ...any) []byte { return proto.Object(kv...) }

func result(cmd, r string, extra ...any) []byte { return proto.Result(cmd, r, extra...) }

// fields holds the members of a request object that some command reads,
// undecoded, so that a wrong type in one field is reported as that field
// being invalid rather than the whole request failing to decode.
type fields struct {
	user, password, friend, group, userTo, userFrom, text json.RawMessage
	fromUser, toUser, filename, length, online, announce  json.RawMessage
	peek                                                  json.RawMessage
}

// decode fills f from a request body, which must be a JSON object.
func (f *fields) decode(data []byte) error {
	return proto.Fields(data, func(key, v []byte) {
		if p := f.field(string(key)); p != nil {
			*p = v
		}
	})
}

func (f *fields) field(name string) *json.RawMessage {
	switch name {
	case "user":
		return &f.user
	case "password":
		return &f.password
	case "friend":
		return &f.friend
	case "group":
		return &f.group
	case "user_to":
		return &f.userTo
	case "user_from":
		return &f.userFrom
	case "text":
		return &f.text
	case "from_user":
		return &f.fromUser
	case "to_user":
		return &f.toUser
	case "filename":
		return &f.filename
	case "length":
		return &f.length
	case "online":
		return &f.online
	case "announce":
		return &f.announce
	case "peek":
		return &f.peek
	}
	return nil
}

// raw returns a member's raw value, nil when absent.
func (f *fields) raw(name string) json.RawMessage {
	if p := f.field(name); p != nil {
		return *p
	}
	return nil
}

// str returns a string field. present is false when the field is absent or
// null; ok is false when it is present with another type.
func (f *fields) str(name string) (v string, present, ok bool) {
	raw := f.raw(name)
	if raw == nil || string(raw) == "null" {
		return "", false, true
	}
	v, ok = proto.String(raw)
	return v, true, ok
}
