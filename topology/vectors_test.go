package topology

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

const vectorDir = "../testdata/topology"

type vtopo struct {
	Kind        string  `json:"kind"`
	Width       int     `json:"width"`
	Height      int     `json:"height"`
	WrapX       string  `json:"wrap_x"`
	WrapY       string  `json:"wrap_y"`
	Radius      float64 `json:"radius"`
	MinorRadius float64 `json:"minor_radius"`
}

func (v vtopo) String() string {
	return fmt.Sprintf("%s %d×%d (%s, %s)", v.Kind, v.Width, v.Height, v.WrapX, v.WrapY)
}

func (v vtopo) build(t *testing.T) Topology {
	t.Helper()
	wx, err := ParseWrap(v.WrapX)
	if err != nil {
		t.Fatal(err)
	}
	wy, err := ParseWrap(v.WrapY)
	if err != nil {
		t.Fatal(err)
	}
	top, err := FromProto(&pb.Topology{Kind: v.Kind, WrapX: wx, WrapY: wy, Radius: v.Radius, MinorRadius: v.MinorRadius}, v.Width, v.Height)
	if err != nil {
		t.Fatalf("%v: %v", v, err)
	}
	return top
}

type header struct {
	Schema    string  `json:"schema"`
	Tolerance float64 `json:"tolerance"`
}

// load reads a vector file and checks its schema.
func load(t *testing.T, name string, v any) float64 {
	t.Helper()
	path := filepath.Join(vectorDir, name+".json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading vectors: %v", err)
	}
	var h header
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	if want := "pipehost.topology." + name + "/1"; h.Schema != want {
		t.Fatalf("%s: schema %q, want %q", path, h.Schema, want)
	}
	if h.Tolerance <= 0 || h.Tolerance > 1e-9 {
		t.Fatalf("%s: tolerance %v", path, h.Tolerance)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	return h.Tolerance
}

// near compares with the documented rule: |got − want| ≤ tol·max(1, scale).
func near(got, want, scale, tol float64) bool {
	return math.Abs(got-want) <= tol*math.Max(1, scale)
}

func nearVec(got []float64, want []float64, tol float64) bool {
	if len(got) != len(want) {
		return false
	}
	scale := 0.0
	for _, w := range want {
		scale = math.Max(scale, math.Abs(w))
	}
	for i := range want {
		if !near(got[i], want[i], scale, tol) {
			return false
		}
	}
	return true
}

func TestVectorsNeighbours(t *testing.T) {
	var f struct {
		Offsets4 [][2]int `json:"offsets4"`
		Offsets8 [][2]int `json:"offsets8"`
		Cases    []struct {
			Topology vtopo `json:"topology"`
			Cells    []struct {
				Index, X, Y int
				N4          []int `json:"n4"`
				N8          []int `json:"n8"`
			} `json:"cells"`
		} `json:"cases"`
	}
	load(t, "neighbours", &f)
	if !slices.Equal(f.Offsets4, Offsets4[:]) || !slices.Equal(f.Offsets8, Offsets8[:]) {
		t.Fatalf("neighbour order: file %v %v, package %v %v", f.Offsets4, f.Offsets8, Offsets4, Offsets8)
	}
	for _, c := range f.Cases {
		g := c.Topology.build(t).Grid()
		if len(c.Cells) != g.Len() {
			t.Fatalf("%v: %d cells listed, grid has %d", c.Topology, len(c.Cells), g.Len())
		}
		for _, cell := range c.Cells {
			if x, y := g.XY(cell.Index); x != cell.X || y != cell.Y || g.Index(x, y) != cell.Index {
				t.Errorf("%v: index %d is (%d, %d), want (%d, %d)", c.Topology, cell.Index, x, y, cell.X, cell.Y)
			}
			if n := g.Neighbors4(cell.Index); !slices.Equal(n[:], cell.N4) {
				t.Errorf("%v: Neighbors4(%d) = %v, want %v", c.Topology, cell.Index, n, cell.N4)
			}
			if n := g.Neighbors8(cell.Index); !slices.Equal(n[:], cell.N8) {
				t.Errorf("%v: Neighbors8(%d) = %v, want %v", c.Topology, cell.Index, n, cell.N8)
			}
		}
	}
}

type vpoint struct {
	FX, FY, U, V float64
	Lon, Lat     *float64
	Unit         []float64
	Embed        []float64
}

