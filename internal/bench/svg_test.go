package bench

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"
)

// parseSVG checks that b is well-formed XML with an <svg> root and
// returns how many times each element occurs and all character data.
func parseSVG(t *testing.T, b []byte) (map[string]int, string) {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(b))
	counts := map[string]int{}
	var text strings.Builder
	depth := 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("invalid XML: %v\n%s", err, b)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if depth == 0 && (tok.Name.Local != "svg" || tok.Name.Space != "http://www.w3.org/2000/svg") {
				t.Fatalf("root is %v, want svg in the SVG namespace", tok.Name)
			}
			depth++
			counts[tok.Name.Local]++
		case xml.EndElement:
			depth--
		case xml.CharData:
			text.Write(tok)
		}
	}
	if depth != 0 || counts["svg"] != 1 {
		t.Fatalf("unbalanced document or svg count %d", counts["svg"])
	}
	return counts, text.String()
}

func TestWriteSVG(t *testing.T) {
	hist := func(vals ...int64) *Histogram {
		h := new(Histogram)
		for _, v := range vals {
			h.Record(v)
		}
		return h
	}
	spread := new(Histogram)
	for i := int64(1); i <= 100000; i++ {
		spread.Record(i * 997)
	}
	tests := []struct {
		name      string
		title     string
		series    []Series
		polylines int
		wantText  []string
	}{
		{"no series", "empty", nil, 0, []string{"no latency samples"}},
		{"only empty histograms", "t", []Series{{"a", nil}, {"b", new(Histogram)}}, 0, []string{"no latency samples"}},
		{"one series", "private", []Series{{"private pairs=2", spread}}, 1, []string{"private pairs=2", "99.99%", "0%"}},
		{"escaping", `<&"'> title`, []Series{{`a<b>&"c"`, hist(1000, 2000)}}, 1, []string{`<&"'> title`, `a<b>&"c"`}},
		{"invalid UTF-8 in a name", "t", []Series{{"bad\xff", hist(5)}}, 1, nil},
		{"single value, zero", "t", []Series{{"zero", hist(0)}}, 1, nil},
		{"many series, wide range", "all", []Series{
			{"s1", spread}, {"s2", hist(1, 10, 100)}, {"s3", hist(5e9, 6e9)}, {"s4", hist(42)},
			{"s5", hist(7)}, {"s6", hist(8)}, {"s7", hist(9)}, {"s8", hist(10)}, {"s9", hist(11)},
		}, 9, []string{"s9", "10s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := WriteSVG(&b, tt.title, tt.series); err != nil {
				t.Fatal(err)
			}
			counts, text := parseSVG(t, b.Bytes())
			if counts["polyline"] != tt.polylines {
				t.Errorf("%d polylines, want %d", counts["polyline"], tt.polylines)
			}
			for _, s := range tt.wantText {
				if !strings.Contains(text, s) {
					t.Errorf("text %q missing from\n%s", s, text)
				}
			}
			if bytes.Contains(b.Bytes(), []byte("NaN")) || bytes.Contains(b.Bytes(), []byte("Inf")) {
				t.Errorf("non-finite coordinates:\n%s", b.Bytes())
			}
		})
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriteSVGReportsWriteErrors(t *testing.T) {
	h := new(Histogram)
	h.Record(1)
	if err := WriteSVG(failWriter{}, "t", []Series{{"x", h}}); err == nil {
		t.Fatal("no error from a failing writer")
	}
}
