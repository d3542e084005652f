package runner_test

// The planet pipeline (examples/*.toml, docs/planet.md) through its real
// plugins: Go terrain.fbm and climate.biome, Rust terrain.erode, C++
// hydro.flow. Small grids keep each run to a second or two.

import (
	"archive/zip"
	"context"
	"encoding/binary"
	"encoding/json"
	"image/png"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"

	"github.com/pipehost/pipehost/host/config"
	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/testbin"
	"github.com/pipehost/pipehost/internal/testenv"
)

// planetPlugins is a directory with the planet plugins of all three SDKs.
func planetPlugins(t *testing.T) string {
	t.Helper()
	root := testbin.ModuleRoot()
	dir := t.TempDir()
	goPlanet := filepath.Join(testbin.Build(t, "plugins/go"), "planet-go")
	for _, p := range []string{goPlanet, filepath.Join(root, "bin", "plugins", "planet-rust"), filepath.Join(root, "bin", "plugins", "hydro-cpp"), filepath.Join(root, "bin", "plugins", "planet-py")} {
		b, err := os.ReadFile(p)
		if err != nil {
			if os.Getenv("PIPEHOST_REQUIRE_NATIVE") == "1" {
				t.Fatalf("planet plugin missing (run make build): %v", err)
			}
			t.Skipf("planet plugin missing (run make build): %v", err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// runPlanet runs a config with overrides and returns its session.
func runPlanet(t *testing.T, plugins, cfg string, opts runner.Options, sets ...string) (*runner.Session, *engine.Result) {
	t.Helper()
	isolate(t)
	opts.ConfigPath = cfg
	opts.PluginDirs = []string{plugins}
	if opts.OutDir == "" {
		opts.OutDir = filepath.Join(t.TempDir(), "out")
	}
	if opts.CacheDir == "" {
		opts.CacheDir = filepath.Join(t.TempDir(), "cache")
	}
	for _, s := range sets {
		o, err := config.ParseOverride(s)
		if err != nil {
			t.Fatal(err)
		}
		opts.Overrides = append(opts.Overrides, o)
	}
	sess, err := runner.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	res := sess.Run(context.Background())
	sess.Close()
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	if len(sess.RunErrors) > 0 {
		t.Fatal(sess.RunErrors)
	}
	if live, _ := sess.Arena.Live(); live != 0 {
		t.Errorf("%d segments live after the run", live)
	}
	return sess, res
}

// readNPZ returns the raw little-endian data of member name.npy.
func readNPZ(t *testing.T, path, name string) []byte {
	t.Helper()
	z, err := zip.OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	for _, f := range z.File {
		if f.Name != name+".npy" {
			continue
		}
		r, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		hlen := int(binary.LittleEndian.Uint16(b[8:10]))
		return b[10+hlen:]
	}
	t.Fatalf("%s has no member %s", path, name)
	return nil
}

func f32s(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

// seamRatios compares, for every wrap edge, the mean absolute difference
// between the cells the edge joins with the mean difference between
// neighbouring cells just inside that edge, in the same direction.
func seamRatios(topo string, e []float32, w, h int) map[string]float64 {
	at := func(x, y int) float64 { return float64(e[y*w+x]) }
	mean := func(n int, f func(k int) float64) float64 {
		var s float64
		for k := 0; k < n; k++ {
			s += f(k)
		}
		return s / float64(n)
	}
	// Inside the x edges: columns 0–1 and W-2–W-1.
	inX := mean(h, func(y int) float64 { return (math.Abs(at(0, y)-at(1, y)) + math.Abs(at(w-2, y)-at(w-1, y))) / 2 })
	out := map[string]float64{
		"x wrap": mean(h, func(y int) float64 { return math.Abs(at(w-1, y) - at(0, y)) }) / inX,
		// Cells W/3 apart are no neighbours: a seam that is not one.
		"control": mean(h, func(y int) float64 { return math.Abs(at(w/3, y) - at(0, y)) }) / inX,
	}
	switch topo {
	case "torus":
		inY := mean(w, func(x int) float64 { return (math.Abs(at(x, 0)-at(x, 1)) + math.Abs(at(x, h-2)-at(x, h-1))) / 2 })
		out["y wrap"] = mean(w, func(x int) float64 { return math.Abs(at(x, h-1) - at(x, 0)) }) / inY
	case "sphere":
		// Across a pole, (x, j) and (x + W/2, j) are 2j+1 cell heights
		// apart, as are (x, 0) and (x, 2j+1) on one meridian: compare the
		// two at j = 0..7, so the polar cap is more than a few cells.
		for name, pole := range map[string]int{"north pole": 0, "south pole": h - 1} {
			row := func(j int) int {
				if pole == 0 {
					return j
				}
				return h - 1 - j
			}
			var across, along float64
			for j := 0; j < 8; j++ {
				across += mean(w/2, func(x int) float64 { return math.Abs(at(x, row(j)) - at(x+w/2, row(j))) })
				along += mean(w, func(x int) float64 { return math.Abs(at(x, row(0)) - at(x, row(2*j+1))) })
			}
			out[name] = across / along
		}
	}
	return out
}

// Terrain and eroded terrain are as continuous across every wrap edge and
// pole as between any two neighbouring cells inside the grid.
func TestPlanetSeams(t *testing.T) {
	plugins := planetPlugins(t)
	for _, example := range []string{"planet.toml", "cylinder.toml", "torus.toml"} {
		topo := map[string]string{"planet.toml": "sphere", "cylinder.toml": "cylinder", "torus.toml": "torus"}[example]
		t.Run(topo, func(t *testing.T) {
			const w, h = 512, 256
			sess, _ := runPlanet(t, plugins, planetConfig(t, example), runner.Options{}, "grid.width=512", "grid.height=256", "terrain.continent_scale=2.0")
			dir := sess.Reports.Dir
			e := f32s(readNPZ(t, filepath.Join(dir, "data", "erode.eroded.npz"), "eroded"))
			if len(e) != w*h {
				t.Fatalf("eroded grid has %d cells", len(e))
			}
			r := seamRatios(topo, e, w, h)
			for k, v := range r {
				if k == "control" {
					if v < 3 {
						t.Errorf("control: cells W/3 apart differ only %.2f× as much as neighbours; the test cannot tell a seam", v)
					}
					continue
				}
				if v > 1.6 || v < 0.4 {
					t.Errorf("%s: differences across it are %.2f× those inside the grid", k, v)
				}
			}
			t.Logf("%s seams: %v", topo, r)
		})
	}
}

// wkbCoords returns the vertices of a little-endian WKB (Multi)LineString.
func wkbCoords(t *testing.T, b []byte) [][2]float64 {
	t.Helper()
	le := binary.LittleEndian
	var pts [][2]float64
	var line func(b []byte) []byte
	line = func(b []byte) []byte {
		if b[0] != 1 {
			t.Fatal("big-endian WKB")
		}
		n := int(le.Uint32(b[5:]))
		switch le.Uint32(b[1:]) {
		case 2:
			for k := 0; k < n; k++ {
				pts = append(pts, [2]float64{math.Float64frombits(le.Uint64(b[9+16*k:])), math.Float64frombits(le.Uint64(b[17+16*k:]))})
			}
			return b[9+16*n:]
		case 5:
			b = b[9:]
			for k := 0; k < n; k++ {
				b = line(b)
			}
			return b
		}
		t.Fatalf("WKB type %d", le.Uint32(b[1:]))
		return nil
	}
	line(b)
	return pts
}

// planetConfig writes a copy of an example with each replacement applied
// (old, new pairs, each of which must match).
func planetConfig(t *testing.T, example string, repl ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testbin.ModuleRoot(), "examples", example))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for k := 0; k+1 < len(repl); k += 2 {
		if !strings.Contains(s, repl[k]) {
			t.Fatalf("examples/%s no longer contains %q", example, repl[k])
		}
		s = strings.Replace(s, repl[k], repl[k+1], 1)
	}
	return writeConfig(t, example, s)
}

// Rivers run downhill on the depression-filled surface, drain more and more
// area on their way, and end in the sea or where they join another river.
func TestPlanetRiversFlowDownhill(t *testing.T) {
	plugins := planetPlugins(t)
	for _, example := range []string{"planet.toml", "torus.toml"} {
		t.Run(example, func(t *testing.T) {
			const w, h = 512, 256
			cfg := planetConfig(t, example, `save = { rivers = ["geoparquet"], accum = ["npz"] }`,
				`save = { rivers = ["geoparquet", "arrow"], accum = ["npz"], filled = ["npz"] }`)
			sess, _ := runPlanet(t, plugins, cfg, runner.Options{}, "grid.width=512", "grid.height=256")
			dir := sess.Reports.Dir
			elev := f32s(readNPZ(t, filepath.Join(dir, "data", "erode.eroded.npz"), "eroded"))
			filled := f32s(readNPZ(t, filepath.Join(dir, "data", "hydro.filled.npz"), "filled"))
			accum := f32s(readNPZ(t, filepath.Join(dir, "data", "hydro.accum.npz"), "accum"))
			for i := range elev {
				if filled[i] < elev[i] {
					t.Fatalf("cell %d: filled %g below the ground %g", i, filled[i], elev[i])
				}
			}
			// Vertices back to cells: lon/lat on the sphere, metres from the
			// lower-left corner on the torus (20 km cells in both configs).
			cell := func(p [2]float64) int {
				var x, y int
				if example == "planet.toml" {
					x, y = int(math.Floor((p[0]+180)/360*w)), int(math.Floor((90-p[1])/180*h))
				} else {
					cx := 2 * math.Pi * 6520000.0 / w
					cy := 2 * math.Pi * 3260000.0 / h
					x, y = int(math.Floor(p[0]/cx)), int(math.Floor(h-p[1]/cy))
				}
				if x < 0 || x >= w || y < 0 || y >= h {
					t.Fatalf("vertex %v is off the grid", p)
				}
				return y*w + x
			}
			f, err := os.Open(filepath.Join(dir, "data", "hydro.rivers.arrow"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			r, err := ipc.NewFileReader(f)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			onRiver := map[int]bool{}
			type river struct {
				cells []int
				end   string
			}
			var all []river
			for b := 0; b < r.NumRecords(); b++ {
				rec, err := r.RecordBatch(b)
				if err != nil {
					t.Fatal(err)
				}
				geom := rec.Column(rec.Schema().FieldIndices("geometry")[0]).(*array.Binary)
				ends := rec.Column(rec.Schema().FieldIndices("end")[0]).(*array.String)
				for j := 0; j < geom.Len(); j++ {
					var rv river
					for _, p := range wkbCoords(t, geom.Value(j)) {
						rv.cells = append(rv.cells, cell(p))
					}
					rv.end = ends.Value(j)
					all = append(all, rv)
					for _, c := range rv.cells[:len(rv.cells)-1] {
						onRiver[c] = true
					}
				}
			}
			if len(all) < 20 {
				t.Fatalf("%d rivers: too few to say anything", len(all))
			}
			seaEnds := 0
			for k, rv := range all {
				for i := 1; i < len(rv.cells); i++ {
					a, b := rv.cells[i-1], rv.cells[i]
					if filled[b] > filled[a] {
						t.Fatalf("river %d climbs from %g m to %g m at vertex %d", k, filled[a], filled[b], i)
					}
					if i < len(rv.cells)-1 && accum[b] < accum[a] {
						t.Fatalf("river %d drains less downstream (%g < %g km²)", k, accum[b], accum[a])
					}
				}
				last := rv.cells[len(rv.cells)-1]
				switch rv.end {
				case "sea":
					seaEnds++
					if elev[last] > 0 {
						t.Errorf("river %d ends in the sea at a cell %g m above it", k, elev[last])
					}
				case "confluence":
					if !onRiver[last] {
						t.Errorf("river %d ends at a confluence with no other river there", k)
					}
				default:
					t.Errorf("river %d ends in a %q: the planet has a sea to drain to", k, rv.end)
				}
			}
			if seaEnds == 0 {
				t.Error("no river reaches the sea")
			}
			t.Logf("%d rivers, %d reach the sea", len(all), seaEnds)
		})
	}
}

// stageDigests returns each stage output's digest.
func stageDigests(res *engine.Result) map[string]string {
	out := map[string]string{}
	for _, r := range res.Stages {
		for port, o := range r.Outputs {
			out[r.Name+"."+port] = o.Digest.Hash
		}
	}
	return out
}

// Erosion gives the same bytes with one thread or four.
func TestPlanetErosionIndependentOfThreads(t *testing.T) {
	plugins := planetPlugins(t)
	var got []string
	for _, threads := range []string{"1", "4"} {
		_, res := runPlanet(t, plugins, planetConfig(t, "planet.toml"), runner.Options{}, "grid.width=512", "grid.height=256", "erode.threads="+threads)
		d := stageDigests(res)
		if d["erode.eroded"] == d["terrain.elevation"] {
			t.Fatal("erosion changed nothing")
		}
		got = append(got, d["erode.eroded"])
	}
	if got[0] != got[1] {
		t.Errorf("eroded terrain differs: 1 thread %s, 4 threads %s", got[0][:12], got[1][:12])
	}
}

// The same config gives byte-identical datasets whatever --jobs is, and the
// datasets pass the readers of the dataset tests (GDAL's COG validator,
// rio-cogeo, rasterio, NumPy, pyarrow, GeoPandas).
func TestPlanetDatasetsDeterministicAndReadable(t *testing.T) {
	py := testenv.Python(t)
	plugins := planetPlugins(t)
	files := map[string]map[string]string{}
	for _, jobs := range []int{1, 4} {
		// 1024 wide: the COGs get overviews (tiles are 512).
		sess, _ := runPlanet(t, plugins, planetConfig(t, "planet.toml"), runner.Options{Engine: engine.Options{Jobs: jobs}}, "grid.width=1024", "grid.height=512")
		dir := sess.Reports.Dir
		files[string(rune('0'+jobs))] = map[string]string{}
		for _, a := range sess.Artifacts {
			files[string(rune('0'+jobs))][a.Path] = a.SHA256
		}
		if jobs != 1 {
			continue
		}
		out, err := exec.Command(py, filepath.Join("testdata", "check_run.py"), dir).CombinedOutput()
		if err != nil {
			t.Fatalf("readers: %v\n%s", err, out)
		}
		var seen map[string]map[string]any
		if err := json.Unmarshal(out, &seen); err != nil {
			t.Fatalf("%s", out)
		}
		checkMetadataEncoding(t, dir)
		if pq := seen[filepath.Join(dir, "data", "hydro.rivers.parquet")]; pq == nil || pq["rows"].(float64) < 20 {
			t.Errorf("rivers GeoParquet: %v", pq)
		}
		if b := seen[filepath.Join(dir, "data", "climate.biome.tif")]; b == nil || len(b["overviews"].([]any)) == 0 {
			t.Errorf("biome COG: %v", b)
		}
		if e := seen[filepath.Join(dir, "data", "erode.eroded.tif")]; e == nil || len(e["overviews"].([]any)) == 0 {
			t.Errorf("elevation COG: %v", e)
		}
		sum, _ := os.ReadFile(sess.Reports.Summary)
		for _, p := range []string{"previews/erode.eroded.png", "previews/climate.biome.png"} {
			if !strings.Contains(string(sum), "("+p+")") {
				t.Errorf("summary.md does not show %s", p)
			}
		}
	}
	if len(files["1"]) < 10 {
		t.Fatalf("%d datasets", len(files["1"]))
	}
	for path, d := range files["1"] {
		if files["4"][path] != d {
			t.Errorf("%s differs between --jobs 1 and --jobs 4", path)
		}
	}
}

// The biome preview is drawn in the stage's colour table, one class colour
// per pixel; without the table saved the datasets are still written and the
// run names the missing table.
func TestPlanetBiomePreviewUsesColourTable(t *testing.T) {
	plugins := planetPlugins(t)
	sess, _ := runPlanet(t, plugins, planetConfig(t, "planet.toml"), runner.Options{}, "grid.width=256", "grid.height=128")
	dir := sess.Reports.Dir
	f, err := os.Open(filepath.Join(dir, "data", "climate.biome_colors.arrow"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := ipc.NewFileReader(f)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rec, err := r.RecordBatch(0)
	if err != nil {
		t.Fatal(err)
	}
	colours := map[[3]uint8]bool{}
	col := func(name string) *array.Uint8 { return rec.Column(rec.Schema().FieldIndices(name)[0]).(*array.Uint8) }
	for j := 0; j < int(rec.NumRows()); j++ {
		colours[[3]uint8{col("r").Value(j), col("g").Value(j), col("b").Value(j)}] = true
	}
	pf, err := os.Open(filepath.Join(dir, "previews", "climate.biome.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	img, err := png.Decode(pf)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[[3]uint8]bool{}
	for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y; y++ {
		for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x++ {
			cr, cg, cb, _ := img.At(x, y).RGBA()
			c := [3]uint8{uint8(cr >> 8), uint8(cg >> 8), uint8(cb >> 8)}
			if !colours[c] {
				t.Fatalf("preview pixel (%d, %d) = %v is no biome colour", x, y, c)
			}
			seen[c] = true
		}
	}
	if len(seen) < 6 {
		t.Errorf("only %d biome colours in the preview", len(seen))
	}

	isolate(t)
	cfg := planetConfig(t, "planet.toml", `biome_colors = ["arrow"], `, ``)
	s2, err := runner.Open(context.Background(), runner.Options{ConfigPath: cfg, PluginDirs: []string{plugins},
		OutDir: filepath.Join(t.TempDir(), "out"), CacheDir: filepath.Join(t.TempDir(), "cache"),
		Overrides: []config.Override{mustOverride(t, "grid.width=256"), mustOverride(t, "grid.height=128")}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Run(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	s2.Close()
	if len(s2.RunErrors) != 1 || !strings.Contains(s2.RunErrors[0].Error(), "colour table biome_colors") {
		t.Errorf("run errors %v, want one naming the colour table", s2.RunErrors)
	}
	if _, err := os.Stat(filepath.Join(s2.Reports.Dir, "data", "climate.biome.tif")); err != nil {
		t.Errorf("the biome COG was not written: %v", err)
	}
}

func mustOverride(t *testing.T, s string) config.Override {
	t.Helper()
	o, err := config.ParseOverride(s)
	if err != nil {
		t.Fatal(err)
	}
	return o
}
