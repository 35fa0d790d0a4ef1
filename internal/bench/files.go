package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// FilesOptions configure the file transfer scenario.
type FilesOptions struct {
	Transfers int  // concurrent transfers, each between its own pair of friends
	Size      Size // bytes per transfer
	Verify    bool // compare SHA-256 of what was sent and what arrived
	// Count, when positive, makes each pair do exactly Count transfers
	// one after another, without warm-up; the measured period lasts from
	// the first send_file to the last byte received, whatever
	// Env.Duration says. For a few huge transfers, which a timed period
	// would cut.
	Count int
}

// DefaultFiles is the files scenario's defaults.
var DefaultFiles = FilesOptions{Transfers: 4, Size: 64 << 20, Verify: true}

// ioChunk is the unit of file reads and writes; each refreshes the
// deadline, so a stalled relay is an error after Timeout, never a hang.
const ioChunk = 256 << 10

// filePair is one sender and recipient; their reader goroutines hand the
// control lines of the file protocol over on sctl and rctl.
type filePair struct {
	i          int
	from, to   string
	sc, rc     *Conn
	sctl, rctl chan *Reply
}

type filesRun struct {
	env *Env
	m   *Meter
	o   FilesOptions
	// shost and rhost are the hosts of the sender's and the recipient's
	// server: each file port is on the server its client is connected to.
	shost, rhost string
	pattern      []byte
	hists        []*Histogram
	done         atomic.Int64 // completed transfers in the measured period
	ever         atomic.Bool  // some transfer has completed
	abort        context.CancelCauseFunc
}

