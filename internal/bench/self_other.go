//go:build !unix

package bench

import "time"

// selfCPU is not read on this system.
func selfCPU() (time.Duration, bool) { return 0, false }
