package edge

import (
	"net"
	"testing"
	"time"
)

func TestBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// 10 a second, 3 at once: each step is a request at a time, and
	// whether it is allowed.
	type step struct {
		ms   int
		want bool
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"a burst, then nothing until a token comes back",
			[]step{{0, true}, {0, true}, {0, true}, {0, false}, {50, false}, {100, true}, {100, false}}},
		{"a steady pace within the rate is never refused",
			[]step{{0, true}, {100, true}, {200, true}, {300, true}, {400, true}, {500, true}}},
		{"an idle while refills up to the burst only",
			[]step{{0, true}, {10000, true}, {10000, true}, {10000, true}, {10000, false}}},
		{"refusals spend nothing",
			[]step{{0, true}, {0, true}, {0, true}, {0, false}, {0, false}, {0, false}, {100, true}}},
		{"a clock that steps back refills nothing",
			[]step{{1000, true}, {1000, true}, {1000, true}, {0, false}, {1000, false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bucket
			for i, s := range tc.steps {
				if got := b.take(at(s.ms), 10, 3); got != s.want {
					t.Fatalf("request %d at %d ms: allowed %v, want %v", i, s.ms, got, s.want)
				}
			}
		})
	}
}

// BenchmarkBucketTake is the cost the allowance adds to every request.
func BenchmarkBucketTake(b *testing.B) {
	var bk bucket
	now := time.Now()
	for i := range b.N {
		bk.take(now.Add(time.Duration(i)*time.Microsecond), 1e6, 1000)
	}
}

func TestLoginFailures(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tcp := func(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 5000} }
	// 3 a minute: a failure's allowance comes back after 20 s.
	type step struct {
		s    int    // seconds after t0
		addr string // the client's
		fail bool   // a failure at s, after asking whether a login is allowed
		want bool   // allowed
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"three failures, then refused until one refills", []step{
			{0, "192.0.2.1", true, true}, {1, "192.0.2.1", true, true}, {2, "192.0.2.1", true, true},
			{3, "192.0.2.1", false, false}, {19, "192.0.2.1", false, false}, {21, "192.0.2.1", true, true},
			{22, "192.0.2.1", false, false}}},
		{"another address has its own", []step{
			{0, "192.0.2.1", true, true}, {0, "192.0.2.1", true, true}, {0, "192.0.2.1", true, true},
			{0, "192.0.2.2", true, true}, {0, "192.0.2.1", false, false}}},
		{"an IPv4 address the same written as IPv6", []step{
			{0, "192.0.2.1", true, true}, {0, "::ffff:192.0.2.1", true, true}, {0, "192.0.2.1", true, true},
			{0, "::ffff:192.0.2.1", false, false}}},
		{"one /64 is one host", []step{
			{0, "2001:db8:0:1::1", true, true}, {0, "2001:db8:0:1::2", true, true}, {0, "2001:db8:0:1:ffff::9", true, true},
			{0, "2001:db8:0:1::1", false, false}, {0, "2001:db8:0:2::1", false, true}}},
		{"refusals and successes cost nothing", []step{
			{0, "192.0.2.1", false, true}, {0, "192.0.2.1", false, true}, {0, "192.0.2.1", true, true},
			{0, "192.0.2.1", true, true}, {0, "192.0.2.1", true, true}, {0, "192.0.2.1", false, false},
			{20, "192.0.2.1", false, true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLoginFailures(3)
			for i, s := range tc.steps {
				now, a := t0.Add(time.Duration(s.s)*time.Second), tcp(s.addr)
				if got := l.allowed(a, now); got != s.want {
					t.Fatalf("step %d (%s at %ds): allowed %v, want %v", i, s.addr, s.s, got, s.want)
				}
				if s.fail {
					l.failed(a, now)
				}
			}
		})
	}
	if newLoginFailures(0) != nil {
		t.Fatal("a limit of 0 is no limit")
	}
	var none *loginFailures
	none.failed(tcp("192.0.2.1"), t0)
	if !none.allowed(tcp("192.0.2.1"), t0) {
		t.Fatal("no limiter refused a login")
	}
}

// The table of addresses is bounded: full, it forgets the addresses whose
// allowance is whole again; with none such, a new address goes uncounted
// (and allowed) rather than lock out everybody new.
func TestLoginFailuresTableBounded(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := newLoginFailures(1) // one a minute
	l.maxLen = 2
	a, b, c := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1)}, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 2)}, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 3)}
	l.failed(a, t0)
	l.failed(b, t0)
	l.failed(c, t0) // full of spent allowances: c is not counted
	if len(l.by) != 2 || !l.allowed(c, t0) || l.allowed(a, t0) {
		t.Fatalf("full table: %d tracked, c allowed %v, a allowed %v", len(l.by), l.allowed(c, t0), l.allowed(a, t0))
	}
	later := t0.Add(2 * time.Minute) // a and b whole again
	l.failed(c, later)
	if len(l.by) != 1 || l.allowed(c, later) || !l.allowed(a, later) {
		t.Fatalf("after the sweep: %d tracked, c allowed %v, a allowed %v", len(l.by), l.allowed(c, later), l.allowed(a, later))
	}
}
