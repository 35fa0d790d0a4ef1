package workers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/chatd-io/chatd/internal/deadline"
	"github.com/chatd-io/chatd/internal/passwd"
	"github.com/chatd-io/chatd/internal/proto"
	"github.com/chatd-io/chatd/storage"
)

// inboxBatch is how many stored messages one claim hands out.
const inboxBatch = 100

func (w *Worker) commands() map[string]handler {
	return map[string]handler{
		"register":         w.register,
		"login":            w.login,
		"add":              w.loggedIn(w.addFriend),
		"create_group":     w.loggedIn(w.createGroup),
		"add_group":        w.loggedIn(w.addGroup),
		"private_chat":     w.loggedIn(w.privateChat),
		"group_chat":       w.loggedIn(w.groupChat),
		"get_group_member": w.loggedIn(w.groupMembers),
		"send_file":        w.loggedIn(w.sendFile),
	}
}

// quickCommands are the commands tried first without waiting on anything
// (see endpoint).
func (w *Worker) quickCommands() map[string]quickHandler {
	return map[string]quickHandler{"private_chat": w.quickPrivateChat}
}

func (w *Worker) internal() map[string]handler {
	return map[string]handler{
		proto.IntPresence:   w.loggedIn(w.presence),
		proto.IntInbox:      w.loggedIn(w.claimInbox),
		proto.IntInboxDone:  w.loggedIn(w.inboxDone),
		proto.IntFileStored: w.loggedIn(w.fileStored),
	}
}

// loggedIn refuses calls without a session user. The edge already does;
// this keeps a worker safe from anything else that can reach its subjects.
func (w *Worker) loggedIn(h handler) handler {
	return func(ctx context.Context, c *call) ([]byte, error) {
		if c.user == "" {
			return result(c.cmd, "not_logged_in"), nil
		}
		return h(ctx, c)
	}
}

// actingUserOK checks the seed's acting-user field: optional, but if given
// it must name the session user. The server never acts on it.
func actingUserOK(c *call, field string) bool {
	v, present, ok := c.f.str(field)
	return ok && (!present || v == c.user)
}

// name reads a required name field.
func (c *call) name(field string) (string, bool) {
	v, _, ok := c.f.str(field)
	return v, ok && proto.ValidName(v)
}

// needFriend checks that to is a friend of user, and if not says why:
// user_not_exist or not_friend. A friendship implies both users exist, so
// the common case is one lookup.
func (w *Worker) needFriend(ctx context.Context, user, to string) (string, error) {
	if ok, err := w.store.AreFriends(user, to); err != nil || ok {
		return "", err
	}
	if ok, err := w.userExists(ctx, to); err != nil || !ok {
		return "user_not_exist", err
	}
	friends, err := w.exists(ctx, friendEvSubject(user, to), func() (bool, error) { return w.store.AreFriends(user, to) })
	if err != nil || !friends {
		return "not_friend", err
	}
	return "", nil
}

// exists runs check against the local store, and if it says no, makes sure
// the store is not merely behind the log on subject before believing it.
func (w *Worker) exists(ctx context.Context, subject string, check func() (bool, error)) (bool, error) {
	ok, err := check()
	if err != nil || ok {
		return ok, err
	}
	logged, err := w.applier.refresh(ctx, subject)
	if err != nil || !logged {
		return false, err
	}
	return check()
}

func (w *Worker) userExists(ctx context.Context, name string) (bool, error) {
	return w.exists(ctx, userEvSubject(name), func() (bool, error) { return w.store.HasUser(name) })
}

func (w *Worker) groupExists(ctx context.Context, name string) (bool, error) {
	return w.exists(ctx, groupEvSubject(name), func() (bool, error) { return w.store.HasGroup(name) })
}

