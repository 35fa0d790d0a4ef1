package edge_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/chatd-io/chatd/edge"
	"github.com/chatd-io/chatd/internal/chattest"
)

// Idle connections give their read goroutine back and lose nothing:
// deliveries reach them, their requests wake them, and closing or
// resetting them ends their sessions.
func TestIdleConnectionsPark(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("connections are parked on Linux only")
	}
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	var logs syncBuffer
	e := c.StartEdge(func(o *edge.Options) {
		o.IdleAfter = 50 * time.Millisecond
		o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("edge log:\n%s", logs.String())
		}
	})
	addr := e.Addr().String()
	cls := users(t, addr, "alice", "bob", "carol")
	alice, bob, carol := cls[0], cls[1], cls[2]
	befriend(t, alice, bob, "bob")
	befriend(t, alice, carol, "carol")
	// carol leaves half an object unfinished: she is not idle between
	// requests, and must not be parked.
	carol.Send(`{"cmd":"ping",`)
	waitFor(t, "three idle connections parked", func() bool { return e.Parked() >= 2 })
	if n := e.Parked(); n != 2 {
		t.Fatalf("%d parked, want alice and bob only", n)
	}

	// A delivery to a parked connection needs no reader.
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "wake up"}, "success")
	if m := bob.Want("private_chat"); m.Str("text") != "wake up" {
		t.Fatalf("bob got %s", m.Raw)
	}
	// A request wakes a parked connection, pretty-printed over two writes.
	waitFor(t, "bob parked again", func() bool { return e.Parked() >= 2 })
	bob.Send("{\n  \"cmd\": \"private_chat\",")
	bob.Send("\n  \"user_to\": \"alice\", \"text\": \"awake\"\n}")
	bob.Want("private_chat_reply")
	alice.Want("private_chat")
	carol.Send(`"id":7}`)
	if m := carol.Next(); m.Raw != `{"id":7,"cmd":"pong"}` {
		t.Fatalf("carol's completed request: %s", m.Raw)
	}

	// Parked and then reset by the peer: the session still ends.
	waitFor(t, "bob parked again", func() bool { return e.Parked() >= 2 })
	bob.Conn.(*net.TCPConn).SetLinger(0)
	bob.Conn.Close()
	if m := alice.Want("friend_offline"); m.Str("friend") != "bob" {
		t.Fatalf("alice got %s", m.Raw)
	}
	// Parked and closed cleanly.
	waitFor(t, "carol parked", func() bool { return e.Parked() >= 2 })
	carol.Conn.Close()
	if m := alice.Want("friend_offline"); m.Str("friend") != "carol" {
		t.Fatalf("alice got %s", m.Raw)
	}
	waitFor(t, "only alice parked", func() bool { return e.Parked() == 1 })

	// A draining edge wakes its parked connections to say goodbye.
	ctx, cancel := context.WithTimeout(context.Background(), chattest.Timeout)
	defer cancel()
	if err := e.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	got := alice.Closed()
	if len(got) == 0 || got[len(got)-1].Str("cmd") != "server_shutdown" {
		t.Fatalf("alice saw %v before the close", got)
	}
}

// syncBuffer collects log lines from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond: parking is the absence of activity, so there is no
// event to wait on.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(chattest.Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", chattest.Timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
