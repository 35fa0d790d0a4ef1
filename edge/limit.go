package edge

import "time"

// bucket is a connection's allowance of requests: a token bucket that
// refills at rate per second up to burst. A client that sends faster is
// told "rate_limited" for each request over the allowance, which then
// costs no worker and no NATS message: one client cannot flood a large
// group or the workers that serve everybody else.
type bucket struct {
	tokens float64
	last   time.Time // when tokens was last brought up to date; zero before the first request
}

// take reports whether a request at now is within the allowance, and
// spends it if so.
func (b *bucket) take(now time.Time, rate float64, burst int) bool {
	switch d := now.Sub(b.last); {
	case b.last.IsZero():
		b.tokens, b.last = float64(burst), now
	case d > 0:
		b.tokens, b.last = min(float64(burst), b.tokens+d.Seconds()*rate), now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
