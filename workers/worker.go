// Package workers holds the command handlers: registration, login,
// friends, groups, chat routing. Each worker process keeps its own LevelDB
// query store built from the JetStream event log, and answers edges'
// requests as one instance of a NATS micro service in a queue group, so
// workers can be added or removed without reconfiguring anything.
package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/chatd-io/chatd/internal/deadline"
	"github.com/chatd-io/chatd/internal/metrics"
	"github.com/chatd-io/chatd/internal/passwd"
	"github.com/chatd-io/chatd/internal/proto"
	"github.com/chatd-io/chatd/internal/sessionlog"
	"github.com/chatd-io/chatd/storage"
)

// Options configure a worker.
type Options struct {
	// Conn is the worker's NATS connection; the caller owns it.
	Conn *nats.Conn
	// DataDir holds the LevelDB store; empty keeps it in memory (rebuilt
	// from the log at every start).
	DataDir string
	// Name names this instance in logs and service metadata.
	Name    string
	Version string
	// Passwords chooses how new passwords are hashed.
	Passwords passwd.Params
	// JetStreamDomain names the JetStream to use when it is not the local
	// server's (a worker in a leaf region).
	JetStreamDomain string
	// Replicas for the streams when this worker creates them.
	Replicas int
	// InboxMaxAge is how long messages for offline users are kept.
	InboxMaxAge time.Duration
	// FileMaxAge is how long files for offline users are kept.
	FileMaxAge time.Duration
	// DeliverTimeout bounds the wait for a recipient's edge to take a message.
	DeliverTimeout time.Duration
	// ReadWait bounds the wait for this store to reach a sequence a session
	// has already seen (read-your-writes).
	ReadWait time.Duration
	// EdgeDeadAfter is how long an edge may miss heartbeats before its
	// sessions are declared over.
	EdgeDeadAfter time.Duration
	// MaxInFlight bounds concurrently handled requests.
	MaxInFlight int
	// ApplyDelay slows applying each event down; it exists so tests can
	// play a worker whose store lags far behind the log.
	ApplyDelay time.Duration
	// Metrics receives the worker's metrics; nil keeps them private.
	Metrics *metrics.Registry
	Logger  *slog.Logger
}

func (o *Options) setDefaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.InboxMaxAge == 0 {
		o.InboxMaxAge = 30 * 24 * time.Hour
	}
	if o.FileMaxAge == 0 {
		o.FileMaxAge = 7 * 24 * time.Hour
	}
	if o.DeliverTimeout == 0 {
		o.DeliverTimeout = 2 * time.Second
	}
	if o.ReadWait == 0 {
		o.ReadWait = 2 * time.Second
	}
	if o.EdgeDeadAfter == 0 {
		o.EdgeDeadAfter = 15 * time.Second
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = 1024
	}
	if o.Version == "" {
		o.Version = "0.0.0"
	}
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
}

// Validate reports options that cannot work, before anything is started:
// a command line can be refused before the process dials NATS.
func (o Options) Validate() error {
	if err := o.Passwords.Validate(); err != nil {
		return fmt.Errorf("workers: %w", err)
	}
	if o.Replicas < 0 || o.Replicas > 5 {
		return fmt.Errorf("workers: replicas %d outside 1..5 (0 means 1)", o.Replicas)
	}
	for name, d := range map[string]time.Duration{"inbox max age": o.InboxMaxAge, "file max age": o.FileMaxAge, "deliver timeout": o.DeliverTimeout,
		"read wait": o.ReadWait, "edge dead after": o.EdgeDeadAfter} {
		if d < 0 {
			return fmt.Errorf("workers: %s %s is negative", name, d)
		}
	}
	return nil
}

// Worker is a running command handler.
type Worker struct {
	opts    Options
	log     *slog.Logger
	nc      *nats.Conn
	js      jetstream.JetStream
	store   storage.Store
	applier *applier
	inbox   *inbox
	handoff *handoffs
	events  jetstream.ConsumeContext
	svc     micro.Service
	metrics *workerMetrics

	stop     context.CancelFunc // ends background work: the reaper
	inflight chan struct{}      // semaphore for handlers
	jobs     chan job           // unbuffered: taken by idle handler goroutines
	idle     atomic.Int32       // handler goroutines waiting on jobs
	quit     chan struct{}      // closed by Close: idle handler goroutines end
	hashing  chan struct{}      // semaphore for password hashing, which is all CPU
	wg       sync.WaitGroup
	// gate is held shared while a request is admitted; Close takes it
	// to set shut, after which requests are refused.
	gate  sync.RWMutex
	shut  bool
	ready atomic.Bool
}

