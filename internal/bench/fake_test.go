package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeServer accepts every setup request and answers everything else with
// what answer returns (raw lines, newline-terminated), to see how the
// generator copes with servers that misbehave.
type fakeServer struct {
	ln     net.Listener
	answer func(cmd string, req map[string]any) string
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func startFake(t *testing.T, answer func(cmd string, req map[string]any) string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{ln: ln, answer: answer}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Go(func() { s.serve(c) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return ln.Addr().String()
}

func (s *fakeServer) serve(c net.Conn) {
	defer c.Close()
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		var req map[string]any
		if json.Unmarshal(sc.Bytes(), &req) != nil {
			return
		}
		cmd, _ := req["cmd"].(string)
		var out string
		switch cmd {
		case "register", "add", "create_group", "add_group":
			out = `{"cmd":"` + cmd + `_reply","result":"success"}` + "\n"
		case "login":
			out = `{"cmd":"login_reply","result":"success","friend":"","group":""}` + "\n"
		default:
			out = s.answer(cmd, req)
		}
		if _, err := c.Write([]byte(out)); err != nil {
			return
		}
	}
}

func testEnv(addr string) *Env {
	return &Env{Addr: addr, Prefix: "t", Password: "pw", Warmup: 0, Duration: 300 * time.Millisecond,
		Timeout: 200 * time.Millisecond, SetupTimeout: 2 * time.Second, SetupConcurrency: 4,
		Log: quietLogger(), Console: NewConsole(new(strings.Builder), false)}
}

// A server that answers chat messages with garbage must cost errors,
// never a crash or a hang.
func TestGarbageServer(t *testing.T) {
	garbage := []string{
		"\x00\xff{{{\n",
		`{"cmd":"private_chat","user_from":"t.p0s","text":"not a stamp"}` + "\n",
		`{"cmd":"private_chat","user_from":"nobody","text":"0:1:1"}` + "\n",
		`{"cmd":"private_chat","text":"99:1:1"}` + "\n",
		`{"cmd":"private_chat","text":"0:999999999:1"}` + "\n",
		`{"cmd":"private_chat_reply","result":"rate_limited"}` + "\n",
		`{"cmd":"error","result":"invalid_json"}` + "\n",
		`{"cmd":` + strings.Repeat(`"x`, 10) + "\n",
		`{"cmd":"` + strings.Repeat("w", 200) + `"}` + "\n",
		"[]\n",
		"\n",
	}
	var mu sync.Mutex
	n := 0
	addr := startFake(t, func(string, map[string]any) string {
		mu.Lock()
		defer mu.Unlock()
		n++
		if n == 5 {
			// An endless line: the reader must give up on it, not buffer it.
			return strings.Repeat("y", maxLine+10)
		}
		return garbage[n%len(garbage)]
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	res, err := RunPrivate(ctx, testEnv(addr), PrivateOptions{Pairs: 2, Window: 4})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors == 0 || res.ErrorKinds["disconnect"] == 0 {
		t.Fatalf("errors %v: want errors, including a disconnect for the endless line", res.ErrorKinds)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("took %s", time.Since(start))
	}
	t.Logf("%s %v", res.Summary, res.ErrorKinds)
}

// A server without file transfer must give a clear error at once.
func TestFilesUnsupported(t *testing.T) {
	addr := startFake(t, func(cmd string, _ map[string]any) string {
		return `{"cmd":"` + cmd + `_reply","result":"unavailable"}` + "\n"
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	env := testEnv(addr)
	env.Duration = 10 * time.Second // must not be waited out
	start := time.Now()
	_, err := RunFiles(ctx, env, FilesOptions{Transfers: 2, Size: 1 << 20, Verify: true})
	if err == nil || !strings.Contains(err.Error(), "unavailable") || !strings.Contains(err.Error(), "file transfer") {
		t.Fatalf("error %v, want one that says file transfer got unavailable", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("gave up only after %s", time.Since(start))
	}
}

// A server that never answers send_file must not hang the run either.
func TestFilesSilentServer(t *testing.T) {
	addr := startFake(t, func(string, map[string]any) string { return "" })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	env := testEnv(addr)
	env.Duration = 10 * time.Second
	start := time.Now()
	_, err := RunFiles(ctx, env, FilesOptions{Transfers: 1, Size: 1 << 20})
	if err == nil || !strings.Contains(err.Error(), "send_file_port_reply") {
		t.Fatalf("error %v, want one about the missing send_file_port_reply", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("gave up only after %s", time.Since(start))
	}
}

// The ping scenario counts only pongs that answer its own pings, in
// order; anything else is an error, and a server that says nothing costs
// timeouts, not a hang.
func TestPingAnswers(t *testing.T) {
	pong := func(id any) string {
		b, _ := json.Marshal(map[string]any{"cmd": "pong", "id": id})
		return string(b) + "\n"
	}
	tests := []struct {
		name   string
		answer func(req map[string]any) string
		kind   string // the error kind wanted; "" for none
	}{
		{"echoes the id", func(req map[string]any) string { return pong(req["id"]) }, ""},
		{"twice", func(req map[string]any) string { return pong(req["id"]) + pong(req["id"]) }, "duplicate_or_late"},
		{"another connection's id", func(req map[string]any) string {
			id, _ := req["id"].(string)
			return pong("7" + id)
		}, "bad_id"},
		{"no id", func(map[string]any) string { return `{"cmd":"pong"}` + "\n" }, "bad_id"},
		{"numeric id", func(map[string]any) string { return pong(12) }, "bad_id"},
		{"not a pong", func(req map[string]any) string {
			return `{"cmd":"error","result":"unknown_cmd","id":"` + req["id"].(string) + `"}` + "\n"
		}, "unexpected"},
		{"silence", func(map[string]any) string { return "" }, "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := startFake(t, func(cmd string, req map[string]any) string {
				if cmd != "ping" {
					return `{"cmd":"error","result":"unknown_cmd"}` + "\n"
				}
				return tt.answer(req)
			})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			res, err := RunPing(ctx, testEnv(addr), PingOptions{Conns: 2, Window: 2})
			if err != nil {
				t.Fatal(err)
			}
			if tt.kind == "" {
				if res.Errors != 0 || res.Count == 0 || res.Latency == nil {
					t.Fatalf("count %v, errors %v: want pongs counted and no errors", res.Count, res.ErrorKinds)
				}
				return
			}
			if res.ErrorKinds[tt.kind] == 0 {
				t.Fatalf("errors %v: want %s", res.ErrorKinds, tt.kind)
			}
		})
	}
}
