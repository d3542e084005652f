// Command genvectors writes the topology test vectors in testdata/topology/.
//
// It computes every value from the conventions in docs/topology.md with its
// own, deliberately plain code (edge crossings applied one at a time, exact
// rationals for pyramid nesting, textbook formulas for areas and distances),
// not with package topology, so the package's tests compare two independent
// implementations.
//
//	go run ./topology/internal/genvectors [-dir testdata/topology]
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"slices"
)

const earthRadius = 6371000.0

// topo is a fully resolved topology: no field takes a default.
type topo struct {
	Kind        string  `json:"kind"`
	Width       int     `json:"width"`
	Height      int     `json:"height"`
	WrapX       string  `json:"wrap_x"`
	WrapY       string  `json:"wrap_y"`
	Radius      float64 `json:"radius"`
	MinorRadius float64 `json:"minor_radius"`
}

func sphere(w, h int, r float64) topo {
	return topo{"sphere", w, h, "repeat", "pole", r, 0}
}

func cylinder(w, h int, caps string, r float64) topo {
	return topo{"cylinder", w, h, "repeat", caps, r, 0}
}

func torus(w, h int, r, minor float64) topo {
	return topo{"torus", w, h, "repeat", "repeat", r, minor}
}

func plane(w, h int, wx, wy string) topo { return topo{"plane", w, h, wx, wy, 0, 0} }

// cross applies one edge crossing on an axis of n cells; it reports whether
// the position left the grid past a clamp edge and whether a pole was crossed.
func cross(v, n int, wrap string) (nv int, off, pole bool) {
	switch {
	case v < 0:
		switch wrap {
		case "repeat":
			return v + n, false, false
		case "reflect":
			return -1 - v, false, false
		case "pole":
			return -1 - v, false, true
		default:
			return 0, true, false
		}
	case v >= n:
		switch wrap {
		case "repeat":
			return v - n, false, false
		case "reflect", "pole":
			return 2*n - 1 - v, false, wrap == "pole"
		default:
			return n - 1, true, false
		}
	}
	return v, false, false
}

// cell resolves any integer position by crossing edges one at a time.
// clamp=false reports off-grid positions (neighbour rule), clamp=true clamps
// them (sampling rule).
func (t topo) cell(x, y int, clamp bool) (int, int, bool) {
	for y < 0 || y >= t.Height {
		ny, off, pole := cross(y, t.Height, t.WrapY)
		if off && !clamp {
			return 0, 0, false
		}
		if pole {
			x += t.Width / 2
		}
		y = ny
	}
	for x < 0 || x >= t.Width {
		nx, off, _ := cross(x, t.Width, t.WrapX)
		if off && !clamp {
			return 0, 0, false
		}
		x = nx
	}
	return x, y, true
}

func (t topo) index(x, y int) int { return y*t.Width + x }

var offsets4 = [][2]int{{0, -1}, {1, 0}, {0, 1}, {-1, 0}}
var offsets8 = [][2]int{{0, -1}, {1, -1}, {1, 0}, {1, 1}, {0, 1}, {-1, 1}, {-1, 0}, {-1, -1}}

func (t topo) neighbours(i int, offs [][2]int) []int {
	x, y := i%t.Width, i/t.Width
	out := make([]int, len(offs))
	for k, o := range offs {
		nx, ny, ok := t.cell(x+o[0], y+o[1], false)
		if ok {
			out[k] = t.index(nx, ny)
		} else {
			out[k] = -1
		}
	}
	return out
}

const deg = math.Pi / 180

func lonLat(t topo, fx, fy float64) (lon, lat float64) {
	u, v := fx/float64(t.Width), fy/float64(t.Height)
	return (u - 0.5) * 360, (0.5 - v) * 180
}

func unit(lon, lat float64) []float64 {
	return []float64{math.Cos(lat*deg) * math.Cos(lon*deg), math.Cos(lat*deg) * math.Sin(lon*deg), math.Sin(lat * deg)}
}

