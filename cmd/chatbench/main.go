// Command chatbench is a load generator for chat servers that speak the
// chatd client protocol (JSON lines over TCP, see docs/protocol.md). It talks
// to the server only through that protocol, so it can measure any
// implementation of it; --pid adds the server's CPU and memory from /proc.
// --addr2 puts the receiving side on a second server process (an edge),
// so that what it receives crosses from one to the other.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/chatd-io/chatd/internal/bench"
)

const usage = `chatbench — load generator for the chatd client protocol

Usage:
  chatbench <scenario> [flags]

Scenarios:
  private   friend pairs, each sender keeps --window private_chat messages in flight
  group     one group; --senders members send group_chat, every other member receives
  login     login storm: connect, login, wait for the reply, disconnect, repeat
  idle      hold many logged-in idle connections; reports server RSS per connection
  files     concurrent send_file transfers relayed by the server;
            --count 1 for one huge transfer measured from start to end
  ping      ping and pong on connections that never log in: the server's socket and
            framing work alone, without NATS or workers, as a floor
  nats      the same round trip as "private" on bare NATS; --in-process without sockets
  all       private, group, login and nats one after another, with their defaults

Every scenario but ping and nats registers its own users (names start
with --prefix, random by default, so runs against one server do not
clash); every one warms up, measures, and prints one summary line on
stdout: rate, latency, errors, the --pid processes' CPU and RSS, and
the generator's own CPU ("generator cpu=", left out when --pid names
the generator itself). Progress and diagnostics go to stderr. Exit
status: 0 ok, 1 a scenario failed, 2 bad usage, 3 the measurements
counted errors (unexpected replies, timeouts, disconnects).

Run "chatbench <scenario> -h" for the flags of a scenario.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// common holds the flags every scenario takes.
type common struct {
	addr, addr2, prefix, password, jsonPath, svgPath, logLevel, pids string
	cpuProfile                                                       string
	warmup, duration, timeout, setupTimeout                          time.Duration
	setupConc                                                        int
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8000", "server address (host:port)")
	fs.StringVar(&c.addr2, "addr2", "", "second server address (host:port) for the receiving side, e.g. another edge\n"+
		"(default: --addr). files: recipients connect and log in there, and their file ports are on its\n"+
		"host, senders stay on --addr, so every transfer crosses from one edge to the other.\n"+
		"private: recipients there, senders on --addr. group, login, idle, nats: ignored")
	fs.DurationVar(&c.warmup, "warmup", 2*time.Second, "load before measuring starts")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "measured period")
	fs.DurationVar(&c.timeout, "timeout", 5*time.Second, "a reply or delivery later than this counts as an error")
	fs.DurationVar(&c.setupTimeout, "setup-timeout", 30*time.Second, "bound on each setup request (registration is bound by the password hash)")
	fs.StringVar(&c.pids, "pid", "", "server process ids, comma-separated (e.g. broker,worker,edge1,edge2): report from /proc\n"+
		"their CPU time in the measured period (summed) and each one's RSS at its start, its peak\n"+
		"(sampled every 100ms) and at its end; the summary shows the largest peak growth and its pid")
	fs.StringVar(&c.jsonPath, "json", "", "write the results as JSON to this file")
	fs.StringVar(&c.svgPath, "svg", "", "write an SVG chart of the latency distribution to this file")
	fs.StringVar(&c.prefix, "prefix", "", "user and group name prefix (default: random, different each run)")
	fs.StringVar(&c.password, "password", "chatbench-pw", "password of the generated users")
	fs.IntVar(&c.setupConc, "setup-concurrency", 16, "connections used for setup (registration costs the server a password hash)")
	fs.StringVar(&c.logLevel, "log-level", "info", "diagnostics level: debug, info, warn, error")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write the generator's own CPU profile to this file (go tool pprof)")
}

// runner runs a scenario; show prints a summary as soon as it is known.
type runner func(ctx context.Context, env *bench.Env, show func(*bench.Result)) ([]*bench.Result, error)

// single adapts a one-scenario function to a runner.
func single[O any](f func(context.Context, *bench.Env, O) (*bench.Result, error), o *O) runner {
	return func(ctx context.Context, env *bench.Env, show func(*bench.Result)) ([]*bench.Result, error) {
		r, err := f(ctx, env, *o)
		if r == nil {
			return nil, err
		}
		show(r)
		return []*bench.Result{r}, err
	}
}

// scenarioFlags registers the flags of a scenario and returns what runs it.
func scenarioFlags(name string, fs *flag.FlagSet) (runner, bool) {
	switch name {
	case "private":
		o := bench.DefaultPrivate
		fs.IntVar(&o.Pairs, "pairs", o.Pairs, "sender→recipient friend pairs, each user on its own connection")
		fs.IntVar(&o.Window, "window", o.Window, "messages each sender keeps in flight (until the recipient reads them)")
		withNATS := fs.Bool("with-nats", false, "then run the raw NATS loop (the nats scenario, embedded, same pairs and window)\n"+
			"for comparison: a second summary line, and a second curve on the chart")
		return func(ctx context.Context, env *bench.Env, show func(*bench.Result)) ([]*bench.Result, error) {
			rs, err := single(bench.RunPrivate, &o)(ctx, env, show)
			if err != nil || !*withNATS {
				return rs, err
			}
			n := bench.NATSOptions{Pairs: o.Pairs, Window: o.Window}
			more, err := single(bench.RunNATS, &n)(ctx, env, show)
			return append(rs, more...), err
		}, true
	case "group":
		o := bench.DefaultGroup
		fs.IntVar(&o.Members, "members", o.Members, "group members, each on its own connection")
		fs.IntVar(&o.Senders, "senders", o.Senders, "members that send")
		fs.IntVar(&o.Window, "window", o.Window, "messages each sender keeps in flight (until every other member read them)")
		return single(bench.RunGroup, &o), true
	case "login":
		o := bench.DefaultLogin
		fs.IntVar(&o.Users, "users", o.Users, "users to register; the storm cycles through them")
		fs.IntVar(&o.Friends, "friends", o.Friends, "friends per user (a ring: user i befriends the next friends/2)")
		fs.IntVar(&o.Concurrency, "concurrency", o.Concurrency, "connections logging in at once")
		return single(bench.RunLogin, &o), true
	case "idle":
		o := bench.DefaultIdle
		fs.IntVar(&o.Conns, "conns", o.Conns, "logged-in connections to hold. This machine allows at most 20000 open files per\n"+
			"process (hard limit), server and generator alike, so 20000 connections are impossible here;\n"+
			"the generator raises its soft limit to the hard one by itself")
		fs.DurationVar(&o.Hold, "hold", o.Hold, "how long to hold the connections (replaces --duration)")
		fs.IntVar(&o.DialConcurrency, "dial-concurrency", o.DialConcurrency, "connections being opened and logged in at once")
		return single(bench.RunIdle, &o), true
	case "files":
		o := bench.DefaultFiles
		fs.IntVar(&o.Transfers, "transfers", o.Transfers, "concurrent transfers, each between its own pair of friends")
		fs.Var(&o.Size, "size", "bytes per transfer; suffixes KiB, MiB, GiB (binary) or KB, MB, GB (decimal)")
		fs.BoolVar(&o.Verify, "verify", o.Verify, "compare SHA-256 of the bytes sent and received (costs the generator CPU)")
		fs.IntVar(&o.Count, "count", o.Count, "make exactly this many transfers per pair, one after another, then stop; the\n"+
			"measured period lasts from the first send_file to the last byte received, without warm-up\n"+
			"(--warmup and --duration are ignored). 0: transfer for --duration after --warmup")
		return single(bench.RunFiles, &o), true
	case "ping":
		o := bench.DefaultPing
		fs.IntVar(&o.Conns, "conns", o.Conns, "connections, none logged in, each sending ping and reading pong")
		fs.IntVar(&o.Window, "window", o.Window, "pings each connection keeps in flight")
		return single(bench.RunPing, &o), true
	case "nats":
		o := bench.DefaultNATS
		fs.StringVar(&o.URL, "nats", "", "NATS server URL (default: start an embedded server on a random loopback port)")
		fs.IntVar(&o.Pairs, "pairs", o.Pairs, "publisher→subscriber pairs, each on its own connection")
		fs.IntVar(&o.Window, "window", o.Window, "messages each publisher keeps in flight")
		fs.BoolVar(&o.InProcess, "in-process", false, "connect to the embedded server without sockets, as `chatd all` does")
		return single(bench.RunNATS, &o), true
	case "all":
		return runAll, true
	}
	return nil, false
}

// runAll runs the main scenarios with their defaults. A failing scenario
// does not stop the others; the errors are joined.
func runAll(ctx context.Context, env *bench.Env, show func(*bench.Result)) ([]*bench.Result, error) {
	var out []*bench.Result
	var errs []error
	for _, name := range []string{"private", "group", "login", "nats"} {
		if ctx.Err() != nil {
			errs = append(errs, fmt.Errorf("%s: skipped: %w", name, ctx.Err()))
			continue
		}
		r, _ := scenarioFlags(name, flag.NewFlagSet(name, flag.ContinueOnError))
		rs, err := r(ctx, env, show)
		out = append(out, rs...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	name := args[0]
	fs := flag.NewFlagSet("chatbench "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	c.register(fs)
	scenario, ok := scenarioFlags(name, fs)
	if !ok {
		fmt.Fprintf(stderr, "chatbench: unknown scenario %q\n\n%s", name, usage)
		return 2
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: chatbench %s [flags]\n\nFlags:\n", name)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "chatbench %s: unexpected argument %q\n", name, fs.Arg(0))
		return 2
	}
	env, err := c.env(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "chatbench %s: %v\n", name, err)
		return 2
	}
	env.Log.Debug("starting", "scenario", name, "addr", env.Addr, "addr2", env.Addr2, "pids", env.PIDs, "prefix", env.Prefix)
	if c.cpuProfile != "" {
		stopProfile, err := startCPUProfile(c.cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "chatbench %s: %v\n", name, err)
			return 2
		}
		defer stopProfile()
	}

	started := time.Now()
	results, runErr := scenario(ctx, env, func(r *bench.Result) {
		env.Console.Clear()
		fmt.Fprintln(stdout, r.Summary)
	})
	code := 0
	if err := write(c, name, args, started, results); err != nil {
		fmt.Fprintf(stderr, "chatbench %s: %v\n", name, err)
		code = 1
	}
	if runErr != nil {
		fmt.Fprintf(stderr, "chatbench %s: %v\n", name, runErr)
		return 1
	}
	for _, r := range results {
		if r.Errors > 0 && code == 0 {
			code = 3
		}
	}
	return code
}

func (c *common) env(stderr io.Writer) (*bench.Env, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	if c.prefix == "" {
		c.prefix = randomPrefix()
	}
	if err := bench.ValidPrefix(c.prefix); err != nil {
		return nil, fmt.Errorf("--prefix: %w", err)
	}
	if c.password == "" || len(c.password) > 128 {
		return nil, errors.New("--password: want 1 to 128 bytes")
	}
	if c.duration <= 0 || c.warmup < 0 || c.timeout <= 0 || c.setupTimeout <= 0 || c.setupConc < 1 {
		return nil, errors.New("--duration, --timeout, --setup-timeout and --setup-concurrency must be positive, --warmup not negative")
	}
	if c.addr2 != "" {
		if _, _, err := net.SplitHostPort(c.addr2); err != nil {
			return nil, fmt.Errorf("--addr2: %w", err)
		}
	}
	pids, err := bench.ParsePIDs(c.pids)
	if err != nil {
		return nil, fmt.Errorf("--pid: %w", err)
	}
	for _, pid := range pids {
		// Better now than after a setup that may take minutes.
		if _, err := bench.ReadProc(pid); err != nil {
			return nil, fmt.Errorf("--pid: %w", err)
		}
	}
	tty := false
	if f, ok := stderr.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	con := bench.NewConsole(stderr, tty)
	return &bench.Env{Addr: c.addr, Addr2: c.addr2, Prefix: c.prefix, Password: c.password, Warmup: c.warmup,
		Duration: c.duration, Timeout: c.timeout, SetupTimeout: c.setupTimeout, SetupConcurrency: c.setupConc, PIDs: pids,
		Log: slog.New(slog.NewTextHandler(con, &slog.HandlerOptions{Level: lvl})), Console: con}, nil
}

// randomPrefix is short (names have a 32-character limit) and random
// enough that repeated runs against one server never collide.
func randomPrefix() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return "cb" + string(b)
}

// report is the --json file.
type report struct {
	Tool     string          `json:"tool"`
	Scenario string          `json:"scenario"`
	Args     []string        `json:"args"`
	Addr     string          `json:"addr"`
	Addr2    string          `json:"addr2,omitempty"`
	Prefix   string          `json:"prefix"`
	Started  time.Time       `json:"started"`
	Results  []*bench.Result `json:"results"`
}

func write(c common, name string, args []string, started time.Time, results []*bench.Result) error {
	var errs []error
	if c.jsonPath != "" {
		b, err := json.MarshalIndent(report{Tool: "chatbench", Scenario: name, Args: args, Addr: c.addr, Addr2: c.addr2,
			Prefix: c.prefix, Started: started, Results: results}, "", "  ")
		if err == nil {
			err = os.WriteFile(c.jsonPath, append(b, '\n'), 0o644)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("--json: %w", err))
		}
	}
	if c.svgPath != "" {
		var series []bench.Series
		titles := make([]string, 0, len(results))
		for _, r := range results {
			series = append(series, bench.Series{Name: r.Scenario + " " + r.Label, H: r.Histogram()})
			titles = append(titles, r.Scenario)
		}
		addr := c.addr
		if c.addr2 != "" {
			addr += " → " + c.addr2
		}
		title := "chatbench " + strings.Join(titles, ", ") + " — " + addr + " — " + started.Format(time.DateTime)
		if err := writeSVG(c.svgPath, title, series); err != nil {
			errs = append(errs, fmt.Errorf("--svg: %w", err))
		}
	}
	return errors.Join(errs...)
}

func writeSVG(path, title string, series []bench.Series) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := bench.WriteSVG(f, title, series); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// startCPUProfile profiles the generator itself: on one machine it shares
// the cores with the server, so its cost bounds what the server can show.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
