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
