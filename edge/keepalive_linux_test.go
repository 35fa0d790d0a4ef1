package edge_test

import (
	"testing"
	"time"

	"github.com/chatd-io/chatd/edge"
	"github.com/chatd-io/chatd/internal/chattest"
)

// Every accepted client socket has the edge's keepalive, each jittered
// by up to a quarter either way so that a burst of connections does not
// probe in a burst, and a dead peer is given up after three probes.
func TestClientKeepAlive(t *testing.T) {
	c := chattest.StartBroker(t, "")
	e := c.StartEdge(func(o *edge.Options) { o.KeepAlive = 40 * time.Second })
	const clients = 24
	for range clients {
		chattest.Dial(t, e.Addr().String()).Send(map[string]any{"cmd": "ping"})
	}
	var ks []edge.KeepAlive
	for end := time.Now().Add(chattest.Timeout); ; time.Sleep(10 * time.Millisecond) {
		var err error
		if ks, err = edge.KeepAlives(e); err != nil {
			t.Fatal(err)
		}
		if len(ks) == clients || time.Now().After(end) {
			break
		}
	}
	if len(ks) != clients {
		t.Fatalf("%d sockets held, want %d", len(ks), clients)
	}
	idles := map[int]bool{}
	for _, k := range ks {
		if !k.On || k.IdleS < 30 || k.IdleS > 50 || k.IntervalS < 7 || k.IntervalS > 13 || k.Cnt != 3 {
			t.Fatalf("keepalive %+v, want on, idle 30–50 s, interval 7–13 s, 3 probes", k)
		}
		idles[k.IdleS] = true
	}
	if len(idles) < 2 {
		t.Fatalf("%d sockets all idle %v: not jittered", clients, idles)
	}
}
