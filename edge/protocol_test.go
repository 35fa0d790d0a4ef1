package edge_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/chatd-io/chatd/edge"
	"github.com/chatd-io/chatd/internal/chattest"
	"github.com/chatd-io/chatd/internal/proto"
	"github.com/chatd-io/chatd/internal/sessionlog"
	"github.com/chatd-io/chatd/workers"
)

type M = map[string]any

// start runs a broker, one worker and one edge, and returns the edge address.
func start(t *testing.T) string {
	t.Helper()
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	return c.StartEdge().Addr().String()
}

// users registers and logs in each name on its own connection.
func users(t *testing.T, addr string, names ...string) []*chattest.Client {
	t.Helper()
	var out []*chattest.Client
	for _, n := range names {
		cl := chattest.Dial(t, addr)
		cl.Register(n, "pw-"+n)
		cl.Login(n, "pw-"+n)
		out = append(out, cl)
	}
	return out
}

func befriend(t *testing.T, a *chattest.Client, b *chattest.Client, nameB string) {
	t.Helper()
	a.Expect(M{"cmd": "add", "friend": nameB}, "success")
	b.Want("add_friend_reply")
}

func TestRegister(t *testing.T) {
	cl := chattest.Dial(t, start(t))
	tests := []struct {
		name         string
		req          M
		result       string
		reason       string
		absentReason bool
	}{
		{"plain", M{"user": "alice", "password": "secret"}, "success", "", true},
		{"duplicate", M{"user": "alice", "password": "other"}, "failure", "user_exists", false},
		{"chinese", M{"user": "小明", "password": "11111"}, "success", "", true},
		{"dot", M{"user": "a.b", "password": "x"}, "success", "", true},
		{"star", M{"user": "*", "password": "x"}, "success", "", true},
		{"gt", M{"user": ">", "password": "x"}, "success", "", true},
		{"32 runes", M{"user": strings.Repeat("名", 32), "password": "x"}, "success", "", true},
		{"33 runes", M{"user": strings.Repeat("名", 33), "password": "x"}, "failure", "invalid_user", false},
		{"empty name", M{"user": "", "password": "x"}, "failure", "invalid_user", false},
		{"space", M{"user": "a b", "password": "x"}, "failure", "invalid_user", false},
		{"pipe", M{"user": "a|b", "password": "x"}, "failure", "invalid_user", false},
		{"control", M{"user": "a\u0001", "password": "x"}, "failure", "invalid_user", false},
		{"number name", M{"user": 42, "password": "x"}, "failure", "invalid_user", false},
		{"missing name", M{"password": "x"}, "failure", "invalid_user", false},
		{"empty password", M{"user": "bob", "password": ""}, "failure", "invalid_password", false},
		{"long password", M{"user": "bob", "password": strings.Repeat("p", 129)}, "failure", "invalid_password", false},
		{"number password", M{"user": "bob", "password": 1}, "failure", "invalid_password", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.req["cmd"] = "register"
			m := cl.Result(tc.req)
			if m.Str("result") != tc.result || m.Str("reason") != tc.reason {
				t.Fatalf("reply %s, want result %q reason %q", m.Raw, tc.result, tc.reason)
			}
			if _, has := m.Fields["reason"]; tc.absentReason && has {
				t.Fatalf("success carries a reason: %s", m.Raw)
			}
		})
	}
	// Names that look like NATS wildcards are ordinary, separate users.
	for _, n := range []string{"*", ">", "a.b", "小明"} {
		c2 := chattest.Dial(t, cl.Conn.RemoteAddr().String())
		c2.Expect(M{"cmd": "login", "user": n, "password": "11111"}, map[bool]string{true: "success", false: "password_error"}[n == "小明"])
	}
}

func TestLogin(t *testing.T) {
	addr := start(t)
	cl := chattest.Dial(t, addr)
	cl.Register("alice", "pw")
	cl.Expect(M{"cmd": "login", "user": "nobody", "password": "pw"}, "user_not_exist")
	cl.Expect(M{"cmd": "login", "user": "a b", "password": "pw"}, "user_not_exist")
	cl.Expect(M{"cmd": "login", "user": "alice", "password": "wrong"}, "password_error")
	cl.Expect(M{"cmd": "login", "user": "alice", "password": 5}, "password_error")
	m := cl.Login("alice", "pw")
	if m.Raw != `{"cmd":"login_reply","result":"success","friend":"","group":""}` {
		t.Fatalf("first login reply %s", m.Raw)
	}
	// Friends and groups come back in the order they were made.
	bobs := users(t, addr, "bob", "carol")
	cl.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	cl.Expect(M{"cmd": "add", "friend": "carol"}, "success")
	cl.Expect(M{"cmd": "create_group", "group": "g2"}, "success")
	bobs[0].Expect(M{"cmd": "create_group", "group": "g1"}, "success")
	cl.Expect(M{"cmd": "add_group", "group": "g1"}, "success")
	again := chattest.Dial(t, addr)
	m = again.Login("alice", "pw")
	if m.Str("friend") != "bob|carol" || m.Str("group") != "g2|g1" {
		t.Fatalf("login reply %s, want friends bob|carol and groups g2|g1", m.Raw)
	}
}

