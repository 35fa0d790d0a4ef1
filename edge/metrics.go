package edge

import (
	"bytes"
	"strings"
	"time"

	"github.com/chatd-io/chatd/internal/metrics"
	"github.com/chatd-io/chatd/internal/proto"
)

// edgeMetrics is what an edge reports on /metrics.
type edgeMetrics struct {
	commands   *metrics.CounterVec
	latency    *metrics.HistogramVec
	deliveries *metrics.CounterVec
	// Private messages the edge sent itself (see conn.sendDirect).
	directConfirmed, directUntaken, directLocal *metrics.Counter
	privateDelivered                            *metrics.Counter // deliveries of private messages sent from here
	slow                                        *metrics.Counter
	frameErrors                                 *metrics.CounterVec
	accepted                                    *metrics.Counter
	transfers                                   *metrics.CounterVec
	fileBytes                                   *metrics.Counter
	labels                                      metrics.Interner // label values read from replies and deliveries

	// The dispatcher's: the counter of the kind of line it delivered
	// last, which is nearly always the kind of the next (a group message
	// is one delivery per member).
	lastKind    []byte
	lastCounter *metrics.Counter
}

func newEdgeMetrics(reg *metrics.Registry, e *Edge) *edgeMetrics {
	reg.NewGaugeFunc("chatd_edge_connections", "Open client connections.", func() float64 {
		e.mu.Lock()
		defer e.mu.Unlock()
		return float64(len(e.conns))
	})
	reg.NewGaugeFunc("chatd_edge_sessions", "Logged-in client connections.", func() float64 { return float64(e.Sessions()) })
	reg.NewGaugeFunc("chatd_edge_users", "Distinct users with a session on this edge.", func() float64 {
		e.mu.Lock()
		defer e.mu.Unlock()
		return float64(len(e.users))
	})
	reg.NewGaugeFunc("chatd_edge_parked_connections", "Idle connections parked without a read goroutine.",
		func() float64 { return float64(e.Parked()) })
	reg.NewGaugeFunc("chatd_edge_file_transfers_active", "File transfers in progress on this edge.", func() float64 {
		e.mu.Lock()
		defer e.mu.Unlock()
		return float64(len(e.transfers))
	})
	reg.NewCounterFunc("chatd_edge_registry_write_failures_total",
		"Session-log writes that failed or found the queue full; the next heartbeat rewrites this edge's list.",
		func() float64 { return float64(e.registry.failed.Load()) })
	reg.NewCounterFunc("chatd_edge_registry_writes_total",
		"Messages written to the session log for logins and logouts (full rewrites aside).",
		func() float64 { return float64(e.registry.writes.Load()) })
	reg.NewCounterFunc("chatd_edge_registry_changes_total",
		"Logins and logouts written to the session log; over chatd_edge_registry_writes_total, how many share a write.",
		func() float64 { return float64(e.registry.changes.Load()) })
	reg.NewCounterFunc("chatd_edge_nats_reconnects_total", "Times the edge's NATS connections were re-established.", func() float64 {
		n := e.nc.Stats().Reconnects
		for _, nc := range e.subs {
			if nc != e.nc {
				n += nc.Stats().Reconnects
			}
		}
		return float64(n)
	})
	direct := reg.NewCounterVec("chatd_edge_private_direct_total",
		"Private messages to a friend the session knew of, sent by the edge to the recipient's subject itself, "+
			"by outcome: local (written to the recipient's sessions here, a copy published for elsewhere), "+
			"confirmed by the recipient's edge, or untaken (offline, or unconfirmed) and kept by a worker.", "outcome")
	deliveries := reg.NewCounterVec("chatd_edge_deliveries_total",
		"Lines delivered to client sessions as messages for their users, by kind.", "cmd")
	return &edgeMetrics{
		directConfirmed:  direct.With("confirmed"),
		directUntaken:    direct.With("untaken"),
		directLocal:      direct.With("local"),
		deliveries:       deliveries,
		privateDelivered: deliveries.With("private_chat"),
		commands: reg.NewCounterVec("chatd_edge_commands_total",
			"Client commands answered, by command and result.", "cmd", "result"),
		latency: reg.NewHistogramVec("chatd_edge_command_seconds",
			"Time from reading a command to queueing its reply, by command.", "cmd"),
		slow: reg.NewCounter("chatd_edge_slow_disconnects_total",
			"Clients disconnected because they did not read their messages fast enough."),
		frameErrors: reg.NewCounterVec("chatd_edge_frame_errors_total",
			"Connections closed for a broken byte stream, by reason.", "reason"),
		accepted: reg.NewCounter("chatd_edge_connections_accepted_total", "Client connections accepted."),
		transfers: reg.NewCounterVec("chatd_edge_file_transfers_total",
			"File transfer sides ended on this edge, by side and result.", "side", "result"),
		fileBytes: reg.NewCounter("chatd_edge_file_bytes_total", "File bytes written to receiving clients."),
	}
}

// reply records a direct reply to a command that took took.
func (m *edgeMetrics) reply(body []byte, took time.Duration) {
	cmd := strings.TrimSuffix(m.labels.String(proto.FieldBytes(body, "cmd")), "_reply")
	result := m.labels.String(proto.FieldBytes(body, "result"))
	switch cmd {
	case "pong":
		cmd, result = "ping", "success"
	case "send_file_port":
		cmd, result = "send_file", "accepted"
	}
	m.commands.With(cmd, result).Inc()
	m.latency.With(cmd).Observe(took)
}

// delivered counts a line written to sessions from a user subject. Only
// the dispatcher may use the cached counter (cached); others look it up.
func (m *edgeMetrics) delivered(line []byte, sessions int, cached bool) {
	kind := proto.FieldBytes(line, "cmd")
	if !cached {
		m.deliveries.With(m.labels.String(kind)).Add(uint64(sessions))
		return
	}
	if m.lastCounter == nil || !bytes.Equal(kind, m.lastKind) {
		m.lastKind = append(m.lastKind[:0], kind...)
		m.lastCounter = m.deliveries.With(m.labels.String(kind))
	}
	m.lastCounter.Add(uint64(sessions))
}
