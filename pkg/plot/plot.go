// Package plot draws a bench report as one picture: ping-pong latency and
// bulk throughput, each per size, without and with sockhop side by side,
// with the ratio written above every pair of bars.
package plot

import (
	"errors"
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgpdf"
	"gonum.org/v1/plot/vg/vgsvg"

	"github.com/sockhop/sockhop/pkg/bench"
)

// Size of the picture; PNGs are rendered at pngDPI.
const (
	width  = 13 * vg.Inch
	height = 5.5 * vg.Inch
	pngDPI = 144
)

var (
	colorOff = color.RGBA{R: 160, G: 160, B: 160, A: 255}
	colorOn  = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	sans     = font.Font{Typeface: "Liberation", Variant: "Sans"}
)

// Panel is one chart: a figure per size, without (Off) and with (On) sockhop.
type Panel struct {
	Title  string
	XLabel string
	YLabel string
	// LowerIsBetter is true for latencies: the ratio is Off/On, else On/Off.
	LowerIsBetter bool
	Points        []Point
}

// Point is one size's pair of figures.
type Point struct {
	Label   string // "64 B", "16 KiB"
	Off, On float64
	Ratio   float64 // how many times better On is
}

// Figure is what WriteFile draws: a title line and two panels side by side.
type Figure struct {
	Title    string
	Subtitle string
	Latency  Panel
	Bulk     Panel
}

// FromReport picks the figures to draw from a bench report: p50 ping-pong
// latency with both ends on one CPU, and bulk throughput (client and sink
// on two CPUs when measured, else on one), under the policy that redirects
// into any receiver.
func FromReport(rep bench.Report) (Figure, error) {
	f := Figure{
		Title: "sockhop: loopback TCP without and with sockhop, measured side by side",
		Subtitle: fmt.Sprintf("Linux %s, %d CPUs, load average %.1f; %s, %s per mode. Ratio above each pair: how many times better with sockhop",
			rep.Machine.Kernel, rep.Machine.CPUs, rep.Machine.LoadBefore, runKind(rep.Quick), plural(rep.Rounds, "round")),
		Latency: Panel{
			Title:         "Latency: ping-pong round trip, p50 (client and server on one CPU)",
			XLabel:        "message size",
			YLabel:        "p50 round-trip time (µs), lower is better",
			LowerIsBetter: true,
			Points:        points(rep, bench.KindPingPong, "1cpu", "p50"),
		},
	}
	placement := "2cpu"
	f.Bulk.Points = points(rep, bench.KindBulk, placement, "throughput")
	if len(f.Bulk.Points) == 0 {
		placement = "1cpu"
		f.Bulk.Points = points(rep, bench.KindBulk, placement, "throughput")
	}
	where := "sender on CPU 0, sink on CPU 1"
	if placement == "1cpu" {
		where = "sender and sink on one CPU"
	}
	f.Bulk.Title = "Throughput: bulk send into a sink (" + where + ")"
	f.Bulk.XLabel = "write size"
	f.Bulk.YLabel = "throughput (MiB/s), higher is better"
	if len(f.Latency.Points) == 0 && len(f.Bulk.Points) == 0 {
		return f, errors.New("the report has no ping-pong (one CPU) or bulk case to plot")
	}
	return f, nil
}

func runKind(quick bool) string {
	if quick {
		return "quick run (a check, not a measurement)"
	}
	return "full run"
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

func points(rep bench.Report, kind, placement, metric string) []Point {
	var cs []bench.CaseResult
	for _, c := range rep.Cases {
		// The suite's own series (pingpong-*, bulk-*), not the app ↔
		// sidecar cases of the same kind.
		if c.Kind == kind && c.Placement == placement && c.Policy == bench.PolicyDefault && c.Error == "" &&
			strings.HasPrefix(c.ID, kind+"-") {
			cs = append(cs, c)
		}
	}
	sort.SliceStable(cs, func(i, j int) bool { return cs[i].Size < cs[j].Size })
	var ps []Point
	for _, c := range cs {
		if m, ok := c.Metric(metric); ok {
			ps = append(ps, Point{Label: sizeLabel(c.Size), Off: m.Off, On: m.On, Ratio: m.Ratio})
		}
	}
	return ps
}

func sizeLabel(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// WriteFile draws the figure into path; the extension picks the format
// (.png, .svg or .pdf).
func WriteFile(f Figure, path string) (err error) {
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), ".")
	out, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create plot: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("write plot %s: %w", path, cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	return Write(out, f, format)
}

// Write draws the figure in format "png", "svg" or "pdf".
func Write(w io.Writer, f Figure, format string) error {
	var c vg.CanvasWriterTo
	switch format {
	case "png":
		c = vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(width, height), vgimg.UseDPI(pngDPI))}
	case "svg":
		c = vgsvg.New(width, height)
	case "pdf":
		c = vgpdf.New(width, height)
	default:
		return fmt.Errorf("plot format %q: want png, svg or pdf", format)
	}
	if err := drawFigure(draw.New(c), f); err != nil {
		return err
	}
	if _, err := c.WriteTo(w); err != nil {
		return fmt.Errorf("write plot: %w", err)
	}
	return nil
}

