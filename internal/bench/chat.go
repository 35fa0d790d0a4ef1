package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// PrivateOptions configure the private scenario.
type PrivateOptions struct {
	Pairs  int // sender→recipient friend pairs, each user on its own connection
	Window int // messages each sender keeps in flight
}

// GroupOptions configure the group scenario.
type GroupOptions struct {
	Members int // group size, each member on its own connection
	Senders int // members that send
	Window  int // messages each sender keeps in flight (until all others read it)
}

// Defaults for the scenario flags.
var (
	DefaultPrivate = PrivateOptions{Pairs: 20, Window: 1}
	DefaultGroup   = GroupOptions{Members: 100, Senders: 4, Window: 8}
)

// readBuf is the read buffer of a hot-path connection: big enough that a
// burst of deliveries costs one read syscall.
const readBuf = 32 << 10

// chatRun is one private or group run: the members' connections, the
// senders' windows and the shared meter.
type chatRun struct {
	env     *Env
	m       *Meter
	kind    string // "private_chat" or "group_chat"
	reply   string // kind + "_reply"
	group   []byte // group name; nil for private
	members []*member
	senders []*sender
	base    time.Time // zero of the message timestamps (monotonic)
}

// member is one logged-in user. Its reader goroutine is the only one that
// touches f, hist and expect.
type member struct {
	run    *chatRun
	name   string
	nameB  []byte
	c      *Conn
	f      Fields
	hist   *Histogram
	expect []int64 // next sequence number expected from each sender
	own    *sender // set when this member sends
	hears  int     // private: the one sender this member hears from; -1 in a group
}

type sender struct {
	idx  int
	from *member
	to   []byte // private: the recipient's name
	fl   *flow
	head []byte // the request up to the text's contents
}

// RunPrivate measures one-to-one messages between friend pairs.
func RunPrivate(ctx context.Context, env *Env, o PrivateOptions) (*Result, error) {
	if o.Pairs < 1 || o.Window < 1 {
		return nil, errors.New("private: --pairs and --window must be at least 1")
	}
	res := &Result{Scenario: "private", Started: time.Now(), Unit: "msg",
		Label:     fmt.Sprintf("pairs=%d window=%d", o.Pairs, o.Window),
		Params:    map[string]any{"pairs": o.Pairs, "window": o.Window},
		LatencyOf: "private_chat written by the sender → read by the recipient"}
	if env.Addr2 != "" {
		res.Params["addr2"] = env.Addr2 // recipients are there
	}
	r := &chatRun{env: env, m: newMeter("private", "msg", env.Log), kind: "private_chat", reply: "private_chat_reply"}
	names := make([]string, 2*o.Pairs)
	for i := range o.Pairs {
		names[i], names[o.Pairs+i] = env.name("p", i, "s"), env.name("p", i, "r")
	}
	// Senders are wired after setup because members exist only then.
	setup := func(ctx context.Context) error {
		if err := r.open(ctx, names, env.addrs(len(names), o.Pairs)); err != nil {
			return err
		}
		r.m.setupTotal.Add(int64(o.Pairs))
		return parallel(ctx, o.Pairs, env.SetupConcurrency, func(ctx context.Context, _, i int) error {
			defer r.m.setupDone.Add(1)
			return addFriend(ctx, r.members[i].c, env.SetupTimeout, names[i], names[o.Pairs+i])
		})
	}
	wire := func() {
		for i := range o.Pairs {
			from, to := r.members[i], r.members[o.Pairs+i]
			to.hears = i
			r.addSender(from, newFlow(o.Window, 1), jsonHead("private_chat", "user_from", from.name, "user_to", to.name))
			r.senders[i].to = to.nameB
		}
	}
	return r.run(ctx, res, setup, wire, func(rate float64) string { return fmtRate(rate) + " msg/s" })
}

