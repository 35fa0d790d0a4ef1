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
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/chatd-io/chatd/broker"
	"github.com/chatd-io/chatd/edge"
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
	logLevel string
}

func newFlagSet(name string, stderr io.Writer) *flagSet {
	fs := &flagSet{FlagSet: flag.NewFlagSet("chatd "+name, flag.ContinueOnError)}
	fs.SetOutput(stderr)
	fs.StringVar(&fs.logLevel, "log-level", "info", "log level: debug, info, warn, error")
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
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		env := "CHATD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok && !set[f.Name] && err == nil {
			if serr := f.Value.Set(v); serr != nil {
				err = usageError{fmt.Errorf("%s=%q: %w", env, v, serr)}
			}
		}
	})
	return err
}

func (fs *flagSet) logger(stderr io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(fs.logLevel)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level: %w", err)}
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl})), nil
}

// common flags of the roles that serve clients or commands.
type edgeFlags struct {
	listen         string
	maxFrame       int
	requestTimeout time.Duration
	filePorts      portRange
	fileTimeout    time.Duration
	fileMax        byteSize
	heartbeat      time.Duration
	jsDomain       string
}

func (f *edgeFlags) register(fs *flagSet, listen string) {
	fs.StringVar(&f.listen, "listen", listen, "client TCP address")
	fs.IntVar(&f.maxFrame, "max-frame", proto.DefaultMaxFrame, "largest client JSON object in bytes")
	fs.DurationVar(&f.requestTimeout, "request-timeout", 5*time.Second, "how long a client waits for a worker before \"unavailable\"")
	f.filePorts = portRange{8100, 8199}
	fs.Var(&f.filePorts, "file-ports", "file transfer port range LO-HI on the client address; \"off\" disables send_file")
	fs.DurationVar(&f.fileTimeout, "file-timeout", 10*time.Second, "how long a file transfer waits for a client to connect, or for any progress")
	f.fileMax = 4 << 30
	fs.Var(&f.fileMax, "file-max", "largest file accepted (bytes, or with KiB, MiB, GiB)")
	fs.DurationVar(&f.heartbeat, "heartbeat", 5*time.Second, "how often the edge tells the workers it is alive")
	fs.StringVar(&f.jsDomain, "js-domain", "", "JetStream domain of the hub, for an edge in a leaf region")
}

func (f *edgeFlags) options(nc *nats.Conn, name string, log *slog.Logger) edge.Options {
	return edge.Options{Listen: f.listen, Conn: nc, Name: name, MaxFrame: f.maxFrame,
		RequestTimeout: f.requestTimeout, FilePortLo: f.filePorts.lo, FilePortHi: f.filePorts.hi,
		FileTimeout: f.fileTimeout, FileMaxSize: int64(f.fileMax), Heartbeat: f.heartbeat, JetStreamDomain: f.jsDomain,
		Logger: log.With("role", "edge")}
}

type workerFlags struct {
	hashCost int
	replicas int
	inboxAge time.Duration
	fileAge  time.Duration
	deadEdge time.Duration
}

func (f *workerFlags) register(fs *flagSet) {
	fs.IntVar(&f.hashCost, "hash-cost", 10, "bcrypt cost for new passwords (4 is for benchmarks only)")
	fs.IntVar(&f.replicas, "replicas", 1, "JetStream replicas for the streams (3 in a production cluster)")
	fs.DurationVar(&f.inboxAge, "inbox-max-age", 30*24*time.Hour, "how long messages for offline users are kept")
	fs.DurationVar(&f.fileAge, "file-max-age", 7*24*time.Hour, "how long files for offline users are kept")
	fs.DurationVar(&f.deadEdge, "edge-dead-after", 15*time.Second, "an edge silent this long is given up: its users' friends are told they went offline")
}

func (f *workerFlags) options(nc *nats.Conn, dir, name string, log *slog.Logger) workers.Options {
	return workers.Options{Conn: nc, DataDir: dir, Name: name, Version: version, HashCost: f.hashCost,
		Replicas: f.replicas, InboxMaxAge: f.inboxAge, FileMaxAge: f.fileAge, EdgeDeadAfter: f.deadEdge,
		Logger: log.With("role", "worker")}
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "chatd"
	}
	return h
}

func runAll(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("all", stderr)
	var ef edgeFlags
	var wf workerFlags
	ef.register(fs, "127.0.0.1:8000")
	wf.register(fs)
	data := fs.String("data", "./data", "data directory (JetStream store and the worker's LevelDB)")
	natsListen := fs.String("nats-listen", "", "let external edges, workers and the nats CLI connect here (host:port); off by default")
	httpAddr := fs.String("http", "127.0.0.1:8222", "NATS monitoring address (/varz /connz /jsz /healthz); empty disables")
	name := fs.String("name", hostname(), "server name")
	if err := fs.parse(args); err != nil {
		return err
	}
	log, err := fs.logger(stderr)
	if err != nil {
		return err
	}
	if err := wf.options(nil, "", *name, log).Validate(); err != nil {
		return usageError{err}
	}
	b, err := broker.New(broker.Options{Name: *name, Listen: *natsListen, HTTP: *httpAddr, DataDir: *data,
		Logger: quietNATS(log)})
	if err != nil {
		return err
	}
	defer shutdownBroker(b)
	wnc, err := b.Connect("chatd-worker " + *name)
	if err != nil {
		return err
	}
	defer wnc.Close()
	w, err := workers.New(ctx, wf.options(wnc, filepath.Join(*data, "worker"), *name, log))
	if err != nil {
		return err
	}
	defer closeWorker(w, log)
	enc, err := b.Connect("chatd-edge " + *name)
	if err != nil {
		return err
	}
	defer enc.Close()
	e, err := edge.New(ef.options(enc, *name, log))
	if err != nil {
		return err
	}
	log.Info("chatd ready", "mode", "all", "client", e.Addr().String(), "nats", orOff(b.ClientURL()),
		"http", orOff(b.MonitorAddr()), "data", *data, "version", version)
	return serveEdge(ctx, e, log)
}

