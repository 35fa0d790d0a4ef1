package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// maxLine bounds one server line; a server that never sends '\n' must
// cost an error, not the generator's memory.
const maxLine = 1 << 20

var errLineTooLong = fmt.Errorf("server line longer than %d bytes", maxLine)

// Conn is one client connection speaking the line protocol.
type Conn struct {
	nc      net.Conn
	br      *bufio.Reader
	long    []byte
	closing atomic.Bool
	done    chan struct{}
}

// Dial connects to addr. bufSize is the read buffer: small for the idle
// scenario's thousands of connections, larger where throughput matters.
func Dial(ctx context.Context, addr string, bufSize int) (*Conn, error) {
	// No TCP keepalive: thousands of idle connections opened together
	// would probe together, and on loopback such bursts overflow the
	// kernel's backlog; the server's own keepalive is what is measured.
	d := net.Dialer{KeepAlive: -1}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	return &Conn{nc: nc, br: bufio.NewReaderSize(nc, bufSize)}, nil
}

// ReadLine returns the next line without its line end. The slice is only
// valid until the next call.
func (c *Conn) ReadLine() ([]byte, error) {
	line, err := c.br.ReadSlice('\n')
	if err == nil {
		return trimEOL(line), nil
	}
	if !errors.Is(err, bufio.ErrBufferFull) {
		return nil, err
	}
	c.long = append(c.long[:0], line...)
	for {
		line, err = c.br.ReadSlice('\n')
		if len(c.long)+len(line) > maxLine {
			return nil, errLineTooLong
		}
		c.long = append(c.long, line...)
		if err == nil {
			return trimEOL(c.long), nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

func trimEOL(b []byte) []byte {
	b = b[:len(b)-1]
	if len(b) > 0 && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	return b
}

// Write sends raw bytes (one or more complete requests).
func (c *Conn) Write(b []byte) error {
	if _, err := c.nc.Write(b); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// Close closes the connection; a reader started by Serve then ends
// without reporting an error.
func (c *Conn) Close() {
	c.closing.Store(true)
	_ = c.nc.Close()
}

// Closing reports whether Close was called.
func (c *Conn) Closing() bool { return c.closing.Load() }

// Serve starts the connection's reader goroutine: handle gets every line
// (valid only during the call), failed gets the error that ended reading
// unless Close ended it. Setup calls must not be used after Serve.
func (c *Conn) Serve(handle func(line []byte), failed func(error)) {
	c.done = make(chan struct{})
	go func() {
		defer close(c.done)
		for {
			line, err := c.ReadLine()
			if err != nil {
				if !c.closing.Load() {
					failed(err)
				}
				return
			}
			handle(line)
		}
	}()
}

// Wait waits for the reader started by Serve to end.
func (c *Conn) Wait() {
	if c.done != nil {
		<-c.done
	}
}

// Reply is one decoded server line that the caller may keep.
type Reply struct {
	Line []byte
	F    Fields
}

// String returns the reply's line for error messages, cut to a sane length.
func (r *Reply) String() string {
	const max = 300
	if len(r.Line) > max {
		return string(r.Line[:max]) + "…"
	}
	return string(r.Line)
}

// maxSkipped bounds the lines a call skips while waiting for its reply, so
// a server that chatters forever cannot keep a setup call alive.
const maxSkipped = 100000

// Pipeline writes reqs in one go and collects the first len(reqs) lines
// whose cmd is want, skipping others (presence notices and the like). It
// is for setup, not for the hot path: it allocates freely. The wait is
// bounded by timeout and ends early when ctx does.
func (c *Conn) Pipeline(ctx context.Context, timeout time.Duration, want string, reqs ...[]byte) ([]*Reply, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dl, _ := ctx.Deadline()
	_ = c.nc.SetDeadline(dl)
	// Cancelling ctx must unblock a read in progress; the mutex keeps a
	// late callback from poisoning the deadline after we cleared it.
	var mu sync.Mutex
	finished := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !finished {
			_ = c.nc.SetDeadline(time.Now())
		}
	})
	defer func() {
		stop()
		mu.Lock()
		finished = true
		_ = c.nc.SetDeadline(time.Time{})
		mu.Unlock()
	}()

	var out []byte
	for _, r := range reqs {
		out = append(out, r...)
		if len(r) == 0 || r[len(r)-1] != '\n' {
			out = append(out, '\n')
		}
	}
	if err := c.Write(out); err != nil {
		return nil, err
	}
	replies := make([]*Reply, 0, len(reqs))
	for skipped := 0; len(replies) < len(reqs); {
		line, err := c.ReadLine()
		if err != nil {
			if ctx.Err() != nil {
				if errors.Is(ctx.Err(), context.DeadlineExceeded) {
					return nil, fmt.Errorf("no %s within %s", want, timeout)
				}
				return nil, fmt.Errorf("waiting for %s: %w", want, ctx.Err())
			}
			return nil, fmt.Errorf("waiting for %s: %w", want, err)
		}
		r := &Reply{Line: append([]byte(nil), line...)}
		if err := r.F.Parse(r.Line); err != nil {
			return nil, fmt.Errorf("waiting for %s: server sent %q: %w", want, cut(r.Line), err)
		}
		switch string(r.F.Cmd) {
		case want:
			replies = append(replies, r)
			continue
		case "error":
			return nil, fmt.Errorf("waiting for %s: server sent %s", want, r)
		}
		if skipped++; skipped > maxSkipped {
			return nil, fmt.Errorf("waiting for %s: %d other lines and no reply", want, skipped)
		}
	}
	return replies, nil
}

// Call sends one request and returns its reply, named cmd + "_reply".
func (c *Conn) Call(ctx context.Context, timeout time.Duration, req map[string]any) (*Reply, error) {
	cmd, _ := req["cmd"].(string)
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	rs, err := c.Pipeline(ctx, timeout, cmd+"_reply", b)
	if err != nil {
		return nil, err
	}
	return rs[0], nil
}

// Expect is Call that also requires the reply's result to be want.
func (c *Conn) Expect(ctx context.Context, timeout time.Duration, req map[string]any, want string) (*Reply, error) {
	r, err := c.Call(ctx, timeout, req)
	if err != nil {
		return nil, err
	}
	if string(r.F.Result) != want {
		return r, fmt.Errorf("%v %v: server answered %s", req["cmd"], describe(req), r)
	}
	return r, nil
}

// describe names the request's subject for error messages (never the password).
func describe(req map[string]any) string {
	for _, k := range []string{"user", "friend", "group", "user_to", "to_user"} {
		if v, ok := req[k]; ok {
			return fmt.Sprintf("%s=%v", k, v)
		}
	}
	return ""
}

func cut(b []byte) string {
	const max = 200
	if len(b) > max {
		return string(b[:max]) + "…"
	}
	return string(b)
}

// Setup steps shared by the scenarios. The acting-user fields are sent
// although chatd does not need them: the original server does, and the
// generator is meant to measure any implementation of the protocol.

func register(ctx context.Context, c *Conn, timeout time.Duration, user, password string) error {
	r, err := c.Call(ctx, timeout, map[string]any{"cmd": "register", "user": user, "password": password})
	if err != nil {
		return fmt.Errorf("register %s: %w", user, err)
	}
	if string(r.F.Result) == "success" {
		return nil
	}
	if string(r.F.Reason) == "user_exists" {
		return fmt.Errorf("register %s: the user exists already (use another --prefix)", user)
	}
	return fmt.Errorf("register %s: server answered %s", user, r)
}

func login(ctx context.Context, c *Conn, timeout time.Duration, user, password string) (*Reply, error) {
	r, err := c.Expect(ctx, timeout, map[string]any{"cmd": "login", "user": user, "password": password}, "success")
	if err != nil {
		return nil, fmt.Errorf("login %s: %w", user, err)
	}
	return r, nil
}

func addFriend(ctx context.Context, c *Conn, timeout time.Duration, user, friend string) error {
	_, err := c.Expect(ctx, timeout, map[string]any{"cmd": "add", "user": user, "friend": friend}, "success")
	return err
}

// parallel runs fn for i in [0,n) on conc goroutines (worker w gets its
// own w, to keep a connection per worker). The first error cancels the
// rest and is returned.
func parallel(ctx context.Context, n, conc int, fn func(ctx context.Context, w, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range max(1, min(conc, n)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(ctx, w, i); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}
