package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/chatd-io/chatd/internal/chattest"
)

// Short timings so that failure detection fits in a test.
var (
	edgeArgs   = []string{"--listen", "127.0.0.1:0", "--heartbeat", "250ms", "--request-timeout", "3s", "--file-ports", "off"}
	workerArgs = []string{"--argon2-time", "1", "--argon2-memory", "8KiB", "--edge-dead-after", "3s"}
)

func startBroker(t *testing.T, extra ...string) *proc {
	t.Helper()
	args := append([]string{"broker", "--nats-listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", t.TempDir()}, extra...)
	return startProc(t, nil, args...)
}

func startWorker(t *testing.T, url, name string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"worker", "--nats", url, "--data", t.TempDir(), "--name", name}, workerArgs...)
	return startProc(t, nil, append(args, extra...)...)
}

func startEdge(t *testing.T, url, name string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"edge", "--nats", url, "--name", name}, edgeArgs...)
	return startProc(t, nil, append(args, extra...)...)
}

// filePorts returns n disjoint ranges of 21 file-transfer ports, as
// --file-ports values, starting somewhere between 20000 and 40000 so that
// tests running at once seldom pick the same ones.
func filePorts(n int) []string {
	lo := 20000 + time.Now().Nanosecond()%20000
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%d-%d", lo+21*i, lo+21*i+20)
	}
	return out
}

// freeAddr returns a loopback address nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// client registers (when password is new) and logs in user on the edge.
func client(t *testing.T, e *proc, user string, register bool) *chattest.Client {
	t.Helper()
	cl := chattest.Dial(t, e.ready["client"])
	if register {
		cl.Register(user, "pw")
	}
	cl.Login(user, "pw")
	return cl
}

// workerRequests asks every chat-worker instance for its stats, the way
// `nats micro stats chat-worker` does, and returns requests per instance.
func workerRequests(t *testing.T, url string) map[string]int {
	t.Helper()
	return endpointRequests(t, url, "")
}

// endpointRequests is workerRequests for one endpoint ("": all of them).
func endpointRequests(t *testing.T, url, endpoint string) map[string]int {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishRequest("$SRV.STATS.chat-worker", inbox, nil); err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for {
		m, err := sub.NextMsg(time.Second)
		if err != nil {
			return out
		}
		var st struct {
			Metadata  map[string]string `json:"metadata"`
			Endpoints []struct {
				Name     string `json:"name"`
				Requests int    `json:"num_requests"`
			} `json:"endpoints"`
		}
		if err := json.Unmarshal(m.Data, &st); err != nil {
			t.Fatalf("stats reply %s: %v", m.Data, err)
		}
		for _, ep := range st.Endpoints {
			if endpoint == "" || ep.Name == endpoint {
				out[st.Metadata["instance"]] += ep.Requests
			}
		}
	}
}

// One broker, two edges, two workers: users on different edges chat
// privately and in groups, and both workers serve.
func TestTopologyEdgesAndWorkers(t *testing.T) {
	br := startBroker(t)
	url := br.ready["nats"]
	startWorker(t, url, "w1")
	startWorker(t, url, "w2")
	e1 := startEdge(t, url, "e1")
	e2 := startEdge(t, url, "e2")
	alice := client(t, e1, "alice", true)
	bob := client(t, e2, "bob", true)
	carol := client(t, e2, "carol", true)
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	bob.Want("add_friend_reply")
	alice.Expect(M{"cmd": "create_group", "group": "g"}, "success")
	bob.Expect(M{"cmd": "add_group", "group": "g"}, "success")
	carol.Expect(M{"cmd": "add_group", "group": "g"}, "success")
	for i := range 20 {
		alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": fmt.Sprint("p", i)}, "success")
		if m := bob.Want("private_chat"); m.Str("text") != fmt.Sprint("p", i) {
			t.Fatalf("bob got %s", m.Raw)
		}
		bob.Expect(M{"cmd": "group_chat", "group": "g", "text": fmt.Sprint("g", i)}, "success")
		for _, cl := range []*chattest.Client{alice, carol} {
			if m := cl.Want("group_chat"); m.Str("text") != fmt.Sprint("g", i) {
				t.Fatalf("group member got %s", m.Raw)
			}
		}
	}
	reqs := workerRequests(t, url)
	if len(reqs) != 2 || reqs["w1"] == 0 || reqs["w2"] == 0 {
		t.Fatalf("requests per worker: %v; want both serving", reqs)
	}
}

