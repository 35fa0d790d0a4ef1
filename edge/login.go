package edge

import (
	"bytes"
	"context"
	"encoding/json"

	"github.com/nats-io/nats.go"

	"github.com/chatd-io/chatd/internal/proto"
)

// A login of a user with no session on this edge yet subscribes to the
// user's subject before it asks a worker, so that the worker can tell
// the user's friends and hand out the stored messages in its answer to
// the login itself: one request to a worker instead of two, and the
// order that makes nothing get lost (subscription first, then what
// others may react to) still holds. Until the answer comes, the user's
// entry here has no session and a pendingLogin: deliveries wait in it,
// and are written once the login succeeds or, if it fails, treated as
// for a user who is not here (a private message goes back to its
// worker, which keeps it). Other logins of the user here wait for the
// outcome.

// pendingLogin is the login of a user's first session here, between its
// subscription and the worker's answer.
type pendingLogin struct {
	ready     chan struct{} // closed once the login is decided
	held      []*nats.Msg   // deliveries meanwhile, oldest first
	heldBytes int           // their size
	nudged    bool          // stored messages were announced meanwhile
}

// maxHeld and maxHeldBytes bound the deliveries a pending login holds,
// in number and in size, so that many logins at once with large
// messages coming for them cannot pile up memory; past either bound
// they are treated as for a user who is not here.
const (
	maxHeld      = 256
	maxHeldBytes = 1 << 20
)

// hold keeps m for after the login, if there is room. The caller holds e.mu.
func (p *pendingLogin) hold(m *nats.Msg) bool {
	if len(p.held) >= maxHeld || p.heldBytes+len(m.Data) > maxHeldBytes {
		return false
	}
	p.held = append(p.held, m)
	p.heldBytes += len(m.Data)
	return true
}

// loginName reads the user a login frame names, if it is a valid name.
func loginName(frame []byte) (string, bool) {
	var user string
	ok := false
	err := proto.Fields(frame, func(k, v []byte) {
		if string(k) == "user" {
			user, ok = proto.String(v)
		}
	})
	return user, err == nil && ok && proto.ValidName(user)
}

// loginFirst logs c in as user when user has no entry on this edge (see
// above) and reports whether it did; false leaves the login to the usual
// path (forward, then login), which also serves a user already here.
func (c *conn) loginFirst(ctx context.Context, id json.RawMessage, frame []byte, user string) bool {
	u, first := c.e.prebind(ctx, user)
	if u == nil {
		return false
	}
	hdr := nats.Header{proto.HdrStored: {"1"}}
	if first {
		hdr.Set(proto.HdrAnnounce, "1")
	}
	reply, _ := c.ask(ctx, "login", frame, hdr)
	if reply == nil {
		c.e.abandon(u)
		c.reply(id, proto.Result("login", "unavailable"))
		if first {
			// The worker may have told the friends before its answer was
			// lost (it died, or answered too late): take it back, unless
			// the user did log in elsewhere meanwhile. At worst friends
			// hear "offline" of a user they knew was. Not on the read
			// loop: with no worker there, this waits as long again.
			// Counted with the read loops, whose count this one holds.
			e := c.e
			e.connWG.Add(1)
			go func() {
				defer e.connWG.Done()
				ctx, cancel := context.WithTimeout(context.Background(), e.opts.RequestTimeout)
				defer cancel()
				if !e.held(ctx, user) {
					e.presence(ctx, user, false)
				}
			}()
		}
		return true
	}
	if bind := reply.Header.Get(proto.HdrBind); bind != user {
		c.e.abandon(u)
		if bind != "" { // not the name read here: bound the usual way
			c.login(ctx, id, bind, reply.Data)
		} else {
			c.reply(id, reply.Data)
		}
		return true
	}

	// The stored messages in the reply were read but are still stored:
	// a fetch that a nudge starts once the session is there waits until
	// they are written and removed, rather than write them too.
	lock := c.e.fetchLock(user)
	lock.Lock()
	line, stored, _ := bytes.Cut(reply.Data, []byte("\n"))
	c.loggedIn(user, line)
	c.reply(id, line)
	nudged := c.e.activate(u, c)
	withStored := reply.Header.Get(proto.HdrStored) != ""
	more := false
	if withStored {
		more = c.e.handOut(ctx, user, []*conn{c}, stored, reply.Header)
	}
	lock.Unlock()
	if !withStored || more || nudged {
		// A worker that did not read them (an older one, or it could not),
		// more than one reply holds, or more kept meanwhile.
		announce := first && reply.Header.Get(proto.HdrAnnounce) == ""
		c.e.fetchInbox(ctx, user, []*conn{c}, announce)
	}
	return true
}

// prebind makes user's pending entry, asks whether any other edge holds
// the user (is this the user's first session anywhere?) and subscribes,
// as bind does for a session. nil: the user has an entry here already,
// or subscribing failed.
func (e *Edge) prebind(ctx context.Context, user string) (u *userEntry, firstAnywhere bool) {
	e.mu.Lock()
	if _, ok := e.users[user]; ok {
		e.mu.Unlock()
		return nil, false
	}
	u = &userEntry{name: user, sessions: map[*conn]uint64{}, pending: &pendingLogin{ready: make(chan struct{})}}
	firstAnywhere, sub, err := e.enter(ctx, u)
	if err == nil {
		e.mu.Lock()
		u.sub = sub
		e.mu.Unlock()
		err = e.settle(ctx, user)
	}
	if err != nil {
		e.log.Warn("subscribing before login failed", "user", user, "err", err)
		e.abandon(u)
		return nil, false
	}
	return u, firstAnywhere
}

// activate adds c as u's first session and writes what u's pending
// login held, in order, before anything newer can be; it reports whether
// stored messages were announced meanwhile.
func (e *Edge) activate(u *userEntry, c *conn) (nudged bool) {
	e.mu.Lock()
	p := u.pending
	u.pending = nil
	e.serial++
	u.sessions[c] = e.serial
	routed := make([]delivery, 0, len(p.held))
	for _, m := range p.held {
		routed = append(routed, e.route(u, m, false))
	}
	e.mu.Unlock()
	close(p.ready)
	for _, d := range routed {
		e.complete(d, false)
	}
	return p.nudged
}

// abandon removes u's pending entry after its login failed: the
// subscription ends, the registry forgets the user, and what was held
// goes where it would have gone had the user not been here.
func (e *Edge) abandon(u *userEntry) {
	e.mu.Lock()
	p := u.pending
	u.pending = nil
	if e.users[u.name] == u {
		e.forgetUser(u)
	}
	e.forgetKey(u.name)
	sub := u.sub
	e.mu.Unlock()
	close(p.ready)
	if sub != nil {
		_ = sub.Drain() // as in unbind
	}
	for _, m := range p.held {
		e.mu.Lock()
		d := e.route(e.subjects[m.Subject], m, false)
		e.mu.Unlock()
		e.complete(d, false)
	}
}
