// Package edge is the client-facing TCP listener. An edge holds sockets
// and nothing else that matters: it parses frames, binds a connection to
// its logged-in user, turns each request into a NATS request to the
// workers, writes replies back, and while a user has sessions here it
// subscribes to that user's delivery subject. Killing an edge loses no
// data; its users reconnect to any other edge.
package edge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"

	"github.com/chatd-io/chatd/internal/deadline"
	"github.com/chatd-io/chatd/internal/metrics"
	"github.com/chatd-io/chatd/internal/probe"
	"github.com/chatd-io/chatd/internal/proto"
)

// Options configure an edge.
type Options struct {
	// Listen is the client host:port.
	Listen string
	// Conn is the edge's NATS connection; the caller owns it.
	Conn *nats.Conn
	// Deliveries are more NATS connections, the caller's too, that carry
	// the users' subscriptions, apart from Conn's requests and replies;
	// with several, each user's is always on the same one. Kept apart,
	// deliveries arrive in larger batches and the edge writes more lines
	// per system call (docs/benchmarks.md). None: Conn carries them.
	// Opened with nats.NoEcho, a delivery connection also lets the edge
	// write a private message to a friend with a session here itself,
	// without a round trip through NATS: the copy it publishes for the
	// user's sessions elsewhere (and for anyone watching the subject)
	// then does not come back to it.
	Deliveries []*nats.Conn
	// CopyInterval is how long the edge gathers the copies of private
	// messages it delivered itself before publishing the next batch
	// (default 1 ms); the first after a quiet spell goes at once.
	CopyInterval time.Duration
	// PresenceDelay is how long a presence notice (friend_login,
	// friend_offline) may wait for other lines to its session, so that
	// one system call writes them all (default 10 ms). Whatever else is
	// written to the session takes waiting notices along at once: they
	// are never overtaken. Negative: each is written at once.
	PresenceDelay time.Duration
	// Name names this edge in logs.
	Name string
	// MaxFrame is the largest client object accepted, in bytes.
	MaxFrame int
	// RequestTimeout bounds a wait for a worker; past it the client is
	// told "unavailable" instead of waiting forever.
	RequestTimeout time.Duration
	// ProbeTimeout bounds the "does anybody else hold this user" check.
	ProbeTimeout time.Duration
	// OutQueue is how many messages may wait for a slow client before it
	// is disconnected.
	OutQueue int
	// RateLimit is the requests per second each client connection may
	// send on average, RateBurst how many at once (zero: a second's
	// worth); past them a request is answered "rate_limited" and goes no
	// further. Zero RateLimit: no limit.
	RateLimit float64
	RateBurst int
	// LoginFailures is how many failed logins (a wrong name or password)
	// a client address may make per minute, at most that many at once;
	// past it the address's logins are answered "rate_limited" before any
	// password is hashed. IPv6 addresses count by /64. Zero: no limit.
	LoginFailures float64
	// WriteTimeout disconnects a client whose socket accepts nothing for this long.
	WriteTimeout time.Duration
	// KeepAlive is the idle time before TCP keepalive probes start; a peer
	// that vanished without a FIN or RST (power loss, a dropped NAT entry)
	// is noticed about KeepAlive+30s later and its session ends.
	KeepAlive time.Duration
	// FilePortLo..FilePortHi is the range file transfer ports are taken
	// from; zero disables send_file.
	FilePortLo, FilePortHi int
	// FileTimeout bounds the wait for a client to connect to its file
	// port, and any stall of a transfer once started.
	FileTimeout time.Duration
	// FileMaxSize is the largest file accepted, in bytes.
	FileMaxSize int64
	// JetStreamDomain names the JetStream to use when it runs in another
	// region, reached across a leaf node connection.
	JetStreamDomain string
	// Heartbeat is how often the edge tells the workers it is alive.
	Heartbeat time.Duration
	// IdleAfter is how long a connection may be silent between requests
	// before it is parked: its read goroutine ends and the edge's poller
	// watches its socket until it speaks again (Linux).
	IdleAfter time.Duration
	// DrainGrace is how long a shutting-down edge still reads requests
	// that clients sent before they heard of the shutdown.
	DrainGrace time.Duration
	// Metrics receives the edge's metrics; nil keeps them private.
	Metrics *metrics.Registry
	// Version is reported in the edge's NATS service info.
	Version string
	Logger  *slog.Logger
}

func (o *Options) setDefaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxFrame == 0 {
		o.MaxFrame = proto.DefaultMaxFrame
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = 5 * time.Second
	}
	if o.ProbeTimeout == 0 {
		o.ProbeTimeout = time.Second
	}
	if o.OutQueue == 0 {
		o.OutQueue = 1024
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.RateLimit > 0 && o.RateBurst < 1 {
		o.RateBurst = max(1, int(o.RateLimit))
	}
	if o.KeepAlive == 0 {
		o.KeepAlive = 30 * time.Second
	}
	if o.FileTimeout == 0 {
		o.FileTimeout = 10 * time.Second
	}
	if o.FileMaxSize == 0 {
		o.FileMaxSize = 4 << 30
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = 5 * time.Second
	}
	if o.IdleAfter == 0 {
		o.IdleAfter = 5 * time.Second
	}
	if o.PresenceDelay == 0 {
		o.PresenceDelay = defaultPresenceDelay
	}
	if o.CopyInterval == 0 {
		o.CopyInterval = defaultCopyInterval
	}
	if o.DrainGrace == 0 {
		o.DrainGrace = time.Second
	}
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
	if o.Version == "" {
		o.Version = "0.0.0"
	}
}

