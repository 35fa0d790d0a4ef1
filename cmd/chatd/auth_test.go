package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/chatd-io/chatd/internal/chattest"
)

// securedBroker starts a broker from deploy/config/secured/nats.conf, its
// addresses and directory moved to the test's, and returns the URL an edge
// or worker connects with, with the file's example password.
func securedBroker(t *testing.T) (br *proc, url func(user string) string) {
	t.Helper()
	conf, err := os.ReadFile(filepath.Join("..", "..", "deploy", "config", "secured", "nats.conf"))
	if err != nil {
		t.Fatal(err)
	}
	moved := map[string]string{
		"listen: ":    "listen: " + freeAddr(t),
		"http: ":      "http: " + freeAddr(t),
		"store_dir: ": fmt.Sprintf("store_dir: %q", t.TempDir()),
	}
	lines := strings.Split(string(conf), "\n")
	for i, line := range lines {
		for prefix, repl := range moved {
			if strings.HasPrefix(strings.TrimSpace(line), prefix) {
				lines[i] = repl
				delete(moved, prefix)
			}
		}
	}
	if len(moved) > 0 {
		t.Fatalf("nats.conf has no %v", moved)
	}
	path := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	br = startProc(t, nil, "broker", "--nats-config", path)
	return br, func(user string) string {
		return strings.Replace(br.ready["nats"], "nats://", "nats://"+user+":"+user+"-password-replace-me@", 1)
	}
}