// A worker started later on an empty directory catches up from the log
// and then serves alone.
func TestTopologyScaleOutAndIn(t *testing.T) {
	br := startBroker(t)
	url := br.ready["nats"]
	w1 := startWorker(t, url, "w1")
	w2 := startWorker(t, url, "w2")
	e := startEdge(t, url, "e")
	alice := client(t, e, "alice", true)
	bob := client(t, e, "bob", true)
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	alice.Expect(M{"cmd": "create_group", "group": "g"}, "success")
	bob.Expect(M{"cmd": "add_group", "group": "g"}, "success")

	startWorker(t, url, "w3")
	for _, w := range []*proc{w1, w2} {
		if err := w.stop(syscall.SIGTERM); err != nil {
			t.Fatalf("worker exit: %v\n%s", err, w.log())
		}
	}
	again := client(t, e, "alice", false)
	if m := again.Result(M{"cmd": "get_group_member", "group": "g"}); m.Str("member") != "alice|bob" {
		t.Fatalf("members: %s", m.Raw)
	}
	again.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "w3 here"}, "success")
	bob.Want("private_chat")
	again.Expect(M{"cmd": "register", "user": "bob", "password": "x"}, "failure")
	if reqs := workerRequests(t, url); len(reqs) != 1 || reqs["w3"] == 0 {
		t.Fatalf("requests per worker: %v; want w3 alone", reqs)
	}
}

// kill -9 of a worker under traffic: later requests all succeed through
// the other; in-flight ones get an answer, never a hang, and no message
// confirmed to the sender is lost.
func TestTopologyWorkerKilled(t *testing.T) {
	br := startBroker(t)
	url := br.ready["nats"]
	victim := startWorker(t, url, "victim")
	startWorker(t, url, "survivor")
	e := startEdge(t, url, "e")
	alice := client(t, e, "alice", true)
	bob := client(t, e, "bob", true)
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	for i := range 50 {
		alice.Send(M{"cmd": "private_chat", "user_to": "bob", "text": fmt.Sprint(i)})
	}
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// What the victim was handling when it died was not confirmed in
	// time; the edge then asks again for the message to be kept. Every
	// message answered success or offline reaches bob.
	owed, results := map[string]bool{}, map[string]int{}
	for i := range 50 {
		r := alice.Want("private_chat_reply").Str("result")
		results[r]++
		switch r {
		case "success", "offline":
			owed[fmt.Sprint(i)] = true
		case "unavailable":
		default:
			t.Fatalf("in-flight request answered %q", r)
		}
	}
	t.Logf("in-flight replies: %v", results)
	for i := range 20 {
		alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": fmt.Sprint("after ", i)}, "success")
		owed[fmt.Sprint("after ", i)] = true
	}
	// A message kept after its first attempt may arrive twice: with the
	// same msg_id, so that the recipient can tell.
	ids := map[string]string{}
	seen := func(m chattest.Msg) {
		text, id := m.Str("text"), m.Str("msg_id")
		if first, ok := ids[text]; ok && first != id {
			t.Fatalf("%q arrived as %s and as %s", text, first, id)
		}
		ids[text] = id
		delete(owed, text)
	}
	for len(owed) > 0 {
		seen(bob.Want("private_chat"))
	}
	bob.Sync()
	for _, m := range bob.Pending() {
		if m.Str("cmd") == "private_chat" {
			seen(m)
		}
	}
}

