package workers

import (
	"encoding/json"
	"testing"
)

func TestFieldsStr(t *testing.T) {
	var f fields
	if err := json.Unmarshal([]byte(`{"a":"x","b":1,"c":null}`), &f); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		v           string
		present, ok bool
	}{
		{"a", "x", true, true}, {"b", "", true, false}, {"c", "", false, true}, {"d", "", false, true},
	}
	for _, tc := range tests {
		v, p, ok := f.str(tc.name)
		if v != tc.v || p != tc.present || ok != tc.ok {
			t.Errorf("str(%q) = %q,%v,%v; want %q,%v,%v", tc.name, v, p, ok, tc.v, tc.present, tc.ok)
		}
	}
}