// RunFiles measures file transfers relayed by the server (send_file).
func RunFiles(ctx context.Context, env *Env, o FilesOptions) (*Result, error) {
	if o.Transfers < 1 || o.Size < 1 || o.Count < 0 {
		return nil, errors.New("files: need --transfers ≥ 1, --size ≥ 1 and --count ≥ 0")
	}
	shost, _, err := net.SplitHostPort(env.Addr)
	if err != nil {
		return nil, fmt.Errorf("files: --addr %q: %w", env.Addr, err)
	}
	rhost, _, err := net.SplitHostPort(env.recvAddr())
	if err != nil {
		return nil, fmt.Errorf("files: --addr2 %q: %w", env.Addr2, err)
	}
	res := &Result{Scenario: "files", Started: time.Now(), Unit: "MiB",
		Label:     fmt.Sprintf("transfers=%d size=%s", o.Transfers, o.Size),
		Params:    map[string]any{"transfers": o.Transfers, "size_bytes": int64(o.Size), "verify": o.Verify},
		LatencyOf: "send_file request → recipient has read every byte"}
	if env.Addr2 != "" {
		res.Params["addr2"] = env.Addr2 // recipients are there
	}
	warmup, duration := env.Warmup, env.Duration
	if o.Count > 0 {
		res.Label += fmt.Sprintf(" count=%d", o.Count)
		res.Params["count"] = o.Count
		warmup, duration = 0, 0 // until the transfers are done
	}
	m := newMeter("files", "MiB", env.Log)
	m.scale = 1 << 20 // the meter counts bytes
	m.goal.Store(int64(o.Count) * int64(o.Transfers) * int64(o.Size))
	defer m.showProgress(env.Console, warmup, duration)()

	// A pattern whose length is not a power of two, so that blocks of the
	// file differ and a relay that reorders them fails the hash check.
	pattern := make([]byte, 1<<20+61)
	rng := rand.NewChaCha8([32]byte{'c', 'h', 'a', 't', 'b', 'e', 'n', 'c', 'h'})
	_, _ = rng.Read(pattern)
	fr := &filesRun{env: env, m: m, o: o, shost: shost, rhost: rhost, pattern: pattern}

	names := make([]string, 2*o.Transfers)
	for i := range o.Transfers {
		names[i], names[o.Transfers+i] = env.name("f", i, "s"), env.name("f", i, "r")
	}
	conns, err := openUsers(ctx, env, m, names, env.addrs(len(names), o.Transfers), 16<<10)
	if err != nil {
		return nil, fmt.Errorf("files setup: %w", err)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		for _, c := range conns {
			c.Wait()
		}
	}()
	pairs := make([]*filePair, o.Transfers)
	m.setupTotal.Add(int64(o.Transfers))
	err = parallel(ctx, o.Transfers, env.SetupConcurrency, func(ctx context.Context, _, i int) error {
		defer m.setupDone.Add(1)
		p := &filePair{i: i, from: names[i], to: names[o.Transfers+i], sc: conns[i], rc: conns[o.Transfers+i],
			sctl: make(chan *Reply, 16), rctl: make(chan *Reply, 16)}
		pairs[i] = p
		return addFriend(ctx, p.sc, env.SetupTimeout, p.from, p.to)
	})
	if err != nil {
		return nil, fmt.Errorf("files setup: %w", err)
	}
	for _, p := range pairs {
		p.sc.Serve(fr.control(p.from, p.sctl, "send_file_port_reply", "send_file_reply"),
			func(err error) { m.Error("disconnect", "user", p.from, "err", err) })
		p.rc.Serve(fr.control(p.to, p.rctl, "recv_file_port_reply", "recv_file_reply"),
			func(err error) { m.Error("disconnect", "user", p.to, "err", err) })
	}

	rctx, abort := context.WithCancelCause(ctx)
	defer abort(nil)
	fr.abort = abort
	sctx, stop := context.WithCancel(rctx)
	defer stop()
	var wg sync.WaitGroup
	fr.hists = make([]*Histogram, len(pairs))
	for i := range fr.hists {
		fr.hists[i] = new(Histogram)
	}
	start := func() {
		for i, p := range pairs {
			wg.Go(func() { fr.loop(sctx, rctx, p, o.Count, fr.hists[i]) })
		}
	}
	var w window
	if o.Count > 0 {
		// Start with the measured period and end it with the last transfer.
		w, err = m.measureWhile(rctx, env, 0, func() bool {
			start()
			wg.Wait()
			return rctx.Err() == nil
		})
	} else {
		start()
		w, err = m.measure(rctx, env)
	}
	stop()
	wg.Wait()
	if cause := context.Cause(rctx); cause != nil && ctx.Err() == nil {
		return nil, cause
	}
	if err != nil {
		return nil, fmt.Errorf("files: %w", err)
	}
	h := merged(fr.hists...)
	res.setCount(w, float64(w.count)/(1<<20))
	res.Extra = map[string]any{"transfers_completed": fr.done.Load()}
	rate := fmt.Sprintf("%.1f MiB/s (%d transfers done)", res.Rate, fr.done.Load())
	if o.Count > 0 {
		rate = fmt.Sprintf("%.1f MiB/s (%d transfers done, %.1f MiB in %.2fs)", res.Rate, fr.done.Load(), res.Count, w.elapsed.Seconds())
	}
	res.fill(m, w, h, rate)
	return res, nil
}

// control returns a reader callback that hands the file protocol's lines
// to ch. It never blocks the reader: a full channel is an error.
func (fr *filesRun) control(user string, ch chan *Reply, cmds ...string) func([]byte) {
	return func(line []byte) {
		r := &Reply{Line: append([]byte(nil), line...)}
		if err := r.F.Parse(r.Line); err != nil {
			fr.m.Error("bad_line", "user", user, "line", cut(line), "err", err)
			return
		}
		cmd := string(r.F.Cmd)
		for _, c := range cmds {
			if cmd == c {
				select {
				case ch <- r:
				default:
					fr.m.Error("unclaimed_control_line", "user", user, "line", r.String())
				}
				return
			}
		}
		switch cmd {
		case "friend_login", "friend_offline", "add_friend_reply", "pong", "offline_reply":
		default:
			fr.m.Error("unexpected:"+cmd, "user", user, "line", r.String())
		}
	}
}

