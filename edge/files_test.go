package edge_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatd-io/chatd/edge"
	"github.com/chatd-io/chatd/internal/chattest"
	"github.com/chatd-io/chatd/workers"
)

// fileSetup runs a broker, a worker and two edges with file transfer on,
// and logs alice in on the first edge and bob on the second, as friends.
type fileSetup struct {
	t            *testing.T
	c            *chattest.Cluster
	addr1, addr2 string
	alice, bob   *chattest.Client
}

func startFiles(t *testing.T, mod ...func(*edge.Options)) *fileSetup {
	t.Helper()
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	// Edges skip ports somebody else holds, so ranges may overlap freely.
	lo := 20000 + mrand.IntN(20000)
	opts := func(o *edge.Options) {
		o.FilePortLo, o.FilePortHi = lo, lo+40
		o.FileTimeout = 2 * time.Second
		for _, m := range mod {
			m(o)
		}
	}
	f := &fileSetup{t: t, c: c}
	f.addr1 = c.StartEdge(opts).Addr().String()
	f.addr2 = c.StartEdge(opts).Addr().String()
	f.alice = users(t, f.addr1, "alice")[0]
	f.bob = users(t, f.addr2, "bob")[0]
	befriend(t, f.alice, f.bob, "bob")
	return f
}

// offer sends send_file from alice to bob and returns both port replies.
func (f *fileSetup) offer(length any, filename string) (send, recv chattest.Msg) {
	f.t.Helper()
	f.alice.Send(M{"cmd": "send_file", "from_user": "alice", "to_user": "bob", "length": length, "filename": filename})
	send = f.alice.Want("send_file_port_reply")
	recv = f.bob.Want("recv_file_port_reply")
	return send, recv
}

func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFileRelayAcrossEdges(t *testing.T) {
	f := startFiles(t)
	tests := []struct {
		name   string
		size   int
		length any
		echo   string // the length as it must come back
	}{
		{"empty", 0, 0, "0"},
		{"one byte", 1, "1", `"1"`},
		{"number length", 1<<20 + 3, 1<<20 + 3, fmt.Sprint(1<<20 + 3)},
		{"string length", 5<<20 + 17, fmt.Sprint(5<<20 + 17), fmt.Sprintf(`"%d"`, 5<<20+17)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			send, recv := f.offer(tc.length, "报告 v2.pdf")
			for _, m := range []chattest.Msg{send, recv} {
				if m.Port() == 0 || m.Str("filename") != "报告 v2.pdf" || !strings.Contains(m.Raw, `"length":`+tc.echo+",") {
					t.Fatalf("port reply %s, want length %s echoed", m.Raw, tc.echo)
				}
			}
			if send.Str("user") != "bob" || recv.Str("user") != "alice" {
				t.Fatalf("user fields: %s / %s", send.Raw, recv.Raw)
			}
			data := random(t, tc.size)
			in := f.bob.FilePort(recv.Port())
			out := f.alice.FilePort(send.Port())
			go func() { _, _ = out.Write(data) }()
			got := chattest.ReadAll(t, in)
			if len(got) != len(data) || sha256.Sum256(got) != sha256.Sum256(data) {
				t.Fatalf("received %d bytes, sha mismatch=%v; sent %d", len(got), !bytes.Equal(got, data), len(data))
			}
			// The server closes the sender's connection too.
			if rest := chattest.ReadAll(t, out); len(rest) != 0 {
				t.Fatalf("sender's port sent %d bytes back", len(rest))
			}
		})
	}
	// Nothing else was said to either session: a success is silent.
	for _, cl := range []*chattest.Client{f.alice, f.bob} {
		cl.Sync()
		for _, m := range cl.Pending() {
			t.Fatalf("unexpected %s", m.Raw)
		}
	}
}

