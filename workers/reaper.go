package workers

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/chatd-io/chatd/internal/proto"
)

// ensureSessionBucket creates the bucket where edges keep heartbeats and
// the users they hold. File storage: after a broker restart the keys must
// still be there, or every edge would look freshly dead.
func ensureSessionBucket(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      proto.SessionBucket,
		Description: "chatd edges' heartbeats and the users each one holds",
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
// removes its session keys and tells the friends of each of its users who
// is not logged in anywhere else that the user went offline.
type reaper struct {
	w  *Worker
	kv jetstream.KeyValue
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
	if e, err := r.kv.Get(ctx, proto.EdgeKey(edgeID)); err == nil {
		var v struct {
			Name string `json:"name"`
		}
		_ = json.Unmarshal(e.Value(), &v)
		name = v.Name
	}
	if err := r.kv.Delete(ctx, proto.EdgeKey(edgeID), jetstream.LastRevision(rev)); err != nil {
		return // it beat again, or another worker is on it
	}
	r.w.metrics.reaped.Inc()
	keys, err := r.kv.ListKeysFiltered(ctx, proto.SessionKeyPrefix(edgeID)+">")
	if err != nil {
		r.w.log.Warn("listing a dead edge's sessions failed", "edge", edgeID, "err", err)
		return
	}
	n := 0
	for key := range keys.Keys() {
		if err := r.kv.Delete(ctx, key); err != nil {
			continue
		}
		user, err := proto.NameFromToken(strings.TrimPrefix(key, proto.SessionKeyPrefix(edgeID)))
		if err != nil {
			continue
		}
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
