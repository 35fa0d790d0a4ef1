// Package chattest starts real brokers, workers and edges on random
// loopback ports and drives them with a protocol client, for tests.
package chattest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/chatd-io/chatd/broker"
	"github.com/chatd-io/chatd/edge"
	"github.com/chatd-io/chatd/internal/passwd"
	"github.com/chatd-io/chatd/workers"
)

// Timeout bounds every wait in these helpers; it is generous because CI
// machines are shared, and it only matters when a test is failing.
const Timeout = 10 * time.Second

// Logger returns a logger for servers under test: quiet unless CHATD_TEST_LOG is set.
func Logger() *slog.Logger {
	lvl := slog.LevelError + 4
	if os.Getenv("CHATD_TEST_LOG") != "" {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}

// CheapPasswords hashes at argon2's lowest cost: tests register many users.
func CheapPasswords() passwd.Params {
	return passwd.Params{ArgonTime: 1, ArgonMemoryKiB: passwd.MinArgonMemoryKiB}
}

// Cluster is one broker with whatever edges and workers a test adds.
type Cluster struct {
	t      testing.TB
	Broker *broker.Broker
	URL    string
	dir    string
}

// StartBroker starts a broker listening on a random loopback port with its
// store in dir (a fresh temporary directory when dir is "").
func StartBroker(t testing.TB, dir string) *Cluster {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	b, err := broker.New(broker.Options{Name: "test", Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", DataDir: dir, Logger: Logger()})
	if err != nil {
		t.Fatalf("start broker: %v", err)
	}
	c := &Cluster{t: t, Broker: b, URL: b.ClientURL(), dir: dir}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		b.Server().Shutdown()
		b.Shutdown(ctx)
	})
	return c
}

// Conn opens a NATS connection to the broker, closed at cleanup.
func (c *Cluster) Conn(name string, more ...nats.Option) *nats.Conn {
	c.t.Helper()
	opts := append([]nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}, more...)
	nc, err := nats.Connect(c.URL, opts...)
	if err != nil {
		c.t.Fatalf("connect: %v", err)
	}
	c.t.Cleanup(nc.Close)
	return nc
}

// Worker is a worker under test with its own connection.
type Worker struct {
	*workers.Worker
	NC   *nats.Conn
	once sync.Once
}

// StartWorker starts a worker with its store in dir ("" for a new temp dir).
func (c *Cluster) StartWorker(dir string, mod ...func(*workers.Options)) *Worker {
	c.t.Helper()
	if dir == "" {
		dir = c.t.TempDir()
	}
	nc := c.Conn("chatd-worker test")
	opts := workers.Options{Conn: nc, DataDir: dir, Name: "test", Passwords: CheapPasswords(), Logger: Logger()}
	for _, m := range mod {
		m(&opts)
	}
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	w, err := workers.New(ctx, opts)
	if err != nil {
		c.t.Fatalf("start worker: %v", err)
	}
	wk := &Worker{Worker: w, NC: nc}
	c.t.Cleanup(func() { wk.Stop() })
	return wk
}

// Stop closes the worker gracefully; calling it again does nothing.
func (w *Worker) Stop() {
	w.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), Timeout)
		defer cancel()
		_ = w.Worker.Close(ctx)
	})
}

// Kill drops the worker's NATS connection at once, like a killed process:
// nothing is drained, in-flight requests get no answer.
func (w *Worker) Kill() {
	w.NC.Close()
	w.Stop()
}

// StartEdge starts an edge on a random loopback port.
func (c *Cluster) StartEdge(mod ...func(*edge.Options)) *edge.Edge {
	c.t.Helper()
	opts := edge.Options{Listen: "127.0.0.1:0", Conn: c.Conn("chatd-edge test"), Name: "test",
		RequestTimeout: 3 * time.Second, Logger: Logger()}
	for _, m := range mod {
		m(&opts)
	}
	e, err := edge.New(opts)
	if err != nil {
		c.t.Fatalf("start edge: %v", err)
	}
	go func() { _ = e.Serve() }()
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = e.Shutdown(ctx)
	})
	return e
}