// length of the cylinder, fixed so that native cells are square.
func cylLength(t topo) float64 {
	return float64(t.Height) * (2 * math.Pi * t.Radius / float64(t.Width))
}

func embed(t topo, fx, fy float64) []float64 {
	u, v := fx/float64(t.Width), fy/float64(t.Height)
	switch t.Kind {
	case "sphere":
		p := unit(lonLat(t, fx, fy))
		return []float64{t.Radius * p[0], t.Radius * p[1], t.Radius * p[2]}
	case "cylinder":
		a := 2 * math.Pi * u
		return []float64{t.Radius * math.Cos(a), t.Radius * math.Sin(a), cylLength(t)/2 - v*cylLength(t)}
	case "torus":
		a, b := 2*math.Pi*u, 2*math.Pi*v
		return []float64{t.Radius * math.Cos(a), t.Radius * math.Sin(a), t.MinorRadius * math.Cos(b), t.MinorRadius * math.Sin(b)}
	default:
		return []float64{fx, fy}
	}
}

// cellSize is the size in metres of a native cell of a flat kind.
func cellSize(t topo) (cw, ch float64) {
	switch t.Kind {
	case "cylinder":
		return 2 * math.Pi * t.Radius / float64(t.Width), cylLength(t) / float64(t.Height)
	case "torus":
		return 2 * math.Pi * t.Radius / float64(t.Width), 2 * math.Pi * t.MinorRadius / float64(t.Height)
	}
	return 1, 1
}

func rowArea(t topo, y int) float64 {
	if t.Kind == "sphere" {
		top := (90 - 180*float64(y)/float64(t.Height)) * deg
		bottom := (90 - 180*float64(y+1)/float64(t.Height)) * deg
		return t.Radius * t.Radius * (2 * math.Pi / float64(t.Width)) * (math.Sin(top) - math.Sin(bottom))
	}
	cw, ch := cellSize(t)
	return cw * ch
}

func totalArea(t topo) float64 {
	switch t.Kind {
	case "sphere":
		return 4 * math.Pi * t.Radius * t.Radius
	case "cylinder":
		return 2 * math.Pi * t.Radius * cylLength(t)
	case "torus":
		return 4 * math.Pi * math.Pi * t.Radius * t.MinorRadius
	}
	return float64(t.Width * t.Height)
}

func distance(t topo, fx1, fy1, fx2, fy2 float64) float64 {
	if t.Kind == "sphere" {
		// Vincenty's formula on the sphere.
		l1, p1 := lonLat(t, fx1, fy1)
		l2, p2 := lonLat(t, fx2, fy2)
		dl := (l2 - l1) * deg
		p1, p2 = p1*deg, p2*deg
		a := math.Cos(p2) * math.Sin(dl)
		b := math.Cos(p1)*math.Sin(p2) - math.Sin(p1)*math.Cos(p2)*math.Cos(dl)
		c := math.Sin(p1)*math.Sin(p2) + math.Cos(p1)*math.Cos(p2)*math.Cos(dl)
		return t.Radius * math.Atan2(math.Sqrt(a*a+b*b), c)
	}
	cw, ch := cellSize(t)
	best := math.Inf(1)
	// The shortest of the images of the second point across the periodic axes.
	for kx := -1; kx <= 1; kx++ {
		for ky := -1; ky <= 1; ky++ {
			if (kx != 0 && t.WrapX != "repeat") || (ky != 0 && t.WrapY != "repeat") {
				continue
			}
			dx := (fx2 + float64(kx*t.Width) - fx1) * cw
			dy := (fy2 + float64(ky*t.Height) - fy1) * ch
			best = math.Min(best, math.Sqrt(dx*dx+dy*dy))
		}
	}
	return best
}