func TestNotLoggedIn(t *testing.T) {
	cl := chattest.Dial(t, start(t))
	for _, cmd := range []string{"add", "create_group", "add_group", "private_chat", "group_chat", "get_group_member", "offline", "send_file"} {
		m := cl.Result(M{"cmd": cmd, "user": "x", "friend": "y", "group": "g", "user_to": "y", "text": "t"})
		if m.Str("result") != "not_logged_in" {
			t.Errorf("%s before login: %s", cmd, m.Raw)
		}
	}
	cl.Send(M{"cmd": "ping"})
	if m := cl.Next(); m.Raw != `{"cmd":"pong"}` {
		t.Fatalf("ping: %s", m.Raw)
	}
}

func TestActingUserMustBeSessionUser(t *testing.T) {
	addr := start(t)
	cls := users(t, addr, "alice", "bob", "eve")
	alice, bob, eve := cls[0], cls[1], cls[2]
	befriend(t, alice, bob, "bob")
	alice.Expect(M{"cmd": "create_group", "group": "g"}, "success")
	tests := []M{
		{"cmd": "add", "user": "alice", "friend": "bob"},
		{"cmd": "create_group", "user": "alice", "group": "h"},
		{"cmd": "add_group", "user": "alice", "group": "g"},
		{"cmd": "private_chat", "user_from": "alice", "user_to": "bob", "text": "spoof"},
		{"cmd": "group_chat", "user": "alice", "group": "g", "text": "spoof"},
		{"cmd": "add", "user": 7, "friend": "bob"},
	}
	for _, req := range tests {
		eve.Expect(req, "forbidden")
	}
	eve.Send(M{"cmd": "offline", "user": "alice"})
	if m := eve.Want("offline_reply"); m.Str("result") != "forbidden" {
		t.Fatalf("offline naming someone else: %s", m.Raw)
	}
	// Nothing happened: no group h, eve not in g, bob got nothing from eve.
	eve.Expect(M{"cmd": "get_group_member", "group": "h"}, "group_not_exist")
	if m := eve.Result(M{"cmd": "get_group_member", "group": "g"}); m.Str("member") != "alice" {
		t.Fatalf("members of g: %s", m.Raw)
	}
	eve.Expect(M{"cmd": "add", "user": "eve", "friend": "bob"}, "success")
	bob.Want("add_friend_reply")
	// A friend's name does not make a spoof pass either.
	eve.Expect(M{"cmd": "private_chat", "user_from": "alice", "user_to": "bob", "text": "spoof"}, "forbidden")
	eve.Expect(M{"cmd": "private_chat", "user_from": "eve", "user_to": "bob", "text": "real"}, "success")
	if m := bob.Want("private_chat"); m.Str("user_from") != "eve" || m.Str("text") != "real" {
		t.Fatalf("bob got %s; a spoofed message came first?", m.Raw)
	}
	// Eve still logged in: the forbidden offline did not log her out.
	eve.Expect(M{"cmd": "create_group", "group": "eves"}, "success")
}

func TestFriends(t *testing.T) {
	addr := start(t)
	cls := users(t, addr, "alice", "bob")
	alice, bob := cls[0], cls[1]
	alice.Expect(M{"cmd": "add", "friend": "nobody"}, "user_not_exist")
	alice.Expect(M{"cmd": "add", "friend": "alice"}, "invalid")
	alice.Expect(M{"cmd": "add", "friend": "a|b"}, "invalid")
	alice.Expect(M{"cmd": "add", "friend": 3}, "invalid")
	m := alice.Expect(M{"cmd": "add", "user": "alice", "friend": "bob"}, "success")
	if m.Raw != `{"cmd":"add_reply","result":"success","friend":"bob"}` {
		t.Fatalf("add reply %s", m.Raw)
	}
	if m := bob.Want("add_friend_reply"); m.Raw != `{"cmd":"add_friend_reply","result":"alice"}` {
		t.Fatalf("other side got %s", m.Raw)
	}
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "already_friend")
	bob.Expect(M{"cmd": "add", "friend": "alice"}, "already_friend")
}

func TestPrivateChat(t *testing.T) {
	addr := start(t)
	cls := users(t, addr, "alice", "bob", "carol")
	alice, bob, carol := cls[0], cls[1], cls[2]
	if m := alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "hi"}, "not_friend"); m.Str("user_to") != "bob" {
		t.Fatalf("reply without user_to: %s", m.Raw)
	}
	alice.Expect(M{"cmd": "private_chat", "user_to": "ghost", "text": "hi"}, "user_not_exist")
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": 1}, "invalid")
	befriend(t, alice, bob, "bob")
	m := alice.Expect(M{"cmd": "private_chat", "user_from": "alice", "user_to": "bob", "text": "hello 小明 \"quoted\""}, "success")
	if m.Str("user_to") != "bob" {
		t.Fatalf("reply %s", m.Raw)
	}
	got := bob.Want("private_chat")
	if got.Str("user_from") != "alice" || got.Str("user_to") != "bob" || got.Str("text") != "hello 小明 \"quoted\"" ||
		got.Str("msg_id") == "" || got.Fields["time"] == nil {
		t.Fatalf("delivered %s", got.Raw)
	}
	// Friendship is mutual, and carol (no friend) gets nothing.
	bob.Expect(M{"cmd": "private_chat", "user_to": "alice", "text": "back"}, "success")
	alice.Want("private_chat")
	carol.Sync()
	if p := carol.Pending(); len(p) != 0 {
		t.Fatalf("carol received %v", p)
	}
}

