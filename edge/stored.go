package edge

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/chatd-io/chatd/internal/proto"
)

// Files for offline users live in a JetStream object store bucket, so any
// edge can take the upload and any edge can serve the download. The offer
// travels like an offline message, through the recipient's inbox, which
// makes it go to exactly one session after the next login.

// storedOfferPrefix starts the inbox line of a stored file; the worker
// writes cmd first, and the edge turns the line into a port for the client.
const storedOfferPrefix = `{"cmd":"recv_file_port_reply"`

// fileStore returns the bucket of stored files. Looking it up is a
// JetStream request, so the handle is kept once found; the workers create
// the bucket, so it may not exist yet.
func (e *Edge) fileStore(ctx context.Context) (jetstream.ObjectStore, error) {
	e.objMu.Lock()
	defer e.objMu.Unlock()
	if e.objects == nil {
		obs, err := e.js.ObjectStore(ctx, proto.FileBucket)
		if err != nil {
			return nil, err
		}
		e.objects = obs
	}
	return e.objects, nil
}

// context returns a context that ends with the transfer.
func (t *transfer) context() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-t.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// upload stores the sender's bytes, then queues the offer for the recipient.
func (t *transfer) upload(data net.Conn) {
	ctx, cancel := t.context()
	defer cancel()
	meta := map[string]string{"from": t.offer.From, "to": t.offer.To, "filename": t.offer.Filename}
	src := io.LimitReader(idleConn{data, t.e.opts.FileTimeout}, t.offer.Size)
	size, err := putObject(ctx, t.e.js, proto.FileBucket, t.offer.ID, meta, src, t.e.opts.FileTimeout)
	if err == nil && size != t.offer.Size {
		err = fmt.Errorf("client sent %d of %d bytes", size, t.offer.Size)
	}
	if err == nil {
		offer := t.offer
		offer.Object = t.offer.ID
		err = t.e.queueStored(ctx, offer, true)
	}
	if err != nil {
		t.e.log.Warn("storing a file failed", "id", t.offer.ID, "from", t.offer.From, "to", t.offer.To, "err", err)
		t.e.deleteObject(t.offer.ID)
		t.end("aborted", false)
		return
	}
	t.owner.send(withID(proto.Result("send_file", "stored", "user", t.offer.To, "filename", t.offer.Filename), nil))
	t.end("", false)
}

// download serves a stored file to its recipient and deletes it once it
// is out; a failed download puts the offer back for the next login.
func (t *transfer) download(data net.Conn) {
	ctx, cancel := t.context()
	defer cancel()
	err := func() error {
		obs, err := t.e.fileStore(ctx)
		if err != nil {
			return err
		}
		r, err := obs.Get(ctx, t.offer.Object)
		if err != nil {
			return err
		}
		defer r.Close()
		_, err = io.CopyN(idleConn{data, t.e.opts.FileTimeout}, r, t.offer.Size)
		return err
	}()
	if err != nil {
		t.e.log.Warn("serving a stored file failed", "id", t.offer.Object, "to", t.offer.To, "err", err)
		t.e.requeue(t.offer)
		t.end("aborted", false)
		return
	}
	t.end("", false)
	t.e.deleteObject(t.offer.Object)
}

// requeue puts a stored file's offer back into the recipient's inbox,
// without a nudge: it is offered again at the next login, not at once.
func (e *Edge) requeue(offer proto.FileOffer) {
	ctx, cancel := context.WithTimeout(context.Background(), e.opts.RequestTimeout)
	defer cancel()
	if err := e.queueStored(ctx, offer, false); err != nil {
		e.log.Error("a stored file's offer is lost", "id", offer.Object, "to", offer.To, "err", err)
	}
}

// queueStored asks a worker to put a stored file's offer into its
// recipient's inbox.
func (e *Edge) queueStored(ctx context.Context, offer proto.FileOffer, nudge bool) error {
	body, err := json.Marshal(struct {
		proto.FileOffer
		Nudge bool `json:"nudge"`
	}{offer, nudge})
	if err != nil {
		return err
	}
	m := nats.NewMsg(proto.InternalPrefix + proto.IntFileStored)
	m.Header.Set(proto.HdrUser, offer.From)
	m.Data = body
	reply, err := e.request(ctx, m)
	if err != nil {
		return err
	}
	var res struct {
		Result string `json:"result"`
	}
	if json.Unmarshal(reply.Data, &res) != nil || res.Result != "success" {
		return fmt.Errorf("queueing the offer: %s", reply.Data)
	}
	return nil
}

