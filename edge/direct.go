package edge

import (
	"context"
	"encoding/json"

	"github.com/nats-io/nats.go"

	"github.com/chatd-io/chatd/internal/deadline"
	"github.com/chatd-io/chatd/internal/proto"
)

// sendOutcome is what became of a private message the edge tried to send
// itself.
type sendOutcome int

const (
	notTried  sendOutcome = iota // not one the edge sends: a worker decides
	confirmed                    // taken by the recipient's edge; answered
	local                        // written to the recipient's sessions here; answered
	untaken                      // nobody took it, or nobody said so in time: a worker keeps it
)

// sendDirect sends a private message to a friend the session knows of
// (friendSet) to the recipient's subject itself, the way a worker hands
// one off, and answers the sender once the recipient's edge confirms.
// That is one NATS message where asking a worker takes two, and no worker
// in the way; what needs the store (a refusal, a message to keep) is
// still a worker's. msgID is the message's, kept if a worker keeps it.
// A recipient with a session on this edge gets it from here at once
// (sendLocal).
func (c *conn) sendDirect(ctx context.Context, id json.RawMessage, frame []byte, msgID string) sendOutcome {
	to, text, ok := c.directTo(frame)
	if !ok || c.e.awaitDeliveries(ctx) != nil {
		return notTried
	}
	m := &nats.Msg{Subject: proto.UserSubject(to), Data: proto.PrivateMessage(c.user, to, text, msgID)}
	if c.e.sendLocal(c, to, m) {
		c.e.metrics.directLocal.Inc()
		c.reply(id, proto.Result("private_chat", "success", "user_to", to))
		return local
	}
	c.awaitCopies(ctx)
	if c.wait == nil {
		c.wait = newWaiter()
	}
	reply, err := c.e.replies.handOff(m, max(deadline.Remaining(ctx, c.e.opts.RequestTimeout), 0), c.wait)
	if err != nil || len(reply.Data) == 0 || reply.Data[0] != '{' {
		c.e.metrics.directUntaken.Inc()
		return untaken
	}
	c.e.metrics.directConfirmed.Inc()
	c.reply(id, reply.Data)
	return confirmed
}

// directTo reads a private_chat frame the edge may send itself: no
// user_from or the session's user, a user_to the session knows as a
// friend, and a text, read as a worker reads them (absent or null is
// empty). Anything else is left to a worker, which explains refusals.
func (c *conn) directTo(frame []byte) (to, text string, ok bool) {
	var rawFrom, rawTo, rawText []byte
	if err := proto.Fields(frame, func(k, v []byte) {
		switch string(k) {
		case "user_from":
			rawFrom = v
		case "user_to":
			rawTo = v
		case "text":
			rawText = v
		}
	}); err != nil {
		return "", "", false
	}
	if present(rawFrom) {
		if from, ok := proto.String(rawFrom); !ok || from != c.user {
			return "", "", false
		}
	}
	if present(rawText) {
		if text, ok = proto.String(rawText); !ok {
			return "", "", false
		}
	}
	to, ok = proto.String(rawTo)
	if !ok || !proto.ValidName(to) || !c.friends.has(to) {
		return "", "", false
	}
	return to, text, true
}

// present reports whether a raw member holds a value other than null.
func present(raw []byte) bool { return raw != nil && string(raw) != "null" }

// sendLocal writes m, a private message from c's user, to the sessions
// to has on this edge, the way the dispatcher would once NATS brought it
// back, and queues its copy for the user's sessions elsewhere. It reports
// false, having done nothing, when to has no session here (or its first
// is still logging in), or when the copy would come back to this edge.
func (e *Edge) sendLocal(c *conn, to string, m *nats.Msg) bool {
	i := e.deliveryConn(to)
	cp := e.copiers[i]
	if cp == nil {
		return false
	}
	e.mu.Lock()
	u := e.users[to]
	if u == nil || u.pending != nil || len(u.sessions) == 0 {
		e.mu.Unlock()
		return false
	}
	n := len(u.sessions)
	var only *conn
	if n == 1 {
		for s := range u.sessions {
			only = s
		}
	} else {
		line := asLine(m.Data) // shared by the sessions' queues
		for s := range u.sessions {
			s.send(line)
		}
	}
	e.mu.Unlock()
	if only != nil {
		// From c's own line buffer: copied only if the socket does not
		// take the line at once (as the dispatcher writes one).
		c.out = only.sendNowFrom(c.out, m.Data)
	}
	e.metrics.privateDelivered.Add(uint64(n))
	if c.copies == nil {
		c.copies = make([]uint64, len(e.copiers))
	}
	c.copies[i] = cp.push(m)
	return true
}

// awaitCopies waits, before c's read loop sends a private message
// through NATS, until the server has the copies of those it wrote here
// itself. A copy may wait a moment to be published with others; if the
// recipient's session here ended meanwhile, this message would otherwise
// overtake it at the recipient's other edges. Nearly always the copier
// has confirmed them already and this waits for nothing.
func (c *conn) awaitCopies(ctx context.Context) {
	for i, n := range c.copies {
		if n == 0 {
			continue
		}
		if err := c.e.copiers[i].reached(ctx, n); err != nil {
			c.e.log.Warn("the copies of a session's messages may be overtaken", "user", c.user, "err", err)
		}
		c.copies[i] = 0
	}
}
