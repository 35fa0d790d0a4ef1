package edge_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/chatd-io/chatd/internal/chattest"
	"github.com/chatd-io/chatd/internal/proto"
)

// standIn answers what an edge asks workers about logins, so that a test
// can act between the edge's subscription for a user and its login
// reply. A real worker made the streams and left.
type standIn struct {
	t  *testing.T
	c  *chattest.Cluster
	nc *nats.Conn

	mu       sync.Mutex
	logins   []nats.Header // headers of each login request, in order
	inboxAsk int           // inbox requests
	presence chan string   // each presence request: user and body
}

// pause is how long the stand-in sits on a login after acting, so that
// the edge has what it sent before the answer comes.
const pause = 100 * time.Millisecond

func startStandIn(t *testing.T, login func(s *standIn, m *nats.Msg) *nats.Msg, inbox string) (*standIn, string) {
	t.Helper()
	c := chattest.StartBroker(t, "")
	// Connected first, closed last: the edge's shutdown still has it.
	s := &standIn{t: t, c: c, nc: c.Conn("stand-in"), presence: make(chan string, 16)}
	w := c.StartWorker("")
	addr := c.StartEdge().Addr().String()
	w.Stop()
	serve := func(subj string, h func(m *nats.Msg) *nats.Msg) {
		if _, err := s.nc.Subscribe(subj, func(m *nats.Msg) {
			go func() { // one at a time would hold up the next login
				if r := h(m); r != nil {
					_ = m.RespondMsg(r)
				}
			}()
		}); err != nil {
			t.Fatal(err)
		}
	}
	serve(proto.CmdPrefix+"login", func(m *nats.Msg) *nats.Msg {
		s.mu.Lock()
		s.logins = append(s.logins, m.Header)
		s.mu.Unlock()
		return login(s, m)
	})
	serve(proto.InternalPrefix+proto.IntInbox, func(m *nats.Msg) *nats.Msg {
		s.mu.Lock()
		s.inboxAsk++
		s.mu.Unlock()
		return &nats.Msg{Data: []byte(inbox + "\n")}
	})
	serve(proto.InternalPrefix+proto.IntPresence, func(m *nats.Msg) *nats.Msg {
		select {
		case s.presence <- m.Header.Get(proto.HdrUser) + " " + string(m.Data):
		default:
		}
		return &nats.Msg{Data: []byte(`{"cmd":"presence_reply","result":"success"}`)}
	})
	if err := s.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return s, addr
}

// publish sends a message to user's subject, as a worker does.
func (s *standIn) publish(user, reply string, kind string, data string) {
	s.t.Helper()
	m := &nats.Msg{Subject: proto.UserSubject(user), Reply: reply, Data: []byte(data)}
	if kind != "" {
		m.Header = nats.Header{proto.HdrKind: {kind}}
	}
	if err := s.nc.PublishMsg(m); err != nil {
		s.t.Fatal(err)
	}
	if err := s.nc.Flush(); err != nil {
		s.t.Fatal(err)
	}
}

func loginOK(user string, stored ...string) *nats.Msg {
	data := `{"cmd":"login_reply","result":"success","friend":"alice","group":""}`
	for _, l := range stored {
		data += "\n" + l
	}
	return &nats.Msg{Data: []byte(data),
		Header: nats.Header{proto.HdrBind: {user}, proto.HdrStored: {"1"}, proto.HdrAnnounce: {"1"}}}
}

func chatLine(text string) string {
	return `{"cmd":"private_chat","user_from":"alice","user_to":"bob","text":"` + text + `","msg_id":"` + text + `"}`
}

