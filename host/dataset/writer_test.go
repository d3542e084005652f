package dataset

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// writeAll tries every format on the same name stem and returns the errors.
func writeAll(w *Writer, stem string, g Grid) map[string]error {
	errs := map[string]error{}
	_, errs["cog"] = w.WriteCOG(stem+".tif", g, COGOptions{})
	_, errs["npz"] = w.WriteNPZ(stem+".npz", []NPZMember{{"a", g}}, NPZOptions{})
	_, errs["png"] = w.WritePNG(stem+".png", g, PreviewOptions{})
	rec, err := GeometryRecord(nil, []Geometry{Point{1, 2}})
	if err != nil {
		panic(err)
	}
	defer rec.Release()
	_, errs["geoparquet"] = w.WriteGeoParquet(stem+".parquet", []arrow.RecordBatch{rec}, GeoParquetOptions{})
	_, errs["arrow"] = w.WriteArrowIPC(stem+".arrow", rec.Schema(), rec)
	return errs
}

func TestArtifactNamesMustStayInside(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "out")
	outside := filepath.Join(parent, "elsewhere")
	for _, d := range []string{dir, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	g := makeGrid(Float32, 8, 8, terrain)
	for _, stem := range []string{"../escape", "/tmp/abs", "a/../../escape", "link/through", "", ".hidden", "sub/"} {
		for format, err := range writeAll(w, stem, g) {
			if err == nil {
				t.Errorf("%s %q: accepted", format, stem)
			}
		}
	}
	if got := listDir(t, outside); len(got) != 0 {
		t.Fatalf("files written outside the output directory: %v", got)
	}
	if got := listDir(t, dir); len(got) != 1 || got[0] != "link" {
		t.Fatalf("output directory holds %v, want only the symlink", got)
	}
	if got := listDir(t, parent); len(got) != 2 {
		t.Fatalf("parent directory holds %v", got)
	}
	// A subdirectory inside is fine.
	a, err := w.WriteNPZ("grids/a.npz", []NPZMember{{"a", g}}, NPZOptions{})
	if err != nil || a.Path != "grids/a.npz" {
		t.Fatalf("subdirectory artifact: %+v %v", a, err)
	}
}

func TestUnsupportedInputLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	w, err := NewWriter(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	i64 := makeGrid(Int64, 4, 4, func(x, y int) float64 { return float64(x) })
	_, err = w.WriteCOG("i64.tif", i64, COGOptions{})
	if err == nil || !strings.Contains(err.Error(), "int64") || !strings.Contains(err.Error(), "float32") {
		t.Fatalf("int64 COG: %v, want an error naming the dtype and the supported ones", err)
	}
	f32 := makeGrid(Float32, 4, 4, terrain)
	short := f32
	short.Data = short.Data[:10]
	bad := []struct {
		what string
		err  error
	}{
		{"short data", second(w.WriteCOG("short.tif", short, COGOptions{}))},
		{"tile size", second(w.WriteCOG("t.tif", f32, COGOptions{TileSize: 300}))},
		{"nodata", second(w.WriteCOG("nd.tif", makeGrid(Uint8, 4, 4, terrain), COGOptions{NoData: ptr(-1.0)}))},
		{"sphere radius", second(w.WriteCOG("r.tif", f32, COGOptions{Georef: Georef{Topology: Sphere}}))},
		{"overview dtype", second(w.WriteCOG("o.tif", f32, COGOptions{Overviews: []Grid{makeGrid(Float64, 2, 2, terrain)}}))},
		{"overview size", second(w.WriteCOG("o2.tif", f32, COGOptions{Overviews: []Grid{f32}}))},
		{"metadata name", second(w.WriteCOG("m.tif", f32, COGOptions{Metadata: map[string]string{"a b": "x"}}))},
		{"npz dup", second(w.WriteNPZ("d.npz", []NPZMember{{"a", f32}, {"a", f32}}, NPZOptions{}))},
		{"npz name", second(w.WriteNPZ("n.npz", []NPZMember{{"a/b", f32}}, NPZOptions{}))},
		{"png short", second(w.WritePNG("p.png", short, PreviewOptions{}))},
	}
	for _, b := range bad {
		if b.err == nil {
			t.Errorf("%s: accepted", b.what)
		}
	}
	// A malformed geometry is reported before the Parquet file exists.
	bb := array.NewBinaryBuilder(memory.DefaultAllocator, arrow.BinaryTypes.Binary)
	bb.Append([]byte{1, 1, 0, 0, 0, 1, 2})
	geom := bb.NewArray()
	bb.Release()
	schema := arrow.NewSchema([]arrow.Field{{Name: "geometry", Type: arrow.BinaryTypes.Binary, Nullable: true}}, nil)
	rec := array.NewRecordBatch(schema, []arrow.Array{geom}, 1)
	geom.Release()
	defer rec.Release()
	if _, err := w.WriteGeoParquet("g.parquet", []arrow.RecordBatch{rec}, GeoParquetOptions{}); err == nil || !strings.Contains(err.Error(), "row 0") {
		t.Fatalf("bad WKB: %v", err)
	}
	if got := listDir(t, dir); len(got) != 0 {
		t.Fatalf("rejected writes left %v", got)
	}
}

