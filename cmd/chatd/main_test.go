package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatd-io/chatd/internal/chattest"
)

type M = map[string]any

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "chatd-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "chatd")
	if out, err := exec.Command("go", "build", "-race", "-o", binary, ".").CombinedOutput(); err != nil {
		// -race needs cgo; fall back to a plain build.
		if out2, err2 := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err2 != nil {
			fmt.Fprintf(os.Stderr, "build chatd: %v\n%s\n%s", err2, out, out2)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a chatd process under test.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	ready  map[string]string // key=value pairs of the ready line
	mu     sync.Mutex
	logBuf bytes.Buffer
	exited chan struct{} // closed once the process is reaped
	err    error         // its exit status, set before exited is closed
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logBuf.String()
}

// readyWithin bounds the wait for a process's ready line. A worker in a
// three-broker cluster first waits for JetStream to elect its leaders and
// create replicated streams, which with the race detector on a loaded
// machine took more than 10 s.
const readyWithin = 30 * time.Second

// startProc runs chatd with args and waits for its ready line.
func startProc(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, exited: make(chan struct{})}
	readyc := make(chan map[string]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.logBuf.WriteString(line + "\n")
			p.mu.Unlock()
			if strings.Contains(line, `msg="chatd ready"`) {
				readyc <- parseLogLine(line)
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() && os.Getenv("CHATD_TEST_LOG") != "" {
			t.Logf("chatd %v:\n%s", args, p.log())
		}
	})
	select {
	case p.ready = <-readyc:
	case <-p.exited:
		t.Fatalf("chatd %v exited before ready: %v\n%s", args, p.err, p.log())
	case <-time.After(readyWithin):
		t.Fatalf("chatd %v not ready within %s\n%s", args, readyWithin, p.log())
	}
	return p
}

func parseLogLine(line string) map[string]string {
	out := map[string]string{}
	for _, f := range strings.Fields(line) {
		if k, v, ok := strings.Cut(f, "="); ok {
			out[k] = strings.Trim(v, `"`)
		}
	}
	return out
}

func (p *proc) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.exited:
	case <-time.After(chattest.Timeout):
	}
}

// stop sends sig and returns the exit error.
func (p *proc) stop(sig syscall.Signal) error {
	p.t.Helper()
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
		return p.err
	case <-time.After(chattest.Timeout):
		p.t.Fatalf("chatd did not exit on %v\n%s", sig, p.log())
		return nil
	}
}

// stackTrace finds a Go panic's goroutine dump in a process's output.
var stackTrace = regexp.MustCompile(`(?m)^(panic: |goroutine \d+ \[)`)

func TestBadFlagsAreRefused(t *testing.T) {
	tests := []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"--no-such-flag"}, nil, "flag provided but not defined"},
		{[]string{"fly"}, nil, `unknown command "fly"`},
		{[]string{"all", "--max-frame", "abc"}, nil, "invalid value"},
		{[]string{"all", "stray"}, nil, `unexpected argument "stray"`},
		{[]string{"broker", "--nats-listen", ""}, nil, "--nats-listen is required"},
		{[]string{"worker", "--hash-cost", "99", "--nats", "nats://127.0.0.1:1"}, nil, "hash cost"},
		{[]string{"worker", "--password-hash", "md5", "--nats", "nats://127.0.0.1:1"}, nil, `password hash "md5"`},
		{[]string{"all", "--argon2-memory", "4KiB"}, nil, "argon2 memory"},
		{[]string{"edge", "--idle-after", "-1s"}, nil, "idle after is negative"},
		{[]string{"all", "--delivery-conns", "-1"}, nil, "--delivery-conns -1 is not within"},
		{[]string{"edge", "--presence-delay", "-1ms"}, nil, "--presence-delay -1ms is not within 0-1s"},
		{[]string{"all", "--presence-delay", "2s"}, nil, "--presence-delay 2s is not within 0-1s"},
		{[]string{"edge", "--client-rate", "-5"}, nil, "client rate -5 with burst 200: the rate is not within"},
		{[]string{"edge", "--client-rate", "Inf"}, nil, "client rate +Inf with burst 200: the rate is not within"},
		{[]string{"all"}, []string{"CHATD_CLIENT_RATE=NaN"}, "client rate NaN"},
		{[]string{"edge", "--login-failures", "-1"}, nil, "-1 failed logins a minute: not within 0-1e+09"},
		{[]string{"all"}, []string{"CHATD_LOGIN_FAILURES=+Inf"}, "+Inf failed logins a minute"},
		{[]string{"edge"}, []string{"CHATD_DELIVERY_CONNS=1000"}, "--delivery-conns 1000 is not within"},
		{[]string{"all"}, []string{"CHATD_REQUEST_TIMEOUT=soon"}, "CHATD_REQUEST_TIMEOUT"},
		{[]string{"all", "--log-level", "loud"}, nil, "--log-level"},
		{[]string{"broker", "--nats-ping", "1ms"}, nil, "--nats-ping 1ms: want 100ms to 10m0s"},
		{[]string{"worker"}, []string{"CHATD_NATS_PING=1h"}, "--nats-ping 1h0m0s: want"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			cmd := exec.Command(binary, tc.args...)
			cmd.Env = append(os.Environ(), tc.env...)
			cmd.Dir = t.TempDir()
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() == 0 {
				t.Fatalf("exit %v, want failure; output:\n%s", err, out)
			}
			if !strings.Contains(string(out), tc.want) || stackTrace.Match(out) {
				t.Fatalf("output does not say %q (or shows a stack trace):\n%s", tc.want, out)
			}
		})
	}
}