func bilinear(t topo, data []float64, fx, fy float64) float64 {
	px, py := fx-0.5, fy-0.5
	x0, y0 := int(math.Floor(px)), int(math.Floor(py))
	tx, ty := px-math.Floor(px), py-math.Floor(py)
	at := func(x, y int) float64 {
		x, y, _ = t.cell(x, y, true)
		return data[t.index(x, y)]
	}
	top := (1-tx)*at(x0, y0) + tx*at(x0+1, y0)
	bottom := (1-tx)*at(x0, y0+1) + tx*at(x0+1, y0+1)
	return (1-ty)*top + ty*bottom
}

// --- pyramid -----------------------------------------------------------------

func nextSize(kind string, w, h int) (int, int) {
	nw, nh := int(math.Ceil(float64(w)/2)), int(math.Ceil(float64(h)/2))
	if kind == "sphere" && nw%2 == 1 {
		nw++
	}
	return nw, nh
}

// parentExact is floor(centre · m / n) in exact rational arithmetic.
func parentExact(x, n, m int) int {
	c := new(big.Rat).SetFrac64(int64(2*x+1), int64(2*n)) // centre in (0, 1)
	c.Mul(c, new(big.Rat).SetInt64(int64(m)))
	q := new(big.Int).Quo(c.Num(), c.Denom()) // non-negative, so truncation is floor
	return int(q.Int64())
}

// --- output ------------------------------------------------------------------

type header struct {
	Schema    string  `json:"schema"`
	About     string  `json:"about"`
	Docs      string  `json:"docs"`
	Tolerance float64 `json:"tolerance"`
}

func hdr(name, about string) header {
	return header{
		Schema:    "pipehost.topology." + name + "/1",
		About:     about + " Generated by go run ./topology/internal/genvectors.",
		Docs:      "docs/topology.md",
		Tolerance: 1e-12,
	}
}

func write(dir, name string, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", " ")
	if err := enc.Encode(v); err != nil {
		fail(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".json"), collapse(buf.Bytes()), 0o644); err != nil {
		fail(err)
	}
}

// collapse puts every array or object whose members are all scalars on one
// line, which keeps the files short and their diffs readable.
func collapse(b []byte) []byte {
	lines := bytes.Split(b, []byte("\n"))
	var out [][]byte
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		open := bytes.HasSuffix(l, []byte("[")) || bytes.HasSuffix(l, []byte("{"))
		if !open {
			out = append(out, l)
			continue
		}
		j := i + 1
		var items [][]byte
		for ; j < len(lines); j++ {
			t := bytes.TrimSpace(lines[j])
			if bytes.HasPrefix(t, []byte("]")) || bytes.HasPrefix(t, []byte("}")) {
				break
			}
			if bytes.HasSuffix(t, []byte("[")) || bytes.HasSuffix(t, []byte("{")) {
				items = nil
				break
			}
			items = append(items, bytes.TrimSuffix(t, []byte(",")))
		}
		if items == nil {
			out = append(out, l)
			continue
		}
		end := bytes.TrimSpace(lines[j])
		joined := append(append([]byte{}, l...), bytes.Join(items, []byte(", "))...)
		out = append(out, append(joined, end...))
		i = j
	}
	return bytes.Join(out, []byte("\n"))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "genvectors:", err)
	os.Exit(1)
}

func main() {
	dir := flag.String("dir", "testdata/topology", "directory to write the vector files into")
	flag.Parse()
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		fail(err)
	}
	writeNeighbours(*dir)
	writeTransforms(*dir)
	writeAreas(*dir)
	writeDistances(*dir)
	writePyramid(*dir)
	writeSampling(*dir)
	writeLoad(*dir)
}

