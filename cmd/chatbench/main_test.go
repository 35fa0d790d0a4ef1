package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatd-io/chatd/edge"
	"github.com/chatd-io/chatd/internal/chattest"
)

// TestScenariosAgainstChatd runs scenarios through the CLI entry point
// against a real in-process server. It checks that messages flow and that
// nothing counts as an error; it never looks at throughput, which depends
// on the machine.
func TestScenariosAgainstChatd(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	lo := 20000 + rand.IntN(20000) // the edge skips ports somebody else holds
	addr := c.StartEdge(func(o *edge.Options) {
		o.FilePortLo, o.FilePortHi = lo, lo+40
		o.FileTimeout = 3 * time.Second
	}).Addr().String()
	common := []string{"--addr", addr, "--duration", "300ms", "--warmup", "0", "--timeout", "3s",
		"--pid", strconv.Itoa(os.Getpid())}

	tests := []struct {
		scenario string
		args     []string
		unit     string
	}{
		{"private", []string{"--pairs", "2"}, "msg"},
		{"login", []string{"--users", "12", "--friends", "4", "--concurrency", "3"}, "login"},
		{"files", []string{"--transfers", "2", "--size", "256KiB"}, "MiB"},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			dir := t.TempDir()
			jsonPath, svgPath := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.svg")
			args := append(append([]string{tt.scenario}, common...), tt.args...)
			args = append(args, "--json", jsonPath, "--svg", svgPath)
			var stdout, stderr bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if code := run(ctx, args, &stdout, &stderr); code != 0 {
				t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, stdout.String(), stderr.String())
			}
			lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], tt.scenario+" ") || !strings.Contains(lines[0], "errors=0") {
				t.Fatalf("want one summary line with errors=0, got %q", stdout.String())
			}

			var rep report
			b, err := os.ReadFile(jsonPath)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &rep); err != nil {
				t.Fatalf("JSON: %v\n%s", err, b)
			}
			if len(rep.Results) != 1 {
				t.Fatalf("%d results", len(rep.Results))
			}
			r := rep.Results[0]
			if r.Scenario != tt.scenario || r.Unit != tt.unit || r.Count <= 0 || r.Errors != 0 {
				t.Fatalf("result %+v: want %s with count > 0 and no errors", r, tt.scenario)
			}
			if r.Latency == nil || r.Latency.Count == 0 || r.Latency.P50Ms <= 0 || r.Latency.MaxMs < r.Latency.P99Ms {
				t.Fatalf("latency %+v", r.Latency)
			}
			if r.Server == nil || r.Server.RSSAfter <= 0 {
				t.Fatalf("server stats %+v, want RSS from --pid", r.Server)
			}
			svg, err := os.ReadFile(svgPath)
			if err != nil {
				t.Fatal(err)
			}
			wellFormed(t, svg)
		})
	}
}

func wellFormed(t *testing.T, b []byte) {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(b))
	for {
		_, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v", err)
		}
	}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "Scenarios:"},
		{[]string{"help"}, 0, "Scenarios:"},
		{[]string{"nosuch"}, 2, `unknown scenario "nosuch"`},
		{[]string{"private", "-h"}, 0, "-pairs"},
		{[]string{"idle", "-h"}, 0, "20000"},
		{[]string{"private", "--bogus"}, 2, "bogus"},
		{[]string{"private", "extra"}, 2, "unexpected argument"},
		{[]string{"private", "--prefix", "a b"}, 2, "--prefix"},
		{[]string{"files", "--size", "12XB"}, 2, "size"},
		{[]string{"private", "--duration", "0s"}, 2, "--duration"},
		// Nothing listens on port 1: setup fails cleanly.
		{[]string{"private", "--addr", "127.0.0.1:1", "--warmup", "0", "--duration", "10ms"}, 1, "connect"},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tt.args, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("run(%q) = %d, stderr %q; want %d and %q", tt.args, code, stderr.String(), tt.code, tt.want)
		}
	}
}
