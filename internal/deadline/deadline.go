// Package deadline provides a context that has a deadline but no timer
// until something waits on it. A request handler that answers from memory
// never does, and a timer per request is a measurable cost at tens of
// thousands of requests a second.
package deadline

import (
	"context"
	"sync"
	"time"
)

// Context is a context.Context with a deadline, whose timer (a real
// context.WithDeadline) is made the first time Done or Err is called.
// Release it when the request is over.
type Context struct {
	parent   context.Context
	deadline time.Time
	once     sync.Once
	ctx      context.Context
	cancel   context.CancelFunc
}

// New returns a Context that ends at d, or with parent.
func New(parent context.Context, d time.Time) *Context {
	return &Context{parent: parent, deadline: d}
}

func (c *Context) real() context.Context {
	c.once.Do(func() { c.ctx, c.cancel = context.WithDeadline(c.parent, c.deadline) })
	if c.ctx == nil { // released before anything waited: it is over
		ctx, cancel := context.WithCancel(c.parent)
		cancel()
		return ctx
	}
	return c.ctx
}

// Deadline implements context.Context without making a timer.
func (c *Context) Deadline() (time.Time, bool) { return c.deadline, true }

// Done implements context.Context.
func (c *Context) Done() <-chan struct{} { return c.real().Done() }

// Err implements context.Context.
func (c *Context) Err() error { return c.real().Err() }

// Value implements context.Context.
func (c *Context) Value(key any) any { return c.parent.Value(key) }

// Release frees the timer, if one was made.
func (c *Context) Release() {
	c.once.Do(func() {}) // after this, real cannot make one any more
	if c.cancel != nil {
		c.cancel()
	}
}

// Remaining is the time left before the deadline of ctx, or fallback when
// ctx has none. It lets a caller use an API that takes a timeout (and
// pools its timers) without making ctx's timer.
func Remaining(ctx context.Context, fallback time.Duration) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return time.Until(d)
	}
	return fallback
}
