package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/chatd-io/chatd/internal/deadline"
	"github.com/chatd-io/chatd/internal/proto"
)

// conn is one client connection. The read loop handles one request at a
// time, so replies come back in request order. Everything written goes
// through a queue drained by a writer goroutine, which sends all the lines
// it finds in one system call. The writer exists only while the
// connection is busy: after writerIdle without a line it ends, so an idle
// connection costs one goroutine, not two. A reply, or a private message,
// when nothing else is waiting, is written by the goroutine that has it
// (see sendNow). A presence notice may wait a moment for company (see
// sendLater).
type conn struct {
	e    *Edge
	sock net.Conn
	raw  syscall.RawConn // sock's, for writes that must not block; nil if it has none

	mu       sync.Mutex
	queue    [][]byte      // lines waiting to be written
	spare    [][]byte      // the writer's last batch, reused
	writing  bool          // a writer goroutine is running
	busy     bool          // a write is under way (the writer's or the read loop's)
	kick     chan struct{} // wakes a waiting writer
	closed   bool
	idleWait chan struct{} // closed when the writer next finds nothing to do
	eager    bool          // a line that may not wait is queued
	laterAt  time.Time     // when a queue of lines that may wait is due
	later    *time.Timer   // fires at laterAt (laterDue); nil until first needed
	recent   *recentIDs    // private messages written lately; nil until the first

	closeOnce sync.Once
	done      chan struct{} // closed when the socket is closed

	// Reading. dec is nil while the connection is parked: idle, with no
	// read goroutine, its socket watched by the edge's poller.
	dec     *proto.Decoder
	parked  bool         // under mu
	pollFD  int32        // the socket's descriptor while parked
	drainAt atomic.Int64 // unix nanoseconds reads stop at once the edge drains

	user    string    // bound user; only the read loop touches it
	friends friendSet // user's friends, as far as this session knows
	// copies[i] is the number of the last copy the read loop queued on
	// the edge's copiers[i] (sendLocal), 0 once the server is known to
	// have it; nil before the first.
	copies  []uint64
	started time.Time     // when the request being handled was read
	allow   bucket        // requests allowed (Options.RateLimit)
	seen    atomic.Uint64 // highest log sequence this session has observed
	wait    *waiter       // the read loop's, for its requests; nil while parked
	out     []byte        // the read loop's buffer for reply lines; nil while parked
	// While a login is handled (watchLogin), whether its reply said the
	// name or the password was wrong (Options.LoginFailures).
	watchLogin, loginFailed bool

	// The write attempt under way (see tryWrite); only the holder of busy
	// touches these. attemptFn is attempt, bound once: a closure made per
	// write would be an allocation per line.
	attemptFn   func(fd uintptr) bool
	attemptLine []byte
	attemptN    int
	attemptErr  error

	// The writer's: the batch being written, kept here because a local
	// net.Buffers would escape at every write, and when the write
	// deadline is next renewed.
	wbufs     net.Buffers
	wdRenewAt time.Time
	// The read loop's: when the read deadline is next renewed.
	rdRenewAt time.Time
}

func newConn(e *Edge, sock net.Conn) *conn {
	c := &conn{e: e, sock: sock, done: make(chan struct{}), kick: make(chan struct{}, 1)}
	if sc, ok := sock.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn() // nil: the writer goroutine writes everything
	}
	c.attemptFn = c.attempt
	return c
}

// msgID is a private message's msg_id as workers make them (a NUID).
type msgID [22]byte

// recentIDs are the last private messages written to a session. A copy
// of one that comes again (kept and handed out a second time after a
// confirmation was lost, or not removed from the inbox after it was
// written) is then not written twice to the same session; another
// session of the user may still get it once more.
type recentIDs struct {
	ids  [8]msgID
	next int
}