// What a pending login holds is bounded in size too: past the bound, a
// handed-off private message goes back to its worker (to be kept) rather
// than wait in memory, and what was held is still written.
func TestLoginHoldsBoundedBytes(t *testing.T) {
	big := func(n int) string {
		return string(proto.Object("cmd", "private_chat", "user_from", "alice", "user_to", "bob",
			"text", strings.Repeat(fmt.Sprint(n), 400<<10), "msg_id", fmt.Sprint("m", n)))
	}
	s, addr := startStandIn(t, func(s *standIn, m *nats.Msg) *nats.Msg {
		for i := 1; i <= 3; i++ {
			s.publish("bob", proto.HandoffReply("w1", uint64(i), "test.sender"), "", big(i))
		}
		time.Sleep(pause)
		return loginOK("bob")
	}, "")
	back := s.handedBack(t, "w1")

	cl := chattest.Dial(t, addr)
	cl.Expect(M{"cmd": "login", "user": "bob", "password": "pw"}, "success")
	for _, want := range []string{"m1", "m2"} {
		if m := cl.Want("private_chat"); m.Str("msg_id") != want {
			t.Fatalf("got %s, want %s", m.Str("msg_id"), want)
		}
	}
	m, err := back.NextMsg(chattest.Timeout)
	if err != nil {
		t.Fatalf("the message past the bound was not returned: %v", err)
	}
	if tok, ok := proto.HandoffToken(m.Subject, proto.HandoffPrefix+"w1."); !ok || tok != 3 || string(m.Data) != big(3) {
		t.Fatalf("returned %s", m.Subject)
	}
	cl.Sync()
	for _, m := range cl.Pending() {
		if m.Str("cmd") == "private_chat" {
			t.Fatalf("written as well: %s", m.Str("msg_id"))
		}
	}
}

// What reaches a user's subject while the user's first session here is
// logging in is written after the login reply, in order, before the
// stored messages the reply carries; a private message handed off then
// is confirmed to its sender, and a nudge meanwhile makes the edge fetch
// once the session is there.
func TestLoginHoldsWhatComesMeanwhile(t *testing.T) {
	s, addr := startStandIn(t, func(s *standIn, m *nats.Msg) *nats.Msg {
		s.publish("bob", "", "", `{"cmd":"friend_login","friend":"carol"}`)
		s.publish("bob", proto.HandoffReply("w1", 1, "test.sender"), "", chatLine("during"))
		s.publish("bob", "", proto.KindInbox, "")
		time.Sleep(pause)
		return loginOK("bob", chatLine("before"))
	}, chatLine("meanwhile"))
	confirm, err := s.nc.SubscribeSync("test.sender")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	cl := chattest.Dial(t, addr)
	cl.Send(M{"cmd": "login", "user": "bob", "password": "pw"})
	want := []string{"login_reply", "friend_login", "private_chat during", "private_chat before", "private_chat meanwhile"}
	for _, w := range want {
		m := cl.Next()
		got := m.Str("cmd")
		if text := m.Str("text"); text != "" {
			got += " " + text
		}
		if got != w {
			t.Fatalf("got %s, want %s", m.Raw, w)
		}
	}
	r, err := confirm.NextMsg(chattest.Timeout)
	if err != nil {
		t.Fatalf("handed-off message not confirmed: %v", err)
	}
	if got := proto.StrField(r.Data, "result"); got != "success" {
		t.Fatalf("confirmation %s", r.Data)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.logins) != 1 || s.logins[0].Get(proto.HdrStored) == "" || s.logins[0].Get(proto.HdrAnnounce) == "" {
		t.Fatalf("login requests: %v (want one, asking for stored messages and the announcement)", s.logins)
	}
	if s.inboxAsk != 1 {
		t.Fatalf("%d inbox requests, want 1 (for the nudge)", s.inboxAsk)
	}
}

