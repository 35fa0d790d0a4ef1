package probe_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/chatd-io/chatd/internal/chattest"
	"github.com/chatd-io/chatd/internal/probe"
	"github.com/chatd-io/chatd/internal/proto"
)

// edge answers probes of user on its own connection the way an edge does:
// with its ID while it holds the user, "gone" while letting go.
type edge struct {
	id   string
	gone int           // answers "gone" this many times, then leaves
	slow time.Duration // waits this long before answering
	mute bool          // never answers
	lost int           // drops this many probes unanswered, then leaves
}

func (e edge) start(t *testing.T, nc *nats.Conn, user string) {
	t.Helper()
	var gone, lost atomic.Int32
	var sub *nats.Subscription
	sub, err := nc.Subscribe(proto.UserSubject(user), func(m *nats.Msg) {
		if e.mute {
			return
		}
		if int(lost.Add(1)) <= e.lost {
			if int(lost.Load()) == e.lost {
				_ = sub.Unsubscribe()
			}
			return
		}
		time.Sleep(e.slow)
		r := nats.NewMsg(m.Reply)
		if int(gone.Add(1)) <= e.gone {
			r.Header.Set(proto.HdrGone, "1")
			_ = m.RespondMsg(r)
			if int(gone.Load()) == e.gone {
				_ = sub.Unsubscribe()
			}
			return
		}
		r.Header.Set(proto.HdrEdge, e.id)
		_ = m.RespondMsg(r)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestAsk(t *testing.T) {
	c := chattest.StartBroker(t, "")
	for _, tc := range []struct {
		name    string
		edges   []edge
		want    probe.Answer
		wantErr error
	}{
		{name: "nobody", want: probe.Answer{}},
		{name: "held", edges: []edge{{id: "e1"}}, want: probe.Answer{Held: true, Edge: "e1"}},
		// The edge letting go answers first, then its subscription goes.
		{name: "gone", edges: []edge{{gone: 1}}, want: probe.Answer{}},
		{name: "gone here, held there", edges: []edge{{gone: 1}, {id: "e2", slow: 20 * time.Millisecond}},
			want: probe.Answer{Held: true, Edge: "e2"}},
		// A cluster routing the first probe to a subscription that was
		// gone when it arrived.
		{name: "lost on the way", edges: []edge{{lost: 1}}, want: probe.Answer{}},
		{name: "silent", edges: []edge{{mute: true}}, wantErr: probe.ErrNoAnswer},
		{name: "never lets go", edges: []edge{{gone: 1 << 30}}, wantErr: probe.ErrNoAnswer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			user := "probe-" + tc.name
			for i, e := range tc.edges {
				e.start(t, c.Conn("edge"+string(rune('a'+i))), user)
			}
			got, err := probe.Ask(context.Background(), c.Conn("asker"), user, 300*time.Millisecond)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Fatalf("answer = %+v, want %+v", got, tc.want)
			}
		})
	}
}
