package sessionlog_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/chatd-io/chatd/internal/chattest"
	"github.com/chatd-io/chatd/internal/sessionlog"
)

type change struct {
	user string
	add  bool
}

func body(changes ...change) []byte {
	var b []byte
	for _, c := range changes {
		b = sessionlog.Append(b, c.user, c.add)
	}
	return b
}

func TestApply(t *testing.T) {
	tests := []struct {
		name    string
		start   []string
		body    []byte
		want    []string
		wantErr bool
	}{
		{"logins", nil, body(change{"alice", true}, change{"bob", true}), []string{"alice", "bob"}, false},
		{"logout after login", nil, body(change{"alice", true}, change{"alice", false}), nil, false},
		{"login after logout", []string{"alice"}, body(change{"alice", false}, change{"alice", true}), []string{"alice"}, false},
		{"logout of someone absent", []string{"bob"}, body(change{"alice", false}), []string{"bob"}, false},
		{"names that are not subject tokens", nil, body(change{"a.b", true}, change{">", true}, change{"*", true}, change{"张三", true}),
			[]string{"*", ">", "a.b", "张三"}, false},
		{"bad lines are skipped, the rest count", nil,
			append(append([]byte("?xyz\n+\n+!!!\n"), body(change{"carol", true})...), "\n\n"...), []string{"carol"}, true},
		{"no trailing newline", nil, []byte("+" + "ZGF2ZQ"), []string{"dave"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			users := map[string]bool{}
			for _, u := range tt.start {
				users[u] = true
			}
			err := sessionlog.Apply(users, tt.body)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if got := slices.Sorted(maps.Keys(users)); !slices.Equal(got, tt.want) {
				t.Fatalf("users %q, want %q", got, tt.want)
			}
		})
	}
}

// Read replays one edge's subjects, in order, and none of another's;
// Forget removes the one edge's record only.
func TestReadAndForget(t *testing.T) {
	c := chattest.StartBroker(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, err := jetstream.New(c.Conn("test"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.CreateStream(ctx, sessionlog.Config(1))
	if err != nil {
		t.Fatal(err)
	}
	pub := func(edge string, conn int, b []byte) {
		t.Helper()
		if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: sessionlog.Subject(edge, conn), Data: b}); err != nil {
			t.Fatal(err)
		}
	}
	read := func(edge string) []string {
		t.Helper()
		users, err := sessionlog.Read(ctx, s, edge)
		if err != nil {
			t.Fatal(err)
		}
		return slices.Sorted(maps.Keys(users))
	}
	if got := read("E1"); len(got) != 0 {
		t.Fatalf("empty log: %q", got)
	}
	pub("E1", 0, body(change{"alice", true}, change{"bob", true}))
	pub("E1", 1, body(change{"carol", true}))
	pub("E2", 0, body(change{"dave", true}))
	pub("E1", 0, body(change{"alice", false}))
	// More than one fetch's worth.
	for i := range 600 {
		pub("E1", 1, body(change{fmt.Sprint("u", i), true}, change{fmt.Sprint("u", i), i%3 == 0}))
	}
	want := []string{"bob", "carol"}
	for i := range 600 {
		if i%3 == 0 {
			want = append(want, fmt.Sprint("u", i))
		}
	}
	slices.Sort(want)
	if got := read("E1"); !slices.Equal(got, want) {
		t.Fatalf("E1 holds %d users %q…, want %d", len(got), got[:min(len(got), 5)], len(want))
	}
	if got := read("E2"); !slices.Equal(got, []string{"dave"}) {
		t.Fatalf("E2 holds %q", got)
	}
	if err := sessionlog.Forget(ctx, s, "E1"); err != nil {
		t.Fatal(err)
	}
	if got := read("E1"); len(got) != 0 {
		t.Fatalf("E1 after forget: %q", got)
	}
	if got := read("E2"); !slices.Equal(got, []string{"dave"}) {
		t.Fatalf("E2 after E1 was forgotten: %q", got)
	}
	// The readers' consumers do not stay for minutes after their reads.
	n := 0
	for ci := range s.ListConsumers(ctx).Info() {
		n++
		if ci.Config.InactiveThreshold <= 0 || ci.Config.InactiveThreshold > 30*time.Second {
			t.Errorf("consumer %s stays %s after its last fetch", ci.Name, ci.Config.InactiveThreshold)
		}
	}
	if n == 0 {
		t.Error("no consumer left to check")
	}
}
