package workers

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// inbox keeps messages for offline users in a JetStream stream, one subject
// per user, so that any worker can store them and any worker can hand them
// out. Edges peek and remove what they have written (at least once: an
// edge dying in between leaves the messages for the next fetch); an edge
// that asks without peeking gets a claim, where whoever deletes a message
// delivers it.
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
	var out [][]byte
	more, err := ib.scan(ctx, user, max, func(m *jetstream.RawStreamMsg) (bool, error) {
		err := ib.stream.DeleteMsg(ctx, m.Sequence)
		if alreadyGone(err) {
			return false, nil // another worker claimed it
		}
		if err != nil {
			return false, fmt.Errorf("claim offline message: %w", err)
		}
		out = append(out, m.Data)
		return true, nil
	})
	return out, more, err
}

// peek returns up to max waiting messages for user, oldest first, with
// their sequences, and reports whether more remain. Nothing is removed:
// the edge removes them (remove) once it has written them, so a message
// whose edge dies before that is handed out again.
func (ib *inbox) peek(ctx context.Context, user string, max int) (msgs [][]byte, seqs []uint64, more bool, err error) {
	more, err = ib.scan(ctx, user, max, func(m *jetstream.RawStreamMsg) (bool, error) {
		msgs, seqs = append(msgs, m.Data), append(seqs, m.Sequence)
		return true, nil
	})
	return msgs, seqs, more, err
}

// scan offers user's waiting messages to take, oldest first, until take
// has accepted max of them, and reports whether more remain.
func (ib *inbox) scan(ctx context.Context, user string, max int, take func(*jetstream.RawStreamMsg) (bool, error)) (bool, error) {
	subj := inboxSubject(user)
	taken := 0
	for seq := uint64(1); ; {
		m, err := ib.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("read offline messages: %w", err)
		}
		if taken == max {
			return true, nil
		}
		seq = m.Sequence + 1
		ok, err := take(m)
		if err != nil {
			return false, err
		}
		if ok {
			taken++
		}
	}
}

// remove deletes messages handed out to user; one already gone is no
// error, and one stored for somebody else is left alone.
func (ib *inbox) remove(ctx context.Context, user string, seqs []uint64) error {
	subj := inboxSubject(user)
	for _, seq := range seqs {
		m, err := ib.stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) || err == nil && m.Subject != subj {
			continue
		}
		if err != nil {
			return fmt.Errorf("remove offline message: %w", err)
		}
		if err := ib.stream.DeleteMsg(ctx, seq); err != nil && !alreadyGone(err) {
			return fmt.Errorf("remove offline message: %w", err)
		}
	}
	return nil
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
