package workers_test

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/chatd-io/chatd/internal/chattest"
	"github.com/chatd-io/chatd/internal/proto"
)

// BenchmarkDispatch is one command as an edge sends it to the workers (a
// NATS request on chat.cmd.<cmd> naming the session user) and its reply:
// decoding, checks against the store, encoding. Allocations are the whole
// process's: the broker, the worker and this client.
func BenchmarkDispatch(b *testing.B) {
	c := chattest.StartBroker(b, "")
	c.StartWorker("")
	addr := c.StartEdge().Addr().String()
	alice := chattest.Dial(b, addr)
	alice.Register("alice", "pw")
	alice.Login("alice", "pw")
	chattest.Dial(b, addr).Register("bob", "pw")
	alice.Expect(map[string]any{"cmd": "add", "friend": "bob"}, "success")
	alice.Expect(map[string]any{"cmd": "create_group", "user": "alice", "group": "g"}, "success")
	nc := c.Conn("bench")
	for _, bc := range []struct {
		cmd, frame, want string
	}{
		// A friendship check and a message stored for bob, who is offline.
		{"private_chat", `{"cmd":"private_chat","user_to":"bob","text":"hello there, how are you?"}`, "offline"},
		{"get_group_member", `{"cmd":"get_group_member","group":"g"}`, "success"},
		{"add", `{"cmd":"add","friend":"bob"}`, "already_friend"},
	} {
		b.Run(bc.cmd, func(b *testing.B) {
			m := nats.NewMsg(proto.CmdPrefix + bc.cmd)
			m.Header.Set(proto.HdrUser, "alice")
			m.Data = []byte(bc.frame)
			b.ReportAllocs()
			for b.Loop() {
				r, err := nc.RequestMsg(m, chattest.Timeout)
				if err != nil {
					b.Fatal(err)
				}
				if got := proto.StrField(r.Data, "result"); got != bc.want {
					b.Fatalf("%s: %s", bc.cmd, r.Data)
				}
			}
		})
	}
}
