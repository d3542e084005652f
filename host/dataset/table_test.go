package dataset

import (
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/file"
)

// geomJSON describes a geometry by its coordinates for the checker, which rebuilds it with
// shapely.
func geomJSON(g Geometry) any {
	xy := func(p Point) []float64 { return []float64{p.X, p.Y} }
	ring := func(r []Point) [][]float64 {
		out := [][]float64{}
		for _, p := range r {
			out = append(out, xy(p))
		}
		return out
	}
	poly := func(p Polygon) [][][]float64 {
		out := [][][]float64{}
		for _, r := range p {
			out = append(out, ring(r))
		}
		return out
	}
	switch g := g.(type) {
	case nil:
		return nil
	case Point:
		return map[string]any{"type": "Point", "coords": xy(g)}
	case LineString:
		return map[string]any{"type": "LineString", "coords": ring(g)}
	case Polygon:
		return map[string]any{"type": "Polygon", "coords": poly(g)}
	case MultiPolygon:
		var ps [][][][]float64
		for _, p := range g {
			ps = append(ps, poly(p))
		}
		return map[string]any{"type": "MultiPolygon", "coords": ps}
	}
	panic("geomJSON: unhandled geometry")
}

func cell(x0, y0, d float64) Polygon {
	return Polygon{{{x0, y0}, {x0 + d, y0}, {x0 + d, y0 + d}, {x0, y0 + d}, {x0, y0}}}
}

func int64Column(mem memory.Allocator, vals []int64) arrow.Array {
	b := array.NewInt64Builder(mem)
	defer b.Release()
	b.AppendValues(vals, nil)
	return b.NewArray()
}

func stringColumn(mem memory.Allocator, vals []string) arrow.Array {
	b := array.NewStringBuilder(mem)
	defer b.Release()
	b.AppendValues(vals, nil)
	return b.NewArray()
}