// Small grids so that every cell is listed: each edge, corner and pole is covered.
var neighbourTopologies = []topo{
	sphere(8, 4, earthRadius),
	sphere(4, 3, earthRadius),
	sphere(2, 1, earthRadius),
	cylinder(5, 3, "clamp", 5/(2*math.Pi)),
	cylinder(4, 3, "reflect", 4/(2*math.Pi)),
	torus(5, 4, 5/(2*math.Pi), 4/(2*math.Pi)),
	torus(3, 2, 3/(2*math.Pi), 2/(2*math.Pi)),
	plane(4, 3, "clamp", "clamp"),
	plane(3, 4, "reflect", "clamp"),
	plane(1, 1, "reflect", "reflect"),
}

func writeNeighbours(dir string) {
	type cellCase struct {
		Index int   `json:"index"`
		X     int   `json:"x"`
		Y     int   `json:"y"`
		N4    []int `json:"n4"`
		N8    []int `json:"n8"`
	}
	type tcase struct {
		Topology topo       `json:"topology"`
		Cells    []cellCase `json:"cells"`
	}
	out := struct {
		header
		Order4 []string `json:"order4"`
		Order8 []string `json:"order8"`
		Offs4  [][2]int `json:"offsets4"`
		Offs8  [][2]int `json:"offsets8"`
		Cases  []tcase  `json:"cases"`
	}{
		header: hdr("neighbours", "4- and 8-neighbours of every cell of small grids; -1 is no neighbour (past a clamp edge)."),
		Order4: []string{"N", "E", "S", "W"},
		Order8: []string{"N", "NE", "E", "SE", "S", "SW", "W", "NW"},
		Offs4:  offsets4,
		Offs8:  offsets8,
	}
	for _, t := range neighbourTopologies {
		c := tcase{Topology: t}
		for i := 0; i < t.Width*t.Height; i++ {
			c.Cells = append(c.Cells, cellCase{i, i % t.Width, i / t.Width, t.neighbours(i, offsets4), t.neighbours(i, offsets8)})
		}
		out.Cases = append(out.Cases, c)
	}
	write(dir, "neighbours", out)
}

func writeTransforms(dir string) {
	type point struct {
		FX    float64   `json:"fx"`
		FY    float64   `json:"fy"`
		U     float64   `json:"u"`
		V     float64   `json:"v"`
		Lon   *float64  `json:"lon,omitempty"`
		Lat   *float64  `json:"lat,omitempty"`
		Unit  []float64 `json:"unit,omitempty"`
		Embed []float64 `json:"embed"`
	}
	type cellPoint struct {
		Index int `json:"index"`
		X     int `json:"x"`
		Y     int `json:"y"`
		point
	}
	type cellOf struct {
		Lon float64 `json:"lon"`
		Lat float64 `json:"lat"`
		X   int     `json:"x"`
		Y   int     `json:"y"`
	}
	type tcase struct {
		Topology topo        `json:"topology"`
		EmbedDim int         `json:"embed_dim"`
		Cells    []cellPoint `json:"cells"`
		Points   []point     `json:"points"`
		CellOf   []cellOf    `json:"cell_of,omitempty"`
	}
	mk := func(t topo, fx, fy float64) point {
		p := point{FX: fx, FY: fy, U: fx / float64(t.Width), V: fy / float64(t.Height), Embed: embed(t, fx, fy)}
		if t.Kind == "sphere" {
			lon, lat := lonLat(t, fx, fy)
			p.Lon, p.Lat, p.Unit = &lon, &lat, unit(lon, lat)
		}
		return p
	}
	out := struct {
		header
		Cases []tcase `json:"cases"`
	}{header: hdr("transforms", "Cell centres and points in grid coordinates mapped to u/v, lon/lat, unit vectors (sphere) and the seamless embedding.")}
	for _, t := range []topo{sphere(8, 4, earthRadius), sphere(6, 5, 1), cylinder(6, 3, "clamp", 2), torus(6, 4, 3, 1.5), plane(4, 3, "clamp", "clamp")} {
		dims := map[string]int{"sphere": 3, "cylinder": 3, "torus": 4, "plane": 2}
		c := tcase{Topology: t, EmbedDim: dims[t.Kind]}
		for i := 0; i < t.Width*t.Height; i++ {
			x, y := i%t.Width, i/t.Width
			c.Cells = append(c.Cells, cellPoint{i, x, y, mk(t, float64(x)+0.5, float64(y)+0.5)})
		}
		w, h := float64(t.Width), float64(t.Height)
		for _, p := range [][2]float64{{0, 0}, {w, 0}, {0, h}, {w, h}, {w / 2, h / 2}, {0.25, 0.75}, {w - 1e-9, 1e-9}, {w / 3, h / 7}} {
			c.Points = append(c.Points, mk(t, p[0], p[1]))
		}
		if t.Kind == "sphere" {
			for _, ll := range [][2]float64{{0, 0}, {-180, 90}, {180, -90}, {179.999, 0.001}, {-179.999, -0.001}, {540, 45}, {-200, -45}, {10, 90}, {10, -90}, {45, 30}} {
				lon, lat := ll[0], ll[1]
				u := math.Mod(lon+180, 360) / 360
				if u < 0 {
					u++
				}
				x := int(math.Floor(u * w))
				y := int(math.Floor((90 - lat) / 180 * h))
				x, y = min(x, t.Width-1), min(max(y, 0), t.Height-1)
				c.CellOf = append(c.CellOf, cellOf{lon, lat, x, y})
			}
		}
		out.Cases = append(out.Cases, c)
	}
	write(dir, "transforms", out)
}

