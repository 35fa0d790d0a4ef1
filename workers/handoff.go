package workers

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/chatd-io/chatd/internal/proto"
)

// handoffs deliver private messages without the worker waiting for the
// recipient's edge. The delivery's reply subject (proto.HandoffReply)
// names the subject the sender's edge waits on, and the recipient's edge
// confirms there: three NATS messages per private message instead of the
// four a request from the worker and its reply would take.
//
// What is not confirmed comes back to the worker, which stores the
// message for later and answers the sender "offline": the server's "no
// responders" when nobody holds the user (sent to the worker because the
// reply subject is under its subscription), or the message itself from
// an edge that no longer holds the user.
//
// A "no responders" carries no message, so the worker keeps each one it
// sends until it knows no such answer can come. The server answers a
// connection's messages in order, so once a marker the worker sends to
// itself comes back, every "no responders" for what it published before
// the marker has been received: the generation of deliveries sealed with
// that marker can be forgotten.
type handoffs struct {
	w      *Worker
	id     string // this worker's token in HandoffReply subjects
	prefix string // proto.HandoffPrefix + id + "."
	marker string // subject of the marker

	mu     sync.Mutex
	next   uint64
	cur    map[uint64]handoff   // sent since the last marker
	sealed []map[uint64]handoff // oldest first, each waiting for its marker
	closed bool                 // no more goroutines may start
	sub    *nats.Subscription
}

type handoff struct {
	user  string // recipient
	reply string // where the sender's edge waits
	msg   []byte
}

// markEvery is how often a marker seals the deliveries sent since the
// last one: it bounds how many the worker keeps (about two intervals' worth).
const markEvery = 100 * time.Millisecond

// maxSealed bounds the generations kept when markers do not come back
// (the connection to NATS is down): a message "no responders" would
// have reported that long ago is given up on, with a warning.
const maxSealed = 50

func newHandoffs(w *Worker) *handoffs {
	id := nuid.Next()
	h := &handoffs{w: w, id: id, prefix: proto.HandoffPrefix + id + ".", cur: map[uint64]handoff{}}
	h.marker = h.prefix + "mark"
	return h
}

// start subscribes and sends markers until ctx ends.
func (h *handoffs) start(ctx context.Context) error {
	sub, err := h.w.nc.Subscribe(h.prefix+">", h.handle)
	if err != nil {
		return err
	}
	h.sub = sub
	h.w.wg.Add(1)
	go func() {
		defer h.w.wg.Done()
		t := time.NewTicker(markEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				h.mark()
			}
		}
	}()
	return nil
}

// stop ends the subscription; from now on nothing new is started. It
// first waits (up to drainFor) for markers to come back, so that a "no
// responders" for a message sent just before still gets it stored.
func (h *handoffs) stop() {
	for end := time.Now().Add(drainFor); time.Now().Before(end) && !h.w.nc.IsClosed(); {
		h.mark()
		h.mu.Lock()
		done := len(h.cur) == 0 && len(h.sealed) == 0
		h.mu.Unlock()
		if done {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	if h.sub != nil {
		_ = h.sub.Unsubscribe()
	}
}

// drainFor bounds how long stopping waits for markers.
const drainFor = time.Second

// send publishes msg to user's subject; the recipient's edge answers the
// sender at reply. The lock covers the publish so that a delivery and the
// generation it is kept in go out in the same order as the markers.
func (h *handoffs) send(user string, msg []byte, reply string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.next++
	tok := h.next
	h.cur[tok] = handoff{user: user, reply: reply, msg: msg}
	if err := h.w.nc.PublishRequest(proto.UserSubject(user), proto.HandoffReply(h.id, tok, reply), msg); err != nil {
		delete(h.cur, tok)
		return err
	}
	return nil
}

// mark seals the current generation behind a marker.
func (h *handoffs) mark() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.cur) == 0 {
		return
	}
	if err := h.w.nc.Publish(h.marker, nil); err != nil {
		return // tried again at the next tick
	}
	h.sealed = append(h.sealed, h.cur)
	h.cur = map[uint64]handoff{}
	if len(h.sealed) > maxSealed {
		h.w.log.Warn("handoff markers not coming back; forgetting old deliveries", "deliveries", len(h.sealed[0]))
		h.sealed[0] = nil
		h.sealed = h.sealed[1:]
	}
}

// kept counts the deliveries kept.
func (h *handoffs) kept() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := len(h.cur)
	for _, g := range h.sealed {
		n += len(g)
	}
	return n
}

// take removes and returns the delivery sent with tok, if still kept.
func (h *handoffs) take(tok uint64) (handoff, bool) {
	if d, ok := h.cur[tok]; ok {
		delete(h.cur, tok)
		return d, true
	}
	for _, g := range h.sealed {
		if d, ok := g[tok]; ok {
			delete(g, tok)
			return d, true
		}
	}
	return handoff{}, false
}

// handle receives markers, "no responders" and returned messages.
func (h *handoffs) handle(m *nats.Msg) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if m.Subject == h.marker {
		if len(h.sealed) > 0 {
			h.sealed[0] = nil
			h.sealed = h.sealed[1:]
		}
		return
	}
	tok, okTok := proto.HandoffToken(m.Subject, h.prefix)
	reply, okReply := proto.HandoffTarget(m.Subject)
	if !okTok || !okReply {
		return
	}
	d, kept := h.take(tok)
	switch {
	case m.Header.Get("Status") == "503":
		if !kept {
			h.w.log.Warn("no responders for a delivery no longer kept: message lost", "token", tok)
			return
		}
	case len(m.Data) > 0:
		// An edge sends the message back when it has no session left
		// for the user; the message names its recipient.
		if !kept {
			user := proto.StrField(m.Data, "user_to")
			if !proto.ValidName(user) {
				return
			}
			d = handoff{user: user, reply: reply, msg: m.Data}
		}
	default:
		return
	}
	if h.closed {
		return
	}
	h.w.wg.Add(1)
	go func() {
		defer h.w.wg.Done()
		// The worker's limit on requests in flight bounds the stores too;
		// it is taken here, not under the lock the handlers also take.
		h.w.inflight <- struct{}{}
		defer func() { <-h.w.inflight }()
		h.store(d)
	}()
}

// store keeps an unconfirmed message for its recipient and answers the
// sender "offline".
func (h *handoffs) store(d handoff) {
	w := h.w
	ctx, cancel := context.WithTimeout(context.Background(), w.opts.DeliverTimeout+time.Second)
	defer cancel()
	answer := result("private_chat", "offline", "user_to", d.user)
	if err := w.keep(ctx, d.user, d.msg); err != nil {
		w.log.Error("storing a private message failed", "user", d.user, "err", err)
		answer = result("private_chat", "internal_error", "user_to", d.user)
	}
	if err := w.nc.Publish(d.reply, answer); err != nil {
		w.log.Warn("answering a sender failed", "err", err)
	}
}
