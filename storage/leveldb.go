package storage

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/syndtr/goleveldb/leveldb"
	"github.com/syndtr/goleveldb/leveldb/opt"
	lvstorage "github.com/syndtr/goleveldb/leveldb/storage"
	"github.com/syndtr/goleveldb/leveldb/util"
)

// Key layout. Names never contain NUL (see proto.ValidName), so NUL ends a
// name inside a key and prefix scans cannot bleed into a longer name.
//
//	~seq                       last applied sequence (8 bytes big endian)
//	u:<user>                   User JSON
//	f:<user>\0<friend>         sequence the friendship was made at
//	F:<user>\0<seq8>           friend name, for listing in order
//	g:<group>                  Group JSON
//	m:<group>\0<user>          sequence the user joined at
//	M:<group>\0<seq8>          member name, in join order
//	G:<user>\0<seq8>           group name, the user's groups in join order
var keySeq = []byte("~seq")

func key(prefix, a string) []byte { return []byte(prefix + a) }

func key2(prefix, a, b string) []byte { return []byte(prefix + a + "\x00" + b) }

func keySeqd(prefix, a string, seq uint64) []byte {
	k := make([]byte, 0, len(prefix)+len(a)+9)
	k = append(k, prefix...)
	k = append(k, a...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

// LevelDB is a Store on goleveldb.
type LevelDB struct {
	db      *leveldb.DB
	mu      sync.Mutex // serialises Apply so the sequence check and write agree
	lastSeq atomic.Uint64

	// Friend lists are read at every login and logout (to tell friends),
	// a user's groups at every login, a group's members at every group
	// message, and a friendship is checked at every private message: a
	// LevelDB iterator or lookup costs far more than a map lookup. Lists
	// are cached by key prefix and name ("F:alice", "M:team"), and
	// membership is answered from a cached list.
	// Entries are dropped when an event that changes them is applied; the
	// whole cache is dropped when it reaches maxCachedLists, which bounds
	// its memory. gen counts the drops, so that a list read from the
	// database while an event was being applied is not cached.
	cacheMu sync.RWMutex
	lists   map[string]*nameList
	gen     uint64
	// Users are read at every login. A user's record never changes once
	// registered (the first registration wins), so a cached one cannot go
	// stale; only users that exist are cached.
	users map[string]User
}

// nameList is a cached friend or member list, with a set for long lists.
type nameList struct {
	names []string
	set   map[string]struct{} // nil for lists short enough to scan
}

// scanUpTo is the longest list searched by scanning rather than a set.
const scanUpTo = 32

func newNameList(names []string) *nameList {
	l := &nameList{names: names}
	if len(names) > scanUpTo {
		l.set = make(map[string]struct{}, len(names))
		for _, n := range names {
			l.set[n] = struct{}{}
		}
	}
	return l
}

func (l *nameList) has(name string) bool {
	if l.set != nil {
		_, ok := l.set[name]
		return ok
	}
	for _, n := range l.names {
		if n == name {
			return true
		}
	}
	return false
}

const maxCachedLists = 100_000

var _ Store = (*LevelDB)(nil)

// Open opens (creating if needed) the store in dir. Only one process may
// have a directory open at a time; LevelDB's lock file enforces it.
func Open(dir string) (*LevelDB, error) {
	db, err := leveldb.OpenFile(dir, &opt.Options{})
	if err != nil {
		return nil, fmt.Errorf("open leveldb %s: %w", dir, err)
	}
	return newLevelDB(db)
}

// OpenMem opens a store that lives in memory only, for tests and for
// workers that rebuild from the log at every start.
func OpenMem() (*LevelDB, error) {
	db, err := leveldb.Open(lvstorage.NewMemStorage(), nil)
	if err != nil {
		return nil, fmt.Errorf("open in-memory leveldb: %w", err)
	}
	return newLevelDB(db)
}

func newLevelDB(db *leveldb.DB) (*LevelDB, error) {
	s := &LevelDB{db: db, lists: map[string]*nameList{}, users: map[string]User{}}
	v, err := db.Get(keySeq, nil)
	switch {
	case errors.Is(err, leveldb.ErrNotFound):
	case err != nil:
		db.Close()
		return nil, fmt.Errorf("read last sequence: %w", err)
	case len(v) != 8:
		db.Close()
		return nil, fmt.Errorf("corrupt last sequence record (%d bytes)", len(v))
	default:
		s.lastSeq.Store(binary.BigEndian.Uint64(v))
	}
	return s, nil
}

// Close closes the database.
func (s *LevelDB) Close() error { return s.db.Close() }

// LastSeq implements Store.
func (s *LevelDB) LastSeq() uint64 { return s.lastSeq.Load() }

// Skip implements Store.
func (s *LevelDB) Skip(seq uint64) error {
	return s.write(seq, nil, func(*leveldb.Batch) error { return nil })
}

// Apply implements Store.
func (s *LevelDB) Apply(seq uint64, ev Event) error {
	if err := ev.Validate(); err != nil {
		return err
	}
	var stale []string // cached lists the event changes
	switch ev.Type {
	case EvFriendAdded:
		stale = []string{"F:" + ev.User, "F:" + ev.Friend}
	case EvGroupCreated, EvMemberJoined:
		stale = []string{"M:" + ev.Group, "G:" + ev.User}
	}
	return s.write(seq, stale, func(b *leveldb.Batch) error {
		switch ev.Type {
		case EvUserRegistered:
			return s.applyUser(b, ev)
		case EvFriendAdded:
			return s.applyFriend(b, seq, ev)
		case EvGroupCreated:
			return s.applyGroup(b, seq, ev)
		case EvMemberJoined:
			return s.applyMember(b, seq, ev.Group, ev.User)
		}
		return nil
	})
}

// write applies one event's batch and records seq, dropping the cached
// lists named in stale in between: once LastSeq says the event is applied,
// no read can find a list from before it.
func (s *LevelDB) write(seq uint64, stale []string, fill func(*leveldb.Batch) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq <= s.lastSeq.Load() {
		return nil
	}
	b := new(leveldb.Batch)
	if err := fill(b); err != nil {
		return fmt.Errorf("apply seq %d: %w", seq, err)
	}
	b.Put(keySeq, binary.BigEndian.AppendUint64(nil, seq))
	if err := s.db.Write(b, nil); err != nil {
		return fmt.Errorf("write seq %d: %w", seq, err)
	}
	if len(stale) > 0 {
		s.cacheMu.Lock()
		for _, k := range stale {
			delete(s.lists, k)
		}
		s.gen++
		s.cacheMu.Unlock()
	}
	s.lastSeq.Store(seq)
	return nil
}

func (s *LevelDB) applyUser(b *leveldb.Batch, ev Event) error {
	if ok, err := s.has(key("u:", ev.User)); err != nil || ok {
		return err // first registration wins; the log should never hold two
	}
	v, err := json.Marshal(User{Hash: ev.Hash, Created: ev.Time})
	if err != nil {
		return err
	}
	b.Put(key("u:", ev.User), v)
	return nil
}

func (s *LevelDB) applyFriend(b *leveldb.Batch, seq uint64, ev Event) error {
	if ok, err := s.has(key2("f:", ev.User, ev.Friend)); err != nil || ok {
		return err
	}
	sv := binary.BigEndian.AppendUint64(nil, seq)
	b.Put(key2("f:", ev.User, ev.Friend), sv)
	b.Put(key2("f:", ev.Friend, ev.User), sv)
	b.Put(keySeqd("F:", ev.User, seq), []byte(ev.Friend))
	b.Put(keySeqd("F:", ev.Friend, seq), []byte(ev.User))
	return nil
}

func (s *LevelDB) applyGroup(b *leveldb.Batch, seq uint64, ev Event) error {
	if ok, err := s.has(key("g:", ev.Group)); err != nil || ok {
		return err
	}
	v, err := json.Marshal(Group{Owner: ev.User, Created: ev.Time})
	if err != nil {
		return err
	}
	b.Put(key("g:", ev.Group), v)
	return s.applyMember(b, seq, ev.Group, ev.User)
}

func (s *LevelDB) applyMember(b *leveldb.Batch, seq uint64, group, user string) error {
	if ok, err := s.has(key2("m:", group, user)); err != nil || ok {
		return err
	}
	b.Put(key2("m:", group, user), binary.BigEndian.AppendUint64(nil, seq))
	b.Put(keySeqd("M:", group, seq), []byte(user))
	b.Put(keySeqd("G:", user, seq), []byte(group))
	return nil
}

func (s *LevelDB) has(k []byte) (bool, error) {
	ok, err := s.db.Has(k, nil)
	if err != nil {
		return false, fmt.Errorf("read %q: %w", k, err)
	}
	return ok, nil
}

func (s *LevelDB) cachedUser(name string) (User, bool) {
	s.cacheMu.RLock()
	defer s.cacheMu.RUnlock()
	u, ok := s.users[name]
	return u, ok
}

// User implements Store.
func (s *LevelDB) User(name string) (User, error) {
	u, ok := s.cachedUser(name)
	if ok {
		return u, nil
	}
	if err := s.getJSON(key("u:", name), &u); err != nil {
		return User{}, err
	}
	u.Name = name
	s.cacheMu.Lock()
	if len(s.users) >= maxCachedLists {
		clear(s.users)
	}
	s.users[name] = u
	s.cacheMu.Unlock()
	return u, nil
}

// HasUser implements Store.
func (s *LevelDB) HasUser(name string) (bool, error) {
	if _, ok := s.cachedUser(name); ok {
		return true, nil
	}
	return s.has(key("u:", name))
}

// HasGroup implements Store. A group has members from its creation on, so
// a cached member list answers too.
func (s *LevelDB) HasGroup(name string) (bool, error) {
	if l, _ := s.cached("M:", name); l != nil && len(l.names) > 0 {
		return true, nil
	}
	return s.has(key("g:", name))
}

// Group implements Store.
func (s *LevelDB) Group(name string) (Group, error) {
	var g Group
	if err := s.getJSON(key("g:", name), &g); err != nil {
		return Group{}, err
	}
	g.Name = name
	return g, nil
}

func (s *LevelDB) getJSON(k []byte, v any) error {
	raw, err := s.db.Get(k, nil)
	if errors.Is(err, leveldb.ErrNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("read %q: %w", k, err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("decode %q: %w", k, err)
	}
	return nil
}

// AreFriends implements Store, from a's friend list.
func (s *LevelDB) AreFriends(a, b string) (bool, error) { return s.listHas("F:", a, b) }

// IsMember implements Store, from the group's member list.
func (s *LevelDB) IsMember(group, user string) (bool, error) { return s.listHas("M:", group, user) }

// Friends implements Store. The list returned is shared: callers must not
// modify it.
func (s *LevelDB) Friends(user string) ([]string, error) { return s.names("F:", user) }

// Members implements Store. The list returned is shared: callers must not
// modify it.
func (s *LevelDB) Members(group string) ([]string, error) { return s.names("M:", group) }

// Groups implements Store. The list returned is shared: callers must not
// modify it.
func (s *LevelDB) Groups(user string) ([]string, error) { return s.names("G:", user) }

// names returns the list under prefix and name (see cachedList).
func (s *LevelDB) names(prefix, name string) ([]string, error) {
	l, err := s.cachedList(prefix, name)
	if err != nil {
		return nil, err
	}
	return l.names, nil
}

// listHas reports whether the list under prefix and name holds x.
func (s *LevelDB) listHas(prefix, name, x string) (bool, error) {
	l, err := s.cachedList(prefix, name)
	if err != nil {
		return false, err
	}
	return l.has(x), nil
}

// cached returns the cached list under prefix and name, nil if none, and
// the cache's generation at the lookup.
func (s *LevelDB) cached(prefix, name string) (*nameList, uint64) {
	var buf [64]byte
	k := append(append(buf[:0], prefix...), name...)
	s.cacheMu.RLock()
	defer s.cacheMu.RUnlock()
	return s.lists[string(k)], s.gen // a lookup by string(k) copies nothing
}

// cachedList returns the list under prefix and name, from the cache or
// read and cached.
func (s *LevelDB) cachedList(prefix, name string) (*nameList, error) {
	l, gen := s.cached(prefix, name)
	if l != nil {
		return l, nil
	}
	names, err := s.list(prefix, name)
	if err != nil {
		return nil, err
	}
	l = newNameList(names)
	s.cacheMu.Lock()
	// An event applied while the list was read may have dropped an entry
	// this list predates; it is used once but not kept.
	if s.gen == gen {
		if len(s.lists) >= maxCachedLists {
			clear(s.lists)
		}
		s.lists[prefix+name] = l
	}
	s.cacheMu.Unlock()
	return l, nil
}

func (s *LevelDB) list(prefix, name string) ([]string, error) {
	it := s.db.NewIterator(util.BytesPrefix(key(prefix, name+"\x00")), nil)
	defer it.Release()
	var out []string
	for it.Next() {
		out = append(out, string(it.Value()))
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("list %s%s: %w", prefix, name, err)
	}
	return out, nil
}
