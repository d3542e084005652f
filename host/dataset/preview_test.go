package dataset

import (
	"image"
	"image/png"
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

// Palette previews show each cell's own colour (never a blend of two
// categories); Relief previews are blue below 0 and land-tinted above it.
func TestPaletteAndReliefPreviews(t *testing.T) {
	dir := t.TempDir()
	w, err := NewWriter(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// Stripes of categories 1 and 3, 2 cells wide, reduced by 2: every pixel
	// must be exactly colour 1 or 3, never a mean (2, which is also listed).
	cats := makeGrid(Uint8, 400, 100, func(x, y int) float64 { return float64(1 + 2*((x/2)%2)) })
	pal := []PaletteEntry{{Value: 1, R: 200}, {Value: 2, G: 200}, {Value: 3, B: 200}}
	if _, err := w.WritePNG("cats.png", cats, PreviewOptions{Style: Palette, Palette: pal, MaxSize: 200}); err != nil {
		t.Fatal(err)
	}
	img := readPNG(t, filepath.Join(dir, "cats.png"))
	if b := img.Bounds(); b.Dx() != 200 || b.Dy() != 50 {
		t.Fatalf("palette preview is %v, want 200x50", b)
	}
	for x := 0; x < 200; x++ {
		r, g, b, a := img.At(x, 10).RGBA()
		want := [3]uint32{200, 0, 0}
		if x%2 == 1 {
			want = [3]uint32{0, 0, 200}
		}
		if [3]uint32{r >> 8, g >> 8, b >> 8} != want || a>>8 != 255 {
			t.Fatalf("pixel %d = %d,%d,%d,%d; want %v opaque", x, r>>8, g>>8, b>>8, a>>8, want)
		}
	}
	// Relief: left half sea (-1000), right half land rising to 3000.
	el := makeGrid(Float32, 64, 32, func(x, y int) float64 {
		if x < 32 {
			return -1000
		}
		return 100 * float64(x-31)
	})
	if _, err := w.WritePNG("relief.png", el, PreviewOptions{Style: Relief}); err != nil {
		t.Fatal(err)
	}
	img = readPNG(t, filepath.Join(dir, "relief.png"))
	r, g, b, _ := img.At(5, 16).RGBA()
	if !(b > r && b > g) {
		t.Errorf("sea pixel %d,%d,%d is not blue", r>>8, g>>8, b>>8)
	}
	r, g, b, _ = img.At(34, 16).RGBA()
	if b >= r || b >= g {
		t.Errorf("land pixel %d,%d,%d is blue", r>>8, g>>8, b>>8)
	}
}

func readPNG(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	return img
}
