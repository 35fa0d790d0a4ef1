package bench

import (
	"cmp"
	"fmt"
	"strings"
	"time"
)

// Result is what one scenario run measured; it is also the JSON record.
type Result struct {
	Scenario string         `json:"scenario"`
	Params   map[string]any `json:"params"`
	Label    string         `json:"label"`
	Started  time.Time      `json:"started"`
	// Seconds is the measured period as it really lasted.
	Seconds float64 `json:"seconds"`
	// Count events of Unit happened in the measured period, Rate per second.
	Unit  string  `json:"unit"`
	Count float64 `json:"count"`
	Rate  float64 `json:"rate"`
	// Latency is what each event took; LatencyOf says from when to when.
	Latency    *LatencyStats    `json:"latency,omitempty"`
	LatencyOf  string           `json:"latency_of,omitempty"`
	Errors     int64            `json:"errors"`
	ErrorKinds map[string]int64 `json:"error_kinds,omitempty"`
	Server     *ServerStats     `json:"server,omitempty"`
	// HostStealPct is the share of the machine's CPU time a hypervisor
	// gave to others during the measured period (Linux guests): at 20 %
	// the same work shows fewer events and more CPU per event.
	HostStealPct *float64 `json:"host_steal_pct,omitempty"`
	// GeneratorCPUSeconds is the generator's own CPU time over the
	// measured period. It shares the machine with a local server: what it
	// takes, the server cannot have.
	GeneratorCPUSeconds float64        `json:"generator_cpu_seconds,omitempty"`
	Extra               map[string]any `json:"extra,omitempty"`
	Interrupted         bool           `json:"interrupted,omitempty"`
	Summary             string         `json:"summary"`

	hist *Histogram
	// serverWhat names what Server measured in the summary line.
	serverWhat string
}

// Histogram returns the latency histogram behind Latency (nil if none).
func (r *Result) Histogram() *Histogram { return r.hist }

// LatencyStats summarises a histogram in milliseconds.
type LatencyStats struct {
	Count  uint64  `json:"count"`
	MinMs  float64 `json:"min_ms"`
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p999_ms"`
	MaxMs  float64 `json:"max_ms"`
	// Curve is the percentile distribution at fixed points, for plotting.
	Curve []CurvePoint `json:"curve"`
}

// CurvePoint is one point of a percentile curve.
type CurvePoint struct {
	Percentile float64 `json:"percentile"`
	Ms         float64 `json:"ms"`
}

var curvePercentiles = []float64{0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 99.999, 100}

func ms(ns int64) float64 { return float64(ns) / 1e6 }

func latencyStats(h *Histogram) *LatencyStats {
	if h == nil || h.Count() == 0 {
		return nil
	}
	s := &LatencyStats{Count: h.Count(), MinMs: ms(h.Min()), MeanMs: h.Mean() / 1e6,
		P50Ms: ms(h.Quantile(0.5)), P90Ms: ms(h.Quantile(0.9)), P99Ms: ms(h.Quantile(0.99)),
		P999Ms: ms(h.Quantile(0.999)), MaxMs: ms(h.Max())}
	for _, p := range curvePercentiles {
		s.Curve = append(s.Curve, CurvePoint{p, ms(h.Quantile(p / 100))})
	}
	return s
}

// ServerStats is what --pid observed of the server processes during the
// measured period. With one process the totals are that process's.
type ServerStats struct {
	// PID is the process when there is only one (Procs lists them all).
	PID        int     `json:"pid,omitempty"`
	CPUSeconds float64 `json:"cpu_seconds"` // summed over the processes
	// SysSeconds is the part of CPUSeconds spent in the kernel. On loopback
	// the kernel does much of the receiving side's work on the sending
	// CPU, so a server's socket writes carry some of the generator's cost.
	SysSeconds float64 `json:"sys_seconds"`
	// Cores is CPU seconds per wall second: 2 means two cores busy.
	Cores float64 `json:"cores"`
	// CPUPerUnitUs is server CPU microseconds per counted event.
	CPUPerUnitUs float64 `json:"cpu_per_unit_us,omitempty"`
	// RSSBefore and RSSAfter are summed over the processes (idle: before
	// is from before the connections were opened).
	RSSBefore     int64   `json:"rss_before_bytes"`
	RSSAfter      int64   `json:"rss_after_bytes"`
	RSSPerConnKiB float64 `json:"rss_per_conn_kib,omitempty"`
	// RSSPeakGrowth is the largest RSSGrowth of a process, RSSPeakGrowthPID
	// that process; RSSSamples is how many times each RSS was read.
	RSSPeakGrowth    int64       `json:"rss_peak_growth_bytes"`
	RSSPeakGrowthPID int         `json:"rss_peak_growth_pid"`
	RSSSamples       int         `json:"rss_samples"`
	Procs            []ProcStats `json:"procs"`
}