// A failed login leaves nothing: what came meanwhile is not written, a
// handed-off private message goes back to its worker (to be kept), and
// the subscription ends.
func TestFailedLoginHandsBackWhatCameMeanwhile(t *testing.T) {
	s, addr := startStandIn(t, func(s *standIn, m *nats.Msg) *nats.Msg {
		s.publish("bob", "", "", `{"cmd":"friend_login","friend":"carol"}`)
		s.publish("bob", proto.HandoffReply("w1", 7, "test.sender"), "", chatLine("during"))
		time.Sleep(pause)
		return &nats.Msg{Data: []byte(`{"cmd":"login_reply","result":"password_error"}`)}
	}, "")
	back := s.handedBack(t, "w1")

	cl := chattest.Dial(t, addr)
	cl.Expect(M{"cmd": "login", "user": "bob", "password": "wrong"}, "password_error")
	cl.Sync()
	if p := cl.Pending(); len(p) != 0 {
		t.Fatalf("written after a failed login: %v", p)
	}
	m, err := back.NextMsg(chattest.Timeout)
	if err != nil {
		t.Fatalf("handed-off message not returned: %v", err)
	}
	if tok, ok := proto.HandoffToken(m.Subject, proto.HandoffPrefix+"w1."); !ok || tok != 7 || string(m.Data) != chatLine("during") {
		t.Fatalf("returned %s: %s", m.Subject, m.Data)
	}
	select {
	case p := <-s.presence: // a refusal is an answer: the worker told nobody
		t.Fatalf("presence request %q after a refused login", p)
	default:
	}
	waitFor(t, "bob's subscription to end", func() bool {
		for _, n := range userSubs(t, s.c) {
			if n > 0 {
				return false
			}
		}
		return true
	})
}

// A login whose worker never answers (it died after telling the friends,
// say) is answered "unavailable", and the friends are told the user is
// offline after all.
func TestUnansweredLoginIsTakenBack(t *testing.T) {
	s, addr := startStandIn(t, func(*standIn, *nats.Msg) *nats.Msg { return nil }, "")
	cl := chattest.Dial(t, addr)
	cl.Expect(M{"cmd": "login", "user": "bob", "password": "pw"}, "unavailable")
	select {
	case got := <-s.presence:
		if got != `bob {"online":false}` {
			t.Fatalf("presence request %q", got)
		}
	case <-time.After(chattest.Timeout):
		t.Fatal("friends not told bob is offline")
	}
}

// A second login of the user on the same edge, while the first is still
// waiting for its worker, waits for the first's outcome: it joins the
// first's session, or, if that login failed, starts anew. Either way it
// gets what comes after.
func TestSecondLoginWaitsForTheFirst(t *testing.T) {
	for _, firstOK := range []bool{true, false} {
		t.Run(map[bool]string{true: "first succeeds", false: "first fails"}[firstOK], func(t *testing.T) {
			firstIn, secondIn := make(chan struct{}), make(chan struct{})
			s, addr := startStandIn(t, func(s *standIn, m *nats.Msg) *nats.Msg {
				if m.Header.Get(proto.HdrStored) == "" { // the second: bound the usual way
					close(secondIn)
					r := loginOK("bob")
					r.Header.Del(proto.HdrStored)
					r.Header.Del(proto.HdrAnnounce)
					return r
				}
				close(firstIn)
				select {
				case <-secondIn:
				case <-time.After(chattest.Timeout):
				}
				time.Sleep(pause)
				if !firstOK {
					return &nats.Msg{Data: []byte(`{"cmd":"login_reply","result":"password_error"}`)}
				}
				return loginOK("bob")
			}, "")
			cl1, cl2 := chattest.Dial(t, addr), chattest.Dial(t, addr)
			cl1.Send(M{"cmd": "login", "user": "bob", "password": "pw"})
			<-firstIn
			cl2.Send(M{"cmd": "login", "user": "bob", "password": "pw"})
			want := map[bool]string{true: "success", false: "password_error"}[firstOK]
			if r := cl1.Want("login_reply"); r.Str("result") != want {
				t.Fatalf("first login: %s, want %s", r.Raw, want)
			}
			if r := cl2.Want("login_reply"); r.Str("result") != "success" {
				t.Fatalf("second login: %s", r.Raw)
			}
			cl1.Sync()
			cl2.Sync()
			s.publish("bob", "", "", `{"cmd":"friend_login","friend":"carol"}`)
			cl2.Want("friend_login")
			cl1.Sync()
			if p := cl1.Pending(); firstOK != (len(p) == 1) {
				t.Fatalf("first session got %v", p)
			}
		})
	}
}

// handedBack subscribes to the private messages edges hand back to the
// worker named worker, as that worker would.
func (s *standIn) handedBack(t *testing.T, worker string) *nats.Subscription {
	t.Helper()
	back, err := s.nc.SubscribeSync(proto.HandoffPrefix + worker + ".>")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return back
}
