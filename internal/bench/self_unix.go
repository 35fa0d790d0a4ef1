//go:build unix

package bench

import (
	"syscall"
	"time"
)

// selfCPU is the CPU time this process (the generator) has used, user and
// system, to the microsecond.
func selfCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
