package main

import (
	"fmt"
	"image/color"
	"os"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/spoke-proxy/spoke/scale-sim/tracker"
)

// writePlot draws the propagation latency over time (p50, p99 and max of
// each second) above its distribution, as a PNG.
func writePlot(path string, tr *tracker.Tracker, rep *report) error {
	timeline := tr.Timeline()
	if len(timeline) == 0 {
		return fmt.Errorf("plot: no propagation was measured")
	}
	title := fmt.Sprintf("%s: %v nodes, %v services, %v changes", rep.fields["scenario"], rep.fields["nodes"], rep.fields["services"], rep.fields["changes"])

	over := plot.New()
	over.Title.Text = title + ": propagation latency per second"
	over.X.Label.Text = "seconds since start"
	over.Y.Label.Text = "ms"
	var all tracker.Histogram
	lines := []struct {
		name  string
		value func(tracker.Second) float64
		color color.Color
	}{
		{"p50", func(s tracker.Second) float64 { return ms(s.P50) }, color.RGBA{B: 200, A: 255}},
		{"p99", func(s tracker.Second) float64 { return ms(s.P99) }, color.RGBA{R: 220, G: 120, A: 255}},
		{"max", func(s tracker.Second) float64 { return ms(s.Max) }, color.RGBA{R: 200, A: 255}},
	}
	for _, s := range timeline {
		all.Merge(s.Histogram)
	}
	for _, l := range lines {
		pts := make(plotter.XYs, len(timeline))
		for i, s := range timeline {
			pts[i] = plotter.XY{X: s.Offset.Seconds(), Y: l.value(s)}
		}
		line, err := plotter.NewLine(pts)
		if err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		line.Color = l.color
		line.Width = vg.Points(1.2)
		over.Add(line)
		over.Legend.Add(l.name, line)
	}
	over.Legend.Top = true
	over.Add(plotter.NewGrid())

	dist := plot.New()
	dist.Title.Text = fmt.Sprintf("distribution over %d node-changes (p50 %s, p99 %s, max %s)",
		all.Count(), fmtDur(all.Quantile(0.5)), fmtDur(all.Quantile(0.99)), fmtDur(all.Max()))
	dist.X.Label.Text = "propagation latency, ms"
	dist.Y.Label.Text = "node-changes"
	var pts plotter.XYs
	limit := float64(all.Quantile(0.999).Microseconds())/1000*1.2 + 1
	all.Buckets(func(lower time.Duration, count uint64) {
		x := float64(lower.Microseconds()) / 1000
		if x <= limit {
			pts = append(pts, plotter.XY{X: x, Y: float64(count)})
		}
	})
	h, err := plotter.NewHistogram(pts, 60)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	h.FillColor = color.RGBA{B: 180, G: 90, A: 255}
	dist.Add(h)

	const w, ht = 10 * vg.Inch, 8 * vg.Inch
	img := vgimg.New(w, ht)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadY: vg.Points(12), PadTop: vg.Points(6), PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(12)}
	canvases := plot.Align([][]*plot.Plot{{over}, {dist}}, tiles, dc)
	over.Draw(canvases[0][0])
	dist.Draw(canvases[1][0])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}