// Service name and queue group visible to `nats micro ls`.
const ServiceName = "chat-worker"

// New opens the store, makes sure the streams exist, replays the log up to
// its current end and only then joins the queue group, so a new worker
// never answers from a partial store.
func New(ctx context.Context, opts Options) (*Worker, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.setDefaults()
	if opts.Conn == nil {
		return nil, errors.New("workers: a NATS connection is required")
	}
	w := &Worker{
		opts:     opts,
		log:      opts.Logger,
		nc:       opts.Conn,
		inflight: make(chan struct{}, opts.MaxInFlight),
		jobs:     make(chan job),
		quit:     make(chan struct{}),
		hashing:  make(chan struct{}, runtime.GOMAXPROCS(0)),
	}
	w.handoff = newHandoffs(w)
	w.metrics = newWorkerMetrics(opts.Metrics, w)
	var err error
	if opts.DataDir == "" {
		w.store, err = storage.OpenMem()
	} else {
		w.store, err = storage.Open(opts.DataDir)
	}
	if err != nil {
		return nil, err
	}
	if err := w.start(ctx); err != nil {
		w.closeStore()
		return nil, err
	}
	return w, nil
}

func (w *Worker) start(ctx context.Context) error {
	js, err := jetstream.New(w.nc)
	if w.opts.JetStreamDomain != "" {
		js, err = jetstream.NewWithDomain(w.nc, w.opts.JetStreamDomain)
	}
	if err != nil {
		return fmt.Errorf("workers: jetstream: %w", err)
	}
	w.js = js
	var sessions jetstream.KeyValue
	err = retry(ctx, w.log, "setting up streams", func() error {
		if err := ensureStreams(ctx, js, w.opts.Replicas, w.opts.InboxMaxAge); err != nil {
			return err
		}
		if err := ensureFileBucket(ctx, js, w.opts.Replicas, w.opts.FileMaxAge); err != nil {
			return err
		}
		sessions, err = ensureSessionBucket(ctx, js, w.opts.Replicas)
		return err
	})
	if err != nil {
		return fmt.Errorf("workers: %w", err)
	}
	evs, err := js.Stream(ctx, EventStream)
	if err != nil {
		return fmt.Errorf("workers: %w", err)
	}
	info, err := evs.Info(ctx)
	if err != nil {
		return fmt.Errorf("workers: event stream info: %w", err)
	}
	if last := w.store.LastSeq(); last > info.State.LastSeq {
		return fmt.Errorf("workers: store in %s has applied event %d but the log ends at %d; "+
			"it belongs to another log: remove the directory to rebuild it", w.opts.DataDir, last, info.State.LastSeq)
	}
	ibs, err := js.Stream(ctx, InboxStream)
	if err != nil {
		return fmt.Errorf("workers: %w", err)
	}
	sessionLog, err := js.Stream(ctx, sessionlog.Stream)
	if err != nil {
		return fmt.Errorf("workers: %w", err)
	}
	w.inbox = &inbox{js: js, stream: ibs}
	w.applier = newApplier(w.store, evs, w.log)
	w.applier.delay = w.opts.ApplyDelay
	started := time.Now()
	if w.events, err = w.applier.start(ctx); err != nil {
		return fmt.Errorf("workers: %w", err)
	}
	if err := w.applier.wait(ctx, info.State.LastSeq); err != nil {
		w.events.Stop()
		return fmt.Errorf("workers: catching up with the log: %w", err)
	}
	w.log.Info("worker caught up with the log", "events", info.State.LastSeq, "took", time.Since(started).Round(time.Millisecond))
	bg, stop := context.WithCancel(context.Background())
	w.stop = stop
	undo := func() { w.handoff.stop(); stop(); w.events.Stop() }
	if err := w.handoff.start(bg); err != nil {
		undo()
		return fmt.Errorf("workers: handoff subscription: %w", err)
	}
	if err := w.addService(); err != nil {
		undo()
		return err
	}
	// The server must know the endpoints' subscriptions before anyone is
	// told this worker is up.
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := w.nc.FlushWithContext(fctx); err != nil {
		_ = w.svc.Stop()
		undo()
		return fmt.Errorf("workers: flush: %w", err)
	}
	w.wg.Add(1)
	go (&reaper{w: w, kv: sessions, log: sessionLog}).run(bg)
	w.ready.Store(true)
	return nil
}

