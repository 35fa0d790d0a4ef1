package bench

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testFlow is a flow of window and fanout with a quiet meter and a
// stopped timer for its next.
func testFlow(window, fanout int) (*Meter, *flow, *time.Timer) {
	tm := time.NewTimer(time.Hour)
	tm.Stop()
	return newMeter("t", "msg", quietLogger()), newFlow(window, fanout), tm
}

func TestFlowWindowAndReceipts(t *testing.T) {
	m, f, tm := testFlow(2, 3)
	ctx := context.Background()
	s1, ok1 := f.next(ctx, time.Second, tm, m, "x")
	s2, ok2 := f.next(ctx, time.Second, tm, m, "x")
	if !ok1 || !ok2 || s1 != 1 || s2 != 2 || f.inFlight() != 2 {
		t.Fatalf("next = %d,%v %d,%v in flight %d", s1, ok1, s2, ok2, f.inFlight())
	}
	steps := []struct {
		seq      int64
		want     bool
		inFlight int64
	}{
		{0, false, 2}, // never sent
		{3, false, 2}, // not sent yet
		{1, true, 2},
		{1, true, 2},
		{1, true, 1},  // third recipient: complete
		{1, false, 1}, // a fourth copy is a duplicate
		{2, true, 1},
	}
	for i, s := range steps {
		if got := f.receipt(s.seq); got != s.want || f.inFlight() != s.inFlight {
			t.Fatalf("step %d: receipt(%d) = %v, in flight %d; want %v, %d", i, s.seq, got, f.inFlight(), s.want, s.inFlight)
		}
	}
	// Slot 1 (seq 3) reuses seq 1's slot; a late copy of seq 1 must not count.
	s3, _ := f.next(ctx, time.Second, tm, m, "x")
	if s3 != 3 || f.receipt(1) {
		t.Fatalf("seq %d; late receipt of 1 accepted", s3)
	}
	if n, _ := m.Errors(); n != 0 {
		t.Fatalf("%d errors", n)
	}
}

func TestFlowStallIsWrittenOff(t *testing.T) {
	m, f, tm := testFlow(1, 1)
	ctx := context.Background()
	if seq, _ := f.next(ctx, time.Second, tm, m, "x"); seq != 1 {
		t.Fatalf("seq %d", seq)
	}
	start := time.Now()
	seq, ok := f.next(ctx, 20*time.Millisecond, tm, m, "x") // 1 is never received
	if !ok || seq != 2 || time.Since(start) > 2*time.Second {
		t.Fatalf("next after a stall = %d,%v after %s", seq, ok, time.Since(start))
	}
	if n, kinds := m.Errors(); n != 1 || kinds["timeout"] != 1 {
		t.Fatalf("errors %d %v, want one timeout", n, kinds)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, ok := f.next(cctx, time.Hour, tm, m, "x"); ok {
		t.Fatal("next went on after cancellation")
	}
	drainFlows([]*flow{f}, 10*time.Millisecond, m)
	if _, kinds := m.Errors(); kinds["undelivered"] != 1 || kinds["missing_reply"] != 2 {
		t.Fatalf("after drain: %v", kinds)
	}
}

// A refused message frees its slot at once, without waiting for a stall,
// and a receipt for it afterwards does not count.
func TestFlowRefusedFreesItsSlot(t *testing.T) {
	m, f, tm := testFlow(1, 2)
	ctx := context.Background()
	if seq, _ := f.next(ctx, time.Hour, tm, m, "x"); seq != 1 {
		t.Fatalf("seq %d", seq)
	}
	f.refused(2) // not sent: nothing happens
	if f.inFlight() != 1 {
		t.Fatalf("in flight %d after refusing an unsent message", f.inFlight())
	}
	f.refused(1)
	if f.inFlight() != 0 || f.receipt(1) {
		t.Fatalf("in flight %d after the refusal, or its receipt counted", f.inFlight())
	}
	done := make(chan int64)
	go func() {
		seq, _ := f.next(ctx, time.Hour, tm, m, "x") // an hour's stall would fail the test's deadline
		done <- seq
	}()
	if seq := <-done; seq != 2 {
		t.Fatalf("next = %d", seq)
	}
	f.refused(1) // late, for a reused slot: seq 2 stays in flight
	if f.inFlight() != 1 || !f.receipt(2) {
		t.Fatalf("in flight %d; a late refusal of 1 touched 2's slot", f.inFlight())
	}
}
