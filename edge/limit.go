package edge

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// bucket is an allowance: a token bucket that refills at rate per second
// up to burst. A connection's requests spend it (Options.RateLimit): a
// client that sends faster is told "rate_limited" for each request over
// the allowance, which then costs no worker and no NATS message, so one
// client cannot flood a large group or the workers that serve everybody
// else. An address's failed logins spend another (loginFailures).
type bucket struct {
	tokens float64
	last   time.Time // when tokens was last brought up to date; zero before the first use
}

// level brings the allowance up to date at now and returns it.
func (b *bucket) level(now time.Time, rate float64, burst int) float64 {
	switch d := now.Sub(b.last); {
	case b.last.IsZero():
		b.tokens, b.last = float64(burst), now
	case d > 0:
		b.tokens, b.last = min(float64(burst), b.tokens+d.Seconds()*rate), now
	}
	return b.tokens
}

// take reports whether a request at now is within the allowance, and
// spends it if so.
func (b *bucket) take(now time.Time, rate float64, burst int) bool {
	if b.level(now, rate, burst) < 1 {
		return false
	}
	b.tokens--
	return true
}

// loginFailures limits failed logins by client address, the way a
// password guesser works: many connections, one after another. Each
// address has an allowance of failures (burst, refilled at rate per
// second); an address that has used it up gets "rate_limited" for its
// logins, before any password is hashed, until it refills. Successful
// logins cost nothing, so the many users of one NAT are held back only by
// many failures among them. IPv6 addresses count by /64, which one host
// is commonly given whole.
type loginFailures struct {
	rate  float64
	burst int

	mu     sync.Mutex
	by     map[netip.Addr]*bucket
	swept  time.Time // when full allowances were last dropped from by
	maxLen int
}

// maxTracked bounds the addresses tracked; past it the ones whose
// allowance is whole again are forgotten (they are as good as new), and
// if none is, a new address's failures go uncounted until some refill:
// a table filled by many addresses at once must not lock everybody else
// out, and that many addresses would get their guesses anyway.
const maxTracked = 1 << 16

func newLoginFailures(perMinute float64) *loginFailures {
	if perMinute <= 0 {
		return nil
	}
	return &loginFailures{rate: perMinute / 60, burst: max(1, int(perMinute)),
		by: make(map[netip.Addr]*bucket), maxLen: maxTracked}
}

// key is what a failure counts against: the address, or its /64.
func key(addr net.Addr) (netip.Addr, bool) {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(tcp.IP)
	if !ok {
		return netip.Addr{}, false
	}
	if ip = ip.Unmap(); ip.Is6() {
		p, _ := ip.Prefix(64)
		ip = p.Addr()
	}
	return ip, true
}

// allowed reports whether addr may try a login at now. A nil limiter
// allows everything, as does an address that is not TCP.
func (l *loginFailures) allowed(addr net.Addr, now time.Time) bool {
	k, ok := key(addr)
	if l == nil || !ok {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.by[k]
	return b == nil || b.level(now, l.rate, l.burst) >= 1
}

// failed spends one of addr's allowance.
func (l *loginFailures) failed(addr net.Addr, now time.Time) {
	k, ok := key(addr)
	if l == nil || !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.by[k]
	if b == nil {
		if len(l.by) >= l.maxLen && !l.sweep(now) {
			return
		}
		b = &bucket{}
		l.by[k] = b
	}
	b.take(now, l.rate, l.burst) // none left: nothing more to spend
}

// sweep forgets the addresses whose allowance is whole again, at most
// once a second, and reports whether there is room; the caller holds mu.
func (l *loginFailures) sweep(now time.Time) bool {
	if now.Sub(l.swept) >= time.Second {
		l.swept = now
		for k, b := range l.by {
			if b.level(now, l.rate, l.burst) >= float64(l.burst) {
				delete(l.by, k)
			}
		}
	}
	return len(l.by) < l.maxLen
}