// kill -9 of an edge: its users' friends hear they went offline; the
// users log in again at once through another edge.
func TestTopologyEdgeKilled(t *testing.T) {
	br := startBroker(t)
	url := br.ready["nats"]
	startWorker(t, url, "w")
	e1 := startEdge(t, url, "e1")
	e2 := startEdge(t, url, "e2")
	alice := client(t, e1, "alice", true)
	bob := client(t, e2, "bob", true)
	carol := client(t, e2, "carol", true)
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	alice.Expect(M{"cmd": "add", "friend": "carol"}, "success")

	if err := e2.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	bob.Closed()
	carol.Closed()
	// bob comes back at once through e1; carol does not.
	client(t, e1, "bob", false)
	if m := alice.Want("friend_offline"); m.Str("friend") != "carol" {
		t.Fatalf("got %s", m.Raw)
	}
	// bob, logged in elsewhere, was not announced offline. Whether his
	// new login is announced depends on whether the broker had noticed
	// e2's death when e1 asked if anyone held him: either way alice's
	// view ends right, bob online.
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "still there?"}, "success")
	for _, m := range alice.Pending() {
		if m.Str("cmd") == "friend_offline" || m.Str("cmd") == "friend_login" && m.Str("friend") != "bob" {
			t.Fatalf("unexpected %s", m.Raw)
		}
	}
}

// The broker restarts: edges and workers reconnect on their own.
func TestTopologyBrokerRestart(t *testing.T) {
	addr, dir := freeAddr(t), t.TempDir()
	args := []string{"broker", "--nats-listen", addr, "--http", "", "--data", dir, "--lame-duck", "1s"}
	br := startProc(t, nil, args...)
	url := br.ready["nats"]
	startWorker(t, url, "w")
	e := startEdge(t, url, "e")
	alice := client(t, e, "alice", true)
	bob := client(t, e, "bob", true)
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")

	if err := br.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("broker exit: %v\n%s", err, br.log())
	}
	startProc(t, nil, args...)
	// The first requests may find the workers not yet back: they are
	// answered, never left hanging, and service resumes.
	deadline := time.Now().Add(chattest.Timeout)
	for {
		m := alice.Result(M{"cmd": "private_chat", "user_to": "bob", "text": "back"})
		if m.Str("result") == "success" {
			break
		}
		if m.Str("result") != "unavailable" || time.Now().After(deadline) {
			t.Fatalf("after broker restart: %s", m.Raw)
		}
	}
	bob.Want("private_chat")
	client(t, e, "carol", true)
}

// Three brokers in a cluster with the streams replicated three times:
// stopping one loses no user and the service carries on.
func TestTopologyThreeBrokerCluster(t *testing.T) {
	routes := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	var brokers []*proc
	var urls []string
	for i := range 3 {
		br := startBroker(t, "--name", fmt.Sprint("n", i), "--cluster-listen", routes[i], "--lame-duck", "1s",
			"--routes", "nats://"+strings.Join(routes, ",nats://"))
		brokers = append(brokers, br)
		urls = append(urls, br.ready["nats"])
	}
	all := strings.Join(urls, ",")
	startWorker(t, all, "w1", "--replicas", "3")
	startWorker(t, strings.Join([]string{urls[1], urls[2], urls[0]}, ","), "w2", "--replicas", "3")
	e := startEdge(t, all, "e", "--file-ports", filePorts(1)[0])
	reg := chattest.Dial(t, e.ready["client"])
	for i := range 10 {
		reg.Register(fmt.Sprint("u", i), "pw")
	}
	// Stop the broker every process dialed first. While the streams elect
	// new leaders, requests may be answered "unavailable"; then the
	// service carries on with every user.
	stopped := time.Now()
	if err := brokers[0].stop(syscall.SIGTERM); err != nil {
		t.Fatalf("broker exit: %v\n%s", err, brokers[0].log())
	}
	cl := chattest.Dial(t, e.ready["client"])
	for {
		m := cl.Result(M{"cmd": "register", "user": "newcomer", "password": "pw"})
		if m.Str("result") == "success" {
			break
		}
		if m.Str("result") != "unavailable" || time.Since(stopped) > 30*time.Second {
			t.Fatalf("register after losing a broker: %s", m.Raw)
		}
	}
	t.Logf("writes resumed %s after the broker stopped", time.Since(stopped).Round(100*time.Millisecond))
	var cls []*chattest.Client
	for i := range 10 {
		cls = append(cls, client(t, e, fmt.Sprint("u", i), false))
	}
	// A message kept for an offline user is read back from the new
	// leader at the user's next login.
	cls[0].Expect(M{"cmd": "add", "friend": "u1"}, "success")
	cls[1].Send(M{"cmd": "offline"})
	cls[1].Want("offline_reply")
	cls[0].Expect(M{"cmd": "private_chat", "user_to": "u1", "text": "kept"}, "offline")
	// So is a stored file, downloaded right after: the files bucket's
	// stream answers from its leader, not from a follower that may not
	// have the file yet.
	data := []byte(strings.Repeat("stored in a cluster ", 5000))
	cls[0].Send(M{"cmd": "send_file", "to_user": "u1", "length": fmt.Sprint(len(data)), "filename": "f", "offline": true})
	out := cls[0].FilePort(cls[0].Want("send_file_port_reply").Port())
	go func() { _, _ = out.Write(data) }()
	if m := cls[0].Want("send_file_reply"); m.Str("result") != "stored" {
		t.Fatalf("stored file: %s", m.Raw)
	}
	u1 := client(t, e, "u1", false)
	if m := u1.Want("private_chat"); m.Str("text") != "kept" {
		t.Fatalf("u1 got %s", m.Raw)
	}
	if got := chattest.ReadAll(t, u1.FilePort(u1.Want("recv_file_port_reply").Port())); string(got) != string(data) {
		t.Fatalf("downloaded %d bytes, want %d", len(got), len(data))
	}
	nc, err := nats.Connect(urls[1])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), chattest.Timeout)
	defer cancel()
	for _, name := range []string{"CHAT_EVENTS", "CHAT_INBOX", "OBJ_CHAT_FILES"} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if cfg := st.CachedInfo().Config; cfg.Replicas != 3 || cfg.AllowDirect {
			t.Errorf("%s: %d replicas, direct gets %v; want 3, false", name, cfg.Replicas, cfg.AllowDirect)
		}
	}
}