func TestTablesReadBackByPyarrowAndGeoPandas(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	dir := t.TempDir()
	w, err := NewWriter(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	var cases []map[string]any
	anyGeoms := func(gs []Geometry) []any {
		out := make([]any, len(gs))
		for i, g := range gs {
			out[i] = geomJSON(g)
		}
		return out
	}

	// Points on a moon-sized sphere, in two record batches and several row groups.
	var pts []Geometry
	var ids []int64
	for i := 0; i < 200; i++ {
		lon := -179.5 + float64(i)*1.79
		lat := 80 * math.Sin(float64(i)/9)
		pts = append(pts, Point{lon, lat})
		ids = append(ids, int64(i))
	}
	id := int64Column(mem, ids)
	defer id.Release()
	rec, err := GeometryRecord(mem, pts, Column{"id", id})
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Release()
	first, second := rec.NewSlice(0, 120), rec.NewSlice(120, 200)
	defer first.Release()
	defer second.Release()
	a, err := w.WriteGeoParquet("points.parquet", []arrow.RecordBatch{first, second},
		GeoParquetOptions{Georef: Georef{Topology: Sphere, Radius: 1737400}, RowGroupRows: 50})
	if err != nil {
		t.Fatal(err)
	}
	// The footer holds geo once: from the Arrow schema, not appended again
	// (Python readers see the key-value pairs as a dict and would hide a twin).
	pf, err := file.OpenParquetFile(filepath.Join(dir, a.Path), false)
	if err != nil {
		t.Fatal(err)
	}
	geoKeys := 0
	for _, k := range pf.MetaData().KeyValueMetadata().Keys() {
		if k == "geo" {
			geoKeys++
		}
	}
	pf.Close()
	if geoKeys != 1 {
		t.Errorf("the footer holds %d geo keys, want 1", geoKeys)
	}
	var wantIDs []int64
	for i, g := range pts {
		if p := g.(Point); p.X >= 0 && p.X <= 90 && p.Y >= 0 && p.Y <= 45 {
			wantIDs = append(wantIDs, ids[i])
		}
	}
	if len(wantIDs) == 0 || len(wantIDs) == len(ids) {
		t.Fatalf("query selects %d of %d points; pick a box that tests something", len(wantIDs), len(ids))
	}
	cases = append(cases, map[string]any{
		"kind": "geoparquet", "path": filepath.Join(dir, a.Path), "geometries": anyGeoms(pts),
		"geometry_types": []string{"Point"}, "columns": map[string]any{"id": ids},
		"crs":   map[string]any{"kind": "sphere", "radius": 1737400.0},
		"query": map[string]any{"bbox": []float64{0, 0, 90, 45}, "key": "id", "want": wantIDs},
	})

	// Cells, rivers and a null on a torus, in metres.
	shapes := []Geometry{
		cell(0, 0, 100),
		Polygon{{{200, 200}, {400, 200}, {400, 400}, {200, 400}, {200, 200}}, {{250, 250}, {300, 250}, {300, 300}, {250, 250}}},
		LineString{{10, 990}, {500, 700}, {980, 20}},
		nil,
		MultiPolygon{cell(600, 600, 50), cell(800, 900, 25)},
	}
	names := stringColumn(mem, []string{"a", "holey", "river", "none", "islands"})
	defer names.Release()
	rec2, err := GeometryRecord(mem, shapes, Column{"name", names})
	if err != nil {
		t.Fatal(err)
	}
	defer rec2.Release()
	a, err = w.WriteGeoParquet("shapes.parquet", []arrow.RecordBatch{rec2}, GeoParquetOptions{Georef: Georef{Topology: Torus, PixelSize: [2]float64{1, 1}}})
	if err != nil {
		t.Fatal(err)
	}
	cases = append(cases, map[string]any{
		"kind": "geoparquet", "path": filepath.Join(dir, a.Path), "geometries": anyGeoms(shapes),
		"geometry_types": []string{"LineString", "MultiPolygon", "Polygon"},
		"columns":        map[string]any{"name": []string{"a", "holey", "river", "none", "islands"}},
		"crs":            map[string]any{"kind": "local", "name": "pipehost torus"},
	})

	// Lon/lat polygons with the default CRS.
	cells := []Geometry{cell(-10, -10, 5), cell(170, 80, 10)}
	rec3, err := GeometryRecord(mem, cells)
	if err != nil {
		t.Fatal(err)
	}
	defer rec3.Release()
	a, err = w.WriteGeoParquet("cells.parquet", []arrow.RecordBatch{rec3}, GeoParquetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cases = append(cases, map[string]any{
		"kind": "geoparquet", "path": filepath.Join(dir, a.Path), "geometries": anyGeoms(cells),
		"geometry_types": []string{"Polygon"}, "columns": map[string]any{},
	})

	// Arrow IPC of a plain table in two batches.
	st := stringColumn(mem, []string{"x", "y", "z"})
	defer st.Release()
	iv := int64Column(mem, []int64{-1, 0, 1 << 40})
	defer iv.Release()
	schema := arrow.NewSchema([]arrow.Field{{Name: "s", Type: arrow.BinaryTypes.String}, {Name: "i", Type: arrow.PrimitiveTypes.Int64}}, nil)
	tab := array.NewRecordBatch(schema, []arrow.Array{st, iv}, 3)
	defer tab.Release()
	a, err = w.WriteArrowIPC("stats.arrow", schema, tab, tab)
	if err != nil {
		t.Fatal(err)
	}
	if a.Format != "arrow-ipc" {
		t.Fatalf("artifact %+v", a)
	}
	cases = append(cases, map[string]any{
		"kind": "ipc", "path": filepath.Join(dir, a.Path), "rows": 6,
		"columns": map[string]any{"s": []string{"x", "y", "z", "x", "y", "z"}, "i": []int64{-1, 0, 1 << 40, -1, 0, 1 << 40}},
	})

	spec := filepath.Join(dir, "cases.json")
	writeJSON(t, spec, cases)
	out := runPy(t, "check_tables.py", spec)
	if strings.Count(out, ": ok") != len(cases) {
		t.Fatalf("checker output:\n%s", out)
	}
}

func TestSummarizeWKB(t *testing.T) {
	for _, c := range []struct {
		g     Geometry
		typ   string
		bbox  [4]float64
		empty bool
	}{
		{Point{1, 2}, "Point", [4]float64{1, 2, 1, 2}, false},
		{Point{math.NaN(), math.NaN()}, "Point", [4]float64{}, true},
		{LineString{{3, -1}, {-2, 5}}, "LineString", [4]float64{-2, -1, 3, 5}, false},
		{MultiPoint{{0, 0}, {4, -4}}, "MultiPoint", [4]float64{0, -4, 4, 0}, false},
		{MultiLineString{{{1, 1}, {2, 2}}, {{-1, 7}, {0, 0}}}, "MultiLineString", [4]float64{-1, 0, 2, 7}, false},
		{MultiPolygon{cell(0, 0, 1), cell(5, 5, 2)}, "MultiPolygon", [4]float64{0, 0, 7, 7}, false},
	} {
		s, err := summarizeWKB(c.g.AppendWKB(nil))
		if err != nil {
			t.Fatalf("%v: %v", c.g, err)
		}
		if s.typeName != c.typ || s.empty != c.empty || (!c.empty && s.bbox != c.bbox) {
			t.Fatalf("%v: got %+v, want %s %v empty=%v", c.g, s, c.typ, c.bbox, c.empty)
		}
	}
	// Big-endian ISO WKB point Z (type 1001), as other writers produce.
	be := []byte{0, 0, 0, 0x03, 0xe9}
	for _, v := range []float64{1.5, -2.5, 100} {
		bits := math.Float64bits(v)
		for s := 56; s >= 0; s -= 8 {
			be = append(be, byte(bits>>s))
		}
	}
	s, err := summarizeWKB(be)
	if err != nil || s.typeName != "Point Z" || s.bbox != [4]float64{1.5, -2.5, 1.5, -2.5} {
		t.Fatalf("big-endian point Z: %+v %v", s, err)
	}
	for _, bad := range [][]byte{nil, {1, 1, 0, 0, 0}, {1, 2, 0, 0, 0, 255, 255, 255, 255}, {7}, {1, 99, 0, 0, 0}} {
		if _, err := summarizeWKB(bad); err == nil {
			t.Fatalf("summarizeWKB(%x) accepted bad WKB", bad)
		}
	}
}
