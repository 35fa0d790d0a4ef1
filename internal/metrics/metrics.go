// Package metrics is a small Prometheus text-format exporter: counters
// and histograms with labels, and gauges read when scraped. It covers
// what chatd reports and nothing more, which keeps the binary free of a
// large client library.
package metrics

import (
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Registry holds metrics and writes them in the text exposition format.
type Registry struct {
	mu      sync.Mutex
	metrics []metric
}

type metric interface {
	name() string
	write(w io.Writer)
}

// New returns an empty registry.
func New() *Registry { return &Registry{} }

func (r *Registry) add(m metric) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.metrics = append(r.metrics, m)
}

// Write writes every metric, sorted by name.
func (r *Registry) Write(w io.Writer) {
	r.mu.Lock()
	ms := append([]metric(nil), r.metrics...)
	r.mu.Unlock()
	sort.Slice(ms, func(i, j int) bool { return ms[i].name() < ms[j].name() })
	for _, m := range ms {
		m.write(w)
	}
}

// ServeHTTP serves the metrics.
func (r *Registry) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	r.Write(w)
}

func header(w io.Writer, name, help, typ string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

// labelString renders {k="v",…}; values are escaped as the format requires.
func labelString(keys, values []string) string {
	if len(keys) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteString(`="`)
		b.WriteString(strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`).Replace(values[i]))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// seriesKey identifies a series by its label values without allocating;
// families here have at most four labels (more are joined into the last).
type seriesKey [4]string

func keyOf(values []string) seriesKey {
	var k seriesKey
	for i, v := range values {
		if i < len(k)-1 {
			k[i] = v
		} else {
			k[len(k)-1] += "\x00" + v
		}
	}
	return k
}

func (k seriesKey) less(o seriesKey) bool {
	for i := range k {
		if k[i] != o[i] {
			return k[i] < o[i]
		}
	}
	return false
}

// family holds the series of one metric, told apart by label values, and
// keeps them in label order for the exposition. Series are looked up on
// every request, from every core: readers load the map without a lock
// (a read lock's shared counter alone costs more than the lookup when
// cores contend for it), and a new series replaces the map whole.
type family[T any] struct {
	series cowMap[seriesKey, *T]
	mu     sync.Mutex
	order  []seriesKey // under mu; a key is added here after its series
}

// get returns the series for values, making it with mk the first time.
func (f *family[T]) get(values []string, mk func() *T) *T {
	key := keyOf(values)
	if s, ok := f.series.snapshot()[key]; ok {
		return s
	}
	s, added := f.series.add(key, mk, 0)
	if added {
		f.mu.Lock()
		f.order = append(f.order, key)
		sort.Slice(f.order, func(i, j int) bool { return f.order[i].less(f.order[j]) })
		f.mu.Unlock()
	}
	return s
}

// each calls fn for every series, in label order.
func (f *family[T]) each(fn func(*T)) {
	f.mu.Lock()
	order := append([]seriesKey(nil), f.order...)
	f.mu.Unlock()
	m := f.series.snapshot()
	for _, k := range order {
		fn(m[k])
	}
}

// cowMap is a map read without a lock, from every core: readers take an
// immutable snapshot, and add replaces it whole. It suits maps that stop
// growing early (series, label values) and are read all the time.
type cowMap[K comparable, V any] struct {
	mu sync.Mutex // serialises add
	p  atomic.Pointer[map[K]V]
}

// snapshot returns the map as it is; it must not be modified.
func (c *cowMap[K, V]) snapshot() map[K]V {
	if p := c.p.Load(); p != nil {
		return *p
	}
	return nil
}

// add returns k's value, making it with mk when k is absent, and reports
// whether it added it. A map of max entries or more (max 0: no bound)
// gets nothing more: the value made is returned without being kept.
func (c *cowMap[K, V]) add(k K, mk func() V, max int) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.snapshot()
	if v, ok := old[k]; ok {
		return v, false
	}
	v := mk()
	if max > 0 && len(old) >= max {
		return v, false
	}
	m := make(map[K]V, len(old)+1)
	maps.Copy(m, old)
	m[k] = v
	c.p.Store(&m)
	return v, true
}

// CounterVec is a family of counters told apart by label values.
type CounterVec struct {
	n, help string
	labels  []string
	family[Counter]
}

// Counter is one monotonically increasing series.
type Counter struct {
	v      atomic.Uint64
	labels string
}

// Inc adds one.
func (c *Counter) Inc() { c.v.Add(1) }

// Add adds n.
func (c *Counter) Add(n uint64) { c.v.Add(n) }

// Value returns the current count.
func (c *Counter) Value() uint64 { return c.v.Load() }

// NewCounterVec registers a counter family.
func (r *Registry) NewCounterVec(name, help string, labels ...string) *CounterVec {
	v := &CounterVec{n: name, help: help, labels: labels}
	r.add(v)
	return v
}

// NewCounter registers a counter without labels.
func (r *Registry) NewCounter(name, help string) *Counter {
	return r.NewCounterVec(name, help).With()
}

// With returns the series for the given label values, creating it.
// Callers on hot paths keep the returned counter.
func (v *CounterVec) With(values ...string) *Counter {
	return v.get(values, func() *Counter { return &Counter{labels: labelString(v.labels, values)} })
}

func (v *CounterVec) name() string { return v.n }

func (v *CounterVec) write(w io.Writer) {
	header(w, v.n, v.help, "counter")
	v.each(func(c *Counter) { fmt.Fprintf(w, "%s%s %d\n", v.n, c.labels, c.v.Load()) })
}

// gaugeFunc is a gauge, or a counter, read at scrape time.
type gaugeFunc struct {
	n, help, typ string
	f            func() float64
}

// NewGaugeFunc registers a gauge whose value f returns when scraped.
func (r *Registry) NewGaugeFunc(name, help string, f func() float64) {
	r.add(&gaugeFunc{n: name, help: help, f: f, typ: "gauge"})
}

// NewCounterFunc registers a counter kept elsewhere (a library's own
// statistics), read when scraped; f must never decrease.
func (r *Registry) NewCounterFunc(name, help string, f func() float64) {
	r.add(&gaugeFunc{n: name, help: help, f: f, typ: "counter"})
}

func (g *gaugeFunc) name() string { return g.n }

func (g *gaugeFunc) write(w io.Writer) {
	header(w, g.n, g.help, g.typ)
	fmt.Fprintf(w, "%s %s\n", g.n, formatFloat(g.f()))
}

// latencyBuckets suit request latencies from 100µs to 10s, in seconds.
func latencyBuckets() []float64 {
	return []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
}

// HistogramVec is a family of latency histograms told apart by labels.
type HistogramVec struct {
	n, help string
	labels  []string
	buckets []float64
	family[Histogram]
}

// Histogram counts observations into fixed buckets.
type Histogram struct {
	buckets []float64
	labels  []string // label values
	keys    []string
	counts  []atomic.Uint64 // one per bucket, then +Inf
	sumNano atomic.Uint64
}

// NewHistogramVec registers a latency histogram family (seconds).
func (r *Registry) NewHistogramVec(name, help string, labels ...string) *HistogramVec {
	v := &HistogramVec{n: name, help: help, labels: labels, buckets: latencyBuckets()}
	r.add(v)
	return v
}

// With returns the series for the given label values, creating it.
func (v *HistogramVec) With(values ...string) *Histogram {
	return v.get(values, func() *Histogram {
		return &Histogram{buckets: v.buckets, labels: append([]string(nil), values...), keys: v.labels,
			counts: make([]atomic.Uint64, len(v.buckets)+1)}
	})
}

// Observe records one duration.
func (h *Histogram) Observe(d time.Duration) {
	s := d.Seconds()
	i := sort.SearchFloat64s(h.buckets, s)
	h.counts[i].Add(1)
	h.sumNano.Add(uint64(max(d, 0)))
}

// Count is the number of observations.
func (h *Histogram) Count() uint64 {
	var n uint64
	for i := range h.counts {
		n += h.counts[i].Load()
	}
	return n
}

// Mean is the average observation, zero before the first.
func (h *Histogram) Mean() time.Duration {
	n := h.Count()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sumNano.Load() / n)
}

func (v *HistogramVec) name() string { return v.n }

func (v *HistogramVec) write(w io.Writer) {
	header(w, v.n, v.help, "histogram")
	v.each(func(h *Histogram) {
		var cum uint64
		keys := append(append([]string(nil), h.keys...), "le")
		for i, b := range v.buckets {
			cum += h.counts[i].Load()
			fmt.Fprintf(w, "%s_bucket%s %d\n", v.n, labelString(keys, append(append([]string(nil), h.labels...), formatFloat(b))), cum)
		}
		cum += h.counts[len(v.buckets)].Load()
		fmt.Fprintf(w, "%s_bucket%s %d\n", v.n, labelString(keys, append(append([]string(nil), h.labels...), "+Inf")), cum)
		ls := labelString(h.keys, h.labels)
		fmt.Fprintf(w, "%s_sum%s %s\n", v.n, ls, formatFloat(float64(h.sumNano.Load())/1e9))
		fmt.Fprintf(w, "%s_count%s %d\n", v.n, ls, cum)
	})
}

func formatFloat(f float64) string {
	if math.IsInf(f, 1) {
		return "+Inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// Interner turns label values read out of messages (a command, a result)
// into strings without allocating each time: values seen before come from
// a map that readers load without a lock, replaced whole when a value is
// added. It keeps at most maxInterned values and copies the rest, so a
// stream of unexpected values cannot grow it without bound.
type Interner struct{ m cowMap[string, string] }

const maxInterned = 256

// String returns b as a string.
func (in *Interner) String(b []byte) string {
	if s, ok := in.m.snapshot()[string(b)]; ok { // a lookup by string(b) copies nothing
		return s
	}
	s := string(b)
	s, _ = in.m.add(s, func() string { return s }, maxInterned)
	return s
}