// privateMsgID finds the msg_id workers put last in a private message.
// The key cannot occur inside a string value: its quotes would be
// escaped there.
func privateMsgID(line []byte) (id msgID, ok bool) {
	const key = `"msg_id":"`
	i := bytes.LastIndex(line, []byte(key))
	if i < 0 {
		return id, false
	}
	rest := line[i+len(key):]
	if len(rest) <= len(id) || rest[len(id)] != '"' {
		return id, false
	}
	copy(id[:], rest)
	return id, true
}

// firstTime records that the private message id is written to c and
// reports whether it was not already.
func (c *conn) firstTime(id msgID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.recent == nil {
		c.recent = new(recentIDs)
	}
	for _, r := range c.recent.ids {
		if r == id {
			return false
		}
	}
	c.recent.ids[c.recent.next] = id
	c.recent.next = (c.recent.next + 1) % len(c.recent.ids)
	return true
}

// writerIdle is how long a writer waits for more lines before it ends:
// long enough to stay up through a conversation, short enough that idle
// connections do not keep one each.
const writerIdle = time.Second

// extraTurns bounds the further turns a writer yields while its queue is
// growing; past fullBatch lines it writes at once. More turns than this
// wrote no more lines per call and cost the scheduler more.
const (
	extraTurns = 3
	fullBatch  = 16
)

// workerCommand reports commands the workers answer.
func workerCommand(cmd string) bool {
	switch cmd {
	case "register", "login", "add", "create_group", "add_group", "private_chat", "group_chat", "get_group_member":
		return true
	}
	return false
}

// knownCommand reports whether the edge answers cmd itself or has a
// worker answer it.
func knownCommand(cmd string) bool {
	return cmd == "ping" || cmd == "offline" || cmd == "send_file" || workerCommand(cmd)
}

// allowedBeforeLogin reports commands a connection without a session may send.
func allowedBeforeLogin(cmd string) bool {
	return cmd == "register" || cmd == "login" || cmd == "ping"
}

// close drops the connection at once; whatever is still queued is lost.
// A parked connection is woken first: its read goroutine, finding the
// socket closed, ends the session.
func (c *conn) close() {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.queue = nil
		if c.later != nil {
			c.later.Stop()
		}
		c.mu.Unlock()
		c.unpark()
		close(c.done)
		c.wakeWriter(false) // a waiting writer sees closed and ends
		_ = c.sock.Close()
	})
}

// send queues a line for the client. A client that lets OutQueue lines
// pile up is not keeping up; it is disconnected rather than buffered
// without limit.
func (c *conn) send(line []byte) { c.enqueue(line, false) }

// sendLater queues a line that may wait up to Options.PresenceDelay for
// others to share its system call: in a login storm each online user
// hears of friends coming and going many times a second, and each notice
// woke the writer for a write of its own (docs/benchmarks.md). Nothing
// overtakes a waiting line: whatever is queued next takes it along.
func (c *conn) sendLater(line []byte) { c.enqueue(line, true) }

func (c *conn) enqueue(line []byte, mayWait bool) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if len(c.queue) >= c.e.opts.OutQueue {
		n := len(c.queue)
		c.mu.Unlock()
		c.e.log.Warn("disconnecting slow client", "remote", c.sock.RemoteAddr().String(), "queued", n)
		c.e.metrics.slow.Inc()
		c.close()
		return
	}
	switch delay := c.e.opts.PresenceDelay; {
	case mayWait && len(c.queue) == 0 && !c.busy && delay > 0:
		// No writer is woken, or started, until the timer says so.
		c.queue = append(c.queue, line)
		c.laterAt = time.Now().Add(delay)
		if c.later == nil {
			c.later = time.AfterFunc(delay, c.laterDue)
		} else {
			c.later.Reset(delay)
		}
		c.mu.Unlock()
		return
	case mayWait && !c.eager && len(c.queue) > 0:
		// Waiting already, or about to be written: the timer or the
		// writer has it.
		c.queue = append(c.queue, line)
		c.mu.Unlock()
		return
	case !mayWait:
		c.eager = true
	}
	c.queue = append(c.queue, line)
	start := !c.writing
	c.writing = true
	c.mu.Unlock()
	c.wakeWriter(start)
}