func writeAreas(dir string) {
	type tcase struct {
		Topology  topo      `json:"topology"`
		RowAreas  []float64 `json:"row_areas"`
		TotalArea float64   `json:"total_area"`
	}
	out := struct {
		header
		Cases []tcase `json:"cases"`
	}{header: hdr("areas", "Area of one cell of each row (m²) and of the whole surface.")}
	for _, t := range []topo{sphere(8, 4, earthRadius), sphere(16, 9, 1), sphere(2, 1, 2), cylinder(6, 3, "clamp", 2), torus(6, 4, 3, 1.5), plane(4, 3, "clamp", "reflect")} {
		c := tcase{Topology: t, TotalArea: totalArea(t)}
		for y := 0; y < t.Height; y++ {
			c.RowAreas = append(c.RowAreas, rowArea(t, y))
		}
		out.Cases = append(out.Cases, c)
	}
	write(dir, "areas", out)
}

func writeDistances(dir string) {
	type pair struct {
		A        int     `json:"a"`
		B        int     `json:"b"`
		Distance float64 `json:"distance"`
	}
	type tcase struct {
		Topology topo   `json:"topology"`
		Pairs    []pair `json:"pairs"`
	}
	out := struct {
		header
		Cases []tcase `json:"cases"`
	}{header: hdr("distances", "Shortest distance along the surface between cell centres (m): great circle on the sphere, shortest wrapped flat distance otherwise.")}
	for _, t := range []topo{sphere(8, 4, earthRadius), sphere(6, 5, 1), cylinder(6, 3, "clamp", 2), cylinder(6, 3, "reflect", 2), torus(6, 4, 3, 1.5), plane(4, 3, "clamp", "clamp")} {
		c := tcase{Topology: t}
		n := t.Width * t.Height
		// From corner, edge-middle and interior cells to every cell: seams,
		// poles and antipodes included.
		w, h := t.Width, t.Height
		from := []int{0, w / 2, w - 1, (h/2)*w + w/3, (h-1)*w + w/2, n - 1}
		for k, a := range from {
			if slices.Contains(from[:k], a) {
				continue
			}
			for b := 0; b < n; b++ {
				ax, ay := float64(a%t.Width)+0.5, float64(a/t.Width)+0.5
				bx, by := float64(b%t.Width)+0.5, float64(b/t.Width)+0.5
				c.Pairs = append(c.Pairs, pair{a, b, distance(t, ax, ay, bx, by)})
			}
		}
		out.Cases = append(out.Cases, c)
	}
	write(dir, "distances", out)
}

