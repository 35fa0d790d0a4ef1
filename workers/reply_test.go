package workers

import (
	"encoding/json"
	"testing"
)

func TestObjKeepsOrderAndEscapes(t *testing.T) {
	got := string(obj("cmd", "x_reply", "result", "success", "text", "a\"b\n<", "n", 3))
	want := `{"cmd":"x_reply","result":"success","text":"a\"b\n\u003c","n":3}`
	if got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	if !json.Valid([]byte(got)) {
		t.Fatal("invalid JSON")
	}
}

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