// laterDue starts or wakes the writer for lines that have waited long
// enough.
func (c *conn) laterDue() {
	c.mu.Lock()
	c.laterAt = time.Time{} // due, whatever the clock says
	if c.closed || len(c.queue) == 0 {
		c.mu.Unlock()
		return
	}
	start := !c.writing
	c.writing = true
	c.mu.Unlock()
	c.wakeWriter(start)
}

// wakeWriter starts a writer goroutine (start: none runs) or wakes the
// one waiting for lines.
func (c *conn) wakeWriter(start bool) {
	if start {
		// Not counted in the edge's wait group: a writer ends by itself
		// when its connection closes, and lines may be sent (a transfer
		// ending, from a NATS callback) while a shutdown is already waiting.
		go c.writeLoop()
		return
	}
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// sendNow writes line from the calling goroutine when nothing else is
// waiting to be written: a reply from the read loop, which has nothing
// else to do meanwhile, or a private message from the dispatcher. Waking
// the writer goroutine for one line costs more than the line. The attempt
// never blocks; what the socket does not take goes to the writer. A
// borrowed line is the caller's buffer, which it reuses once sendNow
// returns: what has to wait for the writer is copied first.
func (c *conn) sendNow(line []byte, borrowed bool) {
	c.mu.Lock()
	if c.closed || c.busy || len(c.queue) > 0 {
		c.mu.Unlock()
		c.send(own(line, borrowed))
		return
	}
	c.busy = true
	c.mu.Unlock()
	rest, err := c.tryWrite(line)
	c.mu.Lock()
	c.busy = false
	if err != nil {
		c.mu.Unlock()
		c.close()
		return
	}
	if len(rest) > 0 {
		c.queue = append(c.queue, nil)
		copy(c.queue[1:], c.queue)
		c.queue[0] = own(rest, borrowed)
		c.eager = true
	}
	if len(c.queue) == 0 {
		c.noneQueued()
		c.mu.Unlock()
		return
	}
	start := !c.writing
	c.writing = true
	c.mu.Unlock()
	c.wakeWriter(start) // a running writer waited while we wrote
}

// sendNowFrom writes delivery data to c as a line built in the caller's
// buffer buf (see sendNow), and returns the buffer to keep for the next.
func (c *conn) sendNowFrom(buf, data []byte) []byte {
	buf = appendLine(buf[:0], data)
	c.sendNow(buf, true)
	return keepable(buf)
}

// own returns b, or a copy of it when it is borrowed.
func own(b []byte, borrowed bool) []byte {
	if borrowed {
		return bytes.Clone(b)
	}
	return b
}

// tryWrite makes one non-blocking attempt to write line and returns what
// the socket did not take; an error means the connection is broken.
func (c *conn) tryWrite(line []byte) ([]byte, error) {
	if c.raw == nil {
		return line, nil
	}
	c.attemptLine, c.attemptN, c.attemptErr = line, 0, nil
	err := c.raw.Write(c.attemptFn)
	n, werr := c.attemptN, c.attemptErr
	c.attemptLine, c.attemptErr = nil, nil
	switch {
	case werr != nil:
		return nil, werr
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The writer's last deadline, long past: not an error here, but
		// the writer (which sets a new one) has to write this line.
		return line[n:], nil
	case err != nil:
		return nil, err
	}
	return line[n:], nil
}

// attempt is tryWrite's one pass over the socket: it writes what the
// socket takes of attemptLine without waiting for room.
func (c *conn) attempt(fd uintptr) bool {
	line := c.attemptLine
	for c.attemptN < len(line) {
		m, again, err := writeOnce(fd, line[c.attemptN:])
		if err != nil {
			c.attemptErr = err
		}
		if err != nil || again {
			break
		}
		c.attemptN += m
	}
	return true // never wait for the socket: the writer goroutine does
}

// noneQueued wakes flush waiters once nothing is queued or being written;
// the caller holds mu.
func (c *conn) noneQueued() {
	if c.idleWait != nil && len(c.queue) == 0 && !c.busy {
		close(c.idleWait)
		c.idleWait = nil
	}
}

// observe raises the session's seen sequence. Most deliveries carry none
// (a chat line moves nobody's position in the log): those leave the
// connection's memory alone.
func (c *conn) observe(seq uint64) {
	if seq == 0 {
		return
	}
	for {
		cur := c.seen.Load()
		if seq <= cur || c.seen.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// writeLoop writes what is queued, in batches, and ends once it has had
// nothing to write for writerIdle. It waits on kick alone, which every
// line, a flush, the close and its idle timer send: one channel is
// cheaper to wait on than a select over several, at every line.
func (c *conn) writeLoop() {
	last := time.Now() // when the writer last wrote
	// The timer only wakes the writer to look at last; it is moved once
	// per writerIdle at most, not at every wait.
	idle := time.AfterFunc(writerIdle, func() { c.wakeWriter(false) })
	defer idle.Stop()
	due := last.Add(writerIdle) // when the timer fires
	for {
		// Let whatever else is runnable go first: under load it is other
		// deliveries, often to this same client, and one system call then
		// writes them all. With nothing else to run this returns at once.
		runtime.Gosched()
		c.mu.Lock()
		if c.waitLater() {
			c.mu.Unlock()
			<-c.kick // laterDue's, or a line's that takes them along
			continue
		}
		// With a short queue, a few more turns for as long as each brings
		// more lines: a group message reaches its members one by one, and
		// the dispatcher may still be going through them. One call then
		// writes more of them.
		for range extraTurns {
			n := len(c.queue)
			if n == 0 || n >= fullBatch {
				break
			}
			c.mu.Unlock()
			runtime.Gosched()
			c.mu.Lock()
			if len(c.queue) == n {
				break
			}
		}
		batch := c.queue
		if len(batch) == 0 || c.busy || c.closed {
			c.noneQueued()
			if c.closed {
				c.writing = false
				c.mu.Unlock()
				return
			}
			if len(batch) == 0 {
				if now := time.Now(); now.Sub(last) >= writerIdle {
					// Idle long enough; nothing is queued while mu is held.
					c.writing = false
					c.spare = nil
					c.mu.Unlock()
					return
				} else if !due.After(now) {
					due = last.Add(writerIdle)
					idle.Reset(due.Sub(now))
				}
			}
			c.mu.Unlock()
			<-c.kick
			continue
		}
		c.queue, c.spare = c.spare[:0], nil // the two arrays take turns
		c.eager = false
		c.busy = true
		c.mu.Unlock()

		last = time.Now()
		c.renewWriteDeadline(last)
		c.wbufs = batch
		_, err := c.wbufs.WriteTo(c.sock)
		c.wbufs = nil
		clear(batch)
		c.mu.Lock()
		c.busy = false
		if cap(batch) <= 64 {
			c.spare = batch[:0]
		}
		c.mu.Unlock()
		if err != nil {
			c.close()
		}
	}
}

// waitLater reports whether everything queued may wait for more (see
// sendLater); the caller holds mu. A flush waits for nothing.
func (c *conn) waitLater() bool {
	n := len(c.queue)
	return n > 0 && n < fullBatch && !c.eager && !c.busy && !c.closed &&
		c.idleWait == nil && time.Now().Before(c.laterAt)
}

// renewWriteDeadline moves the write deadline WriteTimeout ahead, but
// only once a quarter of it has passed since the last move: setting a
// deadline reschedules a runtime timer, and the writer writes far more
// often than that. A client is thus disconnected after between three
// quarters of WriteTimeout and all of it without taking anything.
func (c *conn) renewWriteDeadline(now time.Time) {
	if now.Before(c.wdRenewAt) {
		return
	}
	_ = c.sock.SetWriteDeadline(now.Add(c.e.opts.WriteTimeout))
	c.wdRenewAt = now.Add(c.e.opts.WriteTimeout / 4)
}

// flush waits until everything queued so far is written or the
// connection is closed.
func (c *conn) flush() {
	c.mu.Lock()
	if !c.writing && !c.busy && len(c.queue) == 0 {
		c.mu.Unlock()
		return
	}
	if c.idleWait == nil {
		c.idleWait = make(chan struct{})
	}
	wait := c.idleWait
	start := !c.writing
	c.writing = true
	c.mu.Unlock()
	c.wakeWriter(start) // a writer waiting for lines, or none for lines that wait, must look
	select {
	case <-wait:
	case <-c.done:
	}
}

// finish ends the connection after everything queued has been written.
// With lingerRead, the client's remaining input is read and dropped for a
// moment before closing: closing with unread input makes the kernel send a
// reset, which can destroy the last lines before the client reads them.
func (c *conn) finish(lingerRead bool) {
	c.flush()
	if tc, ok := c.sock.(*net.TCPConn); ok && lingerRead {
		_ = tc.CloseWrite()
		_ = tc.SetReadDeadline(time.Now().Add(time.Second))
		_, _ = io.Copy(io.Discard, io.LimitReader(tc, 4<<20))
	}
	c.close()
}

// errPark says the connection has been idle between requests long enough
// to be parked.
var errPark = errors.New("idle")

// idleReader feeds the decoder from the socket. A read that times out
// while the decoder is between values means the client is idle: the read
// goroutine may then give its stack and buffer back (park).
type idleReader struct{ c *conn }

func (r idleReader) Read(p []byte) (int, error) {
	c := r.c
	for {
		// Moved only once a quarter of IdleAfter has passed since the last
		// move, as the write deadline is: a connection is parked after
		// between three quarters of IdleAfter and all of it in silence.
		now := time.Now()
		if d := c.drainAt.Load(); d != 0 {
			_ = c.sock.SetReadDeadline(time.Unix(0, d))
			c.rdRenewAt = time.Time{} // the next deadline after a drain is set afresh
		} else if !now.Before(c.rdRenewAt) {
			_ = c.sock.SetReadDeadline(now.Add(c.e.opts.IdleAfter))
			c.rdRenewAt = now.Add(c.e.opts.IdleAfter / 4)
		}
		n, err := c.sock.Read(p)
		// Only our own deadline means idle: ETIMEDOUT (a peer that
		// stopped answering keepalives) is a Timeout() error too.
		if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) || c.drainAt.Load() != 0 {
			return n, err
		}
		if c.e.poller != nil && c.dec.Between() {
			return 0, errPark
		}
		// Idle in the middle of a value: keep waiting for the rest.
	}
}

// readLoop reads and handles requests until the connection ends or parks.
func (c *conn) readLoop() {
	defer c.e.wg.Done()
	if c.dec == nil {
		c.dec = proto.NewDecoder(idleReader{c}, c.e.opts.MaxFrame)
	}
	for {
		frame, err := c.dec.Next()
		switch {
		case errors.Is(err, errPark):
			if c.park() {
				return
			}
			continue
		case errors.Is(err, proto.ErrTooLarge):
			c.stop("too_large")
			return
		case errors.Is(err, proto.ErrSyntax), err == nil && !json.Valid(frame):
			c.stop("invalid_json")
			return
		case err != nil:
			if !errors.Is(err, io.EOF) {
				c.e.log.Debug("client connection ended", "remote", c.sock.RemoteAddr().String(), "user", c.user, "err", err)
			}
			c.stop("")
			return
		}
		c.handle(frame)
		select {
		case <-c.done:
			c.stop("")
			return
		default:
		}
	}
}

// park hands an idle connection to the poller and lets its read
// goroutine end; it reports false when the connection cannot be parked.
// Registering under mu keeps close and park from crossing: a connection
// closed from now on finds it parked and wakes it.
func (c *conn) park() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	// A draining edge sets drainAt before it wakes parked connections:
	// seen here, it means this one would be parked after the wake-up.
	if c.closed || c.drainAt.Load() != 0 || c.e.poller.add(c) != nil {
		return false
	}
	c.parked = true
	c.dec = nil  // its read buffer goes with the goroutine,
	c.wait = nil // and so do its waiter
	c.out = nil  // and its reply buffer
	return true
}

// unpark gives a parked connection a read goroutine again: it became
// readable, is being closed, or the edge is draining.
func (c *conn) unpark() {
	c.mu.Lock()
	if !c.parked {
		c.mu.Unlock()
		return
	}
	c.parked = false
	c.mu.Unlock()
	c.e.poller.remove(c)
	c.e.wg.Add(1)
	go c.readLoop()
}

// stop ends the session, then the connection, with a last error line when
// the client broke the protocol: the byte stream cannot be resynchronised.
func (c *conn) stop(fatal string) {
	ctx, cancel := context.WithTimeout(context.Background(), c.e.opts.RequestTimeout)
	defer cancel()
	c.logout(ctx)
	if fatal != "" {
		c.e.metrics.frameErrors.With(fatal).Inc()
		c.send(errorLine(fatal, ""))
	}
	c.finish(fatal != "")
	c.e.forget(c)
	c.e.connWG.Done()
}

// handle answers one request. The frame is valid JSON (the read loop
// checked); the edge itself only looks at "cmd" and "id", and the values
// it passes on point into the frame, which lives until the next read.
func (c *conn) handle(frame []byte) {
	c.started = time.Now()
	var rawCmd, id json.RawMessage
	err := proto.Fields(frame, func(k, v []byte) {
		switch string(k) {
		case "cmd":
			rawCmd = v
		case "id":
			id = v
		}
	})
	cmd, ok := proto.String(rawCmd)
	if o := &c.e.opts; o.RateLimit > 0 && !c.allow.take(c.started, o.RateLimit, o.RateBurst) {
		c.limited(id, cmd) // a broken object counts too: it costs a reply
		return
	}
	if err != nil || !ok {
		c.send(errorLine("invalid", ""))
		return
	}
	switch {
	case cmd == "ping":
		c.reply(id, []byte(`{"cmd":"pong"}`))
	case !knownCommand(cmd):
		c.reply(id, errorLine("unknown_cmd", cmd))
	case c.user == "" && !allowedBeforeLogin(cmd):
		c.reply(id, proto.Result(cmd, "not_logged_in"))
	case cmd == "offline":
		c.offline(id, frame)
	case cmd == "send_file":
		c.sendFile(id, frame)
	case cmd == "login" && c.e.failures != nil:
		c.loginLimited(id, frame)
	default:
		c.forward(cmd, id, frame)
	}
}

// loginLimited is a login from an address whose failed logins are
// counted: refused before anything is hashed once it has failed too
// often, and counted if it fails.
func (c *conn) loginLimited(id json.RawMessage, frame []byte) {
	addr := c.sock.RemoteAddr()
	if !c.e.failures.allowed(addr, c.started) {
		c.reply(id, proto.Result("login", "rate_limited"))
		return
	}
	c.watchLogin, c.loginFailed = true, false
	c.forward("login", id, frame)
	c.watchLogin = false
	if c.loginFailed {
		c.e.failures.failed(addr, time.Now())
	}
}

// wrongLogin reports whether body is a login reply that refused the name
// or the password.
func wrongLogin(body []byte) bool {
	if string(proto.FieldBytes(body, "cmd")) != "login_reply" {
		return false
	}
	r := string(proto.FieldBytes(body, "result"))
	return r == "password_error" || r == "user_not_exist"
}

// limited answers a request over the connection's allowance. A command
// the edge does not know gets an error line, as it would anyway, so that
// the reply's command, a metrics label, is never the client's invention.
func (c *conn) limited(id json.RawMessage, cmd string) {
	if knownCommand(cmd) {
		c.reply(id, proto.Result(cmd, "rate_limited"))
		return
	}
	c.reply(id, errorLine("rate_limited", ""))
}

// forward sends the request to a worker and writes the reply.
func (c *conn) forward(cmd string, id json.RawMessage, frame []byte) {
	ctx := deadline.New(context.Background(), time.Now().Add(c.e.opts.RequestTimeout))
	defer ctx.Release()
	if cmd == "login" && c.user == "" {
		if user, ok := loginName(frame); ok && c.loginFirst(ctx, id, frame, user) {
			return
		}
	}
	var hdr nats.Header
	sent := notTried
	if cmd == "private_chat" {
		// Chosen here so that a message sent again below keeps its ID:
		// a recipient who gets it twice can tell.
		msgID := nuid.Next()
		hdr = nats.Header{proto.HdrMsgID: {msgID}}
		if sent = c.sendDirect(ctx, id, frame, msgID); sent == confirmed || sent == local {
			return
		}
	}
	var reply *nats.Msg
	var err error
	if sent == notTried {
		reply, err = c.ask(ctx, cmd, frame, hdr)
	}
	if cmd == "private_chat" && (sent == untaken || errors.Is(err, context.DeadlineExceeded)) {
		// Nobody took it (the recipient is offline), or nobody confirmed:
		// the worker or the recipient's edge may have died, or the
		// message met a user leaving another broker. Kept, it reaches the
		// recipient once more at worst, rather than never.
		kctx := deadline.New(context.Background(), time.Now().Add(c.e.opts.RequestTimeout))
		hdr.Set(proto.HdrKeep, "1")
		reply, _ = c.ask(kctx, cmd, frame, hdr)
		kctx.Release()
	}
	if reply == nil {
		c.reply(id, unavailable(cmd, frame))
		return
	}
	if bind := reply.Header.Get(proto.HdrBind); cmd == "login" && bind != "" {
		c.login(ctx, id, bind, reply.Data)
		return
	}
	if cmd == "add" && proto.StrField(reply.Data, "result") == "success" {
		if friend, ok := field(reply.Data, "friend"); ok {
			c.friends.add(friend)
		}
	}
	c.reply(id, reply.Data)
}

// ask sends a client's request to the workers on behalf of the session,
// with the sequence the session has seen, and returns the reply, or nil
// and why when none came: context.DeadlineExceeded when nobody answered
// in time, nats.ErrNoResponders when no worker was there to ask.
func (c *conn) ask(ctx context.Context, cmd string, frame []byte, hdr nats.Header) (*nats.Msg, error) {
	m := nats.NewMsg(proto.CmdPrefix + cmd)
	for k, v := range hdr {
		m.Header[k] = v
	}
	if c.user != "" {
		m.Header.Set(proto.HdrUser, c.user)
	}
	if s := c.seen.Load(); s > 0 {
		m.Header.Set(proto.HdrSeq, strconv.FormatUint(s, 10))
	}
	m.Data = frame
	if c.wait == nil {
		c.wait = newWaiter()
	}
	reply, err := c.e.requestVia(ctx, m, c.wait)
	if errors.Is(err, nats.ErrTimeout) {
		err = context.DeadlineExceeded
	}
	if err == nil && (len(reply.Data) == 0 || reply.Data[0] != '{') {
		err = errors.New("malformed reply")
	}
	if err != nil {
		c.e.log.Warn("no answer from workers", "cmd", cmd, "err", err)
		return nil, err
	}
	c.observe(proto.Seq(reply.Header.Get(proto.HdrSeq)))
	return reply, nil
}

// login binds the session after the worker accepted the password. Order
// matters: subscribe first, then reply, then tell friends and hand out
// stored messages (one request to a worker does both), so nothing sent
// from here on can be missed.
func (c *conn) login(ctx context.Context, id json.RawMessage, user string, replyData []byte) {
	if c.user == user {
		c.loggedIn(user, replyData)
		c.reply(id, replyData)
		return
	}
	c.logout(ctx)
	first, err := c.e.bind(ctx, c, user)
	if err != nil {
		c.e.log.Warn("login failed", "user", user, "err", err)
		c.reply(id, proto.Result("login", "unavailable"))
		return
	}
	c.loggedIn(user, replyData)
	c.reply(id, replyData)
	c.e.fetchInbox(ctx, user, []*conn{c}, first)
}

// loggedIn records the bound user, and the friends its login reply lists.
func (c *conn) loggedIn(user string, reply []byte) {
	c.user = user
	line, _, _ := bytes.Cut(reply, []byte("\n"))
	list, _ := field(line, "friend")
	c.friends.reset(list)
}

// offline ends the session but keeps the connection, as the seed client expects.
func (c *conn) offline(id json.RawMessage, frame []byte) {
	var f struct {
		User *string `json:"user"`
	}
	if err := json.Unmarshal(frame, &f); err != nil {
		c.reply(id, proto.Result("offline", "invalid"))
		return
	}
	if f.User != nil && *f.User != c.user {
		c.reply(id, proto.Result("offline", "forbidden"))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.e.opts.RequestTimeout)
	defer cancel()
	c.logout(ctx)
	c.reply(id, proto.Result("offline", "success"))
}

// logout unbinds the session; on the user's last session anywhere, the
// user's friends are told.
func (c *conn) logout(ctx context.Context) {
	if c.user == "" {
		return
	}
	user := c.user
	c.user = ""
	c.friends.reset("")
	if c.e.unbind(ctx, c, user) {
		c.e.presence(ctx, user, false)
	}
}

// reply writes a direct reply, echoing the request's id when it had one.
// Only the read loop replies: the line is built in its buffer.
func (c *conn) reply(id json.RawMessage, body []byte) {
	c.e.metrics.reply(body, time.Since(c.started))
	if c.watchLogin {
		c.loginFailed = wrongLogin(body)
	}
	c.out = appendWithID(c.out[:0], body, id)
	c.sendNow(c.out, true)
	c.out = keepable(c.out)
}

// maxKeptLine bounds the line buffers kept for reuse.
const maxKeptLine = 4096

// keepable returns a line buffer to keep for the next line, or nil when
// it grew past maxKeptLine: a long line's buffer is not kept for the
// short ones.
func keepable(b []byte) []byte {
	if cap(b) > maxKeptLine {
		return nil
	}
	return b
}

// withID returns body as a line, with "id" spliced in first when given.
func withID(body []byte, id json.RawMessage) []byte {
	return appendWithID(make([]byte, 0, len(body)+len(id)+8), body, id)
}

// appendWithID appends body to out as a line, with "id" spliced in first
// when given.
func appendWithID(out, body []byte, id json.RawMessage) []byte {
	if len(body) > 0 && body[len(body)-1] == '\n' {
		body = body[:len(body)-1]
	}
	if len(id) == 0 || len(body) < 2 {
		return append(append(out, body...), '\n')
	}
	out = append(out, `{"id":`...)
	out = append(out, id...)
	if body[1] != '}' {
		out = append(out, ',')
	}
	out = append(out, body[1:]...)
	return append(out, '\n')
}

// errorLine is the reply to a request that is not a command at all.
func errorLine(result, detail string) []byte {
	kv := []any{"cmd", "error", "result", result}
	if detail != "" {
		kv = append(kv, "detail", detail)
	}
	return append(proto.Object(kv...), '\n')
}

// unavailable is the reply when no worker answered; private_chat keeps its
// user_to so the seed client can route it.
func unavailable(cmd string, frame []byte) []byte {
	if cmd == "private_chat" {
		var f struct {
			To string `json:"user_to"`
		}
		if json.Unmarshal(frame, &f) == nil {
			return proto.Result(cmd, "unavailable", "user_to", f.To)
		}
	}
	return proto.Result(cmd, "unavailable")
}
