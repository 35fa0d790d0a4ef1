package edge_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/chatd-io/chatd/edge"
	"github.com/chatd-io/chatd/internal/chattest"
	"github.com/chatd-io/chatd/internal/metrics"
	"github.com/chatd-io/chatd/internal/proto"
)

// wantTexts fails unless cl's next private messages carry texts, in order.
func wantTexts(t *testing.T, who string, cl *chattest.Client, texts ...string) {
	t.Helper()
	for _, want := range texts {
		if m := cl.Want("private_chat"); m.Str("text") != want || m.Str("user_from") != "alice" {
			t.Fatalf("%s got %s, want %q from alice", who, m.Raw, want)
		}
	}
}

// waitSessions waits until e holds n sessions.
func waitSessions(t *testing.T, e *edge.Edge, n int) {
	t.Helper()
	for deadline := time.Now().Add(chattest.Timeout); e.Sessions() != n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the edge holds %d sessions, want %d", e.Sessions(), n)
		}
	}
}

// A private message between friends on one edge is written there by the
// sender's edge itself, and still reaches every session of the recipient
// exactly once: both here, the one on another edge, and a NATS
// subscriber watching the user's subject (as `nats sub` would), which
// sees one copy per message without a reply subject.
func TestLocalDelivery(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	reg := metrics.New()
	a := c.StartEdge(func(o *edge.Options) { o.Name, o.Metrics = "a", reg }, c.Deliveries(1))
	b := c.StartEdge(func(o *edge.Options) { o.Name = "b" }, c.Deliveries(1))
	cls := users(t, a.Addr().String(), "alice", "bob")
	alice, bob := cls[0], cls[1]
	bob2 := chattest.Dial(t, a.Addr().String())
	bob2.Login("bob", "pw-bob")
	bob3 := chattest.Dial(t, b.Addr().String())
	bob3.Login("bob", "pw-bob")
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	bobs := map[string]*chattest.Client{"bob on a": bob, "bob's second session on a": bob2, "bob on b": bob3}
	for _, cl := range bobs {
		cl.Want("add_friend_reply")
	}
	wnc := c.Conn("watcher")
	watch, err := wnc.SubscribeSync(proto.UserSubject("bob"))
	if err != nil {
		t.Fatal(err)
	}
	if err := wnc.Flush(); err != nil {
		t.Fatal(err)
	}

	texts := []string{"one", "two", "three"}
	for _, text := range texts {
		alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": text}, "success")
	}
	for who, cl := range bobs {
		wantTexts(t, who, cl, texts...)
	}
	for _, want := range texts {
		m, err := watch.NextMsg(chattest.Timeout)
		if err != nil {
			t.Fatalf("the watcher, waiting for %q: %v", want, err)
		}
		if got := proto.StrField(m.Data, "text"); got != want || m.Reply != "" {
			t.Fatalf("the watcher got %s (reply subject %q), want %q without one", m.Data, m.Reply, want)
		}
	}
	wantNone(t, "private_chat", bob, bob2, bob3, alice)
	if m, err := watch.NextMsg(100 * time.Millisecond); err == nil {
		t.Fatalf("the watcher got another: %s", m.Data)
	}

	var buf bytes.Buffer
	reg.Write(&buf)
	for _, want := range []string{
		`chatd_edge_private_direct_total{outcome="local"} 3`,
		`chatd_edge_deliveries_total{cmd="private_chat"} 6`,
	} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("edge a's metrics lack %q", want)
		}
	}
}

// holdingCopies starts edge a, which publishes copies an hour apart, and
// edge b, with friends alice and bob on a and bob's second session on b.
func holdingCopies(t *testing.T) (a *edge.Edge, alice, bob, bob2 *chattest.Client) {
	t.Helper()
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	a = c.StartEdge(func(o *edge.Options) { o.CopyInterval = time.Hour }, c.Deliveries(1))
	b := c.StartEdge(c.Deliveries(1))
	cls := users(t, a.Addr().String(), "alice", "bob")
	alice, bob = cls[0], cls[1]
	bob2 = chattest.Dial(t, b.Addr().String())
	bob2.Login("bob", "pw-bob")
	befriend(t, alice, bob, "bob")
	bob2.Want("add_friend_reply")
	return a, alice, bob, bob2
}

// The copy of a message written on the sender's edge may wait there to
// be published with others. When the recipient's session there ends
// meanwhile, the next message goes through NATS; it still reaches the
// recipient's other edge after the copy, never before.
func TestLocalCopyNotOvertaken(t *testing.T) {
	// The first copy after a quiet spell goes at once; the next would
	// wait an hour but for the message after it.
	a, alice, bob, bob2 := holdingCopies(t)
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "one"}, "success")
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "two"}, "success")
	wantTexts(t, "bob on a", bob, "one", "two")
	bob.Expect(M{"cmd": "offline"}, "success")
	waitSessions(t, a, 1)
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "three"}, "success")
	wantTexts(t, "bob on b", bob2, "one", "two", "three")
}

// A shutting-down edge publishes the copies it still holds: the
// recipient's sessions elsewhere get every message.
func TestShutdownPublishesQueuedCopies(t *testing.T) {
	a, alice, bob, bob2 := holdingCopies(t)
	var texts []string
	for i := range 5 {
		texts = append(texts, fmt.Sprint("m", i))
		alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": texts[i]}, "success")
	}
	wantTexts(t, "bob on a", bob, texts...)
	ctx, cancel := context.WithTimeout(context.Background(), chattest.Timeout)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	wantTexts(t, "bob on b", bob2, texts...)
}

// Delivery connections that echo what the edge publishes (dialled
// without NoEcho) would bring a copy back to the edge that wrote the
// message: the edge then sends every message through NATS, and each
// session still gets it once.
func TestEchoingDeliveriesSendThroughNATS(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	reg := metrics.New()
	e := c.StartEdge(func(o *edge.Options) {
		o.Metrics = reg
		o.Deliveries = []*nats.Conn{c.Conn("echoing deliveries")}
	})
	cls := users(t, e.Addr().String(), "alice", "bob")
	alice, bob := cls[0], cls[1]
	befriend(t, alice, bob, "bob")
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "one"}, "success")
	wantTexts(t, "bob", bob, "one")
	wantNone(t, "private_chat", bob)
	var buf bytes.Buffer
	reg.Write(&buf)
	if want := `chatd_edge_private_direct_total{outcome="confirmed"} 1`; !strings.Contains(buf.String(), want) {
		t.Errorf("metrics lack %q", want)
	}
}