func (w *Worker) register(ctx context.Context, c *call) ([]byte, error) {
	user, okUser := c.name("user")
	pass, _, okPass := c.f.str("password")
	switch {
	case !okUser:
		return result(c.cmd, "failure", "reason", "invalid_user"), nil
	case !okPass || !proto.ValidPassword(pass):
		return result(c.cmd, "failure", "reason", "invalid_password"), nil
	}
	if _, err := w.store.User(user); err == nil {
		return result(c.cmd, "failure", "reason", "user_exists"), nil
	}
	var hash string
	var herr error
	if err := w.hash(ctx, func() { hash, herr = w.opts.Passwords.Hash(pass) }); err != nil {
		return nil, err
	}
	if herr != nil {
		return nil, fmt.Errorf("hash password: %w", herr)
	}
	seq, err := publishEvent(ctx, w.js, userEvSubject(user), storage.Event{
		Type: storage.EvUserRegistered, User: user, Hash: hash, Time: time.Now().UnixMilli(),
	})
	if errors.Is(err, errConflict) {
		return result(c.cmd, "failure", "reason", "user_exists"), nil
	}
	if err != nil {
		return nil, err
	}
	c.seq = seq
	return result(c.cmd, "success"), nil
}

func (w *Worker) login(ctx context.Context, c *call) ([]byte, error) {
	user, okUser := c.name("user")
	pass, _, okPass := c.f.str("password")
	if !okUser {
		return result(c.cmd, "user_not_exist"), nil
	}
	u, err := w.store.User(user)
	if errors.Is(err, storage.ErrNotFound) {
		// Not here yet, or not at all: the log decides.
		if ok, err := w.userExists(ctx, user); err != nil || !ok {
			return result(c.cmd, "user_not_exist"), err
		}
		u, err = w.store.User(user)
	}
	if err != nil {
		return nil, err
	}
	var cmpErr error
	if err := w.hash(ctx, func() { cmpErr = passwd.Verify(u.Hash, pass) }); err != nil {
		return nil, err
	}
	if cmpErr != nil && !errors.Is(cmpErr, passwd.ErrMismatch) {
		return nil, fmt.Errorf("stored password hash of %s: %w", user, cmpErr)
	}
	if !okPass || cmpErr != nil {
		return result(c.cmd, "password_error"), nil
	}
	if err := w.applier.catchUp(ctx); err != nil {
		return nil, err
	}
	friends, err := w.store.Friends(user)
	if err != nil {
		return nil, err
	}
	groups, err := w.store.Groups(user)
	if err != nil {
		return nil, err
	}
	body := result(c.cmd, "success", "friend", strings.Join(friends, "|"), "group", strings.Join(groups, "|"))
	if c.announce {
		w.tell(user, friends, true)
	}
	if c.stored {
		body = w.withStored(ctx, c, user, body)
	}
	c.bind = user
	return body, nil
}

// withStored appends the user's stored messages to a login reply, one
// per line after it, as a peek (see claimInbox): the edge that asked has
// subscribed to the user's subject before, so what is kept from now on
// is nudged there. If they cannot be read, the reply goes without them
// (c.stored false), and the edge asks again the usual way.
func (w *Worker) withStored(ctx context.Context, c *call, user string, body []byte) []byte {
	msgs, seqs, more, err := w.inbox.peek(ctx, user, inboxBatch)
	if err != nil && len(msgs) == 0 {
		w.log.Warn("offline messages not read at login", "user", user, "err", err)
		c.stored = false
		return body
	}
	if err != nil {
		w.log.Warn("offline messages partly read", "user", user, "err", err)
		more = true
	}
	c.inboxSeqs, c.more = formatSeqs(seqs), more
	for _, m := range msgs {
		body = append(append(body, '\n'), m...)
	}
	return body
}

func (w *Worker) addFriend(ctx context.Context, c *call) ([]byte, error) {
	if !actingUserOK(c, "user") {
		return result(c.cmd, "forbidden"), nil
	}
	friend, ok := c.name("friend")
	if !ok || friend == c.user {
		return result(c.cmd, "invalid"), nil
	}
	if ok, err := w.userExists(ctx, friend); err != nil || !ok {
		return result(c.cmd, "user_not_exist"), err
	}
	if ok, err := w.store.AreFriends(c.user, friend); err != nil || ok {
		return result(c.cmd, "already_friend"), err
	}
	seq, err := publishEvent(ctx, w.js, friendEvSubject(c.user, friend), storage.Event{
		Type: storage.EvFriendAdded, User: c.user, Friend: friend, Time: time.Now().UnixMilli(),
	})
	if errors.Is(err, errConflict) {
		return result(c.cmd, "already_friend"), nil
	}
	if err != nil {
		return nil, err
	}
	c.seq = seq
	w.notify(friend, seq, obj("cmd", "add_friend_reply", "result", c.user))
	return result(c.cmd, "success", "friend", friend), nil
}

