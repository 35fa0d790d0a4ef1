package edge_test

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/chatd-io/chatd/edge"
	"github.com/chatd-io/chatd/internal/chattest"
	"github.com/chatd-io/chatd/internal/metrics"
)

// friendsOnline starts an edge with presence notices waiting delay, and
// friends alice and bob on it; alice has then left and come back, so
// that bob's edge has routed friend_offline and friend_login to him.
// With idle, no writer goroutine runs on the edge meanwhile: nothing
// written for a while, they have ended.
func friendsOnline(t *testing.T, delay time.Duration, idle bool) (alice, bob *chattest.Client) {
	t.Helper()
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	reg := metrics.New()
	e := c.StartEdge(func(o *edge.Options) { o.PresenceDelay, o.Metrics = delay, reg })
	addr := e.Addr().String()
	cls := users(t, addr, "alice", "bob")
	befriend(t, cls[0], cls[1], "bob")
	if idle {
		waitFor(t, "the writers end", func() bool { return edge.Writers(e) == 0 })
	}
	cls[0].Conn.Close()
	waitSessions(t, e, 1)
	alice = chattest.Dial(t, addr)
	alice.Login("alice", "pw-alice")
	waitFor(t, "bob's edge routes both notices to him", func() bool {
		var buf bytes.Buffer
		reg.Write(&buf)
		return strings.Contains(buf.String(), `chatd_edge_deliveries_total{cmd="friend_login"} 1`) &&
			strings.Contains(buf.String(), `chatd_edge_deliveries_total{cmd="friend_offline"} 1`)
	})
	return alice, cls[1]
}

// wantCmds fails unless cl's next messages are cmds, in order.
func wantCmds(t *testing.T, cl *chattest.Client, cmds ...string) {
	t.Helper()
	for _, want := range cmds {
		if m := cl.Next(); m.Str("cmd") != want {
			t.Fatalf("got %s, want %s", m.Raw, want)
		}
	}
}

// Presence notices wait for other lines to their session, and go out
// with the next one, ahead of it: never overtaken, never held up.
func TestPresenceNoticesWaitForCompany(t *testing.T) {
	alice, bob := friendsOnline(t, time.Hour, false)
	if got := bob.Within(200 * time.Millisecond); len(got) > 0 {
		t.Fatalf("written before anything else was: %v", got)
	}
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "hi"}, "success")
	wantCmds(t, bob, "friend_offline", "friend_login", "private_chat")
}

// Alone, a waiting notice goes out once its delay is over, whether or
// not a writer was running for its session; without a delay it goes at
// once.
func TestPresenceNoticesWrittenAlone(t *testing.T) {
	tests := []struct {
		name  string
		delay time.Duration
		idle  bool
	}{
		{"writer running", 20 * time.Millisecond, false},
		{"no writer", 20 * time.Millisecond, true},
		{"no delay", -1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, bob := friendsOnline(t, tt.delay, tt.idle)
			wantCmds(t, bob, "friend_offline", "friend_login")
		})
	}
}

// A client that half-closes its connection still gets what waited for
// it before the edge closes the rest.
func TestPresenceNoticesWrittenAtEnd(t *testing.T) {
	_, bob := friendsOnline(t, time.Hour, true)
	if err := bob.Conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range bob.Closed() {
		got = append(got, m.Str("cmd"))
	}
	if want := "friend_offline friend_login"; strings.Join(got, " ") != want {
		t.Fatalf("bob got %q before the end, want %q", got, want)
	}
}