// defaultPresenceDelay is well below what a person can notice in a
// friend's status, and longer than most sessions of a login storm last,
// so such a session gets its notices in the write of its login reply.
const defaultPresenceDelay = 10 * time.Millisecond

// maxAllowance bounds the rates of Options.RateLimit and LoginFailures.
const maxAllowance = 1e9

// Validate reports options that cannot work.
func (o Options) Validate() error {
	// Bounded above too: the allowances are counted in ints.
	if !(o.LoginFailures >= 0 && o.LoginFailures <= maxAllowance) { // NaN too
		return fmt.Errorf("edge: %g failed logins a minute: not within 0-%g", o.LoginFailures, float64(maxAllowance))
	}
	if !(o.RateLimit >= 0 && o.RateLimit <= maxAllowance) || o.RateBurst < 0 {
		return fmt.Errorf("edge: client rate %g with burst %d: the rate is not within 0-%g, or the burst is negative", o.RateLimit, o.RateBurst, float64(maxAllowance))
	}
	if o.FilePortLo != 0 || o.FilePortHi != 0 {
		if o.FilePortLo < 1 || o.FilePortHi > 65535 || o.FilePortLo > o.FilePortHi {
			return fmt.Errorf("edge: file port range %d-%d is not within 1-65535, low to high", o.FilePortLo, o.FilePortHi)
		}
	}
	for name, v := range map[string]int64{"file max size": o.FileMaxSize, "file timeout": int64(o.FileTimeout),
		"request timeout": int64(o.RequestTimeout), "max frame": int64(o.MaxFrame), "out queue": int64(o.OutQueue),
		"write timeout": int64(o.WriteTimeout), "keepalive": int64(o.KeepAlive), "heartbeat": int64(o.Heartbeat),
		"idle after": int64(o.IdleAfter), "drain grace": int64(o.DrainGrace), "probe timeout": int64(o.ProbeTimeout),
		"copy interval": int64(o.CopyInterval)} {
		if v < 0 {
			return fmt.Errorf("edge: %s is negative", name)
		}
	}
	return nil
}

// Edge is a running client listener.
type Edge struct {
	opts     Options
	log      *slog.Logger
	failures *loginFailures // nil: failed logins are not limited
	nc       *nats.Conn
	js       jetstream.JetStream
	ln       net.Listener
	// subs carry the users' subscriptions, and their session registry
	// writes (see deliveryConn): Options.Deliveries, or Conn alone.
	// settled[i] is subs[i]'s reconnect count when the server was last
	// known to have its subscriptions (see awaitDeliveries).
	subs []*nats.Conn
	// copiers[i] publishes the copies of what the edge delivered itself
	// to users whose subscription is on subs[i]; nil where that
	// connection would echo them back (see Options.Deliveries).
	copiers []*copier
	settled []atomic.Uint64
	// id names this edge instance on NATS: workers address file offers
	// to it, and probes of a user's subject are answered with it.
	id    string
	files *portRange    // nil when file transfer is off
	svc   micro.Service // chat-edge: status and file offers

	objMu   sync.Mutex
	objects jetstream.ObjectStore // the stored-files bucket, once looked up

	// deliveries is shared by every per-user subscription: one dispatcher
	// goroutine serves them all instead of one goroutine per user.
	deliveries chan *nats.Msg
	line       []byte // the dispatcher's buffer for a line it writes itself

	mu        sync.Mutex
	users     map[string]*userEntry
	subjects  map[string]*userEntry // the same entries, by delivery subject
	conns     map[*conn]struct{}
	transfers map[*transfer]struct{}
	serial    uint64 // orders sessions by login, newest highest
	registry  *registry
	replies   *replies
	metrics   *edgeMetrics
	poller    *poller // nil where idle connections cannot be parked

	// fetching makes fetches of one user's stored messages take turns
	// (fetchInbox), whichever sessions they serve; striped by user.
	fetching [64]sync.Mutex

	closing chan struct{}
	wg      sync.WaitGroup // every goroutine of the edge
	connWG  sync.WaitGroup // client connections' read loops
}

// userEntry is one user's sessions on this edge, each with its login
// serial, and their subscription.
type userEntry struct {
	name     string
	sessions map[*conn]uint64
	sub      *nats.Subscription
	pending  *pendingLogin // the first session's login, until decided
}

