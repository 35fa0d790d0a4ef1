package bench

import (
	"math"
	"math/bits"
	"time"
)

// Bucket layout: values below linearMax get a bucket each; above, every
// power of two is split into subCount buckets, so a bucket is never wider
// than 1/subCount (0.8%) of the values in it. That keeps every percentile
// within 1% without storing samples, and merging is a plain sum, so each
// reader goroutine records into its own histogram and nothing is shared
// on the hot path.
const (
	subBits    = 7
	subCount   = 1 << subBits
	linearMax  = 2 * subCount
	numBuckets = linearMax + (63-(subBits+1))*subCount
)

// Histogram counts non-negative int64 values (nanoseconds, here).
// The zero value is empty and ready to use; it is about 58 KiB, so keep
// one per goroutine rather than one per message source.
type Histogram struct {
	counts   [numBuckets]uint64
	n        uint64
	min, max int64
	sum      float64
}

func bucketOf(v int64) int {
	if v < linearMax {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - (subBits + 1)
	m := int(uint64(v) >> e) // in [subCount, 2*subCount)
	return linearMax + (e-1)*subCount + m - subCount
}

// bucketRange returns the smallest and largest value that land in bucket i.
func bucketRange(i int) (lo, hi int64) {
	if i < linearMax {
		return int64(i), int64(i)
	}
	j := i - linearMax
	e := j/subCount + 1
	lo = int64(j%subCount+subCount) << e
	return lo, lo + (int64(1)<<e - 1)
}

// Record adds one value; negative values count as 0 (a clock that went
// backwards must not corrupt the table).
func (h *Histogram) Record(v int64) {
	if v < 0 {
		v = 0
	}
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

// RecordDuration records d in nanoseconds.
func (h *Histogram) RecordDuration(d time.Duration) { h.Record(int64(d)) }

// Merge adds every value of o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil || o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
}

// Count is the number of recorded values.
func (h *Histogram) Count() uint64 { return h.n }

// Min and Max are exact; they are 0 when nothing was recorded.
func (h *Histogram) Min() int64 { return h.min }

// Max is the largest recorded value.
func (h *Histogram) Max() int64 { return h.max }

// Mean is the exact average of the recorded values.
func (h *Histogram) Mean() float64 {
	if h.n == 0 {
		return 0
	}
	return h.sum / float64(h.n)
}

// Quantile returns the value at quantile q (0..1): the largest value of the
// bucket holding the ceil(q·n)-th smallest value, clamped to the exact
// min and max, so it never understates a latency by more than a bucket.
func (h *Histogram) Quantile(q float64) int64 {
	switch {
	case h.n == 0:
		return 0
	case !(q > 0): // also catches NaN
		return h.min
	case q >= 1:
		return h.max
	}
	x := q * float64(h.n)
	r := math.Ceil(x)
	// 0.99*100 is 99.00000000000001 in floating point; that is rank 99.
	if x-math.Floor(x) < 1e-9*x {
		r = math.Floor(x)
	}
	rank := uint64(max(r, 1))
	if rank > h.n {
		rank = h.n
	}
	var cum uint64
	for i, c := range h.counts {
		cum += c
		if cum >= rank {
			_, hi := bucketRange(i)
			return min(max(hi, h.min), h.max)
		}
	}
	return h.max
}

// QuantileDuration is Quantile as a time.Duration.
func (h *Histogram) QuantileDuration(q float64) time.Duration {
	return time.Duration(h.Quantile(q))
}
