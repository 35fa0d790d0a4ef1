package edge

import (
	"testing"

	"github.com/chatd-io/chatd/internal/proto"
)

func TestPrivateMsgID(t *testing.T) {
	const id = "TH0UB0vUk444VE2AdiTKC9"
	msg := func(text string) []byte {
		return proto.Object("cmd", "private_chat", "user_from", "a", "user_to", "b", "text", text, "time", 1, "msg_id", id)
	}
	tests := []struct {
		name string
		line []byte
		ok   bool
	}{
		{"as workers write it", msg("hi"), true},
		{"with its newline", append(msg("hi"), '\n'), true},
		{"a text that looks like the key", msg(`"msg_id":"AAAAAAAAAAAAAAAAAAAAAA"`), true},
		{"no msg_id", proto.Object("cmd", "private_chat", "text", "hi"), false},
		{"an id of another length", proto.Object("cmd", "private_chat", "msg_id", "short"), false},
		{"cut short", []byte(`{"msg_id":"TH0UB0vUk444VE2AdiTKC9`), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := privateMsgID(tt.line)
			if ok != tt.ok || ok && string(got[:]) != id {
				t.Fatalf("privateMsgID(%s) = %q, %v; want %v", tt.line, got[:], ok, tt.ok)
			}
		})
	}
}

// A session remembers the last few private messages written to it, and
// forgets the oldest first.
func TestFirstTime(t *testing.T) {
	c := &conn{}
	ids := make([]msgID, len(recentIDs{}.ids)+1)
	for i := range ids {
		ids[i][0] = byte('a' + i)
		if !c.firstTime(ids[i]) {
			t.Fatalf("id %d seen before it was written", i)
		}
	}
	for i := 1; i < len(ids); i++ {
		if c.firstTime(ids[i]) {
			t.Fatalf("id %d not remembered", i)
		}
	}
	if !c.firstTime(ids[0]) {
		t.Fatal("the oldest id still remembered past the bound")
	}
}