func (w *Worker) addService() error {
	svc, err := micro.AddService(w.nc, micro.Config{
		Name:        ServiceName,
		Version:     w.opts.Version,
		Description: "chatd command handlers",
		QueueGroup:  proto.WorkerQueue,
		Metadata:    map[string]string{"instance": w.opts.Name},
		// Handlers hand each request to a goroutine at once, so the
		// service's own processing time measures only that hand-off; the
		// time requests really take is added to each endpoint's stats.
		StatsHandler: func(ep *micro.Endpoint) any {
			h := w.metrics.latency.With(ep.Name)
			return map[string]any{"handled": h.Count(), "average_time": h.Mean().String()}
		},
	})
	if err != nil {
		return fmt.Errorf("workers: add service: %w", err)
	}
	cmds := svc.AddGroup(proto.CmdPrefix[:len(proto.CmdPrefix)-1])
	quick := w.quickCommands()
	for name, h := range w.commands() {
		if err := cmds.AddEndpoint(name, w.endpoint(name, h, quick[name])); err != nil {
			_ = svc.Stop()
			return fmt.Errorf("workers: endpoint %s: %w", name, err)
		}
	}
	internal := svc.AddGroup(proto.InternalPrefix[:len(proto.InternalPrefix)-1])
	for name, h := range w.internal() {
		if err := internal.AddEndpoint(name, w.endpoint(name, h, nil)); err != nil {
			_ = svc.Stop()
			return fmt.Errorf("workers: endpoint %s: %w", name, err)
		}
	}
	w.svc = svc
	return nil
}

// retry runs fn until it succeeds or ctx ends. JetStream may be
// unavailable for a while when a worker starts: a cluster still electing
// its leader, a broker still starting. Processes may start in any order.
func retry(ctx context.Context, log *slog.Logger, what string, fn func() error) error {
	pause := 100 * time.Millisecond
	for {
		err := fn()
		if err == nil {
			return nil
		}
		log.Warn(what+" failed; retrying", "err", err, "in", pause)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (gave up: %w)", what, err, ctx.Err())
		case <-time.After(pause):
		}
		pause = min(2*pause, 5*time.Second)
	}
}

// Ready reports whether the worker has caught up and is serving.
func (w *Worker) Ready() bool { return w.ready.Load() }

// Health reports a worker that cannot recover by itself: its store
// failed, so it no longer follows the log.
func (w *Worker) Health() error {
	if w.applier == nil {
		return nil
	}
	w.applier.mu.Lock()
	defer w.applier.mu.Unlock()
	if w.applier.err != nil {
		return fmt.Errorf("store stopped following the log: %w", w.applier.err)
	}
	return nil
}

// Readiness reports whether the worker should be sent requests: caught up
// with the log, healthy, and connected.
func (w *Worker) Readiness() error {
	switch {
	case !w.ready.Load():
		return errors.New("catching up with the log")
	case !w.nc.IsConnected():
		return errors.New("not connected to NATS")
	}
	return w.Health()
}

// Store exposes the query store, for tests.
func (w *Worker) Store() storage.Store { return w.store }

