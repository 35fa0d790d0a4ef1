package storage

import (
	"errors"
	"fmt"
	"slices"
	"testing"
)

func apply(t *testing.T, s Store, evs ...Event) {
	t.Helper()
	for _, ev := range evs {
		if err := s.Apply(s.LastSeq()+1, ev); err != nil {
			t.Fatalf("apply %+v: %v", ev, err)
		}
	}
}

func TestApplyAndQuery(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	apply(t, s,
		Event{Type: EvUserRegistered, User: "alice", Hash: "h1"},
		Event{Type: EvUserRegistered, User: "bob", Hash: "h2"},
		Event{Type: EvUserRegistered, User: "小明", Hash: "h3"},
		Event{Type: EvFriendAdded, User: "bob", Friend: "alice"},
		Event{Type: EvFriendAdded, User: "alice", Friend: "小明"},
		Event{Type: EvGroupCreated, User: "bob", Group: "a.b"},
		Event{Type: EvMemberJoined, User: "alice", Group: "a.b"},
		Event{Type: EvGroupCreated, User: "alice", Group: "a"},
	)
	if got := s.LastSeq(); got != 8 {
		t.Fatalf("LastSeq = %d, want 8", got)
	}
	u, err := s.User("alice")
	if err != nil || u.Hash != "h1" || u.Name != "alice" {
		t.Fatalf("User(alice) = %+v, %v", u, err)
	}
	if _, err := s.User("al"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("User(al) err = %v, want ErrNotFound", err)
	}
	lists := []struct {
		name string
		f    func(string) ([]string, error)
		arg  string
		want []string
	}{
		{"friends of alice, in order made", s.Friends, "alice", []string{"bob", "小明"}},
		{"friends are mutual", s.Friends, "bob", []string{"alice"}},
		{"no friends", s.Friends, "nobody", nil},
		{"members in join order", s.Members, "a.b", []string{"bob", "alice"}},
		{"group a is not a prefix of a.b", s.Members, "a", []string{"alice"}},
		{"groups of alice", s.Groups, "alice", []string{"a.b", "a"}},
	}
	for _, tc := range lists {
		got, err := tc.f(tc.arg)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	if ok, _ := s.AreFriends("小明", "alice"); !ok {
		t.Error("小明 and alice should be friends")
	}
	if ok, _ := s.AreFriends("小明", "bob"); ok {
		t.Error("小明 and bob should not be friends")
	}
	if ok, _ := s.IsMember("a.b", "alice"); !ok {
		t.Error("alice should be a member of a.b")
	}
	if ok, _ := s.IsMember("a", "bob"); ok {
		t.Error("bob should not be a member of a")
	}
	g, err := s.Group("a.b")
	if err != nil || g.Owner != "bob" {
		t.Fatalf("Group(a.b) = %+v, %v", g, err)
	}
}

func TestApplyIsIdempotentAndResumes(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, s, Event{Type: EvUserRegistered, User: "a", Hash: "h"}, Event{Type: EvUserRegistered, User: "b", Hash: "h"})
	// Replaying an old sequence must change nothing.
	if err := s.Apply(1, Event{Type: EvFriendAdded, User: "a", Friend: "b"}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.AreFriends("a", "b"); ok {
		t.Fatal("an event at an already applied sequence was applied")
	}
	// A duplicate event at a new sequence leaves one entry.
	apply(t, s, Event{Type: EvFriendAdded, User: "a", Friend: "b"}, Event{Type: EvFriendAdded, User: "b", Friend: "a"})
	if fr, _ := s.Friends("a"); len(fr) != 1 {
		t.Fatalf("friends of a = %q, want one", fr)
	}
	if err := s.Skip(10); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.LastSeq(); got != 10 {
		t.Fatalf("LastSeq after reopen = %d, want 10", got)
	}
	if ok, _ := s.AreFriends("b", "a"); !ok {
		t.Fatal("friendship lost across reopen")
	}
}

func TestApplyRejectsMalformedEvents(t *testing.T) {
	s, err := OpenMem()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, ev := range []Event{
		{Type: "bogus"},
		{Type: EvUserRegistered, User: "a"},
		{Type: EvFriendAdded, User: "a", Friend: "a"},
		{Type: EvMemberJoined, User: "a"},
	} {
		if err := s.Apply(s.LastSeq()+1, ev); err == nil {
			t.Errorf("Apply(%+v) succeeded", ev)
		}
	}
	if s.LastSeq() != 0 {
		t.Fatal("a rejected event advanced the sequence")
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s2, err := Open(dir); err == nil {
		s2.Close()
		t.Fatal("a second open of the same directory succeeded")
	}
}

func BenchmarkReads(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for i := range 100 {
		_ = s.Apply(s.LastSeq()+1, Event{Type: EvUserRegistered, User: fmt.Sprint("u", i), Hash: "h"})
	}
	for i := 1; i < 21; i++ {
		_ = s.Apply(s.LastSeq()+1, Event{Type: EvFriendAdded, User: "u0", Friend: fmt.Sprint("u", i)})
	}
	b.Run("AreFriends", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = s.AreFriends("u0", "u7")
		}
	})
	b.Run("Friends20", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = s.Friends("u0")
		}
	})
}

