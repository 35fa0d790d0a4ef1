package proto

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func decodeAll(t *testing.T, r io.Reader, max int) ([]string, error) {
	t.Helper()
	d := NewDecoder(r, max)
	var out []string
	for {
		v, err := d.Next()
		if err != nil {
			if err == io.EOF {
				return out, nil
			}
			return out, err
		}
		out = append(out, string(v))
	}
}

func TestDecoder(t *testing.T) {
	pretty := "{\n    \"cmd\": \"login\",\n    \"password\": \"1\",\n    \"user\": \"小明\"\n}\n"
	tests := []struct {
		name  string
		in    string
		max   int
		want  []string
		err   error
		split bool
	}{
		{name: "one per line", in: `{"cmd":"ping"}` + "\n" + `{"cmd":"pong"}` + "\n",
			want: []string{`{"cmd":"ping"}`, `{"cmd":"pong"}`}},
		{name: "no delimiter", in: `{"cmd":"a"}{"cmd":"b"}`, want: []string{`{"cmd":"a"}`, `{"cmd":"b"}`}},
		{name: "pretty printed", in: pretty + pretty, want: []string{strings.TrimSpace(pretty), strings.TrimSpace(pretty)}},
		{name: "trailing semicolons", in: `{"cmd":"a"};{"cmd":"b"};` + "\n", want: []string{`{"cmd":"a"}`, `{"cmd":"b"}`}},
		{name: "braces in strings", in: `{"t":"}{\"}"}{"u":"\\"}`, want: []string{`{"t":"}{\"}"}`, `{"u":"\\"}`}},
		{name: "nested", in: `{"a":{"b":[1,{"c":2}]}}`, want: []string{`{"a":{"b":[1,{"c":2}]}}`}},
		{name: "scalars", in: `123 "x" true [1]{}`, want: []string{`123`, `"x"`, `true`, `[1]`, `{}`}},
		{name: "split over segments", in: pretty, split: true, want: []string{strings.TrimSpace(pretty)}},
		{name: "stray close", in: `}`, err: ErrSyntax},
		{name: "too large object", in: `{"t":"` + strings.Repeat("x", 100) + `"}`, max: 50, err: ErrTooLarge},
		{name: "too large scalar", in: strings.Repeat("1", 100), max: 50, err: ErrTooLarge},
		{name: "exactly max", in: `{"t":"xx"}`, max: 10, want: []string{`{"t":"xx"}`}},
		{name: "truncated", in: `{"cmd":"a"`, err: io.ErrUnexpectedEOF},
		{name: "empty", in: " \n\t ", want: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r io.Reader = strings.NewReader(tc.in)
			if tc.split {
				r = iotest.OneByteReader(r)
			}
			got, err := decodeAll(t, r, tc.max)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			if strings.Join(got, "\x00") != strings.Join(tc.want, "\x00") {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// FuzzDecoder checks that the decoder never panics, never returns a value
// over the limit, and that what it returns for well-formed input
// concatenates back to the input minus separators.
func FuzzDecoder(f *testing.F) {
	for _, s := range []string{`{"cmd":"ping"}`, "{\n \"a\": [1, \"}\"]\n};{}", `"x\"y"`, `12 true`, `}{`, `[[[`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		const max = 256
		d := NewDecoder(bytes.NewReader(in), max)
		total := 0
		for {
			v, err := d.Next()
			if err != nil {
				return
			}
			if len(v) == 0 || len(v) > max {
				t.Fatalf("value of length %d", len(v))
			}
			total += len(v)
			if total > len(in) {
				t.Fatalf("decoded more bytes than the input holds")
			}
		}
	})
}

func BenchmarkDecoder(b *testing.B) {
	frame := []byte(`{"cmd":"private_chat","user_from":"alice","user_to":"bob","text":"hello there, how are you?"}` + "\n")
	in := bytes.Repeat(frame, 1000)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		d := NewDecoder(bytes.NewReader(in), 0)
		for {
			if _, err := d.Next(); err != nil {
				break
			}
		}
	}
}
