package edge

import (
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
