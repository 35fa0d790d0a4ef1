package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"
)

// Console serialises the progress line and log output on one terminal:
// a log record first wipes the status line, so the two never interleave
// into garbage.
type Console struct {
	mu      sync.Mutex
	w       io.Writer
	tty     bool
	showing bool
}

// NewConsole writes to w; tty selects an in-place status line (\r)
// instead of one line per report.
func NewConsole(w io.Writer, tty bool) *Console { return &Console{w: w, tty: tty} }

// Write implements io.Writer for log handlers.
func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.showing {
		_, _ = io.WriteString(c.w, "\r\033[K")
		c.showing = false
	}
	return c.w.Write(p)
}

// Status shows s as the current progress.
func (c *Console) Status(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tty {
		fmt.Fprintf(c.w, "\r\033[K%s", s)
		c.showing = true
		return
	}
	fmt.Fprintln(c.w, s)
}

// Clear removes the status line.
func (c *Console) Clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.showing {
		_, _ = io.WriteString(c.w, "\r\033[K")
		c.showing = false
	}
}

// Interval is how often progress is reported.
func (c *Console) Interval() time.Duration {
	if c.tty {
		return 250 * time.Millisecond
	}
	return 5 * time.Second
}

// Phases of a run, for progress reports.
const (
	phaseSetup int32 = iota
	phaseWarmup
	phaseMeasure
	phaseDrain
)

// Meter is shared by everything in one scenario run: the event count,
// the measuring switch and the error tally.
type Meter struct {
	name string
	unit string
	// scale converts the total to units for progress (bytes → MiB).
	scale float64
	log   *slog.Logger

	// on is true during the measured period; recorders check it before
	// putting a latency into their histogram.
	on    atomic.Bool
	total atomic.Int64 // events (messages, logins, bytes…) at any time

	phase      atomic.Int32
	phaseStart atomic.Int64 // unix ns
	phaseBase  atomic.Int64 // total at phase start
	setupDone  atomic.Int64
	setupTotal atomic.Int64
	// goal is the events the measured period is to see when it lasts
	// until work is done rather than for a time (progress shows it).
	goal atomic.Int64

	nerr  atomic.Int64
	mu    sync.Mutex
	kinds map[string]int64
}

func newMeter(name, unit string, log *slog.Logger) *Meter {
	m := &Meter{name: name, unit: unit, scale: 1, log: log, kinds: map[string]int64{}}
	m.setPhase(phaseSetup)
	return m
}

func (m *Meter) setPhase(p int32) {
	m.phaseBase.Store(m.total.Load())
	m.phaseStart.Store(time.Now().UnixNano())
	m.phase.Store(p)
}

// maxKinds bounds the error table: kinds may be built from what a broken
// server sent, which must not grow memory without limit.
const maxKinds = 64

// Error counts one error of the given kind and logs the first few of each.
func (m *Meter) Error(kind string, args ...any) { m.errorN(kind, 1, args...) }

// errorN counts n errors of one kind at once (n messages never arrived).
func (m *Meter) errorN(kind string, n int64, args ...any) {
	m.nerr.Add(n)
	if len(kind) > 60 {
		kind = kind[:60]
	}
	m.mu.Lock()
	if _, ok := m.kinds[kind]; !ok && len(m.kinds) >= maxKinds {
		kind = "other"
	}
	before := m.kinds[kind]
	m.kinds[kind] += n
	m.mu.Unlock()
	if n > 1 {
		args = append(args, "count", n)
	}
	switch {
	case before < 3:
		m.log.Warn(m.name+": "+kind, args...)
	case before == 3:
		m.log.Warn(m.name+": "+kind+" (further ones are only counted)", args...)
	}
}

// Errors returns the error count and a copy of the table by kind.
func (m *Meter) Errors() (int64, map[string]int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.nerr.Load(), maps.Clone(m.kinds)
}

