package bench

import (
	"bufio"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strings"
)

// Series is one named latency distribution in a chart.
type Series struct {
	Name string
	H    *Histogram
}

// Chart geometry. The x axis is "nines": x = log10(1/(1-q)), so 90%, 99%,
// 99.9% and 99.99% are evenly spaced and the tail, where the interesting
// latencies are, gets as much room as the median.
const (
	svgW, plotH      = 900, 380
	padL, padR, padT = 80, 30, 50
	axisH            = 58 // below the plot: tick labels and the axis title
	legendLine       = 16
	maxNines         = 4.0
	curvePoints      = 400
	minLatencyMs     = 1e-4 // floor for the log axis: 0.1µs
)

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"}

// WriteSVG draws the latency percentile distribution of each series:
// latency on a log axis against percentile from 0 to 99.99.
func WriteSVG(w io.Writer, title string, series []Series) error {
	bw := bufio.NewWriter(w)
	var ss []Series
	for _, s := range series {
		if s.H != nil && s.H.Count() > 0 {
			ss = append(ss, s)
		}
	}
	// One legend line per series under the plot; the height grows with them.
	plotBottom := padT + plotH
	svgH := plotBottom + axisH + legendLine*max(len(ss), 1) + 12
	fmt.Fprintf(bw, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		svgW, svgH, svgW, svgH)
	fmt.Fprintf(bw, `<rect width="%d" height="%d" fill="white"/>`+"\n", svgW, svgH)
	fmt.Fprintf(bw, `<text x="%d" y="28" font-size="16" font-weight="bold">%s</text>`+"\n", padL, esc(title))
	if len(ss) == 0 {
		fmt.Fprintf(bw, `<text x="%d" y="%d">no latency samples</text>`+"\n", svgW/2-60, svgH/2)
		fmt.Fprintln(bw, `</svg>`)
		return bw.Flush()
	}

	lo, hi := math.Inf(1), 0.0
	for _, s := range ss {
		lo = math.Min(lo, math.Max(ms(s.H.Min()), minLatencyMs))
		hi = math.Max(hi, math.Max(ms(s.H.Max()), minLatencyMs))
	}
	decLo, decHi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if decHi <= decLo {
		decHi = decLo + 1
	}
	plotW := float64(svgW - padL - padR)
	xOf := func(nines float64) float64 { return padL + nines/maxNines*plotW }
	yOf := func(msv float64) float64 {
		l := math.Log10(math.Max(msv, minLatencyMs))
		return padT + plotH - (l-decLo)/(decHi-decLo)*plotH
	}

	// Grid and axes.
	fmt.Fprintln(bw, `<g stroke="#ddd" stroke-width="1">`)
	for d := decLo; d <= decHi; d++ {
		fmt.Fprintf(bw, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f"/>`+"\n", padL, yOf(math.Pow(10, d)), svgW-padR, yOf(math.Pow(10, d)))
	}
	for n := 0.0; n <= maxNines; n++ {
		fmt.Fprintf(bw, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d"/>`+"\n", xOf(n), padT, xOf(n), plotBottom)
	}
	fmt.Fprintln(bw, `</g>`)
	fmt.Fprintf(bw, `<rect x="%d" y="%d" width="%.0f" height="%d" fill="none" stroke="#444"/>`+"\n", padL, padT, plotW, plotH)
	for d := decLo; d <= decHi; d++ {
		fmt.Fprintf(bw, `<text x="%d" y="%.1f" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n",
			padL-6, yOf(math.Pow(10, d)), esc(decadeLabel(d)))
	}
	for n := 0.0; n <= maxNines; n++ {
		fmt.Fprintf(bw, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", xOf(n), plotBottom+18, esc(ninesLabel(n)))
	}
	fmt.Fprintf(bw, `<text x="%.0f" y="%d" text-anchor="middle">percentile</text>`+"\n", padL+plotW/2, plotBottom+36)
	fmt.Fprintf(bw, `<text transform="translate(18 %d) rotate(-90)" text-anchor="middle">latency (log scale)</text>`+"\n", padT+plotH/2)

	// Curves and legend.
	for i, s := range ss {
		color := palette[i%len(palette)]
		var pts strings.Builder
		for j := 0; j <= curvePoints; j++ {
			n := maxNines * float64(j) / curvePoints
			q := 1 - math.Pow(10, -n)
			fmt.Fprintf(&pts, "%.1f,%.1f ", xOf(n), yOf(ms(s.H.Quantile(q))))
		}
		fmt.Fprintf(bw, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", color, strings.TrimSpace(pts.String()))
		x, y := padL, plotBottom+axisH+i*legendLine
		label := fmt.Sprintf("%s  p50=%s p99=%s p99.9=%s max=%s (n=%d)", s.Name, fmtLatency(s.H.Quantile(0.5)),
			fmtLatency(s.H.Quantile(0.99)), fmtLatency(s.H.Quantile(0.999)), fmtLatency(s.H.Max()), s.H.Count())
		fmt.Fprintf(bw, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", x, y-4, x+20, y-4, color)
		fmt.Fprintf(bw, `<text x="%d" y="%d">%s</text>`+"\n", x+26, y, esc(label))
	}
	fmt.Fprintln(bw, `</svg>`)
	return bw.Flush()
}

func decadeLabel(d float64) string {
	v := math.Pow(10, d) // milliseconds
	switch {
	case v >= 1000:
		return fmt.Sprintf("%gs", v/1000)
	case v >= 1:
		return fmt.Sprintf("%gms", v)
	default:
		return fmt.Sprintf("%gµs", math.Round(v*1e6)/1e3)
	}
}

func ninesLabel(n float64) string {
	if n == 0 {
		return "0%"
	}
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.4f", 100*(1-math.Pow(10, -n))), "0"), ".") + "%"
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
