package bench

import (
	"cmp"
	"time"
)

// sampleEvery is how often the watched processes' RSS is read during the
// measured period, to find its peak.
const sampleEvery = 100 * time.Millisecond

// ProcStats is what --pid observed of one process in the measured period.
type ProcStats struct {
	PID        int     `json:"pid"`
	CPUSeconds float64 `json:"cpu_seconds"`
	SysSeconds float64 `json:"sys_seconds"` // the part of CPUSeconds in the kernel
	RSSStart   int64   `json:"rss_start_bytes"`
	// RSSPeak is the highest RSS seen from start to end: sampled
	// periodically, and VmHWM when that rose in the meantime (so a spike
	// between two samples counts too).
	RSSPeak int64 `json:"rss_peak_bytes"`
	RSSEnd  int64 `json:"rss_end_bytes"`
	// RSSGrowth is RSSPeak − RSSStart: how much more memory the process
	// held at its worst than when the period began.
	RSSGrowth int64 `json:"rss_peak_growth_bytes"`
}

// procWatch follows processes through a measured period: CPU time and
// RSS at both ends, and the RSS peak in between from a sampler goroutine.
// Only that goroutine touches last, peak, samples and err until stop has
// waited for it.
type procWatch struct {
	pids    []int
	read    func(pid int) (ProcSample, error)
	first   []ProcSample
	last    []ProcSample
	peak    []int64
	samples int // rounds of readings, both ends included
	err     error
	stopc   chan struct{}
	done    chan struct{}
}

// watchProcs reads every process once (the start of the period) and then
// every interval until stop. No pids is no watch: nil, which stop accepts.
func watchProcs(pids []int, every time.Duration, read func(int) (ProcSample, error)) (*procWatch, error) {
	if len(pids) == 0 {
		return nil, nil
	}
	w := &procWatch{pids: pids, read: read, first: make([]ProcSample, len(pids)),
		last: make([]ProcSample, len(pids)), peak: make([]int64, len(pids))}
	for i, pid := range pids {
		s, err := read(pid)
		if err != nil {
			return nil, err
		}
		w.first[i] = s
		w.observe(i, s)
	}
	w.samples = 1
	w.stopc, w.done = make(chan struct{}), make(chan struct{})
	go w.sampler(every)
	return w, nil
}

// observe takes one reading of process i into account.
func (w *procWatch) observe(i int, s ProcSample) {
	w.last[i] = s
	w.peak[i] = max(w.peak[i], s.RSS)
	if s.HWM > w.first[i].HWM {
		// The lifetime high-water mark rose: RSS was that high at some
		// moment after the first reading.
		w.peak[i] = max(w.peak[i], s.HWM)
	}
}

func (w *procWatch) sampler(every time.Duration) {
	defer close(w.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-w.stopc:
			return
		case <-t.C:
		}
		w.sampleAll()
	}
}

// sampleAll reads every process once. A process that cannot be read (it
// exited) is remembered as an error for stop; the others are still read.
func (w *procWatch) sampleAll() {
	for i, pid := range w.pids {
		s, err := w.read(pid)
		if err != nil {
			w.err = cmp.Or(w.err, err)
			continue
		}
		w.observe(i, s)
	}
	w.samples++
}

// start is the first reading, CPU and RSS summed over the processes (zero
// for no watch).
func (w *procWatch) start() ProcSample {
	var sum ProcSample
	if w == nil {
		return sum
	}
	for _, s := range w.first {
		sum.CPU += s.CPU
		sum.Sys += s.Sys
		sum.RSS += s.RSS
	}
	return sum
}

// stop ends sampling, reads every process a last time (the end of the
// period) and returns what each did, in the order of the pids, and the
// number of readings. It fails if some process could not be read at
// some point: it is gone, and what it did is not known.
func (w *procWatch) stop() ([]ProcStats, int, error) {
	if w == nil {
		return nil, 0, nil
	}
	close(w.stopc)
	<-w.done
	w.sampleAll()
	if w.err != nil {
		return nil, w.samples, w.err
	}
	out := make([]ProcStats, len(w.pids))
	for i, pid := range w.pids {
		f, l := w.first[i], w.last[i]
		out[i] = ProcStats{PID: pid, CPUSeconds: (l.CPU - f.CPU).Seconds(),
			SysSeconds: (l.Sys - f.Sys).Seconds(), RSSStart: f.RSS, RSSPeak: w.peak[i],
			RSSEnd: l.RSS, RSSGrowth: w.peak[i] - f.RSS}
	}
	return out, w.samples, nil
}

// largestGrowth returns the process whose RSS grew most (the first of
// equals); ok is false for none.
func largestGrowth(procs []ProcStats) (top ProcStats, ok bool) {
	for i, p := range procs {
		if i == 0 || p.RSSGrowth > top.RSSGrowth {
			top = p
		}
	}
	return top, len(procs) > 0
}
