package bench

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// exactQuantile is the reference: the ceil(q·n)-th smallest value.
func exactQuantile(sorted []int64, q float64) int64 {
	if q <= 0 {
		return sorted[0]
	}
	rank := int(math.Ceil(q*float64(len(sorted)) - 1e-9))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func TestHistogramQuantiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	gen := func(n int, f func(i int) int64) []int64 {
		v := make([]int64, n)
		for i := range v {
			v[i] = f(i)
		}
		return v
	}
	tests := []struct {
		name   string
		values []int64
	}{
		{"single", []int64{1234567}},
		{"small exact", []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
		{"uniform 1..10000", gen(10000, func(i int) int64 { return int64(i + 1) })},
		{"uniform µs..ms", gen(50000, func(int) int64 { return 1000 + rng.Int64N(10_000_000) })},
		{"log-normal latencies", gen(100000, func(int) int64 { return int64(math.Exp(rng.NormFloat64()*1.5 + 13)) })},
		{"bimodal with outliers", gen(20001, func(i int) int64 {
			switch {
			case i == 0:
				return 5_000_000_000
			case i%2 == 0:
				return 200_000 + rng.Int64N(1000)
			default:
				return 9_000_000 + rng.Int64N(100_000)
			}
		})},
		{"zeros and huge", []int64{0, 0, 0, math.MaxInt64, math.MaxInt64 / 3}},
	}
	qs := []float64{0, 0.001, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Histogram
			for _, v := range tt.values {
				h.Record(v)
			}
			sorted := slices.Clone(tt.values)
			slices.Sort(sorted)
			if h.Count() != uint64(len(sorted)) || h.Min() != sorted[0] || h.Max() != sorted[len(sorted)-1] {
				t.Fatalf("count/min/max = %d/%d/%d, want %d/%d/%d", h.Count(), h.Min(), h.Max(), len(sorted), sorted[0], sorted[len(sorted)-1])
			}
			for _, q := range qs {
				got, want := h.Quantile(q), exactQuantile(sorted, q)
				// Never below the true value, never more than a bucket (0.8%) above.
				if got < want || float64(got-want) > float64(want)/subCount+1 {
					t.Errorf("Quantile(%v) = %d, want %d (+≤0.8%%)", q, got, want)
				}
			}
		})
	}
}

func TestHistogramEdgeCases(t *testing.T) {
	var empty Histogram
	for _, q := range []float64{0, 0.5, 1, math.NaN()} {
		if got := empty.Quantile(q); got != 0 {
			t.Errorf("empty Quantile(%v) = %d, want 0", q, got)
		}
	}
	if empty.Mean() != 0 {
		t.Errorf("empty Mean = %v", empty.Mean())
	}
	var h Histogram
	h.Record(-5) // a clock step backwards counts as zero, not as corruption
	h.Record(10)
	if h.Min() != 0 || h.Quantile(math.NaN()) != 0 || h.Quantile(2) != 10 || h.Quantile(-1) != 0 {
		t.Errorf("min=%d q(NaN)=%d q(2)=%d q(-1)=%d", h.Min(), h.Quantile(math.NaN()), h.Quantile(2), h.Quantile(-1))
	}
	if h.Mean() != 5 {
		t.Errorf("Mean = %v, want 5", h.Mean())
	}
}

func TestHistogramMerge(t *testing.T) {
	var a, b, all Histogram
	for i := int64(1); i <= 1000; i++ {
		v := i * 1777
		all.Record(v)
		if i%3 == 0 {
			a.Record(v)
		} else {
			b.Record(v)
		}
	}
	var m Histogram
	m.Merge(&a)
	m.Merge(&b)
	m.Merge(nil)
	m.Merge(new(Histogram))
	if m.Count() != all.Count() || m.Min() != all.Min() || m.Max() != all.Max() || m.Mean() != all.Mean() {
		t.Fatalf("merged %d/%d/%d/%v, want %d/%d/%d/%v", m.Count(), m.Min(), m.Max(), m.Mean(), all.Count(), all.Min(), all.Max(), all.Mean())
	}
	for _, q := range []float64{0.01, 0.5, 0.99} {
		if m.Quantile(q) != all.Quantile(q) {
			t.Errorf("Quantile(%v): merged %d, direct %d", q, m.Quantile(q), all.Quantile(q))
		}
	}
}

// The bucket functions must tile the whole int64 range: each value lands in
// a bucket whose range holds it, and no bucket is wider than 1/128 of its
// lower bound.
func TestBuckets(t *testing.T) {
	check := func(v int64) {
		i := bucketOf(v)
		if i < 0 || i >= numBuckets {
			t.Fatalf("bucketOf(%d) = %d, out of [0,%d)", v, i, numBuckets)
		}
		lo, hi := bucketRange(i)
		if v < lo || v > hi {
			t.Fatalf("value %d in bucket %d = [%d,%d]", v, i, lo, hi)
		}
		if lo >= linearMax && float64(hi-lo+1) > float64(lo)/subCount {
			t.Fatalf("bucket %d = [%d,%d] wider than 1/%d", i, lo, hi, subCount)
		}
	}
	for v := range int64(100000) {
		check(v)
	}
	for e := 8; e < 63; e++ {
		for _, d := range []int64{-1, 0, 1} {
			check(int64(1)<<e + d)
		}
	}
	check(math.MaxInt64)
	for i := 1; i < numBuckets; i++ {
		_, prevHi := bucketRange(i - 1)
		lo, _ := bucketRange(i)
		if lo != prevHi+1 {
			t.Fatalf("gap between buckets %d and %d: %d, %d", i-1, i, prevHi, lo)
		}
	}
	if _, hi := bucketRange(numBuckets - 1); hi != math.MaxInt64 {
		t.Fatalf("last bucket ends at %d", hi)
	}
}
