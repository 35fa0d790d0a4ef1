package bench

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Slot packing: a slot holds a message's sequence number (high bits) and
// how many recipients still have to receive it (low remBits bits).
const (
	remBits = 24
	remMask = 1<<remBits - 1
)

// flow is one sender's window: at most w messages in flight, where a
// message is in flight from the moment it is written until every recipient
// has read it. Each in-flight message owns slot seq%w; sequence number and
// remaining count share one word, so a late receipt can never decrement a
// slot that was already reused for a newer message.
type flow struct {
	w      int64
	fanout uint64
	slots  []atomic.Uint64

	sent     atomic.Int64 // highest sequence number written; sequences start at 1
	done     atomic.Int64 // messages read by all recipients
	forgiven atomic.Int64 // messages given up on after a stall
	replies  atomic.Int64 // direct replies (or acks) the sender read

	wake chan struct{}
}

func newFlow(window, fanout int) *flow {
	return &flow{w: int64(window), fanout: uint64(min(fanout, remMask)), slots: make([]atomic.Uint64, window),
		wake: make(chan struct{}, 1)}
}

func (f *flow) inFlight() int64 {
	return max(0, f.sent.Load()-f.done.Load()-f.forgiven.Load())
}

// next waits for room in the window and returns the sequence number to
// send. When nothing arrives for stall, the messages in flight are counted
// as one timeout error and written off, so one lost message cannot stop
// the sender for the rest of the run. t is the caller's reusable timer.
func (f *flow) next(ctx context.Context, stall time.Duration, t *time.Timer, m *Meter, who string) (int64, bool) {
	for f.inFlight() >= f.w {
		t.Reset(stall)
		select {
		case <-f.wake:
		case <-ctx.Done():
			t.Stop()
			return 0, false
		case <-t.C:
			n := f.inFlight()
			m.Error("timeout", "sender", who, "in_flight", n, "waited", stall)
			f.forgiven.Add(n)
		}
		t.Stop()
	}
	if ctx.Err() != nil {
		return 0, false
	}
	seq := f.sent.Load() + 1
	f.slots[seq%f.w].Store(uint64(seq)<<remBits | f.fanout)
	f.sent.Store(seq)
	return seq, true
}

// receipt records that one recipient read message seq. It returns false
// for a message that is not in flight (a duplicate, or one that arrived
// after it was written off).
func (f *flow) receipt(seq int64) bool { return f.settle(seq, false, &f.done) }

// refused records that message seq was turned away (rate_limited): no
// recipient will read it, so its slot is freed at once rather than after
// a stall.
func (f *flow) refused(seq int64) { f.settle(seq, true, &f.forgiven) }

// settle takes one recipient (all: every one left) off message seq if it
// is in flight, and reports whether it was. When that frees the slot, the
// message is counted in freed and then the sender woken: in that order,
// so that the sender sees the room it is woken for.
func (f *flow) settle(seq int64, all bool, freed *atomic.Int64) bool {
	if seq < 1 || seq > f.sent.Load() {
		return false
	}
	s := &f.slots[seq%f.w]
	for {
		v := s.Load()
		if v>>remBits != uint64(seq) || v&remMask == 0 {
			return false
		}
		left := v - 1
		if all {
			left = v &^ remMask
		}
		if s.CompareAndSwap(v, left) {
			if left&remMask == 0 {
				freed.Add(1)
				select {
				case f.wake <- struct{}{}:
				default:
				}
			}
			return true
		}
	}
}

// settled reports whether everything sent has arrived and been answered.
func (f *flow) settled() bool {
	return f.inFlight() == 0 && f.replies.Load() >= f.sent.Load()
}

// driveFlows runs one sender per flow and measures. sender(i) names flow
// i's sender and returns what sends one message (false: stop sending);
// it is called once, and what it returns is used by that sender's
// goroutine alone. Once the measured period is over and the senders have
// stopped, it waits for what is still in flight (drainFlows).
func driveFlows(ctx context.Context, env *Env, m *Meter, flows []*flow,
	sender func(i int) (who string, send func(seq int64) bool)) (window, error) {
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	for i, fl := range flows {
		who, send := sender(i)
		wg.Go(func() {
			t := time.NewTimer(time.Hour)
			t.Stop()
			for {
				seq, ok := fl.next(sctx, env.Timeout, t, m, who)
				if !ok || !send(seq) {
					return
				}
			}
		})
	}
	w, err := m.measure(ctx, env)
	stop()
	wg.Wait()
	if err != nil {
		return w, err
	}
	drainFlows(flows, env.Timeout, m)
	return w, nil
}

// drainFlows waits, bounded by timeout, for what is still in flight after
// the senders stopped, then counts what never came as errors.
func drainFlows(flows []*flow, timeout time.Duration, m *Meter) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		all := true
		for _, f := range flows {
			all = all && f.settled()
		}
		if all {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i, f := range flows {
		if n := f.inFlight(); n > 0 {
			m.errorN("undelivered", n, "sender", i, "waited", timeout)
		}
		if n := f.sent.Load() - f.replies.Load(); n > 0 {
			m.errorN("missing_reply", n, "sender", i, "waited", timeout)
		}
	}
}

// appendStamp writes the message text "k:seq:nanos": sender index,
// sequence number and send time on the run's monotonic clock.
func appendStamp(b []byte, k, seq, ts int64) []byte {
	b = strconv.AppendInt(b, k, 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, seq, 10)
	b = append(b, ':')
	return strconv.AppendInt(b, ts, 10)
}