func TestVersionAndEnvironmentTwins(t *testing.T) {
	out, err := exec.Command(binary, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "chatd ") {
		t.Fatalf("version: %q %v", out, err)
	}
	dir := t.TempDir()
	p := startProc(t, []string{"CHATD_LISTEN=127.0.0.1:0", "CHATD_DATA=" + dir, "CHATD_HTTP=", "CHATD_METRICS="})
	if p.ready["http"] != "off" || p.ready["data"] != dir || !strings.HasPrefix(p.ready["client"], "127.0.0.1:") {
		t.Fatalf("environment not applied: %v", p.ready)
	}
}

// Everything survives kill -9 and a restart on the same data directory,
// including a message stored for an offline user.
func TestKillNineAndRestart(t *testing.T) {
	dir := t.TempDir()
	args := []string{"all", "--data", dir, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--argon2-time", "1", "--argon2-memory", "8KiB"}
	p := startProc(t, nil, args...)
	addr := p.ready["client"]
	a := chattest.Dial(t, addr)
	a.Register("alice", "pw")
	a.Register("bob", "pw")
	a.Login("alice", "pw")
	a.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	a.Expect(M{"cmd": "create_group", "group": "g"}, "success")
	a.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "while you were out"}, "offline")
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited

	p2 := startProc(t, nil, args...)
	b := chattest.Dial(t, p2.ready["client"])
	b.Expect(M{"cmd": "register", "user": "alice", "password": "x"}, "failure")
	b.Expect(M{"cmd": "login", "user": "bob", "password": "wrong"}, "password_error")
	m := b.Login("bob", "pw")
	if m.Str("friend") != "alice" {
		t.Fatalf("login after restart: %s", m.Raw)
	}
	if got := b.Want("private_chat"); got.Str("text") != "while you were out" {
		t.Fatalf("stored message: %s", got.Raw)
	}
	b.Expect(M{"cmd": "add_group", "group": "g"}, "success")
	if m := b.Result(M{"cmd": "get_group_member", "group": "g"}); m.Str("member") != "alice|bob" {
		t.Fatalf("members after restart: %s", m.Raw)
	}
}

func TestSigtermShutsDownCleanly(t *testing.T) {
	dir := t.TempDir()
	args := []string{"all", "--data", dir, "--listen", "127.0.0.1:0", "--http", "", "--metrics", "", "--argon2-time", "1", "--argon2-memory", "8KiB"}
	p := startProc(t, nil, args...)
	cl := chattest.Dial(t, p.ready["client"])
	cl.Register("alice", "pw")
	cl.Login("alice", "pw")
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.log())
	}
	cl.Closed()
	// The data directory is released and intact.
	p2 := startProc(t, nil, args...)
	chattest.Dial(t, p2.ready["client"]).Login("alice", "pw")
}

// The roles in separate processes: a broker, an edge and a worker.
func TestSplitProcesses(t *testing.T) {
	br := startProc(t, nil, "broker", "--nats-listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", t.TempDir())
	url := br.ready["nats"]
	startProc(t, nil, "worker", "--nats", url, "--data", t.TempDir(), "--argon2-time", "1", "--argon2-memory", "8KiB")
	e1 := startProc(t, nil, "edge", "--nats", url, "--listen", "127.0.0.1:0")
	e2 := startProc(t, nil, "edge", "--nats", url, "--listen", "127.0.0.1:0")
	a := chattest.Dial(t, e1.ready["client"])
	b := chattest.Dial(t, e2.ready["client"])
	a.Register("alice", "pw")
	b.Register("bob", "pw")
	a.Login("alice", "pw")
	b.Login("bob", "pw")
	a.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	b.Want("add_friend_reply")
	a.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "across edges"}, "success")
	if m := b.Want("private_chat"); m.Str("text") != "across edges" {
		t.Fatalf("got %s", m.Raw)
	}
	b.Conn.Close()
	a.Want("friend_offline")
}
