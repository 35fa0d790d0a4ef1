package edge

// Writers counts the client connections of e with a writer goroutine.
func Writers(e *Edge) int {
	n := 0
	for _, c := range e.snapshotConns() {
		c.mu.Lock()
		if c.writing {
			n++
		}
		c.mu.Unlock()
	}
	return n
}
