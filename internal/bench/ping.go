package bench

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// PingOptions configure the ping scenario.
type PingOptions struct {
	Conns  int // connections, none of them logged in
	Window int // pings each connection keeps in flight
}

// DefaultPing matches the private scenario's shape: as many connections as
// it has senders, one request in flight each.
var DefaultPing = PingOptions{Conns: 20, Window: 1}

// RunPing measures the server's front alone: ping answered by pong on
// connections that never log in, so no NATS message and no worker take
// part. A round trip is one request read from a client socket and one
// line written back, the floor under every scenario that speaks the
// protocol. Private chat adds a second write (the delivery) and two NATS
// messages to it.
func RunPing(ctx context.Context, env *Env, o PingOptions) (*Result, error) {
	if o.Conns < 1 || o.Window < 1 {
		return nil, errors.New("ping: --conns and --window must be at least 1")
	}
	res := &Result{Scenario: "ping", Started: time.Now(), Unit: "ping",
		Label:     fmt.Sprintf("conns=%d window=%d", o.Conns, o.Window),
		Params:    map[string]any{"conns": o.Conns, "window": o.Window},
		LatencyOf: "ping written → pong read"}
	m := newMeter("ping", "ping", env.Log)
	defer m.showProgress(env.Console, env.Warmup, env.Duration)()

	conns := make([]*Conn, o.Conns)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
				c.Wait()
			}
		}
	}()
	m.setupTotal.Store(int64(o.Conns))
	err := parallel(ctx, o.Conns, env.SetupConcurrency, func(ctx context.Context, _, i int) error {
		defer m.setupDone.Add(1)
		c, err := Dial(ctx, env.Addr, readBuf)
		conns[i] = c
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ping setup: %w", err)
	}

	base := time.Now()
	flows := make([]*flow, o.Conns)
	hists := make([]*Histogram, o.Conns)
	for i, c := range conns {
		fl, h := newFlow(o.Window, 1), new(Histogram)
		flows[i], hists[i] = fl, h
		var f Fields
		// Each connection's lines arrive on its own reader goroutine, so
		// f and h need no locks.
		c.Serve(func(line []byte) {
			now := int64(time.Since(base))
			if err := f.Parse(line); err != nil || string(f.Cmd) != "pong" {
				m.Error("unexpected", "conn", i, "line", cut(line))
				return
			}
			k, seq, ts, ok := parseStamp(f.ID)
			if !ok || k != int64(i) || ts > now {
				m.Error("bad_id", "conn", i, "line", cut(line))
				return
			}
			if !fl.receipt(seq) {
				m.Error("duplicate_or_late", "conn", i, "seq", seq)
				return
			}
			fl.replies.Add(1)
			if m.on.Load() {
				h.Record(now - ts)
			}
			m.total.Add(1)
		}, func(err error) { m.Error("disconnect", "conn", i, "err", err) })
	}

	w, err := driveFlows(ctx, env, m, flows, func(i int) (string, func(int64) bool) {
		c, buf := conns[i], make([]byte, 0, 64)
		return fmt.Sprint("conn ", i), func(seq int64) bool {
			buf = append(buf[:0], `{"cmd":"ping","id":"`...)
			buf = appendStamp(buf, int64(i), seq, int64(time.Since(base)))
			buf = append(buf, "\"}\n"...)
			if err := c.Write(buf); err != nil {
				if !c.Closing() {
					m.Error("write", "conn", i, "err", err)
				}
				return false
			}
			return true
		}
	})
	if err != nil {
		return nil, fmt.Errorf("ping: %w", err)
	}
	for _, c := range conns {
		c.Close()
	}
	res.setCount(w, float64(w.count))
	res.fill(m, w, merged(hists...), fmtRate(res.Rate)+" pings/s")
	return res, nil
}