func TestVectorsTransforms(t *testing.T) {
	var f struct {
		Cases []struct {
			Topology vtopo `json:"topology"`
			EmbedDim int   `json:"embed_dim"`
			Cells    []struct {
				Index, X, Y int
				vpoint
			} `json:"cells"`
			Points []vpoint `json:"points"`
			CellOf []struct {
				Lon, Lat float64
				X, Y     int
			} `json:"cell_of"`
		} `json:"cases"`
	}
	tol := load(t, "transforms", &f)
	for _, c := range f.Cases {
		top := c.Topology.build(t)
		g := top.Grid()
		if top.EmbedDim() != c.EmbedDim {
			t.Errorf("%v: EmbedDim %d, want %d", c.Topology, top.EmbedDim(), c.EmbedDim)
		}
		check := func(what string, p vpoint) {
			t.Helper()
			if e := top.Embed(p.FX, p.FY); !nearVec(e[:c.EmbedDim], p.Embed, tol) || slices.ContainsFunc(e[c.EmbedDim:], func(v float64) bool { return v != 0 }) {
				t.Errorf("%v %s: Embed(%v, %v) = %v, want %v", c.Topology, what, p.FX, p.FY, e, p.Embed)
			}
			if s, ok := top.(*Sphere); ok {
				if p.Lon == nil || p.Lat == nil {
					t.Fatalf("%v %s: sphere vector without lon/lat", c.Topology, what)
				}
				lon, lat := s.LonLatAt(p.FX, p.FY)
				if !near(lon, *p.Lon, *p.Lon, tol) || !near(lat, *p.Lat, *p.Lat, tol) {
					t.Errorf("%v %s: LonLatAt(%v, %v) = %v, %v, want %v, %v", c.Topology, what, p.FX, p.FY, lon, lat, *p.Lon, *p.Lat)
				}
				if u := UnitVector(*p.Lon, *p.Lat); !nearVec(u[:], p.Unit, tol) {
					t.Errorf("%v %s: UnitVector(%v, %v) = %v, want %v", c.Topology, what, *p.Lon, *p.Lat, u, p.Unit)
				}
			}
		}
		for _, cell := range c.Cells {
			if u, v := g.UV(cell.X, cell.Y); !near(u, cell.U, 1, tol) || !near(v, cell.V, 1, tol) {
				t.Errorf("%v: UV(%d, %d) = %v, %v, want %v, %v", c.Topology, cell.X, cell.Y, u, v, cell.U, cell.V)
			}
			if fx, fy := g.Center(cell.X, cell.Y); fx != cell.FX || fy != cell.FY {
				t.Errorf("%v: Center(%d, %d) = %v, %v, want %v, %v", c.Topology, cell.X, cell.Y, fx, fy, cell.FX, cell.FY)
			}
			if x, y, ok := g.CellAtUV(cell.U, cell.V); !ok || x != cell.X || y != cell.Y {
				t.Errorf("%v: CellAtUV(%v, %v) = %d, %d, %v, want %d, %d", c.Topology, cell.U, cell.V, x, y, ok, cell.X, cell.Y)
			}
			if s, ok := top.(*Sphere); ok {
				if x, y := s.CellOf(*cell.Lon, *cell.Lat); x != cell.X || y != cell.Y {
					t.Errorf("%v: CellOf(LonLat(%d, %d)) = %d, %d", c.Topology, cell.X, cell.Y, x, y)
				}
			}
			check(fmt.Sprintf("cell %d", cell.Index), cell.vpoint)
		}
		for _, p := range c.Points {
			check("point", p)
		}
		for _, co := range c.CellOf {
			if x, y := top.(*Sphere).CellOf(co.Lon, co.Lat); x != co.X || y != co.Y {
				t.Errorf("%v: CellOf(%v, %v) = %d, %d, want %d, %d", c.Topology, co.Lon, co.Lat, x, y, co.X, co.Y)
			}
		}
	}
}

func TestVectorsAreas(t *testing.T) {
	var f struct {
		Cases []struct {
			Topology  vtopo     `json:"topology"`
			RowAreas  []float64 `json:"row_areas"`
			TotalArea float64   `json:"total_area"`
		} `json:"cases"`
	}
	tol := load(t, "areas", &f)
	for _, c := range f.Cases {
		top := c.Topology.build(t)
		if len(c.RowAreas) != top.Height() {
			t.Fatalf("%v: %d row areas", c.Topology, len(c.RowAreas))
		}
		for y, want := range c.RowAreas {
			for _, x := range []int{0, top.Width() - 1} {
				if got := top.CellArea(top.Grid().Index(x, y)); !near(got, want, want, tol) {
					t.Errorf("%v: CellArea(%d, %d) = %v, want %v", c.Topology, x, y, got, want)
				}
			}
		}
		if got := top.Area(); !near(got, c.TotalArea, c.TotalArea, tol) {
			t.Errorf("%v: Area = %v, want %v", c.Topology, got, c.TotalArea)
		}
	}
}

func TestVectorsDistances(t *testing.T) {
	var f struct {
		Cases []struct {
			Topology vtopo `json:"topology"`
			Pairs    []struct {
				A, B     int
				Distance float64
			} `json:"pairs"`
		} `json:"cases"`
	}
	tol := load(t, "distances", &f)
	for _, c := range f.Cases {
		top := c.Topology.build(t)
		// Distances are compared against the scale of the surface, so that a
		// zero distance computed as 1e-10 m on a 6371 km sphere passes.
		scale := math.Sqrt(top.Area())
		for _, p := range c.Pairs {
			for _, got := range []float64{top.Distance(p.A, p.B), top.Distance(p.B, p.A)} {
				if !near(got, p.Distance, scale, tol) {
					t.Errorf("%v: Distance(%d, %d) = %v, want %v", c.Topology, p.A, p.B, got, p.Distance)
				}
			}
		}
	}
}