func TestGroups(t *testing.T) {
	addr := start(t)
	cls := users(t, addr, "alice", "bob", "carol", "dave")
	alice, bob, carol, dave := cls[0], cls[1], cls[2], cls[3]
	alice.Expect(M{"cmd": "create_group", "group": "a b"}, "invalid")
	alice.Expect(M{"cmd": "create_group", "group": 9}, "invalid")
	if m := alice.Expect(M{"cmd": "create_group", "user": "alice", "group": "学习"}, "success"); m.Str("group") != "学习" {
		t.Fatalf("create reply %s", m.Raw)
	}
	alice.Expect(M{"cmd": "create_group", "group": ">"}, "success")
	bob.Expect(M{"cmd": "create_group", "group": "学习"}, "group_exist")
	alice.Expect(M{"cmd": "add_group", "group": "学习"}, "user_in_group")
	bob.Expect(M{"cmd": "add_group", "group": "nope"}, "group_not_exist")
	if m := bob.Expect(M{"cmd": "add_group", "user": "bob", "group": "学习"}, "success"); m.Str("group") != "学习" {
		t.Fatalf("add_group reply %s", m.Raw)
	}
	carol.Expect(M{"cmd": "add_group", "group": "学习"}, "success")
	bob.Expect(M{"cmd": "add_group", "group": "学习"}, "user_in_group")

	m := dave.Result(M{"cmd": "get_group_member", "group": "学习"})
	if m.Raw != `{"cmd":"get_group_member_reply","result":"success","member":"alice|bob|carol","group":"学习"}` {
		t.Fatalf("members: %s", m.Raw)
	}
	if m := dave.Result(M{"cmd": "get_group_member", "group": "nope"}); m.Str("result") != "group_not_exist" || m.Str("group") != "nope" {
		t.Fatalf("missing group: %s", m.Raw)
	}
	// A group named ">" is its own group, not a wildcard over the others.
	if m := dave.Result(M{"cmd": "get_group_member", "group": ">"}); m.Str("member") != "alice" {
		t.Fatalf("members of '>': %s", m.Raw)
	}

	dave.Expect(M{"cmd": "group_chat", "group": "学习", "text": "let me in"}, "not_member")
	dave.Expect(M{"cmd": "group_chat", "group": "nope", "text": "x"}, "group_not_exist")
	bob.Expect(M{"cmd": "group_chat", "user": "bob", "group": "学习", "text": "hello all"}, "success")
	for _, cl := range []*chattest.Client{alice, carol} {
		got := cl.Want("group_chat")
		if got.Str("user") != "bob" || got.Str("group") != "学习" || got.Str("text") != "hello all" || got.Str("msg_id") == "" {
			t.Fatalf("delivered %s", got.Raw)
		}
	}
	// Not echoed to the sender, nothing to outsiders: carol's next message
	// travels the same path after bob's, so an echo would already be here.
	carol.Expect(M{"cmd": "group_chat", "group": "学习", "text": "second"}, "success")
	if got := bob.Want("group_chat"); got.Str("text") != "second" {
		t.Fatalf("bob's own message came back to him: %s", got.Raw)
	}
	if got := alice.Want("group_chat"); got.Str("text") != "second" {
		t.Fatalf("alice got %s", got.Raw)
	}
	dave.Sync()
	if p := dave.Pending(); len(p) != 0 {
		t.Fatalf("a non-member received %v", p)
	}
}

