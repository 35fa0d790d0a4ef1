package edge

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"

	"github.com/chatd-io/chatd/internal/proto"
)

// A relay moves a file from the sender's client, through the sender's
// edge, over NATS, to the recipient's edge and client. The recipient's
// edge grants credit, one chunk each; the sender's edge reads from its
// client only while it holds credit. Memory per transfer is therefore
// bounded by fileWindow chunks whatever the file size, and a slow reader
// slows the writer down instead of filling anybody's buffers.
const (
	fileChunk  = 128 << 10
	fileWindow = 8
)

var errNoPort = errors.New("no free file transfer port")

// portRange hands out listeners from the configured range. The listener
// itself is the reservation: a port in use, by this edge or anyone else,
// simply fails to bind and the next one is tried.
type portRange struct {
	lo, hi int
	mu     sync.Mutex
	next   int
}

func (p *portRange) listen(ip net.IP) (*net.TCPListener, int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.hi - p.lo + 1
	for range n {
		port := p.lo + p.next
		p.next = (p.next + 1) % n
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: ip, Port: port})
		if err == nil {
			return ln, port, nil
		}
	}
	return nil, 0, errNoPort
}

// transfer is one side of a file transfer on this edge.
type transfer struct {
	e       *Edge
	offer   proto.FileOffer
	sending bool // this side reads the file from its client
	stored  bool // the object store, not another edge, is the other side
	owner   *conn
	ln      *net.TCPListener
	port    int
	start   time.Time

	sub  *nats.Subscription
	kick chan struct{} // credit arrived

	mu     sync.Mutex
	credit int
	data   net.Conn

	// Receiving side, touched only by the subscription's goroutine.
	chunk       uint64
	written     int64
	sinceCredit int

	progress atomic.Int64 // unix nanoseconds of the last chunk moved
	endOnce  sync.Once
	done     chan struct{}
}

// newTransfer reserves a port for owner's side of the transfer, on the
// local address the owner is connected to: that is where the seed client
// will connect.
func (e *Edge) newTransfer(owner *conn, offer proto.FileOffer, sending, stored bool) (*transfer, error) {
	if e.files == nil {
		return nil, errors.New("file transfer is disabled")
	}
	local, _ := owner.sock.LocalAddr().(*net.TCPAddr)
	if local == nil {
		return nil, errors.New("file transfer needs a TCP session")
	}
	ln, port, err := e.files.listen(local.IP)
	if err != nil {
		return nil, err
	}
	return &transfer{e: e, offer: offer, sending: sending, stored: stored, owner: owner, ln: ln, port: port,
		start: time.Now(), kick: make(chan struct{}, 1), done: make(chan struct{})}, nil
}

// begin hands the transfer to its own goroutine; from here on a shutdown
// of the edge ends it too.
func (t *transfer) begin() {
	t.e.mu.Lock()
	t.e.transfers[t] = struct{}{}
	t.e.mu.Unlock()
	t.e.wg.Add(1)
	go t.run()
}

// listen subscribes to this side's relay subject. It is flushed, so once
// it returns the other side may publish.
func (t *transfer) listen(ctx context.Context) error {
	side := proto.FileToReceiver
	if t.sending {
		side = proto.FileToSender
	}
	sub, err := t.e.nc.Subscribe(proto.TransferSubject(t.offer.ID, side), t.onMsg)
	if err == nil {
		err = t.e.nc.FlushWithContext(ctx)
	}
	if err != nil {
		if sub != nil {
			_ = sub.Unsubscribe()
		}
		return fmt.Errorf("relay subscription: %w", err)
	}
	t.sub = sub
	return nil
}

func (t *transfer) peerSubject() string {
	if t.sending {
		return proto.TransferSubject(t.offer.ID, proto.FileToReceiver)
	}
	return proto.TransferSubject(t.offer.ID, proto.FileToSender)
}

func (t *transfer) publish(kind string, data []byte, chunk uint64) error {
	m := nats.NewMsg(t.peerSubject())
	m.Header.Set(proto.HdrKind, kind)
	if chunk > 0 {
		m.Header.Set(proto.HdrChunk, strconv.FormatUint(chunk, 10))
	}
	m.Data = data
	return t.e.nc.PublishMsg(m)
}

