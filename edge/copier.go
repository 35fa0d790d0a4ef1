package edge

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// defaultCopyInterval is how long a copier waits after publishing a batch
// before it publishes the next. Publishing each copy at once measured
// worse on the local messages themselves: every publish wakes NATS's
// flusher and the server's reader, and those extra runnable goroutines
// kept the cores from the sockets (a p99 of 3.2–3.7 ms against 1.7–1.9 ms
// with 1 ms batches; docs/benchmarks.md).
const defaultCopyInterval = time.Millisecond

// copier publishes the copies of private messages the edge wrote to local
// sessions itself (see Edge.sendLocal), on the delivery connection that
// carries their recipients' subscriptions. That connection is opened
// with NoEcho, so a copy reaches the user's sessions on other edges and
// anyone watching the subject, never this edge again.
//
// A copy is numbered as it is queued. The server has every copy up to
// atServer: the copier asks after each batch (one round trip per batch,
// not per copy), so that a session which goes on through NATS (its
// recipient's session here gone) waits for the server only when its own
// copies may not be there yet (see conn.copies).
type copier struct {
	nc       *nats.Conn
	interval time.Duration
	wake     chan struct{} // a first copy is queued
	// life ends at close: run publishes what is left and returns, a wait
	// for the server gives up, and later pushes publish at once.
	life     context.Context
	end      context.CancelFunc
	atServer atomic.Uint64

	// publishing is held while a batch is taken and published, so that
	// batches go out in the order they were queued whoever publishes them.
	publishing sync.Mutex
	spare      []*nats.Msg // the last batch's slice, for the next; under publishing

	mu     sync.Mutex
	queue  []*nats.Msg
	queued uint64 // the number of the last copy queued
}

func newCopier(nc *nats.Conn, interval time.Duration) *copier {
	life, end := context.WithCancel(context.Background())
	return &copier{nc: nc, interval: interval, wake: make(chan struct{}, 1), life: life, end: end}
}

// push queues m to be published and returns its number. Once the copier
// has stopped (the edge is shutting down), m is published at once, after
// what was queued.
func (cp *copier) push(m *nats.Msg) uint64 {
	cp.mu.Lock()
	cp.queue = append(cp.queue, m)
	cp.queued++
	n, first := cp.queued, len(cp.queue) == 1
	cp.mu.Unlock()
	// Checked after queueing: a close that comes later still finds m in
	// the queue when run publishes what is left.
	if cp.life.Err() != nil {
		cp.publishQueued()
		return n
	}
	if first {
		select {
		case cp.wake <- struct{}{}:
		default:
		}
	}
	return n
}

// publishQueued publishes what is queued, in order, and returns the
// number of the last copy published.
func (cp *copier) publishQueued() (last uint64) {
	cp.publishing.Lock()
	defer cp.publishing.Unlock()
	cp.mu.Lock()
	batch := cp.queue
	cp.queue = cp.spare[:0]
	last = cp.queued
	cp.mu.Unlock()
	for i, m := range batch {
		cp.publish(m)
		batch[i] = nil
	}
	if cap(batch) <= maxKeptCopies {
		cp.spare = batch
	} else {
		cp.spare = nil
	}
	return last
}

// maxKeptCopies bounds the batch slice kept for reuse after a burst.
const maxKeptCopies = 1024

func (cp *copier) publish(m *nats.Msg) {
	// A copy that cannot be published (the connection is closed) has
	// reached its local recipients already; NATS buffers it through a
	// reconnect.
	_ = cp.nc.PublishMsg(m)
}

// reached waits until the server has copy n and every one before it, so
// that what the caller publishes next, on any connection, is routed after
// them.
func (cp *copier) reached(ctx context.Context, n uint64) error {
	if cp.atServer.Load() >= n {
		return nil
	}
	return cp.confirm(ctx, cp.publishQueued())
}

// confirm waits for the server to have the copies published up to last.
func (cp *copier) confirm(ctx context.Context, last uint64) error {
	if err := cp.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("copies of local messages: %w", err)
	}
	for {
		at := cp.atServer.Load()
		if at >= last || cp.atServer.CompareAndSwap(at, last) {
			return nil
		}
	}
}

// confirmTimeout bounds the copier's wait for the server after a batch; a
// session that needs the answer (reached) asks itself.
const confirmTimeout = 5 * time.Second

// run publishes batches until close; then what is left.
func (cp *copier) run() {
	pause := time.NewTimer(cp.interval)
	pause.Stop()
	for {
		select {
		case <-cp.wake:
		case <-cp.life.Done():
			cp.publishQueued()
			return
		}
		last := cp.publishQueued()
		ctx, cancel := context.WithTimeout(cp.life, confirmTimeout)
		_ = cp.confirm(ctx, last) // disconnected: nothing to confirm until it is back
		cancel()
		pause.Reset(cp.interval)
		select {
		case <-pause.C:
		case <-cp.life.Done():
			cp.publishQueued()
			return
		}
	}
}

// close makes later pushes publish at once and ends run, which publishes
// what is still queued.
func (cp *copier) close() { cp.end() }
