package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatd-io/chatd/edge"
	"github.com/chatd-io/chatd/internal/bench"
	"github.com/chatd-io/chatd/internal/chattest"
)

// TestScenariosAgainstChatd runs scenarios through the CLI entry point
// against a real in-process server: a broker, a worker and two edges, the
// second for --addr2. It checks that messages flow and that nothing counts
// as an error; it never looks at throughput, which depends on the machine.
func TestScenariosAgainstChatd(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	// The second edge listens on another loopback address when there is
	// one, with file ports of its own: a recipient that logs in or fetches
	// its file anywhere else than there fails.
	host2 := "127.0.0.2"
	if ln, err := net.Listen("tcp", host2+":0"); err != nil {
		t.Logf("no %s here (%v): both edges on 127.0.0.1", host2, err)
		host2 = "127.0.0.1"
	} else {
		_ = ln.Close()
	}
	lo := 20000 + rand.IntN(20000) // the edge skips ports somebody else holds
	startEdge := func(host string, lo int) string {
		return c.StartEdge(func(o *edge.Options) {
			o.Listen = net.JoinHostPort(host, "0")
			o.FilePortLo, o.FilePortHi = lo, lo+40
			o.FileTimeout = 3 * time.Second
		}).Addr().String()
	}
	addr, addr2 := startEdge("127.0.0.1", lo), startEdge(host2, lo+50)
	common := []string{"--addr", addr, "--duration", "300ms", "--warmup", "0", "--timeout", "3s"}

	// Several processes for --pid: this one and its parent (go test).
	self := strconv.Itoa(os.Getpid())
	parent := strconv.Itoa(os.Getppid())
	two := self + "," + parent
	if _, err := bench.ReadProc(os.Getppid()); err != nil {
		two = ""
	}

	tests := []struct {
		name, scenario string
		args           []string
		unit           string
		pids           string
		count          float64 // the exact count wanted; 0: any
	}{
		{"private", "private", []string{"--pairs", "2"}, "msg", self, 0},
		{"private across edges", "private", []string{"--pairs", "2", "--addr2", addr2}, "msg", self, 0},
		{"login", "login", []string{"--users", "12", "--friends", "4", "--concurrency", "3"}, "login", self, 0},
		// Another process watched: the generator's own CPU is shown apart.
		{"login, another pid", "login", []string{"--users", "12", "--friends", "4", "--concurrency", "3"}, "login", parent, 0},
		{"ping", "ping", []string{"--conns", "3", "--window", "2"}, "ping", self, 0},
		{"files", "files", []string{"--transfers", "2", "--size", "256KiB"}, "MiB", self, 0},
		{"files across edges", "files", []string{"--transfers", "2", "--size", "256KiB", "--addr2", addr2}, "MiB", self, 0},
		// --count: exactly 2×3 transfers of 1MiB, however long --duration.
		{"files count, two pids", "files", []string{"--transfers", "2", "--size", "1MiB", "--count", "3", "--addr2", addr2,
			"--duration", "1h", "--warmup", "1h"}, "MiB", two, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.pids == "" {
				t.Skip("the parent process cannot be read from /proc")
			}
			dir := t.TempDir()
			jsonPath, svgPath := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.svg")
			args := append(append([]string{tt.scenario}, common...), tt.args...)
			args = append(args, "--pid", tt.pids, "--json", jsonPath, "--svg", svgPath)
			lines := runCLI(t, args)
			if len(lines) != 1 || !strings.HasPrefix(lines[0], tt.scenario+" ") || !strings.Contains(lines[0], "errors=0") {
				t.Fatalf("want one summary line with errors=0, got %q", lines)
			}
			t.Log(lines[0])

			rep := readReport(t, jsonPath)
			if len(rep.Results) != 1 {
				t.Fatalf("%d results", len(rep.Results))
			}
			if slices.Contains(tt.args, "--addr2") != (rep.Addr2 == addr2) {
				t.Errorf("report addr2 %q", rep.Addr2)
			}
			r := rep.Results[0]
			if r.Scenario != tt.scenario || r.Unit != tt.unit || r.Count <= 0 || r.Errors != 0 || r.Interrupted {
				t.Fatalf("result %+v: want %s with count > 0 and no errors", r, tt.scenario)
			}
			if tt.count > 0 {
				done, _ := r.Extra["transfers_completed"].(float64)
				if r.Count != tt.count || done != tt.count || r.Latency == nil || r.Latency.Count != uint64(tt.count) {
					t.Fatalf("count %v, %v transfers, latency %+v; want exactly %v", r.Count, done, r.Latency, tt.count)
				}
			}
			if r.Latency == nil || r.Latency.Count == 0 || r.Latency.P50Ms <= 0 || r.Latency.MaxMs < r.Latency.P99Ms {
				t.Fatalf("latency %+v", r.Latency)
			}
			checkServer(t, r.Server, tt.pids, lines[0])
			// The pids were read from /proc, so /proc/stat is there too.
			if p := r.HostStealPct; p == nil || *p < 0 || *p > 100 || !strings.Contains(lines[0], fmt.Sprintf(" host steal=%.0f%%", *p)) {
				t.Errorf("host steal %v not in the result or the summary", p)
			}
			// The generator did the scenario's client side, so it used CPU;
			// shown apart unless its own process is among those watched.
			genCPU := regexp.MustCompile(`  generator cpu=[0-9.]+(µs|ms)/` + tt.unit + ` \([0-9.]+ cores\)`)
			apart := !slices.Contains(strings.Split(tt.pids, ","), self)
			if g := r.GeneratorCPUSeconds; (g > 0) != apart || genCPU.MatchString(lines[0]) != apart {
				t.Errorf("generator cpu %v s, summary %q: want it shown apart: %v", g, lines[0], apart)
			}
			svg, err := os.ReadFile(svgPath)
			if err != nil {
				t.Fatal(err)
			}
			wellFormed(t, svg)
		})
	}
}