// portReply is the line that tells a client where to connect.
func (t *transfer) portReply(id json.RawMessage) []byte {
	cmd, user := "recv_file_port_reply", t.offer.From
	if t.sending {
		cmd, user = "send_file_port_reply", t.offer.To
	}
	kv := []any{"cmd", cmd, "port", t.port, "length", t.offer.Length, "filename", t.offer.Filename, "user", user}
	if t.stored {
		kv = append(kv, "offline", true)
	}
	return withID(proto.Object(kv...), id)
}

// end finishes the transfer once: closes the port and the data
// connection, tells the other side why when it does not know yet, and
// tells this side's client about anything but success.
func (t *transfer) end(reason string, tellPeer bool) {
	t.endOnce.Do(func() {
		t.mu.Lock()
		data := t.data
		t.mu.Unlock()
		close(t.done)
		_ = t.ln.Close()
		if data != nil {
			_ = data.Close()
		}
		if t.sub != nil {
			_ = t.sub.Unsubscribe()
		}
		if tellPeer && !t.stored {
			_ = t.publish(proto.KindAbort, []byte(reason), 0)
		}
		t.e.mu.Lock()
		delete(t.e.transfers, t)
		t.e.mu.Unlock()
		side := "receive"
		if t.sending {
			side = "send"
		}
		t.e.metrics.transfers.With(side, cmp.Or(reason, "success")).Inc()
		if reason == "" {
			return
		}
		cmd, user := "recv_file", t.offer.From
		if t.sending {
			cmd, user = "send_file", t.offer.To
		}
		t.owner.send(withID(proto.Result(cmd, reason, "user", user, "filename", t.offer.Filename), nil))
		t.e.log.Info("file transfer ended", "id", t.offer.ID, "from", t.offer.From, "to", t.offer.To,
			"sending", t.sending, "reason", reason)
	})
}

func (t *transfer) ended() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// accept waits for the owner's client to connect to the port. Connections
// from any other address are closed: the port belongs to one session.
func (t *transfer) accept() (net.Conn, error) {
	want, _ := t.owner.sock.RemoteAddr().(*net.TCPAddr)
	_ = t.ln.SetDeadline(t.start.Add(t.e.opts.FileTimeout))
	for {
		c, err := t.ln.Accept()
		if err != nil {
			return nil, err
		}
		if got, _ := c.RemoteAddr().(*net.TCPAddr); want == nil || got == nil || !got.IP.Equal(want.IP) {
			t.e.log.Warn("file port connection from a stranger", "id", t.offer.ID, "remote", c.RemoteAddr().String())
			_ = c.Close()
			continue
		}
		_ = t.ln.Close()
		t.mu.Lock()
		t.data = c
		t.mu.Unlock()
		if t.ended() { // ended while we accepted: end closed nothing of ours
			_ = c.Close()
			return nil, net.ErrClosed
		}
		return c, nil
	}
}

// run drives this side from the client's connection to the end.
func (t *transfer) run() {
	defer t.e.wg.Done()
	data, err := t.accept()
	if err != nil {
		if t.stored && !t.sending {
			t.e.requeue(t.offer)
		}
		t.end("timeout", true)
		return
	}
	t.progress.Store(time.Now().UnixNano())
	switch {
	case t.sending && t.stored:
		t.upload(data)
	case t.sending:
		t.relayOut(data)
	case t.stored:
		t.download(data)
	default:
		t.relayIn()
	}
}