func TestFraming(t *testing.T) {
	addr := start(t)
	cl := chattest.Dial(t, addr)
	cl.Register("alice", "pw")

	// The seed client's pretty-printed, undelimited JSON.
	cl.Send("{\n    \"cmd\": \"login\",\n    \"password\": \"pw\",\n    \"user\": \"alice\"\n}{\n    \"cmd\": \"ping\"\n}")
	cl.Want("login_reply")
	cl.Want("pong")
	// Several objects in one segment, with ';' and newlines between.
	cl.Send(`{"cmd":"ping","id":1};{"cmd":"ping","id":"two"}` + "\n" + `{"cmd":"get_group_member","group":"x","id":{"k":[1]}}`)
	for _, want := range []string{`{"id":1,"cmd":"pong"}`, `{"id":"two","cmd":"pong"}`} {
		if m := cl.Next(); m.Raw != want {
			t.Fatalf("got %s, want %s", m.Raw, want)
		}
	}
	if m := cl.Next(); m.Str("cmd") != "get_group_member_reply" || m.Raw[:15] != `{"id":{"k":[1]}` {
		t.Fatalf("id not echoed: %s", m.Raw)
	}
	// One object split over many segments.
	req := `{"cmd":"get_group_member","group":"学习"}`
	for i := 0; i < len(req); i++ {
		cl.Send(req[i : i+1])
	}
	cl.Want("get_group_member_reply")

	// Recoverable errors keep the connection open.
	recoverable := []struct{ in, want string }{
		{`[1,2]`, `{"cmd":"error","result":"invalid"}`},
		{`"str"`, `{"cmd":"error","result":"invalid"}`},
		{`42 `, `{"cmd":"error","result":"invalid"}`},
		{`{"nocmd":1}`, `{"cmd":"error","result":"invalid"}`},
		{`{"cmd":7}`, `{"cmd":"error","result":"invalid"}`},
		{`{"cmd":"fly"}`, `{"cmd":"error","result":"unknown_cmd","detail":"fly"}`},
		{`{"cmd":"add","friend":["x"]}`, `{"cmd":"add_reply","result":"invalid"}`},
	}
	for _, tc := range recoverable {
		cl.Send(tc.in)
		if m := cl.Next(); m.Raw != tc.want {
			t.Fatalf("%s: got %s, want %s", tc.in, m.Raw, tc.want)
		}
	}
	cl.Sync()

	fatal := []struct {
		name, in, want string
	}{
		{"invalid json", `{"cmd":"ping",,}`, `{"cmd":"error","result":"invalid_json"}`},
		{"stray brace", `}`, `{"cmd":"error","result":"invalid_json"}`},
		{"too large", `{"cmd":"ping","pad":"` + strings.Repeat("x", 70<<10) + `"}`, `{"cmd":"error","result":"too_large"}`},
	}
	for _, tc := range fatal {
		t.Run(tc.name, func(t *testing.T) {
			c := chattest.Dial(t, addr)
			c.Send(tc.in)
			got := c.Closed()
			if len(got) != 1 || got[0].Raw != tc.want {
				t.Fatalf("got %v before close, want %s", got, tc.want)
			}
		})
	}
	// The neighbour is unaffected.
	cl.Sync()

	// A client that sends its requests and shuts its side of the socket
	// (nc -N, a script) still gets every answer before the server closes.
	c := chattest.Dial(t, addr)
	c.Send(`{"cmd":"login","user":"alice","password":"pw"}{"cmd":"get_group_member","group":"x"}{"cmd":"ping"}`)
	if err := c.Conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got := c.Closed()
	if len(got) != 3 || got[0].Str("cmd") != "login_reply" || got[1].Str("cmd") != "get_group_member_reply" || got[2].Raw != `{"cmd":"pong"}` {
		t.Fatalf("after a half-close: %v", got)
	}
}

func TestPresence(t *testing.T) {
	addr := start(t)
	cls := users(t, addr, "alice", "bob")
	alice, bob := cls[0], cls[1]
	befriend(t, alice, bob, "bob")

	// bob's second device: no second friend_login, and both devices get deliveries.
	bob2 := chattest.Dial(t, addr)
	bob2.Login("bob", "pw-bob")
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "to both"}, "success")
	for _, cl := range []*chattest.Client{bob, bob2} {
		if m := cl.Want("private_chat"); m.Str("text") != "to both" {
			t.Fatalf("got %s", m.Raw)
		}
	}
	// One device leaves: no friend_offline yet. The other closes its
	// socket without a word: now bob is offline.
	bob.Send(M{"cmd": "offline", "user": "bob"})
	bob.Want("offline_reply")
	alice.Sync()
	bob2.Conn.Close()
	if m := alice.Want("friend_offline"); m.Raw != `{"cmd":"friend_offline","friend":"bob"}` {
		t.Fatalf("got %s", m.Raw)
	}
	for _, m := range alice.Pending() {
		if m.Str("cmd") == "friend_offline" || m.Str("cmd") == "friend_login" {
			t.Fatalf("unexpected presence message before the last session ended: %s", m.Raw)
		}
	}
	// The connection that sent offline stays open and can log in again.
	bob.Login("bob", "pw-bob")
	if m := alice.Want("friend_login"); m.Raw != `{"cmd":"friend_login","friend":"bob"}` {
		t.Fatalf("got %s", m.Raw)
	}
	// A second login on another connection does not announce again; the
	// ping barrier shows nothing else is queued for alice.
	bob3 := chattest.Dial(t, addr)
	bob3.Login("bob", "pw-bob")
	bob3.Expect(M{"cmd": "private_chat", "user_to": "alice", "text": "after"}, "success")
	if m := alice.Want("private_chat"); m.Str("text") != "after" {
		t.Fatalf("got %s", m.Raw)
	}
	for _, m := range alice.Pending() {
		t.Fatalf("unexpected %s", m.Raw)
	}
	// A socket that dies (reset by the peer, no offline, no FIN) ends its
	// session too.
	bob.Send(M{"cmd": "offline"})
	bob.Want("offline_reply")
	bob3.Conn.(*net.TCPConn).SetLinger(0)
	bob3.Conn.Close()
	if m := alice.Want("friend_offline"); m.Str("friend") != "bob" {
		t.Fatalf("got %s", m.Raw)
	}
}