func (w *Worker) createGroup(ctx context.Context, c *call) ([]byte, error) {
	if !actingUserOK(c, "user") {
		return result(c.cmd, "forbidden"), nil
	}
	group, ok := c.name("group")
	if !ok {
		return result(c.cmd, "invalid"), nil
	}
	if _, err := w.store.Group(group); err == nil {
		return result(c.cmd, "group_exist"), nil
	}
	seq, err := publishEvent(ctx, w.js, groupEvSubject(group), storage.Event{
		Type: storage.EvGroupCreated, User: c.user, Group: group, Time: time.Now().UnixMilli(),
	})
	if errors.Is(err, errConflict) {
		return result(c.cmd, "group_exist"), nil
	}
	if err != nil {
		return nil, err
	}
	c.seq = seq
	return result(c.cmd, "success", "group", group), nil
}

func (w *Worker) addGroup(ctx context.Context, c *call) ([]byte, error) {
	if !actingUserOK(c, "user") {
		return result(c.cmd, "forbidden"), nil
	}
	group, ok := c.name("group")
	if !ok {
		return result(c.cmd, "invalid"), nil
	}
	if ok, err := w.groupExists(ctx, group); err != nil || !ok {
		return result(c.cmd, "group_not_exist"), err
	}
	if ok, err := w.store.IsMember(group, c.user); err != nil || ok {
		return result(c.cmd, "user_in_group"), err
	}
	seq, err := publishEvent(ctx, w.js, memberEvSubject(group, c.user), storage.Event{
		Type: storage.EvMemberJoined, User: c.user, Group: group, Time: time.Now().UnixMilli(),
	})
	if errors.Is(err, errConflict) {
		return result(c.cmd, "user_in_group"), nil
	}
	if err != nil {
		return nil, err
	}
	c.seq = seq
	return result(c.cmd, "success", "group", group), nil
}

func (w *Worker) privateChat(ctx context.Context, c *call) ([]byte, error) {
	if !actingUserOK(c, "user_from") {
		return result(c.cmd, "forbidden"), nil
	}
	to, ok := c.name("user_to")
	text, _, okText := c.f.str("text")
	if !ok || !okText {
		raw, _, _ := c.f.str("user_to")
		return result(c.cmd, "invalid", "user_to", raw), nil
	}
	if refusal, err := w.needFriend(ctx, c.user, to); refusal != "" || err != nil {
		return result(c.cmd, refusal, "user_to", to), err
	}
	msg := proto.PrivateMessage(c.user, to, text, c.msgID)
	if c.keep {
		if err := w.keep(ctx, to, msg); err != nil {
			return nil, err
		}
		return result(c.cmd, "offline", "user_to", to), nil
	}
	if w.handOff(c, to, msg) {
		return nil, nil
	}
	delivered, err := w.deliver(ctx, to, msg)
	if err != nil {
		return nil, err
	}
	if !delivered {
		return result(c.cmd, "offline", "user_to", to), nil
	}
	w.metrics.private.With("delivered").Inc()
	return result(c.cmd, "success", "user_to", to), nil
}

// quickPrivateChat hands off a message between friends; anything else
// (a refusal to explain, a store to double-check against the log) is left
// to privateChat.
func (w *Worker) quickPrivateChat(c *call) bool {
	to, ok := c.name("user_to")
	text, _, okText := c.f.str("text")
	if !ok || !okText || c.reply == "" || c.keep || !actingUserOK(c, "user_from") {
		return false
	}
	if friends, err := w.store.AreFriends(c.user, to); err != nil || !friends {
		return false
	}
	return w.handOff(c, to, proto.PrivateMessage(c.user, to, text, c.msgID))
}

