package workers_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/chatd-io/chatd/edge"
	"github.com/chatd-io/chatd/internal/chattest"
	"github.com/chatd-io/chatd/internal/metrics"
	"github.com/chatd-io/chatd/internal/proto"
	"github.com/chatd-io/chatd/internal/sessionlog"
	"github.com/chatd-io/chatd/workers"
)

type M = map[string]any

func login(t *testing.T, addr, user string) *chattest.Client {
	t.Helper()
	cl := chattest.Dial(t, addr)
	cl.Login(user, "pw")
	return cl
}

func TestLaterWorkerCatchesUpAndServesAlone(t *testing.T) {
	c := chattest.StartBroker(t, "")
	first := c.StartWorker("")
	addr := c.StartEdge().Addr().String()
	reg := chattest.Dial(t, addr)
	for _, u := range []string{"alice", "bob", "carol"} {
		reg.Register(u, "pw")
	}
	alice := login(t, addr, "alice")
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	alice.Expect(M{"cmd": "add", "friend": "carol"}, "success")
	alice.Expect(M{"cmd": "create_group", "group": "g"}, "success")
	bob := login(t, addr, "bob")
	bob.Expect(M{"cmd": "add_group", "group": "g"}, "success")

	second := c.StartWorker("")
	if got, want := second.Store().LastSeq(), first.Store().LastSeq(); got != want {
		t.Fatalf("new worker joined at event %d, log has %d", got, want)
	}
	first.Stop()

	again := chattest.Dial(t, addr)
	if m := again.Login("alice", "pw"); m.Str("friend") != "bob|carol" || m.Str("group") != "g" {
		t.Fatalf("after catch-up: %s", m.Raw)
	}
	if m := again.Result(M{"cmd": "get_group_member", "group": "g"}); m.Str("member") != "alice|bob" {
		t.Fatalf("members: %s", m.Raw)
	}
	reg.Expect(M{"cmd": "register", "user": "bob", "password": "x"}, "failure")
	again.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "still here"}, "success")
	bob.Want("private_chat")
}

// Writes go to one worker and the next read to another whose store lags
// far behind; the session's sequence makes the second wait instead of
// answering from the past.
func TestReadYourWritesAcrossWorkers(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	addr := c.StartEdge().Addr().String()
	reg := chattest.Dial(t, addr)
	for i := range 10 {
		reg.Register(fmt.Sprint("a", i), "pw")
		reg.Register(fmt.Sprint("b", i), "pw")
	}
	c.StartWorker("", func(o *workers.Options) { o.ApplyDelay = 20 * time.Millisecond })
	for i := range 10 {
		a := login(t, addr, fmt.Sprint("a", i))
		b := login(t, addr, fmt.Sprint("b", i))
		a.Expect(M{"cmd": "add", "friend": fmt.Sprint("b", i)}, "success")
		a.Expect(M{"cmd": "private_chat", "user_to": fmt.Sprint("b", i), "text": "hi"}, "success")
		// The other side learned of the friendship by notification and
		// answers at once.
		b.Want("add_friend_reply")
		b.Expect(M{"cmd": "private_chat", "user_to": fmt.Sprint("a", i), "text": "hi"}, "success")
		g := fmt.Sprint("g", i)
		a.Expect(M{"cmd": "create_group", "group": g}, "success")
		a.Expect(M{"cmd": "group_chat", "group": g, "text": "first"}, "success")
		b.Expect(M{"cmd": "add_group", "group": g}, "success")
		// A list read right after the write that changed it includes the change.
		if m := b.Result(M{"cmd": "get_group_member", "group": g}); m.Str("member") != chattest.Names(fmt.Sprint("a", i), fmt.Sprint("b", i)) {
			t.Fatalf("members right after joining: %s", m.Raw)
		}
		b.Expect(M{"cmd": "group_chat", "group": g, "text": "me too"}, "success")
		// A fresh session has seen nothing, yet its answers are not stale
		// either: negative answers are checked against the log.
		fresh := login(t, addr, fmt.Sprint("b", i))
		fresh.Expect(M{"cmd": "get_group_member", "group": g}, "success")
	}
}

