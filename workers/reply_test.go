package workers

import (
	"testing"
)

func TestFieldsStr(t *testing.T) {
	var f fields
	if err := f.decode([]byte(`{"user":"x","friend":1,"group":null,"User":"case matters","text":"a\"b"}`)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		v           string
		present, ok bool
	}{
		{"user", "x", true, true},
		{"friend", "", true, false},
		{"group", "", false, true},
		{"password", "", false, true},
		{"text", `a"b`, true, true},
		{"unknown", "", false, true},
	}
	for _, tc := range tests {
		v, p, ok := f.str(tc.name)
		if v != tc.v || p != tc.present || ok != tc.ok {
			t.Errorf("str(%q) = %q,%v,%v; want %q,%v,%v", tc.name, v, p, ok, tc.v, tc.present, tc.ok)
		}
	}
	for _, bad := range []string{`[1]`, `null`, `{"user":`, ``} {
		var f fields
		if err := f.decode([]byte(bad)); err == nil {
			t.Errorf("decode(%q) accepted", bad)
		}
	}
}