// bobAway starts a server where alice and bob are friends and bob has
// logged out again, his connection still open.
func bobAway(t *testing.T) (addr string, alice, bob *chattest.Client) {
	t.Helper()
	addr = start(t)
	cls := users(t, addr, "alice", "bob")
	alice, bob = cls[0], cls[1]
	befriend(t, alice, bob, "bob")
	bob.Send(M{"cmd": "offline"})
	bob.Want("offline_reply")
	alice.Want("friend_offline")
	return addr, alice, bob
}

func TestOfflineMessages(t *testing.T) {
	addr, alice, bob := bobAway(t)
	texts := []string{"one", "two", "three", "四"}
	for _, txt := range texts {
		if m := alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": txt}, "offline"); m.Str("user_to") != "bob" {
			t.Fatalf("reply %s", m.Raw)
		}
	}
	bob.Send(M{"cmd": "login", "user": "bob", "password": "pw-bob"})
	if m := bob.Next(); m.Str("cmd") != "login_reply" || m.Str("result") != "success" {
		t.Fatalf("first message after login is %s, want login_reply", m.Raw)
	}
	for _, txt := range texts {
		m := bob.Next()
		if m.Str("cmd") != "private_chat" || m.Str("text") != txt || m.Str("user_from") != "alice" {
			t.Fatalf("got %s, want stored %q", m.Raw, txt)
		}
	}
	// Exactly once: another login finds nothing stored.
	bob2 := chattest.Dial(t, addr)
	bob2.Login("bob", "pw-bob")
	bob2.Sync()
	if p := bob2.Pending(); len(p) != 0 {
		t.Fatalf("stored messages delivered twice: %v", p)
	}
}

