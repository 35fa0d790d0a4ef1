//go:build !linux

package edge

import "errors"

// poller parks idle connections on Linux only; elsewhere every connection
// keeps its read goroutine.
type poller struct{}

func newPoller() (*poller, error) { return nil, errors.New("parking idle connections needs Linux") }

func (p *poller) add(*conn) error   { return errors.New("no poller") }
func (p *poller) remove(*conn) bool { return false }
func (p *poller) run()              {}
func (p *poller) close()            {}
func (p *poller) len() int          { return 0 }