func TestUniquenessIsDecidedByTheLog(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	c.StartWorker("")
	addr := c.StartEdge().Addr().String()
	const n = 8
	clients := make([]*chattest.Client, n)
	for i := range clients {
		clients[i] = chattest.Dial(t, addr)
		clients[i].Register(fmt.Sprint("u", i), "pw")
		clients[i].Login(fmt.Sprint("u", i), "pw")
	}
	tests := []struct {
		name string
		req  M
		lose string
	}{
		{"register", M{"cmd": "register", "user": "same", "password": "pw"}, "failure"},
		{"create_group", M{"cmd": "create_group", "group": "same"}, "group_exist"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			results := make([]string, n)
			var wg sync.WaitGroup
			for i, cl := range clients {
				cl.Send(tc.req)
				wg.Go(func() { results[i] = cl.Want(tc.req["cmd"].(string) + "_reply").Str("result") })
			}
			wg.Wait()
			wins := 0
			for _, r := range results {
				switch r {
				case "success":
					wins++
				case tc.lose:
				default:
					t.Fatalf("unexpected result %q", r)
				}
			}
			if wins != 1 {
				t.Fatalf("%d winners among %v", wins, results)
			}
		})
	}
}

// twoWorkers starts a broker, two workers and an edge; it returns the
// first worker and the edge's address.
func twoWorkers(t *testing.T) (*chattest.Worker, string) {
	t.Helper()
	c := chattest.StartBroker(t, "")
	first := c.StartWorker("")
	c.StartWorker("")
	return first, c.StartEdge().Addr().String()
}

func TestWorkerKilledMidTraffic(t *testing.T) {
	victim, addr := twoWorkers(t)
	reg := chattest.Dial(t, addr)
	reg.Register("alice", "pw")
	reg.Register("bob", "pw")
	alice := login(t, addr, "alice")
	bob := login(t, addr, "bob")
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")

	// Traffic in flight while the worker dies: each answer is success,
	// offline (a message the victim held, kept once nobody confirmed it)
	// or unavailable, never a hang; what was answered success or offline
	// reaches bob.
	for i := range 20 {
		alice.Send(M{"cmd": "private_chat", "user_to": "bob", "text": fmt.Sprint(i)})
	}
	victim.Kill()
	owed := map[string]bool{}
	for i := range 20 {
		switch r := alice.Want("private_chat_reply").Str("result"); r {
		case "success", "offline":
			owed[fmt.Sprint(i)] = true
		case "unavailable":
		default:
			t.Fatalf("in-flight request answered %q", r)
		}
	}
	// Every later request succeeds through the survivor.
	for i := range 20 {
		alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": fmt.Sprint("after ", i)}, "success")
	}
	// bob gets the later messages in order, after whichever in-flight ones made it.
	for next := 0; next < 20; {
		m := bob.Want("private_chat")
		delete(owed, m.Str("text"))
		if m.Str("text") == fmt.Sprint("after ", next) {
			next++
		}
	}
	for len(owed) > 0 {
		delete(owed, bob.Want("private_chat").Str("text"))
	}
	alice.Expect(M{"cmd": "create_group", "group": "survivors"}, "success")
	bob.Expect(M{"cmd": "add_group", "group": "survivors"}, "success")
}

func TestRestartResumesFromStoredSequence(t *testing.T) {
	brokerDir, workerDir := t.TempDir(), t.TempDir()
	c := chattest.StartBroker(t, brokerDir)
	w := c.StartWorker(workerDir)
	addr := c.StartEdge().Addr().String()
	reg := chattest.Dial(t, addr)
	reg.Register("alice", "pw")
	reg.Register("bob", "pw")
	alice := login(t, addr, "alice")
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	seq := w.Store().LastSeq()
	w.Stop()

	w2 := c.StartWorker(workerDir)
	if got := w2.Store().LastSeq(); got != seq {
		t.Fatalf("restarted store at %d, want %d", got, seq)
	}
	m := login(t, addr, "alice")
	m.Expect(M{"cmd": "add", "friend": "bob"}, "already_friend")
}

