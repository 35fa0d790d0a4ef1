package workers

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// inbox keeps messages for offline users in a JetStream stream, one subject
// per user, so that any worker can store them and any worker can hand them
// out. Handing out is a claim: a message is delivered by whoever deletes
// it, which makes delivery exactly-once even when two logins race.
type inbox struct {
	js     jetstream.JetStream
	stream jetstream.Stream
}

func (ib *inbox) put(ctx context.Context, user string, msg []byte) error {
	if _, err := ib.js.Publish(ctx, inboxSubject(user), msg); err != nil {
		return fmt.Errorf("store offline message: %w", err)
	}
	return nil
}

// claim removes and returns up to max waiting messages for user, oldest
// first, and reports whether more remain.
func (ib *inbox) claim(ctx context.Context, user string, max int) ([][]byte, bool, error) {
	subj := inboxSubject(user)
	var out [][]byte
	seq := uint64(1)
	for {
		m, err := ib.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, false, nil
		}
		if err != nil {
			return out, false, fmt.Errorf("read offline messages: %w", err)
		}
		if len(out) == max {
			return out, true, nil
		}
		seq = m.Sequence + 1
		err = ib.stream.DeleteMsg(ctx, m.Sequence)
		if alreadyGone(err) {
			continue // another worker claimed it
		}
		if err != nil {
			return out, false, fmt.Errorf("claim offline message: %w", err)
		}
		out = append(out, m.Data)
	}
}

// JetStream error codes for deleting a message that is no longer there.
const (
	errCodeSequenceNotFound = 10043
	errCodeMsgDeleteFailed  = 10057
)

func alreadyGone(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == jetstream.JSErrCodeMessageNotFound ||
		apiErr.ErrorCode == errCodeSequenceNotFound || apiErr.ErrorCode == errCodeMsgDeleteFailed
}
