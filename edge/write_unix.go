//go:build unix

package edge

import "syscall"

// writeOnce writes p to the non-blocking socket fd without waiting for
// room; again reports a full socket buffer.
func writeOnce(fd uintptr, p []byte) (n int, again bool, err error) {
	for {
		n, err = syscall.Write(int(fd), p)
		switch err {
		case nil:
			return n, false, nil
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return 0, true, nil
		}
		return 0, false, err
	}
}