// New starts listening. Serve must be called to accept clients.
func New(opts Options) (*Edge, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.setDefaults()
	if opts.Conn == nil {
		return nil, errors.New("edge: a NATS connection is required")
	}
	js, err := newJetStream(opts.Conn, opts.JetStreamDomain)
	if err != nil {
		return nil, fmt.Errorf("edge: jetstream: %w", err)
	}
	e := &Edge{
		failures:   newLoginFailures(opts.LoginFailures),
		opts:       opts,
		log:        opts.Logger,
		nc:         opts.Conn,
		js:         js,
		subs:       []*nats.Conn{opts.Conn},
		id:         nuid.Next(),
		deliveries: make(chan *nats.Msg, 1<<16),
		users:      make(map[string]*userEntry),
		subjects:   make(map[string]*userEntry),
		conns:      make(map[*conn]struct{}),
		transfers:  make(map[*transfer]struct{}),
		closing:    make(chan struct{}),
	}
	if len(opts.Deliveries) > 0 {
		e.subs = opts.Deliveries
	}
	e.settled = make([]atomic.Uint64, len(e.subs))
	e.copiers = make([]*copier, len(e.subs))
	for i, nc := range e.subs {
		if nc != opts.Conn && nc.Opts.NoEcho {
			e.copiers[i] = newCopier(nc, opts.CopyInterval)
		}
	}
	if e.registry, err = newRegistry(e); err != nil {
		return nil, err
	}
	e.metrics = newEdgeMetrics(opts.Metrics, e)
	if opts.FilePortLo > 0 {
		e.files = &portRange{lo: opts.FilePortLo, hi: opts.FilePortHi}
	}
	// Go's own keepalive on accepted connections is off: each one gets
	// its own, jittered, once accepted (see Serve), and the default would
	// be four more system calls per connection, set only to be overwritten.
	lc := net.ListenConfig{KeepAlive: -1}
	if e.ln, err = lc.Listen(context.Background(), "tcp", opts.Listen); err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	if err := e.addService(); err != nil {
		_ = e.ln.Close()
		return nil, err
	}
	if e.replies, err = newReplies(opts.Conn); err != nil {
		_ = e.ln.Close()
		_ = e.svc.Stop()
		return nil, fmt.Errorf("edge: %w", err)
	}
	for _, cp := range e.copiers {
		if cp != nil {
			e.wg.Add(1)
			go func() { defer e.wg.Done(); cp.run() }()
		}
	}
	e.wg.Add(3)
	go e.dispatch()
	go e.registry.run()
	go e.watchReconnects()
	if p, err := newPoller(); err != nil {
		e.log.Info("idle connections keep their goroutines", "reason", err)
	} else {
		e.poller = p
		e.wg.Add(1)
		go func() { defer e.wg.Done(); p.run() }()
	}
	return e, nil
}

// ServiceName is the NATS micro service every edge registers, so that
// `nats micro ls` lists edges beside workers.
const ServiceName = "chat-edge"

// addService registers the edge's service: a status endpoint, and the
// endpoint workers hand file offers to. Both subjects are this edge's own.
func (e *Edge) addService() error {
	svc, err := micro.AddService(e.nc, micro.Config{
		Name:        ServiceName,
		Version:     e.opts.Version,
		Description: "chatd client listener",
		Metadata:    map[string]string{"name": e.opts.Name, "edge_id": e.id, "listen": e.ln.Addr().String()},
	})
	if err != nil {
		return fmt.Errorf("edge: add service: %w", err)
	}
	err = svc.AddEndpoint("status", micro.HandlerFunc(e.status),
		micro.WithEndpointSubject(proto.EdgePrefix+e.id+".status"))
	if err == nil && e.files != nil {
		err = svc.AddEndpoint("file_offer", micro.HandlerFunc(e.takeOffer),
			micro.WithEndpointSubject(proto.EdgeFileSubject(e.id)))
	}
	if err != nil {
		_ = svc.Stop()
		return fmt.Errorf("edge: add endpoint: %w", err)
	}
	e.svc = svc
	return nil
}

// status answers what an operator asks an edge with `nats req`.
func (e *Edge) status(req micro.Request) {
	e.mu.Lock()
	st := map[string]any{"name": e.opts.Name, "edge_id": e.id, "listen": e.ln.Addr().String(),
		"connections": len(e.conns), "users": len(e.users), "file_transfers": len(e.transfers)}
	e.mu.Unlock()
	st["sessions"] = e.Sessions()
	_ = req.RespondJSON(st)
}

func newJetStream(nc *nats.Conn, domain string, opts ...jetstream.JetStreamOpt) (jetstream.JetStream, error) {
	if domain != "" {
		return jetstream.NewWithDomain(nc, domain, opts...)
	}
	return jetstream.New(nc, opts...)
}

// Addr is the bound client address.
func (e *Edge) Addr() net.Addr { return e.ln.Addr() }

// Serve accepts clients until Shutdown.
func (e *Edge) Serve() error {
	for {
		nc, err := e.ln.Accept()
		if err != nil {
			select {
			case <-e.closing:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return fmt.Errorf("edge: accept: %w", err)
		}
		if tc, ok := nc.(*net.TCPConn); ok {
			// Both times jittered by a quarter either way: connections
			// accepted in a burst (a reconnect storm after a restart)
			// would otherwise probe in a burst too, and a burst of
			// thousands of packets overflows the kernel's backlog, which
			// then looks like dead peers. The interval too: the probes
			// lost in one burst would otherwise be retried together, and
			// lost together again, until the kernel gives up on all of them.
			idle := e.opts.KeepAlive * time.Duration(75+rand.IntN(51)) / 100
			interval := 10 * time.Second * time.Duration(75+rand.IntN(51)) / 100
			_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: idle,
				Interval: interval, Count: 3})
		}
		e.metrics.accepted.Inc()
		c := newConn(e, nc)
		e.mu.Lock()
		e.conns[c] = struct{}{}
		e.mu.Unlock()
		e.wg.Add(1)
		e.connWG.Add(1) // done when the connection ends, parked or not
		go c.readLoop()
	}
}

