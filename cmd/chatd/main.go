// Command chatd is the chat server: one binary that runs everything in one
// process (`chatd all`, the default) or one role per process (`chatd
// broker`, `chatd edge`, `chatd worker`).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/chatd-io/chatd/broker"
	"github.com/chatd-io/chatd/edge"
	"github.com/chatd-io/chatd/internal/metrics"
	"github.com/chatd-io/chatd/internal/passwd"
	"github.com/chatd-io/chatd/internal/proto"
	"github.com/chatd-io/chatd/workers"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "0.1.0-dev"

const usage = `chatd — a chat server on NATS and LevelDB

Usage:
  chatd [all] [flags]     broker + edge + worker in one process (default)
  chatd broker [flags]    the embedded NATS server alone
  chatd edge [flags]      client listener; needs --nats
  chatd worker [flags]    command handlers with their own LevelDB; needs --nats
  chatd version

Every flag has an environment twin: --nats-listen is CHATD_NATS_LISTEN.
Run "chatd <command> -h" for the flags of a command.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "all"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch cmd {
	case "all":
		err = runAll(ctx, args, stderr)
	case "broker":
		err = runBroker(ctx, args, stderr)
	case "edge":
		err = runEdge(ctx, args, stderr)
	case "worker":
		err = runWorker(ctx, args, stderr)
	case "version":
		fmt.Fprintln(stdout, "chatd", version)
		return 0
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "chatd: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	var ue usageError
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "chatd %s: %v\n", cmd, err)
		return 2
	case err != nil:
		fmt.Fprintf(stderr, "chatd %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

// usageError is a problem with the command line.
type usageError struct{ error }

// flagSet builds a FlagSet whose flags also read CHATD_* variables.
type flagSet struct {
	*flag.FlagSet
	logLevel   string
	check      bool
	natsPing   time.Duration
	gc         gcFlags
	set        map[string]bool // flags given on the command line or in the environment
	unknownEnv []string        // CHATD_* variables that are no flag of this command
}

func newFlagSet(name string, stderr io.Writer) *flagSet {
	fs := &flagSet{FlagSet: flag.NewFlagSet("chatd "+name, flag.ContinueOnError), set: map[string]bool{}}
	fs.SetOutput(stderr)
	fs.StringVar(&fs.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.BoolVar(&fs.check, "check", false, "check the configuration (flags, environment, files), print it and exit")
	fs.DurationVar(&fs.natsPing, "nats-ping", defaultNATSPing, "how often a quiet NATS connection is pinged, by a broker and by chatd's own connections;\n"+
		"a peer that misses "+strconv.Itoa(maxPingsOut)+" pings in a row is cut (a half-open connection)")
	fs.gc.register(fs)
	return fs
}

// parse parses args, then fills every flag not given on the command line
// from its environment twin.
func (fs *flagSet) parse(args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	fs.Visit(func(f *flag.Flag) { fs.set[f.Name] = true })
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if flagName, ok := strings.CutPrefix(name, "CHATD_"); ok {
			flagName = strings.ToLower(strings.ReplaceAll(flagName, "_", "-"))
			if fs.Lookup(flagName) == nil {
				fs.unknownEnv = append(fs.unknownEnv, name)
			}
		}
	}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		env := "CHATD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok && !fs.set[f.Name] && err == nil {
			if serr := f.Value.Set(v); serr != nil {
				err = usageError{fmt.Errorf("%s=%q: %w", env, v, serr)}
			}
			fs.set[f.Name] = true
		}
	})
	return err
}

// setup builds the logger and applies the settings of the whole process
// (the garbage collector's, and giving memory back when quiet).
func (fs *flagSet) setup(ctx context.Context, stderr io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if fs.natsPing < minNATSPing || fs.natsPing > maxNATSPing {
		return nil, usageError{fmt.Errorf("--nats-ping %s: want %s to %s", fs.natsPing, minNATSPing, maxNATSPing)}
	}
	if err := lvl.UnmarshalText([]byte(fs.logLevel)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level: %w", err)}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	if len(fs.unknownEnv) > 0 {
		// A typo in an environment file would otherwise go unnoticed.
		log.Warn("ignoring environment variables that are not flags of this command", "vars", fs.unknownEnv)
	}
	if err := fs.gc.apply(fs, log); err != nil {
		return nil, err
	}
	if fs.gc.collecting {
		go releaseWhenQuiet(ctx, log, releaseEvery)
	}
	return log, nil
}

// checked logs the effective configuration for --check.
func checked(log *slog.Logger, mode string, attrs ...any) error {
	log.Info("configuration ok", append([]any{"mode", mode, "version", version}, attrs...)...)
	return nil
}

// brokerFlags configure the embedded NATS server.
type brokerFlags struct {
	natsListen, http, name, jsDomain   string
	clusterName, clusterListen, routes string
	leafListen, leafRemote, config     string
	lameDuck                           time.Duration
	jetStream                          bool
}

func (f *brokerFlags) register(fs *flagSet, natsListen, natsListenHelp string) {
	fs.StringVar(&f.natsListen, "nats-listen", natsListen, natsListenHelp)
	fs.StringVar(&f.http, "http", "127.0.0.1:8222", "NATS monitoring address (/varz /connz /subsz /jsz /healthz); empty disables")
	fs.StringVar(&f.name, "name", hostname(), "server name; unique within a cluster")
	fs.DurationVar(&f.lameDuck, "lame-duck", 10*time.Second, "how long a broker shutdown spreads client disconnects over")
	fs.BoolVar(&f.jetStream, "jetstream", true, "run JetStream here; a leaf region's server may run without it")
	fs.StringVar(&f.jsDomain, "js-domain", "", "JetStream domain name, so that leaf regions can reach this JetStream")
	fs.StringVar(&f.clusterName, "cluster-name", "chatd", "cluster name, the same on every server of a cluster")
	fs.StringVar(&f.clusterListen, "cluster-listen", "", "route address for other servers of this cluster (host:port)")
	fs.StringVar(&f.routes, "routes", "", "comma-separated route URLs of the servers of this cluster")
	fs.StringVar(&f.leafListen, "leafnode-listen", "", "accept leaf node connections from other regions here (host:port)")
	fs.StringVar(&f.leafRemote, "leafnode-remote", "", "comma-separated nats-leaf:// URLs of a hub to join as a leaf node")
	fs.StringVar(&f.config, "nats-config", "", "nats-server configuration file (TLS, accounts, gateways…); replaces the NATS flags above")
}

// options builds the broker's options. alone is true for `chatd broker`,
// where --data and --name serve the broker only: a --nats-config file then
// replaces them too (store_dir, server_name).
func (f *brokerFlags) options(fs *flagSet, data string, alone bool, log *slog.Logger) (broker.Options, error) {
	if f.config != "" {
		replaced := []string{"nats-listen", "http", "jetstream", "js-domain", "cluster-name",
			"cluster-listen", "routes", "leafnode-listen", "leafnode-remote"}
		if alone {
			replaced = append(replaced, "data", "name")
		}
		for _, n := range replaced {
			if fs.set[n] {
				return broker.Options{}, usageError{fmt.Errorf("--%s and --nats-config exclude each other: set it in the file", n)}
			}
		}
	} else {
		for _, a := range []struct{ flag, addr string }{{"nats-listen", f.natsListen}, {"http", f.http},
			{"cluster-listen", f.clusterListen}, {"leafnode-listen", f.leafListen}} {
			if err := checkAddr(a.flag, a.addr); err != nil {
				return broker.Options{}, err
			}
		}
	}
	if f.routes != "" && f.clusterListen == "" {
		return broker.Options{}, usageError{errors.New("--routes needs --cluster-listen")}
	}
	lameDuck, ping, pingsOut := f.lameDuck, fs.natsPing, maxPingsOut
	if f.config != "" && !fs.set["lame-duck"] {
		lameDuck = 0 // the file's lame_duck_duration, if it has one
	}
	if f.config != "" && !fs.set["nats-ping"] {
		ping, pingsOut = 0, 0 // the file's ping_interval and ping_max, or nats-server's defaults
	}
	opts := broker.Options{ConfigFile: f.config, Name: f.name, Listen: f.natsListen, HTTP: f.http, DataDir: data,
		LameDuck: lameDuck, PingInterval: ping, PingsOut: pingsOut, NoJetStream: !f.jetStream, JetStreamDomain: f.jsDomain, ClusterName: f.clusterName,
		ClusterListen: f.clusterListen, Routes: splitList(f.routes), LeafListen: f.leafListen,
		LeafRemotes: splitList(f.leafRemote), Logger: log}
	if err := broker.Check(opts); err != nil {
		return broker.Options{}, usageError{err}
	}
	return opts, nil
}

// edgeFlags configure the client listener.
type edgeFlags struct {
	listen         string
	maxFrame       int
	requestTimeout time.Duration
	filePorts      portRange
	fileTimeout    time.Duration
	fileMax        byteSize
	heartbeat      time.Duration
	idleAfter      time.Duration
	presenceDelay  time.Duration
	keepAlive      time.Duration
	jsDomain       string
	deliveryConns  int
	clientRate     float64
	clientBurst    int
	loginFailures  float64
}

func (f *edgeFlags) register(fs *flagSet, listen string, withDomain bool) {
	fs.StringVar(&f.listen, "listen", listen, "client TCP address")
	fs.IntVar(&f.maxFrame, "max-frame", proto.DefaultMaxFrame, "largest client JSON object in bytes")
	fs.DurationVar(&f.requestTimeout, "request-timeout", 5*time.Second, "how long a client waits for a worker before \"unavailable\"")
	f.filePorts = portRange{8100, 8199}
	fs.Var(&f.filePorts, "file-ports", "file transfer port range LO-HI on the client address; \"off\" disables send_file")
	fs.DurationVar(&f.fileTimeout, "file-timeout", 10*time.Second, "how long a file transfer waits for a client to connect, or for any progress")
	f.fileMax = 4 << 30
	fs.Var(&f.fileMax, "file-max", "largest file accepted (bytes, or with KiB, MiB, GiB)")
	fs.DurationVar(&f.heartbeat, "heartbeat", 5*time.Second, "how often the edge tells the workers it is alive")
	fs.DurationVar(&f.keepAlive, "keepalive", 30*time.Second, "idle time before TCP keepalive probes; a vanished client is dropped 30s after that")
	fs.DurationVar(&f.idleAfter, "idle-after", 5*time.Second, "silence after which a connection is parked: no goroutine until it speaks (Linux)")
	fs.DurationVar(&f.presenceDelay, "presence-delay", 10*time.Millisecond, "how long a friend_login or friend_offline notice may wait for other lines to the same client, to share a write with them; 0: written at once")
	fs.Float64Var(&f.clientRate, "client-rate", 100, "requests per second each client connection may send on average; past it they are answered \"rate_limited\"; 0: no limit")
	fs.IntVar(&f.clientBurst, "client-burst", 200, "requests a client connection may send at once within --client-rate; 0: a second's worth")
	fs.Float64Var(&f.loginFailures, "login-failures", 30, "failed logins a client address (IPv6: its /64) may make per minute, that many at once; past it its logins are answered \"rate_limited\" before any password is hashed; 0: no limit")
	fs.IntVar(&f.deliveryConns, "delivery-conns", 1, "NATS connections for the users' deliveries, apart from the one for requests and replies; 0: that one carries them too")
	if withDomain {
		fs.StringVar(&f.jsDomain, "js-domain", "", "JetStream domain of the hub, for an edge in a leaf region")
	}
}

// maxDeliveryConns bounds --delivery-conns: past a few per core more
// connections only cost the broker.
const maxDeliveryConns = 64

// maxPresenceDelay bounds --presence-delay: longer, and a friend's status
// would lag noticeably when nothing else is written to the client.
const maxPresenceDelay = time.Second

func (f *edgeFlags) validate(name string, log *slog.Logger) error {
	if err := f.options(nil, name, nil, log).Validate(); err != nil {
		return usageError{err}
	}
	if f.presenceDelay < 0 || f.presenceDelay > maxPresenceDelay {
		return usageError{fmt.Errorf("--presence-delay %s is not within 0-%s", f.presenceDelay, maxPresenceDelay)}
	}
	if f.deliveryConns < 0 || f.deliveryConns > maxDeliveryConns {
		return usageError{fmt.Errorf("--delivery-conns %d is not within 0-%d", f.deliveryConns, maxDeliveryConns)}
	}
	return nil
}

func (f *edgeFlags) options(nc *nats.Conn, name string, reg *metrics.Registry, log *slog.Logger) edge.Options {
	presenceDelay := f.presenceDelay
	if presenceDelay == 0 {
		presenceDelay = -1 // at once; zero would be the edge's default
	}
	return edge.Options{Listen: f.listen, Conn: nc, Name: name, MaxFrame: f.maxFrame,
		RequestTimeout: f.requestTimeout, FilePortLo: f.filePorts.lo, FilePortHi: f.filePorts.hi,
		FileTimeout: f.fileTimeout, FileMaxSize: int64(f.fileMax), Heartbeat: f.heartbeat, IdleAfter: f.idleAfter, PresenceDelay: presenceDelay, KeepAlive: f.keepAlive, JetStreamDomain: f.jsDomain,
		RateLimit: f.clientRate, RateBurst: f.clientBurst, LoginFailures: f.loginFailures, Metrics: reg, Version: version, Logger: log.With("role", "edge")}
}

// workerFlags configure the command handlers.
type workerFlags struct {
	hashAlgo  string
	hashCost  int
	argonTime uint
	argonMem  byteSize
	replicas  int
	inboxAge  time.Duration
	fileAge   time.Duration
	deadEdge  time.Duration
}

func (f *workerFlags) register(fs *flagSet) {
	fs.StringVar(&f.hashAlgo, "password-hash", passwd.Argon2id, "how new passwords are hashed: argon2id or bcrypt")
	fs.IntVar(&f.hashCost, "hash-cost", passwd.DefaultBcryptCost, "bcrypt cost, with --password-hash bcrypt (4 is for benchmarks only)")
	fs.UintVar(&f.argonTime, "argon2-time", passwd.DefaultArgonTime, "argon2id passes over memory")
	f.argonMem = passwd.DefaultArgonMemoryKiB << 10
	fs.Var(&f.argonMem, "argon2-memory", "argon2id memory per hash (8KiB, with --argon2-time 1, is for benchmarks only)")
	fs.IntVar(&f.replicas, "replicas", 1, "JetStream replicas for the streams (3 in a production cluster)")
	fs.DurationVar(&f.inboxAge, "inbox-max-age", 30*24*time.Hour, "how long messages for offline users are kept")
	fs.DurationVar(&f.fileAge, "file-max-age", 7*24*time.Hour, "how long files for offline users are kept")
	fs.DurationVar(&f.deadEdge, "edge-dead-after", 15*time.Second, "an edge silent this long is given up: its users' friends are told they went offline")
}

func (f *workerFlags) options(nc *nats.Conn, dir, name string, reg *metrics.Registry, log *slog.Logger) workers.Options {
	pw := passwd.Params{Algorithm: f.hashAlgo, BcryptCost: f.hashCost, ArgonTime: uint32(min(f.argonTime, 1<<31)),
		ArgonMemoryKiB: uint32(min(int64(f.argonMem)>>10, 1<<31))}
	return workers.Options{Conn: nc, DataDir: dir, Name: name, Version: version, Passwords: pw,
		Replicas: f.replicas, InboxMaxAge: f.inboxAge, FileMaxAge: f.fileAge, EdgeDeadAfter: f.deadEdge,
		Metrics: reg, Logger: log.With("role", "worker")}
}

func (f *workerFlags) validate() error {
	if err := f.options(nil, "", "", nil, slog.Default()).Validate(); err != nil {
		return usageError{err}
	}
	return nil
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "chatd"
	}
	return h
}

// monitor serves /healthz, /readyz and /metrics for an edge or a worker.
type monitor struct {
	reg   *metrics.Registry
	mu    sync.Mutex
	ready []func() error // empty until the role is up
	srv   *metrics.Server
}

// startMonitor listens on addr ("" for none). Until the role is up,
// /readyz says so; /healthz answers as soon as the process serves HTTP.
// With profiling, /debug/pprof/ is served too: it is opt-in because a
// profile costs CPU and the port may be reachable by more than operators.
func startMonitor(addr string, profiling bool, log *slog.Logger) (*monitor, error) {
	m := &monitor{reg: metrics.New()}
	if addr == "" {
		return m, nil
	}
	m.reg.AddRuntime()
	ready := func() error {
		m.mu.Lock()
		checks := m.ready
		m.mu.Unlock()
		if len(checks) == 0 {
			return errors.New("starting")
		}
		return errors.Join(runChecks(checks)...)
	}
	healthy := func() error { return nil }
	h := metrics.Handler(m.reg, healthy, ready)
	if profiling {
		mux := http.NewServeMux()
		mux.Handle("/", h)
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		h = mux
	}
	srv, err := metrics.Listen(addr, h, log)
	if err != nil {
		return nil, err
	}
	m.srv = srv
	return m, nil
}

func runChecks(checks []func() error) []error {
	var errs []error
	for _, c := range checks {
		errs = append(errs, c())
	}
	return errs
}

// up adds the readiness checks of a role that is now running.
func (m *monitor) up(checks ...func() error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ready = append(m.ready, checks...)
}

func (m *monitor) addr() string {
	if m.srv == nil {
		return ""
	}
	return m.srv.Addr()
}

func (m *monitor) close() {
	if m.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = m.srv.Close(ctx)
	}
}

func runAll(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("all", stderr)
	var bf brokerFlags
	var ef edgeFlags
	var wf workerFlags
	bf.register(fs, "", "let external edges, workers and the nats CLI connect here (host:port); off by default")
	ef.register(fs, "127.0.0.1:8000", false)
	wf.register(fs)
	data := fs.String("data", "./data", "data directory (JetStream store and the worker's LevelDB)")
	monitorAddr := fs.String("metrics", "127.0.0.1:9090", "address for /healthz, /readyz and /metrics; empty disables")
	profiling := fs.Bool("pprof", false, "also serve /debug/pprof/ on the --metrics address")
	if err := fs.parse(args); err != nil {
		return err
	}
	log, err := fs.setup(ctx, stderr)
	if err != nil {
		return err
	}
	if err := ef.validate(bf.name, log); err != nil {
		return err
	}
	if err := wf.validate(); err != nil {
		return err
	}
	bopts, err := bf.options(fs, *data, false, quietNATS(log))
	if err != nil {
		return err
	}
	if err := checkAddrs(map[string]string{"listen": ef.listen, "metrics": *monitorAddr}); err != nil {
		return err
	}
	if fs.check {
		if bf.config != "" {
			return checked(log, "all", "client", ef.listen, "nats_config", bf.config, "data", *data)
		}
		return checked(log, "all", "client", ef.listen, "nats", orOff(bf.natsListen), "http", orOff(bf.http),
			"data", *data)
	}
	mon, err := startMonitor(*monitorAddr, *profiling, log)
	if err != nil {
		return err
	}
	defer mon.close()
	b, err := broker.New(bopts)
	if err != nil {
		return err
	}
	defer shutdownBroker(b)
	wnc, err := b.Connect("chatd-worker " + bf.name)
	if err != nil {
		return err
	}
	defer wnc.Close()
	w, err := workers.New(ctx, wf.options(wnc, filepath.Join(*data, "worker"), bf.name, mon.reg, log))
	if err != nil {
		return err
	}
	defer closeWorker(w, log)
	enc, err := b.Connect("chatd-edge " + bf.name)
	if err != nil {
		return err
	}
	defer enc.Close()
	eo := ef.options(enc, bf.name, mon.reg, log)
	eo.Deliveries, err = openDeliveries(ef.deliveryConns, bf.name, func(name string) (*nats.Conn, error) { return b.Connect(name, nats.NoEcho()) })
	defer closeAll(eo.Deliveries)
	if err != nil {
		return err
	}
	e, err := edge.New(eo)
	if err != nil {
		return err
	}
	mon.up(w.Readiness, e.Ready)
	log.Info("chatd ready", "mode", "all", "client", e.Addr().String(), "nats", orOff(b.ClientURL()),
		"http", orOff(b.MonitorAddr()), "metrics", orOff(mon.addr()), "data", *data, "version", version)
	return serveEdge(ctx, e, log)
}

func runBroker(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("broker", stderr)
	var bf brokerFlags
	bf.register(fs, "127.0.0.1:4222", "client address for edges, workers and the nats CLI")
	data := fs.String("data", "./data", "JetStream store directory")
	if err := fs.parse(args); err != nil {
		return err
	}
	if bf.natsListen == "" && bf.config == "" {
		return usageError{errors.New("--nats-listen is required")}
	}
	log, err := fs.setup(ctx, stderr)
	if err != nil {
		return err
	}
	opts, err := bf.options(fs, *data, true, log)
	if err != nil {
		return err
	}
	if fs.check {
		if bf.config != "" {
			return checked(log, "broker", "nats_config", bf.config)
		}
		return checked(log, "broker", "nats", bf.natsListen, "http", orOff(bf.http), "cluster", orOff(bf.clusterListen),
			"leafnodes", orOff(bf.leafListen), "data", *data)
	}
	b, err := broker.New(opts)
	if err != nil {
		return err
	}
	log.Info("chatd ready", "mode", "broker", "nats", b.ClientURL(), "http", orOff(b.MonitorAddr()),
		"cluster", orOff(b.ClusterAddr()), "leafnodes", orOff(b.LeafAddr()), "jetstream", b.JetStream(),
		"data", *data, "version", version)
	<-ctx.Done()
	log.Info("shutting down")
	shutdownBroker(b)
	return nil
}

func runEdge(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("edge", stderr)
	var ef edgeFlags
	ef.register(fs, ":8000", true)
	natsURL := fs.String("nats", "nats://127.0.0.1:4222", "NATS server URL(s), comma separated")
	name := fs.String("name", hostname(), "edge name, shown in NATS monitoring")
	monitorAddr := fs.String("metrics", "", "address for /healthz, /readyz and /metrics; empty disables")
	profiling := fs.Bool("pprof", false, "also serve /debug/pprof/ on the --metrics address")
	if err := fs.parse(args); err != nil {
		return err
	}
	log, err := fs.setup(ctx, stderr)
	if err != nil {
		return err
	}
	if err := ef.validate(*name, log); err != nil {
		return err
	}
	if err := checkAddrs(map[string]string{"listen": ef.listen, "metrics": *monitorAddr}); err != nil {
		return err
	}
	if err := checkURLs(*natsURL); err != nil {
		return err
	}
	if fs.check {
		return checked(log, "edge", "client", ef.listen, "nats", *natsURL, "file_ports", ef.filePorts.String(),
			"metrics", orOff(*monitorAddr))
	}
	mon, err := startMonitor(*monitorAddr, *profiling, log)
	if err != nil {
		return err
	}
	defer mon.close()
	nc, err := connect(ctx, *natsURL, "chatd-edge "+*name, fs.natsPing, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	eo := ef.options(nc, *name, mon.reg, log)
	eo.Deliveries, err = openDeliveries(ef.deliveryConns, *name, func(name string) (*nats.Conn, error) {
		return connect(ctx, *natsURL, name, fs.natsPing, log, nats.NoEcho())
	})
	defer closeAll(eo.Deliveries)
	if err != nil {
		return err
	}
	e, err := edge.New(eo)
	if err != nil {
		return err
	}
	mon.up(e.Ready)
	log.Info("chatd ready", "mode", "edge", "client", e.Addr().String(), "nats", nc.ConnectedUrlRedacted(),
		"metrics", orOff(mon.addr()), "version", version)
	return serveEdge(ctx, e, log)
}

func runWorker(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("worker", stderr)
	var wf workerFlags
	wf.register(fs)
	natsURL := fs.String("nats", "nats://127.0.0.1:4222", "NATS server URL(s), comma separated")
	data := fs.String("data", "./data/worker", "LevelDB directory, one per worker process")
	name := fs.String("name", hostname(), "worker name, shown in NATS monitoring")
	jsDomain := fs.String("js-domain", "", "JetStream domain of the hub, for a worker outside it")
	monitorAddr := fs.String("metrics", "", "address for /healthz, /readyz and /metrics; empty disables")
	profiling := fs.Bool("pprof", false, "also serve /debug/pprof/ on the --metrics address")
	if err := fs.parse(args); err != nil {
		return err
	}
	log, err := fs.setup(ctx, stderr)
	if err != nil {
		return err
	}
	if err := wf.validate(); err != nil {
		return err
	}
	if err := checkAddrs(map[string]string{"metrics": *monitorAddr}); err != nil {
		return err
	}
	if err := checkURLs(*natsURL); err != nil {
		return err
	}
	if fs.check {
		return checked(log, "worker", "nats", *natsURL, "data", *data, "metrics", orOff(*monitorAddr))
	}
	mon, err := startMonitor(*monitorAddr, *profiling, log)
	if err != nil {
		return err
	}
	defer mon.close()
	nc, err := connect(ctx, *natsURL, "chatd-worker "+*name, fs.natsPing, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	opts := wf.options(nc, *data, *name, mon.reg, log)
	opts.JetStreamDomain = *jsDomain
	w, err := workers.New(ctx, opts)
	if err != nil {
		return err
	}
	mon.up(w.Readiness)
	log.Info("chatd ready", "mode", "worker", "nats", nc.ConnectedUrlRedacted(), "data", *data,
		"metrics", orOff(mon.addr()), "version", version)
	<-ctx.Done()
	log.Info("shutting down")
	closeWorker(w, log)
	return nil
}

// openDeliveries dials an edge's n delivery connections, each named for
// NATS monitoring (nats server report connections) "chatd-edge <edge>
// deliveries <i>". Callers dial them with NoEcho, which lets the edge
// deliver private messages between its own sessions itself (see
// edge.Options.Deliveries). On an error it returns those already open,
// for the caller to close with the rest.
func openDeliveries(n int, edge string, dial func(name string) (*nats.Conn, error)) ([]*nats.Conn, error) {
	var conns []*nats.Conn
	for i := range n {
		nc, err := dial("chatd-edge " + edge + " deliveries " + strconv.Itoa(i+1))
		if err != nil {
			return conns, err
		}
		conns = append(conns, nc)
	}
	return conns, nil
}

func closeAll(conns []*nats.Conn) {
	for _, nc := range conns {
		nc.Close()
	}
}

// Pings on NATS connections. The libraries' default, every 2 minutes and
// cut after 2 missed, leaves a half-open connection (a peer gone without a
// FIN or RST, a silent firewall) in place for up to 6 minutes: a worker's
// queue subscription keeps drawing requests that time out, an edge's
// users get nothing. At 20 s the broker and the client both notice within
// about a minute, for one small frame each way per quiet connection.
const (
	defaultNATSPing = 20 * time.Second
	minNATSPing     = 100 * time.Millisecond
	maxNATSPing     = 10 * time.Minute
	maxPingsOut     = 2
)

// connect dials NATS, retrying until ctx ends: processes may start in any order.
func connect(ctx context.Context, url, name string, ping time.Duration, log *slog.Logger, more ...nats.Option) (*nats.Conn, error) {
	opts := append([]nats.Option{
		nats.Name(name),
		nats.PingInterval(ping),
		nats.MaxPingsOutstanding(maxPingsOut),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("NATS disconnected", "err", err) }),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("NATS reconnected", "url", nc.ConnectedUrlRedacted()) }),
	}, more...)
	for {
		nc, err := nats.Connect(url, opts...)
		if err == nil {
			return nc, nil
		}
		log.Warn("cannot reach NATS, retrying", "url", url, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to %s: %w", url, err)
		case <-time.After(time.Second):
		}
	}
}

func serveEdge(ctx context.Context, e *edge.Edge, log *slog.Logger) error {
	errc := make(chan error, 1)
	go func() { errc <- e.Serve() }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return e.Shutdown(sctx)
}

func closeWorker(w *workers.Worker, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		log.Warn("worker close", "err", err)
	}
}

func shutdownBroker(b *broker.Broker) {
	// Lame duck mode spreads disconnects over its whole duration.
	ctx, cancel := context.WithTimeout(context.Background(), b.LameDuck()+5*time.Second)
	defer cancel()
	b.Shutdown(ctx)
}

// quietNATS keeps the embedded server's start-up chatter out of the
// single-process log unless debugging.
func quietNATS(log *slog.Logger) *slog.Logger {
	if log.Enabled(context.Background(), slog.LevelDebug) {
		return log
	}
	return slog.New(levelFloor{log.Handler(), slog.LevelWarn})
}

type levelFloor struct {
	slog.Handler
	min slog.Level
}

func (l levelFloor) Enabled(ctx context.Context, lvl slog.Level) bool {
	return lvl >= l.min && l.Handler.Enabled(ctx, lvl)
}

func (l levelFloor) WithAttrs(a []slog.Attr) slog.Handler {
	return levelFloor{l.Handler.WithAttrs(a), l.min}
}

func (l levelFloor) WithGroup(n string) slog.Handler {
	return levelFloor{l.Handler.WithGroup(n), l.min}
}

// checkAddr refuses a listen address that is not host:port ("" is off).
func checkAddr(flag, addr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		if n, perr := strconv.Atoi(port); perr != nil || n < 0 || n > 65535 {
			err = fmt.Errorf("bad port %q", port)
		}
	}
	if err != nil {
		return usageError{fmt.Errorf("--%s %q: want host:port: %w", flag, addr, err)}
	}
	return nil
}

func checkAddrs(addrs map[string]string) error {
	for flag, addr := range addrs {
		if err := checkAddr(flag, addr); err != nil {
			return err
		}
	}
	return nil
}

// checkURLs refuses a --nats value that is not a list of nats:// (or
// tls://, ws://…) URLs or host:port addresses.
func checkURLs(list string) error {
	urls := splitList(list)
	if len(urls) == 0 {
		return usageError{errors.New("--nats: no server URL")}
	}
	for _, s := range urls {
		if !strings.Contains(s, "://") {
			s = "nats://" + s
		}
		u, err := url.Parse(s)
		if err == nil && (u.Host == "" || u.Port() == "") {
			err = errors.New("want scheme://host:port")
		}
		if err != nil {
			return usageError{fmt.Errorf("--nats %q: %w", s, err)}
		}
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func orOff(s string) string {
	if s == "" {
		return "off"
	}
	return s
}
