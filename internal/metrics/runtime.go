package metrics

import (
	"runtime/metrics"
)

// AddRuntime registers the Go runtime figures an operator of a server with
// many connections watches: goroutines (one per idle connection or more),
// and heap and stack memory.
func (r *Registry) AddRuntime() {
	read := func(name string) func() float64 {
		return func() float64 {
			s := []metrics.Sample{{Name: name}}
			metrics.Read(s)
			switch s[0].Value.Kind() {
			case metrics.KindUint64:
				return float64(s[0].Value.Uint64())
			case metrics.KindFloat64:
				return s[0].Value.Float64()
			}
			return 0
		}
	}
	r.NewGaugeFunc("go_goroutines", "Goroutines that currently exist.", read("/sched/goroutines:goroutines"))
	r.NewGaugeFunc("go_heap_objects_bytes", "Memory occupied by live objects and dead objects not yet freed.",
		read("/memory/classes/heap/objects:bytes"))
	r.NewGaugeFunc("go_stack_bytes", "Memory allocated to goroutine stacks.", read("/memory/classes/heap/stacks:bytes"))
	r.NewGaugeFunc("go_memory_total_bytes", "All memory mapped by the Go runtime.", read("/memory/classes/total:bytes"))
}
