package deadline

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestContext(t *testing.T) {
	d := time.Now().Add(20 * time.Millisecond)
	c := New(context.Background(), d)
	if got, ok := c.Deadline(); !ok || !got.Equal(d) {
		t.Fatalf("Deadline = %v, %v", got, ok)
	}
	if c.ctx != nil {
		t.Fatal("a timer was made before anything waited")
	}
	select {
	case <-c.Done():
	case <-time.After(time.Second):
		t.Fatal("Done never closed")
	}
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err = %v", c.Err())
	}
	c.Release()

	parent, cancel := context.WithCancel(context.Background())
	c = New(parent, time.Now().Add(time.Hour))
	cancel()
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("a cancelled parent: Err = %v", c.Err())
	}
	c.Release()

	unused := New(context.Background(), time.Now().Add(time.Hour))
	unused.Release()
	if unused.ctx != nil {
		t.Fatal("Release made a timer")
	}
	if !errors.Is(unused.Err(), context.Canceled) {
		t.Fatalf("a released context: Err = %v", unused.Err())
	}
}
