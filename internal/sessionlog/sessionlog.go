// Package sessionlog is the record of which users each edge holds: the
// stream CHAT_SESSION_LOG, where an edge appends the logins and logouts
// it sees, many in one message when they come together. Workers read an
// edge's record when it stops beating, to tell its users' friends.
//
// A message's body is one change per line: '+' or '-' and the user's
// subject token (proto.Token). Replaying an edge's messages in order
// gives the users it holds. Each of an edge's NATS connections writes its
// own subject (Subject), so the changes of one user, always written on
// the same connection, stay in order. To keep the record short an edge
// writes, now and then, every user it holds as '+' lines, and then
// purges what came before on that subject.
package sessionlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/chatd-io/chatd/internal/proto"
)

// Stream is the stream's name; Prefix starts its subjects.
const (
	Stream = "CHAT_SESSION_LOG"
	Prefix = "chat.sessions."
)

// Subject is where an edge's connection conn writes its changes.
func Subject(edgeID string, conn int) string { return Prefix + edgeID + "." + strconv.Itoa(conn) }

// Filter matches every subject of an edge.
func Filter(edgeID string) string { return Prefix + edgeID + ".>" }

// Config is the stream's configuration. No limits: each edge keeps its
// own record short, and the workers purge the record of an edge they give
// up on.
func Config(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        Stream,
		Description: "chatd edges' logins and logouts: which users each edge holds",
		Subjects:    []string{Prefix + ">"},
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
}

// Append adds one change to a message body.
func Append(b []byte, user string, add bool) []byte {
	op := byte('-')
	if add {
		op = '+'
	}
	b = append(b, op)
	b = append(b, proto.Token(user)...)
	return append(b, '\n')
}

// Apply replays a message body onto users. A line it cannot read is
// skipped and reported; the others still count.
func Apply(users map[string]bool, body []byte) error {
	var bad error
	for len(body) > 0 {
		line := body
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			line, body = body[:i], body[i+1:]
		} else {
			body = nil
		}
		if len(line) == 0 {
			continue
		}
		user, err := proto.NameFromToken(string(line[1:]))
		switch {
		case err != nil || user == "":
			bad = fmt.Errorf("unreadable line %q", line)
		case line[0] == '+':
			users[user] = true
		case line[0] == '-':
			delete(users, user)
		default:
			bad = fmt.Errorf("unreadable line %q", line)
		}
	}
	return bad
}

// Read replays the record of edgeID: the users it held when it last
// wrote. Lines it cannot read are skipped: only edges write here, and a
// user missing from the answer costs less than an edge never given up.
func Read(ctx context.Context, s jetstream.Stream, edgeID string) (map[string]bool, error) {
	users := map[string]bool{}
	// The read may end before the consumer's last fetch does; the server
	// then drops the consumer once it has been idle this long (nats.go's
	// default is five minutes, and each reaped edge leaves one).
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{Filter(edgeID)},
		InactiveThreshold: readerIdle})
	if err != nil {
		return nil, fmt.Errorf("session log of %s: %w", edgeID, err)
	}
	if c.CachedInfo().NumPending == 0 {
		return users, nil
	}
	for {
		batch, err := c.Fetch(256, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return nil, fmt.Errorf("session log of %s: %w", edgeID, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			_ = Apply(users, m.Data())
			if md, err := m.Metadata(); err == nil && md.NumPending == 0 {
				return users, nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, fmt.Errorf("session log of %s: %w", edgeID, err)
		}
		if n == 0 {
			return users, nil // nothing more came within the wait
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// readerIdle is how long Read's consumer outlives its last fetch.
const readerIdle = 10 * time.Second

// Forget purges the record of edgeID.
func Forget(ctx context.Context, s jetstream.Stream, edgeID string) error {
	if err := s.Purge(ctx, jetstream.WithPurgeSubject(Filter(edgeID))); err != nil {
		return fmt.Errorf("purging the session log of %s: %w", edgeID, err)
	}
	return nil
}
