package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/chatd-io/chatd/internal/proto"
	"github.com/chatd-io/chatd/internal/sessionlog"
)

// ensureSessionBucket creates the session log, where edges record the
// users they hold, and then the bucket where they keep heartbeats (an
// edge that finds the bucket finds the log). File storage: after a broker
// restart both must still be there, or every edge would look freshly
// dead, and its users with it.
func ensureSessionBucket(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	if _, err := js.CreateOrUpdateStream(ctx, sessionlog.Config(replicas)); err != nil {
		return nil, fmt.Errorf("stream %s: %w", sessionlog.Stream, err)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      proto.SessionBucket,
		Description: "chatd edges' heartbeats",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, err
	}
	return kv, nil
}

// reaper watches the edges' heartbeats. When an edge has not beaten for
// EdgeDeadAfter, one worker (whoever deletes its heartbeat key first)
// reads and removes its record and tells the friends of each of its users
// who is not logged in anywhere else that the user went offline.
type reaper struct {
	w   *Worker
	kv  jetstream.KeyValue
	log jetstream.Stream
}

type beat struct {
	rev uint64
	at  time.Time // local time the beat was seen
}

func (r *reaper) run(ctx context.Context) {
	defer r.w.wg.Done()
	for ctx.Err() == nil {
		if err := r.watch(ctx); err != nil && ctx.Err() == nil {
			r.w.log.Warn("edge heartbeat watch failed; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (r *reaper) watch(ctx context.Context) error {
	watcher, err := r.kv.Watch(ctx, proto.EdgeKey("*"))
	if err != nil {
		return err
	}
	defer watcher.Stop()
	seen := map[string]beat{}
	observe := func(e jetstream.KeyValueEntry) {
		if e == nil {
			return // the initial values are in
		}
		id := strings.TrimPrefix(e.Key(), proto.EdgeKey(""))
		if e.Operation() == jetstream.KeyValuePut {
			seen[id] = beat{rev: e.Revision(), at: time.Now()}
		} else {
			delete(seen, id)
		}
	}
	tick := time.NewTicker(r.w.opts.EdgeDeadAfter / 3)
	defer tick.Stop()
	reconnects := r.w.nc.Stats().Reconnects
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-watcher.Updates():
			if !ok {
				return errors.New("watcher closed")
			}
			observe(e)
		case <-tick.C:
			// Beats that arrived while this goroutine was not running count.
			for drained := false; !drained; {
				select {
				case e, ok := <-watcher.Updates():
					if !ok {
						return errors.New("watcher closed")
					}
					observe(e)
				default:
					drained = true
				}
			}
			now := time.Now()
			// Beats could not reach us while we were cut off; that says
			// nothing about the edges. Start counting again.
			if rc := r.w.nc.Stats().Reconnects; rc != reconnects {
				reconnects = rc
				for id, b := range seen {
					seen[id] = beat{rev: b.rev, at: now}
				}
			}
			for id, b := range seen {
				if now.Sub(b.at) > r.w.opts.EdgeDeadAfter {
					delete(seen, id)
					r.reap(ctx, id, b.rev)
				}
			}
		}
	}
}

// reap gives up an edge that stopped beating at revision rev.
func (r *reaper) reap(ctx context.Context, edgeID string, rev uint64) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var name string
	var last []byte
	if e, err := r.kv.Get(ctx, proto.EdgeKey(edgeID)); err == nil {
		var v struct {
			Name string `json:"name"`
		}
		last = e.Value()
		_ = json.Unmarshal(last, &v)
		name = v.Name
	}
	if err := r.kv.Delete(ctx, proto.EdgeKey(edgeID), jetstream.LastRevision(rev)); err != nil {
		return // it beat again, or another worker is on it
	}
	r.w.metrics.reaped.Inc()
	users, err := sessionlog.Read(ctx, r.log, edgeID)
	if err != nil {
		r.w.log.Warn("reading a dead edge's sessions failed; giving it up again later", "edge", edgeID, "err", err)
		r.again(ctx, edgeID, last)
		return
	}
	if err := sessionlog.Forget(ctx, r.log, edgeID); err != nil {
		r.w.log.Warn("removing a dead edge's sessions failed", "edge", edgeID, "err", err)
	}
	r.legacyKeys(ctx, edgeID, users)
	n := 0
	for user := range users {
		if edge, err := r.w.holder(ctx, user); err != nil || edge != "" {
			continue // logged in elsewhere: nothing changed for the friends
		}
		if err := r.w.announce(ctx, user, false); err != nil {
			r.w.log.Warn("offline notice failed", "user", user, "err", err)
		}
		n++
	}
	r.w.log.Warn("edge stopped beating; its sessions are over", "edge", edgeID, "name", name, "users_offline", n)
}

// again puts back the heartbeat key of an edge whose record could not be
// read, as it was: the workers see it stop beating once more and give it
// up then, instead of never telling its users' friends. Only a key that
// nobody has written since is put back (a live edge beats anew on its
// own). It is done even while this worker shuts down: another one reaps.
func (r *reaper) again(ctx context.Context, edgeID string, last []byte) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if last == nil {
		last = []byte("{}")
	}
	if _, err := r.kv.Create(ctx, proto.EdgeKey(edgeID), last); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		r.w.log.Error("a dead edge's heartbeat could not be put back: its users' friends are not told",
			"edge", edgeID, "err", err)
	}
}

// legacyKeys adds to users, and deletes, the keys an edge of an earlier
// release wrote in the bucket, one per user it held, so that such an edge
// is still given up properly while a deployment is being upgraded.
func (r *reaper) legacyKeys(ctx context.Context, edgeID string, users map[string]bool) {
	keys, err := r.kv.ListKeysFiltered(ctx, proto.SessionKeyPrefix(edgeID)+">")
	if err != nil {
		r.w.log.Warn("listing a dead edge's session keys failed", "edge", edgeID, "err", err)
		return
	}
	for key := range keys.Keys() {
		if err := r.kv.Delete(ctx, key); err != nil {
			continue
		}
		if user, err := proto.NameFromToken(strings.TrimPrefix(key, proto.SessionKeyPrefix(edgeID))); err == nil {
			users[user] = true
		}
	}
}