func second(_ Artifact, err error) error { return err }

// makeUnwritable makes dir refuse new entries, also for root (through the immutable
// attribute), and undoes it when the test ends.
func makeUnwritable(t *testing.T, dir string) {
	t.Helper()
	if os.Geteuid() == 0 {
		if out, err := exec.Command("chattr", "+i", dir).CombinedOutput(); err != nil {
			t.Skipf("cannot make %s immutable as root (chattr: %v %s)", dir, err, out)
		}
		t.Cleanup(func() { exec.Command("chattr", "-i", dir).Run() })
	} else {
		if err := os.Chmod(dir, 0o555); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(dir, 0o755) })
	}
	if err := os.WriteFile(filepath.Join(dir, "probe"), nil, 0o644); err == nil {
		t.Fatalf("%s is still writable", dir)
	}
}

func TestUnwritableDirectory(t *testing.T) {
	dir := t.TempDir()
	w, err := NewWriter(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	makeUnwritable(t, dir)
	for format, err := range writeAll(w, "x", makeGrid(Float32, 600, 600, terrain)) {
		if err == nil || !strings.Contains(err.Error(), dir) {
			t.Errorf("%s: %v, want an error naming %s", format, err, dir)
		}
	}
	if got := listDir(t, dir); len(got) != 0 {
		t.Fatalf("unwritable directory holds %v", got)
	}
}

// A write that fails half-way (here: the file size limit) removes its temporary and scratch
// files and leaves an older artifact of the same name untouched.
func TestFailedWriteKeepsOldArtifact(t *testing.T) {
	dir := t.TempDir()
	w, err := NewWriter(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	old := []byte("previous run")
	for _, n := range []string{"noise.tif", "noise.npz"} {
		if err := os.WriteFile(filepath.Join(dir, n), old, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	noise := makeGrid(Float32, 2048, 1024, func(int, int) float64 { return rng.NormFloat64() })

	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	small := lim
	small.Cur = 2 << 20
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &small); err != nil {
		t.Fatal(err)
	}
	_, cogErr := w.WriteCOG("noise.tif", noise, COGOptions{})
	_, npzErr := w.WriteNPZ("noise.npz", []NPZMember{{"noise", noise}}, NPZOptions{})
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	for what, err := range map[string]error{"cog": cogErr, "npz": npzErr} {
		if !errors.Is(err, syscall.EFBIG) {
			t.Errorf("%s: %v, want the file-too-large error", what, err)
		}
	}
	if got := listDir(t, dir); strings.Join(got, ",") != "noise.npz,noise.tif" {
		t.Fatalf("directory holds %v after failed writes", got)
	}
	for _, n := range []string{"noise.tif", "noise.npz"} {
		if b, _ := os.ReadFile(filepath.Join(dir, n)); !bytes.Equal(b, old) {
			t.Fatalf("%s changed by a failed write", n)
		}
	}
	// And with the limit lifted the same write succeeds and replaces it.
	a, err := w.WriteCOG("noise.tif", noise, COGOptions{})
	if err != nil || a.Size < 4<<20 {
		t.Fatalf("retry: %+v %v", a, err)
	}
}
