package dataset

import (
	"crypto/sha256"
	"encoding/hex"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/pipehost/pipehost/internal/testenv"
)

type cogCase struct {
	name string
	grid Grid
	opt  COGOptions
	// given overviews are compared bit for bit; computed ones against a 2×2 mean.
	wantLevels int
	crs        map[string]any
	transform  []float64
	tags       map[string]string
}

func TestCOGReadBackByGDALAndRasterio(t *testing.T) {
	dir := t.TempDir()
	w, err := NewWriter(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	withHoles := makeGrid(Float32, 700, 530, func(x, y int) float64 {
		switch {
		case (x/40+y/40)%7 == 0:
			return math.NaN()
		case x < 300 && y < 300 && (x+y)%5 == 0:
			return -9999
		case x >= 512 && y >= 512:
			return math.NaN() // a whole overview block of nothing
		}
		return terrain(x, y)
	})
	main := makeGrid(Float32, 1000, 600, terrain)
	given := makeGrid(Float32, 500, 300, func(x, y int) float64 { return -terrain(x, y) })

	cases := []cogCase{
		{
			name: "deflate-sphere", grid: makeGrid(Float32, 1300, 700, terrain),
			opt:        COGOptions{TileSize: 256, Georef: Georef{Topology: Sphere, Radius: 1737400}},
			wantLevels: 3,
			crs:        map[string]any{"kind": "sphere", "radius": 1737400.0, "name": "pipehost sphere R=1737400"},
			transform:  []float64{-180, 360.0 / 1300, 0, 90, 0, -180.0 / 700},
			tags:       map[string]string{"PIPEHOST_TOPOLOGY": "sphere", "PIPEHOST_WRAP_X": "repeat", "PIPEHOST_WRAP_Y": "pole"},
		},
		{
			name: "zstd-torus", grid: makeGrid(Float32, 1024, 1024, terrain),
			opt: COGOptions{Compression: Zstd, Georef: Georef{Topology: Torus, PixelSize: [2]float64{250, 125}},
				Metadata: map[string]string{"PIPEHOST_RUN": "r-1 <&>"}},
			wantLevels: 1,
			crs:        map[string]any{"kind": "local", "name": "pipehost torus"},
			transform:  []float64{0, 250, 0, 1024 * 125, 0, -125},
			tags:       map[string]string{"PIPEHOST_WRAP_X": "repeat", "PIPEHOST_WRAP_Y": "repeat", "PIPEHOST_RUN": "r-1 <&>"},
		},
		{
			name: "nodata-nan-holes", grid: withHoles,
			opt:        COGOptions{TileSize: 256, NoData: ptr(-9999.0), Georef: Georef{Topology: Cylinder, PixelSize: [2]float64{10, 10}, Origin: &[2]float64{-5000, 2650}}},
			wantLevels: 2,
			crs:        map[string]any{"kind": "local", "name": "pipehost cylinder"},
			transform:  []float64{-5000, 10, 0, 2650, 0, -10},
			tags:       map[string]string{"PIPEHOST_WRAP_X": "repeat", "PIPEHOST_WRAP_Y": "clamp"},
		},
		{
			name: "nodata-is-nan-zstd", grid: withHoles,
			opt:        COGOptions{Compression: Zstd, NoData: ptr(math.NaN()), Georef: Georef{Topology: Sphere, WGS84: true}},
			wantLevels: 1,
			crs:        map[string]any{"kind": "wgs84"},
		},
		{
			name: "given-overviews", grid: main,
			opt:        COGOptions{TileSize: 256, Overviews: []Grid{given}},
			wantLevels: 2,
		},
		{name: "one-by-one", grid: makeGrid(Float32, 1, 1, func(int, int) float64 { return 42.5 })},
		{name: "odd-size-float64", grid: makeGrid(Float64, 517, 259, func(x, y int) float64 { return terrain(x, y) / 3 }),
			opt: COGOptions{TileSize: 256}, wantLevels: 2},
		{name: "int16-bigtiff", grid: makeGrid(Int16, 300, 301, func(x, y int) float64 { return math.Round(terrain(x, y)) }),
			opt: COGOptions{TileSize: 256, BigTIFF: true, NoData: ptr(-32768.0)}, wantLevels: 1},
		{name: "uint8", grid: makeGrid(Uint8, 600, 257, func(x, y int) float64 { return float64((x*x + y) % 251) }),
			opt: COGOptions{TileSize: 256, Compression: Zstd}, wantLevels: 2},
		{name: "int8-plane", grid: makeGrid(Int8, 33, 270, func(x, y int) float64 { return float64((x+y)%200 - 100) }),
			opt:        COGOptions{TileSize: 256, Georef: Georef{Topology: Plane, PixelSize: [2]float64{2, 3}, Name: "map grid", WrapX: WrapReflect}},
			wantLevels: 1,
			crs:        map[string]any{"kind": "local", "name": "map grid"},
			transform:  []float64{0, 2, 0, 810, 0, -3},
			tags:       map[string]string{"PIPEHOST_TOPOLOGY": "plane", "PIPEHOST_WRAP_X": "reflect", "PIPEHOST_WRAP_Y": "clamp"}},
		{name: "uint16", grid: makeGrid(Uint16, 257, 3, func(x, y int) float64 { return float64(x * 250) }),
			opt: COGOptions{TileSize: 256}, wantLevels: 1},
		{name: "int32", grid: makeGrid(Int32, 400, 400, func(x, y int) float64 { return float64(x*y*1000 - 5e7) }),
			opt: COGOptions{TileSize: 256, Compression: Zstd}, wantLevels: 1},
		{name: "uint32-no-predictor", grid: makeGrid(Uint32, 260, 260, func(x, y int) float64 { return float64(x * y * 60000) }),
			opt: COGOptions{TileSize: 256, NoPredictor: true}, wantLevels: 1},
	}

	var specs []map[string]any
	for _, c := range cases {
		a, err := w.WriteCOG(c.name+".tif", c.grid, c.opt)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		path := filepath.Join(dir, a.Path)
		if a.Format != "cog" || len(a.SHA256) != 64 {
			t.Fatalf("%s: artifact %+v", c.name, a)
		}
		if b, err := os.ReadFile(path); err != nil || int64(len(b)) != a.Size {
			t.Fatalf("%s: artifact size %d, file %d bytes %v", c.name, a.Size, len(b), err)
		} else if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != a.SHA256 {
			t.Fatalf("%s: artifact digest %s, file %x", c.name, a.SHA256, sum)
		}
		head := make([]byte, 4)
		if f, err := os.Open(path); err == nil {
			f.Read(head)
			f.Close()
		}
		if wantBig := c.opt.BigTIFF; (head[2] == 43) != wantBig {
			t.Fatalf("%s: header %x, BigTIFF wanted: %v", c.name, head, wantBig)
		}
		raw := filepath.Join(dir, c.name+".raw")
		if err := os.WriteFile(raw, c.grid.Data, 0o644); err != nil {
			t.Fatal(err)
		}
		tile := c.opt.TileSize
		if tile == 0 {
			tile = 512
		}
		comp := "deflate"
		if c.opt.Compression == Zstd {
			comp = "zstd"
		}
		pred := 2
		if c.grid.DType.IsFloat() {
			pred = 3
		}
		if c.opt.NoPredictor {
			pred = 1
		}
		spec := map[string]any{
			"name": c.name, "path": path, "raw": raw, "dtype": c.grid.DType.String(),
			"width": c.grid.Width, "height": c.grid.Height, "tile": tile,
			"compression": comp, "predictor": pred, "crs": c.crs,
		}
		if c.transform != nil {
			spec["transform"] = c.transform
		}
		if c.tags != nil {
			spec["tags"] = c.tags
		}
		if c.opt.NoData != nil {
			if math.IsNaN(*c.opt.NoData) {
				spec["nodata"] = "nan"
			} else {
				spec["nodata"] = *c.opt.NoData
			}
		}
		var ovr []map[string]any
		ow, oh := c.grid.Width, c.grid.Height
		for i := 0; i < c.wantLevels; i++ {
			o := map[string]any{}
			if i < len(c.opt.Overviews) {
				g := c.opt.Overviews[i]
				ow, oh = g.Width, g.Height
				r := filepath.Join(dir, c.name+".ovr"+string(rune('0'+i))+".raw")
				if err := os.WriteFile(r, g.Data, 0o644); err != nil {
					t.Fatal(err)
				}
				o["raw"] = r
			} else {
				ow, oh = overviewSize(ow, oh)
			}
			o["width"], o["height"] = ow, oh
			ovr = append(ovr, o)
		}
		spec["overviews"] = append([]map[string]any{}, ovr...)
		specs = append(specs, spec)

		// GDAL's own validator, as its users run it.
		out := runPyModule(t, "osgeo_utils.samples.validate_cloud_optimized_geotiff", "--full-check=yes", path)
		if !strings.Contains(out, "is a valid cloud optimized GeoTIFF") || strings.Contains(out, "warning") {
			t.Fatalf("%s: GDAL's validator:\n%s", c.name, out)
		}
		// rio-cogeo's command line (`rio cogeo validate`), warnings counted as errors.
		out = runCmd(t, testenv.Python(t), "-c", "import sys; from rasterio.rio.main import main_group; sys.exit(main_group())",
			"cogeo", "validate", "--strict", path)
		if !strings.Contains(out, "is a valid cloud optimized GeoTIFF") {
			t.Fatalf("%s: rio cogeo validate:\n%s", c.name, out)
		}
	}
	casesFile := filepath.Join(dir, "cases.json")
	writeJSON(t, casesFile, specs)
	t.Log(runPy(t, "check_cog.py", casesFile))
}

// The writer streams: what it allocates depends on the width of a grid (one band of tile
// rows per level), not on its height, and stays far below the size of the grid.
func TestCOGWriteDoesNotCopyTheGrid(t *testing.T) {
	dir := t.TempDir()
	w, err := NewWriter(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.NoSync = true
	allocFor := func(h int) (uint64, int) {
		g := makeGrid(Float32, 1024, h, terrain)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := w.WriteCOG("tall.tif", g, COGOptions{TileSize: 256, Workers: 2})
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatal(err)
		}
		return after.TotalAlloc - before.TotalAlloc, len(g.Data)
	}
	shortAlloc, shortSize := allocFor(2048)
	tallAlloc, tallSize := allocFor(16384)
	t.Logf("%d MiB grid: %d KiB allocated; %d MiB grid: %d KiB", shortSize>>20, shortAlloc>>10, tallSize>>20, tallAlloc>>10)
	if tallAlloc > shortAlloc*3/2 || tallAlloc > uint64(tallSize)/8 {
		t.Fatalf("allocations grow with the grid: %d bytes for %d, %d bytes for %d", shortAlloc, shortSize, tallAlloc, tallSize)
	}
}

// BigTIFF is chosen by size alone; the grid is a sparse file mapped read-only, so nothing of
// its gigabytes is ever read.
func TestCOGChoosesBigTIFFPastFourGiB(t *testing.T) {
	for _, c := range []struct {
		w, h int
		big  bool
	}{{25000, 25000, false}, {40000, 30000, true}} {
		f, err := os.CreateTemp(t.TempDir(), "sparse")
		if err != nil {
			t.Fatal(err)
		}
		size := int64(c.w) * int64(c.h) * 4
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		data, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
		f.Close()
		if err != nil {
			t.Skipf("cannot map %d bytes: %v", size, err)
		}
		p, err := planCOG(Grid{Data: data, Width: c.w, Height: c.h, DType: Float32}, COGOptions{})
		syscall.Munmap(data)
		if err != nil {
			t.Fatal(err)
		}
		if p.big != c.big {
			t.Errorf("%d×%d float32 (%d bytes): BigTIFF %v, want %v", c.w, c.h, size, p.big, c.big)
		}
	}
}

func BenchmarkWriteCOG(b *testing.B) {
	g := makeGrid(Float32, 2048, 2048, terrain)
	for _, comp := range []Compression{Deflate, Zstd} {
		b.Run(comp.String(), func(b *testing.B) {
			w, err := NewWriter(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			w.NoSync = true
			b.SetBytes(int64(len(g.Data)))
			for b.Loop() {
				if _, err := w.WriteCOG("bench.tif", g, COGOptions{Compression: comp}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