// errFatal marks a failure that means the server cannot do file transfers
// at all, as opposed to one transfer going wrong.
var errFatal = errors.New("file transfer does not work against this server")

// loop starts transfers until more is done, or count of them (0: no
// limit) have been made; a transfer under way then finishes (under xfer,
// which only an abort or an interrupt ends), so the server sees complete
// transfers rather than a burst of aborted ones.
func (fr *filesRun) loop(more, xfer context.Context, p *filePair, count int, h *Histogram) {
	for n := 0; more.Err() == nil && (count == 0 || n < count); n++ {
		err := fr.transfer(xfer, p, n, h)
		switch {
		case err == nil:
			fr.ever.Store(true)
		case xfer.Err() != nil:
			return
		case errors.Is(err, errFatal) || !fr.ever.Load():
			// The first transfer failing says the server cannot do it;
			// going on would only repeat the error until the timeout.
			fr.abort(fmt.Errorf("files: transfer %s → %s: %w", p.from, p.to, err))
			return
		default:
			fr.m.Error("transfer", "from", p.from, "to", p.to, "err", err)
		}
	}
}

func (fr *filesRun) transfer(ctx context.Context, p *filePair, n int, h *Histogram) error {
	env, size := fr.env, int64(fr.o.Size)
	for _, ch := range []chan *Reply{p.sctl, p.rctl} {
		for len(ch) > 0 {
			r := <-ch
			fr.m.Error("stale_control_line", "line", r.String())
		}
	}
	start := time.Now()
	length := strconv.FormatInt(size, 10)
	filename := fmt.Sprintf("chatbench-%d-%d.bin", p.i, n)
	// length as a string, as in the seed document; the server echoes the form.
	req, _ := json.Marshal(map[string]any{"cmd": "send_file", "from_user": p.from, "to_user": p.to,
		"length": length, "filename": filename})
	if err := p.sc.Write(append(req, '\n')); err != nil {
		return err
	}
	sp, err := waitControl(ctx, p.sctl, env.Timeout, "send_file_port_reply", p.from)
	if err != nil {
		return err
	}
	rp, err := waitControl(ctx, p.rctl, env.Timeout, "recv_file_port_reply", p.to)
	if err != nil {
		return err
	}
	sport, err := checkPortReply(sp, length, filename, p.to)
	if err != nil {
		return err
	}
	rport, err := checkPortReply(rp, length, filename, p.from)
	if err != nil {
		return err
	}

	var sendErr error
	var sent []byte
	var wg sync.WaitGroup
	wg.Go(func() { sent, sendErr = fr.send(ctx, net.JoinHostPort(fr.shost, sport), size) })
	got, recvErr := fr.receive(ctx, net.JoinHostPort(fr.rhost, rport), size)
	wg.Wait()
	if err := errors.Join(sendErr, recvErr); err != nil {
		return err
	}
	if fr.o.Verify && !bytes.Equal(sent, got) {
		return fmt.Errorf("received bytes differ from sent bytes (sha256 %x vs %x)", got, sent)
	}
	if fr.m.on.Load() {
		h.RecordDuration(time.Since(start))
		fr.done.Add(1)
	}
	return nil
}