func (e *Edge) deleteObject(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), e.opts.RequestTimeout)
	defer cancel()
	obs, err := e.fileStore(ctx)
	if err == nil {
		err = obs.Delete(ctx, name)
	}
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		e.log.Warn("deleting a stored file failed", "id", name, "err", err)
	}
}

// offerStored turns a stored file's inbox line into a port for owner.
func (e *Edge) offerStored(owner *conn, user string, line []byte) {
	var f struct {
		Length   json.RawMessage `json:"length"`
		Size     int64           `json:"size"`
		Filename string          `json:"filename"`
		User     string          `json:"user"`
		Object   string          `json:"object"`
	}
	if err := json.Unmarshal(line, &f); err != nil || f.Object == "" {
		e.log.Warn("unreadable stored file offer", "user", user, "line", string(line))
		return
	}
	offer := proto.FileOffer{ID: nuid.Next(), From: f.User, To: user, Length: f.Length, Size: f.Size,
		Filename: f.Filename, Object: f.Object}
	ctx, cancel := context.WithTimeout(context.Background(), e.opts.RequestTimeout)
	defer cancel()
	if obs, err := e.fileStore(ctx); err == nil {
		if _, err := obs.GetInfo(ctx, f.Object); errors.Is(err, jetstream.ErrObjectNotFound) {
			e.log.Info("stored file expired before delivery", "id", f.Object, "from", f.User, "to", user)
			return
		}
	}
	t, err := e.newTransfer(owner, offer, false, true)
	if err != nil {
		e.log.Warn("cannot offer a stored file now", "id", f.Object, "to", user, "err", err)
		e.requeue(offer)
		return
	}
	owner.send(t.portReply(nil))
	t.begin()
}

// putObject writes r to the bucket as name, in the object store's own
// layout (so `nats object get` reads it), keeping at most fileWindow chunks
// unacknowledged: the library's Put can have thousands in flight, which for
// a fast client and a large file means hundreds of MiB held in memory.
func putObject(ctx context.Context, js jetstream.JetStream, bucket, name string, meta map[string]string,
	r io.Reader, ackWait time.Duration) (int64, error) {
	id := nuid.Next()
	chunkSubj := "$O." + bucket + ".C." + id
	sum := sha256.New()
	buf := make([]byte, fileChunk)
	var pending []jetstream.PubAckFuture
	var size int64
	var chunks uint32
	wait := func(f jetstream.PubAckFuture) error {
		timer := time.NewTimer(ackWait)
		defer timer.Stop()
		select {
		case <-f.Ok():
			return nil
		case err := <-f.Err():
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			return errors.New("object store did not acknowledge a chunk in time")
		}
	}
	fail := func(err error) (int64, error) {
		pctx, cancel := context.WithTimeout(context.Background(), ackWait)
		defer cancel()
		if s, serr := js.Stream(pctx, "OBJ_"+bucket); serr == nil {
			_ = s.Purge(pctx, jetstream.WithPurgeSubject(chunkSubj))
		}
		return 0, fmt.Errorf("store object: %w", err)
	}
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if len(pending) == fileWindow {
				if err := wait(pending[0]); err != nil {
					return fail(err)
				}
				pending = pending[1:]
			}
			sum.Write(buf[:n])
			f, err := js.PublishAsync(chunkSubj, buf[:n])
			if err != nil {
				return fail(err)
			}
			pending = append(pending, f)
			size += int64(n)
			chunks++
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return fail(rerr)
		}
	}
	for _, f := range pending {
		if err := wait(f); err != nil {
			return fail(err)
		}
	}
	info := jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{Name: name, Metadata: meta},
		Bucket:     bucket, NUID: id, Size: uint64(size), Chunks: chunks,
		Digest: jetstream.GetObjectDigestValue(sum),
	}
	m := nats.NewMsg("$O." + bucket + ".M." + base64.URLEncoding.EncodeToString([]byte(name)))
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	var err error
	if m.Data, err = json.Marshal(info); err != nil {
		return fail(err)
	}
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return fail(err)
	}
	return size, nil
}

// idleConn fails a read or write that makes no progress for idle.
type idleConn struct {
	net.Conn
	idle time.Duration
}

func (c idleConn) Read(p []byte) (int, error) {
	_ = c.SetReadDeadline(time.Now().Add(c.idle))
	return c.Conn.Read(p)
}

func (c idleConn) Write(p []byte) (int, error) {
	_ = c.SetWriteDeadline(time.Now().Add(c.idle))
	return c.Conn.Write(p)
}

func isStoredOffer(line []byte) bool {
	return len(line) >= len(storedOfferPrefix) && string(line[:len(storedOfferPrefix)]) == storedOfferPrefix
}
