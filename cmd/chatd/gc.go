package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"
)

// A chat server's live heap is small (sessions, caches) and it allocates
// fast (every message is a few buffers), so Go's default GOGC of 100
// collects very often: in private chat, 400 cut the server's CPU per
// message by about 5 % and p99 latency by a fifth, for tens of MiB more
// heap. A larger GOGC alone would let a large heap grow to five times its
// live size; the memory limit bounds that, making the collector work
// harder as the heap nears it rather than the process being killed.
const (
	defaultGCPercent = 400
	// memoryShare is the part of the memory available (the cgroup's
	// limit, else the machine's) the heap is held below by default.
	memoryShare = 0.75
)

// gcFlags tune the Go garbage collector.
type gcFlags struct {
	percent    int
	limit      memoryLimit
	collecting bool // set by apply: false when collection is turned off
}

func (f *gcFlags) register(fs *flagSet) {
	fs.IntVar(&f.percent, "gc-percent", defaultGCPercent,
		"heap growth between garbage collections, in percent of the live heap (Go's GOGC; -1 turns collection off until --memory-limit)")
	fs.Var(&f.limit, "memory-limit",
		`soft limit of the memory the Go runtime uses (bytes, or with KiB, MiB, GiB): "auto" is 3/4 of the cgroup's or the machine's memory, "off" none`)
}

// apply sets the collector's target and limit. GOGC and GOMEMLIMIT, the
// Go runtime's own variables, win over the defaults but not over the
// flags given (on the command line or as CHATD_GC_PERCENT and
// CHATD_MEMORY_LIMIT).
func (f *gcFlags) apply(fs *flagSet, log *slog.Logger) error {
	if f.percent < -1 {
		return usageError{fmt.Errorf("--gc-percent %d: want -1 (off) or more", f.percent)}
	}
	percent := "GOGC"
	f.collecting = os.Getenv("GOGC") != "off"
	if _, ok := os.LookupEnv("GOGC"); !ok || fs.set["gc-percent"] {
		debug.SetGCPercent(f.percent)
		percent = strconv.Itoa(f.percent)
		f.collecting = f.percent >= 0
	}
	limit := "GOMEMLIMIT"
	if _, ok := os.LookupEnv("GOMEMLIMIT"); !ok || fs.set["memory-limit"] {
		n, from := f.limit.bytes()
		debug.SetMemoryLimit(n)
		limit = from
	}
	log.Info("garbage collector", "gc_percent", percent, "memory_limit", limit)
	return nil
}

// memoryLimit is the --memory-limit value: a size, "auto" or "off".
type memoryLimit struct {
	set  bool  // a size was given
	off  bool  // no limit
	size int64 // bytes, when set
}

func (m *memoryLimit) String() string {
	switch {
	case m == nil || (!m.set && !m.off):
		return "auto"
	case m.off:
		return "off"
	}
	return strconv.FormatInt(m.size, 10)
}

func (m *memoryLimit) Set(s string) error {
	switch s {
	case "auto":
		*m = memoryLimit{}
		return nil
	case "off":
		*m = memoryLimit{off: true}
		return nil
	}
	var b byteSize
	if err := b.Set(s); err != nil {
		return fmt.Errorf(`want "auto", "off" or a size: %w`, err)
	}
	if b == 0 {
		return errors.New(`a limit of 0 would leave no heap; "off" means no limit`)
	}
	*m = memoryLimit{set: true, size: int64(b)}
	return nil
}

// bytes returns the limit to set, and where it comes from.
func (m *memoryLimit) bytes() (int64, string) {
	switch {
	case m.off:
		return math.MaxInt64, "off"
	case m.set:
		return m.size, strconv.FormatInt(m.size, 10)
	}
	avail, from := availableMemory(os.ReadFile)
	if avail <= 0 {
		return math.MaxInt64, "off (the memory available is unknown)"
	}
	n := int64(float64(avail) * memoryShare)
	return n, fmt.Sprintf("%d (3/4 of the %s's %d)", n, from, avail)
}

// availableMemory returns the memory this process may use and what
// limits it: the cgroup (v2, then v1), else the machine; 0 if unknown.
func availableMemory(read func(string) ([]byte, error)) (int64, string) {
	// cgroup v2 says "max" for no limit; v1 says a huge number instead.
	if b, err := read("/sys/fs/cgroup/memory.max"); err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && n > 0 {
			return n, "cgroup"
		}
	} else if b, err := read("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && n > 0 && n < 1<<60 {
			return n, "cgroup"
		}
	}
	b, err := read("/proc/meminfo")
	if err != nil {
		return 0, ""
	}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "MemTotal:" {
			if kib, err := strconv.ParseInt(f[1], 10, 64); err == nil && kib > 0 {
				return kib << 10, "machine"
			}
		}
	}
	return 0, ""
}

// A process that has gone quiet gives back the memory its last burst
// used. With a GOGC of 400 the heap grows to five times its live size
// between collections, and the runtime keeps pages it expects to need
// until the heap falls well below that goal: after a storm of 19 000
// logins, the idle connections left were measured at anything from 5 to
// 17 KiB of RSS each, depending only on where the storm's last collection
// fell. Once allocation has stayed below quietRate for a whole
// releaseEvery, one forced collection hands the free pages back
// (debug.FreeOSMemory): a busy process never pays for it, and a quiet one
// pays once, since afterwards little is left to give back.
const (
	releaseEvery = 10 * time.Second
	quietRate    = 1 << 20  // bytes allocated per second
	minRelease   = 32 << 20 // less than this held beyond twice the live heap is left alone
)

// memSample is what the releaser reads from the runtime.
type memSample struct {
	allocated uint64 // bytes allocated since the process started
	live      uint64 // live heap at the last collection
	held      uint64 // heap memory held from the system: in use, unused or free but not returned
}

var memMetrics = []string{"/gc/heap/allocs:bytes", "/gc/heap/live:bytes",
	"/memory/classes/heap/objects:bytes", "/memory/classes/heap/unused:bytes", "/memory/classes/heap/free:bytes"}

// newMemSamples returns the samples readMem reads.
func newMemSamples() []metrics.Sample {
	s := make([]metrics.Sample, len(memMetrics))
	for i, name := range memMetrics {
		s[i].Name = name
	}
	return s
}

func readMem(s []metrics.Sample) memSample {
	metrics.Read(s)
	v := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	return memSample{allocated: v(0), live: v(1), held: v(2) + v(3) + v(4)}
}

// shouldRelease reports whether, between prev and cur (every apart), the
// process was quiet and holds enough beyond its live heap to give back.
func shouldRelease(prev, cur memSample, every time.Duration) bool {
	quiet := cur.allocated-prev.allocated < uint64(every.Seconds()*quietRate)
	return quiet && cur.held > 2*cur.live+minRelease
}

// releaseWhenQuiet runs until ctx ends.
func releaseWhenQuiet(ctx context.Context, log *slog.Logger, every time.Duration) {
	s := newMemSamples()
	t := time.NewTicker(every)
	defer t.Stop()
	prev := readMem(s)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur := readMem(s)
		if shouldRelease(prev, cur, every) {
			debug.FreeOSMemory()
			after := readMem(s)
			log.Debug("quiet: memory returned to the system", "held_before", cur.held, "held_after", after.held, "live", after.live)
			cur = after
		}
		prev = cur
	}
}
