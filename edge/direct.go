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
	untaken                      // nobody took it, or nobody said so in time: a worker keeps it
)

// sendDirect sends a private message to a friend the session knows of
// (friendSet) to the recipient's subject itself, the way a worker hands
// one off, and answers the sender once the recipient's edge confirms.
// That is one NATS message where asking a worker takes two, and no worker
// in the way; what needs the store (a refusal, a message to keep) is
// still a worker's. msgID is the message's, kept if a worker keeps it.
func (c *conn) sendDirect(ctx context.Context, id json.RawMessage, frame []byte, msgID string) sendOutcome {
	to, text, ok := c.directTo(frame)
	if !ok || c.e.awaitDeliveries(ctx) != nil {
		return notTried
	}
	m := &nats.Msg{Subject: proto.UserSubject(to), Data: proto.PrivateMessage(c.user, to, text, msgID)}
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
