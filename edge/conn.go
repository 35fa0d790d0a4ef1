package edge

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/chatd-io/chatd/internal/proto"
)

// conn is one client connection. The read loop handles one request at a
// time, so replies come back in request order; everything written goes
// through out, drained by the write loop.
type conn struct {
	e    *Edge
	sock net.Conn
	out  chan []byte

	closeOnce sync.Once
	done      chan struct{} // closed when the socket is closed
	drainOnce sync.Once
	draining  chan struct{} // closed when no more requests will be read
	flushed   chan struct{} // closed when the write loop has stopped

	user    string        // bound user; only the read loop touches it
	started time.Time     // when the request being handled was read
	seen    atomic.Uint64 // highest log sequence this session has observed
}

func newConn(e *Edge, sock net.Conn) *conn {
	return &conn{e: e, sock: sock, out: make(chan []byte, e.opts.OutQueue), done: make(chan struct{}),
		draining: make(chan struct{}), flushed: make(chan struct{})}
}

// Commands a client may send, and the subset allowed before login.
var (
	workerCommands = map[string]bool{
		"register": true, "login": true, "add": true, "create_group": true, "add_group": true,
		"private_chat": true, "group_chat": true, "get_group_member": true,
	}
	beforeLogin = map[string]bool{"register": true, "login": true, "ping": true}
)

// close drops the connection at once; whatever is still queued is lost.
func (c *conn) close() {
	c.closeOnce.Do(func() {
		close(c.done)
		_ = c.sock.Close()
	})
}

// send queues a line for the client. A client whose queue is full is not
// keeping up; it is disconnected rather than buffered without limit.
func (c *conn) send(line []byte) {
	select {
	case c.out <- line:
	case <-c.done:
	default:
		c.e.log.Warn("disconnecting slow client", "remote", c.sock.RemoteAddr().String(), "queued", len(c.out))
		c.e.metrics.slow.Inc()
		c.close()
	}
}

// observe raises the session's seen sequence.
func (c *conn) observe(seq uint64) {
	for {
		cur := c.seen.Load()
		if seq <= cur || c.seen.CompareAndSwap(cur, seq) {
			return
		}
	}
}

func (c *conn) writeLoop() {
	defer c.e.wg.Done()
	defer close(c.flushed)
	for {
		select {
		case line := <-c.out:
			if !c.write(line) {
				return
			}
		case <-c.draining:
			// The client stopped sending (or broke the protocol): what
			// was already answered still reaches it.
			for {
				select {
				case line := <-c.out:
					if !c.write(line) {
						return
					}
				default:
					return
				}
			}
		case <-c.done:
			return
		}
	}
}

func (c *conn) write(line []byte) bool {
	_ = c.sock.SetWriteDeadline(time.Now().Add(c.e.opts.WriteTimeout))
	if _, err := c.sock.Write(line); err != nil {
		c.close()
		return false
	}
	return true
}

// finish ends the connection after everything queued has been written.
// With lingerRead, the client's remaining input is read and dropped for a
// moment before closing: closing with unread input makes the kernel send a
// reset, which can destroy the last lines before the client reads them.
func (c *conn) finish(lingerRead bool) {
	c.drainOnce.Do(func() { close(c.draining) })
	select {
	case <-c.flushed:
	case <-c.done:
	}
	if tc, ok := c.sock.(*net.TCPConn); ok && lingerRead {
		_ = tc.CloseWrite()
		_ = tc.SetReadDeadline(time.Now().Add(time.Second))
		_, _ = io.Copy(io.Discard, io.LimitReader(tc, 4<<20))
	}
	c.close()
}

func (c *conn) readLoop() {
	defer c.e.wg.Done()
	defer c.e.connWG.Done()
	defer c.e.forget(c)
	dec := proto.NewDecoder(c.sock, c.e.opts.MaxFrame)
	for {
		frame, err := dec.Next()
		switch {
		case errors.Is(err, proto.ErrTooLarge):
			c.stop("too_large")
			return
		case errors.Is(err, proto.ErrSyntax), err == nil && !json.Valid(frame):
			c.stop("invalid_json")
			return
		case err != nil:
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
}

// head is the part of a request the edge itself looks at.
type head struct {
	Cmd json.RawMessage `json:"cmd"`
	ID  json.RawMessage `json:"id"`
}

func (c *conn) handle(frame []byte) {
	c.started = time.Now()
	var h head
	var cmd string
	if frame[0] != '{' || json.Unmarshal(frame, &h) != nil || json.Unmarshal(h.Cmd, &cmd) != nil {
		c.send(errorLine("invalid", ""))
		return
	}
	id := h.ID
	switch {
	case cmd == "ping":
		c.reply(id, []byte(`{"cmd":"pong"}`))
	case !workerCommands[cmd] && cmd != "offline" && cmd != "send_file":
		c.reply(id, errorLine("unknown_cmd", cmd))
	case c.user == "" && !beforeLogin[cmd]:
		c.reply(id, resultLine(cmd, "not_logged_in"))
	case cmd == "offline":
		c.offline(id, frame)
	case cmd == "send_file":
		c.sendFile(id, frame)
	default:
		c.forward(cmd, id, frame)
	}
}

// forward sends the request to a worker and writes the reply.
func (c *conn) forward(cmd string, id json.RawMessage, frame []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), c.e.opts.RequestTimeout)
	defer cancel()
	reply := c.ask(ctx, cmd, frame, nil)
	if reply == nil {
		c.reply(id, unavailable(cmd, frame))
		return
	}
	if bind := reply.Header.Get(proto.HdrBind); cmd == "login" && bind != "" {
		c.login(ctx, id, bind, reply.Data)
		return
	}
	c.reply(id, reply.Data)
}