// With --with-nats, the private scenario is followed by the raw NATS
// loop of the same shape: two summaries, two results, two curves.
func TestPrivateWithNATS(t *testing.T) {
	c := chattest.StartBroker(t, "")
	c.StartWorker("")
	addr := c.StartEdge().Addr().String()
	dir := t.TempDir()
	jsonPath, svgPath := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.svg")
	lines := runCLI(t, []string{"private", "--addr", addr, "--pairs", "2", "--with-nats", "--duration", "300ms", "--warmup", "0",
		"--json", jsonPath, "--svg", svgPath})
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "private pairs=2 ") || !strings.HasPrefix(lines[1], "nats pairs=2 window=1") {
		t.Fatalf("want a private and a nats summary, got %q", lines)
	}
	rep := readReport(t, jsonPath)
	if len(rep.Results) != 2 || rep.Results[0].Scenario != "private" || rep.Results[1].Scenario != "nats" {
		t.Fatalf("results %+v", rep.Results)
	}
	for _, r := range rep.Results {
		if r.Count <= 0 || r.Errors != 0 {
			t.Fatalf("result %+v", r)
		}
	}
	svg, err := os.ReadFile(svgPath)
	if err != nil {
		t.Fatal(err)
	}
	wellFormed(t, svg)
	for _, name := range []string{"private pairs=2", "nats pairs=2"} {
		if !bytes.Contains(svg, []byte(name)) {
			t.Errorf("chart has no %q curve", name)
		}
	}
}

// The raw NATS loop runs over sockets or, with --in-process, without;
// either way every message is counted and answered.
func TestNATSLoop(t *testing.T) {
	for _, tt := range []struct {
		args  []string
		label string
	}{
		{nil, "nats pairs=2 window=2: "},
		{[]string{"--in-process"}, "nats pairs=2 window=2 in-process: "},
	} {
		dir := t.TempDir()
		jsonPath := filepath.Join(dir, "r.json")
		args := append([]string{"nats", "--pairs", "2", "--window", "2", "--duration", "300ms", "--warmup", "0",
			"--json", jsonPath}, tt.args...)
		lines := runCLI(t, args)
		if len(lines) != 1 || !strings.HasPrefix(lines[0], tt.label) || !strings.Contains(lines[0], "errors=0") {
			t.Fatalf("%q: want one summary starting %q with errors=0, got %q", tt.args, tt.label, lines)
		}
		rep := readReport(t, jsonPath)
		if len(rep.Results) != 1 || rep.Results[0].Count <= 0 || rep.Results[0].Errors != 0 {
			t.Fatalf("%q: results %+v", tt.args, rep.Results)
		}
		if got := rep.Results[0].Params["in_process"]; got != (len(tt.args) > 0) {
			t.Errorf("%q: in_process = %v", tt.args, got)
		}
	}
}

