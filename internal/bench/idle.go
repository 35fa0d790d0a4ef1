package bench

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// IdleOptions configure the idle scenario.
type IdleOptions struct {
	Conns           int           // logged-in connections to hold
	Hold            time.Duration // how long to hold them
	DialConcurrency int           // connections being opened at once
}

// DefaultIdle is the idle scenario's defaults. 19000, not 20000: the
// hard limit here is 20000 open files per process, and both the server
// and the generator need a few descriptors besides the connections.
var DefaultIdle = IdleOptions{Conns: 19000, Hold: 10 * time.Second, DialConcurrency: 64}

// RunIdle logs in many users, each on its own connection, holds them idle
// and reports what they cost the server in memory.
func RunIdle(ctx context.Context, env *Env, o IdleOptions) (*Result, error) {
	if o.Conns < 1 || o.DialConcurrency < 1 {
		return nil, errors.New("idle: need --conns ≥ 1 and --dial-concurrency ≥ 1")
	}
	res := &Result{Scenario: "idle", Started: time.Now(), Unit: "conn",
		Label:     fmt.Sprintf("conns=%d hold=%s", o.Conns, o.Hold),
		Params:    map[string]any{"conns": o.Conns, "hold_seconds": o.Hold.Seconds()},
		LatencyOf: "TCP connect → login_reply success, while ramping up"}
	m := newMeter("idle", "conn", env.Log)
	defer m.showProgress(env.Console, 0, o.Hold)()

	names := make([]string, o.Conns)
	for i := range names {
		names[i] = env.name("i", i, "u")
	}
	m.setupTotal.Store(int64(2 * o.Conns))
	if err := registerAll(ctx, env, m, names); err != nil {
		return nil, fmt.Errorf("idle setup: %w", err)
	}
	// Let the server finish with the setup connections before the baseline.
	if !sleep(ctx, time.Second) {
		return nil, fmt.Errorf("idle: %w", context.Cause(ctx))
	}
	before, err := env.sample()
	if err != nil {
		return nil, err
	}

	conns := make([]*Conn, o.Conns)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		for _, c := range conns {
			if c != nil {
				c.Wait()
			}
		}
	}()
	hists := make([]*Histogram, o.DialConcurrency)
	for i := range hists {
		hists[i] = new(Histogram)
	}
	var dropped atomic.Int64
	m.on.Store(true) // every ramp-up login latency counts
	err = parallel(ctx, o.Conns, o.DialConcurrency, func(ctx context.Context, w, i int) error {
		defer m.setupDone.Add(1)
		start := time.Now()
		c, err := Dial(ctx, env.Addr, 512)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			m.Error("connect", "err", err)
			return nil
		}
		conns[i] = c
		if _, err := login(ctx, c, env.SetupTimeout, names[i], env.Password); err != nil {
			if ctx.Err() != nil {
				return err
			}
			m.Error("login", "err", err)
			return nil
		}
		hists[w].RecordDuration(time.Since(start))
		m.total.Add(1)
		c.Serve(func(line []byte) {
			var f Fields
			if f.Parse(line) != nil || string(f.Cmd) == "error" {
				m.Error("unexpected_line", "line", cut(line))
			}
		}, func(err error) {
			dropped.Add(1)
			m.total.Add(-1)
			m.Error("disconnect", "user", names[i], "err", err)
		})
		return nil
	})
	m.on.Store(false)
	if err != nil {
		return nil, fmt.Errorf("idle: %w", err)
	}
	// CPU is reported for the hold alone (what idle connections cost over
	// time); the ramp-up's logins are reported apart. RSS is compared with
	// the baseline taken before any client connected.
	watch, err := env.watch()
	if err != nil {
		return nil, err
	}
	var w window
	m.setPhase(phaseMeasure)
	h0, herr0 := readHostCPU()
	start := time.Now()
	w.interrupted = !sleep(ctx, o.Hold)
	w.elapsed = time.Since(start)
	h1, herr1 := readHostCPU()
	w.steal, w.stealOK = stealPercent(h0, h1, herr0, herr1)
	rampEnd := watch.start()
	if w.procs, w.rssSamples, err = watch.stop(); err != nil {
		return nil, fmt.Errorf("--pid: %w", err)
	}
	held := m.total.Load()
	w.count = held
	m.setPhase(phaseDrain)

	h := new(Histogram)
	for _, x := range hists {
		h.Merge(x)
	}
	res.Count = float64(held)
	res.Extra = map[string]any{"held": held, "dropped_while_holding": dropped.Load()}
	res.fill(m, w, h, fmt.Sprintf("%d held", held))
	if s := res.Server; s != nil && held > 0 {
		rampCPU := (rampEnd.CPU - before.CPU).Seconds()
		res.Extra["ramp_up_cpu_seconds"] = rampCPU
		s.CPUPerUnitUs = 0 // CPU per connection means nothing for idle ones; memory does
		s.RSSBefore = before.RSS
		s.RSSPerConnKiB = float64(s.RSSAfter-s.RSSBefore) / float64(held) / 1024
		res.Summary = fmt.Sprintf("%s %s: %d held (login p50=%s p99=%s max=%s) errors=%d  %s rss=%s→%s = %.1fKiB/conn  cpu ramp-up=%.2fs hold=%.2fs  rss peak growth during hold=%s (pid %d)",
			res.Scenario, res.Label, held, fmtLatency(h.Quantile(0.5)), fmtLatency(h.Quantile(0.99)), fmtLatency(h.Max()),
			res.Errors, res.serverName(), fmtMiB(s.RSSBefore), fmtMiB(s.RSSAfter), s.RSSPerConnKiB, rampCPU, s.CPUSeconds,
			fmtMiB(s.RSSPeakGrowth), s.RSSPeakGrowthPID)
		if p := res.HostStealPct; p != nil {
			res.Summary += fmt.Sprintf(" host steal=%.0f%%", *p)
		}
		if res.Interrupted {
			res.Summary += "  (interrupted)"
		}
	}
	return res, nil
}

// registerAll registers names over the setup connections.
func registerAll(ctx context.Context, env *Env, m *Meter, names []string) error {
	conns := make([]*Conn, env.SetupConcurrency)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	return parallel(ctx, len(names), env.SetupConcurrency, func(ctx context.Context, w, i int) error {
		defer m.setupDone.Add(1)
		if conns[w] == nil {
			c, err := Dial(ctx, env.Addr, 4<<10)
			if err != nil {
				return err
			}
			conns[w] = c
		}
		return register(ctx, conns[w], env.SetupTimeout, names[i], env.Password)
	})
}