// tcpProxy forwards connections to target until cut; restore resumes.
// While silent it keeps every connection open and drops what it reads,
// as a dead host or a firewall that drops packets would.
type tcpProxy struct {
	ln     net.Listener
	target string
	silent atomic.Bool
	mu     sync.Mutex
	cut    bool
	conns  []net.Conn
}

func newProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.setCut(true) })
	go p.serve()
	return p
}

func (p *tcpProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go p.pipe(up, c)
		go p.pipe(c, up)
	}
}

// pipe copies src to dst until either fails, dropping what it reads
// while the proxy is silent. A silent proxy does not pass on a close
// either: the other side learns nothing.
func (p *tcpProxy) pipe(dst, src net.Conn) {
	defer func() {
		if !p.silent.Load() {
			dst.Close()
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.silent.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// setCut drops every connection through the proxy and refuses new ones,
// or lets them through again.
func (p *tcpProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for _, c := range p.conns {
			c.Close()
		}
		p.conns = nil
	}
}

// A worker whose link to the broker goes silent, without a FIN or an RST,
// is cut by the broker's pings: requests stop reaching it, and the other
// worker serves every one. With nats-server's default pings the silent
// worker would go on drawing half the requests, each failing after the
// request timeout, for minutes.
func TestTopologyHalfOpenWorker(t *testing.T) {
	ping := []string{"--nats-ping", "200ms"}
	b := startBroker(t, ping...)
	url := b.ready["nats"]
	link := newProxy(t, strings.TrimPrefix(url, "nats://"))
	startWorker(t, url, "near", ping...)
	startWorker(t, "nats://"+link.ln.Addr().String(), "far", ping...)
	e := startEdge(t, url, "e", append(ping, "--request-timeout", "500ms")...)
	alice := client(t, e, "alice", true)
	alice.Expect(M{"cmd": "create_group", "group": "g"}, "success")
	members := func() bool {
		return alice.Result(M{"cmd": "get_group_member", "group": "g"}).Str("member") == "alice"
	}
	for range 20 {
		if !members() {
			t.Fatal("get_group_member failed before the link went silent")
		}
	}
	if served := workerRequests(t, url); served["far"] == 0 || served["near"] == 0 {
		t.Fatalf("requests per worker before the link went silent: %v; want both serving", served)
	}

	link.silent.Store(true)
	silent := time.Now()
	for ok := 0; ok < 20; {
		if time.Since(silent) > 20*time.Second {
			t.Fatalf("requests still failing %s after the far worker's link went silent", time.Since(silent).Round(time.Second))
		}
		if members() {
			ok++
		} else {
			ok = 0
		}
	}
	t.Logf("every request served again %s after the link went silent", time.Since(silent).Round(100*time.Millisecond))
}

// brokenLink is a broker with a worker given up on edges only after a
// minute (an edge's own rejoin must not be what hands a message out), an
// edge "near" on the broker and an edge "far" behind a proxy the test can
// cut.
type brokenLink struct {
	url       string
	link      *tcpProxy
	worker    *proc
	near, far *proc
}

func startBrokenLink(t *testing.T, farArgs ...string) brokenLink {
	t.Helper()
	b := startBroker(t)
	l := brokenLink{url: b.ready["nats"]}
	l.link = newProxy(t, strings.TrimPrefix(l.url, "nats://"))
	l.worker = startWorker(t, l.url, "w", "--edge-dead-after", "1m")
	l.near = startEdge(t, l.url, "near")
	l.far = startEdge(t, "nats://"+l.link.ln.Addr().String(), "far", farArgs...)
	return l
}

// storeWhileCut logs in friends alice on near and bob on far, cuts far's
// link and has alice send bob a message, which is kept for him.
func (l brokenLink) storeWhileCut(t *testing.T) (alice, bob *chattest.Client) {
	t.Helper()
	alice = client(t, l.near, "alice", true)
	bob = client(t, l.far, "bob", true)
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	bob.Want("add_friend_reply")
	l.link.setCut(true)
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "while you were away"}, "offline")
	return alice, bob
}

