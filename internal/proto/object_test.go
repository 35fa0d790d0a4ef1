package proto

import (
	"encoding/json"
	"strings"
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

func TestResult(t *testing.T) {
	tests := []struct {
		name  string
		got   []byte
		want  string
		valid bool
	}{
		{"plain", Result("add", "success", "friend", "bob"), `{"cmd":"add_reply","result":"success","friend":"bob"}`, true},
		{"no extra", Result("login", "unavailable"), `{"cmd":"login_reply","result":"unavailable"}`, true},
		{"escaped command", Result(`a"b`, "x"), `{"cmd":"a\"b_reply","result":"x"}`, true},
		{"appended", AppendResult([]byte("prefix "), "private_chat", "success", "user_to", "小明"),
			`prefix {"cmd":"private_chat_reply","result":"success","user_to":"小明"}`, false},
		// Values of other types are not encoded by reflection: they are null.
		{"other types", Object("list", []string{"a"}, "ok", true), `{"list":null,"ok":true}`, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if string(tc.got) != tc.want {
				t.Fatalf("got %s\nwant %s", tc.got, tc.want)
			}
			if tc.valid && !json.Valid(tc.got) {
				t.Fatal("invalid JSON")
			}
		})
	}
}

// Building the messages every chat line needs costs one allocation: the
// line itself, however many values it has.
func TestObjectAllocations(t *testing.T) {
	from, to, text := "alice", "bob", strings.Repeat("x", 40)
	if n := testing.AllocsPerRun(100, func() {
		_ = Object("cmd", "private_chat", "user_from", from, "user_to", to, "text", text, "time", int64(1), "msg_id", "id")
	}); n != 1 {
		t.Errorf("Object: %v allocations", n)
	}
	if n := testing.AllocsPerRun(100, func() { _ = Result("private_chat", "success", "user_to", to) }); n != 1 {
		t.Errorf("Result: %v allocations", n)
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

// AppendString must agree with encoding/json byte for byte: clients may
// compare what they sent with what comes back.
func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote\back`, "ctl\x00\x01\x1f\n\r\t", "<a&b>", "小明 ☃",
		"bad\xffutf8\xc3", "line\u2028sep\u2029", strings.Repeat("x", 300)} {
		want, _ := json.Marshal(s)
		if got := AppendString(nil, s); string(got) != string(want) {
			t.Errorf("AppendString(%q) = %s, want %s", s, got, want)
		}
	}
}

func FuzzAppendString(f *testing.F) {
	f.Add("a\"b\\c<>&\u2028\xff")
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		if got := AppendString(nil, s); string(got) != string(want) {
			t.Fatalf("AppendString(%q) = %s, want %s", s, got, want)
		}
	})
}

func BenchmarkObject(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = Object("cmd", "private_chat", "user_from", "alice", "user_to", "bob", "text", "hello there, how are you?",
			"time", int64(1795596136144), "msg_id", "5W2Kkpg77xg3GqeEYSZ6Cz")
	}
}