func TestFileConcurrentTransfers(t *testing.T) {
	f := startFiles(t)
	const n = 4
	type offer struct{ send, recv chattest.Msg }
	offers := make([]offer, n)
	for i := range offers {
		offers[i].send, offers[i].recv = f.offer(256<<10+i, fmt.Sprint("f", i))
	}
	var wg sync.WaitGroup
	for i, o := range offers {
		data := random(t, 256<<10+i)
		in := f.bob.FilePort(o.recv.Port())
		out := f.alice.FilePort(o.send.Port())
		wg.Go(func() { _, _ = out.Write(data) })
		if got := chattest.ReadAll(t, in); !bytes.Equal(got, data) {
			t.Fatalf("transfer %d: got %d bytes, want %d", i, len(got), len(data))
		}
	}
	wg.Wait()
}

func TestFileRefusals(t *testing.T) {
	f := startFiles(t, func(o *edge.Options) { o.FileMaxSize = 1 << 20 })
	carol := users(t, f.addr1, "carol")[0]
	dave := users(t, f.addr2, "dave")[0]
	befriend(t, f.alice, dave, "dave")
	dave.Send(M{"cmd": "offline"})
	dave.Want("offline_reply")
	tests := []struct {
		name string
		req  M
		want string
	}{
		{"not a friend", M{"to_user": "carol", "length": 1, "filename": "x"}, "not_friend"},
		{"no such user", M{"to_user": "ghost", "length": 1, "filename": "x"}, "user_not_exist"},
		{"offline", M{"to_user": "dave", "length": 1, "filename": "x"}, "offline"},
		{"spoofed sender", M{"from_user": "carol", "to_user": "bob", "length": 1, "filename": "x"}, "forbidden"},
		{"negative", M{"to_user": "bob", "length": -1, "filename": "x"}, "invalid"},
		{"negative string", M{"to_user": "bob", "length": "-5", "filename": "x"}, "invalid"},
		{"fraction", M{"to_user": "bob", "length": 1.5, "filename": "x"}, "invalid"},
		{"not a number", M{"to_user": "bob", "length": "ten", "filename": "x"}, "invalid"},
		{"over the maximum", M{"to_user": "bob", "length": 1<<20 + 1, "filename": "x"}, "invalid"},
		{"missing length", M{"to_user": "bob", "filename": "x"}, "invalid"},
		{"filename not a string", M{"to_user": "bob", "length": 1, "filename": 3}, "invalid"},
		{"offline flag not a bool", M{"to_user": "bob", "length": 1, "filename": "x", "offline": "yes"}, "invalid"},
		{"to self", M{"to_user": "alice", "length": 1, "filename": "x"}, "invalid"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.req["cmd"] = "send_file"
			f.alice.Expect(tc.req, tc.want)
		})
	}
	// Nobody was offered anything.
	for _, cl := range []*chattest.Client{f.bob, carol} {
		cl.Sync()
		for _, m := range cl.Pending() {
			t.Fatalf("unexpected %s", m.Raw)
		}
	}
	// At the maximum is fine.
	f.offer(1<<20, "max")
}

func TestFileTimeout(t *testing.T) {
	f := startFiles(t, func(o *edge.Options) { o.FileTimeout = 300 * time.Millisecond })
	t.Run("recipient never connects", func(t *testing.T) {
		send, _ := f.offer(10, "a")
		out := f.alice.FilePort(send.Port())
		if m := f.alice.Want("send_file_reply"); m.Str("result") != "timeout" {
			t.Fatalf("sender got %s", m.Raw)
		}
		if m := f.bob.Want("recv_file_reply"); m.Str("result") != "timeout" {
			t.Fatalf("recipient got %s", m.Raw)
		}
		chattest.ReadAll(t, out) // closed by the server
	})
	t.Run("sender never connects", func(t *testing.T) {
		_, recv := f.offer(10, "b")
		in := f.bob.FilePort(recv.Port())
		if m := f.alice.Want("send_file_reply"); m.Str("result") != "timeout" {
			t.Fatalf("sender got %s", m.Raw)
		}
		if m := f.bob.Want("recv_file_reply"); m.Str("result") != "timeout" {
			t.Fatalf("recipient got %s", m.Raw)
		}
		if got := chattest.ReadAll(t, in); len(got) != 0 {
			t.Fatalf("recipient read %d bytes", len(got))
		}
	})
	t.Run("nobody connects, ports are released", func(t *testing.T) {
		send, recv := f.offer(10, "c")
		f.alice.Want("send_file_reply")
		f.bob.Want("recv_file_reply")
		for _, p := range []int{send.Port(), recv.Port()} {
			if c, err := net.DialTimeout("tcp", f.addr1[:strings.LastIndex(f.addr1, ":")+1]+fmt.Sprint(p), time.Second); err == nil {
				c.Close()
				t.Fatalf("port %d still accepts connections", p)
			}
		}
	})
}

