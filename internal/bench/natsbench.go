package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// NATSOptions configure the raw NATS comparison.
type NATSOptions struct {
	URL    string // "" starts an embedded server in this process
	Pairs  int
	Window int
	// InProcess connects the clients to the embedded server without
	// sockets, as `chatd all` connects its edge and worker: the NATS
	// part of a private message alone, with no kernel work in it.
	InProcess bool
}

// DefaultNATS matches the private scenario's shape.
var DefaultNATS = NATSOptions{Pairs: 20, Window: 1}

// RunNATS measures the same round trip as the private scenario on bare
// NATS: a sender publishes to a subject its receiver subscribes to, and the
// receiver answers with an ack, as the chat server answers with a reply.
// Over sockets it is what NATS alone reaches with clients in their own
// connections; in-process, the NATS part of a private message in
// `chatd all`, which a chat server built on it cannot beat.
func RunNATS(ctx context.Context, env *Env, o NATSOptions) (*Result, error) {
	if o.Pairs < 1 || o.Window < 1 {
		return nil, errors.New("nats: --pairs and --window must be at least 1")
	}
	if o.InProcess && o.URL != "" {
		return nil, errors.New("nats: --in-process needs the embedded server, not --nats")
	}
	res := &Result{Scenario: "nats", Started: time.Now(), Unit: "msg",
		Label:     fmt.Sprintf("pairs=%d window=%d", o.Pairs, o.Window),
		Params:    map[string]any{"pairs": o.Pairs, "window": o.Window, "embedded": o.URL == "", "in_process": o.InProcess},
		LatencyOf: "publish by the sender → receipt by the receiver"}
	url := o.URL
	if url == "" {
		// The embedded server runs in this process (--pid names the chat
		// server, which is not involved): its CPU can only be had together
		// with the clients', still an upper bound worth comparing.
		self := *env
		self.PIDs = []int{os.Getpid()}
		env = &self
		res.serverWhat = "process (server+clients)"
		res.Params["cpu_includes_clients"] = true
	}
	m := newMeter("nats", "msg", env.Log)
	defer m.showProgress(env.Console, env.Warmup, env.Duration)()

	var inProcess nats.Option
	if url == "" {
		s, err := startNATS()
		if err != nil {
			return nil, err
		}
		defer s.Shutdown()
		url = s.ClientURL()
		if o.InProcess {
			inProcess = nats.InProcessServer(s)
			res.Label += " in-process"
		}
	}
	var conns []*nats.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	connect := func(name string) (*nats.Conn, error) {
		opts := []nats.Option{nats.Name(name), nats.MaxReconnects(0),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { m.Error("nats_async", "err", err) })}
		if inProcess != nil {
			opts = append(opts, inProcess)
		}
		nc, err := nats.Connect(url, opts...)
		if err != nil {
			return nil, fmt.Errorf("nats: connect to %s: %w", url, err)
		}
		conns = append(conns, nc)
		return nc, nil
	}

	base := time.Now()
	flows := make([]*flow, o.Pairs)
	hists := make([]*Histogram, o.Pairs)
	senders := make([]*nats.Conn, o.Pairs)
	subjects := make([]string, o.Pairs)
	acks := make([]string, o.Pairs)
	m.setupTotal.Store(int64(o.Pairs))
	ack := []byte("ok")
	for i := range o.Pairs {
		// The prefix may hold characters that are not subject-safe; hex is.
		subjects[i] = fmt.Sprintf("chatbench.%x.%d", env.Prefix, i)
		acks[i] = subjects[i] + ".ack"
		fl, h := newFlow(o.Window, 1), new(Histogram)
		flows[i], hists[i] = fl, h
		sc, err := connect(fmt.Sprintf("chatbench sender %d", i))
		if err != nil {
			return nil, err
		}
		rc, err := connect(fmt.Sprintf("chatbench receiver %d", i))
		if err != nil {
			return nil, err
		}
		senders[i] = sc
		expect := int64(1)
		// A subscription's callbacks run one at a time on its own
		// goroutine, so h and expect need no locks.
		_, err = rc.Subscribe(subjects[i], func(msg *nats.Msg) {
			now := int64(time.Since(base))
			k, seq, ts, ok := parseStamp(msg.Data)
			if !ok || k != int64(i) || ts > now {
				m.Error("bad_payload", "subject", msg.Subject, "data", cut(msg.Data))
				return
			}
			if seq != expect {
				m.Error("out_of_order", "pair", i, "want", expect, "got", seq)
			}
			expect = max(expect, seq+1)
			if !fl.receipt(seq) {
				m.Error("duplicate_or_late", "pair", i, "seq", seq)
				return
			}
			if m.on.Load() {
				h.Record(now - ts)
			}
			m.total.Add(1)
			if err := msg.Respond(ack); err != nil {
				m.Error("ack", "err", err)
			}
		})
		if err != nil {
			return nil, fmt.Errorf("nats: subscribe: %w", err)
		}
		_, err = sc.Subscribe(acks[i], func(msg *nats.Msg) {
			if string(msg.Data) != "ok" {
				m.Error("bad_ack", "data", cut(msg.Data))
			}
			fl.replies.Add(1)
		})
		if err != nil {
			return nil, fmt.Errorf("nats: subscribe: %w", err)
		}
		// The subscriptions must be known to the server before the first
		// publish, or the first messages vanish.
		if err := errors.Join(rc.Flush(), sc.Flush()); err != nil {
			return nil, fmt.Errorf("nats: flush: %w", err)
		}
		m.setupDone.Add(1)
	}

	w, err := driveFlows(ctx, env, m, flows, func(i int) (string, func(int64) bool) {
		sc, buf := senders[i], make([]byte, 0, 64)
		return subjects[i], func(seq int64) bool {
			buf = appendStamp(buf[:0], int64(i), seq, int64(time.Since(base)))
			if err := sc.PublishRequest(subjects[i], acks[i], buf); err != nil {
				m.Error("publish", "err", err)
				return false
			}
			return true
		}
	})
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	for _, nc := range conns {
		nc.Close()
	}
	res.setCount(w, float64(w.count))
	res.Extra = map[string]any{"url": url}
	if o.InProcess {
		res.Extra["url"] = "in-process"
	}
	res.fill(m, w, merged(hists...), fmtRate(res.Rate)+" msg/s")
	return res, nil
}

// startNATS runs a bare NATS server on a random loopback port.
func startNATS() (*server.Server, error) {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		return nil, fmt.Errorf("nats: start server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, errors.New("nats: embedded server not ready within 10s")
	}
	return s, nil
}
