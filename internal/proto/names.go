package proto

import (
	"encoding/base64"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on names and passwords.
const (
	MaxNameRunes     = 32
	MaxPasswordBytes = 128
)

// ValidName reports whether s may be a user or group name: 1–32 runes of
// valid UTF-8 with no whitespace, control characters or '|', which
// separates names in list replies.
func ValidName(s string) bool {
	if s == "" || !utf8.ValidString(s) || utf8.RuneCountInString(s) > MaxNameRunes {
		return false
	}
	for _, r := range s {
		if r == '|' || unicode.IsSpace(r) || unicode.IsControl(r) || r == utf8.RuneError ||
			unicode.Is(unicode.Cf, r) {
			return false
		}
	}
	return true
}

// ValidPassword reports whether p has an acceptable length.
func ValidPassword(p string) bool {
	return len(p) >= 1 && len(p) <= MaxPasswordBytes
}

// Token encodes a name as a single NATS subject token. Names may contain
// '.', '*', '>' or anything else; base64url without padding never does.
func Token(name string) string { return subject("", name) }

// subject is prefix followed by Token(name), built in one allocation: a
// delivery subject is made for every message published to a user.
func subject(prefix, name string) string {
	var buf [128]byte
	b := append(buf[:0], prefix...)
	return string(base64.RawURLEncoding.AppendEncode(b, []byte(name)))
}

// NameFromToken reverses Token.
func NameFromToken(tok string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	return string(b), err
}

// Subjects shared by edges and workers.
const (
	// CmdPrefix + command name is where edges send requests to workers.
	CmdPrefix = "chat.cmd."
	// InternalPrefix + name is for edge-to-worker calls clients cannot make.
	InternalPrefix = "chat.int."
	// UserPrefix + Token(user) is a user's delivery subject.
	UserPrefix = "chat.user."
	// HandoffPrefix starts the reply subject of a delivery whose
	// confirmation goes straight to the sender's edge (see HandoffReply).
	HandoffPrefix = "chat.handoff."
	// WorkerQueue is the queue group every worker instance joins.
	WorkerQueue = "chat-workers"
)

// SessionBucket is the key-value bucket where each edge keeps a heartbeat
// (EdgeKey). The users an edge holds are in the session log (package
// sessionlog); edges of earlier releases kept a key per user here
// (SessionKey), which workers still read when they give such an edge up.
const SessionBucket = "CHAT_SESSIONS"

// EdgeKey is an edge's heartbeat key.
func EdgeKey(edgeID string) string { return "e." + edgeID }

// SessionKeyPrefix starts every session key of an edge.
func SessionKeyPrefix(edgeID string) string { return "s." + edgeID + "." }

// SessionKey recorded, before the session log, that an edge held
// sessions of user.
func SessionKey(edgeID, user string) string { return SessionKeyPrefix(edgeID) + Token(user) }

// The stream of messages kept for offline users: InboxPrefix +
// Token(user) holds one user's. Workers write and read it; an edge back on
// NATS after a break looks only at which subjects hold anything.
const (
	InboxStream = "CHAT_INBOX"
	InboxPrefix = "chat.inbox."
)

// InboxSubject is where messages kept for user are.
func InboxSubject(user string) string { return subject(InboxPrefix, user) }

// Internal endpoints, under InternalPrefix.
const (
	// IntPresence tells a user's friends that the user came or went.
	IntPresence = "presence"
	// IntInbox claims a batch of the user's stored messages; with
	// "peek":true it only reads them, listing their sequences in
	// HdrInboxSeqs, and IntInboxDone removes them once written.
	IntInbox = "inbox"
	// IntInboxDone removes the stored messages HdrInboxSeqs lists.
	IntInboxDone = "inbox_done"
	// IntFileStored queues a stored file's offer for its recipient.
	IntFileStored = "file_stored"
)

// HandoffReply is the reply subject of a private message handed off by a
// worker, or by the sender's edge itself: the recipient's edge confirms
// it by publishing to reply (the subject the sender's edge waits on, see
// HandoffTarget), and the sender of the delivery, subscribed to
// HandoffPrefix+id+".>", receives what is not confirmed: the server's
// "no responders" when nobody holds the user, or the message itself sent
// back by an edge that no longer does.
func HandoffReply(id string, token uint64, reply string) string {
	var buf [20]byte
	return HandoffPrefix + id + "." + string(strconv.AppendUint(buf[:0], token, 10)) + "." + reply
}

// HandoffTarget returns the subject a handed-off delivery is confirmed
// to, and false when subject is not a HandoffReply.
func HandoffTarget(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, HandoffPrefix)
	if !ok {
		return "", false
	}
	_, rest, ok = strings.Cut(rest, ".") // worker
	if !ok {
		return "", false
	}
	_, rest, ok = strings.Cut(rest, ".") // token
	return rest, ok && rest != ""
}

// HandoffToken returns the token of a HandoffReply under prefix
// (HandoffPrefix+workerID+".").
func HandoffToken(subject, prefix string) (uint64, bool) {
	rest, ok := strings.CutPrefix(subject, prefix)
	if !ok {
		return 0, false
	}
	tok, _, _ := strings.Cut(rest, ".")
	n, err := strconv.ParseUint(tok, 10, 64)
	return n, err == nil
}

// UserSubject returns the delivery subject for a user.
func UserSubject(user string) string { return subject(UserPrefix, user) }

// Seq reads a HdrSeq value: 0 when it is absent or not a number.
func Seq(v string) uint64 {
	if v == "" {
		return 0 // the common case, without ParseUint's error value
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// Headers carried on NATS messages between edges and workers.
const (
	// HdrUser names the session user on a request; set only by the edge.
	HdrUser = "Chat-User"
	// HdrSeq carries a log sequence: on a request, the highest sequence the
	// session has seen; on a reply or delivery, the sequence it reflects.
	HdrSeq = "Chat-Seq"
	// HdrKind says what a message on a user subject is for.
	HdrKind = "Chat-Kind"
	// HdrBind on a login reply names the user the session is now bound to.
	HdrBind = "Chat-Bind"
	// HdrMore on a reply that carries stored messages says more are waiting.
	HdrMore = "Chat-More"
	// HdrKeep on a private_chat request says an earlier attempt got no
	// answer: the worker keeps the message for the recipient's next
	// fetch rather than handing it to an edge.
	HdrKeep = "Chat-Keep"
	// HdrMsgID on a private_chat request is the msg_id the message gets,
	// the same when the request is sent again.
	HdrMsgID = "Chat-Msg-Id"
	// HdrInboxSeqs lists stored messages by stream sequence, comma-separated.
	HdrInboxSeqs = "Chat-Inbox-Seqs"
	// HdrAnnounce on a login request asks the worker to tell the user's
	// friends the user came online, once the password is right; on the
	// reply it says that was done.
	HdrAnnounce = "Chat-Announce"
	// HdrStored on a login request asks for the user's stored messages
	// with the reply; on the reply it says they follow the reply's first
	// line, one per line (and HdrInboxSeqs, HdrMore describe them as on
	// an inbox reply).
	HdrStored = "Chat-Stored"
)

// Kinds of messages on a user's delivery subject.
const (
	// KindDeliver is written to every session of the user; a message
	// without a kind is one too.
	KindDeliver = "deliver"
	// KindProbe only asks whether any session exists.
	KindProbe = "probe"
	// KindInbox says stored messages are waiting; the edge should fetch them.
	KindInbox = "inbox"
)
