package bench

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// script is a fake ReadProc: each pid's readings in order; a reading past
// the end or with RSS < 0 is an error (the process is gone).
type script struct {
	mu    sync.Mutex
	by    map[int][]ProcSample
	calls map[int]int
	total int
	// after, if set, gets the running total of readings after each one.
	after func(total int)
}

func newScript(by map[int][]ProcSample) *script {
	return &script{by: by, calls: map[int]int{}}
}

func (s *script) read(pid int) (ProcSample, error) {
	s.mu.Lock()
	n := s.calls[pid]
	s.calls[pid]++
	s.total++
	total, after := s.total, s.after
	var r ProcSample
	ok := n < len(s.by[pid])
	if ok {
		r = s.by[pid][n]
	}
	s.mu.Unlock()
	if after != nil {
		after(total)
	}
	if !ok || r.RSS < 0 {
		return ProcSample{}, fmt.Errorf("server process %d: gone", pid)
	}
	return r, nil
}

const mib = 1 << 20

// rss builds a reading: RSS and VmHWM in MiB, CPU in seconds.
func rss(rssMiB, hwmMiB int64, cpuSec float64) ProcSample {
	return ProcSample{RSS: rssMiB * mib, HWM: hwmMiB * mib, CPU: time.Duration(cpuSec * float64(time.Second))}
}

func TestProcWatchPeaks(t *testing.T) {
	tests := []struct {
		name string
		pids []int
		// readings per pid: the first at the start, the last at stop,
		// the others from sampling rounds in between.
		by      map[int][]ProcSample
		want    []ProcStats
		wantTop int
	}{
		{
			name:    "grows then shrinks",
			pids:    []int{10},
			by:      map[int][]ProcSample{10: {rss(100, 100, 1), rss(150, 150, 2), rss(120, 150, 2.5), rss(110, 150, 3)}},
			want:    []ProcStats{{PID: 10, CPUSeconds: 2, RSSStart: 100 * mib, RSSPeak: 150 * mib, RSSEnd: 110 * mib, RSSGrowth: 50 * mib}},
			wantTop: 10,
		},
		{
			name:    "peak at the end",
			pids:    []int{10},
			by:      map[int][]ProcSample{10: {rss(100, 100, 0), rss(101, 101, 0), rss(130, 130, 0)}},
			want:    []ProcStats{{PID: 10, RSSStart: 100 * mib, RSSPeak: 130 * mib, RSSEnd: 130 * mib, RSSGrowth: 30 * mib}},
			wantTop: 10,
		},
		{
			name:    "only shrinks",
			pids:    []int{10},
			by:      map[int][]ProcSample{10: {rss(100, 300, 0), rss(90, 300, 0), rss(80, 300, 0)}},
			want:    []ProcStats{{PID: 10, RSSStart: 100 * mib, RSSPeak: 100 * mib, RSSEnd: 80 * mib}},
			wantTop: 10,
		},
		{
			// VmHWM rose from 200 to 260 although no sample saw more than
			// 110: a spike between samples, which counts.
			name:    "spike between samples",
			pids:    []int{10},
			by:      map[int][]ProcSample{10: {rss(100, 200, 0), rss(105, 200, 0), rss(110, 260, 0)}},
			want:    []ProcStats{{PID: 10, RSSStart: 100 * mib, RSSPeak: 260 * mib, RSSEnd: 110 * mib, RSSGrowth: 160 * mib}},
			wantTop: 10,
		},
		{
			// A high-water mark from before the period that stays put says
			// nothing about the period.
			name:    "old high-water mark",
			pids:    []int{10},
			by:      map[int][]ProcSample{10: {rss(100, 500, 0), rss(120, 500, 0), rss(110, 500, 0)}},
			want:    []ProcStats{{PID: 10, RSSStart: 100 * mib, RSSPeak: 120 * mib, RSSEnd: 110 * mib, RSSGrowth: 20 * mib}},
			wantTop: 10,
		},
		{
			name:    "no VmHWM from the kernel",
			pids:    []int{10},
			by:      map[int][]ProcSample{10: {rss(100, 0, 0), rss(140, 0, 0), rss(100, 0, 0)}},
			want:    []ProcStats{{PID: 10, RSSStart: 100 * mib, RSSPeak: 140 * mib, RSSEnd: 100 * mib, RSSGrowth: 40 * mib}},
			wantTop: 10,
		},
		{
			name: "several, the biggest is not the one that grew most",
			pids: []int{30, 10, 20},
			by: map[int][]ProcSample{
				30: {rss(900, 900, 1), rss(905, 905, 3), rss(900, 905, 5)},
				10: {rss(20, 20, 0), rss(52, 52, 0.5), rss(21, 52, 1)},
				20: {rss(40, 40, 2), rss(40, 40, 2), rss(60, 60, 2)},
			},
			want: []ProcStats{
				{PID: 30, CPUSeconds: 4, RSSStart: 900 * mib, RSSPeak: 905 * mib, RSSEnd: 900 * mib, RSSGrowth: 5 * mib},
				{PID: 10, CPUSeconds: 1, RSSStart: 20 * mib, RSSPeak: 52 * mib, RSSEnd: 21 * mib, RSSGrowth: 32 * mib},
				{PID: 20, RSSStart: 40 * mib, RSSPeak: 60 * mib, RSSEnd: 60 * mib, RSSGrowth: 20 * mib},
			},
			wantTop: 10,
		},
		{
			name: "equal growth: the first listed",
			pids: []int{20, 10},
			by: map[int][]ProcSample{
				20: {rss(10, 10, 0), rss(15, 15, 0)},
				10: {rss(30, 30, 0), rss(35, 35, 0)},
			},
			want: []ProcStats{
				{PID: 20, RSSStart: 10 * mib, RSSPeak: 15 * mib, RSSEnd: 15 * mib, RSSGrowth: 5 * mib},
				{PID: 10, RSSStart: 30 * mib, RSSPeak: 35 * mib, RSSEnd: 35 * mib, RSSGrowth: 5 * mib},
			},
			wantTop: 20,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := newScript(tt.by)
			// The ticker never fires: the rounds in between are driven
			// here, so the readings are exactly the scripted ones.
			w, err := watchProcs(tt.pids, time.Hour, sc.read)
			if err != nil {
				t.Fatal(err)
			}
			rounds := len(tt.by[tt.pids[0]])
			for range rounds - 2 {
				w.sampleAll()
			}
			got, samples, err := w.stop()
			if err != nil {
				t.Fatal(err)
			}
			if samples != rounds {
				t.Errorf("%d samples, want %d", samples, rounds)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
			if top, ok := largestGrowth(got); !ok || top.PID != tt.wantTop {
				t.Errorf("largest growth %+v, want pid %d", top, tt.wantTop)
			}
		})
	}
}

