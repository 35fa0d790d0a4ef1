package proto

import (
	"encoding/json"
	"testing"
)

func TestObjectKeepsOrderAndEscapes(t *testing.T) {
	got := string(Object("cmd", "x_reply", "result", "success", "text", "a\"b\n<", "n", 3, "raw", json.RawMessage(`"7"`)))
	want := `{"cmd":"x_reply","result":"success","text":"a\"b\n\u003c","n":3,"raw":"7"}`
	if got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	if !json.Valid([]byte(got)) {
		t.Fatal("invalid JSON")
	}
}

func TestStrField(t *testing.T) {
	obj := []byte(`{"id":{"cmd":"x"},"cmd":"add_reply","result":"success","friend":"bob","n":3}`)
	tests := []struct{ key, want string }{
		{"cmd", "x"}, // the first match wins; replies put cmd first
		{"result", "success"},
		{"friend", "bob"},
		{"n", ""},
		{"missing", ""},
	}
	for _, tc := range tests {
		if got := StrField(obj, tc.key); got != tc.want {
			t.Errorf("StrField(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
	if got := StrField([]byte(`{"cmd":"unterminated`), "cmd"); got != "" {
		t.Errorf("unterminated value: %q", got)
	}
}
