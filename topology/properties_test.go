package topology

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"testing"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// zoo is one topology of every kind and edge policy over a spread of sizes,
// including the degenerate ones (a single row or column).
func zoo(t *testing.T) []Topology {
	t.Helper()
	var out []Topology
	add := func(kind string, w, h int, o Options) {
		top, err := Load(kind, w, h, o)
		if err != nil {
			t.Fatalf("Load(%s, %d, %d, %+v): %v", kind, w, h, o, err)
		}
		out = append(out, top)
	}
	for _, s := range [][2]int{{2, 1}, {4, 2}, {6, 3}, {8, 5}, {10, 7}, {16, 8}} {
		add(KindSphere, s[0], s[1], Options{})
	}
	for _, s := range [][2]int{{1, 1}, {3, 1}, {1, 4}, {5, 3}, {8, 6}, {7, 9}} {
		add(KindCylinder, s[0], s[1], Options{})
		add(KindCylinder, s[0], s[1], Options{Edge: Reflect, Radius: 3})
		add(KindTorus, s[0], s[1], Options{})
		add(KindTorus, s[0], s[1], Options{Radius: 5, MinorRadius: 2})
		add(KindPlane, s[0], s[1], Options{})
		add(KindPlane, s[0], s[1], Options{Edge: Reflect})
	}
	p, err := FromProto(&pb.Topology{Kind: KindPlane, WrapX: Reflect, WrapY: Clamp}, 4, 3)
	if err != nil {
		t.Fatal(err)
	}
	return append(out, p)
}

func name(top Topology) string {
	g := top.Grid()
	return fmt.Sprintf("%s %d×%d (%s, %s)", top.Kind(), g.Width(), g.Height(), WrapName(g.WrapX()), WrapName(g.WrapY()))
}

func TestResolveRoundTrips(t *testing.T) {
	for _, top := range zoo(t) {
		g := top.Grid()
		w, h := g.Width(), g.Height()
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				for k := -3; k <= 3; k++ {
					if g.WrapX() == Repeat {
						if rx, ry, ok := g.Resolve(x+k*w, y); !ok || rx != x || ry != y {
							t.Errorf("%s: Resolve(%d, %d) = %d, %d, %v", name(top), x+k*w, y, rx, ry, ok)
						}
					}
					if g.WrapY() != Clamp {
						// Repeat, Reflect and Pole all have period 2H in y.
						if rx, ry, ok := g.Resolve(x, y+2*k*h); !ok || rx != x || ry != y {
							t.Errorf("%s: Resolve(%d, %d) = %d, %d, %v", name(top), x, y+2*k*h, rx, ry, ok)
						}
					}
				}
				if g.WrapY() == Pole {
					// Mirror images across either pole sit half the width away.
					for _, my := range []int{-1 - y, 2*h - 1 - y} {
						if rx, ry, ok := g.Resolve(x, my); !ok || rx != (x+w/2)%w || ry != y {
							t.Errorf("%s: Resolve(%d, %d) = %d, %d", name(top), x, my, rx, ry)
						}
					}
				}
				for _, d := range [][2]int{{-1, 0}, {w, 0}, {0, -1}, {0, h}, {-5, -7}, {w + 3, h + 2}} {
					rx, ry, ok := g.Resolve(x+d[0], y+d[1])
					cx, cy := g.ResolveClamped(x+d[0], y+d[1])
					px, py := x+d[0], y+d[1]
					offX := g.WrapX() == Clamp && (px < 0 || px >= w)
					offY := g.WrapY() == Clamp && (py < 0 || py >= h)
					if ok == (offX || offY) {
						t.Errorf("%s: Resolve(%d, %d) ok = %v", name(top), x+d[0], y+d[1], ok)
					}
					if ok && (rx != cx || ry != cy) {
						t.Errorf("%s: Resolve and ResolveClamped disagree at (%d, %d)", name(top), x+d[0], y+d[1])
					}
					if cx < 0 || cx >= w || cy < 0 || cy >= h {
						t.Errorf("%s: ResolveClamped(%d, %d) = %d, %d off the grid", name(top), x+d[0], y+d[1], cx, cy)
					}
				}
				u, v := g.UV(x, y)
				if cx, cy, ok := g.CellAtUV(u, v); !ok || cx != x || cy != y {
					t.Errorf("%s: CellAtUV(UV(%d, %d)) = %d, %d, %v", name(top), x, y, cx, cy, ok)
				}
			}
		}
	}
}

