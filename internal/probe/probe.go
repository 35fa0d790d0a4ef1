// Package probe asks NATS whether any edge holds a session of a user: a
// request on the user's delivery subject, which every edge holding the
// user subscribes to. "No responders" from the server means nobody does.
package probe

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/chatd-io/chatd/internal/deadline"
	"github.com/chatd-io/chatd/internal/proto"
)

// ErrNoAnswer means the probe could not tell: an edge that holds the
// subscription did not answer in time (slow, or on its way out), or the
// only answers were from edges that had just let the user go.
var ErrNoAnswer = errors.New("no answer")

// Answer is what a probe learned.
type Answer struct {
	Held bool   // an edge holds a session of the user
	Edge string // the ID of the edge that answered, when Held
}

// Ask probes user, waiting at most maxWait (less when ctx ends sooner).
//
// An edge whose last session of the user has just ended still has the
// subscription until the server takes its unsubscribe; it answers
// "gone" (proto.HdrGone) rather than keep the asker waiting. Only the
// first answer reaches the asker, and another edge may hold the user,
// so after "gone" Ask asks again, after a short pause.
//
// A probe nobody answers is asked again too, up to four times in all: in
// a cluster, until the brokers have told each other that a subscription
// went, they route probes to it, and the broker where it was drops them.
func Ask(ctx context.Context, nc *nats.Conn, user string, maxWait time.Duration) (Answer, error) {
	// Timeouts rather than a context: the client pools its timers.
	end := time.Now().Add(min(maxWait, deadline.Remaining(ctx, maxWait)))
	pause := time.Millisecond
	for {
		m := nats.NewMsg(proto.UserSubject(user))
		m.Header.Set(proto.HdrKind, proto.KindProbe)
		wait := max(min(time.Until(end), maxWait/4), time.Millisecond)
		reply, err := nc.RequestMsg(m, wait)
		switch {
		case errors.Is(err, nats.ErrNoResponders):
			return Answer{}, nil
		case errors.Is(err, nats.ErrTimeout):
			if time.Until(end) <= 0 {
				return Answer{}, fmt.Errorf("probe %s: %w", user, ErrNoAnswer)
			}
			if err := ctx.Err(); err != nil { // checked only here: it may cost ctx a timer
				return Answer{}, fmt.Errorf("probe %s: %w", user, err)
			}
			continue
		case err != nil:
			return Answer{}, fmt.Errorf("probe %s: %w", user, err)
		case reply.Header.Get(proto.HdrGone) == "":
			return Answer{Held: true, Edge: reply.Header.Get(proto.HdrEdge)}, nil
		}
		if time.Until(end) < pause {
			return Answer{}, fmt.Errorf("probe %s: only gone: %w", user, ErrNoAnswer)
		}
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return Answer{}, fmt.Errorf("probe %s: %w", user, ctx.Err())
		}
		pause = min(2*pause, 50*time.Millisecond)
	}
}
