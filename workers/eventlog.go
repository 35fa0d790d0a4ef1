package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/chatd-io/chatd/internal/proto"
	"github.com/chatd-io/chatd/storage"
)

// Streams and subjects of the event log and the offline inbox.
const (
	EventStream  = "CHAT_EVENTS"
	eventPrefix  = "chat.ev."
	InboxStream  = proto.InboxStream
	inboxPrefix  = proto.InboxPrefix
	maxInboxSize = 10000 // messages kept per offline user; the oldest go first
)

// Entity subjects. Every state change is published on the subject of the
// entity it creates, with "expect no earlier message on this subject", so
// JetStream itself decides races: two registrations of one name, two
// creations of one group, two friendship requests crossing each other.
func userEvSubject(user string) string { return eventPrefix + "user." + proto.Token(user) }

func groupEvSubject(group string) string { return eventPrefix + "group." + proto.Token(group) }

func memberEvSubject(group, user string) string {
	return eventPrefix + "member." + proto.Token(group) + "." + proto.Token(user)
}

func friendEvSubject(a, b string) string {
	if b < a {
		a, b = b, a
	}
	return eventPrefix + "friend." + proto.Token(a) + "." + proto.Token(b)
}

func inboxSubject(user string) string { return proto.InboxSubject(user) }

// errConflict means the entity already exists in the log.
var errConflict = errors.New("entity already exists")

// ensureStreams creates or updates the two streams the workers rely on.
func ensureStreams(ctx context.Context, js jetstream.JetStream, replicas int, inboxAge time.Duration) error {
	for _, cfg := range streamConfigs(replicas, inboxAge) {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// streamConfigs are the two streams' configurations.
//
// Reads of them must see the newest write: a login's look at the inbox
// must find a message stored a moment before (its nudge may have gone
// out before the user's subscription), and "no such user" must not be
// said of one just registered. A direct get is answered by any replica,
// and a follower may not have the newest message yet; with one replica
// there is only the leader, and direct gets are the cheaper call.
func streamConfigs(replicas int, inboxAge time.Duration) []jetstream.StreamConfig {
	replicas = max(replicas, 1)
	direct := replicas == 1
	return []jetstream.StreamConfig{{
		Name:        EventStream,
		Description: "chatd state changes: users, friendships, groups, members",
		Subjects:    []string{eventPrefix + ">"},
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		AllowDirect: direct,
		Discard:     jetstream.DiscardNew,
		Duplicates:  2 * time.Minute,
	}, {
		Name:              InboxStream,
		Description:       "chatd messages waiting for offline users",
		Subjects:          []string{inboxPrefix + ">"},
		Storage:           jetstream.FileStorage,
		Replicas:          replicas,
		AllowDirect:       direct,
		MaxAge:            inboxAge,
		MaxMsgsPerSubject: maxInboxSize,
		Discard:           jetstream.DiscardOld,
	}}
}

// publishEvent appends ev on subject, failing with errConflict if the
// subject already holds an event. It returns the event's log sequence.
func publishEvent(ctx context.Context, js jetstream.JetStream, subject string, ev storage.Event) (uint64, error) {
	data, err := json.Marshal(ev)
	if err != nil {
		return 0, err
	}
	ack, err := js.Publish(ctx, subject, data, jetstream.WithExpectLastSequencePerSubject(0))
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return 0, errConflict
		}
		return 0, fmt.Errorf("publish %s: %w", ev.Type, err)
	}
	return ack.Sequence, nil
}

// applier keeps a Store in step with the event stream and lets callers
// wait until a given sequence has been applied.
type applier struct {
	store  storage.Store
	stream jetstream.Stream
	log    *slog.Logger
	delay  time.Duration

	pending atomic.Uint64 // events in the stream after the last one received
	known   atomic.Uint64 // the stream's last sequence as of the last event received

	mu      sync.Mutex
	changed chan struct{} // closed and replaced after every apply
	err     error         // a store failure stops applying for good
}

func newApplier(store storage.Store, stream jetstream.Stream, log *slog.Logger) *applier {
	return &applier{store: store, stream: stream, log: log, changed: make(chan struct{})}
}

// start consumes the stream from the store's last sequence on. An ordered
// consumer redelivers from the right place by itself after a gap or a
// reconnect, so the store sees every event exactly once, in order.
func (a *applier) start(ctx context.Context) (jetstream.ConsumeContext, error) {
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if last := a.store.LastSeq(); last > 0 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = last + 1
	}
	cons, err := a.stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("event consumer: %w", err)
	}
	// A short pull expiry means short heartbeats: when the server holding
	// the consumer goes away (a broker of a cluster stops), the consumer is
	// recreated on another within seconds rather than the default thirty,
	// and reads that wait for the log do not stall that long.
	cc, err := cons.Consume(a.handle, jetstream.PullExpiry(2*time.Second), jetstream.PullHeartbeat(500*time.Millisecond))
	if err != nil {
		return nil, fmt.Errorf("consume events: %w", err)
	}
	return cc, nil
}

func (a *applier) handle(msg jetstream.Msg) {
	md, err := msg.Metadata()
	if err != nil {
		a.log.Error("event without metadata", "err", err)
		return
	}
	seq := md.Sequence.Stream
	a.pending.Store(md.NumPending)
	a.known.Store(seq + md.NumPending)
	if a.delay > 0 {
		time.Sleep(a.delay)
	}
	var ev storage.Event
	if json.Unmarshal(msg.Data(), &ev) != nil || ev.Validate() != nil {
		// Written by a newer or broken producer: record it as seen so that
		// one bad event cannot stop every worker forever.
		a.log.Warn("skipping unreadable event", "seq", seq, "subject", msg.Subject())
		err = a.store.Skip(seq)
	} else {
		err = a.store.Apply(seq, ev)
	}
	a.mu.Lock()
	if err != nil && a.err == nil {
		a.err = err
		a.log.Error("applying events stopped", "seq", seq, "err", err)
	}
	close(a.changed)
	a.changed = make(chan struct{})
	a.mu.Unlock()
}

// wait blocks until the store has applied seq or ctx ends.
func (a *applier) wait(ctx context.Context, seq uint64) error {
	for {
		if a.store.LastSeq() >= seq {
			return nil
		}
		a.mu.Lock()
		ch, err := a.changed, a.err
		a.mu.Unlock()
		if err != nil {
			return err
		}
		if a.store.LastSeq() >= seq {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for event %d (applied %d): %w", seq, a.store.LastSeq(), ctx.Err())
		}
	}
}

// catchUp waits until the store has applied every event the stream held
// when the consumer last heard from it: each event arrives with the count
// of those after it. Asking the stream for its position instead costs a
// JetStream API call per login, which under a login storm costs more than
// the login (its info counts every subject; a direct get of the last
// message on "chat.ev.>" scans them). What this misses is an event
// published through another worker and still in flight to this one, for
// well under a millisecond; a session's own writes are covered by its
// sequence in any case.
func (a *applier) catchUp(ctx context.Context) error {
	return a.wait(ctx, a.known.Load())
}

// refresh makes a negative answer authoritative: if the log holds an event
// on subject, wait until the store has applied it. It reports whether the
// log holds one, in which case the caller must look again: the store may
// have applied it at any moment since the caller's first look, including
// just before this check.
func (a *applier) refresh(ctx context.Context, subject string) (bool, error) {
	m, err := a.stream.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up %s: %w", subject, err)
	}
	return true, a.wait(ctx, m.Sequence)
}
