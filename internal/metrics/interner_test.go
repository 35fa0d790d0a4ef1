package metrics

import (
	"fmt"
	"sync"
	"testing"
)

func TestInterner(t *testing.T) {
	var in Interner
	b := []byte("private_chat")
	first := in.String(b)
	b[0] = 'X' // the interned string is a copy, not a view of b
	if first != "private_chat" {
		t.Fatalf("interned %q", first)
	}
	if got := in.String([]byte("private_chat")); got != first {
		t.Fatalf("second lookup %q", got)
	}
	if n := testing.AllocsPerRun(100, func() { _ = in.String([]byte("private_chat")) }); n != 0 {
		t.Errorf("a known value costs %v allocations", n)
	}
	// Past the bound, values still come back right, copied each time.
	for i := range 2 * maxInterned {
		v := fmt.Sprint("v", i)
		if got := in.String([]byte(v)); got != v {
			t.Fatalf("String(%q) = %q", v, got)
		}
	}
	if m := in.m.snapshot(); len(m) != maxInterned {
		t.Errorf("kept %d values, want at most %d", len(m), maxInterned)
	}
}

func TestInternerConcurrent(t *testing.T) {
	var in Interner
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				v := fmt.Sprint("v", (g+i)%50)
				if got := in.String([]byte(v)); got != v {
					t.Errorf("String(%q) = %q", v, got)
					return
				}
			}
		}()
	}
	wg.Wait()
}
