package workers

import (
	"time"

	"github.com/chatd-io/chatd/internal/metrics"
	"github.com/chatd-io/chatd/internal/proto"
)

// workerMetrics is what a worker reports on /metrics.
type workerMetrics struct {
	requests    *metrics.CounterVec
	latency     *metrics.HistogramVec
	private     *metrics.CounterVec
	groupFanout *metrics.Counter
	reaped      *metrics.Counter
	labels      metrics.Interner // results read from replies
}

func newWorkerMetrics(reg *metrics.Registry, w *Worker) *workerMetrics {
	reg.NewGaugeFunc("chatd_worker_ready", "1 once the worker has caught up with the log and serves.", func() float64 {
		if w.Ready() {
			return 1
		}
		return 0
	})
	reg.NewGaugeFunc("chatd_worker_log_applied_seq", "Sequence of the last event applied to this worker's store.",
		func() float64 { return float64(w.store.LastSeq()) })
	reg.NewGaugeFunc("chatd_worker_log_lag", "Events in the log not yet applied to this worker's store.",
		func() float64 {
			if w.applier == nil {
				return 0
			}
			return float64(w.applier.pending.Load())
		})
	reg.NewGaugeFunc("chatd_worker_inflight", "Requests being handled.", func() float64 { return float64(len(w.inflight)) })
	reg.NewGaugeFunc("chatd_worker_handoffs_kept", "Private messages handed off and kept until no \"no responders\" can come for them "+
		"(normally a fraction of a second's worth).", func() float64 { return float64(w.handoff.kept()) })
	return &workerMetrics{
		requests: reg.NewCounterVec("chatd_worker_requests_total",
			"Requests answered, by command and result.", "cmd", "result"),
		latency: reg.NewHistogramVec("chatd_worker_request_seconds",
			"Time to handle a request, by command.", "cmd"),
		private: reg.NewCounterVec("chatd_worker_private_messages_total",
			"Private messages, by outcome: delivered (confirmed to this worker), handed_off (sent to the recipient's edges, "+
				"which confirm to the sender's edge) or stored for an offline user.", "outcome"),
		groupFanout: reg.NewCounter("chatd_worker_group_deliveries_total",
			"Group messages published to members' subjects."),
		reaped: reg.NewCounter("chatd_worker_edges_reaped_total",
			"Edges given up for dead after missing their heartbeats."),
	}
}

func (m *workerMetrics) served(cmd string, body []byte, took time.Duration) {
	m.requests.With(cmd, m.labels.String(proto.FieldBytes(body, "result"))).Inc()
	m.latency.With(cmd).Observe(took)
}

// handedOff counts a request whose answer comes from elsewhere.
func (m *workerMetrics) handedOff(cmd string, took time.Duration) {
	m.requests.With(cmd, "handed_off").Inc()
	m.latency.With(cmd).Observe(took)
}