// relayOut reads the file from the sender's client while the receiving
// edge grants credit. The first credit means the recipient has connected.
func (t *transfer) relayOut(data net.Conn) {
	buf := make([]byte, fileChunk)
	var sent int64
	var chunk uint64
	for first := true; first || sent < t.offer.Size; first = false {
		deadline := time.Now().Add(t.e.opts.FileTimeout)
		if first {
			deadline = t.start.Add(t.e.opts.FileTimeout)
		}
		if !t.takeCredit(deadline) {
			t.end(failure(!first), true)
			return
		}
		if sent == t.offer.Size {
			break
		}
		n := min(int64(fileChunk), t.offer.Size-sent)
		_ = data.SetReadDeadline(time.Now().Add(t.e.opts.FileTimeout))
		if _, err := io.ReadFull(data, buf[:n]); err != nil {
			t.end("aborted", true)
			return
		}
		chunk++
		if err := t.publish(proto.KindData, buf[:n], chunk); err != nil {
			t.end("aborted", true)
			return
		}
		sent += n
	}
	if err := t.publish(proto.KindEOF, nil, 0); err != nil {
		t.end("aborted", true)
		return
	}
	t.end("", false)
}

// failure names why a transfer failed for the clients: before any byte
// moved, somebody did not connect in time.
func failure(started bool) string {
	if started {
		return "aborted"
	}
	return "timeout"
}

func (t *transfer) takeCredit(deadline time.Time) bool {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		t.mu.Lock()
		if t.credit > 0 {
			t.credit--
			t.mu.Unlock()
			return true
		}
		t.mu.Unlock()
		select {
		case <-t.kick:
		case <-t.done:
			return false
		case <-timer.C:
			return false
		}
	}
}

// relayIn opens the window once the recipient is connected, then watches
// for a stalled relay; the chunks themselves are written by onMsg.
func (t *transfer) relayIn() {
	if err := t.publish(proto.KindCredit, []byte(strconv.Itoa(fileWindow)), 0); err != nil {
		t.end("aborted", true)
		return
	}
	tick := time.NewTicker(min(t.e.opts.FileTimeout/4, time.Second))
	defer tick.Stop()
	for {
		select {
		case <-t.done:
			return
		case <-tick.C:
			if time.Since(time.Unix(0, t.progress.Load())) > t.e.opts.FileTimeout {
				// Nothing ever arrived: the sender never connected, or its
				// edge is gone.
				t.end(failure(t.chunkSeen() > 0), true)
				return
			}
		}
	}
}

func (t *transfer) chunkSeen() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.chunk
}

// onMsg handles what the other edge sends: credit for the sending side,
// chunks for the receiving side, and aborts for either.
func (t *transfer) onMsg(m *nats.Msg) {
	switch m.Header.Get(proto.HdrKind) {
	case proto.KindCredit:
		n, err := strconv.Atoi(string(m.Data))
		if err != nil || n <= 0 || n > fileWindow {
			return
		}
		t.mu.Lock()
		t.credit += n
		t.mu.Unlock()
		select {
		case t.kick <- struct{}{}:
		default:
		}
	case proto.KindAbort:
		reason := string(m.Data)
		if reason != "timeout" {
			reason = "aborted"
		}
		t.end(reason, false)
	case proto.KindData:
		t.writeChunk(m)
	case proto.KindEOF:
		if t.written != t.offer.Size {
			t.end("aborted", true)
			return
		}
		t.end("", false)
	}
}

// writeChunk writes one chunk to the recipient, in order, and hands the
// credit back once it is out of this process.
func (t *transfer) writeChunk(m *nats.Msg) {
	t.mu.Lock()
	data := t.data
	t.chunk++
	want := t.chunk
	t.mu.Unlock()
	got, _ := strconv.ParseUint(m.Header.Get(proto.HdrChunk), 10, 64)
	if data == nil || got != want || t.written+int64(len(m.Data)) > t.offer.Size {
		// Lost or reordered chunk (a reconnect dropped it): the file
		// would be corrupt, so the transfer is over.
		t.e.log.Warn("relay out of order", "id", t.offer.ID, "chunk", got, "want", want)
		t.end("aborted", true)
		return
	}
	_ = data.SetWriteDeadline(time.Now().Add(t.e.opts.FileTimeout))
	if _, err := data.Write(m.Data); err != nil {
		t.end("aborted", true)
		return
	}
	t.written += int64(len(m.Data))
	t.e.metrics.fileBytes.Add(uint64(len(m.Data)))
	t.progress.Store(time.Now().UnixNano())
	if t.sinceCredit++; t.sinceCredit >= fileWindow/2 {
		if err := t.publish(proto.KindCredit, []byte(strconv.Itoa(t.sinceCredit)), 0); err != nil {
			t.end("aborted", true)
			return
		}
		t.sinceCredit = 0
	}
}