// Stored messages are removed only once written: a client that logs in
// and is gone before they reach its socket finds them at the next login.
func TestStoredMessagesOutliveAVanishedSession(t *testing.T) {
	addr, alice, _ := bobAway(t)
	const n = 20
	for i := range n {
		alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": fmt.Sprint("m", i)}, "offline")
	}
	// Log in and close at once: what the server writes next meets a
	// closed socket, which answers with a reset.
	gone, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gone.Write([]byte(`{"cmd":"login","user":"bob","password":"pw-bob"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	_ = gone.Close()

	again := chattest.Dial(t, addr)
	again.Login("bob", "pw-bob")
	for i := 0; i < n; {
		m := again.Next()
		if m.Str("cmd") != "private_chat" {
			continue
		}
		if m.Str("text") != fmt.Sprint("m", i) {
			t.Fatalf("got %s, want m%d", m.Raw, i)
		}
		i++
	}
}

func TestNoWorkerMeansUnavailable(t *testing.T) {
	c := chattest.StartBroker(t, "")
	e := c.StartEdge(func(o *edge.Options) { o.RequestTimeout = time.Second })
	cl := chattest.Dial(t, e.Addr().String())
	cl.Expect(M{"cmd": "register", "user": "a", "password": "b"}, "unavailable")
	cl.Expect(M{"cmd": "login", "user": "a", "password": "b"}, "unavailable")
	cl.Sync()
}

// Logins and logouts racing the session registry's heartbeat (here every
// millisecond) all complete: nothing waits for the registry while holding
// what the registry needs.
func TestLoginStormAgainstRegistry(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	addr := c.StartEdge(func(o *edge.Options) { o.Heartbeat = time.Millisecond }).Addr().String()
	const n = 8
	reg := chattest.Dial(t, addr)
	for i := range n {
		reg.Register(fmt.Sprint("s", i), "pw")
	}
	var wg sync.WaitGroup
	for i := range n {
		cl := chattest.Dial(t, addr)
		wg.Go(func() {
			for range 15 {
				cl.Send(M{"cmd": "login", "user": fmt.Sprint("s", i), "password": "pw"})
				cl.Send(M{"cmd": "offline"})
			}
		})
		defer func() {
			for range 15 {
				if m := cl.Want("login_reply"); m.Str("result") != "success" {
					t.Errorf("login: %s", m.Raw)
				}
			}
		}()
	}
	wg.Wait()
}

// After logins and logouts racing one another, the session log replays
// to exactly the users still logged in: a user's changes reach it in the
// order they happened, many to a message or one, also when they travel
// on several delivery connections. After a storm long enough, a
// heartbeat rewrites the list and purges what came before, and the log
// replays the same.
func TestRegistryMatchesSessions(t *testing.T) {
	tests := []struct {
		conns, rounds int
		rewritten     bool
	}{{0, 20, false}, {1, 20, false}, {3, 20, false}, {0, 200, true}, {3, 200, true}}
	for _, tt := range tests {
		name := fmt.Sprint(tt.conns, " delivery connections, ", tt.rounds, " rounds")
		t.Run(name, func(t *testing.T) { registryMatchesSessions(t, tt.conns, tt.rounds, tt.rewritten) })
	}
}

func registryMatchesSessions(t *testing.T, deliveries, rounds int, rewritten bool) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	addr := c.StartEdge(c.Deliveries(deliveries), func(o *edge.Options) { o.Heartbeat = 100 * time.Millisecond }).Addr().String()
	const n = 8
	reg := chattest.Dial(t, addr)
	for i := range n {
		reg.Register(fmt.Sprint("r", i), "pw")
	}
	want := map[string]bool{}
	var wg sync.WaitGroup
	var clients []*chattest.Client
	for i := range n {
		cl := chattest.Dial(t, addr)
		clients = append(clients, cl)
		user := fmt.Sprint("r", i)
		stayOn := i%2 == 0
		if stayOn {
			want[user] = true
		}
		wg.Go(func() {
			for r := range rounds {
				cl.Send(M{"cmd": "login", "user": user, "password": "pw"})
				if r < rounds-1 || !stayOn {
					cl.Send(M{"cmd": "offline"})
				}
			}
		})
	}
	wg.Wait()
	for _, cl := range clients {
		cl.Sync()
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, err := jetstream.New(c.Conn("observer"))
	if err != nil {
		t.Fatal(err)
	}
	log, err := js.Stream(ctx, sessionlog.Stream)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]bool
	var msgs uint64
	for ctx.Err() == nil { // logouts are not waited for: poll until they land
		// "*": the record of every edge, and there is one.
		if got, err = sessionlog.Read(ctx, log, "*"); err != nil {
			t.Fatal(err)
		}
		info, err := log.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Rewritten: what came before the last rewrite is purged.
		msgs = info.State.Msgs
		if maps.Equal(got, want) && (info.State.FirstSeq > 1) == rewritten {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("registry holds %v in %d messages, want %v", slices.Sorted(maps.Keys(got)), msgs, slices.Sorted(maps.Keys(want)))
}

// A private message sent while no worker is up waits for one (a rolling
// restart), and a worker that answers it confirms delivery whether the
// recipient is on the sender's edge or another.
// A message the edge cannot deliver itself (here: to a friend who is
// offline, to be kept) waits for a worker while none is there.
func TestPrivateChatWaitsForAWorker(t *testing.T) {
	c := chattest.StartBroker(t, "")
	dir := t.TempDir()
	w := c.StartWorker(dir)
	addr := c.StartEdge().Addr().String()
	cls := users(t, addr, "alice", "bob")
	alice, bob := cls[0], cls[1]
	befriend(t, alice, bob, "bob")
	bob.Expect(M{"cmd": "offline"}, "success")

	w.Stop()
	alice.Send(M{"cmd": "private_chat", "user_to": "bob", "text": "anyone?"})
	time.Sleep(300 * time.Millisecond) // the edge is asking again meanwhile
	c.StartWorker(dir)
	if m := alice.Want("private_chat_reply"); m.Str("result") != "offline" {
		t.Fatalf("got %s", m.Raw)
	}
	bob.Login("bob", "pw-bob")
	if m := bob.Want("private_chat"); m.Str("text") != "anyone?" {
		t.Fatalf("got %s", m.Raw)
	}
}

// Friends chat on while no worker runs: a session knows its user's
// friends (from the login reply, its own add, another's add_friend_reply)
// and its edge sends their messages to the recipient's subject itself.
// Whoever the session does not know as a friend is a worker's to judge.
func TestFriendsChatWithoutWorkers(t *testing.T) {
	forEachDeliveryPath(t, testFriendsChatWithoutWorkers)
}

// forEachDeliveryPath runs test with edges whose own NATS connection
// carries the users' subscriptions (every private message goes through
// NATS), and with a delivery connection of their own dialled with NoEcho
// (one between sessions of an edge is written from there).
func forEachDeliveryPath(t *testing.T, test func(t *testing.T, deliveries func(*chattest.Cluster) func(*edge.Options))) {
	for _, tc := range []struct {
		name       string
		deliveries func(*chattest.Cluster) func(*edge.Options)
	}{
		{"through NATS", func(*chattest.Cluster) func(*edge.Options) { return func(*edge.Options) {} }},
		{"local", func(c *chattest.Cluster) func(*edge.Options) { return c.Deliveries(1) }},
	} {
		t.Run(tc.name, func(t *testing.T) { test(t, tc.deliveries) })
	}
}

func testFriendsChatWithoutWorkers(t *testing.T, deliveries func(*chattest.Cluster) func(*edge.Options)) {
	c := chattest.StartBroker(t, "")
	w := c.StartWorker("")
	quick := func(o *edge.Options) { o.RequestTimeout = time.Second }
	addr1 := c.StartEdge(quick, deliveries(c)).Addr().String()
	addr2 := c.StartEdge(quick, deliveries(c)).Addr().String()
	cls := users(t, addr1, "alice", "bob", "eve")
	alice, bob, eve := cls[0], cls[1], cls[2]
	bob2 := chattest.Dial(t, addr2)
	bob2.Login("bob", "pw-bob")
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success") // alice's own add
	for _, cl := range []*chattest.Client{bob, bob2} {
		cl.Want("add_friend_reply") // bob's sessions hear of it
	}
	carol := chattest.Dial(t, addr2)
	carol.Register("carol", "pw-carol")
	carol.Login("carol", "pw-carol")
	carol.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	bob.Want("add_friend_reply")
	bob2.Want("add_friend_reply")
	carol.Expect(M{"cmd": "offline"}, "success")
	carol.Login("carol", "pw-carol") // carol's login lists bob

	w.Stop()
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "a→b"}, "success")
	bob.Expect(M{"cmd": "private_chat", "user_from": "bob", "user_to": "alice", "text": "b→a"}, "success")
	carol.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "c→b"}, "success")
	// Each sender's messages keep their order; alice's and carol's are
	// two conversations, and a session may see either first (on each
	// edge the local one is written at once, the other comes as a copy).
	for _, cl := range []*chattest.Client{bob, bob2} {
		got := map[string]bool{}
		for range 2 {
			m := cl.Want("private_chat")
			if m.Str("msg_id") == "" || !strings.Contains(m.Raw, `"time":`) {
				t.Fatalf("bob got %s", m.Raw)
			}
			got[m.Str("user_from")+":"+m.Str("text")] = true
		}
		if !got["alice:a→b"] || !got["carol:c→b"] {
			t.Fatalf("bob got %v, want alice's a→b and carol's c→b once each", got)
		}
	}
	if m := alice.Want("private_chat"); m.Str("text") != "b→a" || m.Str("user_from") != "bob" {
		t.Fatalf("alice got %s", m.Raw)
	}
	// Not friends, or not the session's own name: no worker, no message.
	eve.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "spam"}, "unavailable")
	carol.Expect(M{"cmd": "private_chat", "user_from": "alice", "user_to": "bob", "text": "spoof"}, "unavailable")
	carol.Expect(M{"cmd": "private_chat", "user_to": "carol", "text": "self"}, "unavailable")
	wantNone(t, "private_chat", bob, bob2, alice, carol)
}

// wantNone fails if any of cls has been sent a cmd line not yet taken,
// up to a ping of each.
func wantNone(t *testing.T, cmd string, cls ...*chattest.Client) {
	t.Helper()
	for _, cl := range cls {
		cl.Sync()
		for _, m := range cl.Pending() {
			if m.Str("cmd") == cmd {
				t.Fatalf("got %s", m.Raw)
			}
		}
	}
}

// A recipient that stops reading must cost only itself: its messages
// pile up until it is disconnected, every sender still gets its answer,
// and messages between other users keep flowing meanwhile.
func TestSlowRecipientStallsNobody(t *testing.T) {
	forEachDeliveryPath(t, testSlowRecipientStallsNobody)
}

func testSlowRecipientStallsNobody(t *testing.T, deliveries func(*chattest.Cluster) func(*edge.Options)) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	addr := c.StartEdge(func(o *edge.Options) {
		o.OutQueue = 16
		// Longer than a client waits for a line: a delivery that blocked
		// on the stuck socket would make the others' messages late.
		o.WriteTimeout = 3 * chattest.Timeout
	}, deliveries(c)).Addr().String()
	cls := users(t, addr, "alice", "carol", "dave")
	alice, carol, dave := cls[0], cls[1], cls[2]
	befriend(t, carol, dave, "dave")

	// bob logs in on a socket that is never read after the login reply.
	bob, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	if _, err := bob.Write([]byte(`{"cmd":"register","user":"bob","password":"pw-bob"}` + "\n" +
		`{"cmd":"login","user":"bob","password":"pw-bob"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	_ = bob.SetReadDeadline(time.Now().Add(chattest.Timeout))
	br := bufio.NewReader(bob)
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("bob's login: %v", err)
		}
		if strings.Contains(l, `"login_reply"`) {
			break
		}
	}
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")

	// Socket buffers take a few MiB on loopback (more where the kernel is
	// tuned for it): alice writes until bob has been let go.
	text := strings.Repeat("x", 60<<10)
	results := map[string]int{}
	for i := 0; i < 3000 && results["offline"] < 10; i++ {
		r := alice.Result(M{"cmd": "private_chat", "user_to": "bob", "text": text}).Str("result")
		results[r]++
		carol.Expect(M{"cmd": "private_chat", "user_to": "dave", "text": fmt.Sprint(i)}, "success")
		if got := dave.Want("private_chat").Str("text"); got != fmt.Sprint(i) {
			t.Fatalf("dave got %q, want %d", got, i)
		}
	}
	if results["success"] == 0 || results["offline"] == 0 || len(results) != 2 {
		t.Fatalf("results %v: want successes while bob was connected, then offline", results)
	}
	// The server has closed bob: draining the socket ends (at its end of
	// file, or in a reset) instead of waiting for more.
	_ = bob.SetReadDeadline(time.Now().Add(chattest.Timeout))
	if _, err := io.Copy(io.Discard, bob); err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("bob is still connected: %v", err)
	}
}