// A process that cannot be read, at the start, while sampling or at the
// end, fails the watch: what it did is not known.
func TestProcWatchGone(t *testing.T) {
	ok := rss(10, 10, 0)
	gone := ProcSample{RSS: -1}
	tests := []struct {
		name     string
		by       map[int][]ProcSample
		startErr bool
	}{
		{"at the start", map[int][]ProcSample{1: {ok, ok, ok}, 2: {gone}}, true},
		{"while sampling", map[int][]ProcSample{1: {ok, ok, ok}, 2: {ok, gone, ok}}, false},
		{"at the end", map[int][]ProcSample{1: {ok, ok, ok}, 2: {ok, ok}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := watchProcs([]int{1, 2}, time.Hour, newScript(tt.by).read)
			if tt.startErr {
				if err == nil || w != nil {
					t.Fatalf("watchProcs = %v, %v; want an error", w, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			w.sampleAll()
			if _, _, err := w.stop(); err == nil || !strings.Contains(err.Error(), "process 2") {
				t.Fatalf("stop error %v, want one about process 2", err)
			}
		})
	}
}

func TestProcWatchNone(t *testing.T) {
	w, err := watchProcs(nil, time.Hour, func(int) (ProcSample, error) { return ProcSample{}, errors.New("read") })
	if w != nil || err != nil {
		t.Fatalf("watchProcs(nil) = %v, %v", w, err)
	}
	if s := w.start(); s != (ProcSample{}) {
		t.Fatalf("start of no watch = %+v", s)
	}
	if got, n, err := w.stop(); got != nil || n != 0 || err != nil {
		t.Fatalf("stop of no watch = %v, %d, %v", got, n, err)
	}
}

// The sampler goroutine finds a peak that only a reading in between saw.
// The test waits for the readings to happen, never for a time.
func TestProcWatchSampler(t *testing.T) {
	const spikeAt = 3 // the third reading, after the one at the start
	readings := make([]ProcSample, 1000)
	for i := range readings {
		readings[i] = rss(100, 0, float64(i))
	}
	readings[spikeAt-1] = rss(400, 0, spikeAt-1)
	sc := newScript(map[int][]ProcSample{7: readings})
	enough := make(chan struct{})
	var once sync.Once
	sc.after = func(total int) {
		if total >= spikeAt+1 {
			once.Do(func() { close(enough) })
		}
	}
	w, err := watchProcs([]int{7}, time.Millisecond, sc.read)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-enough:
	case <-time.After(30 * time.Second):
		t.Fatal("the sampler never read the process")
	}
	got, samples, err := w.stop()
	if err != nil {
		t.Fatal(err)
	}
	if samples < spikeAt+2 || got[0].RSSPeak != 400*mib || got[0].RSSGrowth != 300*mib || got[0].RSSEnd != 100*mib {
		t.Fatalf("%d samples, %+v; want the spike to 400MiB as the peak", samples, got[0])
	}
	if start := w.start(); start.RSS != 100*mib || start.CPU != 0 {
		t.Fatalf("start %+v", start)
	}
}

func TestServerStats(t *testing.T) {
	p := func(pid int, cpu float64, start, peak, end int64) ProcStats {
		return ProcStats{PID: pid, CPUSeconds: cpu, SysSeconds: cpu / 4, RSSStart: start * mib, RSSPeak: peak * mib, RSSEnd: end * mib,
			RSSGrowth: (peak - start) * mib}
	}
	tests := []struct {
		name     string
		procs    []ProcStats
		seconds  float64
		want     *ServerStats // without Procs, which must be procs
		wantText string
	}{
		{"none", nil, 1, nil, ""},
		{
			name:    "one process",
			procs:   []ProcStats{p(1234, 1, 40, 46, 41)},
			seconds: 2,
			want: &ServerStats{PID: 1234, CPUSeconds: 1, SysSeconds: 0.25, Cores: 0.5, RSSBefore: 40 * mib, RSSAfter: 41 * mib,
				RSSPeakGrowth: 6 * mib, RSSPeakGrowthPID: 1234, RSSSamples: 5},
			wantText: " (0.50 cores, 25% kernel) rss=40.0MiB→41.0MiB rss peak growth=6.0MiB (pid 1234)",
		},
		{
			name:    "several processes",
			procs:   []ProcStats{p(1, 0.5, 10, 12, 11), p(2, 1, 100, 130, 101), p(3, 1.5, 50, 50, 49)},
			seconds: 1,
			want: &ServerStats{CPUSeconds: 3, SysSeconds: 0.75, Cores: 3, RSSBefore: 160 * mib, RSSAfter: 161 * mib,
				RSSPeakGrowth: 30 * mib, RSSPeakGrowthPID: 2, RSSSamples: 5},
			wantText: " (3.00 cores, 25% kernel) rss=160.0MiB→161.0MiB in all, rss peak growth=30.0MiB (pid 2)",
		},
		{
			name:     "no time measured",
			procs:    []ProcStats{p(9, 0, 1, 1, 1)},
			seconds:  0,
			want:     &ServerStats{PID: 9, RSSBefore: mib, RSSAfter: mib, RSSPeakGrowthPID: 9, RSSSamples: 5},
			wantText: " (0.00 cores) rss=1.0MiB→1.0MiB rss peak growth=0.0MiB (pid 9)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := serverStats(tt.procs, 5, tt.seconds)
			if tt.want == nil {
				if got != nil {
					t.Fatalf("got %+v, want none", got)
				}
				return
			}
			if !reflect.DeepEqual(got.Procs, tt.procs) {
				t.Errorf("procs %+v, want %+v", got.Procs, tt.procs)
			}
			if text := got.text("MiB"); text != tt.wantText {
				t.Errorf("text %q\nwant %q", text, tt.wantText)
			}
			got.Procs = nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}
