// Package broker runs nats-server in-process with JetStream on. The same
// code serves `chatd all`, where edge and worker connect in-process, and
// `chatd broker`, where they connect over TCP.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Options configure a broker.
type Options struct {
	// ConfigFile is a nats-server configuration file (accounts, TLS,
	// gateways, anything the server supports). When set it describes the
	// server entirely: the fields below but LameDuck (when not zero),
	// ReadyTimeout and Logger are ignored.
	ConfigFile string
	// Name identifies the server in monitoring and clusters.
	Name string
	// Listen is the client host:port. Empty means no TCP listener: only
	// in-process connections (Broker.Connect) reach the server.
	Listen string
	// HTTP is the monitoring host:port (/varz /connz /jsz /healthz …); empty disables it.
	HTTP string
	// DataDir holds the JetStream store.
	DataDir string
	// NoJetStream runs the server without JetStream: a region's leaf
	// server then sends its clients' JetStream requests to the hub.
	NoJetStream bool
	// JetStreamDomain names this server's JetStream; clients in another
	// region reach it across leaf nodes by that name.
	JetStreamDomain string
	// ClusterName, ClusterListen and Routes join servers into a cluster
	// (full mesh of routes); streams may then be replicated.
	ClusterName   string
	ClusterListen string
	Routes        []string
	// LeafListen accepts leaf node connections from other regions;
	// LeafRemotes connects this server to a hub as a leaf node.
	LeafListen  string
	LeafRemotes []string
	// LameDuck is how long a shutdown spreads client disconnects over.
	// With a ConfigFile, zero keeps the file's lame_duck_duration.
	LameDuck time.Duration
	// PingInterval is how often the server pings a quiet connection, and
	// PingsOut how many may go unanswered before it cuts the connection
	// as half-open. Zero keeps nats-server's defaults (2 minutes, 2), or
	// with a ConfigFile the file's ping_interval and ping_max.
	PingInterval time.Duration
	PingsOut     int
	// ReadyTimeout bounds the wait for the server to accept connections.
	ReadyTimeout time.Duration
	Logger       *slog.Logger
}

// Broker is a running embedded NATS server.
type Broker struct {
	opts Options
	so   *server.Options // what the server was started with
	ns   *server.Server
	log  *slog.Logger
}

// New starts a broker and waits until it accepts connections.
func New(opts Options) (*Broker, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.DataDir == "" && !opts.NoJetStream && opts.ConfigFile == "" {
		return nil, errors.New("broker: a data directory is required for JetStream")
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 10 * time.Second
	}
	if opts.LameDuck == 0 && opts.ConfigFile == "" {
		opts.LameDuck = 10 * time.Second
	}
	so, err := serverOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	ns, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	ns.SetLoggerV2(&logAdapter{l: opts.Logger.With("component", "nats")}, false, false, false)
	ns.Start()
	if !ns.ReadyForConnections(opts.ReadyTimeout) {
		ns.Shutdown()
		return nil, fmt.Errorf("broker: not ready within %s (is the port in use?)", opts.ReadyTimeout)
	}
	return &Broker{opts: opts, so: so, ns: ns, log: opts.Logger}, nil
}

// Check reports whether opts describe a server that can be started,
// without starting it: a configuration file is read and parsed, and
// nats-server's own validation runs (a JetStream cluster needs a server
// name, a domain must be a valid name…), which opens nothing.
func Check(opts Options) error {
	if opts.DataDir == "" && !opts.NoJetStream && opts.ConfigFile == "" {
		return errors.New("broker: a data directory is required for JetStream")
	}
	so, err := serverOptions(opts)
	if err != nil {
		return err
	}
	if _, err := server.NewServer(so); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	return nil
}

func serverOptions(opts Options) (*server.Options, error) {
	if opts.ConfigFile != "" {
		so, err := server.ProcessConfigFile(opts.ConfigFile)
		if err != nil {
			return nil, fmt.Errorf("config file: %w", err)
		}
		so.NoSigs = true
		if opts.LameDuck != 0 {
			so.LameDuckDuration = opts.LameDuck
		} else if so.LameDuckDuration == 0 {
			so.LameDuckDuration = 10 * time.Second
		}
		so.LameDuckGracePeriod = so.LameDuckDuration / 2
		pings(so, opts)
		return so, nil
	}
	so := &server.Options{
		ServerName:          opts.Name,
		JetStream:           !opts.NoJetStream,
		LameDuckDuration:    opts.LameDuck,
		LameDuckGracePeriod: opts.LameDuck / 2,
		NoSigs:              true,
		MaxPayload:          8 << 20,
	}
	pings(so, opts)
	if !opts.NoJetStream {
		so.StoreDir = filepath.Join(opts.DataDir, "jetstream")
		so.JetStreamDomain = opts.JetStreamDomain
	}
	if err := clustering(so, opts); err != nil {
		return nil, err
	}
	if opts.Listen == "" {
		so.DontListen = true
	} else {
		host, port, err := splitHostPort(opts.Listen)
		if err != nil {
			return nil, fmt.Errorf("listen address: %w", err)
		}
		so.Host, so.Port = host, port
	}
	if opts.HTTP != "" {
		host, port, err := splitHostPort(opts.HTTP)
		if err != nil {
			return nil, fmt.Errorf("http address: %w", err)
		}
		so.HTTPHost, so.HTTPPort = host, port
	}
	return so, nil
}

func pings(so *server.Options, opts Options) {
	if opts.PingInterval > 0 {
		so.PingInterval = opts.PingInterval
	}
	if opts.PingsOut > 0 {
		so.MaxPingsOut = opts.PingsOut
	}
}