// Friend lists come from a cache: a friendship applied later shows.
func TestFriendsCacheFollowsApplies(t *testing.T) {
	s, err := OpenMem()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	apply(t, s, Event{Type: EvUserRegistered, User: "a", Hash: "h"}, Event{Type: EvUserRegistered, User: "b", Hash: "h"},
		Event{Type: EvUserRegistered, User: "c", Hash: "h"})
	for range 2 { // the second read is the cached one
		if fr, _ := s.Friends("a"); len(fr) != 0 {
			t.Fatalf("friends of a = %q", fr)
		}
	}
	apply(t, s, Event{Type: EvFriendAdded, User: "b", Friend: "a"})
	if fr, _ := s.Friends("a"); !slices.Equal(fr, []string{"b"}) {
		t.Fatalf("after b befriended a: %q", fr)
	}
	apply(t, s, Event{Type: EvFriendAdded, User: "a", Friend: "c"})
	if fr, _ := s.Friends("a"); !slices.Equal(fr, []string{"b", "c"}) {
		t.Fatalf("after a befriended c: %q", fr)
	}
	if fr, _ := s.Friends("c"); !slices.Equal(fr, []string{"a"}) {
		t.Fatalf("friends of c: %q", fr)
	}
}

// Membership answered from cached lists follows applies: for short lists
// (scanned) and long ones (a set), friends and group members alike.
func TestCachedMembershipFollowsApplies(t *testing.T) {
	for _, n := range []int{3, scanUpTo + 8} {
		t.Run(fmt.Sprint(n, " names"), func(t *testing.T) {
			s, err := OpenMem()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			apply(t, s, Event{Type: EvUserRegistered, User: "a", Hash: "h"})
			if ok, _ := s.HasGroup("g"); ok {
				t.Fatal("group g exists before it was created")
			}
			if ok, _ := s.IsMember("g", "a"); ok { // caches an empty list for g
				t.Fatal("a is a member of a group that does not exist")
			}
			if ok, _ := s.HasGroup("g"); ok {
				t.Fatal("group g exists before it was created, once its empty list is cached")
			}
			apply(t, s, Event{Type: EvGroupCreated, User: "a", Group: "g"})
			for i := range n {
				u := fmt.Sprint("u", i)
				apply(t, s, Event{Type: EvUserRegistered, User: u, Hash: "h"})
				if ok, _ := s.AreFriends("a", u); ok {
					t.Fatalf("a and %s are friends before they befriended", u)
				}
				if ok, _ := s.IsMember("g", u); ok {
					t.Fatalf("%s is a member before joining", u)
				}
				if g, _ := s.Groups(u); len(g) != 0 { // cached, empty
					t.Fatalf("%s is in groups %q before joining", u, g)
				}
				apply(t, s, Event{Type: EvFriendAdded, User: u, Friend: "a"},
					Event{Type: EvMemberJoined, User: u, Group: "g"})
				if ok, _ := s.AreFriends("a", u); !ok {
					t.Fatalf("a and %s are not friends after befriending", u)
				}
				if ok, _ := s.AreFriends(u, "a"); !ok {
					t.Fatalf("%s and a are not friends after befriending", u)
				}
				if ok, _ := s.IsMember("g", u); !ok {
					t.Fatalf("%s is not a member after joining", u)
				}
				if g, _ := s.Groups(u); !slices.Equal(g, []string{"g"}) {
					t.Fatalf("%s is in groups %q after joining g", u, g)
				}
				if usr, err := s.User(u); err != nil || usr.Name != u || usr.Hash != "h" {
					t.Fatalf("User(%s) = %+v, %v", u, usr, err)
				}
			}
			if ok, _ := s.HasGroup("g"); !ok {
				t.Fatal("group g does not exist")
			}
			if m, _ := s.Members("g"); len(m) != n+1 || m[0] != "a" {
				t.Fatalf("members = %q", m)
			}
			if ok, _ := s.AreFriends("a", "nobody"); ok {
				t.Fatal("a is a friend of nobody")
			}
			if _, err := s.User("nobody"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("User(nobody): %v", err)
			}
			apply(t, s, Event{Type: EvUserRegistered, User: "nobody", Hash: "h2"})
			if ok, _ := s.HasUser("nobody"); !ok {
				t.Fatal("a user registered after a miss does not exist")
			}
		})
	}
}

// A read racing an apply never leaves a list cached from before it: once
// Apply has returned (LastSeq covers it), every read sees the friendship.
func TestCacheReadRacingApply(t *testing.T) {
	s, err := OpenMem()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 300
	apply(t, s, Event{Type: EvUserRegistered, User: "a", Hash: "h"})
	for i := range n {
		apply(t, s, Event{Type: EvUserRegistered, User: fmt.Sprint("u", i), Hash: "h"})
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // keeps reading, so reads overlap the applies below
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				_, _ = s.Friends("a")
				_, _ = s.AreFriends("a", "u0")
			}
		}
	}()
	for i := range n {
		u := fmt.Sprint("u", i)
		apply(t, s, Event{Type: EvFriendAdded, User: "a", Friend: u})
		if ok, _ := s.AreFriends("a", u); !ok {
			close(stop)
			<-done
			t.Fatalf("friendship %d not seen after it was applied", i)
		}
	}
	close(stop)
	<-done
	if fr, _ := s.Friends("a"); len(fr) != n {
		t.Fatalf("a has %d friends, want %d", len(fr), n)
	}
}
