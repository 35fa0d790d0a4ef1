package metrics

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestExposition(t *testing.T) {
	r := New()
	c := r.NewCounterVec("chatd_test_total", "Things.", "cmd", "result")
	c.With("login", "success").Add(3)
	c.With("add", `we"ird`).Inc()
	r.NewGaugeFunc("chatd_test_gauge", "A gauge.", func() float64 { return 2.5 })
	h := r.NewHistogramVec("chatd_test_seconds", "Latency.", "cmd")
	h.With("login").Observe(300 * time.Microsecond)
	h.With("login").Observe(2 * time.Second)
	h.With("login").Observe(time.Minute)
	var b strings.Builder
	r.Write(&b)
	out := b.String()
	for _, want := range []string{
		"# TYPE chatd_test_total counter\n",
		`chatd_test_total{cmd="add",result="we\"ird"} 1` + "\n",
		`chatd_test_total{cmd="login",result="success"} 3` + "\n",
		"# TYPE chatd_test_gauge gauge\nchatd_test_gauge 2.5\n",
		`chatd_test_seconds_bucket{cmd="login",le="0.00025"} 0` + "\n",
		`chatd_test_seconds_bucket{cmd="login",le="0.0005"} 1` + "\n",
		`chatd_test_seconds_bucket{cmd="login",le="2.5"} 2` + "\n",
		`chatd_test_seconds_bucket{cmd="login",le="+Inf"} 3` + "\n",
		`chatd_test_seconds_sum{cmd="login"} 62.0003` + "\n",
		`chatd_test_seconds_count{cmd="login"} 3` + "\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if strings.Index(out, "chatd_test_gauge") > strings.Index(out, "chatd_test_seconds") {
		t.Error("metrics not sorted by name")
	}
}

func TestProbes(t *testing.T) {
	notReady := errors.New("catching up with the log")
	h := Handler(New(), func() error { return nil }, func() error { return notReady })
	tests := []struct {
		path string
		code int
		body string
	}{
		{"/healthz", 200, "ok"},
		{"/readyz", 503, "catching up with the log"},
		{"/metrics", 200, ""},
		{"/nope", 404, ""},
	}
	for _, tc := range tests {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.body) {
			t.Errorf("%s: %d %q, want %d %q", tc.path, rec.Code, rec.Body.String(), tc.code, tc.body)
		}
	}
}

func BenchmarkCounterWith(b *testing.B) {
	c := New().NewCounterVec("x_total", "x", "cmd", "result")
	b.ReportAllocs()
	for b.Loop() {
		c.With("private_chat", "success").Inc()
	}
}

// The same from every core at once, as edges and workers do.
func BenchmarkCounterWithParallel(b *testing.B) {
	c := New().NewCounterVec("x_total", "x", "cmd", "result")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.With("private_chat", "success")
		}
	})
}
