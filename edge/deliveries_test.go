package edge_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/chatd-io/chatd/edge"
	"github.com/chatd-io/chatd/internal/chattest"
	"github.com/chatd-io/chatd/internal/proto"
)

// brokerConns is the broker's /connz list, with subscriptions.
func brokerConns(t *testing.T, c *chattest.Cluster) []*server.ConnInfo {
	t.Helper()
	cz, err := c.Broker.Server().Connz(&server.ConnzOptions{Subscriptions: true, Limit: 1024})
	if err != nil {
		t.Fatal(err)
	}
	return cz.Conns
}

// userSubs counts, by connection name, the users' delivery subscriptions
// the broker holds: what `nats server report connections` shows.
func userSubs(t *testing.T, c *chattest.Cluster) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, ci := range brokerConns(t, c) {
		for _, s := range ci.Subs {
			if strings.HasPrefix(s, proto.UserPrefix) {
				out[ci.Name]++
			}
		}
	}
	return out
}

// With delivery connections, each user's subscription lives on one of
// them, none on the edge's own, and every user still gets every message,
// a sender's in the order sent.
func TestDeliveriesSpreadOverConnections(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	e := c.StartEdge(func(o *edge.Options) { o.Name = "spread" }, c.Deliveries(3))
	addr := e.Addr().String()
	const n = 16
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprint("u", i)
	}
	cls := users(t, addr, names...)
	cls[0].Expect(M{"cmd": "create_group", "group": "all"}, "success")
	for _, cl := range cls[1:] {
		cl.Expect(M{"cmd": "add_group", "group": "all"}, "success")
	}

	subs := userSubs(t, c)
	if subs["chatd-edge test"] != 0 {
		t.Errorf("the edge's own connection holds %d user subscriptions", subs["chatd-edge test"])
	}
	total, used := 0, 0
	for i := range 3 {
		k := subs[fmt.Sprintf("spread deliveries %d", i+1)]
		total += k
		if k > 0 {
			used++
		}
	}
	if total != n || used < 2 {
		t.Fatalf("user subscriptions by connection: %v; want all %d on the delivery connections, spread", subs, n)
	}

	const msgs = 5
	for i := range msgs {
		cls[0].Expect(M{"cmd": "group_chat", "group": "all", "text": fmt.Sprint(i)}, "success")
	}
	for j, cl := range cls[1:] {
		for i := range msgs {
			if got := cl.Want("group_chat"); got.Str("text") != fmt.Sprint(i) {
				t.Fatalf("%s: message %d is %s", names[j+1], i, got.Raw)
			}
		}
	}
	for i := 1; i < n; i += 2 {
		befriend(t, cls[i], cls[i-1], names[i-1])
		cls[i].Expect(M{"cmd": "private_chat", "user_to": names[i-1], "text": "hi"}, "success")
		if got := cls[i-1].Want("private_chat"); got.Str("user_from") != names[i] {
			t.Fatalf("delivered %s", got.Raw)
		}
	}

	for _, cl := range cls {
		cl.Send(M{"cmd": "offline"})
	}
	deadline := time.Now().Add(chattest.Timeout)
	for {
		left := 0
		for _, k := range userSubs(t, c) {
			left += k
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d user subscriptions left after every user logged out", left)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A delivery connection that drops and comes back holds requests until
// the server has its subscriptions again: a message sent meanwhile
// between two users of the edge is delivered, never found offline.
func TestRequestsWaitForTheDeliveryConnection(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	dnc := c.Conn("deliveries")
	e := c.StartEdge(func(o *edge.Options) { o.Deliveries = []*nats.Conn{dnc} })
	cls := users(t, e.Addr().String(), "alice", "bob")
	alice, bob := cls[0], cls[1]
	befriend(t, alice, bob, "bob")

	cid, err := dnc.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Broker.Server().DisconnectClientByID(cid); err != nil {
		t.Fatal(err)
	}
	// As after a broker restart, the client knows it lost the server; it
	// waits ReconnectWait (100 ms) before it dials again, so the message
	// below is sent while bob's subscription is gone.
	for deadline := time.Now().Add(chattest.Timeout); dnc.IsConnected(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the delivery connection did not notice it was dropped")
		}
	}
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "still here?"}, "success")
	if got := bob.Want("private_chat"); got.Str("text") != "still here?" {
		t.Fatalf("delivered %s", got.Raw)
	}
}

// A delivery becomes exactly one line for the client whether its payload
// ends in a newline (a group message from a worker) or not (the older
// form, and every other notice).
func TestDeliveryIsOneLine(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	e := c.StartEdge()
	cl := users(t, e.Addr().String(), "ann")[0]
	nc := c.Conn("test")
	for _, tc := range []struct{ name, payload string }{
		{"bare", `{"cmd":"notice","n":1}`},
		{"with newline", `{"cmd":"notice","n":2}` + "\n"},
	} {
		// Not subtests: the client fails the test it was made with.
		if err := nc.Publish(proto.UserSubject("ann"), []byte(tc.payload)); err != nil {
			t.Fatal(err)
		}
		if got, want := cl.Want("notice").Raw, strings.TrimSuffix(tc.payload, "\n"); got != want {
			t.Fatalf("%s: line %q, want %q", tc.name, got, want)
		}
		cl.Sync() // fails on an empty line before the pong
	}
}