// A worker that cannot read the stored messages (here their stream is
// gone) answers the edge with an error; the client sees a login like any
// other, and no line of that answer.
func TestStoredMessagesFailureStaysInside(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	addr := c.StartEdge().Addr().String()
	js, err := jetstream.New(c.Conn("admin"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), chattest.Timeout)
	defer cancel()
	if err := js.DeleteStream(ctx, workers.InboxStream); err != nil {
		t.Fatal(err)
	}
	bob := users(t, addr, "bob")[0]
	bob.Sync()
	if p := bob.Pending(); len(p) != 0 {
		t.Fatalf("after login: %v", p)
	}
}

// A private message that comes to a session a second time, as a copy
// kept in the inbox after the first was written (a confirmation lost on
// its way, say), is not written to it again, and the copy is removed.
func TestPrivateMessageCopyNotWrittenTwice(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	addr := c.StartEdge().Addr().String()
	cls := users(t, addr, "alice", "bob")
	alice, bob := cls[0], cls[1]
	befriend(t, alice, bob, "bob")
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "once"}, "success")
	first := bob.Want("private_chat")
	if first.Str("msg_id") == "" {
		t.Fatalf("no msg_id in %s", first.Raw)
	}

	// What a worker does with a message it must keep: store it, nudge.
	nc := c.Conn("worker-like")
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), chattest.Timeout)
	defer cancel()
	if _, err := js.Publish(ctx, proto.InboxSubject("bob"), []byte(first.Raw)); err != nil {
		t.Fatal(err)
	}
	nudge := nats.NewMsg(proto.UserSubject("bob"))
	nudge.Header.Set(proto.HdrKind, proto.KindInbox)
	if err := nc.PublishMsg(nudge); err != nil {
		t.Fatal(err)
	}
	inbox, err := js.Stream(ctx, proto.InboxStream)
	if err != nil {
		t.Fatal(err)
	}
	for { // handed out and removed
		info, err := inbox.Info(ctx, jetstream.WithSubjectFilter(proto.InboxSubject("bob")))
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	bob.Sync()
	for _, m := range bob.Pending() {
		t.Fatalf("bob got %s again", m.Raw)
	}
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "twice"}, "success")
	if m := bob.Want("private_chat"); m.Str("text") != "twice" {
		t.Fatalf("bob got %s, want the next message", m.Raw)
	}
}

