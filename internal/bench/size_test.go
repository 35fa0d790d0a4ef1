package bench

import (
	"flag"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    Size
		wantErr bool
	}{
		{"0", 0, false},
		{"65536", 65536, false},
		{"17B", 17, false},
		{"1KiB", 1 << 10, false},
		{"64MiB", 64 << 20, false},
		{"64mib", 64 << 20, false},
		{" 2 GiB ", 2 << 30, false},
		{"1TiB", 1 << 40, false},
		{"1.5GiB", 3 << 29, false},
		{"0.5KiB", 512, false},
		{"10MB", 10_000_000, false},
		{"3kb", 3000, false},
		{"64m", 64 << 20, false},
		{"4k", 4096, false},
		{"", 0, true},
		{"MiB", 0, true},
		{"-1", 0, true},
		{"-1MiB", 0, true},
		{"12XB", 0, true},
		{"1e400", 0, true},
		{"NaN", 0, true},
		{"inf", 0, true},
		{"9999999TiB", 0, true},
		{"9223372036854775807", 9223372036854775807, false},
		{"9223372036854775808", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestSizeStringAndFlag(t *testing.T) {
	tests := []struct {
		in   Size
		want string
	}{
		{0, "0"}, {100, "100"}, {1 << 10, "1KiB"}, {1536, "1536"}, {64 << 20, "64MiB"}, {3 << 30, "3GiB"}, {1 << 40, "1TiB"},
		{1<<20 + 1<<10, "1025KiB"},
	}
	for _, tt := range tests {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("Size(%d).String() = %q, want %q", int64(tt.in), got, tt.want)
		}
		if back, err := ParseSize(tt.want); err != nil || back != tt.in {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.want, back, err, tt.in)
		}
	}
	var s Size = 7
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Var(&s, "size", "")
	if err := fs.Parse([]string{"--size", "8MiB"}); err != nil || s != 8<<20 {
		t.Fatalf("flag: %d, %v", s, err)
	}
	if err := s.Set("lots"); err == nil {
		t.Fatal("Set(lots) succeeded")
	}
}
