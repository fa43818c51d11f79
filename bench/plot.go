package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// palette colours the series of a chart (ColorBrewer Dark2 and Set1).
var palette = []string{"#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666", "#e41a1c", "#377eb8", "#4daf4a", "#984ea3"}

type series struct {
	name string
	pts  []Result // sorted by clients
}

// WriteSVG draws two charts side by side, throughput and p50 latency
// against client concurrency (log2 x axis), with one line per system,
// workload and durability. It needs results at two or more concurrencies
// to draw lines; single points are drawn as dots.
func (r *Report) WriteSVG(w io.Writer) error {
	byName := map[string]*series{}
	var names []string
	for _, x := range r.Results {
		n := x.System + " " + x.Workload
		if x.System != "etcd" {
			n += " (" + short(x.Durability) + ")"
		}
		s, ok := byName[n]
		if !ok {
			s = &series{name: n}
			byName[n] = s
			names = append(names, n)
		}
		s.pts = append(s.pts, x)
	}
	all := make([]*series, 0, len(names))
	for _, n := range names {
		s := byName[n]
		slices.SortFunc(s.pts, func(a, b Result) int { return a.Clients - b.Clients })
		all = append(all, s)
	}
	const (
		pw, ph     = 460, 320 // one panel's plot area
		ml, mt, mb = 70, 40, 50
		gap        = 110
		legendH    = 16
	)
	width := ml + pw + gap + pw + 30
	height := mt + ph + mb + legendH*((len(all)+1)/2) + 20
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	minC, maxC := math.MaxInt, 1
	for _, x := range r.Results {
		minC, maxC = min(minC, x.Clients), max(maxC, x.Clients)
	}
	if minC == maxC {
		maxC = minC * 2
	}
	xpos := func(c int, left int) float64 {
		return float64(left) + float64(pw)*math.Log2(float64(c)/float64(minC))/math.Log2(float64(maxC)/float64(minC))
	}
	panel := func(left int, title string, val func(Result) float64, fmtv func(float64) string, logY bool) {
		lo, hi := math.MaxFloat64, 0.0
		for _, x := range r.Results {
			v := val(x)
			if v > 0 {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
		if hi == 0 {
			lo, hi = 1, 10
		}
		if logY {
			lo, hi = math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi)))
		} else {
			lo, hi = 0, hi*1.1
		}
		ypos := func(v float64) float64 {
			if logY {
				if v <= 0 {
					v = lo
				}
				return float64(mt+ph) - float64(ph)*(math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))
			}
			return float64(mt+ph) - float64(ph)*(v-lo)/(hi-lo)
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="13" font-weight="bold">%s</text>`+"\n", left, mt-12, title)
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>`+"\n", left, mt, pw, ph)
		// y grid: 5 steps linear, or each decade.
		var ticks []float64
		if logY {
			for v := lo; v <= hi*1.0001; v *= 10 {
				ticks = append(ticks, v)
			}
		} else {
			for i := 0; i <= 5; i++ {
				ticks = append(ticks, lo+(hi-lo)*float64(i)/5)
			}
		}
		for _, v := range ticks {
			y := ypos(v)
			fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#eee"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left, left+pw, y, y, left-5, y+4, fmtv(v))
		}
		for c := minC; c <= maxC; c *= 2 {
			x := xpos(c, left)
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#eee"/><text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", x, x, mt, mt+ph, x, mt+ph+15, c)
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">clients</text>`+"\n", left+pw/2, mt+ph+32)
		for i, s := range all {
			col := palette[i%len(palette)]
			var pts []string
			for _, x := range s.pts {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", xpos(x.Clients, left), ypos(val(x))))
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"/>`+"\n", xpos(x.Clients, left), ypos(val(x)), col)
			}
			if len(pts) > 1 {
				fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="1.5"/>`+"\n", strings.Join(pts, " "), col)
			}
		}
	}
	panel(ml, "throughput (ops/s)", func(x Result) float64 { return x.OpsPerSec }, func(v float64) string {
		if v >= 1000 {
			return fmt.Sprintf("%.0fk", v/1000)
		}
		return fmt.Sprintf("%.0f", v)
	}, false)
	panel(ml+pw+gap, "p50 latency", func(x Result) float64 { return float64(x.P50) }, func(v float64) string { return us(time.Duration(v)) }, true)
	for i, s := range all {
		x := ml + (i%2)*(pw+gap)
		y := mt + ph + mb + legendH*(i/2) + 10
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="3" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n", x, y-4, palette[i%len(palette)], x+18, y, escape(s.name))
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
