package proto

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// File transfer: subjects, headers and the offer a worker hands to the
// recipient's edge.
const (
	// EdgePrefix + edge ID + ".file" is where a worker hands a file offer
	// to the one edge it chose among those holding the recipient.
	EdgePrefix = "chat.edge."
	// FilePrefix + transfer ID + FileToSender / FileToReceiver carry one
	// relay: credits and aborts to the sender's edge, chunks to the
	// receiver's.
	FilePrefix     = "chat.file."
	FileToSender   = ".s"
	FileToReceiver = ".r"
	// FileBucket is the object store bucket holding files for offline users.
	FileBucket = "CHAT_FILES"
	// MaxFilenameBytes bounds the echoed file name.
	MaxFilenameBytes = 1024
)

// Headers used by file transfers.
const (
	// HdrEdge names the edge that sent a request or answered a probe.
	HdrEdge = "Chat-Edge"
	// HdrGone on the answer to a probe says the edge has just let the
	// user go: its subscription is on its way out.
	HdrGone = "Chat-Gone"
	// HdrTransfer carries a transfer's ID.
	HdrTransfer = "Chat-Transfer"
	// HdrOffline on a send_file request says the client accepts storing
	// the file if the recipient is offline.
	HdrOffline = "Chat-Offline"
	// HdrChunk numbers the data chunks of a relay, from 1.
	HdrChunk = "Chat-Chunk"
)

// Kinds of messages on a transfer's subjects.
const (
	KindData   = "data"
	KindCredit = "credit"
	KindEOF    = "eof"
	KindAbort  = "abort"
)

// Results of the worker's send_file step that only the edge sees: the
// recipient's edge accepted the relay, or the file is to be stored.
const (
	FileRelay = "relay"
	FileStore = "store"
)

// FileOffer describes one file on its way to a user.
type FileOffer struct {
	ID       string          `json:"id"`
	From     string          `json:"from"`
	To       string          `json:"to"`
	Length   json.RawMessage `json:"length"` // as the sender wrote it, echoed as is
	Size     int64           `json:"size"`
	Filename string          `json:"filename"`
	// Object names the stored file, for offline delivery.
	Object string `json:"object,omitempty"`
}

// TransferSubject returns the subject of one side of a relay.
func TransferSubject(id, side string) string { return FilePrefix + id + side }

// EdgeFileSubject returns the subject an edge takes file offers on.
func EdgeFileSubject(edgeID string) string { return EdgePrefix + edgeID + ".file" }

// FileLength reads the seed's length field: a JSON integer or a string of
// decimal digits, from 0 to max.
func FileLength(raw json.RawMessage, max int64) (int64, bool) {
	if len(raw) == 0 {
		return 0, false
	}
	digits := string(raw)
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &digits); err != nil {
			return 0, false
		}
	}
	if digits == "" || len(digits) > 19 {
		return 0, false
	}
	for _, r := range digits {
		if r < '0' || r > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n > max {
		return 0, false
	}
	return n, true
}

// ValidFilename reports whether a file name may be echoed: it is never
// used as a path, so any valid UTF-8 of reasonable length will do.
func ValidFilename(s string) bool {
	return len(s) <= MaxFilenameBytes && utf8.ValidString(s)
}