// runCLI runs chatbench with args, expecting success, and returns the
// lines it printed.
func runCLI(t *testing.T, args []string) []string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if code := run(ctx, args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, stdout.String(), stderr.String())
	}
	return strings.Split(strings.TrimSpace(stdout.String()), "\n")
}

// readReport reads what --json wrote.
func readReport(t *testing.T, path string) report {
	t.Helper()
	var rep report
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("JSON: %v\n%s", err, b)
	}
	return rep
}

// checkServer checks what --pid reported: every process, in order, with
// plausible RSS, and the summary naming the one that grew most.
func checkServer(t *testing.T, s *bench.ServerStats, pidList, summary string) {
	t.Helper()
	pids, err := bench.ParsePIDs(pidList)
	if err != nil {
		t.Fatal(err)
	}
	if s == nil || len(s.Procs) != len(pids) {
		t.Fatalf("server stats %+v, want %d processes from --pid", s, len(pids))
	}
	var before, after int64
	for i, p := range s.Procs {
		if p.PID != pids[i] || p.RSSStart <= 0 || p.RSSEnd <= 0 || p.RSSPeak < max(p.RSSStart, p.RSSEnd) ||
			p.RSSGrowth != p.RSSPeak-p.RSSStart || p.CPUSeconds < 0 {
			t.Errorf("process %d: %+v", pids[i], p)
		}
		if p.RSSGrowth > s.RSSPeakGrowth {
			t.Errorf("process %d grew %d, more than the largest growth %d", p.PID, p.RSSGrowth, s.RSSPeakGrowth)
		}
		before, after = before+p.RSSStart, after+p.RSSEnd
	}
	if s.RSSBefore != before || s.RSSAfter != after || s.RSSSamples < 2 || !slices.Contains(pids, s.RSSPeakGrowthPID) {
		t.Errorf("server stats %+v", s)
	}
	if (len(pids) == 1) != (s.PID == pids[0]) {
		t.Errorf("pid %d, want it set for one process only", s.PID)
	}
	want := fmt.Sprintf("rss peak growth=%.1fMiB (pid %d)", float64(s.RSSPeakGrowth)/(1<<20), s.RSSPeakGrowthPID)
	if !strings.Contains(summary, want) {
		t.Errorf("summary %q does not say %q", summary, want)
	}
	if len(pids) > 1 && !strings.Contains(summary, fmt.Sprintf("%d server processes", len(pids))) {
		t.Errorf("summary %q does not say how many processes", summary)
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
		{[]string{"files", "-h"}, 0, "-count"},
		{[]string{"private", "-h"}, 0, "-addr2"},
		{[]string{"private", "--addr2", "nohost"}, 2, "--addr2"},
		{[]string{"private", "--pid", "12x"}, 2, "--pid"},
		{[]string{"private", "--pid", "1,1"}, 2, "listed twice"},
		{[]string{"private", "--pid", strconv.Itoa(os.Getpid()) + ",1073741824"}, 2, "1073741824"},
		{[]string{"files", "--count", "-1", "--addr", "127.0.0.1:1", "--warmup", "0"}, 1, "--count"},
		{[]string{"nats", "--in-process", "--nats", "nats://127.0.0.1:1", "--warmup", "0"}, 1, "--in-process"},
		{[]string{"ping", "--conns", "0", "--addr", "127.0.0.1:1", "--warmup", "0"}, 1, "--conns"},
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
