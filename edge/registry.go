package edge

import (
	"bytes"
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
	"github.com/chatd-io/chatd/internal/sessionlog"
)

// The registry records which users this edge holds in the session log
// (package sessionlog), and keeps a heartbeat key alive in the
// CHAT_SESSIONS bucket. An edge that stops without a word (kill -9, power
// loss, a cut network) stops beating; the workers then read its record
// and tell the friends of its users, those not logged in elsewhere, that
// they went offline. An edge that finds its heartbeat deleted was given
// up for dead: it registers again and tells its users' friends they are
// back.
//
// One goroutine writes the changes, so that a user's login and logout
// reach the log in order. On each delivery connection one write is in
// flight at a time, and whatever queued meanwhile goes in the next: at a
// login storm one stored message carries many logins, where a key per
// user cost each login two JetStream writes and their acks. A second
// goroutine collects the acks and answers the logins waiting for theirs.

type regOp struct {
	user string
	add  bool
	done chan error // for a caller that waits; nil otherwise
}

// regBatch is a written message of changes waiting for its ack.
type regBatch struct {
	conn int
	ops  []regOp
	fut  jetstream.PubAckFuture
}

// Bounds on one message of changes.
const (
	maxBatchOps   = 1024
	snapshotUsers = 1024 // users per message of a full record
)

type registry struct {
	e       *Edge
	ops     chan regOp
	acks    chan regBatch
	idle    chan int      // a connection whose write was acked
	stopped chan struct{} // closed when run returns
	// failed counts writes that did not land or did not fit in the
	// queue; synced is its value when the last full rewrite began. They
	// differ while the record may be wrong.
	failed atomic.Uint64
	synced uint64
	// writes and changes count the messages written for logins and
	// logouts and the changes in them (rewrites aside): their ratio is
	// how many logins share a write.
	writes, changes atomic.Uint64
	// logged counts changes written since the last full rewrite: past
	// a bound the next beat rewrites the record, which keeps it short.
	logged int
	kv     jetstream.KeyValue
	log    jetstream.Stream
	pubs   []jetstream.JetStream // one per e.subs
	rev    uint64                // revision of our heartbeat key; 0 when not registered
	// unsure is the value of the last heartbeat whose outcome is unknown
	// (it timed out): it may have landed after all, and moved rev on.
	unsure []byte
}

func newRegistry(e *Edge) (*registry, error) {
	pubs := make([]jetstream.JetStream, len(e.subs))
	for i, nc := range e.subs {
		pub, err := newJetStream(nc, e.opts.JetStreamDomain,
			jetstream.WithPublishAsyncTimeout(e.opts.RequestTimeout))
		if err != nil {
			return nil, fmt.Errorf("session registry: %w", err)
		}
		pubs[i] = pub
	}
	return &registry{e: e, ops: make(chan regOp, 4096), acks: make(chan regBatch, len(e.subs)),
		idle: make(chan int, len(e.subs)), stopped: make(chan struct{}), pubs: pubs}, nil
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

// put records user and waits until the log has it. It goes through the
// queue so it lands after any earlier change for the same user.
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
		return net.ErrClosed // shutting down: deregistering removes the record anyway
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *registry) run() {
	defer r.e.wg.Done()
	defer close(r.stopped)
	acked := make(chan struct{})
	go r.collect(acked)
	pending := make([][]regOp, len(r.e.subs))
	busy := make([]bool, len(r.e.subs))
	tick := time.NewTicker(r.e.opts.Heartbeat)
	defer tick.Stop()
	r.beat()
	for {
		select {
		case op := <-r.ops:
			i := r.e.deliveryConn(op.user)
			pending[i] = append(pending[i], op)
			for more := true; more; { // what else is queued goes along
				select {
				case op := <-r.ops:
					i := r.e.deliveryConn(op.user)
					pending[i] = append(pending[i], op)
				default:
					more = false
				}
			}
		case i := <-r.idle:
			busy[i] = false
		case <-tick.C:
			r.beat()
		case <-r.e.closing:
			// What is still queued is left: the record goes anyway, and
			// a login waiting for its write sees the registry stopped.
			close(r.acks)
			<-acked // what is in flight lands before the record goes
			r.deregister()
			return
		}
		for i := range pending {
			if !busy[i] && len(pending[i]) > 0 {
				n := min(len(pending[i]), maxBatchOps)
				busy[i] = r.write(i, pending[i][:n:n])
				pending[i] = pending[i][n:]
			}
		}
	}
}

func (r *registry) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), r.e.opts.RequestTimeout)
}

// write publishes ops on delivery connection i, where the users'
// subscriptions are, so that the ack also proves the server has them
// (it takes a connection's commands in order). It reports whether the
// write is in flight.
func (r *registry) write(i int, ops []regOp) bool {
	if r.rev == 0 {
		// The beat that registers writes the whole record.
		r.failed.Add(1)
		answer(ops, errors.New("not registered yet"))
		return false
	}
	var body []byte
	for _, op := range ops {
		body = sessionlog.Append(body, op.user, op.add)
	}
	fut, err := r.pubs[i].PublishMsgAsync(&nats.Msg{Subject: sessionlog.Subject(r.e.id, i), Data: body})
	if err != nil {
		r.fail(ops, err)
		return false
	}
	r.logged += len(ops)
	r.writes.Add(1)
	r.changes.Add(uint64(len(ops)))
	r.acks <- regBatch{conn: i, ops: ops, fut: fut}
	return true
}

