// Package storage is the query store each worker builds from the event log:
// users, friendships, groups and members in LevelDB. The log (a JetStream
// stream) is the truth; a Store is a projection of it that records the last
// sequence it applied in the same atomic batch as the data, so a restart
// resumes exactly where it stopped.
package storage

import (
	"errors"
	"fmt"
)

// ErrNotFound is returned for a user or group that does not exist.
var ErrNotFound = errors.New("not found")

// Event types, one per kind of state change.
const (
	EvUserRegistered = "user_registered"
	EvFriendAdded    = "friend_added"
	EvGroupCreated   = "group_created"
	EvMemberJoined   = "member_joined"
)

// Event is one state change as it is stored in the log.
type Event struct {
	Type   string `json:"type"`
	User   string `json:"user,omitempty"`
	Hash   string `json:"hash,omitempty"`   // password hash, EvUserRegistered
	Friend string `json:"friend,omitempty"` // EvFriendAdded: the other side
	Group  string `json:"group,omitempty"`  // EvGroupCreated, EvMemberJoined
	Time   int64  `json:"time"`             // unix milliseconds
}

// Validate checks that an event has the fields its type needs.
func (e Event) Validate() error {
	ok := false
	switch e.Type {
	case EvUserRegistered:
		ok = e.User != "" && e.Hash != ""
	case EvFriendAdded:
		ok = e.User != "" && e.Friend != "" && e.User != e.Friend
	case EvGroupCreated, EvMemberJoined:
		ok = e.User != "" && e.Group != ""
	default:
		return fmt.Errorf("unknown event type %q", e.Type)
	}
	if !ok {
		return fmt.Errorf("event %q is missing fields", e.Type)
	}
	return nil
}

// User is a registered account.
type User struct {
	Name    string `json:"-"`
	Hash    string `json:"hash"`
	Created int64  `json:"created"`
}

// Group is a chat group.
type Group struct {
	Name    string `json:"-"`
	Owner   string `json:"owner"`
	Created int64  `json:"created"`
}

// Store is what workers query. Lists are in the order entries were made.
type Store interface {
	// LastSeq is the sequence of the last event applied.
	LastSeq() uint64
	// Apply applies the event at log sequence seq. Events at or below
	// LastSeq are ignored, so replaying a log prefix is harmless.
	Apply(seq uint64, ev Event) error
	// Skip records that seq holds nothing to apply (for example an event
	// this version does not understand) so that it is not read again.
	Skip(seq uint64) error

	User(name string) (User, error)
	HasUser(name string) (bool, error)
	Friends(user string) ([]string, error)
	AreFriends(a, b string) (bool, error)
	Group(name string) (Group, error)
	HasGroup(name string) (bool, error)
	Members(group string) ([]string, error)
	IsMember(group, user string) (bool, error)
	Groups(user string) ([]string, error)

	Close() error
}