// Shutdown drains the edge. It stops accepting, tells every client the
// edge is going away, answers for DrainGrace the requests clients sent
// before they heard, ends each session (friends hear of it unless the
// user is logged in elsewhere) and closes each connection once its
// replies are written.
// Messages that were on their way to this edge's sessions are kept for
// them by the workers. ctx bounds the wait; connections left then are cut.
func (e *Edge) Shutdown(ctx context.Context) error {
	select {
	case <-e.closing:
	default:
		close(e.closing)
	}
	err := e.ln.Close()
	_ = e.svc.Stop()
	conns := e.snapshotConns()
	e.mu.Lock()
	transfers := make([]*transfer, 0, len(e.transfers))
	for t := range e.transfers {
		transfers = append(transfers, t)
	}
	e.mu.Unlock()
	for _, t := range transfers {
		t.end("aborted", true)
	}
	stopReading := time.Now().Add(e.opts.DrainGrace)
	for _, c := range conns {
		c.send([]byte(`{"cmd":"server_shutdown","reason":"this server is going away; connect again"}` + "\n"))
		// Reads stop after the grace; a request in hand is finished first.
		c.drainAt.Store(stopReading.UnixNano())
		_ = c.sock.SetReadDeadline(stopReading)
		c.unpark()
	}
	start := time.Now()
	drained := make(chan struct{})
	go func() { e.connWG.Wait(); close(drained) }()
	select {
	case <-drained:
		e.log.Debug("client connections drained", "connections", len(conns), "took", time.Since(start))
	case <-ctx.Done():
		e.log.Warn("cutting client connections that did not drain in time", "left", len(e.snapshotConns()))
		for _, c := range conns {
			c.close()
		}
	}
	if e.poller != nil {
		e.poller.close()
	}
	for _, cp := range e.copiers {
		if cp != nil {
			cp.close() // after the sessions: their last messages' copies go too
		}
	}
	done := make(chan struct{})
	go func() { e.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("edge: shutdown: %w", ctx.Err())
	}
	e.replies.close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (e *Edge) snapshotConns() []*conn {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]*conn, 0, len(e.conns))
	for c := range e.conns {
		out = append(out, c)
	}
	return out
}

// Parked is the number of idle connections without a read goroutine.
func (e *Edge) Parked() int {
	if e.poller == nil {
		return 0
	}
	return e.poller.len()
}

// Ready reports whether the edge should be sent clients.
func (e *Edge) Ready() error {
	select {
	case <-e.closing:
		return errors.New("shutting down")
	default:
	}
	if !e.nc.IsConnected() {
		return errors.New("not connected to NATS")
	}
	for _, nc := range e.subs {
		if !nc.IsConnected() {
			return errors.New("a delivery connection is not connected to NATS")
		}
	}
	return nil
}

// deliveryConn returns the index in e.subs of the connection that
// carries user's subscription and registry writes. The same connection
// for both lets the registry write's ack prove the subscription (see
// settle).
func (e *Edge) deliveryConn(user string) int {
	if len(e.subs) == 1 {
		return 0
	}
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(user); i++ {
		h = (h ^ uint32(user[i])) * 16777619
	}
	return int(h % uint32(len(e.subs)))
}

// Sessions is the number of logged-in connections.
func (e *Edge) Sessions() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, u := range e.users {
		n += len(u.sessions)
	}
	return n
}

func (e *Edge) forget(c *conn) {
	e.mu.Lock()
	delete(e.conns, c)
	e.mu.Unlock()
}

// bind adds c to user's sessions. For the user's first session on this
// edge it asks whether any other edge holds the user (to know whether this
// is the user's first session anywhere) and subscribes to the user's
// subject; the server has the subscription before this returns (settle),
// so that a delivery published after the login reply cannot miss it.
func (e *Edge) bind(ctx context.Context, c *conn, user string) (firstAnywhere bool, err error) {
	e.mu.Lock()
	for {
		u, ok := e.users[user]
		if !ok || u.pending == nil {
			break
		}
		p := u.pending // a login of the user's first session: wait for it
		e.mu.Unlock()
		select {
		case <-p.ready:
		case <-ctx.Done():
			return false, ctx.Err()
		}
		e.mu.Lock()
	}
	e.serial++
	if u, ok := e.users[user]; ok {
		u.sessions[c] = e.serial
		e.mu.Unlock()
		return false, nil
	}
	u := &userEntry{name: user, sessions: map[*conn]uint64{c: e.serial}}
	firstAnywhere, sub, err := e.enter(ctx, u)
	if err == nil {
		err = e.settle(ctx, user)
	}
	e.mu.Lock()
	if err != nil {
		if sub != nil {
			_ = sub.Unsubscribe()
		}
		delete(u.sessions, c)
		if e.users[user] == u && len(u.sessions) == 0 {
			e.forgetUser(u)
		}
		e.forgetKey(user)
		e.mu.Unlock()
		return false, fmt.Errorf("subscribe for %s: %w", user, err)
	}
	if e.users[user] != u {
		// Every session ended while we subscribed.
		e.forgetKey(user)
		e.mu.Unlock()
		_ = sub.Unsubscribe()
		return firstAnywhere, nil
	}
	u.sub = sub
	e.mu.Unlock()
	return firstAnywhere, nil
}

