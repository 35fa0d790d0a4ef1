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