// A store that fails stops the worker following the log, and says so:
// its health check fails, so an orchestrator restarts it.
func TestStoreFailureIsReported(t *testing.T) {
	c := chattest.StartBroker(t, "")
	w := c.StartWorker("")
	addr := c.StartEdge().Addr().String()
	reg := chattest.Dial(t, addr)
	reg.Register("alice", "pw")
	if err := w.Health(); err != nil {
		t.Fatalf("healthy worker: %v", err)
	}
	if err := w.Store().Close(); err != nil { // the disk goes away
		t.Fatal(err)
	}
	reg.Send(M{"cmd": "register", "user": "bob", "password": "pw"})
	reg.Want("register_reply")
	deadline := time.Now().Add(chattest.Timeout)
	for w.Health() == nil {
		if time.Now().After(deadline) {
			t.Fatal("a store that cannot write is reported healthy")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := w.Readiness(); err == nil {
		t.Fatal("a worker whose store failed is reported ready")
	}
}

// aliceAndFriends starts a broker, a worker (changed by mod) and an
// edge, registers alice and friends, logs alice in and makes her their
// friend; it returns the cluster, the edge's address and alice.
func aliceAndFriends(t *testing.T, friends []string, mod ...func(*workers.Options)) (*chattest.Cluster, string, *chattest.Client) {
	t.Helper()
	c := chattest.StartBroker(t, "")
	c.StartWorker("", mod...)
	addr := c.StartEdge().Addr().String()
	reg := chattest.Dial(t, addr)
	for _, u := range append([]string{"alice"}, friends...) {
		reg.Register(u, "pw")
	}
	alice := login(t, addr, "alice")
	for _, f := range friends {
		alice.Expect(M{"cmd": "add", "friend": f}, "success")
	}
	return c, addr, alice
}

// askWorker sends from's private message to the workers as an edge does
// when the session does not know the recipient as a friend, and returns
// the result.
func askWorker(t *testing.T, nc *nats.Conn, from, to, text string) string {
	t.Helper()
	m := nats.NewMsg(proto.CmdPrefix + "private_chat")
	m.Header.Set(proto.HdrUser, from)
	m.Data = proto.Object("cmd", "private_chat", "user_to", to, "text", text)
	r, err := nc.RequestMsg(m, chattest.Timeout)
	if err != nil {
		t.Fatalf("private_chat to %s: %v", to, err)
	}
	return proto.StrField(r.Data, "result")
}

// A private message goes to the recipient's subject and the recipient's
// edge confirms to the sender. Here something still subscribed to the
// user's subject (an edge whose last session of the user just ended)
// sends the message back: it is kept for the user and the sender hears
// "offline"; the user gets it, once, at the next login. Whether the
// worker handed the message off or the sender's edge did.
func TestReturnedPrivateMessageIsStored(t *testing.T) {
	for _, byWorker := range []bool{true, false} {
		t.Run(fmt.Sprint("by worker ", byWorker), func(t *testing.T) {
			c, addr, alice := aliceAndFriends(t, []string{"bob"})

			stale := c.Conn("stale edge")
			returned := make(chan string, 1)
			sub, err := stale.Subscribe(proto.UserSubject("bob"), func(m *nats.Msg) {
				returned <- m.Reply
				_ = stale.Publish(m.Reply, m.Data)
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := stale.Flush(); err != nil {
				t.Fatal(err)
			}
			if byWorker {
				if r := askWorker(t, c.Conn("an edge"), "alice", "bob", "are you there"); r != "offline" {
					t.Fatalf("result %q", r)
				}
			} else if m := alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "are you there"}, "offline"); m.Str("user_to") != "bob" {
				t.Fatalf("reply: %s", m.Raw)
			}
			if reply := <-returned; !strings.HasPrefix(reply, proto.HandoffPrefix) {
				t.Fatalf("delivery's reply subject %q is not a handoff", reply)
			}
			_ = sub.Unsubscribe()

			bob := login(t, addr, "bob")
			if got := bob.Want("private_chat"); got.Str("text") != "are you there" || got.Str("user_from") != "alice" {
				t.Fatalf("stored message: %s", got.Raw)
			}
			bob.Sync()
			if extra := bob.Pending(); len(extra) != 0 {
				t.Fatalf("delivered more than once: %v", extra)
			}
		})
	}
}

// Messages sent while the recipient keeps logging in and out are each
// answered success (written to a session) or offline (kept), never lost
// and never delivered twice: the recipient ends up with every one, once.
func TestPrivateChatWhileRecipientComesAndGoes(t *testing.T) {
	_, addr, alice := aliceAndFriends(t, []string{"bob"})
	bob := chattest.Dial(t, addr)

	// Everything is pipelined, so the server sees the sends, logins and
	// logouts interleaved.
	const n = 400
	for i := range n {
		alice.Send(M{"cmd": "private_chat", "user_to": "bob", "text": fmt.Sprint("m", i)})
		switch i % 20 {
		case 0:
			bob.Send(M{"cmd": "login", "user": "bob", "password": "pw"})
		case 10:
			bob.Send(M{"cmd": "offline"})
		}
	}
	results := map[string]int{}
	for range n {
		results[alice.Want("private_chat_reply").Str("result")]++
	}
	if results["success"]+results["offline"] != n {
		t.Fatalf("replies: %v", results)
	}
	bob.Send(M{"cmd": "login", "user": "bob", "password": "pw"}) // the last one left it logged out
	got := map[string]int{}
	for len(got) < n {
		m := bob.Next()
		if m.Str("cmd") == "private_chat" {
			got[m.Str("text")]++
		}
	}
	bob.Sync()
	for _, m := range bob.Pending() {
		if m.Str("cmd") == "private_chat" {
			got[m.Str("text")]++
		}
	}
	for text, k := range got {
		if k != 1 {
			t.Errorf("%s delivered %d times", text, k)
		}
	}
	t.Logf("replies %v", results)
}

// A worker forgets what it handed off once its markers come back: the
// kept count returns to zero, for delivered and for stored messages.
func TestHandedOffMessagesAreForgotten(t *testing.T) {
	reg := metrics.New()
	c, addr, _ := aliceAndFriends(t, []string{"bob", "carol"}, func(o *workers.Options) { o.Metrics = reg })
	bob := login(t, addr, "bob")
	nc := c.Conn("an edge")
	for i := range 50 {
		if r := askWorker(t, nc, "alice", "bob", fmt.Sprint(i)); r != "success" {
			t.Fatalf("to bob: %s", r)
		}
		if r := askWorker(t, nc, "alice", "carol", fmt.Sprint(i)); r != "offline" {
			t.Fatalf("to carol: %s", r)
		}
	}
	for range 50 {
		bob.Want("private_chat")
	}
	kept := func() string {
		var b strings.Builder
		reg.Write(&b)
		for line := range strings.Lines(b.String()) {
			if v, ok := strings.CutPrefix(line, "chatd_worker_handoffs_kept "); ok {
				return strings.TrimSpace(v)
			}
		}
		return "missing"
	}
	deadline := time.Now().Add(5 * time.Second)
	for kept() != "0" {
		if time.Now().After(deadline) {
			t.Fatalf("chatd_worker_handoffs_kept is %s long after the last message", kept())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// inbox_done removes only the asking user's stored messages: sequences
// of somebody else's are left alone.
func TestInboxDoneRemovesOnlyTheUsersOwn(t *testing.T) {
	c, addr, alice := aliceAndFriends(t, []string{"bob"})
	chattest.Dial(t, addr).Register("carol", "pw")
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "for bob"}, "offline")

	// carol's session names sequences 1 to 10, bob's message among them.
	m := nats.NewMsg(proto.InternalPrefix + proto.IntInboxDone)
	m.Header.Set(proto.HdrUser, "carol")
	m.Header.Set(proto.HdrInboxSeqs, "1,2,3,4,5,6,7,8,9,10")
	m.Data = []byte("{}")
	r, err := c.Conn("someone").RequestMsg(m, chattest.Timeout)
	if err != nil {
		t.Fatal(err)
	}
	if proto.StrField(r.Data, "result") != "success" {
		t.Fatalf("inbox_done: %s", r.Data)
	}
	bob := login(t, addr, "bob")
	if m := bob.Want("private_chat"); m.Str("text") != "for bob" {
		t.Fatalf("got %s", m.Raw)
	}
}

// A worker closing under traffic: requests routed to it before it left
// the queue group are refused as "no responders" rather than served from
// a store being closed, and the edge asks the other worker.
func TestWorkerClosingUnderTraffic(t *testing.T) {
	first, addr := twoWorkers(t)
	alice := chattest.Dial(t, addr)
	alice.Register("alice", "pw")
	alice.Login("alice", "pw")
	alice.Expect(M{"cmd": "create_group", "group": "g"}, "success")
	stopped := make(chan struct{})
	go func() {
		time.Sleep(50 * time.Millisecond)
		first.Stop()
		close(stopped)
	}()
	// 16 requests in flight until the worker has stopped, and 200 more.
	ask := func() { alice.Send(M{"cmd": "get_group_member", "group": "g"}) }
	sent, after := 16, 0
	for range sent {
		ask()
	}
	for got := 0; got < sent; got++ {
		if m := alice.Want("get_group_member_reply"); m.Str("result") != "success" {
			t.Fatalf("reply %d: %s", got, m.Raw)
		}
		select {
		case <-stopped:
			if after == 200 {
				continue
			}
			after++
		default:
		}
		ask()
		sent++
	}
}

// TestCloseEndsHandlerGoroutines: the goroutines kept for the next
// request end with the worker, so an embedding program does not leak them.
func TestCloseEndsHandlerGoroutines(t *testing.T) {
	c := chattest.StartBroker(t, "")
	w := c.StartWorker("")
	alice := chattest.Dial(t, c.StartEdge().Addr().String())
	alice.Register("alice", "pw")
	alice.Login("alice", "pw")
	alice.Expect(M{"cmd": "create_group", "group": "g"}, "success")
	const n = 32
	for range n {
		alice.Send(M{"cmd": "get_group_member", "group": "g"})
	}
	for range n {
		alice.Want("get_group_member_reply")
	}
	if got := handlerGoroutines(); got == 0 {
		t.Fatal("no handler goroutine waits for the next request")
	}
	alice.Expect(M{"cmd": "offline"}, "success") // logged out while a worker can still tell her friends
	w.Stop()
	deadline := time.Now().Add(chattest.Timeout)
	for handlerGoroutines() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d handler goroutines outlived Close", handlerGoroutines())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func handlerGoroutines() int {
	buf := make([]byte, 1<<22)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), "workers.(*Worker).handle(")
}

// A login request may ask for the announcement to the user's friends and
// for the stored messages (an edge that subscribed first does): the
// reply carries both, after its first line, and says so. Without the
// asking, or with a wrong password, neither happens.
func TestLoginAnnouncesAndHandsOutWhenAsked(t *testing.T) {
	tests := []struct {
		name     string
		password string
		ask      bool
		want     string // login result
	}{
		{name: "asked", password: "pw", ask: true, want: "success"},
		{name: "not asked", password: "pw", ask: false, want: "success"},
		{name: "wrong password", password: "nope", ask: true, want: "password_error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, alice := aliceAndFriends(t, []string{"bob"})
			alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "kept"}, "offline")
			m := nats.NewMsg(proto.CmdPrefix + "login")
			if tt.ask {
				m.Header.Set(proto.HdrStored, "1")
				m.Header.Set(proto.HdrAnnounce, "1")
			}
			m.Data = []byte(`{"cmd":"login","user":"bob","password":"` + tt.password + `"}`)
			r, err := c.Conn("edge-like").RequestMsg(m, chattest.Timeout)
			if err != nil {
				t.Fatal(err)
			}
			first, rest, _ := strings.Cut(string(r.Data), "\n")
			if got := proto.StrField([]byte(first), "result"); got != tt.want {
				t.Fatalf("login: %s", r.Data)
			}
			granted := tt.ask && tt.want == "success"
			if got := r.Header.Get(proto.HdrStored) != "" && r.Header.Get(proto.HdrAnnounce) != ""; got != granted {
				t.Fatalf("reply headers %v", r.Header)
			}
			if got := proto.StrField([]byte(rest), "text"); granted != (got == "kept") || granted != (r.Header.Get(proto.HdrInboxSeqs) != "") {
				t.Fatalf("stored part %q, headers %v", rest, r.Header)
			}
			if granted {
				alice.Want("friend_login")
			}
			alice.Sync()
			if p := alice.Pending(); len(p) != 0 {
				t.Fatalf("alice got %v", p)
			}
		})
	}
}

