package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
)

// clockTick is USER_HZ, the unit of the CPU times in /proc/<pid>/stat. The
// kernel fixes it at 100 for user space on every architecture Go runs on,
// so there is no need for sysconf (and cgo) to ask.
const clockTick = 10 * time.Millisecond

// ProcSample is one reading of a process's resource use.
type ProcSample struct {
	CPU time.Duration // user + system time since the process started
	RSS int64         // resident set size in bytes
}

// ReadProc reads the CPU time and RSS of process pid from /proc.
func ReadProc(pid int) (ProcSample, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/"
	stat, err := os.ReadFile(dir + "stat")
	if err != nil {
		return ProcSample{}, fmt.Errorf("server process %d: %w", pid, err)
	}
	cpu, err := parseStat(stat)
	if err != nil {
		return ProcSample{}, fmt.Errorf("%sstat: %w", dir, err)
	}
	status, err := os.ReadFile(dir + "status")
	if err != nil {
		return ProcSample{}, fmt.Errorf("server process %d: %w", pid, err)
	}
	rss, err := parseStatusRSS(status)
	if err != nil {
		return ProcSample{}, fmt.Errorf("%sstatus: %w", dir, err)
	}
	return ProcSample{CPU: cpu, RSS: rss}, nil
}

// parseStat returns utime+stime from /proc/<pid>/stat. The command name in
// field 2 is in parentheses and may itself contain spaces and ')', so the
// fields are counted from the last ')'.
func parseStat(b []byte) (time.Duration, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return 0, errors.New("no command name")
	}
	f := bytes.Fields(b[end+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("only %d fields", len(f)+2)
	}
	utime, err1 := strconv.ParseUint(string(f[11]), 10, 63)
	stime, err2 := strconv.ParseUint(string(f[12]), 10, 63)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("cpu times: %w", err)
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// parseStatusRSS returns VmRSS from /proc/<pid>/status in bytes.
func parseStatusRSS(b []byte) (int64, error) {
	for line := range bytes.Lines(b) {
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || !bytes.EqualFold(f[1], []byte("kB")) {
			return 0, fmt.Errorf("unexpected VmRSS line %q", bytes.TrimSpace(line))
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil || kb < 0 {
			return 0, fmt.Errorf("unexpected VmRSS line %q", bytes.TrimSpace(line))
		}
		return kb << 10, nil
	}
	return 0, errors.New("no VmRSS (a kernel thread or a zombie?)")
}
