package edge

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// replies is the edge's own request/reply to the workers. The recipient's
// edge confirms a handed-off private message straight to the reply
// subject the sender's edge chose; when that is this edge (both users
// here, as in a one-process deployment) the confirmation is handed over
// in memory instead of crossing NATS: one of the message's three NATS
// messages saved.
type replies struct {
	nc     *nats.Conn
	prefix string // subject prefix of every reply to this edge, token last
	sub    *nats.Subscription
	next   atomic.Uint64

	mu      sync.Mutex
	waiting map[string]chan *nats.Msg // by reply subject
}

func newReplies(nc *nats.Conn) (*replies, error) {
	r := &replies{nc: nc, prefix: nc.NewInbox() + ".", waiting: make(map[string]chan *nats.Msg)}
	sub, err := nc.Subscribe(r.prefix+"*", r.arrived)
	if err != nil {
		return nil, err
	}
	// Replies are small and the handler never blocks: room for a burst
	// as large as the deliveries channel's, rather than the default.
	_ = sub.SetPendingLimits(1<<16, 64<<20)
	r.sub = sub
	return r, nil
}

// arrived hands a reply that came over NATS to its waiter, if it still waits.
func (r *replies) arrived(m *nats.Msg) { r.deliver(m.Subject, m) }

// local reports whether subject is a reply to this edge, and if so hands
// it data as the reply, without NATS.
func (r *replies) local(subject string, data []byte) bool {
	if !strings.HasPrefix(subject, r.prefix) {
		return false
	}
	r.deliver(subject, &nats.Msg{Subject: subject, Data: data})
	return true
}

func (r *replies) deliver(subject string, m *nats.Msg) {
	r.mu.Lock()
	ch := r.waiting[subject]
	delete(r.waiting, subject)
	r.mu.Unlock()
	if ch != nil {
		ch <- m // buffered for one
	}
}

// request publishes m with a reply subject of this edge's and waits for
// the reply at most wait, like nats.Conn.RequestMsg: its errors are
// nats.ErrNoResponders and nats.ErrTimeout.
func (r *replies) request(m *nats.Msg, wait time.Duration) (*nats.Msg, error) {
	subject := r.prefix + strconv.FormatUint(r.next.Add(1), 10)
	ch := make(chan *nats.Msg, 1)
	r.mu.Lock()
	r.waiting[subject] = ch
	r.mu.Unlock()
	m.Reply = subject
	if err := r.nc.PublishMsg(m); err != nil {
		r.forget(subject)
		return nil, err
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case reply := <-ch:
		if len(reply.Data) == 0 && reply.Header.Get("Status") == "503" {
			return nil, nats.ErrNoResponders
		}
		return reply, nil
	case <-t.C:
		r.forget(subject)
		return nil, nats.ErrTimeout
	}
}

func (r *replies) forget(subject string) {
	r.mu.Lock()
	delete(r.waiting, subject)
	r.mu.Unlock()
}

func (r *replies) close() { _ = r.sub.Unsubscribe() }