// RunGroup measures fan-out in one group: each message goes to every
// other member.
func RunGroup(ctx context.Context, env *Env, o GroupOptions) (*Result, error) {
	if o.Members < 2 || o.Senders < 1 || o.Senders > o.Members || o.Window < 1 {
		return nil, errors.New("group: need --members ≥ 2, 1 ≤ --senders ≤ --members, --window ≥ 1")
	}
	res := &Result{Scenario: "group", Started: time.Now(), Unit: "delivery",
		Label:     fmt.Sprintf("members=%d senders=%d window=%d", o.Members, o.Senders, o.Window),
		Params:    map[string]any{"members": o.Members, "senders": o.Senders, "window": o.Window},
		LatencyOf: "group_chat written by the sender → read by each other member"}
	group := env.name("g", 0, "grp")
	r := &chatRun{env: env, m: newMeter("group", "delivery", env.Log), kind: "group_chat", reply: "group_chat_reply",
		group: []byte(group)}
	names := make([]string, o.Members)
	for i := range names {
		names[i] = env.name("g", i, "m")
	}
	setup := func(ctx context.Context) error {
		// All members on --addr: --addr2 has no receiving side to pick here.
		if err := r.open(ctx, names, env.addrs(len(names), len(names))); err != nil {
			return err
		}
		r.m.setupTotal.Add(int64(o.Members))
		if _, err := r.members[0].c.Expect(ctx, env.SetupTimeout,
			map[string]any{"cmd": "create_group", "user": names[0], "group": group}, "success"); err != nil {
			return err
		}
		r.m.setupDone.Add(1)
		return parallel(ctx, o.Members-1, env.SetupConcurrency, func(ctx context.Context, _, i int) error {
			defer r.m.setupDone.Add(1)
			mb := r.members[i+1]
			_, err := mb.c.Expect(ctx, env.SetupTimeout, map[string]any{"cmd": "add_group", "user": mb.name, "group": group}, "success")
			return err
		})
	}
	wire := func() {
		for i := range o.Senders {
			mb := r.members[i]
			r.addSender(mb, newFlow(o.Window, o.Members-1), jsonHead("group_chat", "user", mb.name, "group", group))
		}
	}
	return r.run(ctx, res, setup, wire, func(rate float64) string { return fmtRate(rate) + " deliveries/s" })
}

// jsonHead builds `{"cmd":"<cmd>","k1":"v1","k2":"v2","text":"` once per
// sender, so the hot path only appends the stamp.
func jsonHead(cmd string, kv ...string) []byte {
	b := []byte(`{"cmd":`)
	b, _ = appendJSON(b, cmd)
	for i := 0; i+1 < len(kv); i += 2 {
		b = append(b, ',')
		b, _ = appendJSON(b, kv[i])
		b = append(b, ':')
		b, _ = appendJSON(b, kv[i+1])
	}
	return append(b, `,"text":"`...)
}

func appendJSON(b []byte, s string) ([]byte, error) {
	j, err := json.Marshal(s)
	return append(b, j...), err
}

func (r *chatRun) addSender(mb *member, fl *flow, head []byte) {
	s := &sender{idx: len(r.senders), from: mb, fl: fl, head: head}
	mb.own = s
	r.senders = append(r.senders, s)
}

// open connects every name to its address, registers and logs it in as
// a member.
func (r *chatRun) open(ctx context.Context, names, addrs []string) error {
	conns, err := openUsers(ctx, r.env, r.m, names, addrs, readBuf)
	if err != nil {
		return err
	}
	r.members = make([]*member, len(names))
	for i, c := range conns {
		r.members[i] = &member{run: r, name: names[i], nameB: []byte(names[i]), c: c, hears: -1, hist: new(Histogram)}
	}
	return nil
}

// openUsers connects every name to its address (addrs[i] for names[i]),
// registers and logs it in, each on its own connection, counting progress
// against the setup total. On error it closes what it opened.
func openUsers(ctx context.Context, env *Env, m *Meter, names, addrs []string, bufSize int) ([]*Conn, error) {
	conns := make([]*Conn, len(names))
	m.setupTotal.Add(int64(len(names)))
	err := parallel(ctx, len(names), env.SetupConcurrency, func(ctx context.Context, _, i int) error {
		defer m.setupDone.Add(1)
		c, err := Dial(ctx, addrs[i], bufSize)
		if err != nil {
			return err
		}
		conns[i] = c
		if err := register(ctx, c, env.SetupTimeout, names[i], env.Password); err != nil {
			return err
		}
		_, err = login(ctx, c, env.SetupTimeout, names[i], env.Password)
		return err
	})
	if err != nil {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		return nil, err
	}
	return conns, nil
}

func (r *chatRun) closeAll() {
	for _, mb := range r.members {
		if mb != nil {
			mb.c.Close()
		}
	}
	for _, mb := range r.members {
		if mb != nil {
			mb.c.Wait()
		}
	}
}