func runBroker(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("broker", stderr)
	natsListen := fs.String("nats-listen", "127.0.0.1:4222", "client address for edges, workers and the nats CLI")
	httpAddr := fs.String("http", "127.0.0.1:8222", "monitoring address (/varz /connz /jsz /healthz); empty disables")
	data := fs.String("data", "./data", "JetStream store directory")
	name := fs.String("name", hostname(), "server name; unique within a cluster")
	lameDuck := fs.Duration("lame-duck", 10*time.Second, "how long shutdown spreads client disconnects over")
	jetStream := fs.Bool("jetstream", true, "run JetStream here; a leaf region's server may run without it")
	jsDomain := fs.String("js-domain", "", "JetStream domain name, so that leaf regions can reach this JetStream")
	clusterName := fs.String("cluster-name", "chatd", "cluster name, the same on every server of a cluster")
	clusterListen := fs.String("cluster-listen", "", "route address for other servers of this cluster (host:port)")
	routes := fs.String("routes", "", "comma-separated route URLs of the other servers of this cluster")
	leafListen := fs.String("leafnode-listen", "", "accept leaf node connections from other regions here (host:port)")
	leafRemote := fs.String("leafnode-remote", "", "comma-separated nats-leaf:// URLs of a hub to join as a leaf node")
	if err := fs.parse(args); err != nil {
		return err
	}
	if *natsListen == "" {
		return usageError{errors.New("--nats-listen is required")}
	}
	if *routes != "" && *clusterListen == "" {
		return usageError{errors.New("--routes needs --cluster-listen")}
	}
	log, err := fs.logger(stderr)
	if err != nil {
		return err
	}
	b, err := broker.New(broker.Options{Name: *name, Listen: *natsListen, HTTP: *httpAddr, DataDir: *data,
		LameDuck: *lameDuck, NoJetStream: !*jetStream, JetStreamDomain: *jsDomain, ClusterName: *clusterName, ClusterListen: *clusterListen,
		Routes: splitList(*routes), LeafListen: *leafListen, LeafRemotes: splitList(*leafRemote), Logger: log})
	if err != nil {
		return err
	}
	log.Info("chatd ready", "mode", "broker", "nats", b.ClientURL(), "http", orOff(b.MonitorAddr()),
		"cluster", orOff(b.ClusterAddr()), "leafnodes", orOff(*leafListen), "jetstream", *jetStream, "data", *data, "version", version)
	<-ctx.Done()
	log.Info("shutting down")
	shutdownBroker(b)
	return nil
}

func runEdge(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("edge", stderr)
	var ef edgeFlags
	ef.register(fs, ":8000")
	natsURL := fs.String("nats", "nats://127.0.0.1:4222", "NATS server URL(s), comma separated")
	name := fs.String("name", hostname(), "edge name, shown in NATS monitoring")
	if err := fs.parse(args); err != nil {
		return err
	}
	log, err := fs.logger(stderr)
	if err != nil {
		return err
	}
	nc, err := connect(ctx, *natsURL, "chatd-edge "+*name, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	e, err := edge.New(ef.options(nc, *name, log))
	if err != nil {
		return err
	}
	log.Info("chatd ready", "mode", "edge", "client", e.Addr().String(), "nats", nc.ConnectedUrlRedacted(), "version", version)
	return serveEdge(ctx, e, log)
}

func runWorker(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("worker", stderr)
	var wf workerFlags
	wf.register(fs)
	natsURL := fs.String("nats", "nats://127.0.0.1:4222", "NATS server URL(s), comma separated")
	data := fs.String("data", "./data/worker", "LevelDB directory, one per worker process")
	name := fs.String("name", hostname(), "worker name, shown in NATS monitoring")
	if err := fs.parse(args); err != nil {
		return err
	}
	log, err := fs.logger(stderr)
	if err != nil {
		return err
	}
	if err := wf.options(nil, *data, *name, log).Validate(); err != nil {
		return usageError{err}
	}
	nc, err := connect(ctx, *natsURL, "chatd-worker "+*name, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	w, err := workers.New(ctx, wf.options(nc, *data, *name, log))
	if err != nil {
		return err
	}
	log.Info("chatd ready", "mode", "worker", "nats", nc.ConnectedUrlRedacted(), "data", *data, "version", version)
	<-ctx.Done()
	log.Info("shutting down")
	closeWorker(w, log)
	return nil
}

// connect dials NATS, retrying until ctx ends: processes may start in any order.
func connect(ctx context.Context, url, name string, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("NATS disconnected", "err", err) }),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("NATS reconnected", "url", nc.ConnectedUrlRedacted()) }),
	}
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
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
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