// An edge stops beating and its record cannot be read when a worker gives
// it up (here the session log is gone for a moment): the heartbeat key is
// put back, the edge is given up again later, and its user's friend is
// told then.
func TestDeadEdgeWithUnreadableRecordIsGivenUpLater(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("", func(o *workers.Options) { o.EdgeDeadAfter = 500 * time.Millisecond })
	// The live edge beats well within that.
	addr := c.StartEdge(func(o *edge.Options) { o.Heartbeat = 50 * time.Millisecond }).Addr().String()
	reg := chattest.Dial(t, addr)
	reg.Register("alice", "pw")
	reg.Register("bob", "pw")
	alice := login(t, addr, "alice")
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	nc := c.Conn("dead edge")
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), chattest.Timeout)
	defer cancel()
	kv, err := js.KeyValue(ctx, proto.SessionBucket)
	if err != nil {
		t.Fatal(err)
	}
	key := proto.EdgeKey("DEADEDGE")
	watch, err := kv.Watch(ctx, key, jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Stop()
	if _, err := js.Publish(ctx, sessionlog.Subject("DEADEDGE", 0), sessionlog.Append(nil, "bob", true)); err != nil {
		t.Fatal(err)
	}
	logCfg, err := js.Stream(ctx, sessionlog.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, key, []byte(`{"name":"dead"}`)); err != nil {
		t.Fatal(err)
	}
	<-watch.Updates() // our put
	if err := js.DeleteStream(ctx, sessionlog.Stream); err != nil {
		t.Fatal(err)
	}
	next := func(want jetstream.KeyValueOp) {
		t.Helper()
		select {
		case e := <-watch.Updates():
			if e.Operation() != want {
				t.Fatalf("heartbeat key: %v, want %v", e.Operation(), want)
			}
		case <-ctx.Done():
			t.Fatalf("heartbeat key: no %v", want)
		}
	}
	next(jetstream.KeyValueDelete) // given up, record unreadable
	next(jetstream.KeyValuePut)    // put back
	if _, err := js.CreateStream(ctx, logCfg.CachedInfo().Config); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, sessionlog.Subject("DEADEDGE", 0), sessionlog.Append(nil, "bob", true)); err != nil {
		t.Fatal(err)
	}
	if m := alice.Want("friend_offline"); m.Str("friend") != "bob" {
		t.Fatalf("alice got %s", m.Raw)
	}
}