func writePyramid(dir string) {
	type level struct {
		Level  int `json:"level"`
		Width  int `json:"width"`
		Height int `json:"height"`
	}
	type mapping struct {
		Fine     int     `json:"fine"`
		Coarse   int     `json:"coarse"`
		Parents  []int   `json:"parents"`
		Children [][]int `json:"children"`
	}
	type tcase struct {
		Kind      string    `json:"kind"`
		Width     int       `json:"width"`
		Height    int       `json:"height"`
		MaxLevels int       `json:"max_levels"`
		Levels    []level   `json:"levels"`
		Mappings  []mapping `json:"mappings"`
	}
	type bad struct {
		Kind   string `json:"kind"`
		Width  int    `json:"width"`
		Height int    `json:"height"`
		Levels int    `json:"levels"`
	}
	out := struct {
		header
		Cases   []tcase `json:"cases"`
		Invalid []bad   `json:"invalid"`
	}{header: hdr("pyramid", "Pyramid level sizes (all levels down to max_levels) and, between adjacent levels, the parent of every fine cell and the children of every coarse cell (row by row).")}
	for _, k := range []struct {
		kind string
		w, h int
	}{{"sphere", 8, 4}, {"sphere", 12, 6}, {"sphere", 10, 5}, {"torus", 5, 3}, {"cylinder", 7, 4}, {"plane", 6, 1}, {"plane", 9, 9}, {"torus", 1, 1}, {"sphere", 2, 1}, {"sphere", 1024, 512}} {
		c := tcase{Kind: k.kind, Width: k.w, Height: k.h}
		w, h := k.w, k.h
		c.Levels = append(c.Levels, level{0, w, h})
		for {
			nw, nh := nextSize(k.kind, w, h)
			if nw == w || nh == h {
				break
			}
			w, h = nw, nh
			c.Levels = append(c.Levels, level{len(c.Levels), w, h})
		}
		c.MaxLevels = len(c.Levels) - 1
		for i := 0; i+1 < len(c.Levels) && c.Levels[i].Width*c.Levels[i].Height <= 256; i++ {
			f, g := c.Levels[i], c.Levels[i+1]
			m := mapping{Fine: i, Coarse: i + 1, Children: make([][]int, g.Width*g.Height)}
			for y := 0; y < f.Height; y++ {
				for x := 0; x < f.Width; x++ {
					p := parentExact(y, f.Height, g.Height)*g.Width + parentExact(x, f.Width, g.Width)
					m.Parents = append(m.Parents, p)
					m.Children[p] = append(m.Children[p], y*f.Width+x)
				}
			}
			c.Mappings = append(c.Mappings, m)
		}
		out.Cases = append(out.Cases, c)
	}
	out.Invalid = []bad{{"sphere", 8, 4, 3}, {"plane", 6, 1, 1}, {"torus", 1, 1, 1}, {"sphere", 2, 1, 1}, {"plane", 16, 16, -1}, {"sphere", 7, 4, 0}, {"cube", 8, 8, 0}, {"torus", 0, 4, 0}}
	write(dir, "pyramid", out)
}

