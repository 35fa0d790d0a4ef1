package edge

import (
	"bytes"
	"slices"
	"strings"
	"sync"

	"github.com/chatd-io/chatd/internal/proto"
)

// friendSet is what a session knows of its user's friends: the list its
// login reply gave, and the friendships made since that it saw made (its
// own add, or another user's add_friend_reply). Friendships are never
// taken back, so the set can only be behind the workers' store, never
// ahead of it: a name in it is a friend, and one not in it is asked of a
// worker. With it the edge sends a private message between friends to the
// recipient's subject itself (see conn.sendDirect).
type friendSet struct {
	mu    sync.Mutex
	names []string // sorted, no repeats; the strings share one allocation
}

// reset replaces the set with the '|'-separated list of a login reply.
func (f *friendSet) reset(list string) {
	var names []string
	if list != "" {
		names = strings.Split(list, "|")
		slices.Sort(names)
		names = slices.Compact(names)
	}
	f.mu.Lock()
	f.names = names
	f.mu.Unlock()
}

// add records a friendship made after the login.
func (f *friendSet) add(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i, found := slices.BinarySearch(f.names, name); !found {
		f.names = slices.Insert(f.names, i, name)
	}
}

// has reports whether name is known to be a friend.
func (f *friendSet) has(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, found := slices.BinarySearch(f.names, name)
	return found
}

// field decodes a string member of a JSON object line; names may hold
// characters JSON escapes, so proto.FieldBytes will not do here.
func field(line []byte, key string) (string, bool) {
	var v string
	ok := false
	err := proto.Fields(line, func(k, raw []byte) {
		if string(k) == key {
			v, ok = proto.String(raw)
		}
	})
	return v, err == nil && ok
}

// presenceNotice reports whether line tells of a friend coming online or
// going offline, as workers write it.
func presenceNotice(line []byte) bool {
	return bytes.HasPrefix(line, []byte(`{"cmd":"friend_login",`)) ||
		bytes.HasPrefix(line, []byte(`{"cmd":"friend_offline",`))
}

// addFriendNotice starts the notice a user gets when another adds them.
const addFriendNotice = `{"cmd":"add_friend_reply",`

// newFriend returns the user who has just made friends with the
// recipient of line, if line says so.
func newFriend(line []byte) (string, bool) {
	if len(line) < len(addFriendNotice) || string(line[:len(addFriendNotice)]) != addFriendNotice {
		return "", false
	}
	name, ok := field(line, "result")
	return name, ok && proto.ValidName(name)
}