// handOff sends msg to the recipient's edges, which answer the sender's
// edge (see handoffs); false when the request cannot be answered that way.
func (w *Worker) handOff(c *call, to string, msg []byte) bool {
	if c.reply == "" || w.handoff.send(to, msg, c.reply) != nil {
		return false
	}
	w.metrics.private.With("handed_off").Inc()
	c.answered = true
	return true
}

func (w *Worker) groupChat(ctx context.Context, c *call) ([]byte, error) {
	if !actingUserOK(c, "user") {
		return result(c.cmd, "forbidden"), nil
	}
	group, ok := c.name("group")
	text, _, okText := c.f.str("text")
	if !ok || !okText {
		return result(c.cmd, "invalid"), nil
	}
	if ok, err := w.groupExists(ctx, group); err != nil || !ok {
		return result(c.cmd, "group_not_exist", "group", group), err
	}
	member, err := w.exists(ctx, memberEvSubject(group, c.user), func() (bool, error) { return w.store.IsMember(group, c.user) })
	if err != nil || !member {
		return result(c.cmd, "not_member", "group", group), err
	}
	members, err := w.store.Members(group)
	if err != nil {
		return nil, err
	}
	// With its newline, so that each member's edge can write the copy it
	// gets as it is.
	msg := append(obj("cmd", "group_chat", "user", c.user, "group", group, "text", text,
		"time", time.Now().UnixMilli(), "msg_id", nuid.Next()), '\n')
	for _, m := range members {
		if m != c.user {
			w.notify(m, 0, msg)
			w.metrics.groupFanout.Inc()
		}
	}
	return result(c.cmd, "success", "group", group), nil
}

func (w *Worker) groupMembers(ctx context.Context, c *call) ([]byte, error) {
	group, ok := c.name("group")
	if !ok {
		raw, _, _ := c.f.str("group")
		return result(c.cmd, "invalid", "group", raw, "member", ""), nil
	}
	if ok, err := w.groupExists(ctx, group); err != nil || !ok {
		return result(c.cmd, "group_not_exist", "group", group, "member", ""), err
	}
	// Someone may have joined through another worker a moment ago; a
	// list is answered from a store that has seen the whole log.
	if err := w.applier.catchUp(ctx); err != nil {
		return nil, err
	}
	members, err := w.store.Members(group)
	if err != nil {
		return nil, err
	}
	return result(c.cmd, "success", "member", strings.Join(members, "|"), "group", group), nil
}

// presence tells the user's friends that the user came online (first
// session anywhere) or went offline (last session ended). Edges decide
// when; the friend list lives here.
func (w *Worker) presence(ctx context.Context, c *call) ([]byte, error) {
	var online bool
	if raw := c.f.raw("online"); raw == nil || json.Unmarshal(raw, &online) != nil {
		return result(c.cmd, "invalid"), nil
	}
	if err := w.announce(ctx, c.user, online); err != nil {
		return nil, err
	}
	return result(c.cmd, "success"), nil
}

// announce tells user's friends that the user came online or went offline.
func (w *Worker) announce(ctx context.Context, user string, online bool) error {
	friends, err := w.store.Friends(user)
	if err != nil {
		return err
	}
	w.tell(user, friends, online)
	return nil
}

// tell tells friends that user came online or went offline.
func (w *Worker) tell(user string, friends []string, online bool) {
	// With its newline, as a group message: each friend's edge writes
	// the copy it gets as it is.
	msg := append(obj("cmd", "friend_offline", "friend", user), '\n')
	if online {
		msg = append(obj("cmd", "friend_login", "friend", user), '\n')
	}
	for _, f := range friends {
		w.notify(f, 0, msg)
	}
}