func drawFigure(dc draw.Canvas, f Figure) error {
	// White background: PNG viewers otherwise show transparency.
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())

	title := textStyle(17, color.Black)
	sub := textStyle(11, color.Gray{Y: 70})
	top := dc.Max.Y - vg.Points(10)
	dc.FillText(title, vg.Point{X: dc.Center().X, Y: top}, f.Title)
	dc.FillText(sub, vg.Point{X: dc.Center().X, Y: top - title.Height(f.Title) - vg.Points(4)}, f.Subtitle)
	header := title.Height(f.Title) + sub.Height(f.Subtitle) + vg.Points(26)

	var panels []*plot.Plot
	for _, p := range []Panel{f.Latency, f.Bulk} {
		pl, err := panel(p, width/2)
		if err != nil {
			return err
		}
		panels = append(panels, pl)
	}
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Points(28), PadLeft: vg.Points(10), PadRight: vg.Points(10), PadBottom: vg.Points(8)}
	area := draw.Crop(dc, 0, 0, 0, -header)
	canvases := plot.Align([][]*plot.Plot{panels}, tiles, area)
	for i, pl := range panels {
		pl.Draw(canvases[0][i])
	}
	return nil
}

// Value prints a measured value with about three significant digits, as
// the plot labels its bars (and the CLI prints its tables).
func Value(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func textStyle(size vg.Length, c color.Color) text.Style {
	return text.Style{
		Color:   c,
		Font:    font.From(sans, size),
		XAlign:  draw.XCenter,
		YAlign:  draw.YTop,
		Handler: plot.DefaultTextHandler,
	}
}

// panel builds one grouped bar chart.
func panel(p Panel, panelWidth vg.Length) (*plot.Plot, error) {
	pl := plot.New()
	pl.Title.Text = p.Title
	pl.Title.TextStyle.Font = font.From(sans, 13)
	pl.Title.Padding = vg.Points(10)
	for _, ax := range []*plot.Axis{&pl.X, &pl.Y} {
		ax.Label.TextStyle.Font = font.From(sans, 12)
		ax.Tick.Label.Font = font.From(sans, 11)
	}
	pl.X.Label.Text = p.XLabel
	pl.Y.Label.Text = p.YLabel
	pl.Y.Min = 0
	grid := plotter.NewGrid()
	grid.Vertical.Color = nil // bars sit on the category ticks
	pl.Add(grid)
	if len(p.Points) == 0 {
		pl.Title.Text += "\n(not in this report)"
		pl.X.Max, pl.Y.Max = 1, 1
		return pl, nil
	}

	off, on := make(plotter.Values, len(p.Points)), make(plotter.Values, len(p.Points))
	var labels []string
	top := 0.0
	for i, pt := range p.Points {
		off[i], on[i] = pt.Off, pt.On
		labels = append(labels, pt.Label)
		top = max(top, pt.Off, pt.On)
	}
	barW := panelWidth / vg.Length(len(p.Points)+1) * 0.32
	bOff, err := plotter.NewBarChart(off, barW)
	if err != nil {
		return nil, fmt.Errorf("plot %q: %w", p.Title, err)
	}
	bOff.Color, bOff.LineStyle.Width, bOff.Offset = colorOff, 0, -barW/2
	bOn, err := plotter.NewBarChart(on, barW)
	if err != nil {
		return nil, fmt.Errorf("plot %q: %w", p.Title, err)
	}
	bOn.Color, bOn.LineStyle.Width, bOn.Offset = colorOn, 0, barW/2
	pl.Add(bOff, bOn)
	pl.NominalX(labels...)
	pl.X.Min, pl.X.Max = -0.6, float64(len(p.Points))-0.4

	// Each bar's value on top of it, small.
	for _, b := range []struct {
		vals   plotter.Values
		offset vg.Length
	}{{off, -barW / 2}, {on, barW / 2}} {
		xys := make(plotter.XYs, len(b.vals))
		texts := make([]string, len(b.vals))
		for i, v := range b.vals {
			xys[i] = plotter.XY{X: float64(i), Y: v}
			texts[i] = Value(v)
		}
		vl, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: texts})
		if err != nil {
			return nil, fmt.Errorf("plot %q: %w", p.Title, err)
		}
		for i := range vl.TextStyle {
			sty := textStyle(9, color.Gray{Y: 60})
			sty.YAlign = draw.YBottom
			vl.TextStyle[i] = sty
		}
		vl.Offset = vg.Point{X: b.offset, Y: vg.Points(2)}
		pl.Add(vl)
	}

	// The ratio above each pair, green when sockhop helps, red when not.
	xys := make(plotter.XYs, len(p.Points))
	texts := make([]string, len(p.Points))
	for i, pt := range p.Points {
		xys[i] = plotter.XY{X: float64(i), Y: max(pt.Off, pt.On)}
		texts[i] = fmt.Sprintf("%.2f×", pt.Ratio)
	}
	lbl, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: texts})
	if err != nil {
		return nil, fmt.Errorf("plot %q: %w", p.Title, err)
	}
	for i, pt := range p.Points {
		sty := textStyle(13, color.RGBA{R: 0, G: 120, B: 40, A: 255})
		if pt.Ratio < 1 {
			sty.Color = color.RGBA{R: 190, G: 30, B: 30, A: 255}
		}
		sty.YAlign = draw.YBottom
		lbl.TextStyle[i] = sty
	}
	lbl.Offset = vg.Point{Y: vg.Points(15)}
	pl.Add(lbl)

	// Room above the tallest bar for its ratio and for the legend.
	pl.Y.Max = top * 1.38
	pl.Legend.Add("without sockhop (loopback TCP)", bOff)
	pl.Legend.Add("with sockhop (sk_msg redirect)", bOn)
	pl.Legend.Top, pl.Legend.Left = true, true
	pl.Legend.TextStyle.Font = font.From(sans, 11)
	pl.Legend.XOffs, pl.Legend.YOffs = vg.Points(8), -vg.Points(4)
	return pl, nil
}
