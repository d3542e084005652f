package dataset

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPNGPreviewReadBackByGDAL(t *testing.T) {
	dir := t.TempDir()
	w, err := NewWriter(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// Holes are aligned to the reduction factor (3) so each preview pixel is either wholly
	// empty or not; one hole is NaN, one is nodata.
	big := makeGrid(Float32, 2100, 903, func(x, y int) float64 {
		switch {
		case x >= 300 && x < 600 && y >= 300 && y < 450:
			return math.NaN()
		case x >= 1200 && x < 1500 && y < 90:
			return -1
		}
		return terrain(x, y)
	})
	cases := []struct {
		name   string
		g      Grid
		opt    PreviewOptions
		factor int
		style  string
	}{
		{"ramp.png", big, PreviewOptions{NoData: ptr(-1.0)}, 3, "ramp"},
		{"shaded.png", big, PreviewOptions{Style: ShadedRamp, NoData: ptr(-1.0)}, 3, "shaded"},
		{"hillshade-small.png", makeGrid(Int16, 300, 200, func(x, y int) float64 { return math.Round(terrain(x, y)) }), PreviewOptions{Style: Hillshade, MaxSize: 128}, 3, "hillshade"},
		{"tiny.png", makeGrid(Uint8, 5, 3, func(x, y int) float64 { return float64(x * 40) }), PreviewOptions{}, 1, "ramp"},
	}
	var specs []map[string]any
	for _, c := range cases {
		a, err := w.WritePNG(c.name, c.g, c.opt)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		raw := filepath.Join(dir, c.name+".raw")
		if err := os.WriteFile(raw, c.g.Data, 0o644); err != nil {
			t.Fatal(err)
		}
		spec := map[string]any{"path": filepath.Join(dir, a.Path), "raw": raw, "dtype": c.g.DType.String(),
			"width": c.g.Width, "height": c.g.Height, "factor": c.factor, "style": c.style}
		if c.opt.NoData != nil {
			spec["nodata"] = *c.opt.NoData
		}
		specs = append(specs, spec)
	}
	f := filepath.Join(dir, "cases.json")
	writeJSON(t, f, specs)
	out := runPy(t, "check_png.py", f)
	if strings.Count(out, ": ok") != len(cases) {
		t.Fatalf("checker output:\n%s", out)
	}
}