// clustering fills the route and leaf node settings.
func clustering(so *server.Options, opts Options) error {
	if opts.ClusterListen != "" {
		host, port, err := splitHostPort(opts.ClusterListen)
		if err != nil {
			return fmt.Errorf("cluster address: %w", err)
		}
		so.Cluster.Name, so.Cluster.Host, so.Cluster.Port = opts.ClusterName, host, port
		if so.Cluster.Name == "" {
			so.Cluster.Name = "chatd"
		}
		routes, err := urls(opts.Routes, "nats")
		if err != nil {
			return fmt.Errorf("routes: %w", err)
		}
		so.Routes = routes
	} else if len(opts.Routes) > 0 {
		return errors.New("routes need a cluster address to listen on")
	}
	if opts.LeafListen != "" {
		host, port, err := splitHostPort(opts.LeafListen)
		if err != nil {
			return fmt.Errorf("leaf node address: %w", err)
		}
		so.LeafNode.Host, so.LeafNode.Port = host, port
		// Leaf servers dial the addresses they were given, nothing else:
		// an advertised address may be unreachable from another region,
		// or bypass the proxy or load balancer in between.
		so.LeafNode.NoAdvertise = true
	}
	if len(opts.LeafRemotes) > 0 {
		remotes, err := urls(opts.LeafRemotes, "nats-leaf")
		if err != nil {
			return fmt.Errorf("leaf node remotes: %w", err)
		}
		so.LeafNode.Remotes = []*server.RemoteLeafOpts{{URLs: remotes}}
		so.LeafNode.ReconnectInterval = time.Second
	}
	return nil
}

// urls parses addresses, accepting host:port without a scheme.
func urls(addrs []string, scheme string) ([]*url.URL, error) {
	var out []*url.URL
	for _, a := range addrs {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if !strings.Contains(a, "://") {
			a = scheme + "://" + a
		}
		u, err := url.Parse(a)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("bad address %q", a)
		}
		out = append(out, u)
	}
	return out, nil
}

// splitHostPort parses host:port, mapping port 0 to nats-server's "random port".
func splitHostPort(addr string) (string, int, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", ps)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

// Server exposes the underlying nats-server, for tests and monitoring.
func (b *Broker) Server() *server.Server { return b.ns }

// ClientURL is the nats:// URL for TCP clients, or "" without a listener.
func (b *Broker) ClientURL() string {
	if b.ns.Addr() == nil {
		return ""
	}
	return b.ns.ClientURL()
}

// LeafAddr is the leaf node listener's address as configured, or "" when
// the server accepts no leaf nodes.
func (b *Broker) LeafAddr() string {
	if b.so.LeafNode.Port == 0 {
		return ""
	}
	return net.JoinHostPort(b.so.LeafNode.Host, strconv.Itoa(b.so.LeafNode.Port))
}

// JetStream reports whether this server runs JetStream.
func (b *Broker) JetStream() bool { return b.ns.JetStreamEnabled() }

// LameDuck is how long a shutdown may spread client disconnects over.
func (b *Broker) LameDuck() time.Duration { return b.so.LameDuckDuration }

// ClusterAddr is the bound route address, or "" outside a cluster.
func (b *Broker) ClusterAddr() string {
	if a := b.ns.ClusterAddr(); a != nil {
		return a.String()
	}
	return ""
}

// MonitorAddr is the bound monitoring address, or "" when disabled.
func (b *Broker) MonitorAddr() string {
	if a := b.ns.MonitorAddr(); a != nil {
		return a.String()
	}
	return ""
}

// Connect opens an in-process client connection: no sockets, no ports.
// Its writes have no deadline: on an in-process pipe each one would start
// and stop a timer for every flush, and the reader at the other end is
// this process's own server, not a network that can stall.
func (b *Broker) Connect(name string, opts ...nats.Option) (*nats.Conn, error) {
	opts = append([]nats.Option{nats.Name(name), nats.InProcessServer(b.ns), nats.MaxReconnects(-1),
		nats.FlusherTimeout(0)}, opts...)
	nc, err := nats.Connect("", opts...)
	if err != nil {
		return nil, fmt.Errorf("broker: in-process connect: %w", err)
	}
	return nc, nil
}

// Shutdown stops the server. With remote clients it enters lame-duck mode
// first so they move to other servers gradually; ctx bounds the wait.
func (b *Broker) Shutdown(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if b.ns.Addr() != nil && b.ns.NumClients() > 0 {
			b.ns.LameDuckShutdown()
			return
		}
		b.ns.Shutdown()
	}()
	select {
	case <-done:
	case <-ctx.Done():
		b.ns.Shutdown()
	}
	b.ns.WaitForShutdown()
}

// logAdapter sends nats-server logs to slog.
type logAdapter struct{ l *slog.Logger }

func (a *logAdapter) Noticef(f string, v ...any) { a.l.Info(fmt.Sprintf(f, v...)) }
func (a *logAdapter) Warnf(f string, v ...any)   { a.l.Warn(fmt.Sprintf(f, v...)) }
func (a *logAdapter) Errorf(f string, v ...any)  { a.l.Error(fmt.Sprintf(f, v...)) }
func (a *logAdapter) Fatalf(f string, v ...any)  { a.l.Error(fmt.Sprintf(f, v...)) }
func (a *logAdapter) Debugf(f string, v ...any)  { a.l.Debug(fmt.Sprintf(f, v...)) }
func (a *logAdapter) Tracef(f string, v ...any)  { a.l.Debug(fmt.Sprintf(f, v...)) }