func TestVectorsPyramid(t *testing.T) {
	var f struct {
		Cases []struct {
			Kind          string
			Width, Height int
			MaxLevels     int `json:"max_levels"`
			Levels        []Level
			Mappings      []struct {
				Fine, Coarse int
				Parents      []int
				Children     [][]int
			}
		} `json:"cases"`
		Invalid []struct {
			Kind                  string
			Width, Height, Levels int
		} `json:"invalid"`
	}
	load(t, "pyramid", &f)
	for _, c := range f.Cases {
		name := fmt.Sprintf("%s %d×%d", c.Kind, c.Width, c.Height)
		if got := MaxLevels(c.Kind, c.Width, c.Height); got != c.MaxLevels {
			t.Errorf("%s: MaxLevels = %d, want %d", name, got, c.MaxLevels)
		}
		levels, err := Levels(c.Kind, c.Width, c.Height, c.MaxLevels)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !slices.Equal(levels, c.Levels) {
			t.Errorf("%s: Levels = %v, want %v", name, levels, c.Levels)
		}
		infos, err := GridInfos(c.Kind, c.Width, c.Height, c.MaxLevels)
		if err != nil || len(infos) != len(c.Levels) {
			t.Fatalf("%s: GridInfos = %v, %v", name, infos, err)
		}
		for i, gi := range infos {
			if LevelFromProto(gi) != c.Levels[i] {
				t.Errorf("%s: GridInfos[%d] = %v, want %v", name, i, gi, c.Levels[i])
			}
		}
		for _, m := range c.Mappings {
			fine, coarse := c.Levels[m.Fine], c.Levels[m.Coarse]
			for i, want := range m.Parents {
				if got := ParentIndex(fine, coarse, i); got != want {
					t.Errorf("%s: parent of %d at level %d = %d, want %d", name, i, m.Coarse, got, want)
				}
			}
			for j, want := range m.Children {
				if got := ChildIndices(fine, coarse, j, nil); !slices.Equal(got, want) {
					t.Errorf("%s: children of %d at level %d = %v, want %v", name, j, m.Coarse, got, want)
				}
			}
		}
	}
	for _, c := range f.Invalid {
		if ls, err := Levels(c.Kind, c.Width, c.Height, c.Levels); err == nil {
			t.Errorf("Levels(%q, %d, %d, %d) = %v, want an error", c.Kind, c.Width, c.Height, c.Levels, ls)
		}
	}
}

func TestVectorsSampling(t *testing.T) {
	var f struct {
		Cases []struct {
			Topology vtopo     `json:"topology"`
			Data     []float64 `json:"data"`
			Samples  []struct{ FX, FY, Value float64 }
		} `json:"cases"`
	}
	tol := load(t, "sampling", &f)
	for _, c := range f.Cases {
		g := c.Topology.build(t).Grid()
		data := make([]float32, len(c.Data))
		for i, v := range c.Data {
			data[i] = float32(v)
			if float64(data[i]) != v {
				t.Fatalf("%v: data[%d] = %v is not exact in float32", c.Topology, i, v)
			}
		}
		for _, s := range c.Samples {
			if got := Sample(g, data, s.FX, s.FY); !near(got, s.Value, s.Value, tol) {
				t.Errorf("%v: Sample(%v, %v) = %v, want %v", c.Topology, s.FX, s.FY, got, s.Value)
			}
			if got := Sample(g, c.Data, s.FX, s.FY); !near(got, s.Value, s.Value, tol) {
				t.Errorf("%v: Sample[float64](%v, %v) = %v, want %v", c.Topology, s.FX, s.FY, got, s.Value)
			}
		}
	}
}

func TestVectorsLoad(t *testing.T) {
	var f struct {
		Cases []struct {
			Kind          string
			Width, Height int
			Options       struct {
				Radius      float64
				MinorRadius float64 `json:"minor_radius"`
				Edge        string
			}
			Topology *vtopo
			Error    bool
		} `json:"cases"`
	}
	tol := load(t, "load", &f)
	for _, c := range f.Cases {
		opts := Options{Radius: c.Options.Radius, MinorRadius: c.Options.MinorRadius}
		if c.Options.Edge != "" {
			w, err := ParseWrap(c.Options.Edge)
			if err != nil {
				t.Fatal(err)
			}
			opts.Edge = w
		}
		name := fmt.Sprintf("Load(%q, %d, %d, %+v)", c.Kind, c.Width, c.Height, c.Options)
		top, err := Load(c.Kind, c.Width, c.Height, opts)
		if c.Error {
			if err == nil {
				t.Errorf("%s succeeded, want an error", name)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		w := c.Topology
		p := top.Proto()
		if top.Kind() != w.Kind || top.Width() != w.Width || top.Height() != w.Height ||
			WrapName(p.WrapX) != w.WrapX || WrapName(p.WrapY) != w.WrapY ||
			!near(p.Radius, w.Radius, w.Radius, tol) || !near(p.MinorRadius, w.MinorRadius, w.MinorRadius, tol) {
			t.Errorf("%s = %v %d×%d, want %v", name, p, top.Width(), top.Height(), w)
		}
	}
}