// enter adds the new entry u, unlocking e.mu, which the caller holds;
// then it asks whether any other edge holds u's user (is this the user's
// first session anywhere?) and subscribes to the user's subject.
func (e *Edge) enter(ctx context.Context, u *userEntry) (firstAnywhere bool, sub *nats.Subscription, err error) {
	e.users[u.name] = u
	e.subjects[proto.UserSubject(u.name)] = u
	e.mu.Unlock()
	firstAnywhere = !e.held(ctx, u.name)
	sub, err = e.subs[e.deliveryConn(u.name)].ChanSubscribe(proto.UserSubject(u.name), e.deliveries)
	return firstAnywhere, sub, err
}

// forgetKey removes user's registry key, which settle may have written,
// unless a newer login of the user here has it. unbind removes the key
// only with the subscription, and it found none. The caller holds e.mu.
func (e *Edge) forgetKey(user string) {
	if e.users[user] == nil {
		e.registry.record(user, false)
	}
}

// settle records user in the session registry and makes sure the server
// has the user's new subscription. The record comes before the login is
// answered, and so before friends hear of it: if this edge dies a moment
// later, the workers know whose friends to tell. Its ack also proves the
// subscription, since the server takes a connection's commands in order;
// only when the write fails does a flush (one more round trip) do that.
// Not under e.mu: the registry takes it too.
func (e *Edge) settle(ctx context.Context, user string) error {
	err := e.registry.put(ctx, user)
	if err == nil {
		return nil
	}
	e.log.Warn("session registry write failed", "user", user, "err", err)
	nc := e.subs[e.deliveryConn(user)]
	return nc.FlushTimeout(max(deadline.Remaining(ctx, e.opts.RequestTimeout), time.Millisecond))
}

// unbind removes c from user's sessions and reports whether that was the
// user's last session anywhere.
func (e *Edge) unbind(ctx context.Context, c *conn, user string) bool {
	e.mu.Lock()
	u, ok := e.users[user]
	if !ok {
		e.mu.Unlock()
		return false
	}
	delete(u.sessions, c)
	if len(u.sessions) > 0 {
		e.mu.Unlock()
		return false
	}
	e.forgetUser(u)
	sub := u.sub
	if sub != nil {
		e.registry.record(user, false)
	}
	e.mu.Unlock()
	if sub != nil {
		// Drained, not dropped: a message the server routed here before
		// it saw the unsubscribe still reaches deliverLine, which finds
		// nobody and hands a private message back to its worker to keep,
		// instead of the sender waiting in vain for a confirmation.
		_ = sub.Drain()
	}
	return !e.held(ctx, user)
}

// request sends m to the workers. While no worker is subscribed (one is
// restarting, or interest has not yet crossed a cluster) it retries with
// a growing pause until ctx ends, so a rolling restart costs clients a
// short wait rather than an error.
func (e *Edge) request(ctx context.Context, m *nats.Msg) (*nats.Msg, error) {
	return e.requestVia(ctx, m, nil)
}

// requestVia is request with the caller's waiter (nil: a new one).
func (e *Edge) requestVia(ctx context.Context, m *nats.Msg, w *waiter) (*nats.Msg, error) {
	if err := e.awaitDeliveries(ctx); err != nil {
		return nil, err
	}
	pause := 20 * time.Millisecond
	var last error = context.DeadlineExceeded
	for {
		// A timeout rather than ctx: the client pools its timers, and a
		// deadline.Context then never needs one of its own.
		left := deadline.Remaining(ctx, e.opts.RequestTimeout)
		if left <= 0 {
			return nil, last
		}
		reply, err := e.replies.request(m, left, w)
		if !errors.Is(err, nats.ErrNoResponders) {
			return reply, err
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(pause):
		}
		pause = min(2*pause, 500*time.Millisecond)
	}
}