// showProgress reports progress on con until the returned stop is called.
func (m *Meter) showProgress(con *Console, warmup, duration time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { m.progress(ctx, con, warmup, duration) })
	return func() { cancel(); wg.Wait() }
}

// progress reports until ctx ends. A duration of 0 is a measured period
// that lasts until the goal is reached.
func (m *Meter) progress(ctx context.Context, con *Console, warmup, duration time.Duration) {
	t := time.NewTicker(con.Interval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			con.Clear()
			return
		case <-t.C:
		}
		el := time.Since(time.Unix(0, m.phaseStart.Load()))
		rate := float64(m.total.Load()-m.phaseBase.Load()) / m.scale / el.Seconds()
		errs := m.nerr.Load()
		var s string
		switch m.phase.Load() {
		case phaseSetup:
			s = fmt.Sprintf("%s: setup %d/%d  %s", m.name, m.setupDone.Load(), m.setupTotal.Load(), el.Truncate(100*time.Millisecond))
		case phaseWarmup:
			s = fmt.Sprintf("%s: warm-up %s/%s  %s %s/s  errors=%d", m.name, el.Truncate(100*time.Millisecond), warmup, fmtRate(rate), m.unit, errs)
		case phaseMeasure:
			if m.unit == "conn" { // idle: a rate means nothing, the count does
				s = fmt.Sprintf("%s: %s/%s  %d held  errors=%d", m.name, el.Truncate(100*time.Millisecond), duration, m.total.Load(), errs)
				break
			}
			if duration <= 0 { // until the work is done, not for a time
				done := float64(m.total.Load()-m.phaseBase.Load()) / m.scale
				s = fmt.Sprintf("%s: %s  %s/%s %s  %s %s/s  errors=%d", m.name, el.Truncate(100*time.Millisecond),
					fmtRate(done), fmtRate(float64(m.goal.Load())/m.scale), m.unit, fmtRate(rate), m.unit, errs)
				break
			}
			s = fmt.Sprintf("%s: %s/%s  %s %s/s  errors=%d", m.name, el.Truncate(100*time.Millisecond), duration, fmtRate(rate), m.unit, errs)
		default:
			s = fmt.Sprintf("%s: finishing  errors=%d", m.name, errs)
		}
		con.Status(s)
	}
}

// window is what the measured period observed.
type window struct {
	elapsed time.Duration
	count   int64
	// procs is what the --pid processes did, nil without --pid;
	// rssSamples is how many times their RSS was read.
	procs       []ProcStats
	rssSamples  int
	interrupted bool
	// steal is the host's steal time over the period, in percent of the
	// machine's CPU time (see hostCPU), when stealOK.
	steal   float64
	stealOK bool
	// self is the generator's own CPU time over the period, when selfOK.
	self   time.Duration
	selfOK bool
}

// measure runs the warm-up and the measured period. A cancelled ctx ends
// either early; what was measured so far is still returned, marked.
func (m *Meter) measure(ctx context.Context, env *Env) (window, error) {
	return m.measureWhile(ctx, env, env.Warmup, func() bool { return sleep(ctx, env.Duration) })
}

