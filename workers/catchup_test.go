package workers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/chatd-io/chatd/internal/chattest"
	"github.com/chatd-io/chatd/internal/proto"
	"github.com/chatd-io/chatd/storage"
	"github.com/chatd-io/chatd/workers"
)

// BenchmarkCatchUp measures how fast a new worker builds its store from
// the log: b.N events (registrations, and friendships between them) are
// in the stream before the worker starts; the time is the worker's start,
// which returns once it has applied them all. Run it with a fixed count,
// for example -benchtime=1000000x for a million events.
func BenchmarkCatchUp(b *testing.B) {
	c := chattest.StartBroker(b, "")
	first := c.StartWorker("") // creates the streams
	first.Stop()
	js, err := jetstream.New(c.Conn("bench"))
	if err != nil {
		b.Fatal(err)
	}
	hash, _ := chattest.CheapPasswords().Hash("pw")
	var pending []jetstream.PubAckFuture
	for i := range b.N {
		ev := storage.Event{Type: storage.EvUserRegistered, User: fmt.Sprint("u", i), Hash: hash, Time: time.Now().UnixMilli()}
		subject := "chat.ev.user." + proto.Token(ev.User)
		if i%2 == 1 { // every other event befriends the last two users
			ev = storage.Event{Type: storage.EvFriendAdded, User: fmt.Sprint("u", i-1), Friend: fmt.Sprint("u", i-2), Time: ev.Time}
			subject = "chat.ev.friend." + proto.Token(ev.User) + "." + proto.Token(ev.Friend)
		}
		data, _ := json.Marshal(ev)
		f, err := js.PublishAsync(subject, data)
		if err != nil {
			b.Fatal(err)
		}
		if pending = append(pending, f); len(pending) == 1000 {
			for _, f := range pending {
				select {
				case <-f.Ok():
				case err := <-f.Err():
					b.Fatal(err)
				}
			}
			pending = pending[:0]
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("publishing the log took over a minute")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	b.ResetTimer()
	start := time.Now()
	w, err := workers.New(ctx, workers.Options{Conn: c.Conn("late"), DataDir: b.TempDir(), Name: "late",
		Logger: chattest.Logger()})
	elapsed := time.Since(start)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close(ctx)
	if got := w.Store().LastSeq(); got < uint64(b.N) {
		b.Fatalf("store at %d after catching up, want %d", got, b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
}