// awaitDeliveries waits until the server has the users' subscriptions on
// every delivery connection. After a broker restart each connection
// reconnects on its own, and a request that left on Conn before a
// delivery connection was back would find this edge's own users offline.
// With one connection for everything that could not happen: a client
// sends its subscriptions again before anything else. A reconnected
// connection is flushed once, which proves the server has them.
func (e *Edge) awaitDeliveries(ctx context.Context) error {
	if len(e.opts.Deliveries) == 0 {
		return nil
	}
	for i, nc := range e.subs {
		for {
			n := nc.Stats().Reconnects
			if e.settled[i].Load() == n && nc.IsConnected() {
				break
			}
			if nc.IsClosed() {
				return fmt.Errorf("delivery connection %d: %w", i+1, nats.ErrConnectionClosed)
			}
			if nc.IsConnected() {
				wait := max(deadline.Remaining(ctx, e.opts.RequestTimeout), time.Millisecond)
				if err := nc.FlushTimeout(wait); err == nil {
					e.settled[i].Store(n)
					break
				}
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("delivery connection %d not back: %w", i+1, ctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	return nil
}

// watchReconnects hands out, once a delivery connection is back, what was
// stored meanwhile for the users on it. While it was away, a message for
// them found nobody subscribed and was kept, and the nudge that tells a
// session to fetch it went nowhere. (An edge that was away long enough to
// be given up does this and more when it registers again.) The client
// library has no second reconnect callback for the edge to add, and one
// look per heartbeat is soon enough.
func (e *Edge) watchReconnects() {
	defer e.wg.Done()
	seen := make([]uint64, len(e.subs))
	for i, nc := range e.subs {
		seen[i] = nc.Stats().Reconnects
	}
	tick := time.NewTicker(e.opts.Heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-e.closing:
			return
		case <-tick.C:
		}
		for i, nc := range e.subs {
			// Until every fetch went through: right after a broker
			// restart the workers may not read the stream yet.
			if n := nc.Stats().Reconnects; n != seen[i] && nc.IsConnected() && e.refetch(i) {
				seen[i] = n
			}
		}
	}
}

// refetch fetches the stored messages of the local users on delivery
// connection i, one user at a time: after a broker restart every edge
// does this at once, so it first asks the stream which users have any
// (withStored). Each fetch waits for the connection's subscriptions to be
// back (requestVia), and so does that question, so a message stored after
// it looked is nudged as usual. It stops at the first fetch that fails
// and reports whether all went through; those done are empty the next
// time.
func (e *Edge) refetch(i int) bool {
	var users []string
	for _, user := range e.localUsers(false) {
		if e.deliveryConn(user) == i {
			users = append(users, user)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.opts.RequestTimeout)
	if err := e.awaitDeliveries(ctx); err == nil {
		users = e.withStored(ctx, users)
	}
	cancel()
	n := 0
	for _, user := range users {
		select {
		case <-e.closing:
			return true
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), e.opts.RequestTimeout)
		err := e.fetchInbox(ctx, user, nil, false)
		cancel()
		if err != nil {
			e.log.Warn("delivery connection back, stored messages not fetched yet; trying again", "connection", i+1, "err", err)
			return false
		}
		n++
	}
	e.log.Info("delivery connection back: stored messages fetched", "connection", i+1, "users", n)
	return true
}

// Bounds for withStored: below storedLookupMin users a fetch each is
// cheap enough; when many more users have messages stored than are asked
// about, listing them costs more than the fetches.
const (
	storedLookupMin    = 16
	storedLookupFactor = 4
)

// withStored returns those of users who have messages stored, as the
// inbox stream tells, or users when it cannot tell or asking would cost
// more than fetching for each.
func (e *Edge) withStored(ctx context.Context, users []string) []string {
	if len(users) < storedLookupMin {
		return users
	}
	s, err := e.js.Stream(ctx, proto.InboxStream)
	if err != nil {
		e.log.Debug("inbox stream not readable; fetching for every user", "err", err)
		return users
	}
	if n := s.CachedInfo().State.NumSubjects; n > uint64(storedLookupFactor*len(users)) {
		return users
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(proto.InboxPrefix+">"))
	if err != nil {
		e.log.Debug("inbox stream not readable; fetching for every user", "err", err)
		return users
	}
	var out []string
	for _, user := range users {
		if info.State.Subjects[proto.InboxSubject(user)] > 0 {
			out = append(out, user)
		}
	}
	return out
}

// held asks whether any edge holds a session of user. An edge that is
// there but does not answer still counts as holding.
func (e *Edge) held(ctx context.Context, user string) bool {
	a, err := probe.Ask(ctx, e.nc, user, e.opts.ProbeTimeout)
	return err != nil || a.Held
}

// forgetUser removes an entry; the caller holds e.mu.
func (e *Edge) forgetUser(u *userEntry) {
	delete(e.users, u.name)
	delete(e.subjects, proto.UserSubject(u.name))
}

// sessionsOf returns a snapshot of user's local sessions.
func (e *Edge) sessionsOf(user string) []*conn {
	e.mu.Lock()
	defer e.mu.Unlock()
	u, ok := e.users[user]
	if !ok {
		return nil
	}
	out := make([]*conn, 0, len(u.sessions))
	for c := range u.sessions {
		out = append(out, c)
	}
	return out
}

// localUsers returns the users with a session on this edge, and with
// pending those whose first session here is still logging in.
func (e *Edge) localUsers(pending bool) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]string, 0, len(e.users))
	for name, u := range e.users {
		if pending || u.pending == nil {
			out = append(out, name)
		}
	}
	return out
}

// presence tells user's friends, through a worker, that the user came
// online (first session anywhere) or went offline (last one ended).
func (e *Edge) presence(ctx context.Context, user string, online bool) {
	ctx, cancel := context.WithTimeout(ctx, e.opts.RequestTimeout)
	defer cancel()
	m := nats.NewMsg(proto.InternalPrefix + proto.IntPresence)
	m.Header.Set(proto.HdrUser, user)
	m.Data = []byte(`{"online":` + strconv.FormatBool(online) + `}`)
	if _, err := e.request(ctx, m); err != nil {
		e.log.Warn("presence update failed", "user", user, "online", online, "err", err)
	}
}

// newestSession returns the user's most recent session on this edge: the
// one a file offer goes to.
func (e *Edge) newestSession(user string) *conn {
	e.mu.Lock()
	defer e.mu.Unlock()
	u, ok := e.users[user]
	if !ok {
		return nil
	}
	var best *conn
	var serial uint64
	for c, s := range u.sessions {
		if s > serial {
			best, serial = c, s
		}
	}
	return best
}

