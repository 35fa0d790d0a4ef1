package bench

import (
	"slices"
	"testing"
)

func TestEnvAddrs(t *testing.T) {
	tests := []struct {
		name     string
		addr2    string
		n, from  int
		want     []string
		wantRecv string
	}{
		{"no addr2: all on addr", "", 4, 2, []string{"a:1", "a:1", "a:1", "a:1"}, "a:1"},
		{"receivers on addr2", "b:2", 4, 2, []string{"a:1", "a:1", "b:2", "b:2"}, "b:2"},
		{"nobody receives", "b:2", 3, 3, []string{"a:1", "a:1", "a:1"}, "b:2"},
		{"everybody receives", "b:2", 2, 0, []string{"b:2", "b:2"}, "b:2"},
		{"no users", "b:2", 0, 0, []string{}, "b:2"},
	}
	for _, tt := range tests {
		env := &Env{Addr: "a:1", Addr2: tt.addr2}
		if got := env.addrs(tt.n, tt.from); !slices.Equal(got, tt.want) {
			t.Errorf("%s: addrs(%d, %d) = %q, want %q", tt.name, tt.n, tt.from, got, tt.want)
		}
		if got := env.recvAddr(); got != tt.wantRecv {
			t.Errorf("%s: recvAddr() = %q, want %q", tt.name, got, tt.wantRecv)
		}
	}
}