// Close leaves the queue group, finishes in-flight requests (bounded by
// ctx), stops applying events and closes the store.
func (w *Worker) Close(ctx context.Context) error {
	w.ready.Store(false)
	// Requests the server routed here before it took the unsubscribe
	// still arrive after Stop returns: refused from now on, not served
	// from a store being closed.
	w.gate.Lock()
	if !w.shut {
		close(w.quit)
	}
	w.shut = true
	w.gate.Unlock()
	var errs []error
	if w.svc != nil {
		errs = append(errs, w.svc.Stop())
	}
	w.handoff.stop()
	if w.stop != nil {
		w.stop()
	}
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("workers: in-flight requests still running: %w", ctx.Err()))
	}
	if w.events != nil {
		w.events.Stop()
	}
	errs = append(errs, w.closeStore())
	return errors.Join(errs...)
}

func (w *Worker) closeStore() error {
	// Applying holds the store; wait for the consumer to let go.
	if w.events != nil {
		select {
		case <-w.events.Closed():
		case <-time.After(5 * time.Second):
		}
	}
	return w.store.Close()
}

// call is one request being handled.
type call struct {
	cmd       string
	user      string // the session's user, from the edge; "" before login
	body      []byte
	f         fields
	transfer  string // send_file: the transfer ID the sender's edge chose
	offlineOK bool   // send_file: the sender accepts storing the file
	seq       uint64 // log sequence the reply reflects
	bind      string // on a successful login, the user the session becomes
	more      bool   // on an inbox reply, more messages wait
	isError   bool   // count as an error in service stats
	reply     string // where the sender's edge waits for the answer
	answered  bool   // someone else answers (a handed-off delivery)
	keep      bool   // private_chat: store the message, do not deliver it
	msgID     string // private_chat: the message's ID, chosen by the edge
	inboxSeqs string // stored messages read (a reply) or written (a request)
	announce  bool   // login: tell the friends (a request) or told them (a reply)
	stored    bool   // login: hand out stored messages (a request) or did (a reply)
}

type handler func(ctx context.Context, c *call) ([]byte, error)

// quickHandler answers a request from memory, without waiting on
// anything, or reports false to leave it to the command's handler.
type quickHandler func(c *call) bool

// endpoint runs each request on its own goroutine: handlers wait on the
// network (JetStream, recipients' edges) and on password hashing, and one slow
// request must not hold up the rest. A command with a quick handler is
// first tried on the subscription's own goroutine: when the answer needs
// no waiting, that saves starting and scheduling one per request.
func (w *Worker) endpoint(cmd string, h handler, quick quickHandler) micro.Handler {
	return micro.HandlerFunc(func(req micro.Request) {
		if !w.enter() {
			// Closing, the store about to go: "no responders" makes the
			// edge ask again, and another worker answers.
			_ = req.Respond(nil, micro.WithHeaders(micro.Headers{"Status": {"503"}}))
			return
		}
		if quick != nil && w.tryQuick(req, cmd, quick) {
			w.wg.Done()
			return
		}
		w.inflight <- struct{}{}
		j := job{req: req, cmd: cmd, h: h}
		select {
		case w.jobs <- j: // an idle handler goroutine takes it
		default:
			go w.handle(j)
		}
	})
}

// job is a request for a handler goroutine.
type job struct {
	req micro.Request
	cmd string
	h   handler
}

// maxIdleHandlers bounds the handler goroutines kept waiting for work.
const maxIdleHandlers = 64

// handle serves j, then waits for the next request rather than ending:
// starting a goroutine per request, and growing its stack again each
// time (password hashing and JetStream calls run deep), cost a login
// storm several percent of its CPU.
func (w *Worker) handle(j job) {
	for {
		w.serve(j.req, j.cmd, j.h)
		<-w.inflight
		w.wg.Done()
		if w.idle.Add(1) > maxIdleHandlers {
			w.idle.Add(-1)
			return
		}
		j = job{} // the served request's data is not kept while waiting
		select {
		case j = <-w.jobs:
			w.idle.Add(-1)
		case <-w.quit:
			w.idle.Add(-1)
			return
		}
	}
}

// enter admits a request unless the worker is closing; an admitted
// request counts in wg until it is answered, and Close waits for it.
func (w *Worker) enter() bool {
	w.gate.RLock()
	defer w.gate.RUnlock()
	if w.shut {
		return false
	}
	w.wg.Add(1)
	return true
}