// dispatch serves every per-user subscription. Under load the queue is
// seldom empty, and a receive that does not wait skips the select over
// both channels (a lock on each) that an idle dispatcher needs.
func (e *Edge) dispatch() {
	defer e.wg.Done()
	for {
		select {
		case <-e.closing:
			return
		default:
		}
		select {
		case m := <-e.deliveries:
			e.deliver(m)
			continue
		default:
		}
		select {
		case m := <-e.deliveries:
			e.deliver(m)
		case <-e.closing:
			return
		}
	}
}

func (e *Edge) deliver(m *nats.Msg) {
	kind := ""
	if m.Header != nil {
		kind = m.Header.Get(proto.HdrKind)
	}
	if kind == "" || kind == proto.KindDeliver {
		e.deliverLine(m)
		return
	}
	e.mu.Lock()
	u := e.subjects[m.Subject]
	held := u != nil && len(u.sessions) > 0
	if u != nil && u.pending != nil && kind == proto.KindInbox {
		u.pending.nudged = true
	}
	e.mu.Unlock()
	if !held {
		if kind == proto.KindProbe && m.Reply != "" {
			// The user's last session here has ended and the unsubscribe
			// is on its way: say so, rather than keep the asker waiting
			// for an answer that never comes.
			r := nats.NewMsg(m.Reply)
			r.Header.Set(proto.HdrGone, "1")
			_ = m.RespondMsg(r)
		}
		return
	}
	switch kind {
	case proto.KindProbe:
		if m.Reply != "" {
			r := nats.NewMsg(m.Reply)
			r.Header.Set(proto.HdrEdge, e.id)
			_ = m.RespondMsg(r)
		}
	case proto.KindInbox:
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), e.opts.RequestTimeout)
			defer cancel()
			e.fetchInbox(ctx, u.name, nil, false)
		}()
	}
}

// directBacklog is the queue of deliveries below which the dispatcher
// writes a private message to its recipient's socket itself.
const directBacklog = 64

// deliverLine writes a message to every local session of its user and
// confirms it when the sender waits. Not answering a user held nowhere
// here lets the sender's wait fail, and the message is kept for later.
// A private message handed off by a worker (proto.HandoffReply) is
// confirmed to the sender's edge directly, or, not held here, returned
// to the worker. While the user's first session here is logging in, the
// message waits for the outcome (see pendingLogin).
func (e *Edge) deliverLine(m *nats.Msg) {
	e.mu.Lock()
	u := e.subjects[m.Subject]
	if u != nil && u.pending != nil && u.pending.hold(m) {
		e.mu.Unlock()
		return
	}
	d := e.route(u, m, len(e.deliveries) < directBacklog)
	e.mu.Unlock()
	e.complete(d, true)
}

// delivery is a message routed to a user's sessions (route), with what
// is left to do outside e.mu (complete).
type delivery struct {
	m         *nats.Msg
	n         int    // sessions it went to
	name      string // their user
	only      *conn  // the one session the caller writes it to itself
	target    string // where the sender's edge waits, when handedOff
	handedOff bool
}

// route queues m for u's sessions (u may be nil: nobody here). With
// direct, a private message to a user with one session is left for the
// caller to write (delivery.only); only the dispatcher may ask for that,
// since complete writes it from the dispatcher's buffer. The caller
// holds e.mu.
func (e *Edge) route(u *userEntry, m *nats.Msg, direct bool) delivery {
	var seq uint64
	if m.Header != nil {
		seq = proto.Seq(m.Header.Get(proto.HdrSeq))
	}
	var line []byte // shared by the sessions' queues
	d := delivery{m: m}
	d.target, d.handedOff = proto.HandoffTarget(m.Reply)
	id, once := msgID{}, false
	if d.handedOff {
		id, once = privateMsgID(m.Data)
	}
	if u == nil {
		return d
	}
	d.n, d.name = len(u.sessions), u.name
	friend, befriended, later := "", false, false
	if !d.handedOff {
		friend, befriended = newFriend(m.Data)
		later = presenceNotice(m.Data)
	}
	for c := range u.sessions {
		c.observe(seq)
		if befriended {
			c.friends.add(friend)
		}
		if once && !c.firstTime(id) {
			continue // a copy of one it has: delivered all the same
		}
		if direct && d.handedOff && d.n == 1 {
			d.only = c
			break
		}
		if line == nil {
			line = asLine(m.Data)
		}
		if later {
			c.sendLater(line)
		} else {
			c.send(line)
		}
	}
	return d
}

// complete finishes a routed delivery: the line the dispatcher writes
// itself, the confirmation, or the hand-back when nobody took it;
// dispatcher says the dispatcher calls.
func (e *Edge) complete(d delivery, dispatcher bool) {
	m := d.m
	if d.only != nil {
		// A private message to a user with one session: written from here
		// when nothing else is queued for the session, which costs less
		// than waking its writer. Group messages come many at a time and
		// are left to the writers, which batch them; so are private ones
		// once deliveries queue up here, so that the system calls spread
		// over the writers and the cores rather than hold up this loop.
		// The line is built in the dispatcher's own buffer, copied only if
		// the socket does not take it at once.
		e.line = d.only.sendNowFrom(e.line, m.Data)
	}
	if d.n == 0 {
		if d.handedOff {
			// Back to the worker, which stores it and answers the sender.
			_ = e.nc.Publish(m.Reply, m.Data)
		}
		return
	}
	e.metrics.delivered(m.Data, d.n, dispatcher)
	switch {
	case d.handedOff:
		if !e.replies.confirmLocal(d.target, d.name) {
			_ = e.nc.Publish(d.target, proto.Result("private_chat", "success", "user_to", d.name))
		}
	case m.Reply != "":
		_ = m.Respond(nil)
	}
}