func writeSampling(dir string) {
	type sample struct {
		FX    float64 `json:"fx"`
		FY    float64 `json:"fy"`
		Value float64 `json:"value"`
	}
	type tcase struct {
		Topology topo      `json:"topology"`
		Data     []float64 `json:"data"`
		Samples  []sample  `json:"samples"`
	}
	out := struct {
		header
		Cases []tcase `json:"cases"`
	}{header: hdr("sampling", "Bilinear samples of float32 grids (data is row-major and exact in float32) at grid coordinates, across seams, poles and edges.")}
	for _, t := range []topo{sphere(8, 4, earthRadius), cylinder(5, 3, "clamp", 1), cylinder(5, 3, "reflect", 1), torus(4, 3, 1, 1), plane(4, 3, "clamp", "reflect")} {
		n := t.Width * t.Height
		c := tcase{Topology: t, Data: make([]float64, n)}
		for i := range c.Data {
			c.Data[i] = float64((i*37)%101)/8 - 5
		}
		w, h := float64(t.Width), float64(t.Height)
		pts := [][2]float64{
			{0.5, 0.5}, {1.25, 1.75}, // interior, on a centre and between centres
			{0, 1.5}, {w, 1.5}, {0.1, 1.2}, {w - 0.1, 1.2}, {1e-9, 2.5}, {w - 1e-9, 2.5}, // x seam
			{2.3, 0}, {2.3, 0.2}, {2.3, h}, {2.3, h - 0.2}, {1.5, 1e-9}, // top and bottom edges / poles
			{0, 0}, {w, 0}, {0, h}, {w, h}, {0.2, 0.3}, {w - 0.2, h - 0.3}, // corners
			{-0.7, 1.5}, {w + 0.7, 1.5}, {1.5, -0.7}, {1.5, h + 0.7}, {-1.2, -1.4}, // outside the grid
		}
		for _, p := range pts {
			c.Samples = append(c.Samples, sample{p[0], p[1], bilinear(t, c.Data, p[0], p[1])})
		}
		out.Cases = append(out.Cases, c)
	}
	write(dir, "sampling", out)
}

func writeLoad(dir string) {
	type options struct {
		Radius      float64 `json:"radius"`
		MinorRadius float64 `json:"minor_radius"`
		Edge        string  `json:"edge"`
	}
	type tcase struct {
		Kind     string  `json:"kind"`
		Width    int     `json:"width"`
		Height   int     `json:"height"`
		Options  options `json:"options"`
		Topology *topo   `json:"topology"`
		Error    bool    `json:"error"`
	}
	ok := func(kind string, w, h int, o options, t topo) tcase {
		return tcase{kind, w, h, o, &t, false}
	}
	bad := func(kind string, w, h int, o options) tcase { return tcase{kind, w, h, o, nil, true} }
	out := struct {
		header
		Cases []tcase `json:"cases"`
	}{header: hdr("load", "Loader inputs (kind, size, options; zero/empty options take defaults) and the resolved topology, or error: true.")}
	out.Cases = []tcase{
		ok("sphere", 360, 180, options{}, sphere(360, 180, earthRadius)),
		ok("sphere", 8, 4, options{Radius: 1}, sphere(8, 4, 1)),
		ok("cylinder", 64, 32, options{}, cylinder(64, 32, "clamp", 64/(2*math.Pi))),
		ok("cylinder", 64, 32, options{Radius: 10, Edge: "reflect"}, cylinder(64, 32, "reflect", 10)),
		ok("torus", 64, 32, options{}, torus(64, 32, 64/(2*math.Pi), 32/(2*math.Pi))),
		ok("torus", 64, 32, options{Radius: 3, MinorRadius: 1}, torus(64, 32, 3, 1)),
		ok("plane", 5, 7, options{}, plane(5, 7, "clamp", "clamp")),
		ok("plane", 5, 7, options{Edge: "reflect"}, plane(5, 7, "reflect", "reflect")),
		bad("cube", 8, 8, options{}),
		bad("Sphere", 8, 4, options{}),
		bad("sphere", 7, 4, options{}),
		bad("sphere", 0, 4, options{}),
		bad("torus", 8, -1, options{}),
		bad("sphere", 8, 4, options{Radius: -1}),
		bad("torus", 8, 4, options{MinorRadius: -0.5}),
		bad("cylinder", 8, 4, options{Edge: "repeat"}),
		bad("cylinder", 8, 4, options{Edge: "pole"}),
		bad("sphere", 8, 4, options{Edge: "clamp"}),
		bad("torus", 8, 4, options{Edge: "reflect"}),
		bad("plane", 8, 4, options{Edge: "repeat"}),
	}
	write(dir, "load", out)
}
