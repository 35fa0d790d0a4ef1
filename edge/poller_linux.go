package edge

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
)

// poller watches parked connections: idle ones whose read goroutine has
// ended. One goroutine blocks in epoll_wait for all of them and gives a
// connection its goroutine back when it becomes readable (or is closed
// or reset by the peer). Thousands of idle clients then cost no stacks.
type poller struct {
	epfd  int
	wake  [2]int // a pipe: closing stops epoll_wait, which a closed epfd does not
	mu    sync.Mutex
	conns map[int32]*conn
}

func newPoller() (*poller, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	p := &poller{epfd: fd, conns: make(map[int32]*conn)}
	if err := syscall.Pipe2(p.wake[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		_ = syscall.Close(fd)
		return nil, fmt.Errorf("pipe: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(p.wake[0])}
	if err := syscall.EpollCtl(fd, syscall.EPOLL_CTL_ADD, p.wake[0], &ev); err != nil {
		p.closeFDs()
		return nil, fmt.Errorf("epoll add: %w", err)
	}
	return p, nil
}

// add watches c's socket once: the first event removes it again.
func (p *poller) add(c *conn) error {
	fd, err := socketFD(c)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns[fd] = c
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT, Fd: fd}
	if err := syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev); err != nil {
		delete(p.conns, fd)
		return fmt.Errorf("epoll add: %w", err)
	}
	c.pollFD = fd
	return nil
}

// remove stops watching c; it reports whether c was watched.
func (p *poller) remove(c *conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns[c.pollFD] != c {
		return false
	}
	delete(p.conns, c.pollFD)
	_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, int(c.pollFD), nil)
	return true
}

func (p *poller) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// run wakes connections until the poller is closed.
func (p *poller) run() {
	events := make([]syscall.EpollEvent, 256)
	for {
		n, err := syscall.EpollWait(p.epfd, events, -1)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			p.closeFDs()
			return
		}
		for _, ev := range events[:n] {
			if ev.Fd == int32(p.wake[0]) {
				p.closeFDs()
				return
			}
			p.mu.Lock()
			c := p.conns[ev.Fd]
			if c != nil {
				delete(p.conns, ev.Fd)
				_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, int(ev.Fd), nil)
			}
			p.mu.Unlock()
			if c != nil {
				c.unpark()
			}
		}
	}
}

// close stops run; the descriptors are released as run returns.
func (p *poller) close() { _, _ = syscall.Write(p.wake[1], []byte{0}) }

func (p *poller) closeFDs() {
	_ = syscall.Close(p.wake[0])
	_ = syscall.Close(p.wake[1])
	_ = syscall.Close(p.epfd)
}

func socketFD(c *conn) (int32, error) {
	sc, ok := c.sock.(syscall.Conn)
	if !ok {
		return 0, errors.New("not a socket")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var fd int32
	if err := raw.Control(func(f uintptr) { fd = int32(f) }); err != nil {
		return 0, err
	}
	return fd, nil
}