// fetchInbox hands the user's stored messages to sessions (nil: every
// session the user has here when the fetch starts). With announce, the
// same request first tells the user's friends the user came online.
//
// Messages are read, written, and only then removed: if every session
// is gone before its socket took them, or this edge dies meanwhile, they
// stay stored for the next login (at least once; a repeat has the same
// msg_id). Fetches for one user take turns here, so that a login's fetch
// and a nudge's do not both write the same messages. The error says that
// no worker could read them (it is logged here); what is left behind
// after a failed removal is not one.
func (e *Edge) fetchInbox(ctx context.Context, user string, sessions []*conn, announce bool) error {
	lock := e.fetchLock(user)
	lock.Lock()
	defer lock.Unlock()
	if sessions == nil {
		sessions = e.sessionsOf(user)
	}
	for {
		m := nats.NewMsg(proto.InternalPrefix + proto.IntInbox)
		m.Header.Set(proto.HdrUser, user)
		m.Data = []byte(`{"peek":true}`)
		if announce {
			m.Data, announce = []byte(`{"announce":true,"peek":true}`), false
		}
		reply, err := e.request(ctx, m)
		if err == nil && reply.Header.Get(micro.ErrorHeader) != "" {
			// The worker's error answer ({"cmd":"inbox_reply",…}): for
			// this edge, not a line for the client.
			err = fmt.Errorf("worker answered %s", reply.Data)
		}
		if err != nil {
			e.log.Warn("fetching offline messages failed", "user", user, "err", err)
			return err
		}
		if !e.handOut(ctx, user, sessions, reply.Data, reply.Header) {
			return nil
		}
	}
}

// fetchLock is the lock fetches of user's stored messages take turns on.
func (e *Edge) fetchLock(user string) *sync.Mutex {
	h := fnv.New32a()
	_, _ = h.Write([]byte(user))
	return &e.fetching[h.Sum32()%uint32(len(e.fetching))]
}

// handOut writes stored messages read for user (data, one per line, as
// hdr describes them) to sessions, then removes them from the store, and
// reports whether more are waiting to be read. The caller holds user's
// fetchLock.
func (e *Edge) handOut(ctx context.Context, user string, sessions []*conn, data []byte, hdr nats.Header) (more bool) {
	for _, line := range splitLines(data) {
		if isStoredOffer(line) {
			if c := newest(sessions, e.newestSession(user)); c != nil {
				e.offerStored(c, user, line)
			}
			continue
		}
		id, once := privateMsgID(line)
		for _, c := range sessions {
			if !once || c.firstTime(id) {
				c.send(line)
			}
		}
	}
	more = hdr.Get(proto.HdrMore) != ""
	seqs := hdr.Get(proto.HdrInboxSeqs)
	if seqs == "" { // nothing was stored, or a worker that removes as it reads
		return more
	}
	if !written(sessions) {
		return false // the sessions are gone: left for the next login
	}
	done := nats.NewMsg(proto.InternalPrefix + proto.IntInboxDone)
	done.Header.Set(proto.HdrUser, user)
	done.Header.Set(proto.HdrInboxSeqs, seqs)
	done.Data = []byte("{}")
	dr, err := e.request(ctx, done)
	if err == nil && proto.StrField(dr.Data, "result") != "success" {
		err = fmt.Errorf("worker answered %s", dr.Data)
	}
	if err != nil {
		// Handed out again at the next fetch: a repeat, not a loss.
		e.log.Warn("removing delivered offline messages failed", "user", user, "err", err)
		return false
	}
	return more
}

// written waits until what was queued for sessions has gone to their
// sockets, and reports whether any session is still there to have
// taken it.
func written(sessions []*conn) bool {
	ok := false
	for _, c := range sessions {
		c.flush()
		c.mu.Lock()
		ok = ok || !c.closed
		c.mu.Unlock()
	}
	return ok
}

// newest picks the session a stored file goes to: the newest of the
// user's sessions when it is among those being served, else the first.
func newest(sessions []*conn, newest *conn) *conn {
	for _, c := range sessions {
		if c == newest {
			return c
		}
	}
	if len(sessions) > 0 {
		return sessions[0]
	}
	return nil
}

// splitLines splits b into lines, each with its own '\n' terminator.
func splitLines(b []byte) [][]byte {
	var out [][]byte
	for _, l := range bytes.Split(b, []byte{'\n'}) {
		if len(l) > 0 {
			out = append(out, append(l[:len(l):len(l)], '\n'))
		}
	}
	return out
}

// asLine returns a delivery as a line for the client. A payload that ends
// in a newline (a group message or a presence notice, which workers
// publish once per recipient) is one already: the client library gave
// each message its own copy.
func asLine(data []byte) []byte {
	if bytes.HasSuffix(data, []byte("\n")) {
		return data
	}
	return appendLine(make([]byte, 0, len(data)+1), data)
}

// appendLine appends a delivery to b as one line, its newline added
// unless it has one.
func appendLine(b, data []byte) []byte {
	b = append(b, data...)
	if !bytes.HasSuffix(data, []byte("\n")) {
		b = append(b, '\n')
	}
	return b
}