// handedOutOnce checks that bob got the message storeWhileCut kept, and
// that one sent now arrives as usual, and alone.
func handedOutOnce(t *testing.T, alice, bob *chattest.Client) {
	t.Helper()
	if m := bob.Want("private_chat"); m.Str("text") != "while you were away" || m.Str("user_from") != "alice" {
		t.Fatalf("bob got %s", m.Raw)
	}
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "back"}, "success")
	if m := bob.Want("private_chat"); m.Str("text") != "back" {
		t.Fatalf("bob got %s after the stored message", m.Raw)
	}
}

// An edge whose NATS link drops for a moment, too short for the workers
// to give it up, hands its users what was stored for them while it was
// away, without their logging in again: the nudge that would have told
// them went out while the edge had no subscription.
func TestTopologyEdgeLinkDropsBriefly(t *testing.T) {
	l := startBrokenLink(t)
	alice, bob := l.storeWhileCut(t)
	l.link.setCut(false)
	handedOutOnce(t, alice, bob)
}

// A cut longer than the edge's request timeout: the heartbeat sent into
// it times out, and is written once the link is back. The edge takes that
// for its own write, not for having been given up, and registers nothing
// again.
func TestTopologyEdgeLinkDownPastAHeartbeat(t *testing.T) {
	l := startBrokenLink(t)
	client(t, l.far, "bob", true)
	l.link.setCut(true)
	deadline := time.Now().Add(chattest.Timeout)
	for !strings.Contains(l.far.log(), "heartbeat failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no heartbeat timed out:\n%s", l.far.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	l.link.setCut(false)
	for strings.Count(l.far.log(), "NATS reconnected") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the far edge did not reconnect:\n%s", l.far.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second) // four heartbeats
	if log := l.far.log(); strings.Contains(log, "given up for dead") {
		t.Fatalf("the edge thought itself given up:\n%s", log)
	}
}

// An edge back after a break fetches only for the users the inbox holds
// messages for: with many users and few messages stored, one look at the
// stream instead of a request to the workers for each.
func TestTopologyEdgeLinkBackFetchesOnlyWhatIsStored(t *testing.T) {
	l := startBrokenLink(t)
	alice := client(t, l.near, "alice", true)
	const n = 40
	var bob *chattest.Client
	for i := range n {
		cl := client(t, l.far, fmt.Sprint("u", i), true)
		if i == 7 {
			bob = cl
		}
	}
	alice.Expect(M{"cmd": "add", "friend": "u7"}, "success")
	bob.Want("add_friend_reply")

	l.link.setCut(true)
	alice.Expect(M{"cmd": "private_chat", "user_to": "u7", "text": "while you were away"}, "offline")
	before := endpointRequests(t, l.url, "inbox")["w"]
	l.link.setCut(false)
	if m := bob.Want("private_chat"); m.Str("text") != "while you were away" {
		t.Fatalf("u7 got %s", m.Raw)
	}
	deadline := time.Now().Add(chattest.Timeout)
	for !strings.Contains(l.far.log(), "stored messages fetched") {
		if time.Now().After(deadline) {
			t.Fatalf("the far edge did not finish fetching:\n%s", l.far.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := endpointRequests(t, l.url, "inbox")["w"] - before; got > 2 {
		t.Fatalf("%d fetches of stored messages for %d users, one of whom had any", got, n)
	}
}

// The same, but when the link comes back no worker is there to hand the
// stored message out: the edge keeps trying, and once a worker is back
// the user gets it, still without logging in again.
func TestTopologyEdgeLinkBackBeforeAnyWorker(t *testing.T) {
	l := startBrokenLink(t, "--request-timeout", "1s")
	alice, bob := l.storeWhileCut(t)
	if err := l.worker.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("worker: %v", err)
	}
	l.link.setCut(false)
	const retrying = "stored messages not fetched yet; trying again"
	deadline := time.Now().Add(chattest.Timeout)
	for !strings.Contains(l.far.log(), retrying) {
		if time.Now().After(deadline) {
			t.Fatalf("the far edge never said %q:\n%s", retrying, l.far.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	startWorker(t, l.url, "w2", "--edge-dead-after", "1m")
	handedOutOnce(t, alice, bob)
}

// Two regions: a hub with the workers, a leaf region with only an edge.
// Users in the two regions chat and see each other's presence; a cut
// between the regions is survived.
func TestTopologyTwoRegions(t *testing.T) {
	leafAddr := freeAddr(t)
	hub := startBroker(t, "--name", "hub", "--js-domain", "hub", "--leafnode-listen", leafAddr)
	link := newProxy(t, leafAddr)
	leaf := startBroker(t, "--name", "leaf", "--jetstream=false", "--leafnode-remote", "nats-leaf://"+link.ln.Addr().String())
	startWorker(t, hub.ready["nats"], "w")
	hubEdge := startEdge(t, hub.ready["nats"], "hub-edge")
	leafEdge := startEdge(t, leaf.ready["nats"], "leaf-edge", "--js-domain", "hub")

	alice := client(t, hubEdge, "alice", true)
	bob := client(t, leafEdge, "bob", true)
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	bob.Want("add_friend_reply")
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "across regions"}, "success")
	if m := bob.Want("private_chat"); m.Str("text") != "across regions" {
		t.Fatalf("bob got %s", m.Raw)
	}
	bob.Expect(M{"cmd": "private_chat", "user_to": "alice", "text": "hello hub"}, "success")
	alice.Want("private_chat")
	bob.Send(M{"cmd": "offline"})
	bob.Want("offline_reply")
	alice.Want("friend_offline")
	bob.Login("bob", "pw")
	alice.Want("friend_login")

	// Cut the link: the hub gives the leaf region's edge up, and bob's
	// requests are answered "unavailable" rather than left hanging.
	link.setCut(true)
	if m := alice.Want("friend_offline"); m.Str("friend") != "bob" {
		t.Fatalf("after the cut alice got %s", m.Raw)
	}
	bob.Expect(M{"cmd": "private_chat", "user_to": "alice", "text": "anyone?"}, "unavailable")
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "gone?"}, "offline")

	// Restore it: the leaf edge registers again, bob is announced back,
	// and the message kept for him while he looked offline arrives.
	link.setCut(false)
	if m := alice.Want("friend_login"); m.Str("friend") != "bob" {
		t.Fatalf("after the restore alice got %s", m.Raw)
	}
	if m := bob.Want("private_chat"); m.Str("text") != "gone?" {
		t.Fatalf("after the restore bob got %s", m.Raw)
	}
	deadline := time.Now().Add(chattest.Timeout)
	for {
		m := bob.Result(M{"cmd": "private_chat", "user_to": "alice", "text": "back"})
		if m.Str("result") == "success" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the restore bob got %s", m.Raw)
		}
	}
	alice.Want("private_chat")
}

// kill -9 of the recipient's edge in the middle of a file transfer: the
// sender's edge notices the relay stalled, closes the sender's data
// connection and says the transfer was aborted.
func TestTopologyEdgeKilledMidTransfer(t *testing.T) {
	br := startBroker(t)
	url := br.ready["nats"]
	startWorker(t, url, "w")
	ports := filePorts(2)
	e1 := startEdge(t, url, "e1", "--file-ports", ports[0], "--file-timeout", "2s")
	e2 := startEdge(t, url, "e2", "--file-ports", ports[1], "--file-timeout", "2s")
	alice := client(t, e1, "alice", true)
	bob := client(t, e2, "bob", true)
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	alice.Send(M{"cmd": "send_file", "to_user": "bob", "length": 256 << 20, "filename": "big"})
	send := alice.Want("send_file_port_reply")
	recv := bob.Want("recv_file_port_reply")
	in := bob.FilePort(recv.Port())
	out := alice.FilePort(send.Port())
	wrote := make(chan error, 1)
	go func() {
		buf := make([]byte, 1<<20)
		var err error
		for i := 0; i < 256 && err == nil; i++ {
			_, err = out.Write(buf)
		}
		wrote <- err
	}()
	if _, err := io.ReadFull(in, make([]byte, 4<<20)); err != nil { // the relay is running
		t.Fatal(err)
	}
	if err := e2.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-wrote:
		if err == nil {
			t.Fatal("the sender wrote all 256 MiB through a dead edge")
		}
	case <-time.After(chattest.Timeout):
		t.Fatal("the sender's data connection was left hanging")
	}
	if m := alice.Want("send_file_reply"); m.Str("result") != "aborted" {
		t.Fatalf("sender got %s", m.Raw)
	}
}

