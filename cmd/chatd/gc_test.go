package main

import (
	"context"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"runtime"
	"runtime/debug"
	"strconv"
	"testing"
	"time"
)

func TestAvailableMemory(t *testing.T) {
	meminfo := "MemTotal:       24731140 kB\nMemFree:        23151300 kB\n"
	tests := []struct {
		name  string
		files map[string]string
		want  int64
		from  string
	}{
		{"cgroup v2 limit", map[string]string{"/sys/fs/cgroup/memory.max": "2147483648\n", "/proc/meminfo": meminfo}, 2 << 30, "cgroup"},
		{"cgroup v2 without a limit", map[string]string{"/sys/fs/cgroup/memory.max": "max\n", "/proc/meminfo": meminfo}, 24731140 << 10, "machine"},
		{"cgroup v1 limit", map[string]string{"/sys/fs/cgroup/memory/memory.limit_in_bytes": "536870912\n", "/proc/meminfo": meminfo}, 512 << 20, "cgroup"},
		{"cgroup v1 without a limit", map[string]string{"/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n", "/proc/meminfo": meminfo}, 24731140 << 10, "machine"},
		{"no cgroup", map[string]string{"/proc/meminfo": meminfo}, 24731140 << 10, "machine"},
		{"nothing readable", map[string]string{}, 0, ""},
		{"garbage", map[string]string{"/sys/fs/cgroup/memory.max": "lots", "/proc/meminfo": "MemTotal: many kB\n"}, 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			read := func(name string) ([]byte, error) {
				if v, ok := tc.files[name]; ok {
					return []byte(v), nil
				}
				return nil, fs.ErrNotExist
			}
			n, from := availableMemory(read)
			if n != tc.want || from != tc.from {
				t.Fatalf("got %d from %q, want %d from %q", n, from, tc.want, tc.from)
			}
		})
	}
}

func TestMemoryLimitFlag(t *testing.T) {
	tests := []struct {
		in      string
		want    int64 // 0: computed from the memory available
		wantErr bool
	}{
		{"auto", 0, false},
		{"off", math.MaxInt64, false},
		{"512MiB", 512 << 20, false},
		{"1073741824", 1 << 30, false},
		{"0", 0, true},
		{"-1", 0, true},
		{"lots", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			var m memoryLimit
			err := m.Set(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Set(%q) = %v", tc.in, err)
			}
			if err != nil {
				return
			}
			n, _ := m.bytes()
			if tc.want != 0 && n != tc.want {
				t.Fatalf("limit %d, want %d", n, tc.want)
			}
			if tc.want == 0 && (n <= 0 || n == math.MaxInt64) {
				t.Fatalf("auto limit %d", n)
			}
		})
	}
}

// The flags set the collector; GOGC and GOMEMLIMIT win over the defaults
// only.
func TestGCFlagsApply(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tests := []struct {
		name        string
		env         map[string]string
		args        []string
		wantPercent int
		wantLimit   int64 // -1: whatever auto makes of this machine
		wantErr     bool
	}{
		{"defaults", nil, nil, defaultGCPercent, -1, false},
		{"flags", nil, []string{"--gc-percent", "150", "--memory-limit", "1GiB"}, 150, 1 << 30, false},
		{"environment twins", map[string]string{"CHATD_GC_PERCENT": "250", "CHATD_MEMORY_LIMIT": "off"}, nil, 250, math.MaxInt64, false},
		{"Go's variables over the defaults", map[string]string{"GOGC": "77", "GOMEMLIMIT": "123MiB"}, nil, 77, 123 << 20, false},
		{"flags over Go's variables", map[string]string{"GOGC": "77"}, []string{"--gc-percent", "300"}, 300, -1, false},
		{"bad percent", nil, []string{"--gc-percent", "-5"}, 0, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			// What the runtime read from GOGC and GOMEMLIMIT at start.
			if v, ok := tc.env["GOGC"]; ok {
				debug.SetGCPercent(atoi(t, v))
			} else {
				debug.SetGCPercent(100)
			}
			if _, ok := tc.env["GOMEMLIMIT"]; ok {
				debug.SetMemoryLimit(123 << 20)
			} else {
				debug.SetMemoryLimit(math.MaxInt64)
			}
			fs := newFlagSet("all", io.Discard)
			if err := fs.parse(tc.args); err != nil {
				t.Fatal(err)
			}
			err := fs.gc.apply(fs, log)
			if (err != nil) != tc.wantErr {
				t.Fatalf("apply: %v", err)
			}
			if err != nil {
				return
			}
			if got := debug.SetGCPercent(100); got != tc.wantPercent {
				t.Errorf("GC percent %d, want %d", got, tc.wantPercent)
			}
			got := debug.SetMemoryLimit(-1)
			if tc.wantLimit == -1 && (got <= 0 || got == math.MaxInt64) {
				t.Errorf("memory limit %d, want a share of this machine's", got)
			}
			if tc.wantLimit != -1 && got != tc.wantLimit {
				t.Errorf("memory limit %d, want %d", got, tc.wantLimit)
			}
		})
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestShouldRelease(t *testing.T) {
	const mib = 1 << 20
	every := 10 * time.Second
	busy := uint64(every.Seconds()*quietRate) + 1
	tests := []struct {
		name      string
		allocated uint64 // during the period
		live      uint64
		held      uint64
		want      bool
	}{
		{"quiet, holding a burst's memory", 0, 100 * mib, 400 * mib, true},
		{"quiet, a little allocation", busy / 2, 100 * mib, 400 * mib, true},
		{"busy", busy, 100 * mib, 400 * mib, false},
		{"quiet, holding about what it uses", 0, 100 * mib, 2*100*mib + minRelease, false},
		{"quiet, small process", 0, 1 * mib, 30 * mib, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			prev := memSample{allocated: 5000 * mib}
			cur := memSample{allocated: prev.allocated + tc.allocated, live: tc.live, held: tc.held}
			if got := shouldRelease(prev, cur, every); got != tc.want {
				t.Fatalf("shouldRelease = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestReleaseWhenQuiet runs the releaser in this process: garbage from a
// burst, then quiet, and the memory it held goes back to the system.
func TestReleaseWhenQuiet(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	s := newMemSamples()
	burst := make([][]byte, 0, 4096)
	for range cap(burst) {
		burst = append(burst, make([]byte, 64<<10)) // 256 MiB in all
	}
	burst = nil
	runtime.GC() // the burst is garbage now, its pages free but still held
	before := readMem(s)
	if before.held < 2*before.live+minRelease {
		t.Skipf("the runtime already gave the burst back (held %d, live %d)", before.held, before.live)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { releaseWhenQuiet(ctx, slog.New(slog.DiscardHandler), 50*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if m := readMem(s); m.held < before.held/2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still held after 5 s: %d bytes (%d before, live %d)", readMem(s).held, before.held, before.live)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
