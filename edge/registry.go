package edge

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/chatd-io/chatd/internal/proto"
)

// The registry records in the CHAT_SESSIONS bucket which users this edge
// holds, and keeps a heartbeat key alive beside them. An edge that stops
// without a word (kill -9, power loss, a cut network) stops beating; the
// workers then delete its keys and tell the friends of its users, those
// not logged in elsewhere, that they went offline. An edge that finds its
// heartbeat deleted was given up for dead: it registers again and tells
// its users' friends they are back.
//
// Writes go through one goroutine so that a user's put and delete stay in
// order; they are off the login path, which never waits for them.

type regOp struct {
	user string
	add  bool
	done chan error // for a caller that waits; nil otherwise
}

type registry struct {
	e       *Edge
	ops     chan regOp
	stopped chan struct{} // closed when run returns
	lost    atomic.Bool   // an op did not fit in the queue
	kv      jetstream.KeyValue
	rev     uint64 // revision of our heartbeat key; 0 when not registered
	dirty   bool   // a write failed: rewrite every key at the next beat
}

func newRegistry(e *Edge) *registry {
	return &registry{e: e, ops: make(chan regOp, 4096), stopped: make(chan struct{})}
}

// record queues a change; if the queue is full the next beat rewrites
// all. It never blocks: callers hold the edge's lock.
func (r *registry) record(user string, add bool) {
	select {
	case r.ops <- regOp{user: user, add: add}:
	default:
		r.lost.Store(true)
	}
}

// put records user and waits until the bucket has it. It goes through
// the queue so it lands after any earlier change for the same user.
func (r *registry) put(ctx context.Context, user string) error {
	op := regOp{user: user, add: true, done: make(chan error, 1)}
	select {
	case r.ops <- op:
	case <-ctx.Done():
		r.lost.Store(true)
		return ctx.Err()
	case <-r.stopped:
		return net.ErrClosed
	}
	select {
	case err := <-op.done:
		return err
	case <-r.stopped:
		return net.ErrClosed // shutting down: deregistering removes the key anyway
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *registry) run() {
	defer r.e.wg.Done()
	defer close(r.stopped)
	tick := time.NewTicker(r.e.opts.Heartbeat)
	defer tick.Stop()
	r.beat()
	for {
		select {
		case op := <-r.ops:
			r.apply(op)
		case <-tick.C:
			r.beat()
		case <-r.e.closing:
			r.deregister()
			return
		}
	}
}

func (r *registry) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), r.e.opts.RequestTimeout)
}

func (r *registry) apply(op regOp) {
	start := time.Now()
	err := r.write(op)
	if d := time.Since(start); d > time.Second {
		r.e.log.Warn("slow session registry write", "user", op.user, "add", op.add, "took", d, "err", err)
	}
	if err != nil {
		r.dirty = true
	}
	if op.done != nil {
		op.done <- err
	} else if err != nil {
		r.e.log.Warn("session registry write failed", "user", op.user, "err", err)
	}
}

func (r *registry) write(op regOp) error {
	if r.rev == 0 {
		return errors.New("not registered yet") // the next beat writes every key
	}
	ctx, cancel := r.ctx()
	defer cancel()
	key := proto.SessionKey(r.e.id, op.user)
	if op.add {
		_, err := r.kv.Put(ctx, key, nil)
		return err
	}
	return r.kv.Delete(ctx, key)
}

// beat refreshes the heartbeat, and registers from scratch when there is
// none yet or the workers deleted it.
func (r *registry) beat() {
	ctx, cancel := r.ctx()
	defer cancel()
	start := time.Now()
	defer func() {
		if d := time.Since(start); d > time.Second {
			r.e.log.Warn("slow heartbeat", "took", d)
		}
	}()
	if r.kv == nil {
		kv, err := r.e.js.KeyValue(ctx, proto.SessionBucket)
		if err != nil {
			r.e.log.Debug("session registry not available yet", "err", err)
			return
		}
		r.kv = kv
	}
	// The value is for people reading the bucket (nats kv get); the
	// workers only look at revisions.
	val, _ := json.Marshal(struct {
		Name     string `json:"name"`
		Time     int64  `json:"time"`
		Sessions int    `json:"sessions"`
	}{r.e.opts.Name, time.Now().UnixMilli(), r.e.Sessions()})
	reaped := false
	if r.rev != 0 {
		rev, err := r.kv.Update(ctx, proto.EdgeKey(r.e.id), val, r.rev)
		switch {
		case err == nil:
			r.rev = rev
			if r.dirty || r.lost.Swap(false) {
				r.sync(ctx)
			}
			return
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch):
			r.e.log.Warn("this edge was given up for dead; registering its sessions again")
			r.rev, reaped = 0, true
		default:
			r.e.log.Warn("heartbeat failed", "err", err)
			return
		}
	}
	rev, err := r.kv.Put(ctx, proto.EdgeKey(r.e.id), val)
	if err != nil {
		r.e.log.Warn("heartbeat failed", "err", err)
		return
	}
	r.rev = rev
	r.sync(ctx)
	if reaped {
		r.rejoin(ctx)
	}
}

// sync makes the bucket hold exactly one key per local user.
func (r *registry) sync(ctx context.Context) {
	r.lost.Store(false)
	r.dirty = true
	want := map[string]bool{}
	for _, user := range r.e.localUsers() {
		want[proto.SessionKey(r.e.id, user)] = true
	}
	if keys, err := r.kv.ListKeysFiltered(ctx, proto.SessionKeyPrefix(r.e.id)+">"); err == nil {
		for key := range keys.Keys() {
			if !want[key] {
				_ = r.kv.Delete(ctx, key)
			}
		}
	}
	for key := range want {
		if _, err := r.kv.Put(ctx, key, nil); err != nil {
			r.e.log.Warn("session registry write failed", "err", err)
			return
		}
	}
	r.dirty = false
}

// rejoin tells the friends of every local user that the user is online
// again (the workers told them otherwise when they gave this edge up),
// and hands out what was stored for the user meanwhile.
func (r *registry) rejoin(ctx context.Context) {
	for _, user := range r.e.localUsers() {
		r.e.fetchInbox(ctx, user, nil, true)
	}
}

// deregister removes this edge's keys on a clean shutdown. Sessions end
// one by one first (friends are told then), so this only tidies up.
func (r *registry) deregister() {
	if r.kv == nil || r.rev == 0 {
		return
	}
	ctx, cancel := r.ctx()
	defer cancel()
	keys, err := r.kv.ListKeysFiltered(ctx, proto.SessionKeyPrefix(r.e.id)+">")
	if err == nil {
		for key := range keys.Keys() {
			_ = r.kv.Delete(ctx, key)
		}
	}
	_ = r.kv.Delete(ctx, proto.EdgeKey(r.e.id), jetstream.LastRevision(r.rev))
}