func TestFileSenderDropsHalfway(t *testing.T) {
	f := startFiles(t)
	send, recv := f.offer(4<<20, "big")
	in := f.bob.FilePort(recv.Port())
	out := f.alice.FilePort(send.Port())
	if _, err := out.Write(random(t, 1<<20)); err != nil {
		t.Fatal(err)
	}
	out.Close()
	got := chattest.ReadAll(t, in) // the recipient's connection is closed, not left hanging
	if len(got) >= 4<<20 {
		t.Fatalf("recipient got %d bytes of a transfer cut at 1 MiB", len(got))
	}
	if m := f.bob.Want("recv_file_reply"); m.Str("result") != "aborted" {
		t.Fatalf("recipient got %s", m.Raw)
	}
	// The sessions carry on.
	f.alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "sorry"}, "success")
}

func TestFileRecipientDropsHalfway(t *testing.T) {
	f := startFiles(t)
	send, recv := f.offer(64<<20, "big")
	in := f.bob.FilePort(recv.Port())
	out := f.alice.FilePort(send.Port())
	errc := make(chan error, 1)
	go func() { _, err := out.Write(random(t, 64<<20)); errc <- err }()
	if _, err := io.ReadFull(in, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	in.Close()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("the sender wrote all 64 MiB to a recipient that left after 1")
		}
	case <-time.After(chattest.Timeout):
		t.Fatal("the sender's connection was left hanging")
	}
	if m := f.alice.Want("send_file_reply"); m.Str("result") != "aborted" {
		t.Fatalf("sender got %s", m.Raw)
	}
}

func TestFilePortRefusesOtherPeers(t *testing.T) {
	f := startFiles(t)
	send, recv := f.offer(3, "x")
	// Another address (127.0.0.2 is loopback too) is turned away.
	host, _, _ := net.SplitHostPort(f.bob.Conn.RemoteAddr().String())
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: time.Second}
	stranger, err := d.Dial("tcp", net.JoinHostPort(host, fmt.Sprint(recv.Port())))
	if err != nil {
		t.Fatal(err)
	}
	if got := chattest.ReadAll(t, stranger); len(got) != 0 {
		t.Fatalf("a stranger read %d bytes", len(got))
	}
	// The owner still gets the file.
	in := f.bob.FilePort(recv.Port())
	out := f.alice.FilePort(send.Port())
	_, _ = out.Write([]byte("abc"))
	if got := chattest.ReadAll(t, in); string(got) != "abc" {
		t.Fatalf("owner got %q", got)
	}
}

