package proto

import (
	"strings"
	"testing"
)

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"bob", true}, {"小明", true}, {"a.b", true}, {"*", true}, {">", true},
		{strings.Repeat("名", 32), true}, {strings.Repeat("名", 33), false},
		{"", false}, {"a b", false}, {"a|b", false}, {"a\x00b", false}, {"a\tb", false},
		{"\xff", false}, {"a\u200bb", false}, {"a\u3000b", false},
	}
	for _, tc := range tests {
		if got := ValidName(tc.name); got != tc.ok {
			t.Errorf("ValidName(%q) = %v, want %v", tc.name, got, tc.ok)
		}
	}
}

func TestTokenIsOneSubjectToken(t *testing.T) {
	for _, n := range []string{"a.b", ">", "*", "小明", "a b", "..."} {
		tok := Token(n)
		if tok == "" || strings.ContainsAny(tok, ".*> \t") {
			t.Errorf("Token(%q) = %q is not a safe subject token", n, tok)
		}
	}
	if Token("a") == Token("b") {
		t.Fatal("distinct names share a token")
	}
}

func TestFileLength(t *testing.T) {
	tests := []struct {
		raw  string
		max  int64
		want int64
		ok   bool
	}{
		{`1024`, 1 << 32, 1024, true},
		{`"1024"`, 1 << 32, 1024, true},
		{`0`, 10, 0, true},
		{`"0"`, 10, 0, true},
		{`10`, 10, 10, true},
		{`11`, 10, 0, false},
		{`-1`, 10, 0, false},
		{`"-1"`, 10, 0, false},
		{`1.5`, 10, 0, false},
		{`1e3`, 1 << 20, 0, false},
		{`""`, 10, 0, false},
		{`" 5"`, 10, 0, false},
		{`"5a"`, 10, 0, false},
		{`null`, 10, 0, false},
		{`true`, 10, 0, false},
		{`[1]`, 10, 0, false},
		{`99999999999999999999`, 1 << 62, 0, false},
		{``, 10, 0, false},
	}
	for _, tc := range tests {
		got, ok := FileLength([]byte(tc.raw), tc.max)
		if got != tc.want || ok != tc.ok {
			t.Errorf("FileLength(%s, %d) = %d, %v; want %d, %v", tc.raw, tc.max, got, ok, tc.want, tc.ok)
		}
	}
}

func TestHandoffReply(t *testing.T) {
	const inbox = "_INBOX.abc.def"
	subject := HandoffReply("W1", 42, inbox)
	if target, ok := HandoffTarget(subject); !ok || target != inbox {
		t.Fatalf("HandoffTarget(%q) = %q, %v", subject, target, ok)
	}
	if tok, ok := HandoffToken(subject, HandoffPrefix+"W1."); !ok || tok != 42 {
		t.Fatalf("HandoffToken(%q) = %d, %v", subject, tok, ok)
	}
	for _, s := range []string{"", "_INBOX.abc.def", HandoffPrefix, HandoffPrefix + "W1", HandoffPrefix + "W1.7", HandoffPrefix + "W1.7."} {
		if target, ok := HandoffTarget(s); ok {
			t.Errorf("HandoffTarget(%q) = %q, want none", s, target)
		}
	}
	for _, s := range []string{HandoffPrefix + "W2.7.x", HandoffPrefix + "W1.x.y", HandoffPrefix + "W1."} {
		if tok, ok := HandoffToken(s, HandoffPrefix+"W1."); ok {
			t.Errorf("HandoffToken(%q) = %d, want none", s, tok)
		}
	}
}

func TestSeq(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
	}{
		{"", 0},
		{"0", 0},
		{"42", 42},
		{"18446744073709551615", 18446744073709551615},
		{"18446744073709551616", 0}, // out of range
		{"-1", 0},
		{"4x", 0},
		{" 4", 0},
	}
	for _, tt := range tests {
		if got := Seq(tt.in); got != tt.want {
			t.Errorf("Seq(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
}