// Deliveries gives an edge n connections of its own for the users'
// subscriptions (edge.Options.Deliveries), named "<name> deliveries i",
// dialled with NoEcho as chatd dials them.
func (c *Cluster) Deliveries(n int) func(*edge.Options) {
	return func(o *edge.Options) {
		for i := range n {
			o.Deliveries = append(o.Deliveries, c.Conn(fmt.Sprintf("%s deliveries %d", o.Name, i+1), nats.NoEcho()))
		}
	}
}

// Msg is one server message, decoded, with its raw line.
type Msg struct {
	Raw    string
	Fields map[string]any
}

// Str returns a string field ("" when absent or not a string).
func (m Msg) Str(k string) string {
	s, _ := m.Fields[k].(string)
	return s
}

// Client speaks the protocol to an edge.
type Client struct {
	t       testing.TB
	Conn    net.Conn
	lines   chan string
	backlog []Msg
}

// Dial connects a client to addr.
func Dial(t testing.TB, addr string) *Client {
	t.Helper()
	return DialFrom(t, nil, addr)
}

// DialFrom is Dial from local address from (nil: any), such as another
// loopback address for a client that must look like another host's.
func DialFrom(t testing.TB, from net.Addr, addr string) *Client {
	t.Helper()
	conn, err := (&net.Dialer{Timeout: Timeout, LocalAddr: from}).Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	cl := &Client{t: t, Conn: conn, lines: make(chan string, 4096)}
	go func() {
		defer close(cl.lines)
		sc := bufio.NewScanner(conn)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			cl.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return cl
}

// Send writes v as JSON (a string is written as is).
func (cl *Client) Send(v any) {
	cl.t.Helper()
	var b []byte
	if s, ok := v.(string); ok {
		b = []byte(s)
	} else {
		var err error
		if b, err = json.Marshal(v); err != nil {
			cl.t.Fatalf("marshal: %v", err)
		}
	}
	if _, err := cl.Conn.Write(b); err != nil {
		cl.t.Fatalf("write: %v", err)
	}
}

// Next returns the next message not yet taken, failing the test after Timeout.
func (cl *Client) Next() Msg {
	cl.t.Helper()
	if len(cl.backlog) > 0 {
		m := cl.backlog[0]
		cl.backlog = cl.backlog[1:]
		return m
	}
	m, err := cl.read()
	if err != nil {
		cl.t.Fatalf("next message: %v", err)
	}
	return m
}

var (
	errClosed  = errors.New("connection closed by the server")
	errTimeout = fmt.Errorf("no message within %s", Timeout)
)

func (cl *Client) read() (Msg, error) {
	select {
	case line, ok := <-cl.lines:
		if !ok {
			return Msg{}, errClosed
		}
		m := Msg{Raw: line}
		if err := json.Unmarshal([]byte(line), &m.Fields); err != nil {
			cl.t.Fatalf("server sent a line that is not a JSON object: %q", line)
		}
		return m, nil
	case <-time.After(Timeout):
		return Msg{}, errTimeout
	}
}

// Want returns the first message with the given cmd, leaving other
// messages for later calls. It fails if none arrives in time.
func (cl *Client) Want(cmd string) Msg {
	cl.t.Helper()
	for i, m := range cl.backlog {
		if m.Str("cmd") == cmd {
			cl.backlog = append(cl.backlog[:i:i], cl.backlog[i+1:]...)
			return m
		}
	}
	for {
		m, err := cl.read()
		if err != nil {
			cl.t.Fatalf("waiting for %q: %v (unclaimed: %v)", cmd, err, cl.backlog)
		}
		if m.Str("cmd") == cmd {
			return m
		}
		cl.backlog = append(cl.backlog, m)
	}
}

// Result sends req and returns the result of the reply named cmd_reply.
func (cl *Client) Result(req map[string]any) Msg {
	cl.t.Helper()
	cl.Send(req)
	return cl.Want(fmt.Sprint(req["cmd"]) + "_reply")
}

// Expect sends req and fails unless the reply's result is want.
func (cl *Client) Expect(req map[string]any, want string) Msg {
	cl.t.Helper()
	m := cl.Result(req)
	if got := m.Str("result"); got != want {
		cl.t.Fatalf("%v: result %q, want %q (reply %s)", req, got, want, m.Raw)
	}
	return m
}

// Sync sends a ping and waits for the pong; everything the edge had
// queued for this client before the ping is then in the backlog.
func (cl *Client) Sync() {
	cl.t.Helper()
	cl.Send(`{"cmd":"ping"}`)
	cl.Want("pong")
}

// Pending returns and clears the messages received but not yet claimed.
func (cl *Client) Pending() []Msg {
	p := cl.backlog
	cl.backlog = nil
	return p
}

// Within returns the messages that arrive within d, also leaving them
// in the backlog: for checks that something is not written yet, which
// only a slow machine could pass wrongly, never fail wrongly.
func (cl *Client) Within(d time.Duration) []Msg {
	cl.t.Helper()
	var got []Msg
	end := time.After(d)
	for {
		select {
		case line, ok := <-cl.lines:
			if !ok {
				return got
			}
			m := Msg{Raw: line}
			if err := json.Unmarshal([]byte(line), &m.Fields); err != nil {
				cl.t.Fatalf("server sent a line that is not a JSON object: %q", line)
			}
			got = append(got, m)
			cl.backlog = append(cl.backlog, m)
		case <-end:
			return got
		}
	}
}

// Closed waits until the server closes the connection and returns the
// messages received but not yet claimed.
func (cl *Client) Closed() []Msg {
	cl.t.Helper()
	for {
		m, err := cl.read()
		switch {
		case errors.Is(err, errClosed):
			return cl.Pending()
		case err != nil:
			cl.t.Fatalf("waiting for the server to close: %v", err)
		}
		cl.backlog = append(cl.backlog, m)
	}
}

// Login logs user in on cl, expecting success, and returns once the
// server has finished with the login: friends told, stored messages
// handed out (they wait in the backlog). The reply comes before that, so
// without the wait a test's next step could race the announcement.
func (cl *Client) Login(user, password string) Msg {
	cl.t.Helper()
	m := cl.Expect(map[string]any{"cmd": "login", "user": user, "password": password}, "success")
	cl.Sync()
	return m
}

// Register registers user with password, expecting success.
func (cl *Client) Register(user, password string) {
	cl.t.Helper()
	cl.Expect(map[string]any{"cmd": "register", "user": user, "password": password}, "success")
}

// Names joins names the way list replies do, for comparisons.
func Names(s ...string) string { return strings.Join(s, "|") }

// Port reads a port number field.
func (m Msg) Port() int {
	p, _ := m.Fields["port"].(float64)
	return int(p)
}

// FilePort connects to a file transfer port on the host cl is connected to,
// as the seed client does.
func (cl *Client) FilePort(port int) net.Conn {
	cl.t.Helper()
	host, _, _ := net.SplitHostPort(cl.Conn.RemoteAddr().String())
	c, err := net.DialTimeout("tcp", net.JoinHostPort(host, fmt.Sprint(port)), Timeout)
	if err != nil {
		cl.t.Fatalf("dial file port %d: %v", port, err)
	}
	cl.t.Cleanup(func() { c.Close() })
	return c
}

// ReadAll reads c until the server closes it, failing after Timeout.
func ReadAll(t testing.TB, c net.Conn) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(Timeout))
	var buf []byte
	tmp := make([]byte, 256<<10)
	for {
		n, err := c.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("file connection still open after %s (read %d bytes)", Timeout, len(buf))
			}
			return buf
		}
	}
}