// serverStats sums what the processes did over a period of seconds.
func serverStats(procs []ProcStats, samples int, seconds float64) *ServerStats {
	if len(procs) == 0 {
		return nil
	}
	s := &ServerStats{RSSSamples: samples, Procs: procs}
	if len(procs) == 1 {
		s.PID = procs[0].PID
	}
	for _, p := range procs {
		s.CPUSeconds += p.CPUSeconds
		s.SysSeconds += p.SysSeconds
		s.RSSBefore += p.RSSStart
		s.RSSAfter += p.RSSEnd
	}
	top, _ := largestGrowth(procs)
	s.RSSPeakGrowth, s.RSSPeakGrowthPID = top.RSSGrowth, top.PID
	if seconds > 0 {
		s.Cores = s.CPUSeconds / seconds
	}
	return s
}

// text is the server part of a summary line, after what names it:
// " cpu=…/msg (0.52 cores, 40% kernel) rss=40.1MiB→41.0MiB rss peak growth=1.2MiB (pid 1234)".
// With several processes RSS before→after is their sum.
func (s *ServerStats) text(unit string) string {
	var b strings.Builder
	if s.CPUPerUnitUs > 0 {
		fmt.Fprintf(&b, " cpu=%s/%s", fmtCPU(s.CPUPerUnitUs), unit)
	}
	fmt.Fprintf(&b, " (%.2f cores", s.Cores)
	if s.CPUSeconds > 0 {
		fmt.Fprintf(&b, ", %.0f%% kernel", 100*s.SysSeconds/s.CPUSeconds)
	}
	fmt.Fprintf(&b, ") rss=%s→%s", fmtMiB(s.RSSBefore), fmtMiB(s.RSSAfter))
	if len(s.Procs) > 1 {
		b.WriteString(" in all,")
	}
	fmt.Fprintf(&b, " rss peak growth=%s (pid %d)", fmtMiB(s.RSSPeakGrowth), s.RSSPeakGrowthPID)
	return b.String()
}

// serverName names the watched processes in a summary line.
func (r *Result) serverName() string {
	name := cmp.Or(r.serverWhat, "server")
	if s := r.Server; s != nil && len(s.Procs) > 1 {
		name = fmt.Sprintf("%d %s processes", len(s.Procs), name)
	}
	return name
}

// merged returns the histograms merged into one.
func merged(hists ...*Histogram) *Histogram {
	h := new(Histogram)
	for _, x := range hists {
		h.Merge(x)
	}
	return h
}

// setCount records how much the measured window w counted, in the
// result's unit, and the rate it makes.
func (r *Result) setCount(w window, count float64) {
	r.Count = count
	if w.elapsed > 0 {
		r.Rate = count / w.elapsed.Seconds()
	}
}

// fill completes the common fields from a measured window and builds the
// summary line: head, rate, latency, errors, server.
func (r *Result) fill(m *Meter, w window, h *Histogram, rateText string) {
	r.Seconds = w.elapsed.Seconds()
	r.Interrupted = w.interrupted
	r.hist = h
	r.Latency = latencyStats(h)
	r.Errors, r.ErrorKinds = m.Errors()
	r.Server = serverStats(w.procs, w.rssSamples, r.Seconds)
	if r.Server != nil && r.Count > 0 {
		r.Server.CPUPerUnitUs = r.Server.CPUSeconds * 1e6 / r.Count
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %s", r.Scenario, r.Label, rateText)
	if r.Latency != nil {
		fmt.Fprintf(&b, "  p50=%s p99=%s p999=%s max=%s", fmtLatency(h.Quantile(0.5)), fmtLatency(h.Quantile(0.99)),
			fmtLatency(h.Quantile(0.999)), fmtLatency(h.Max()))
	}
	fmt.Fprintf(&b, " errors=%d", r.Errors)
	if s := r.Server; s != nil {
		b.WriteString("  " + r.serverName() + s.text(r.Unit))
	}
	if w.selfOK && r.Seconds > 0 {
		r.GeneratorCPUSeconds = w.self.Seconds()
		fmt.Fprintf(&b, "  generator %s", fmtCores(r.GeneratorCPUSeconds, r.Count, r.Seconds, r.Unit))
	}
	if w.stealOK {
		r.HostStealPct = &w.steal
		fmt.Fprintf(&b, " host steal=%.0f%%", w.steal)
	}
	if r.Interrupted {
		b.WriteString("  (interrupted)")
	}
	r.Summary = b.String()
}

// fmtCores is CPU seconds over a period as "cpu=12.5µs/msg (0.41 cores)",
// without the per-unit part when nothing was counted.
func fmtCores(cpu, count, seconds float64, unit string) string {
	cores := fmt.Sprintf("(%.2f cores)", cpu/seconds)
	if count <= 0 {
		return cores
	}
	return fmt.Sprintf("cpu=%s/%s %s", fmtCPU(cpu*1e6/count), unit, cores)
}

// fmtLatency prints nanoseconds with about three significant digits.
func fmtLatency(ns int64) string {
	d := time.Duration(ns)
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= 100*time.Millisecond:
		return fmt.Sprintf("%.0fms", ms(ns))
	default:
		return fmt.Sprintf("%.3gms", ms(ns))
	}
}

func fmtCPU(us float64) string {
	switch {
	case us >= 1e4:
		return fmt.Sprintf("%.1fms", us/1e3)
	case us >= 100:
		return fmt.Sprintf("%.0fµs", us)
	default:
		return fmt.Sprintf("%.3gµs", us)
	}
}

func fmtMiB(b int64) string { return fmt.Sprintf("%.1fMiB", float64(b)/(1<<20)) }