// claimInbox hands the user's stored messages to the asking edge, one
// JSON object per line.
//
// With "announce": true it first tells the user's friends the user came
// online: a session's first session anywhere needs both, and one request
// does for two.
func (w *Worker) claimInbox(ctx context.Context, c *call) ([]byte, error) {
	var announce bool
	if raw := c.f.raw("announce"); raw != nil && json.Unmarshal(raw, &announce) != nil {
		return result(c.cmd, "invalid"), nil
	}
	if announce {
		if err := w.announce(ctx, c.user, true); err != nil {
			return nil, err
		}
	}
	var peek bool
	if raw := c.f.raw("peek"); raw != nil && json.Unmarshal(raw, &peek) != nil {
		return result(c.cmd, "invalid"), nil
	}
	var msgs [][]byte
	var more bool
	var err error
	if peek {
		var seqs []uint64
		msgs, seqs, more, err = w.inbox.peek(ctx, c.user, inboxBatch)
		c.inboxSeqs = formatSeqs(seqs)
	} else {
		msgs, more, err = w.inbox.claim(ctx, c.user, inboxBatch)
	}
	if err != nil && len(msgs) == 0 {
		return nil, err
	}
	if err != nil {
		w.log.Warn("offline messages partly read", "user", c.user, "err", err)
		more = true
	}
	c.more = more
	return append(bytes.Join(msgs, []byte("\n")), '\n'), nil
}

// inboxDone removes stored messages the edge has written (see peek).
func (w *Worker) inboxDone(ctx context.Context, c *call) ([]byte, error) {
	seqs, ok := parseSeqs(c.inboxSeqs)
	if !ok {
		return result(c.cmd, "invalid"), nil
	}
	if err := w.inbox.remove(ctx, c.user, seqs); err != nil {
		return nil, err
	}
	return result(c.cmd, "success"), nil
}

func formatSeqs(seqs []uint64) string {
	b := make([]byte, 0, 8*len(seqs))
	for i, s := range seqs {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, s, 10)
	}
	return string(b)
}

func parseSeqs(s string) ([]uint64, bool) {
	if s == "" {
		return nil, false
	}
	parts := strings.Split(s, ",")
	if len(parts) > inboxBatch {
		return nil, false
	}
	seqs := make([]uint64, 0, len(parts))
	for _, p := range parts {
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil || n == 0 {
			return nil, false
		}
		seqs = append(seqs, n)
	}
	return seqs, true
}

// notify publishes a delivery to every session of user, if any; nothing
// is kept for an offline user.
func (w *Worker) notify(user string, seq uint64, msg []byte) {
	// A message without a kind is a delivery; headers are left out when
	// they say nothing, since every recipient's edge would parse them.
	m := &nats.Msg{Subject: proto.UserSubject(user), Data: msg}
	if seq > 0 {
		m.Header = nats.Header{proto.HdrSeq: {strconv.FormatUint(seq, 10)}}
	}
	if err := w.nc.PublishMsg(m); err != nil {
		w.log.Warn("notify failed", "err", err)
	}
}

// deliver hands msg to the user's sessions and waits for an edge to take
// it. Nobody subscribed means offline: the message is kept (keep).
func (w *Worker) deliver(ctx context.Context, user string, msg []byte) (bool, error) {
	m := &nats.Msg{Subject: proto.UserSubject(user), Data: msg}
	// A timeout rather than a context: the client pools its timers.
	wait := min(w.opts.DeliverTimeout, deadline.Remaining(ctx, w.opts.DeliverTimeout))
	_, err := w.nc.RequestMsg(m, max(wait, time.Millisecond))
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, nats.ErrNoResponders) {
		// An edge holds the user but did not confirm: keep the message
		// rather than risk losing it.
		w.log.Warn("delivery unconfirmed, storing", "user", user, "err", err)
	}
	return false, w.keep(ctx, user, msg)
}

// keep stores a private message for user and nudges any session that
// logged in meanwhile to fetch it, which closes the race between
// "offline" and a concurrent login.
func (w *Worker) keep(ctx context.Context, user string, msg []byte) error {
	if err := w.inbox.put(ctx, user, msg); err != nil {
		return err
	}
	w.metrics.private.With("stored").Inc()
	w.nudge(user)
	return nil
}

// nudge tells any session of user to fetch its stored messages.
func (w *Worker) nudge(user string) {
	m := nats.NewMsg(proto.UserSubject(user))
	m.Header.Set(proto.HdrKind, proto.KindInbox)
	if err := w.nc.PublishMsg(m); err != nil {
		w.log.Warn("nudge failed", "user", user, "err", err)
	}
}