// A client over its allowance of requests is told so, request by
// request, and the request goes nowhere; other clients keep theirs.
func TestRateLimit(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	// A token back every 100 s: nothing refills while the test runs.
	addr := c.StartEdge(func(o *edge.Options) { o.RateLimit, o.RateBurst = 0.01, 5 }).Addr().String()
	cls := users(t, addr, "alice", "bob") // register, login, ping: three of each's five
	alice, bob := cls[0], cls[1]
	befriend(t, alice, bob, "bob")                                                    // four
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "in"}, "success") // five: the last
	bob.Want("private_chat")
	for _, tc := range []struct {
		req  M
		cmd  string
		want string
	}{
		{M{"cmd": "private_chat", "user_to": "bob", "text": "over"}, "private_chat_reply", "rate_limited"},
		{M{"cmd": "group_chat", "group": "g", "text": "over"}, "group_chat_reply", "rate_limited"},
		{M{"cmd": "ping", "id": 7}, "ping_reply", "rate_limited"},
		{M{"cmd": "no such"}, "error", "rate_limited"},
		{M{"text": "no cmd"}, "error", "rate_limited"},
	} {
		alice.Send(tc.req)
		if m := alice.Want(tc.cmd); m.Str("result") != tc.want || (tc.req["id"] != nil && m.Fields["id"] != float64(7)) {
			t.Fatalf("%v: got %s", tc.req, m.Raw)
		}
	}
	// bob's allowance is his own: two of his five are left, for a message
	// and the ping of Sync.
	bob.Expect(M{"cmd": "private_chat", "user_to": "alice", "text": "mine"}, "success")
	if m := alice.Want("private_chat"); m.Str("text") != "mine" {
		t.Fatalf("alice got %s", m.Raw)
	}
	wantNone(t, "private_chat", bob) // the refused one
}

// Failed logins from one address are limited across its connections,
// before any password is hashed; successes cost nothing, and another
// address is not held back.
func TestLoginFailuresLimited(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	addr := c.StartEdge(func(o *edge.Options) { o.LoginFailures = 3 }).Addr().String()
	users(t, addr, "alice")
	for range 5 { // successes: nothing spent
		chattest.Dial(t, addr).Login("alice", "pw-alice")
	}
	guesser := chattest.Dial(t, addr)
	for _, req := range []M{
		{"cmd": "login", "user": "alice", "password": "guess1"},
		{"cmd": "login", "user": "alice", "password": "guess2"},
		{"cmd": "login", "user": "nobody", "password": "guess3"},
	} {
		if m := guesser.Result(req); m.Str("result") == "success" || m.Str("result") == "rate_limited" {
			t.Fatalf("%v: %s", req, m.Raw)
		}
	}
	// The next, on a new connection and with the right password: refused.
	chattest.Dial(t, addr).Expect(M{"cmd": "login", "user": "alice", "password": "pw-alice"}, "rate_limited")
	guesser.Expect(M{"cmd": "login", "user": "alice", "password": "guess4"}, "rate_limited")

	other, err := net.ResolveTCPAddr("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	chattest.DialFrom(t, other, addr).Login("alice", "pw-alice")
}