// Two brokers in a cluster, an edge on each: a user leaving both edges
// at once is announced offline every time. Each edge asks, once its own
// subscription is gone, whether the other still holds the user; while the
// brokers still tell each other about those subscriptions, a probe can be
// routed to a subscription that is no longer there and go unanswered.
func TestTopologyLeavingTwoBrokersAtOnce(t *testing.T) {
	routes := []string{freeAddr(t), freeAddr(t)}
	var urls []string
	for i := range 2 {
		br := startBroker(t, "--name", fmt.Sprint("n", i), "--cluster-listen", routes[i],
			"--routes", "nats://"+strings.Join(routes, ",nats://"))
		urls = append(urls, br.ready["nats"])
	}
	startWorker(t, urls[0], "w1")
	e1, e2 := startEdge(t, urls[0], "e1"), startEdge(t, urls[1], "e2")
	alice := client(t, e1, "alice", true)
	bob1 := client(t, e1, "bob", true)
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	for range 20 {
		bob2 := client(t, e2, "bob", false)
		alice.Sync()
		var wg sync.WaitGroup
		for _, cl := range []*chattest.Client{bob1, bob2} {
			wg.Go(func() { cl.Send(M{"cmd": "offline"}) })
		}
		wg.Wait()
		bob1.Want("offline_reply")
		bob2.Want("offline_reply")
		if m := alice.Want("friend_offline"); m.Str("friend") != "bob" {
			t.Fatalf("got %s", m.Raw)
		}
		bob1.Login("bob", "pw")
		if m := alice.Want("friend_login"); m.Str("friend") != "bob" {
			t.Fatalf("got %s", m.Raw)
		}
		for _, m := range alice.Pending() { // a repeat, when each saw the other gone
			if m.Str("cmd") != "friend_offline" {
				t.Fatalf("unexpected %s", m.Raw)
			}
		}
	}
}