// measureWhile runs a warm-up of the given length, then measures while
// body runs. body reports whether it ran to its end; false marks the
// window interrupted. Load that starts only in body (instead of running
// through the warm-up) is measured from its first event to its last.
func (m *Meter) measureWhile(ctx context.Context, env *Env, warmup time.Duration, body func() bool) (window, error) {
	var w window
	m.setPhase(phaseWarmup)
	if !sleep(ctx, warmup) {
		return w, fmt.Errorf("interrupted during warm-up: %w", context.Cause(ctx))
	}
	watch, err := env.watch()
	if err != nil {
		return w, err
	}
	m.setPhase(phaseMeasure)
	h0, herr0 := readHostCPU()
	self0, ok0 := selfCPU()
	start, c0 := time.Now(), m.total.Load()
	m.on.Store(true)
	w.interrupted = !body()
	m.on.Store(false)
	w.elapsed, w.count = time.Since(start), m.total.Load()-c0
	self1, ok1 := selfCPU()
	// A generator that watches itself (the NATS loop, or a server in the
	// same process) has its CPU in the server's figure already.
	w.self, w.selfOK = self1-self0, ok0 && ok1 && !slices.Contains(env.PIDs, os.Getpid())
	h1, herr1 := readHostCPU()
	w.steal, w.stealOK = stealPercent(h0, h1, herr0, herr1)
	m.setPhase(phaseDrain)
	if w.procs, w.rssSamples, err = watch.stop(); err != nil {
		return w, fmt.Errorf("--pid: %w", err)
	}
	return w, nil
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func fmtRate(r float64) string {
	switch {
	case r >= 100:
		return fmt.Sprintf("%.0f", r)
	case r >= 10:
		return fmt.Sprintf("%.1f", r)
	default:
		return fmt.Sprintf("%.2f", r)
	}
}

// Env is what every scenario needs to know about the run.
type Env struct {
	Addr     string
	Prefix   string
	Password string
	Warmup   time.Duration
	Duration time.Duration
	// Timeout is how long a reply or delivery may take before it counts
	// as an error.
	Timeout time.Duration
	// SetupTimeout bounds each setup request (registration is bound by the password hash
	// and may queue behind others).
	SetupTimeout time.Duration
	// SetupConcurrency is the number of connections used for setup.
	SetupConcurrency int
	// Addr2 is where the receiving side connects when it is not Addr
	// ("" for Addr): recipients of files and of private messages, so that
	// what they get crosses from one server process to another.
	Addr2 string
	// PIDs are the server processes to watch (none: nil): their CPU time
	// is summed, their RSS followed one by one.
	PIDs    []int
	Log     *slog.Logger
	Console *Console
}

// recvAddr is the address of the receiving side.
func (env *Env) recvAddr() string {
	if env.Addr2 != "" {
		return env.Addr2
	}
	return env.Addr
}

// addrs returns the address of each of n users: those from index from on
// receive and connect to recvAddr, the others to Addr.
func (env *Env) addrs(n, from int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = env.Addr
		if i >= from {
			out[i] = env.recvAddr()
		}
	}
	return out
}

// watch starts following the --pid processes (nil without any).
func (env *Env) watch() (*procWatch, error) {
	w, err := watchProcs(env.PIDs, sampleEvery, ReadProc)
	if err != nil {
		return nil, fmt.Errorf("--pid: %w", err)
	}
	return w, nil
}

// sample reads the --pid processes once, CPU and RSS summed (nil without
// any).
func (env *Env) sample() (*ProcSample, error) {
	if len(env.PIDs) == 0 {
		return nil, nil
	}
	var sum ProcSample
	for _, pid := range env.PIDs {
		s, err := ReadProc(pid)
		if err != nil {
			return nil, fmt.Errorf("--pid: %w", err)
		}
		sum.CPU += s.CPU
		sum.Sys += s.Sys
		sum.RSS += s.RSS
	}
	return &sum, nil
}

// name builds a user or group name unique to this run: prefix, scenario
// tag, index and role.
func (env *Env) name(tag string, i int, role string) string {
	return fmt.Sprintf("%s.%s%d%s", env.Prefix, tag, i, role)
}

// ValidPrefix checks a --prefix: it becomes part of names that allow no
// whitespace, control characters or '|', and it must leave room within
// the 32-character name limit for the generator's suffixes.
func ValidPrefix(p string) error {
	if p == "" || len([]rune(p)) > 16 {
		return fmt.Errorf("prefix %q: want 1 to 16 characters", p)
	}
	if !utf8.ValidString(p) || strings.ContainsFunc(p, func(r rune) bool { return r == '|' || unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return fmt.Errorf("prefix %q: no spaces, control characters or '|'", p)
	}
	return nil
}
