package edge_test

import (
	"bufio"
	"fmt"
	"net"
	"testing"

	"github.com/chatd-io/chatd/internal/chattest"
)

// rawClient logs a user in and then speaks to the edge without decoding
// every line, so that the benchmark measures the server, not the client.
func rawClient(b *testing.B, addr, user string) (net.Conn, *bufio.Reader) {
	b.Helper()
	cl := chattest.Dial(b, addr)
	cl.Register(user, "pw")
	cl.Conn.Close()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	r := bufio.NewReader(c)
	fmt.Fprintf(c, `{"cmd":"login","user":%q,"password":"pw"}`+"\n", user)
	if _, err := r.ReadSlice('\n'); err != nil {
		b.Fatal(err)
	}
	return c, r
}

// BenchmarkPrivateChat is one private message through the whole server in
// one process: client → edge → worker (friendship check) → recipient's
// edge → recipient, and the reply back to the sender. Allocations are the
// whole process's, server and client.
func BenchmarkPrivateChat(b *testing.B) {
	c := chattest.StartBroker(b, "")
	c.StartWorker("")
	addr := c.StartEdge().Addr().String()
	alice, ar := rawClient(b, addr, "alice")
	_, br := rawClient(b, addr, "bob")
	fmt.Fprint(alice, `{"cmd":"add","friend":"bob"}`+"\n")
	if _, err := ar.ReadSlice('\n'); err != nil {
		b.Fatal(err)
	}
	if _, err := br.ReadSlice('\n'); err != nil { // add_friend_reply
		b.Fatal(err)
	}
	msg := []byte(`{"cmd":"private_chat","user_to":"bob","text":"hello there, how are you?"}` + "\n")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := alice.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := br.ReadSlice('\n'); err != nil {
			b.Fatal(err)
		}
		if _, err := ar.ReadSlice('\n'); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGroupFanOut is one group message delivered to 20 other members
// on one edge.
func BenchmarkGroupFanOut(b *testing.B) {
	c := chattest.StartBroker(b, "")
	c.StartWorker("")
	addr := c.StartEdge().Addr().String()
	sender, sr := rawClient(b, addr, "sender")
	fmt.Fprint(sender, `{"cmd":"create_group","group":"g"}`+"\n")
	if _, err := sr.ReadSlice('\n'); err != nil {
		b.Fatal(err)
	}
	var readers []*bufio.Reader
	for i := range 20 {
		m, r := rawClient(b, addr, fmt.Sprint("m", i))
		fmt.Fprint(m, `{"cmd":"add_group","group":"g"}`+"\n")
		if _, err := r.ReadSlice('\n'); err != nil {
			b.Fatal(err)
		}
		readers = append(readers, r)
	}
	msg := []byte(`{"cmd":"group_chat","group":"g","text":"hello all"}` + "\n")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := sender.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := sr.ReadSlice('\n'); err != nil {
			b.Fatal(err)
		}
		for _, r := range readers {
			if _, err := r.ReadSlice('\n'); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N*20)/b.Elapsed().Seconds(), "deliveries/s")
}