// newCall reads a request's headers; seen is the session's log position.
func newCall(req micro.Request, cmd string) (c *call, seen uint64) {
	hdr := req.Headers()
	c = &call{cmd: cmd, user: hdr.Get(proto.HdrUser), body: req.Data(), reply: req.Reply(),
		transfer: hdr.Get(proto.HdrTransfer), offlineOK: hdr.Get(proto.HdrOffline) != "",
		keep: hdr.Get(proto.HdrKeep) != "", msgID: hdr.Get(proto.HdrMsgID), inboxSeqs: hdr.Get(proto.HdrInboxSeqs),
		announce: hdr.Get(proto.HdrAnnounce) != "", stored: hdr.Get(proto.HdrStored) != ""}
	return c, proto.Seq(hdr.Get(proto.HdrSeq))
}

// tryQuick runs a quick handler when the store is as recent as the
// session needs; it reports whether the request was answered.
func (w *Worker) tryQuick(req micro.Request, cmd string, quick quickHandler) bool {
	start := time.Now()
	c, seen := newCall(req, cmd)
	if c.user == "" || seen > w.store.LastSeq() || c.f.decode(req.Data()) != nil || !quick(c) {
		return false
	}
	if c.answered {
		w.metrics.handedOff(cmd, time.Since(start))
	}
	return true
}

func (w *Worker) serve(req micro.Request, cmd string, h handler) {
	start := time.Now()
	ctx := deadline.New(context.Background(), start.Add(w.opts.ReadWait+w.opts.DeliverTimeout+time.Second))
	defer ctx.Release()
	c, seen := newCall(req, cmd)
	var body []byte
	var err error
	if seen > w.store.LastSeq() {
		wctx := deadline.New(ctx, start.Add(w.opts.ReadWait))
		err = w.applier.wait(wctx, seen)
		wctx.Release()
		if err != nil {
			w.log.Warn("store behind the session", "cmd", cmd, "err", err)
			body, c.isError, err = result(cmd, "unavailable"), true, nil
		}
	}
	if body == nil {
		if jerr := c.f.decode(req.Data()); jerr != nil {
			body = result(cmd, "invalid")
		} else {
			body, err = h(ctx, c)
		}
	}
	if err != nil {
		w.log.Error("command failed", "cmd", cmd, "user", c.user, "err", err)
		body, c.isError = result(cmd, "internal_error"), true
	}
	if c.answered && err == nil {
		w.metrics.handedOff(cmd, time.Since(start))
		return
	}
	out := micro.Headers{}
	if c.seq > 0 {
		if err := w.applier.wait(ctx, c.seq); err != nil {
			// The write is in the log and will be applied; only this
			// worker's next answers may lag until it is.
			w.log.Warn("own write not applied before replying", "cmd", cmd, "err", err)
		}
		// Only a write moves the session's position in the log; a read
		// reply carries no sequence (and no header to parse).
		out[proto.HdrSeq] = []string{strconv.FormatUint(c.seq, 10)}
	}
	if c.bind != "" {
		out[proto.HdrBind] = []string{c.bind}
	}
	if c.more {
		out[proto.HdrMore] = []string{"1"}
	}
	if c.inboxSeqs != "" && (cmd == proto.IntInbox || c.bind != "") {
		out[proto.HdrInboxSeqs] = []string{c.inboxSeqs}
	}
	if c.bind != "" && c.announce {
		out[proto.HdrAnnounce] = []string{"1"}
	}
	if c.bind != "" && c.stored {
		out[proto.HdrStored] = []string{"1"}
	}
	w.metrics.served(cmd, body, time.Since(start))
	if c.isError {
		err = req.Error("500", "internal error", body, micro.WithHeaders(out))
	} else {
		err = req.Respond(body, micro.WithHeaders(out))
	}
	if err != nil {
		w.log.Warn("reply failed", "cmd", cmd, "err", err)
	}
}

// hash runs fn with a hashing slot: hashing is pure CPU, and running more of
// them at once than there are cores only makes every one of them slower.
func (w *Worker) hash(ctx context.Context, fn func()) error {
	select {
	case w.hashing <- struct{}{}: // a free slot: no need to watch ctx (and make its timer)
	default:
		select {
		case w.hashing <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	defer func() { <-w.hashing }()
	fn()
	return nil
}
