package bench

import (
	"os"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	rest := " S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 12 0 100 2000000 500"
	tests := []struct {
		name    string
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"plain", "1234 (chatd)" + rest, 1750 * time.Millisecond, false},
		{"name with spaces and parens", "1234 (a) b (c))" + rest, 1750 * time.Millisecond, false},
		{"no name", "1234 chatd" + rest, 0, true},
		{"too short", "1234 (chatd) S 1 2 3", 0, true},
		{"not numbers", "1234 (chatd) S 1 2 3 4 5 6 7 8 9 10 x y 0", 0, true},
	}
	for _, tt := range tests {
		got, err := parseStat([]byte(tt.in))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("%s: parseStat = %v, %v; want %v, error %v", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseStatusRSS(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    int64
		wantErr bool
	}{
		{"normal", "Name:\tchatd\nVmPeak:\t 999 kB\nVmRSS:\t   46200 kB\nThreads:\t8\n", 46200 << 10, false},
		{"last line without newline", "Name:\tx\nVmRSS:\t1 kB", 1 << 10, false},
		{"kernel thread", "Name:\tkthreadd\nThreads:\t1\n", 0, true},
		{"odd unit", "VmRSS:\t5 MB\n", 0, true},
		{"garbage", "VmRSS:\tlots kB\n", 0, true},
	}
	for _, tt := range tests {
		got, err := parseStatusRSS([]byte(tt.in))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("%s: parseStatusRSS = %d, %v; want %d, error %v", tt.name, got, err, tt.want, tt.wantErr)
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
	if s.RSS <= 0 || s.CPU < 0 {
		t.Fatalf("implausible sample %+v", s)
	}
	if _, err := ReadProc(1 << 30); err == nil {
		t.Fatal("no error for a process that does not exist")
	}
}