// With the example permissions, every feature works: nothing chatd does
// is refused (the broker logs no violation), while an edge's credentials
// cannot write the event log, store messages or drop a stream, and no
// credentials cannot connect at all.
func TestTopologyWithPermissions(t *testing.T) {
	br, url := securedBroker(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the broker's log:\n%s", br.log())
		}
	})
	startWorker(t, url("worker"), "w", "--edge-dead-after", "2s")
	ports := filePorts(2)
	e1 := startEdge(t, url("edge"), "e1", "--file-ports", ports[0])
	e2 := startEdge(t, url("edge"), "e2", "--file-ports", ports[1])
	alice := client(t, e1, "alice", true)
	bob := client(t, e2, "bob", true)
	carol := client(t, e2, "carol", true)
	alice.Expect(M{"cmd": "add", "friend": "bob"}, "success")
	bob.Want("add_friend_reply")
	alice.Expect(M{"cmd": "add", "friend": "carol"}, "success")
	carol.Want("add_friend_reply")
	alice.Expect(M{"cmd": "create_group", "group": "g"}, "success")
	bob.Expect(M{"cmd": "add_group", "group": "g"}, "success")
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "hi"}, "success")
	if m := bob.Want("private_chat"); m.Str("text") != "hi" {
		t.Fatalf("bob got %s", m.Raw)
	}
	bob.Expect(M{"cmd": "group_chat", "group": "g", "text": "to all"}, "success")
	if m := alice.Want("group_chat"); m.Str("text") != "to all" {
		t.Fatalf("alice got %s", m.Raw)
	}
	if m := alice.Result(M{"cmd": "get_group_member", "group": "g"}); m.Str("result") != "success" {
		t.Fatalf("members: %s", m.Raw)
	}

	// A file relayed between the edges, and one stored for an offline user.
	data := make([]byte, 1<<20)
	rand.Read(data)
	alice.Send(M{"cmd": "send_file", "to_user": "bob", "length": fmt.Sprint(len(data)), "filename": "f"})
	send := alice.Want("send_file_port_reply")
	recv := bob.Want("recv_file_port_reply")
	in := bob.FilePort(recv.Port())
	relay := alice.FilePort(send.Port())
	go func() { _, _ = relay.Write(data) }()
	if got := chattest.ReadAll(t, in); !bytes.Equal(got, data) {
		t.Fatalf("relayed %d bytes, want %d", len(got), len(data))
	}
	bob.Send(M{"cmd": "offline"})
	bob.Want("offline_reply")
	if m := alice.Want("friend_offline"); m.Str("friend") != "bob" {
		t.Fatalf("alice got %s", m.Raw)
	}
	alice.Expect(M{"cmd": "private_chat", "user_to": "bob", "text": "later"}, "offline")
	alice.Send(M{"cmd": "send_file", "to_user": "bob", "length": fmt.Sprint(len(data)), "filename": "kept", "offline": true})
	out := alice.FilePort(alice.Want("send_file_port_reply").Port())
	go func() { _, _ = out.Write(data) }()
	if m := alice.Want("send_file_reply"); m.Str("result") != "stored" {
		t.Fatalf("stored file: %s", m.Raw)
	}
	bob.Login("bob", "pw")
	if m := alice.Want("friend_login"); m.Str("friend") != "bob" {
		t.Fatalf("alice got %s", m.Raw)
	}
	if m := bob.Want("private_chat"); m.Str("text") != "later" {
		t.Fatalf("bob got %s", m.Raw)
	}
	if got := chattest.ReadAll(t, bob.FilePort(bob.Want("recv_file_port_reply").Port())); !bytes.Equal(got, data) {
		t.Fatalf("downloaded %d bytes, want %d", len(got), len(data))
	}

	// An edge that dies is given up, and its users' friends are told.
	e2.kill()
	if m := alice.Want("friend_offline"); m.Str("friend") != "bob" && m.Str("friend") != "carol" {
		t.Fatalf("alice got %s", m.Raw)
	}
	alice.Want("friend_offline")

	if log := br.log(); strings.Contains(log, "Violation") {
		t.Fatalf("the broker refused something chatd did:\n%s", log)
	}

	// What the permissions are for.
	// The example passwords are bcrypt hashes of cost 11: under the race
	// detector the broker takes over a second to check one, longer than
	// the client's default 2 s wait once it is busy with others.
	nc, err := nats.Connect(url("edge"), nats.Timeout(chattest.Timeout), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, subj := range []string{"chat.ev.user.eA", "chat.inbox.eA"} {
		if _, err := nc.Request(subj, []byte("{}"), 300*time.Millisecond); !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, nats.ErrNoResponders) {
			t.Errorf("request on %s: %v", subj, err)
		}
		if !refusedEdge(br, "Publish", subj) {
			t.Errorf("publishing on %s with an edge's credentials was not refused", subj)
		}
	}
	if _, err := nc.SubscribeSync("chat.cmd.>"); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	if !refusedEdge(br, "Subscription", "chat.cmd.>") {
		t.Error("an edge's credentials could listen to the workers' commands")
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// A refused request goes unanswered: a short wait does.
	refused := func(what string, call func(ctx context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		if err := call(ctx); err == nil {
			t.Errorf("an edge's credentials could %s", what)
		}
	}
	for _, stream := range []string{"CHAT_EVENTS", "CHAT_INBOX", "CHAT_SESSION_LOG"} {
		refused("delete "+stream, func(ctx context.Context) error { return js.DeleteStream(ctx, stream) })
	}
	events, err := js.Stream(t.Context(), "CHAT_EVENTS")
	if err != nil {
		t.Fatalf("an edge cannot read CHAT_EVENTS' info: %v", err)
	}
	refused("purge CHAT_EVENTS", func(ctx context.Context) error { return events.Purge(ctx) })
	refused("delete an event", func(ctx context.Context) error { return events.DeleteMsg(ctx, 1) })
	if info, err := events.Info(t.Context()); err != nil || info.State.Msgs == 0 {
		t.Fatalf("CHAT_EVENTS after the attempts: %v, %v", info, err)
	}
	if _, err := nats.Connect(br.ready["nats"]); err == nil {
		t.Error("connected without credentials")
	}
}

// refusedEdge reports whether the broker logs a violation of kind
// (Publish, Subscription) on subject by the edge user, waiting a while
// for the line: the log reaches the test through a pipe, after the
// broker has answered.
func refusedEdge(br *proc, kind, subject string) bool {
	for deadline := time.Now().Add(chattest.Timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for line := range strings.Lines(br.log()) {
			if strings.Contains(line, "user:edge") && strings.Contains(line, kind+" Violation") &&
				strings.Contains(line, `Subject \"`+subject+`\"`) {
				return true
			}
		}
	}
	return false
}
