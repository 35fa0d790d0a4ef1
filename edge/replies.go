package edge

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/chatd-io/chatd/internal/proto"
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

	// The edge's own hand-offs (see handOff): what the recipient's edge
	// does not confirm comes back under handoffs, as it would to a worker.
	handoffID string // this edge's token in proto.HandoffReply subjects
	handoffs  string // proto.HandoffPrefix + handoffID + "."
	back      *nats.Subscription

	mu      sync.Mutex
	waiting map[uint64]*waiter // by the token that ends the reply subject
}

// waiter is where one requester at a time waits for its replies. A
// client connection keeps one for all its requests, so that asking a
// worker costs no channel and no timer of its own.
type waiter struct {
	ch    chan *nats.Msg // buffered for one; empty between requests
	timer *time.Timer

	mu   sync.Mutex
	want uint64 // the token waited for; 0 between requests

	// A confirmation handed over in memory is built here: the requester
	// is done with the last one before it asks again.
	local    nats.Msg
	localBuf []byte
}

func newWaiter() *waiter {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &waiter{ch: make(chan *nats.Msg, 1), timer: t}
}

// offer hands m to the waiter if it still waits for tok. A reply that
// comes after its request gave up is dropped here, so it can never be
// taken for the answer to a later request.
func (w *waiter) offer(tok uint64, m *nats.Msg) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.handLocked(tok, m)
}

// confirm hands the waiter, if it still waits for tok, the confirmation
// of a private message to user.
func (w *waiter) confirm(tok uint64, subject, user string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.want != tok {
		return // nobody would read the confirmation: not built
	}
	w.localBuf = proto.AppendResult(w.localBuf[:0], "private_chat", "success", "user_to", user)
	w.local = nats.Msg{Subject: subject, Data: w.localBuf}
	w.handLocked(tok, &w.local)
}

// handLocked gives m to the waiter if it still waits for tok, and ends
// the wait; the caller holds mu.
func (w *waiter) handLocked(tok uint64, m *nats.Msg) {
	if w.want != tok {
		return
	}
	w.want = 0
	select {
	case w.ch <- m:
	default: // cannot happen: only the awaited token is sent, once
	}
}

// expect starts waiting for tok.
func (w *waiter) expect(tok uint64) {
	w.mu.Lock()
	w.want = tok
	w.mu.Unlock()
}

// abandon stops waiting, and drops a reply that arrived meanwhile.
func (w *waiter) abandon() {
	w.mu.Lock()
	w.want = 0
	select {
	case <-w.ch:
	default:
	}
	w.mu.Unlock()
}

func newReplies(nc *nats.Conn) (*replies, error) {
	id := nuid.Next()
	r := &replies{nc: nc, prefix: nc.NewInbox() + ".", waiting: make(map[uint64]*waiter),
		handoffID: id, handoffs: proto.HandoffPrefix + id + "."}
	sub, err := nc.Subscribe(r.prefix+"*", r.arrived)
	if err != nil {
		return nil, err
	}
	// Replies are small and the handler never blocks: room for a burst
	// as large as the deliveries channel's, rather than the default.
	_ = sub.SetPendingLimits(1<<16, 64<<20)
	r.sub = sub
	back, err := nc.Subscribe(r.handoffs+">", r.returned)
	if err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	_ = back.SetPendingLimits(1<<16, 64<<20)
	r.back = back
	return r, nil
}

// arrived hands a reply that came over NATS to its waiter, if it still waits.
func (r *replies) arrived(m *nats.Msg) { r.deliver(m.Subject, m) }

// returned tells the waiter of a hand-off that nobody took the message:
// the server's "no responders", or the message itself from an edge that
// no longer holds the user. Either way the waiter sees no responders.
func (r *replies) returned(m *nats.Msg) {
	tok, ok := proto.HandoffToken(m.Subject, r.handoffs)
	if !ok {
		return
	}
	w := r.takeToken(tok)
	if w == nil {
		return
	}
	if len(m.Data) > 0 || m.Header.Get("Status") != "503" {
		m = &nats.Msg{Subject: m.Subject, Header: nats.Header{"Status": {"503"}}}
	}
	w.offer(tok, m)
}

// confirmLocal reports whether subject is a reply to this edge, and if
// so confirms to its waiter, without NATS, a private message delivered to
// user.
func (r *replies) confirmLocal(subject, user string) bool {
	if !strings.HasPrefix(subject, r.prefix) {
		return false
	}
	if tok, w := r.take(subject); w != nil {
		w.confirm(tok, subject, user)
	}
	return true
}

func (r *replies) deliver(subject string, m *nats.Msg) {
	if tok, w := r.take(subject); w != nil {
		w.offer(tok, m)
	}
}

// take removes and returns the waiter for reply subject, if any.
func (r *replies) take(subject string) (uint64, *waiter) {
	tok, err := strconv.ParseUint(strings.TrimPrefix(subject, r.prefix), 10, 64)
	if err != nil {
		return 0, nil
	}
	return tok, r.takeToken(tok)
}

// takeToken removes and returns the waiter for tok, if any.
func (r *replies) takeToken(tok uint64) *waiter {
	r.mu.Lock()
	w := r.waiting[tok]
	delete(r.waiting, tok)
	r.mu.Unlock()
	return w
}

// request publishes m with a reply subject of this edge's and waits for
// the reply at most wait, like nats.Conn.RequestMsg: its errors are
// nats.ErrNoResponders and nats.ErrTimeout. w is the caller's waiter, or
// nil for a new one; a waiter serves one request at a time, and the reply
// it returns may be reused by its next request.
func (r *replies) request(m *nats.Msg, wait time.Duration, w *waiter) (*nats.Msg, error) {
	return r.await(m, wait, w, false)
}

// handOff publishes a private message m to its recipient's subject the
// way a worker hands one off (proto.HandoffReply), and waits for the
// recipient's edge to confirm it, like request: nats.ErrNoResponders
// says that nobody took it.
func (r *replies) handOff(m *nats.Msg, wait time.Duration, w *waiter) (*nats.Msg, error) {
	return r.await(m, wait, w, true)
}

// await is request, or with handOff, handOff.
func (r *replies) await(m *nats.Msg, wait time.Duration, w *waiter, handOff bool) (*nats.Msg, error) {
	if w == nil {
		w = newWaiter()
	}
	tok := r.next.Add(1)
	w.expect(tok)
	r.mu.Lock()
	r.waiting[tok] = w
	r.mu.Unlock()
	m.Reply = r.prefix + strconv.FormatUint(tok, 10)
	if handOff {
		m.Reply = proto.HandoffReply(r.handoffID, tok, m.Reply)
	}
	if err := r.nc.PublishMsg(m); err != nil {
		r.forget(tok)
		w.abandon()
		return nil, err
	}
	w.timer.Reset(wait)
	select {
	case reply := <-w.ch:
		w.timer.Stop()
		if len(reply.Data) == 0 && reply.Header.Get("Status") == "503" {
			return nil, nats.ErrNoResponders
		}
		return reply, nil
	case <-w.timer.C:
		r.forget(tok)
		w.abandon()
		return nil, nats.ErrTimeout
	}
}

func (r *replies) forget(tok uint64) {
	r.mu.Lock()
	delete(r.waiting, tok)
	r.mu.Unlock()
}

func (r *replies) close() {
	_ = r.sub.Unsubscribe()
	_ = r.back.Unsubscribe()
}