func TestOfflineFile(t *testing.T) {
	f := startFiles(t)
	f.bob.Send(M{"cmd": "offline"})
	f.bob.Want("offline_reply")
	f.alice.Want("friend_offline")
	f.alice.Expect(M{"cmd": "send_file", "to_user": "bob", "length": 3, "filename": "x"}, "offline")

	data := random(t, 3<<20+5)
	f.alice.Send(M{"cmd": "send_file", "to_user": "bob", "length": fmt.Sprint(len(data)), "filename": "离线.bin", "offline": true})
	send := f.alice.Want("send_file_port_reply")
	if send.Fields["offline"] != true || send.Str("user") != "bob" {
		t.Fatalf("port reply %s", send.Raw)
	}
	out := f.alice.FilePort(send.Port())
	if _, err := out.Write(data); err != nil {
		t.Fatal(err)
	}
	if m := f.alice.Want("send_file_reply"); m.Str("result") != "stored" {
		t.Fatalf("after upload: %s", m.Raw)
	}
	chattest.ReadAll(t, out)

	// bob logs in on the other edge: login reply first, then the offer.
	bob := chattest.Dial(t, f.addr2)
	bob.Send(M{"cmd": "login", "user": "bob", "password": "pw-bob"})
	if m := bob.Next(); m.Str("cmd") != "login_reply" {
		t.Fatalf("first after login: %s", m.Raw)
	}
	recv := bob.Want("recv_file_port_reply")
	if recv.Fields["offline"] != true || recv.Str("user") != "alice" || recv.Str("filename") != "离线.bin" ||
		!strings.Contains(recv.Raw, fmt.Sprintf(`"length":"%d"`, len(data))) || strings.Contains(recv.Raw, "object") {
		t.Fatalf("offer %s", recv.Raw)
	}
	if got := chattest.ReadAll(t, bob.FilePort(recv.Port())); !bytes.Equal(got, data) {
		t.Fatalf("downloaded %d bytes, want %d", len(got), len(data))
	}
	// Delivered once: the next login is offered nothing.
	again := chattest.Dial(t, f.addr1)
	again.Login("bob", "pw-bob")
	again.Sync()
	for _, m := range again.Pending() {
		t.Fatalf("unexpected %s", m.Raw)
	}
}

func TestOfflineFileMissedDownloadIsOfferedAgain(t *testing.T) {
	f := startFiles(t, func(o *edge.Options) { o.FileTimeout = 300 * time.Millisecond })
	f.bob.Send(M{"cmd": "offline"})
	f.bob.Want("offline_reply")
	f.alice.Send(M{"cmd": "send_file", "to_user": "bob", "length": 4, "filename": "x", "offline": true})
	out := f.alice.FilePort(f.alice.Want("send_file_port_reply").Port())
	_, _ = out.Write([]byte("data"))
	f.alice.Want("send_file_reply")

	f.bob.Login("bob", "pw-bob")
	f.bob.Want("recv_file_port_reply")
	if m := f.bob.Want("recv_file_reply"); m.Str("result") != "timeout" {
		t.Fatalf("got %s", m.Raw)
	}
	f.bob.Send(M{"cmd": "offline"})
	f.bob.Want("offline_reply")
	f.bob.Login("bob", "pw-bob")
	recv := f.bob.Want("recv_file_port_reply")
	if got := chattest.ReadAll(t, f.bob.FilePort(recv.Port())); string(got) != "data" {
		t.Fatalf("second offer delivered %q", got)
	}
}

func TestOfflineFileExpires(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("", func(o *workers.Options) { o.FileMaxAge = time.Second })
	addr := c.StartEdge(func(o *edge.Options) {
		o.FilePortLo = 20000 + mrand.IntN(20000)
		o.FilePortHi = o.FilePortLo + 40
	}).Addr().String()
	cls := users(t, addr, "alice", "bob")
	alice, bob := cls[0], cls[1]
	befriend(t, alice, bob, "bob")
	bob.Send(M{"cmd": "offline"})
	bob.Want("offline_reply")
	alice.Send(M{"cmd": "send_file", "to_user": "bob", "length": 4, "filename": "x", "offline": true})
	out := alice.FilePort(alice.Want("send_file_port_reply").Port())
	_, _ = out.Write([]byte("data"))
	alice.Want("send_file_reply")
	// Expiry is the passing of time: there is nothing to wait on but it.
	time.Sleep(2500 * time.Millisecond)
	bob.Login("bob", "pw-bob")
	bob.Sync()
	for _, m := range bob.Pending() {
		if m.Str("cmd") == "recv_file_port_reply" {
			t.Fatalf("an expired file was offered: %s", m.Raw)
		}
	}
}
