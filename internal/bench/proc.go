package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of the CPU times in /proc/<pid>/stat. The
// kernel fixes it at 100 for user space on every architecture Go runs on,
// so there is no need for sysconf (and cgo) to ask.
const clockTick = 10 * time.Millisecond

// ProcSample is one reading of a process's resource use.
type ProcSample struct {
	CPU time.Duration // user + system time since the process started
	// Sys is the system part of CPU: time in the kernel on the process's
	// behalf. On loopback that includes much of the receiving side's
	// work for what the process sends.
	Sys time.Duration
	RSS int64 // resident set size in bytes
	// HWM is the highest RSS since the process started (VmHWM), 0 when
	// the kernel does not say. When it rises between two samples, RSS
	// reached it in between, however briefly.
	HWM int64
}

// ParsePIDs reads a comma-separated list of process ids, as --pid takes
// it: "1234" or "1234,1240,1251". The empty string is no processes. A pid
// listed twice is an error: its CPU time would be counted twice.
func ParsePIDs(s string) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var pids []int
	seen := map[int]bool{}
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		pid, err := strconv.Atoi(f)
		if err != nil || pid < 1 {
			return nil, fmt.Errorf("%q is not a process id", f)
		}
		if seen[pid] {
			return nil, fmt.Errorf("process %d listed twice", pid)
		}
		seen[pid] = true
		pids = append(pids, pid)
	}
	return pids, nil
}

// ReadProc reads the CPU time and RSS of process pid from /proc.
func ReadProc(pid int) (ProcSample, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/"
	stat, err := os.ReadFile(dir + "stat")
	if err != nil {
		return ProcSample{}, fmt.Errorf("server process %d: %w", pid, err)
	}
	cpu, sys, err := parseStat(stat)
	if err != nil {
		return ProcSample{}, fmt.Errorf("%sstat: %w", dir, err)
	}
	status, err := os.ReadFile(dir + "status")
	if err != nil {
		return ProcSample{}, fmt.Errorf("server process %d: %w", pid, err)
	}
	rss, hwm, err := parseStatus(status)
	if err != nil {
		return ProcSample{}, fmt.Errorf("%sstatus: %w", dir, err)
	}
	return ProcSample{CPU: cpu, Sys: sys, RSS: rss, HWM: hwm}, nil
}

// hostCPU is the machine's CPU time from /proc/stat, in clock ticks:
// everything (user to steal), and steal alone, the time a hypervisor ran
// something else while this machine had work for the CPU.
type hostCPU struct{ total, steal uint64 }

func readHostCPU() (hostCPU, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return hostCPU{}, err
	}
	return parseHostCPU(b)
}

// parseHostCPU reads the first line of /proc/stat: "cpu  user nice system
// idle iowait irq softirq steal guest guest_nice". Guest time is already
// part of user time; kernels before 2.6.11 have no steal field.
func parseHostCPU(b []byte) (hostCPU, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 5 || string(f[0]) != "cpu" {
		return hostCPU{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var h hostCPU
	for i, v := range f[1:min(len(f), 9)] {
		n, err := strconv.ParseUint(string(v), 10, 63)
		if err != nil {
			return hostCPU{}, fmt.Errorf("/proc/stat: field %d: %w", i+2, err)
		}
		h.total += n
		if i == 7 {
			h.steal = n
		}
	}
	return h, nil
}

// stealPercent is the share of the machine's CPU time stolen between two
// readings; ok is false when nothing can be said.
func stealPercent(a, b hostCPU, errA, errB error) (pct float64, ok bool) {
	if errA != nil || errB != nil || b.total <= a.total || b.steal < a.steal {
		return 0, false
	}
	return 100 * float64(b.steal-a.steal) / float64(b.total-a.total), true
}

// parseStat returns utime+stime and stime from /proc/<pid>/stat. The
// command name in field 2 is in parentheses and may itself contain spaces
// and ')', so the fields are counted from the last ')'.
func parseStat(b []byte) (cpu, sys time.Duration, err error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return 0, 0, errors.New("no command name")
	}
	f := bytes.Fields(b[end+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("only %d fields", len(f)+2)
	}
	utime, err1 := strconv.ParseUint(string(f[11]), 10, 63)
	stime, err2 := strconv.ParseUint(string(f[12]), 10, 63)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("cpu times: %w", err)
	}
	return time.Duration(utime+stime) * clockTick, time.Duration(stime) * clockTick, nil
}

// parseStatus returns VmRSS and VmHWM from /proc/<pid>/status in bytes.
// VmRSS is required; VmHWM is 0 when missing.
func parseStatus(b []byte) (rss, hwm int64, err error) {
	rss, hwm = -1, 0
	for line := range bytes.Lines(b) {
		var dst *int64
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if ok {
			dst = &rss
		} else if rest, ok = bytes.CutPrefix(line, []byte("VmHWM:")); ok {
			dst = &hwm
		} else {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || !bytes.EqualFold(f[1], []byte("kB")) {
			return 0, 0, fmt.Errorf("unexpected line %q", bytes.TrimSpace(line))
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil || kb < 0 || kb > 1<<53 {
			return 0, 0, fmt.Errorf("unexpected line %q", bytes.TrimSpace(line))
		}
		*dst = kb << 10
	}
	if rss < 0 {
		return 0, 0, errors.New("no VmRSS (a kernel thread or a zombie?)")
	}
	return rss, hwm, nil
}
