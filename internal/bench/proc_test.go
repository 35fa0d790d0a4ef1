package bench

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	rest := " S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 12 0 100 2000000 500"
	tests := []struct {
		name    string
		in      string
		cpu     time.Duration
		sys     time.Duration
		wantErr bool
	}{
		{"plain", "1234 (chatd)" + rest, 1750 * time.Millisecond, 250 * time.Millisecond, false},
		{"name with spaces and parens", "1234 (a) b (c))" + rest, 1750 * time.Millisecond, 250 * time.Millisecond, false},
		{"no name", "1234 chatd" + rest, 0, 0, true},
		{"too short", "1234 (chatd) S 1 2 3", 0, 0, true},
		{"not numbers", "1234 (chatd) S 1 2 3 4 5 6 7 8 9 10 x y 0", 0, 0, true},
		{"system time not a number", "1234 (chatd) S 1 2 3 4 5 6 7 8 9 10 150 y 0", 0, 0, true},
	}
	for _, tt := range tests {
		cpu, sys, err := parseStat([]byte(tt.in))
		if (err != nil) != tt.wantErr || cpu != tt.cpu || sys != tt.sys {
			t.Errorf("%s: parseStat = %v, %v, %v; want %v, %v, error %v", tt.name, cpu, sys, err, tt.cpu, tt.sys, tt.wantErr)
		}
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		rss, hwm int64
		wantErr  bool
	}{
		{"normal", "Name:\tchatd\nVmPeak:\t 999 kB\nVmHWM:\t   50000 kB\nVmRSS:\t   46200 kB\nThreads:\t8\n", 46200 << 10, 50000 << 10, false},
		{"no VmHWM", "Name:\tchatd\nVmRSS:\t   46200 kB\n", 46200 << 10, 0, false},
		{"last line without newline", "Name:\tx\nVmRSS:\t1 kB", 1 << 10, 0, false},
		{"zero", "VmHWM:\t0 kB\nVmRSS:\t0 kB\n", 0, 0, false},
		{"kernel thread", "Name:\tkthreadd\nThreads:\t1\n", 0, 0, true},
		{"only VmHWM", "VmHWM:\t5 kB\n", 0, 0, true},
		{"odd unit", "VmRSS:\t5 MB\n", 0, 0, true},
		{"odd VmHWM", "VmHWM:\t5\nVmRSS:\t5 kB\n", 0, 0, true},
		{"garbage", "VmRSS:\tlots kB\n", 0, 0, true},
		{"negative", "VmRSS:\t-5 kB\n", 0, 0, true},
		{"overflowing", "VmRSS:\t99999999999999999999 kB\n", 0, 0, true},
	}
	for _, tt := range tests {
		rss, hwm, err := parseStatus([]byte(tt.in))
		if (err != nil) != tt.wantErr || rss != tt.rss || hwm != tt.hwm {
			t.Errorf("%s: parseStatus = %d, %d, %v; want %d, %d, error %v", tt.name, rss, hwm, err, tt.rss, tt.hwm, tt.wantErr)
		}
	}
}

func TestParsePIDs(t *testing.T) {
	tests := []struct {
		in      string
		want    []int
		wantErr string
	}{
		{"", nil, ""},
		{"  ", nil, ""},
		{"1234", []int{1234}, ""},
		{"1234,1240,1251", []int{1234, 1240, 1251}, ""},
		{" 1234 , 1240 ", []int{1234, 1240}, ""},
		{"1240,1234", []int{1240, 1234}, ""}, // order kept: the report follows it
		{"1234,1234", nil, "listed twice"},
		{"1234,", nil, "not a process id"},
		{",1234", nil, "not a process id"},
		{"1234,,1240", nil, "not a process id"},
		{"0", nil, "not a process id"},
		{"-5", nil, "not a process id"},
		{"12a", nil, "not a process id"},
		{"1234 1240", nil, "not a process id"},
		{"99999999999999999999", nil, "not a process id"},
	}
	for _, tt := range tests {
		got, err := ParsePIDs(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParsePIDs(%q) = %v, %v; want an error with %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("ParsePIDs(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestReadProcSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc here")
	}
	s, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.RSS <= 0 || s.CPU < 0 || (s.HWM != 0 && s.HWM < s.RSS) {
		t.Fatalf("implausible sample %+v", s)
	}
	if _, err := ReadProc(1 << 30); err == nil {
		t.Fatal("no error for a process that does not exist")
	}
}

func TestParseHostCPU(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    hostCPU
		wantErr bool
	}{
		{"with guest fields", "cpu  100 2 30 400 5 0 10 50 7 0\ncpu0 50 1 15 200 2 0 5 25 3 0\n", hostCPU{total: 597, steal: 50}, false},
		{"no steal field", "cpu  100 2 30 400 5 0 10\n", hostCPU{total: 547}, false},
		{"not the cpu line", "intr 12 3 4 5 6\n", hostCPU{}, true},
		{"too short", "cpu 1 2\n", hostCPU{}, true},
		{"not a number", "cpu  100 x 30 400 5 0 10 50\n", hostCPU{}, true},
		{"empty", "", hostCPU{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseHostCPU([]byte(tc.in))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("parseHostCPU = %+v, %v; want %+v, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestStealPercent(t *testing.T) {
	a := hostCPU{total: 1000, steal: 100}
	tests := []struct {
		name   string
		b      hostCPU
		err    error
		want   float64
		wantOK bool
	}{
		{"a quarter stolen", hostCPU{total: 1400, steal: 200}, nil, 25, true},
		{"none stolen", hostCPU{total: 1200, steal: 100}, nil, 0, true},
		{"no time passed", a, nil, 0, false},
		{"counters went back", hostCPU{total: 1400, steal: 50}, nil, 0, false},
		{"unreadable", hostCPU{total: 1400, steal: 200}, os.ErrNotExist, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := stealPercent(a, tc.b, nil, tc.err)
			if ok != tc.wantOK || got != tc.want {
				t.Fatalf("stealPercent = %v, %v; want %v, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}
