package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// LoginOptions configure the login storm.
type LoginOptions struct {
	Users       int // registered users the storm cycles through
	Friends     int // friends per user (a ring: user i befriends i+1..i+Friends/2)
	Concurrency int // connections logging in at once
}

// DefaultLogin is the login scenario's defaults.
var DefaultLogin = LoginOptions{Users: 2000, Friends: 20, Concurrency: 32}

// ringHalf is how many successors each user befriends: Friends/2, but
// never so many that the ring wraps onto itself and a pair repeats.
func ringHalf(users, friends int) int { return min(friends/2, (users-1)/2) }

// RunLogin measures a login storm: connect, log in, wait for the reply,
// disconnect, over and over. Each login costs the server a password hash
// and presence notices to the user's online friends.
func RunLogin(ctx context.Context, env *Env, o LoginOptions) (*Result, error) {
	if o.Users < 1 || o.Friends < 0 || o.Concurrency < 1 {
		return nil, errors.New("login: need --users ≥ 1, --friends ≥ 0, --concurrency ≥ 1")
	}
	half := ringHalf(o.Users, o.Friends)
	res := &Result{Scenario: "login", Started: time.Now(), Unit: "login",
		Label:     fmt.Sprintf("users=%d friends=%d concurrency=%d", o.Users, o.Friends, o.Concurrency),
		Params:    map[string]any{"users": o.Users, "friends": o.Friends, "friends_each": 2 * half, "concurrency": o.Concurrency},
		LatencyOf: "TCP connect → login_reply success"}
	m := newMeter("login", "login", env.Log)
	defer m.showProgress(env.Console, env.Warmup, env.Duration)()

	names := make([]string, o.Users)
	for i := range names {
		names[i] = env.name("l", i, "u")
	}
	if err := loginSetup(ctx, env, m, names, half); err != nil {
		return nil, fmt.Errorf("login setup: %w", err)
	}

	hists := make([]*Histogram, o.Concurrency)
	var next atomic.Int64
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	for w := range o.Concurrency {
		hists[w] = new(Histogram)
		wg.Go(func() {
			for sctx.Err() == nil {
				i := int((next.Add(1) - 1) % int64(o.Users))
				loginOnce(sctx, env, m, hists[w], names[i], 2*half)
			}
		})
	}
	w, err := m.measure(ctx, env)
	stop()
	wg.Wait()
	if err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	res.setCount(w, float64(w.count))
	res.fill(m, w, merged(hists...), fmtRate(res.Rate)+" logins/s")
	return res, nil
}

// loginSetup registers the users, then logs each in once to add its ring
// friends. The adds of one user are pipelined: they are independent, and
// a round trip each would make setup take longer than the storm.
func loginSetup(ctx context.Context, env *Env, m *Meter, names []string, half int) error {
	conc := env.SetupConcurrency
	conns := make([]*Conn, conc)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	conn := func(ctx context.Context, w int) (*Conn, error) {
		if conns[w] == nil {
			c, err := Dial(ctx, env.Addr, 16<<10)
			if err != nil {
				return nil, err
			}
			conns[w] = c
		}
		return conns[w], nil
	}
	n := len(names)
	m.setupTotal.Store(int64(2 * n))
	if err := registerAll(ctx, env, m, names); err != nil || half == 0 {
		return err
	}
	loggedIn := make([]bool, conc)
	return parallel(ctx, n, conc, func(ctx context.Context, w, i int) error {
		defer m.setupDone.Add(1)
		c, err := conn(ctx, w)
		if err != nil {
			return err
		}
		if loggedIn[w] {
			// The seed client logs out before switching users; chatd
			// answers offline_reply, the seed server nothing, so the
			// reply (if any) is skipped by the next call.
			if err := c.Write([]byte(`{"cmd":"offline"}` + "\n")); err != nil {
				return err
			}
		}
		if _, err := login(ctx, c, env.SetupTimeout, names[i], env.Password); err != nil {
			return err
		}
		loggedIn[w] = true
		reqs := make([][]byte, half)
		for d := range half {
			reqs[d], _ = json.Marshal(map[string]any{"cmd": "add", "user": names[i], "friend": names[(i+d+1)%n]})
		}
		rs, err := c.Pipeline(ctx, env.SetupTimeout*time.Duration(half), "add_reply", reqs...)
		if err != nil {
			return fmt.Errorf("add friends of %s: %w", names[i], err)
		}
		for _, r := range rs {
			if string(r.F.Result) != "success" {
				return fmt.Errorf("add friends of %s: server answered %s", names[i], r)
			}
		}
		return nil
	})
}

// loginOnce is one storm iteration. Errors are counted, not returned: the
// storm goes on, and a dead server shows as an error rate.
func loginOnce(ctx context.Context, env *Env, m *Meter, h *Histogram, user string, wantFriends int) {
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, env.Timeout)
	defer cancel()
	c, err := Dial(dctx, env.Addr, 4<<10)
	if err != nil {
		if ctx.Err() == nil {
			m.Error("connect", "err", err)
			sleep(ctx, 10*time.Millisecond) // no busy loop against a dead server
		}
		return
	}
	defer c.Close()
	r, err := c.Call(ctx, env.Timeout, map[string]any{"cmd": "login", "user": user, "password": env.Password})
	switch {
	case err != nil:
		if ctx.Err() == nil {
			m.Error("login", "user", user, "err", err)
		}
		return
	case string(r.F.Result) != "success":
		m.Error("login_reply:"+string(r.F.Result), "user", user, "line", r.String())
		return
	}
	got := 0
	if len(r.F.Friend) > 0 {
		got = bytes.Count(r.F.Friend, []byte("|")) + 1
	}
	if got != wantFriends {
		m.Error("friend_list", "user", user, "want", wantFriends, "got", got, "line", r.String())
	}
	if m.on.Load() {
		h.RecordDuration(time.Since(start))
	}
	m.total.Add(1)
}
