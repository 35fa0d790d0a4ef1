package edge

import (
	"errors"
	"syscall"
)

// KeepAlive is the TCP keepalive of one accepted client socket, as the
// kernel has it.
type KeepAlive struct {
	On                    bool
	IdleS, IntervalS, Cnt int
}

// KeepAlives reads the keepalive settings of the client sockets e holds.
func KeepAlives(e *Edge) ([]KeepAlive, error) {
	e.mu.Lock()
	raws := make([]syscall.RawConn, 0, len(e.conns))
	for c := range e.conns {
		if c.raw != nil {
			raws = append(raws, c.raw)
		}
	}
	e.mu.Unlock()
	out := make([]KeepAlive, 0, len(raws))
	for _, raw := range raws {
		var k KeepAlive
		var errs [4]error
		err := raw.Control(func(fd uintptr) {
			var on int
			on, errs[0] = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
			k.On = on != 0
			k.IdleS, errs[1] = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
			k.IntervalS, errs[2] = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL)
			k.Cnt, errs[3] = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT)
		})
		if err == nil {
			err = errors.Join(errs[:]...)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, nil
}