func TestSphereLonLatRoundTrip(t *testing.T) {
	top, err := Load(KindSphere, 360, 180, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := top.(*Sphere)
	for y := 0; y < 180; y += 7 {
		for x := 0; x < 360; x += 11 {
			lon, lat := s.LonLat(x, y)
			if lon < -180 || lon >= 180 || lat <= -90 || lat >= 90 {
				t.Fatalf("LonLat(%d, %d) = %v, %v out of range", x, y, lon, lat)
			}
			if cx, cy := s.CellOf(lon, lat); cx != x || cy != y {
				t.Errorf("CellOf(LonLat(%d, %d)) = %d, %d", x, y, cx, cy)
			}
			if cx, cy := s.CellOf(lon+360, lat); cx != x || cy != y {
				t.Errorf("CellOf(lon+360) of (%d, %d) = %d, %d", x, y, cx, cy)
			}
			fx, fy := s.GridAt(lon, lat)
			if math.Abs(fx-(float64(x)+0.5)) > 1e-9 || math.Abs(fy-(float64(y)+0.5)) > 1e-9 {
				t.Errorf("GridAt(LonLat(%d, %d)) = %v, %v", x, y, fx, fy)
			}
			v := UnitVector(lon, lat)
			if n := math.Sqrt(v[0]*v[0] + v[1]*v[1] + v[2]*v[2]); math.Abs(n-1) > 1e-15 {
				t.Errorf("|UnitVector(%v, %v)| = %v", lon, lat, n)
			}
			// Back from the vector to lon/lat.
			if l, p := math.Atan2(v[1], v[0])*180/math.Pi, math.Asin(v[2])*180/math.Pi; math.Abs(l-lon) > 1e-9 || math.Abs(p-lat) > 1e-9 {
				t.Errorf("UnitVector(%v, %v) reads back as %v, %v", lon, lat, l, p)
			}
		}
	}
}

func TestNeighbourSymmetry(t *testing.T) {
	for _, top := range zoo(t) {
		g := top.Grid()
		for i := 0; i < g.Len(); i++ {
			n4, n8 := g.Neighbors4(i), g.Neighbors8(i)
			for k, n := range n4 {
				if n8[2*k] != n {
					t.Errorf("%s: cell %d: Neighbors8[%d] = %d, Neighbors4[%d] = %d", name(top), i, 2*k, n8[2*k], k, n)
				}
			}
			for _, n := range n8 {
				if n == -1 {
					continue
				}
				if n < 0 || n >= g.Len() {
					t.Fatalf("%s: cell %d has neighbour %d off the grid", name(top), i, n)
				}
				back := g.Neighbors8(n)
				if !slices.Contains(back[:], i) {
					t.Errorf("%s: %d is a neighbour of %d but not the reverse (%v)", name(top), n, i, back)
				}
			}
			for _, n := range n4 {
				if back := g.Neighbors4(n); n != -1 && !slices.Contains(back[:], i) {
					t.Errorf("%s: %d is a 4-neighbour of %d but not the reverse (%v)", name(top), n, i, back)
				}
			}
			// -1 appears exactly where a step leaves the grid past a Clamp edge.
			x, y := g.XY(i)
			for k, o := range Offsets8 {
				off := (g.WrapX() == Clamp && (x+o[0] < 0 || x+o[0] >= g.Width())) ||
					(g.WrapY() == Clamp && (y+o[1] < 0 || y+o[1] >= g.Height()))
				if (n8[k] == -1) != off {
					t.Errorf("%s: cell %d direction %d = %d", name(top), i, k, n8[k])
				}
			}
		}
	}
}

func TestAreasSum(t *testing.T) {
	var tops []Topology
	for _, c := range []struct {
		kind string
		w, h int
		o    Options
	}{
		{KindSphere, 360, 180, Options{}}, {KindSphere, 1024, 511, Options{}}, {KindSphere, 2, 1, Options{Radius: 1}},
		{KindCylinder, 100, 37, Options{}}, {KindCylinder, 64, 64, Options{Radius: 1000}},
		{KindTorus, 128, 33, Options{}}, {KindTorus, 64, 64, Options{Radius: 10, MinorRadius: 3}},
		{KindPlane, 17, 5, Options{}},
	} {
		top, err := Load(c.kind, c.w, c.h, c.o)
		if err != nil {
			t.Fatal(err)
		}
		tops = append(tops, top)
		// The same surface at a coarser level has the same area.
		for _, l := range mustLevels(t, c.kind, c.w, c.h)[1:] {
			lt, err := top.WithSize(l.Width, l.Height)
			if err != nil {
				t.Fatal(err)
			}
			tops = append(tops, lt)
		}
	}
	for _, top := range tops {
		sum := 0.0
		for i := 0; i < top.Grid().Len(); i++ {
			sum += top.CellArea(i)
		}
		want := top.Area()
		switch s := top.(type) {
		case *Sphere:
			want = 4 * math.Pi * s.Radius() * s.Radius()
		case *Cylinder:
			want = 2 * math.Pi * s.Radius() * s.Length()
		case *Torus:
			want = 4 * math.Pi * math.Pi * s.Radius() * s.MinorRadius()
		}
		if math.Abs(sum-want) > 1e-12*want || math.Abs(top.Area()-want) > 1e-12*want {
			t.Errorf("%s: cells sum to %v, Area %v, want %v", name(top), sum, top.Area(), want)
		}
	}
}

func mustLevels(t *testing.T, kind string, w, h int) []Level {
	t.Helper()
	ls, err := Levels(kind, w, h, MaxLevels(kind, w, h))
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

func TestPyramid(t *testing.T) {
	for _, kind := range []string{KindSphere, KindCylinder, KindTorus, KindPlane} {
		for w := 1; w <= 40; w++ {
			if kind == KindSphere && w%2 == 1 {
				if _, err := Levels(kind, w, 4, 0); err == nil {
					t.Errorf("sphere of odd width %d accepted", w)
				}
				continue
			}
			for h := 1; h <= 40; h++ {
				m := MaxLevels(kind, w, h)
				if _, err := Levels(kind, w, h, m+1); err == nil {
					t.Errorf("%s %d×%d: %d levels accepted, max is %d", kind, w, h, m+1, m)
				}
				if _, err := Levels(kind, w, h, -1); err == nil {
					t.Errorf("%s %d×%d: -1 levels accepted", kind, w, h)
				}
				ls := mustLevels(t, kind, w, h)
				for i := 1; i < len(ls); i++ {
					f, c := ls[i-1], ls[i]
					if c.Level != i || c.Width >= f.Width || c.Height >= f.Height || c.Width < 1 || c.Height < 1 {
						t.Fatalf("%s %d×%d: level %d is %v after %v", kind, w, h, i, c, f)
					}
					if c.Width < (f.Width+1)/2 || c.Height != (f.Height+1)/2 || (kind == KindSphere && c.Width%2 != 0) {
						t.Fatalf("%s %d×%d: level %d is %v after %v", kind, w, h, i, c, f)
					}
					checkNesting(t, kind, f, c)
				}
				// The last level cannot shrink any further in some dimension.
				last := ls[len(ls)-1]
				if nw, nh := NextSize(kind, last.Width, last.Height); nw < last.Width && nh < last.Height {
					t.Errorf("%s %d×%d: stopped at %v, but %d×%d is smaller", kind, w, h, last, nw, nh)
				}
			}
		}
	}
}

// checkNesting: the children of the coarse cells partition the fine grid, each
// fine cell lies in the coarse cell its parent names, and each coarse cell has
// one or two children per axis.
func checkNesting(t *testing.T, kind string, f, c Level) {
	t.Helper()
	owner := make([]int, f.Width*f.Height)
	for i := range owner {
		owner[i] = -1
	}
	var kids []int
	for j := 0; j < c.Width*c.Height; j++ {
		x0, y0, x1, y1 := Children(f, c, j%c.Width, j/c.Width)
		if x1-x0 < 1 || x1-x0 > 2 || y1-y0 < 1 || y1-y0 > 2 {
			t.Fatalf("%s %v→%v: coarse %d has children [%d,%d)×[%d,%d)", kind, f, c, j, x0, x1, y0, y1)
		}
		kids = ChildIndices(f, c, j, kids[:0])
		for _, i := range kids {
			if owner[i] != -1 {
				t.Fatalf("%s %v→%v: fine %d is a child of %d and %d", kind, f, c, i, owner[i], j)
			}
			owner[i] = j
		}
	}
	for i, j := range owner {
		if j == -1 || ParentIndex(f, c, i) != j {
			t.Fatalf("%s %v→%v: fine %d: parent %d, child of %d", kind, f, c, i, ParentIndex(f, c, i), j)
		}
		// The fine centre lies inside its parent's extent (in u, v).
		x, y := i%f.Width, i/f.Width
		px, py := Parent(f, c, x, y)
		u, v := (float64(x)+0.5)/float64(f.Width), (float64(y)+0.5)/float64(f.Height)
		if u < float64(px)/float64(c.Width) || u >= float64(px+1)/float64(c.Width) ||
			v < float64(py)/float64(c.Height) || v >= float64(py+1)/float64(c.Height) {
			t.Fatalf("%s %v→%v: centre of %d (%v, %v) outside parent (%d, %d)", kind, f, c, i, u, v, px, py)
		}
	}
}

// field is smooth and periodic in x (and in y for the torus), so the only
// change between two nearby samples is the gradient's.
func field(top Topology) []float64 {
	g := top.Grid()
	data := make([]float64, g.Len())
	for i := range data {
		fx, fy := g.Center(g.XY(i))
		a := 2 * math.Pi * fx / float64(g.Width())
		b := math.Pi * fy / float64(g.Height())
		if top.Kind() == KindTorus {
			b *= 2
		}
		data[i] = math.Sin(a) + 0.5*math.Cos(b) + 0.25*math.Sin(2*a+b)
	}
	return data
}

func TestSamplingSeams(t *testing.T) {
	const eps = 1e-6
	for _, top := range zoo(t) {
		g := top.Grid()
		w, h := float64(g.Width()), float64(g.Height())
		data := field(top)
		// Bilinear interpolation is Lipschitz with the largest difference of
		// adjacent cells; a jump at a seam would break this bound.
		lip := 0.0
		for i := range data {
			for _, n := range g.Neighbors8(i) {
				if n != -1 {
					lip = math.Max(lip, math.Abs(data[i]-data[n]))
				}
			}
		}
		bound := 2*lip*2*eps + 1e-12
		for _, fy := range []float64{0.5, h / 3, h - 0.25} {
			for _, fx := range []float64{0, w} {
				if g.WrapX() != Repeat {
					continue
				}
				a, b := Sample(g, data, fx-eps, fy), Sample(g, data, fx+eps, fy)
				if math.Abs(a-b) > bound {
					t.Errorf("%s: x seam at (%v, %v): %v vs %v", name(top), fx, fy, a, b)
				}
			}
		}
		for _, fx := range []float64{0.5, w / 3, w - 0.2} {
			switch g.WrapY() {
			case Repeat:
				for _, fy := range []float64{0, h} {
					if a, b := Sample(g, data, fx, fy-eps), Sample(g, data, fx, fy+eps); math.Abs(a-b) > bound {
						t.Errorf("%s: y seam at (%v, %v): %v vs %v", name(top), fx, fy, a, b)
					}
				}
			case Pole:
				// Just past a pole is just before it, half the way round.
				for _, d := range []float64{eps, 0.3} {
					if a, b := Sample(g, data, fx, -d), Sample(g, data, fx+w/2, d); math.Abs(a-b) > 1e-12 {
						t.Errorf("%s: north pole at fx %v, %v: %v vs %v", name(top), fx, d, a, b)
					}
					if a, b := Sample(g, data, fx, h+d), Sample(g, data, fx+w/2, h-d); math.Abs(a-b) > 1e-12 {
						t.Errorf("%s: south pole at fx %v, %v: %v vs %v", name(top), fx, d, a, b)
					}
				}
			}
		}
		// At cell centres sampling returns the data.
		for i := 0; i < g.Len(); i++ {
			fx, fy := g.Center(g.XY(i))
			if got := Sample(g, data, fx, fy); got != data[i] {
				t.Errorf("%s: sample at centre of %d = %v, want %v", name(top), i, got, data[i])
			}
		}
	}
}

func TestSampleEdgeCases(t *testing.T) {
	top, err := Load(KindTorus, 4, 4, Options{})
	if err != nil {
		t.Fatal(err)
	}
	g := top.Grid()
	data := make([]uint8, 16)
	for i := range data {
		data[i] = uint8(i * 10)
	}
	for _, p := range [][2]float64{{math.NaN(), 1}, {1, math.Inf(1)}, {1e300, 1}} {
		if v := Sample(g, data, p[0], p[1]); !math.IsNaN(v) {
			t.Errorf("Sample(%v, %v) = %v, want NaN", p[0], p[1], v)
		}
	}
	if v := SampleUV(g, data, 0.625, 0.375); v != float64(data[6]) {
		t.Errorf("SampleUV at the centre of cell 6 = %v, want %v", v, data[6])
	}
	defer func() {
		if recover() == nil {
			t.Error("Sample with a short buffer did not panic")
		}
	}()
	Sample(g, data[:15], 1, 1)
}

func TestEmbeddingsSeamless(t *testing.T) {
	for _, top := range zoo(t) {
		g := top.Grid()
		w, h := float64(g.Width()), float64(g.Height())
		scale := math.Sqrt(top.Area())
		same := func(a, b [4]float64) bool {
			for k := range a {
				if math.Abs(a[k]-b[k]) > 1e-12*scale {
					return false
				}
			}
			return true
		}
		for _, f := range []float64{0.3, 0.5, 1.7} {
			fy, fx := math.Min(f, h), math.Min(f, w)
			if g.WrapX() == Repeat && !same(top.Embed(0, fy), top.Embed(w, fy)) {
				t.Errorf("%s: Embed jumps across x at fy %v", name(top), fy)
			}
			if g.WrapY() == Repeat && !same(top.Embed(fx, 0), top.Embed(fx, h)) {
				t.Errorf("%s: Embed jumps across y at fx %v", name(top), fx)
			}
			if g.WrapY() == Pole {
				// The whole top edge is one point, the pole.
				if !same(top.Embed(fx, 0), top.Embed(fx+w/3, 0)) || !same(top.Embed(fx, -0.2), top.Embed(fx+w/2, 0.2)) {
					t.Errorf("%s: Embed is not continuous over the north pole", name(top))
				}
			}
		}
		// The embedding is in metres: a small step moves it by the step's length.
		if top.Kind() != KindSphere {
			a, b := top.Embed(0.5, 0.5), top.Embed(0.5+1e-4, 0.5)
			d := 0.0
			for k := range a {
				d += (a[k] - b[k]) * (a[k] - b[k])
			}
			if want := top.DistanceAt(0.5, 0.5, 0.5+1e-4, 0.5); math.Abs(math.Sqrt(d)-want) > 1e-6*want {
				t.Errorf("%s: Embed moves %v for a step of %v", name(top), math.Sqrt(d), want)
			}
		}
	}
}

func TestDistances(t *testing.T) {
	for _, top := range zoo(t) {
		g := top.Grid()
		for a := 0; a < g.Len(); a++ {
			if d := top.Distance(a, a); d != 0 {
				t.Errorf("%s: Distance(%d, %d) = %v", name(top), a, a, d)
			}
			for _, b := range g.Neighbors8(a) {
				if b != -1 && math.Abs(top.Distance(a, b)-top.Distance(b, a)) > 1e-9 {
					t.Errorf("%s: Distance(%d, %d) asymmetric", name(top), a, b)
				}
			}
		}
		switch s := top.(type) {
		case *Sphere:
			w, h := g.Width(), g.Height()
			for a := 0; a < g.Len(); a++ {
				x, y := g.XY(a)
				anti := g.Index((x+w/2)%w, h-1-y)
				if d := s.Distance(a, anti); math.Abs(d-math.Pi*s.Radius()) > 1e-9*s.Radius() {
					t.Errorf("%s: antipodes %d, %d are %v apart, want πR", name(top), a, anti, d)
				}
			}
		case *Cylinder, *Torus:
			// Across the x seam, neighbours are one cell width apart.
			cw := 2 * math.Pi * top.Radius() / float64(g.Width())
			for y := 0; y < g.Height(); y++ {
				a, b := g.Index(0, y), g.Index(g.Width()-1, y)
				want := math.Min(cw*float64(g.Width()-1), cw)
				if d := top.Distance(a, b); math.Abs(d-want) > 1e-12*want {
					t.Errorf("%s: Distance across the seam = %v, want %v", name(top), d, want)
				}
			}
		}
	}
}

func TestLoader(t *testing.T) {
	for _, c := range []struct {
		kind string
		o    Options
		want any
	}{
		{KindSphere, Options{}, &Sphere{}},
		{KindSphere, Options{Radius: 1737400}, &Sphere{}},
		{KindCylinder, Options{}, &Cylinder{}},
		{KindCylinder, Options{Edge: Reflect}, &Cylinder{}},
		{KindCylinder, Options{Edge: Clamp, Radius: 2}, &Cylinder{}},
		{KindTorus, Options{}, &Torus{}},
		{KindTorus, Options{Radius: 4, MinorRadius: 1}, &Torus{}},
		{KindPlane, Options{}, &Plane{}},
		{KindPlane, Options{Edge: Reflect}, &Plane{}},
	} {
		top, err := Load(c.kind, 64, 32, c.o)
		if err != nil {
			t.Fatalf("Load(%s, %+v): %v", c.kind, c.o, err)
		}
		if reflect.TypeOf(top) != reflect.TypeOf(c.want) || top.Kind() != c.kind {
			t.Errorf("Load(%s) = %T (%s)", c.kind, top, top.Kind())
		}
		if c.o.Radius != 0 && top.Radius() != c.o.Radius {
			t.Errorf("Load(%s, %+v): radius %v", c.kind, c.o, top.Radius())
		}
		back, err := FromProto(top.Proto(), 64, 32)
		if err != nil || !reflect.DeepEqual(back, top) {
			t.Errorf("FromProto(Proto()) of %s = %#v, %v; want %#v", name(top), back, err, top)
		}
		// A pyramid level keeps the surface; its Proto rebuilds the native grid.
		lvl, err := top.WithSize(NextSize(c.kind, 64, 32))
		if err != nil {
			t.Fatal(err)
		}
		if lvl.Kind() != c.kind || lvl.Radius() != top.Radius() || math.Abs(lvl.Area()-top.Area()) > 1e-12*top.Area() {
			t.Errorf("%s at the next level: %s, radius %v, area %v", name(top), name(lvl), lvl.Radius(), lvl.Area())
		}
		if back, err := FromProto(lvl.Proto(), 64, 32); err != nil || !reflect.DeepEqual(back, top) {
			t.Errorf("FromProto(level Proto()) of %s = %#v, %v", name(top), back, err)
		}
	}
	if top, err := Load(KindSphere, 8, 4, Options{}); err != nil || top.Radius() != EarthRadius {
		t.Errorf("default sphere radius: %v, %v", top, err)
	}
	if top, err := Load(KindTorus, 100, 50, Options{}); err != nil || top.CellArea(0) < 1-1e-12 || top.CellArea(0) > 1+1e-12 {
		t.Errorf("default torus cells are not 1 m²: %v, %v", top, err)
	}
	if top, err := Load(KindCylinder, 100, 50, Options{}); err != nil || math.Abs(top.CellArea(0)-1) > 1e-12 {
		t.Errorf("default cylinder cells are not 1 m²: %v, %v", top, err)
	}

	for _, c := range []struct {
		p    *pb.Topology
		w, h int
	}{
		{nil, 8, 4},
		{&pb.Topology{Kind: ""}, 8, 4},
		{&pb.Topology{Kind: "hexasphere"}, 8, 4},
		{&pb.Topology{Kind: KindSphere}, 9, 4},
		{&pb.Topology{Kind: KindSphere}, 8, 0},
		{&pb.Topology{Kind: KindSphere, WrapX: Clamp}, 8, 4},
		{&pb.Topology{Kind: KindSphere, WrapY: Repeat}, 8, 4},
		{&pb.Topology{Kind: KindSphere, Radius: math.NaN()}, 8, 4},
		{&pb.Topology{Kind: KindCylinder, WrapY: Pole}, 8, 4},
		{&pb.Topology{Kind: KindCylinder, WrapX: Reflect}, 8, 4},
		{&pb.Topology{Kind: KindTorus, WrapY: Clamp}, 8, 4},
		{&pb.Topology{Kind: KindTorus, MinorRadius: -1}, 8, 4},
		{&pb.Topology{Kind: KindTorus, Radius: math.Inf(1)}, 8, 4},
		{&pb.Topology{Kind: KindPlane, WrapX: Repeat}, 8, 4},
		{&pb.Topology{Kind: KindPlane}, MaxSize + 1, 4},
		{&pb.Topology{Kind: KindPlane, WrapY: pb.Wrap(42)}, 8, 4},
	} {
		if top, err := FromProto(c.p, c.w, c.h); err == nil {
			t.Errorf("FromProto(%v, %d, %d) = %v, want an error", c.p, c.w, c.h, top)
		} else if c.p != nil && c.p.Kind != "" && !containsAny(err.Error(), c.p.Kind) {
			t.Errorf("error %q does not name the kind %q", err, c.p.Kind)
		}
	}
	if _, err := ParseWrap("wrap"); err == nil {
		t.Error("ParseWrap accepted an unknown name")
	}
	if top, err := Load(KindSphere, 8, 4, Options{}); err == nil {
		if _, err := top.WithSize(7, 4); err == nil {
			t.Error("sphere WithSize accepted an odd width")
		}
	}
}

func containsAny(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