// run is the part private and group share: setup, start the readers and
// senders, measure, stop, drain and summarise.
func (r *chatRun) run(ctx context.Context, res *Result, setup func(context.Context) error, wire func(),
	rateText func(float64) string) (*Result, error) {
	env, m := r.env, r.m
	defer m.showProgress(env.Console, env.Warmup, env.Duration)()
	defer r.closeAll()

	t0 := time.Now()
	if err := setup(ctx); err != nil {
		return nil, fmt.Errorf("%s setup: %w", res.Scenario, err)
	}
	env.Log.Debug(res.Scenario+" setup done", "took", time.Since(t0).Round(time.Millisecond))
	wire()
	r.base = time.Now()
	for _, mb := range r.members {
		mb.expect = make([]int64, len(r.senders))
		for i := range mb.expect {
			mb.expect[i] = 1
		}
		mb.c.Serve(mb.handle, func(err error) { m.Error("disconnect", "user", mb.name, "err", err) })
	}
	sctx, stopSenders := context.WithCancel(ctx)
	defer stopSenders()
	var swg sync.WaitGroup
	for _, s := range r.senders {
		swg.Go(func() { s.loop(sctx, r) })
	}
	w, err := m.measure(ctx, env)
	stopSenders()
	swg.Wait()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", res.Scenario, err)
	}
	flows := make([]*flow, len(r.senders))
	for i, s := range r.senders {
		flows[i] = s.fl
	}
	drainFlows(flows, env.Timeout, m)
	r.closeAll()

	h := new(Histogram)
	var sent int64
	for _, mb := range r.members {
		h.Merge(mb.hist)
	}
	for _, s := range r.senders {
		sent += s.fl.sent.Load()
	}
	res.setCount(w, float64(w.count))
	res.Extra = map[string]any{"sent_total": sent}
	res.fill(m, w, h, rateText(res.Rate))
	return res, nil
}

func (s *sender) loop(ctx context.Context, r *chatRun) {
	buf := make([]byte, 0, len(s.head)+64)
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		seq, ok := s.fl.next(ctx, r.env.Timeout, t, r.m, s.from.name)
		if !ok {
			return
		}
		buf = append(buf[:0], s.head...)
		buf = appendStamp(buf, int64(s.idx), seq, int64(time.Since(r.base)))
		buf = append(buf, "\"}\n"...)
		if err := s.from.c.Write(buf); err != nil {
			if !s.from.c.Closing() {
				r.m.Error("write", "user", s.from.name, "err", err)
			}
			return
		}
	}
}

// handle runs on the member's reader goroutine for every line.
func (mb *member) handle(line []byte) {
	r, f := mb.run, &mb.f
	if err := f.Parse(line); err != nil {
		r.m.Error("bad_line", "user", mb.name, "line", cut(line), "err", err)
		return
	}
	switch string(f.Cmd) {
	case r.kind:
		mb.message(line)
	case r.reply:
		mb.reply(line)
	case "friend_login", "friend_offline", "add_friend_reply", "pong", "offline_reply":
		// Presence and friendship notices from setup: expected, ignored.
	case "error":
		r.m.Error("server_error:"+string(f.Result), "user", mb.name, "line", cut(line))
	default:
		r.m.Error("unexpected:"+string(f.Cmd), "user", mb.name, "line", cut(line))
	}
}

func (mb *member) message(line []byte) {
	r, f := mb.run, &mb.f
	now := int64(time.Since(r.base))
	k, seq, ts, ok := parseStamp(f.Text)
	if !ok || k >= int64(len(r.senders)) || ts > now {
		r.m.Error("bad_text", "user", mb.name, "line", cut(line))
		return
	}
	s := r.senders[k]
	switch {
	case s.from == mb:
		r.m.Error("echo", "user", mb.name, "line", cut(line))
		return
	case r.group == nil && (mb.hears != int(k) || !bytes.Equal(f.UserFrom, s.from.nameB)),
		r.group != nil && (!bytes.Equal(f.Group, r.group) || !bytes.Equal(f.User, s.from.nameB)):
		r.m.Error("misdelivered", "user", mb.name, "line", cut(line))
		return
	}
	if exp := mb.expect[k]; seq != exp {
		r.m.Error("out_of_order", "user", mb.name, "from", s.from.name, "want", exp, "got", seq)
	}
	mb.expect[k] = max(mb.expect[k], seq+1)
	if !s.fl.receipt(seq) {
		r.m.Error("duplicate_or_late", "user", mb.name, "from", s.from.name, "seq", seq)
		return
	}
	if r.m.on.Load() {
		mb.hist.Record(now - ts)
	}
	r.m.total.Add(1)
}

func (mb *member) reply(line []byte) {
	r, f := mb.run, &mb.f
	s := mb.own
	if s == nil {
		r.m.Error("unexpected_reply", "user", mb.name, "line", cut(line))
		return
	}
	// A sender's replies come in the order of its messages, whose
	// sequence numbers start at 1: this is the reply to message n.
	n := s.fl.replies.Add(1)
	switch {
	case string(f.Result) == "rate_limited":
		// The server's per-connection allowance: the message went nowhere.
		r.m.Error(r.reply+":rate_limited", "user", mb.name,
			"hint", "the server limits each connection's requests; chatd measures with --client-rate 0")
		s.fl.refused(n)
	case string(f.Result) != "success":
		r.m.Error(r.reply+":"+string(f.Result), "user", mb.name, "line", cut(line))
	case r.group == nil && !bytes.Equal(f.UserTo, s.to):
		r.m.Error("reply_without_user_to", "user", mb.name, "line", cut(line))
	}
}