// ask sends a client's request to the workers on behalf of the session,
// with the sequence the session has seen, and returns the reply, or nil
// when no worker answered in time.
func (c *conn) ask(ctx context.Context, cmd string, frame []byte, hdr nats.Header) *nats.Msg {
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
	reply, err := c.e.request(ctx, m)
	if err != nil || len(reply.Data) == 0 || reply.Data[0] != '{' {
		c.e.log.Warn("no answer from workers", "cmd", cmd, "err", err)
		return nil
	}
	seq, _ := strconv.ParseUint(reply.Header.Get(proto.HdrSeq), 10, 64)
	c.observe(seq)
	return reply
}

// login binds the session after the worker accepted the password. Order
// matters: subscribe first, then reply, then tell friends, then hand out
// stored messages, so nothing sent from here on can be missed.
func (c *conn) login(ctx context.Context, id json.RawMessage, user string, replyData []byte) {
	if c.user == user {
		c.reply(id, replyData)
		return
	}
	c.logout(ctx)
	first, err := c.e.bind(ctx, c, user)
	if err != nil {
		c.e.log.Warn("login failed", "user", user, "err", err)
		c.reply(id, resultLine("login", "unavailable"))
		return
	}
	c.user = user
	c.reply(id, replyData)
	if first {
		c.e.presence(ctx, user, true)
	}
	c.e.fetchInbox(ctx, user, []*conn{c})
}

// offline ends the session but keeps the connection, as the seed client expects.
func (c *conn) offline(id json.RawMessage, frame []byte) {
	var f struct {
		User *string `json:"user"`
	}
	if err := json.Unmarshal(frame, &f); err != nil {
		c.reply(id, resultLine("offline", "invalid"))
		return
	}
	if f.User != nil && *f.User != c.user {
		c.reply(id, resultLine("offline", "forbidden"))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.e.opts.RequestTimeout)
	defer cancel()
	c.logout(ctx)
	c.reply(id, resultLine("offline", "success"))
}

// logout unbinds the session; on the user's last session anywhere, the
// user's friends are told.
func (c *conn) logout(ctx context.Context) {
	if c.user == "" {
		return
	}
	user := c.user
	c.user = ""
	if c.e.unbind(ctx, c, user) {
		c.e.presence(ctx, user, false)
	}
}

// reply writes a direct reply, echoing the request's id when it had one.
func (c *conn) reply(id json.RawMessage, body []byte) {
	c.e.metrics.reply(body, time.Since(c.started))
	c.send(withID(body, id))
}

// withID returns body as a line, with "id" spliced in first when given.
func withID(body []byte, id json.RawMessage) []byte {
	if len(body) > 0 && body[len(body)-1] == '\n' {
		body = body[:len(body)-1]
	}
	if len(id) == 0 || len(body) < 2 {
		return append(body[:len(body):len(body)], '\n')
	}
	out := make([]byte, 0, len(body)+len(id)+8)
	out = append(out, `{"id":`...)
	out = append(out, id...)
	if body[1] != '}' {
		out = append(out, ',')
	}
	out = append(out, body[1:]...)
	return append(out, '\n')
}

func resultLine(cmd, result string) []byte {
	b, _ := json.Marshal(struct {
		Cmd    string `json:"cmd"`
		Result string `json:"result"`
	}{cmd + "_reply", result})
	return b
}

func errorLine(result, detail string) []byte {
	b, _ := json.Marshal(struct {
		Cmd    string `json:"cmd"`
		Result string `json:"result"`
		Detail string `json:"detail,omitempty"`
	}{"error", result, detail})
	return append(b, '\n')
}

// unavailable is the reply when no worker answered; private_chat keeps its
// user_to so the seed client can route it.
func unavailable(cmd string, frame []byte) []byte {
	if cmd == "private_chat" {
		var f struct {
			To string `json:"user_to"`
		}
		if json.Unmarshal(frame, &f) == nil {
			b, _ := json.Marshal(struct {
				Cmd    string `json:"cmd"`
				Result string `json:"result"`
				UserTo string `json:"user_to"`
			}{cmd + "_reply", "unavailable", f.To})
			return b
		}
	}
	return resultLine(cmd, "unavailable")
}