// sendFile starts a transfer for the session's user: a port for the
// sender, then the workers' decision (refusal, relay or store).
func (c *conn) sendFile(id json.RawMessage, frame []byte) {
	var req struct {
		To       json.RawMessage `json:"to_user"`
		Length   json.RawMessage `json:"length"`
		Filename json.RawMessage `json:"filename"`
		Offline  json.RawMessage `json:"offline"`
	}
	_ = json.Unmarshal(frame, &req) // the frame is a valid object; missing fields stay empty
	var to, filename string
	var offline bool
	size, okLen := proto.FileLength(req.Length, c.e.opts.FileMaxSize)
	okTo := json.Unmarshal(req.To, &to) == nil
	okName := json.Unmarshal(req.Filename, &filename) == nil
	okOffline := len(req.Offline) == 0 || json.Unmarshal(req.Offline, &offline) == nil
	if !okLen || !okTo || !okName || !okOffline {
		c.reply(id, proto.Result("send_file", "invalid"))
		return
	}
	var length json.RawMessage
	if req.Length[0] == '"' {
		length = req.Length
	} else {
		length = json.RawMessage(strconv.FormatInt(size, 10))
	}
	offer := proto.FileOffer{ID: nuid.Next(), From: c.user, To: to, Length: length, Size: size, Filename: filename}
	t, err := c.e.newTransfer(c, offer, true, false)
	if err != nil {
		c.e.log.Warn("send_file refused", "user", c.user, "err", err)
		c.reply(id, proto.Result("send_file", "unavailable"))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.e.opts.RequestTimeout)
	defer cancel()
	if err := t.listen(ctx); err != nil {
		t.end("", false)
		c.reply(id, proto.Result("send_file", "unavailable"))
		return
	}
	hdr := nats.Header{proto.HdrTransfer: {offer.ID}}
	if offline {
		hdr.Set(proto.HdrOffline, "1")
	}
	reply, _ := c.ask(ctx, "send_file", frame, hdr)
	var res struct {
		Result string `json:"result"`
	}
	if reply != nil {
		_ = json.Unmarshal(reply.Data, &res)
	}
	switch {
	case reply == nil:
		t.end("", false)
		c.reply(id, proto.Result("send_file", "unavailable"))
	case res.Result == proto.FileRelay || res.Result == proto.FileStore:
		t.stored = res.Result == proto.FileStore
		port := t.portReply(nil)
		c.e.metrics.reply(port, time.Since(c.started))
		c.send(withID(port, id))
		t.begin()
	default:
		t.end("", false)
		c.reply(id, reply.Data)
	}
}

// takeOffer is called by a worker that chose this edge to serve a file's
// recipient. It answers "ok" once the recipient has a port and the relay
// subject is subscribed, so the sender may start as soon as it hears back.
func (e *Edge) takeOffer(m micro.Request) {
	var offer proto.FileOffer
	if err := json.Unmarshal(m.Data(), &offer); err != nil || offer.ID == "" || offer.Object != "" {
		_ = m.Respond([]byte("invalid"))
		return
	}
	owner := e.newestSession(offer.To)
	if owner == nil {
		_ = m.Respond([]byte("gone"))
		return
	}
	t, err := e.newTransfer(owner, offer, false, false)
	if err != nil {
		e.log.Warn("file offer refused", "to", offer.To, "err", err)
		_ = m.Respond([]byte("busy"))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.opts.RequestTimeout)
	defer cancel()
	if err := t.listen(ctx); err != nil {
		t.end("", false)
		_ = m.Respond([]byte("busy"))
		return
	}
	if err := m.Respond([]byte("ok")); err != nil {
		t.end("", false)
		return
	}
	owner.send(t.portReply(nil))
	t.begin()
}
