package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// What an operator sees: health and metrics on every process, the
// services in `nats micro ls`, named connections in /connz.
func TestMonitoring(t *testing.T) {
	br := startBroker(t)
	url := br.ready["nats"]
	w := startWorker(t, url, "w1", "--metrics", "127.0.0.1:0")
	e := startEdge(t, url, "e1", "--metrics", "127.0.0.1:0", "--delivery-conns", "2")
	alice := client(t, e, "alice", true)
	client(t, e, "bob", true)
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "hi"}, "success")
	alice.Expect(M{"cmd": "get_group_member", "group": "nope"}, "group_not_exist")

	for _, p := range []*proc{w, e} {
		base := "http://" + p.ready["metrics"]
		for _, path := range []string{"/healthz", "/readyz"} {
			if code, body := httpGet(t, base+path); code != 200 || strings.TrimSpace(body) != "ok" {
				t.Fatalf("%s%s: %d %q", base, path, code, body)
			}
		}
	}
	_, em := httpGet(t, "http://"+e.ready["metrics"]+"/metrics")
	_, wm := httpGet(t, "http://"+w.ready["metrics"]+"/metrics")
	for _, want := range []string{
		"chatd_edge_sessions 2\n",
		`chatd_edge_commands_total{cmd="private_chat",result="success"} 1`,
		`chatd_edge_commands_total{cmd="get_group_member",result="group_not_exist"} 1`,
		`chatd_edge_command_seconds_count{cmd="login"} 2`,
		`chatd_edge_deliveries_total{cmd="private_chat"} 1`,
		`chatd_edge_private_direct_total{outcome="local"} 1`,
		"chatd_edge_registry_write_failures_total 0\n",
		"chatd_edge_registry_changes_total 2\n",
	} {
		if !strings.Contains(em, want) {
			t.Errorf("edge metrics lack %q", want)
		}
	}
	for _, want := range []string{
		"chatd_worker_ready 1\n",
		"chatd_worker_log_lag 0\n",
		`chatd_worker_requests_total{cmd="register",result="success"} 2`,
		`chatd_worker_request_seconds_bucket{cmd="login",le="+Inf"} 2`,
	} {
		if !strings.Contains(wm, want) {
			t.Errorf("worker metrics lack %q", want)
		}
	}

	// nats micro ls: both services, with versions and instance names.
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	inbox := nats.NewInbox()
	sub, _ := nc.SubscribeSync(inbox)
	_ = nc.PublishRequest("$SRV.INFO", inbox, nil)
	services := map[string]string{}
	for {
		m, err := sub.NextMsg(time.Second)
		if err != nil {
			break
		}
		var info struct {
			Name, Version string
			Metadata      map[string]string
			Endpoints     []struct{ Name string }
		}
		_ = json.Unmarshal(m.Data, &info)
		services[info.Name+" "+info.Metadata["instance"]+info.Metadata["name"]] = info.Version
	}
	if services["chat-worker w1"] == "" || services["chat-edge e1"] == "" {
		t.Fatalf("services seen: %v", services)
	}

	// /connz names every process, and the edge's delivery connections.
	_, connz := httpGet(t, "http://"+br.ready["http"]+"/connz")
	for _, want := range []string{`"name": "chatd-worker w1"`, `"name": "chatd-edge e1"`,
		`"name": "chatd-edge e1 deliveries 1"`, `"name": "chatd-edge e1 deliveries 2"`} {
		if !strings.Contains(connz, want) {
			t.Errorf("/connz lacks %s", want)
		}
	}
	if code, _ := httpGet(t, "http://"+br.ready["http"]+"/healthz"); code != 200 {
		t.Errorf("broker /healthz: %d", code)
	}
}

// SIGTERM on an edge: clients are told, the request in hand is answered,
// sessions end (friends hear it) and the process exits cleanly.
func TestEdgeDrainsOnSigterm(t *testing.T) {
	br := startBroker(t)
	url := br.ready["nats"]
	startWorker(t, url, "w")
	e1 := startEdge(t, url, "e1")
	e2 := startEdge(t, url, "e2")
	alice := client(t, e1, "alice", true)
	bob := client(t, e2, "bob", true)
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	bob.Want("add_friend_reply")
	bob.Send(M{"cmd": "private_chat", "user_to": "alice", "text": "last words"})
	if err := e2.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("edge exit: %v\n%s", err, e2.log())
	}
	got := map[string]bool{}
	for _, m := range bob.Closed() {
		got[m.Str("cmd")] = true
	}
	if !got["server_shutdown"] || !got["private_chat_reply"] {
		t.Fatalf("bob saw %v before the close", got)
	}
	alice.Want("private_chat")
	if m := alice.Want("friend_offline"); m.Str("friend") != "bob" {
		t.Fatalf("alice got %s", m.Raw)
	}
}

func TestCheckConfiguration(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.conf")
	bad := filepath.Join(dir, "bad.conf")
	_ = os.WriteFile(good, []byte("server_name: n1\nlisten: 127.0.0.1:4222\njetstream { store_dir: \""+dir+"\" }\n"), 0o600)
	_ = os.WriteFile(bad, []byte("listen: 127.0.0.1:4222\njetstream {{\n"), 0o600)
	tests := []struct {
		args []string
		ok   bool
		want string
	}{
		{[]string{"broker", "--check", "--nats-config", good}, true, "configuration ok"},
		{[]string{"broker", "--check", "--nats-config", bad}, false, "config file"},
		{[]string{"broker", "--check", "--nats-config", good, "--routes", "x:1"}, false, "--routes and --nats-config"},
		{[]string{"broker", "--check", "--routes", "nats://a:1"}, false, "--routes needs --cluster-listen"},
		{[]string{"edge", "--check", "--file-ports", "9000-8000"}, false, "want LO-HI"},
		{[]string{"edge", "--check", "--file-max", "5XB"}, false, `invalid value "5XB" for flag -file-max`},
		{[]string{"worker", "--check", "--replicas", "7"}, false, "replicas"},
		{[]string{"worker", "--check"}, true, "configuration ok"},
		{[]string{"all", "--check", "--listen", "127.0.0.1:1"}, true, "configuration ok"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, err := exec.Command(binary, tc.args...).CombinedOutput()
			if (err == nil) != tc.ok || !strings.Contains(string(out), tc.want) {
				t.Fatalf("exit %v, output:\n%s\nwant ok=%v and %q", err, out, tc.ok, tc.want)
			}
		})
	}
}
