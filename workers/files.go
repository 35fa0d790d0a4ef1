package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/chatd-io/chatd/internal/probe"
	"github.com/chatd-io/chatd/internal/proto"
)

// ensureFileBucket creates or updates the object store for offline files.
//
// nats.go makes the bucket's stream answer direct gets, which any
// replica serves: with more than one, a lagging follower could say "no
// such file" of one uploaded a moment before. So with replicas the stream
// is changed to answer from its leader. The bucket is only recreated when
// its settings differ, so that a worker starting does not turn direct gets
// back on for an edge that looks the bucket up meanwhile.
func ensureFileBucket(ctx context.Context, js jetstream.JetStream, replicas int, maxAge time.Duration) error {
	replicas = max(replicas, 1)
	cfg := jetstream.ObjectStoreConfig{
		Bucket:      proto.FileBucket,
		Description: "chatd files waiting for offline users",
		TTL:         maxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	}
	stream, err := js.Stream(ctx, fileStream)
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("object store %s: %w", proto.FileBucket, err)
	}
	if stream == nil || differs(stream.CachedInfo().Config, cfg) {
		if _, err := js.CreateOrUpdateObjectStore(ctx, cfg); err != nil {
			return fmt.Errorf("object store %s: %w", proto.FileBucket, err)
		}
		if stream, err = js.Stream(ctx, fileStream); err != nil {
			return fmt.Errorf("object store %s: %w", proto.FileBucket, err)
		}
	}
	if sc := stream.CachedInfo().Config; sc.AllowDirect != (replicas == 1) {
		sc.AllowDirect = replicas == 1
		if _, err := js.UpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("object store %s: direct gets: %w", proto.FileBucket, err)
		}
	}
	return nil
}

// fileStream is the stream behind the files bucket (nats.go's naming).
const fileStream = "OBJ_" + proto.FileBucket

// differs reports whether the bucket's stream has other settings than cfg asks for.
func differs(sc jetstream.StreamConfig, cfg jetstream.ObjectStoreConfig) bool {
	return sc.Replicas != cfg.Replicas || sc.MaxAge != cfg.TTL || sc.Description != cfg.Description ||
		sc.Storage != cfg.Storage
}

// sendFile authorises a transfer and finds where it goes. The edge has
// already checked length and file name against its own limits and holds a
// port for the sender; this decides between a refusal, a relay to the one
// edge that will serve the recipient, and storing the file.
func (w *Worker) sendFile(ctx context.Context, c *call) ([]byte, error) {
	if !actingUserOK(c, "from_user") {
		return result(c.cmd, "forbidden"), nil
	}
	to, ok := c.name("to_user")
	filename, _, okName := c.f.str("filename")
	size, okLen := proto.FileLength(c.f.raw("length"), 1<<62)
	if !ok || to == c.user || !okName || !proto.ValidFilename(filename) || !okLen || c.transfer == "" {
		return result(c.cmd, "invalid"), nil
	}
	if refusal, err := w.needFriend(ctx, c.user, to); refusal != "" || err != nil {
		return result(c.cmd, refusal, "user", to), err
	}
	offer := proto.FileOffer{ID: c.transfer, From: c.user, To: to, Length: c.f.raw("length"), Size: size, Filename: filename}
	for range 2 { // the chosen edge may lose the user between probe and offer
		edgeID, err := w.holder(ctx, to)
		if err != nil {
			return nil, err
		}
		if edgeID == "" {
			break
		}
		taken, err := w.offer(ctx, edgeID, offer)
		if err != nil {
			return nil, err
		}
		if taken {
			return result(c.cmd, proto.FileRelay), nil
		}
	}
	if c.offlineOK {
		return result(c.cmd, proto.FileStore), nil
	}
	return result(c.cmd, "offline", "user", to), nil
}

// holder returns the ID of an edge holding a session of user, or "" when
// nobody does.
func (w *Worker) holder(ctx context.Context, user string) (string, error) {
	a, err := probe.Ask(ctx, w.nc, user, w.opts.DeliverTimeout)
	if errors.Is(err, probe.ErrNoAnswer) || errors.Is(err, context.DeadlineExceeded) {
		return "", nil
	}
	return a.Edge, err
}

// offer hands the offer to an edge, which answers once it has a port for
// the recipient and listens for the relay.
func (w *Worker) offer(ctx context.Context, edgeID string, offer proto.FileOffer) (bool, error) {
	data, err := json.Marshal(offer)
	if err != nil {
		return false, err
	}
	octx, cancel := context.WithTimeout(ctx, w.opts.DeliverTimeout)
	defer cancel()
	reply, err := w.nc.RequestWithContext(octx, proto.EdgeFileSubject(edgeID), data)
	switch {
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, context.DeadlineExceeded):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("offer file to edge %s: %w", edgeID, err)
	}
	return string(reply.Data) == "ok", nil
}

// fileStored queues a stored file for its recipient like an offline
// message, so it is offered once, after the recipient's next login. An
// edge whose download failed puts the offer back the same way, without
// the nudge that would offer it again at once.
func (w *Worker) fileStored(ctx context.Context, c *call) ([]byte, error) {
	var req struct {
		proto.FileOffer
		Nudge bool `json:"nudge"`
	}
	if err := json.Unmarshal(c.body, &req); err != nil || req.Object == "" || req.From != c.user || !proto.ValidName(req.To) {
		return result(c.cmd, "invalid"), nil
	}
	line := obj("cmd", "recv_file_port_reply", "offline", true, "length", req.Length, "filename", req.Filename,
		"user", req.From, "object", req.Object, "size", req.Size)
	if err := w.inbox.put(ctx, req.To, line); err != nil {
		return nil, err
	}
	if req.Nudge {
		w.nudge(req.To)
	}
	return result(c.cmd, "success"), nil
}