// waitControl waits for a control line named want. The other name the
// channel carries (send_file_reply / recv_file_reply) is the server
// refusing or giving up, which is fatal when it means "unsupported".
func waitControl(ctx context.Context, ch chan *Reply, timeout time.Duration, want, user string) (*Reply, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-ch:
		if string(r.F.Cmd) == want {
			return r, nil
		}
		switch string(r.F.Result) {
		case "unavailable", "not_friend", "offline", "invalid", "not_logged_in", "forbidden", "internal_error":
			return nil, fmt.Errorf("%w: %s got %s instead of %s", errFatal, user, r, want)
		}
		return nil, fmt.Errorf("%s got %s instead of %s", user, r, want)
	case <-t.C:
		return nil, fmt.Errorf("%s got no %s within %s", user, want, timeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// checkPortReply validates a port reply and returns the port.
func checkPortReply(r *Reply, length, filename, peer string) (string, error) {
	port, ok := parseUint(r.F.Port)
	if !ok || port < 1 || port > 65535 {
		return "", fmt.Errorf("%w: no valid port in %s", errFatal, r)
	}
	switch {
	case string(r.F.Length) != length || !r.F.LengthIsString:
		return "", fmt.Errorf("length not echoed as sent (%q, a string): %s", length, r)
	case string(r.F.Filename) != filename:
		return "", fmt.Errorf("filename not echoed: %s", r)
	case string(r.F.User) != peer:
		return "", fmt.Errorf("user should be %s: %s", peer, r)
	}
	return strconv.FormatInt(port, 10), nil
}

// send writes size bytes of the pattern to addr and returns their SHA-256.
func (fr *filesRun) send(ctx context.Context, addr string, size int64) ([]byte, error) {
	c, err := fr.dialData(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("sender: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	var hs hash.Hash
	if fr.o.Verify {
		hs = sha256.New()
	}
	off := 0
	for left := size; left > 0; {
		chunk := fr.pattern[off:min(len(fr.pattern), off+ioChunk, off+int(min(left, ioChunk)))]
		_ = c.SetWriteDeadline(time.Now().Add(fr.env.Timeout))
		n, err := c.Write(chunk)
		if hs != nil {
			hs.Write(chunk[:n])
		}
		if err != nil {
			return nil, fmt.Errorf("sender: after %d of %d bytes: %w", size-left+int64(n), size, err)
		}
		left -= int64(n)
		off = (off + n) % len(fr.pattern)
	}
	if err := expectEOF(c, fr.env.Timeout); err != nil {
		return nil, fmt.Errorf("sender: %w", err)
	}
	if hs == nil {
		return nil, nil
	}
	return hs.Sum(nil), nil
}

// receive reads exactly size bytes from addr and returns their SHA-256.
func (fr *filesRun) receive(ctx context.Context, addr string, size int64) ([]byte, error) {
	c, err := fr.dialData(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("recipient: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	var hs hash.Hash
	if fr.o.Verify {
		hs = sha256.New()
	}
	buf := make([]byte, ioChunk)
	for got := int64(0); got < size; {
		_ = c.SetReadDeadline(time.Now().Add(fr.env.Timeout))
		n, err := c.Read(buf[:min(int64(len(buf)), size-got)])
		if n > 0 {
			got += int64(n)
			fr.m.total.Add(int64(n))
			if hs != nil {
				hs.Write(buf[:n])
			}
		}
		if err != nil {
			return nil, fmt.Errorf("recipient: after %d of %d bytes: %w", got, size, err)
		}
	}
	if err := expectEOF(c, fr.env.Timeout); err != nil {
		return nil, fmt.Errorf("recipient: %w", err)
	}
	if hs == nil {
		return nil, nil
	}
	return hs.Sum(nil), nil
}

func (fr *filesRun) dialData(ctx context.Context, addr string) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, fr.env.Timeout)
	defer cancel()
	// No TCP keepalive: thousands of idle connections opened together
	// would probe together, and on loopback such bursts overflow the
	// kernel's backlog; the server's own keepalive is what is measured.
	d := net.Dialer{KeepAlive: -1}
	c, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to file port: %w", err)
	}
	return c, nil
}

// expectEOF checks that the server closes the data connection after the
// transfer, as the protocol says, and sends nothing more.
func expectEOF(c net.Conn, timeout time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	var b [1]byte
	n, err := c.Read(b[:])
	switch {
	case n > 0:
		return errors.New("server sent more bytes than the file length")
	case errors.Is(err, io.EOF):
		return nil
	case err == nil:
		return errors.New("server neither sent nor closed")
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("server did not close the data connection within %s", timeout)
	}
	// A reset after the last byte is a close too, if a rude one.
	return nil
}
