package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
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
// Writes are published by one goroutine, so that a user's put and delete
// reach the stream in order, but without waiting for each ack: at a login
// storm a write-then-wait loop was the bottleneck (one JetStream round
// trip per login and per logout, in series). A second goroutine collects
// the acks in order and answers the login that waits for its own.

type regOp struct {
	user string
	add  bool
	done chan error // for a caller that waits; nil otherwise
}

// regAck is a published write waiting for its ack.
type regAck struct {
	op  regOp
	fut jetstream.PubAckFuture
}

// pendingAcks bounds the writes in flight; past it publishing waits.
const pendingAcks = 1024

type registry struct {
	e       *Edge
	ops     chan regOp
	acks    chan regAck
	stopped chan struct{} // closed when run returns
	// failed counts writes that did not land or did not fit in the
	// queue; synced is its value when the last full rewrite began. They
	// differ while a key may be wrong.
	failed atomic.Uint64
	synced uint64
	kv     jetstream.KeyValue
	pubs   []jetstream.JetStream // async writes, with their own ack bound; one per e.subs
	pre    string                // subject prefix of the bucket's keys
	rev    uint64                // revision of our heartbeat key; 0 when not registered
}

func newRegistry(e *Edge) (*registry, error) {
	pubs := make([]jetstream.JetStream, len(e.subs))
	for i, nc := range e.subs {
		pub, err := newJetStream(nc, e.opts.JetStreamDomain,
			jetstream.WithPublishAsyncMaxPending(pendingAcks),
			jetstream.WithPublishAsyncTimeout(e.opts.RequestTimeout))
		if err != nil {
			return nil, fmt.Errorf("session registry: %w", err)
		}
		pubs[i] = pub
	}
	// The subject a KeyValue.Put uses for a bucket that is not a mirror.
	pre := "$KV." + proto.SessionBucket + "."
	if d := e.opts.JetStreamDomain; d != "" {
		pre = "$JS." + d + ".API." + pre
	}
	return &registry{e: e, ops: make(chan regOp, 4096), acks: make(chan regAck, pendingAcks),
		stopped: make(chan struct{}), pubs: pubs, pre: pre}, nil
}

// record queues a change; if the queue is full the next beat rewrites
// all. It never blocks: callers hold the edge's lock.
func (r *registry) record(user string, add bool) {
	select {
	case r.ops <- regOp{user: user, add: add}:
	default:
		r.failed.Add(1)
	}
}

// put records user and waits until the bucket has it. It goes through
// the queue so it lands after any earlier change for the same user.
func (r *registry) put(ctx context.Context, user string) error {
	op := regOp{user: user, add: true, done: make(chan error, 1)}
	select {
	case r.ops <- op:
	case <-ctx.Done():
		r.failed.Add(1)
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
	acked := make(chan struct{})
	go r.collect(acked)
	defer func() { close(r.acks); <-acked }()
	tick := time.NewTicker(r.e.opts.Heartbeat)
	defer tick.Stop()
	r.beat()
	for {
		select {
		case op := <-r.ops:
			r.publish(op)
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

// publish sends op's write and hands its ack to collect.
func (r *registry) publish(op regOp) {
	if r.rev == 0 {
		r.finish(op, errors.New("not registered yet")) // the next beat writes every key
		return
	}
	m := nats.NewMsg(r.pre + proto.SessionKey(r.e.id, op.user))
	if !op.add {
		m.Header.Set("KV-Operation", "DEL") // what KeyValue.Delete sends
	}
	// On the connection of the user's subscription, so that the ack
	// also proves the server has that.
	fut, err := r.pubs[r.e.deliveryConn(op.user)].PublishMsgAsync(m)
	if err != nil {
		r.finish(op, err)
		return
	}
	r.acks <- regAck{op: op, fut: fut}
}

// collect waits for the acks in the order the writes went out, which is
// about the order they come back in.
func (r *registry) collect(done chan<- struct{}) {
	defer close(done)
	for a := range r.acks {
		select {
		case <-a.fut.Ok():
			r.finish(a.op, nil)
		case err := <-a.fut.Err():
			r.finish(a.op, err)
		}
	}
}

func (r *registry) finish(op regOp, err error) {
	if err != nil {
		r.failed.Add(1)
	}
	if op.done != nil {
		op.done <- err
	} else if err != nil {
		r.e.log.Warn("session registry write failed", "user", op.user, "add", op.add, "err", err)
	}
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
			if r.failed.Load() != r.synced {
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
	failed := r.failed.Load()
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
	r.synced = failed
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
