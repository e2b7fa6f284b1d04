package plot

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sockhop/sockhop/pkg/bench"
)

// report is a bench report with the figures DESIGN.md measured on 6.18.
func report() bench.Report {
	rep := bench.Report{Rounds: 3, Machine: bench.Machine{Kernel: "6.18.44", CPUs: 2}}
	lat := func(size int, off, on float64) bench.CaseResult {
		return bench.CaseResult{ID: "pingpong-1cpu", Kind: bench.KindPingPong, Placement: "1cpu", Size: size,
			Policy: bench.PolicyDefault, Metrics: []bench.Metric{
				{Name: "p50", Unit: "us", Off: off, On: on, Ratio: off / on, LowerIsBetter: true},
				{Name: "p99", Unit: "us", Off: off * 2, On: on * 2, Ratio: off / on, LowerIsBetter: true},
			}}
	}
	thr := func(pl string, size int, off, on float64) bench.CaseResult {
		return bench.CaseResult{ID: "bulk-" + pl, Kind: bench.KindBulk, Placement: pl, Size: size,
			Policy: bench.PolicyDefault, Metrics: []bench.Metric{
				{Name: "throughput", Unit: "MiB/s", Off: off, On: on, Ratio: on / off},
			}}
	}
	rep.Cases = []bench.CaseResult{
		lat(64, 14.0, 8.2), lat(1<<10, 15.1, 8.6), lat(16<<10, 19.5, 10.9), lat(64<<10, 31, 15.6),
		// Other placements and policies must not be drawn.
		{ID: "pingpong-2cpu", Kind: bench.KindPingPong, Placement: "2cpu", Size: 64, Policy: bench.PolicyDefault,
			Metrics: []bench.Metric{{Name: "p50", Off: 999, On: 999, Ratio: 1}}},
		thr("2cpu", 1<<10, 310, 360), thr("2cpu", 4<<10, 1020, 1250), thr("2cpu", 16<<10, 2400, 3050),
		thr("2cpu", 64<<10, 3500, 7000), thr("2cpu", 256<<10, 3900, 8100),
		thr("1cpu", 64<<10, 99999, 99999),
	}
	return rep
}

func TestFromReportPicksOneCPULatencyAndTwoCPUBulk(t *testing.T) {
	f, err := FromReport(report())
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Latency.Points) != 4 || f.Latency.Points[0].Label != "64 B" || f.Latency.Points[3].Label != "64 KiB" {
		t.Fatalf("latency points: %+v", f.Latency.Points)
	}
	if len(f.Bulk.Points) != 5 || f.Bulk.Points[4].Label != "256 KiB" || f.Bulk.Points[3].Ratio != 2 {
		t.Fatalf("bulk points: %+v", f.Bulk.Points)
	}
	if !strings.Contains(f.Bulk.Title, "CPU 1") {
		t.Fatalf("bulk title must say where it ran: %q", f.Bulk.Title)
	}
	if _, err := FromReport(bench.Report{}); err == nil {
		t.Fatal("an empty report must not plot")
	}
}

func TestWriteFilePNGAndSVG(t *testing.T) {
	f, err := FromReport(report())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if out := os.Getenv("SOCKHOP_PLOT_OUT"); out != "" {
		dir = out // keep the picture to look at
	}
	pngPath := filepath.Join(dir, "bench.png")
	if err := WriteFile(f, pngPath); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(pngPath)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("PNG does not decode: %v", err)
	}
	if w, h := img.Bounds().Dx(), img.Bounds().Dy(); w < 1200 || h < 500 {
		t.Fatalf("PNG is %dx%d, too small to read", w, h)
	}
	if len(b) < 20_000 {
		t.Fatalf("PNG is only %d bytes: nothing drawn?", len(b))
	}
	// Count pixels of the ON colour: bars were drawn.
	blue := 0
	for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y; y += 2 {
		for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x += 2 {
			r, g, bl, _ := img.At(x, y).RGBA()
			if r>>8 == uint32(colorOn.R) && g>>8 == uint32(colorOn.G) && bl>>8 == uint32(colorOn.B) {
				blue++
			}
		}
	}
	if blue < 1000 {
		t.Fatalf("only %d sampled pixels of the ON bars' colour", blue)
	}

	svgPath := filepath.Join(dir, "bench.svg")
	if err := WriteFile(f, svgPath); err != nil {
		t.Fatal(err)
	}
	svg, err := os.ReadFile(svgPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "2.00×", "p50 round-trip time"} {
		if !bytes.Contains(svg, []byte(want)) {
			t.Errorf("SVG lacks %q", want)
		}
	}
	if err := WriteFile(f, filepath.Join(dir, "bench.gif")); err == nil {
		t.Fatal("an unknown format must fail")
	}
	if _, err := os.Stat(filepath.Join(dir, "bench.gif")); err == nil {
		t.Fatal("a failed plot must not leave a file")
	}
}
