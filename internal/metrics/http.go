package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Check reports a problem, or nil when all is well.
type Check func() error

// Handler serves /metrics, /healthz (the process works) and /readyz (it
// should be sent traffic). A failing check answers 503 with its reason.
func Handler(reg *Registry, healthy, ready Check) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", reg)
	mux.HandleFunc("GET /healthz", probe(healthy))
	mux.HandleFunc("GET /readyz", probe(ready))
	return mux
}

func probe(check Check) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := check(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, err)
			return
		}
		fmt.Fprintln(w, "ok")
	}
}

// Server is a running monitoring endpoint.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Listen starts serving h on addr.
func Listen(addr string, h http.Handler, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("monitoring listener: %w", err)
	}
	s := &Server{srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}, ln: ln}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("monitoring endpoint stopped", "err", err)
		}
	}()
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops serving.
func (s *Server) Close(ctx context.Context) error { return s.srv.Shutdown(ctx) }
