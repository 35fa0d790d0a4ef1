package edge

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// A waiter serves one request after another: an answer that comes too
// late for its request is never taken for the next one's.
func TestWaiterDropsLateAnswers(t *testing.T) {
	w := newWaiter()
	late := &nats.Msg{Data: []byte("late")}
	tests := []struct {
		name   string
		before func() // what happens while request 1 is given up on
	}{
		{"answer before giving up", func() { w.offer(1, late) }},
		{"answer after giving up", func() {}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w.expect(1)
			tc.before()
			w.abandon() // request 1 timed out
			w.offer(1, late)
			w.expect(2)
			w.offer(1, late)
			w.offer(2, &nats.Msg{Data: []byte("second")})
			select {
			case m := <-w.ch:
				if string(m.Data) != "second" {
					t.Fatalf("request 2 got %q", m.Data)
				}
			default:
				t.Fatal("request 2 got nothing")
			}
			select {
			case m := <-w.ch:
				t.Fatalf("a second answer waits: %q", m.Data)
			default:
			}
		})
	}
}

// Over NATS: a request that times out, then its late answer, then the
// next request on the same waiter, which gets its own answer; and a
// confirmation handed over in memory.
func TestRepliesReuseAWaiter(t *testing.T) {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	defer s.Shutdown()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	r, err := newReplies(nc)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	asked := make(chan *nats.Msg, 4)
	if _, err := nc.ChanSubscribe("svc", asked); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	w := newWaiter()
	if _, err := r.request(nats.NewMsg("svc"), 50*time.Millisecond, w); err != nats.ErrTimeout {
		t.Fatalf("unanswered request: %v", err)
	}
	first := <-asked
	if err := first.Respond([]byte("late")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	go func() {
		m := <-asked
		_ = m.Respond([]byte("second"))
	}()
	reply, err := r.request(nats.NewMsg("svc"), 5*time.Second, w)
	if err != nil || string(reply.Data) != "second" {
		t.Fatalf("second request: %v, %q", err, reply.Data)
	}

	go func() {
		m := <-asked
		if !r.confirmLocal(m.Reply, "bob") {
			t.Errorf("%s is not taken for this edge's", m.Reply)
		}
	}()
	reply, err = r.request(nats.NewMsg("svc"), 5*time.Second, w)
	want := `{"cmd":"private_chat_reply","result":"success","user_to":"bob"}`
	if err != nil || string(reply.Data) != want {
		t.Fatalf("confirmed in memory: %v, %q", err, reply.Data)
	}
	if r.confirmLocal("_INBOX.elsewhere.1", "bob") {
		t.Fatal("another edge's subject taken for this edge's")
	}
}