// collect waits for each write's ack, answers its ops, and tells run
// the connection is free for the next.
func (r *registry) collect(done chan<- struct{}) {
	defer close(done)
	for b := range r.acks {
		var err error
		select {
		case <-b.fut.Ok():
		case err = <-b.fut.Err():
		}
		if err != nil {
			r.fail(b.ops, err)
		} else {
			answer(b.ops, nil)
		}
		r.idle <- b.conn
	}
}

// fail answers ops that did not land; the next beat rewrites the record.
func (r *registry) fail(ops []regOp, err error) {
	r.failed.Add(1)
	if !answer(ops, err) { // a login waiting for its write says so itself
		r.e.log.Warn("session registry write failed", "changes", len(ops), "err", err)
	}
}

// answer tells the callers waiting for ops how their write went, and
// reports whether there were any.
func answer(ops []regOp, err error) (waited bool) {
	for _, op := range ops {
		if op.done != nil {
			op.done <- err
			waited = true
		}
	}
	return waited
}

// landedLate reports whether the heartbeat key holds the value of a
// heartbeat that timed out (the link was cut while it was on its way, and
// it was written once the link was back), and if so takes its revision:
// the edge was not given up, it only missed its own write.
func (r *registry) landedLate(ctx context.Context) bool {
	if r.unsure == nil {
		return false
	}
	entry, err := r.kv.Get(ctx, proto.EdgeKey(r.e.id))
	if err != nil || !bytes.Equal(entry.Value(), r.unsure) {
		return false
	}
	r.rev, r.unsure = entry.Revision(), nil
	return true
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
	if r.kv == nil || r.log == nil {
		// The workers create the log before the bucket.
		kv, err := r.e.js.KeyValue(ctx, proto.SessionBucket)
		if err != nil {
			r.e.log.Debug("session registry not available yet", "err", err)
			return
		}
		log, err := r.e.js.Stream(ctx, sessionlog.Stream)
		if err != nil {
			r.e.log.Warn("session log not available", "err", err)
			return
		}
		r.kv, r.log = kv, log
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
			r.rev, r.unsure = rev, nil
			if r.failed.Load() != r.synced || r.logged > 2*r.e.Sessions()+maxBatchOps {
				r.rewrite(ctx)
			}
			return
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch) && r.landedLate(ctx):
			return // the next beat goes from the revision it made
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch):
			r.e.log.Warn("this edge was given up for dead; registering its sessions again")
			r.rev, reaped = 0, true
		default:
			r.e.log.Warn("heartbeat failed", "err", err)
			r.unsure = val
			return
		}
	}
	rev, err := r.kv.Put(ctx, proto.EdgeKey(r.e.id), val)
	if err != nil {
		r.e.log.Warn("heartbeat failed", "err", err)
		return
	}
	r.rev, r.unsure = rev, nil
	r.rewrite(ctx)
	if reaped {
		r.rejoin(ctx)
	}
}

// rewrite writes the whole record: on each delivery connection every
// local user on it, then a purge of what came before. Changes written
// after it replay on top; those queued before it and written after
// leave the same users in the end.
func (r *registry) rewrite(ctx context.Context) {
	failed := r.failed.Load()
	users := make([][]string, len(r.e.subs))
	// With the pending logins: they are in the log already (prebind),
	// and if they fail, their removal follows.
	for _, user := range r.e.localUsers(true) {
		i := r.e.deliveryConn(user)
		users[i] = append(users[i], user)
	}
	for i, pub := range r.pubs {
		subj := sessionlog.Subject(r.e.id, i)
		var first uint64
		for len(users[i]) > 0 || first == 0 {
			n := min(len(users[i]), snapshotUsers)
			var body []byte
			for _, user := range users[i][:n] {
				body = sessionlog.Append(body, user, true)
			}
			users[i] = users[i][n:]
			ack, err := pub.PublishMsg(ctx, &nats.Msg{Subject: subj, Data: body})
			if err != nil {
				r.e.log.Warn("session registry write failed", "err", err)
				return
			}
			if first == 0 {
				first = ack.Sequence
			}
		}
		if err := r.log.Purge(ctx, jetstream.WithPurgeSubject(subj), jetstream.WithPurgeSequence(first)); err != nil {
			r.e.log.Warn("session registry purge failed", "err", err)
			return
		}
	}
	r.synced, r.logged = failed, 0
}

// rejoin tells the friends of every local user that the user is online
// again (the workers told them otherwise when they gave this edge up),
// and hands out what was stored for the user meanwhile.
func (r *registry) rejoin(ctx context.Context) {
	for _, user := range r.e.localUsers(false) {
		r.e.fetchInbox(ctx, user, nil, true)
	}
}

// deregister removes this edge's record and heartbeat on a clean
// shutdown. Sessions end one by one first (friends are told then), so
// this only tidies up.
func (r *registry) deregister() {
	if r.kv == nil || r.rev == 0 {
		return
	}
	ctx, cancel := r.ctx()
	defer cancel()
	_ = sessionlog.Forget(ctx, r.log, r.e.id)
	_ = r.kv.Delete(ctx, proto.EdgeKey(r.e.id), jetstream.LastRevision(r.rev))
}
