package topology

import (
	"math"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// Sphere is an equirectangular longitude/latitude grid on a sphere. Column x
// spans longitudes [-180 + 360x/W, -180 + 360(x+1)/W), row y latitudes
// [90 - 180(y+1)/H, 90 - 180y/H]; row 0 touches the north pole. Longitude wraps,
// and a step across a pole lands on the same row at longitude + 180°.
type Sphere struct {
	g Grid
	r float64
}

func newSphere(w, h int, r float64) *Sphere {
	return &Sphere{g: Grid{w: w, h: h, wrapX: Repeat, wrapY: Pole}, r: r}
}

func (s *Sphere) Kind() string    { return KindSphere }
func (s *Sphere) Grid() Grid      { return s.g }
func (s *Sphere) Width() int      { return s.g.w }
func (s *Sphere) Height() int     { return s.g.h }
func (s *Sphere) Radius() float64 { return s.r }
func (s *Sphere) EmbedDim() int   { return 3 }

// LonLat returns the longitude and latitude in degrees of the centre of cell (x, y).
func (s *Sphere) LonLat(x, y int) (lon, lat float64) {
	return s.LonLatAt(float64(x)+0.5, float64(y)+0.5)
}

// LonLatAt returns the longitude and latitude in degrees at grid coordinates:
// lon = -180 + 360·fx/W, lat = 90 - 180·fy/H (no normalisation).
func (s *Sphere) LonLatAt(fx, fy float64) (lon, lat float64) {
	return -180 + 360*fx/float64(s.g.w), 90 - 180*fy/float64(s.g.h)
}

// GridAt returns the grid coordinates of a longitude and latitude in degrees,
// with fx brought into [0, W).
func (s *Sphere) GridAt(lon, lat float64) (fx, fy float64) {
	w := float64(s.g.w)
	fx = math.Mod((lon+180)/360*w, w)
	if fx < 0 {
		fx += w
	}
	if fx >= w { // -tiny + w rounds to w
		fx = 0
	}
	return fx, (90 - lat) / 180 * float64(s.g.h)
}

// CellOf returns the cell containing a longitude and latitude in degrees. Any
// finite longitude is accepted; latitudes are clamped to [-90, 90], so each pole
// belongs to its polar row.
func (s *Sphere) CellOf(lon, lat float64) (x, y int) {
	fx, fy := s.GridAt(lon, lat)
	return min(floorInt(fx), s.g.w-1), min(max(floorInt(fy), 0), s.g.h-1)
}

// UnitVector returns the point of the unit sphere at a longitude and latitude in
// degrees: (cos lat cos lon, cos lat sin lon, sin lat); z points to the north pole.
func UnitVector(lon, lat float64) [3]float64 {
	sl, cl := math.Sincos(lon * math.Pi / 180)
	sp, cp := math.Sincos(lat * math.Pi / 180)
	return [3]float64{cp * cl, cp * sl, sp}
}

// Embed returns Radius × UnitVector at the point, in metres.
func (s *Sphere) Embed(fx, fy float64) [4]float64 {
	v := UnitVector(s.LonLatAt(fx, fy))
	return [4]float64{s.r * v[0], s.r * v[1], s.r * v[2], 0}
}

// CellArea is the exact area of the cell's latitude band segment:
// R²·(2π/W)·(sin φtop − sin φbottom), computed as R²·(2π/W)·2·cos φc·sin(π/2H)
// to avoid cancellation near the poles.
func (s *Sphere) CellArea(i int) float64 {
	return s.RowArea(i / s.g.w)
}

// RowArea is the area of one cell of row y.
func (s *Sphere) RowArea(y int) float64 {
	h := float64(s.g.h)
	phi := (0.5 - (float64(y)+0.5)/h) * math.Pi
	return s.r * s.r * (2 * math.Pi / float64(s.g.w)) * 2 * math.Cos(phi) * math.Sin(math.Pi/(2*h))
}

// Area is 4πR².
func (s *Sphere) Area() float64 { return 4 * math.Pi * s.r * s.r }

// Distance is the great-circle distance between cell centres.
func (s *Sphere) Distance(a, b int) float64 {
	ax, ay := s.g.XY(a)
	bx, by := s.g.XY(b)
	return s.DistanceAt(float64(ax)+0.5, float64(ay)+0.5, float64(bx)+0.5, float64(by)+0.5)
}

// DistanceAt is the great-circle distance, R·atan2(|p×q|, p·q), which is
// accurate for near and antipodal points alike.
func (s *Sphere) DistanceAt(fx1, fy1, fx2, fy2 float64) float64 {
	p := UnitVector(s.LonLatAt(fx1, fy1))
	q := UnitVector(s.LonLatAt(fx2, fy2))
	cx := p[1]*q[2] - p[2]*q[1]
	cy := p[2]*q[0] - p[0]*q[2]
	cz := p[0]*q[1] - p[1]*q[0]
	return s.r * math.Atan2(math.Sqrt(cx*cx+cy*cy+cz*cz), p[0]*q[0]+p[1]*q[1]+p[2]*q[2])
}

func (s *Sphere) WithSize(width, height int) (Topology, error) {
	if err := checkSize(KindSphere, width, height); err != nil {
		return nil, err
	}
	return newSphere(width, height, s.r), nil
}

func (s *Sphere) Proto() *pb.Topology {
	return &pb.Topology{Kind: KindSphere, WrapX: Repeat, WrapY: Pole, Radius: s.r}
}

// Cylinder is a grid on the side of a cylinder: x runs around it (and wraps),
// y along its axis, row 0 at the top. Each cap edge either clamps (nothing lies
// beyond) or reflects. Cells are 2πR/W wide; the cylinder's length is fixed at
// load so that native cells are square.
type Cylinder struct {
	g      Grid
	r, len float64
}

func newCylinder(w, h int, caps Wrap, r, length float64) *Cylinder {
	return &Cylinder{g: Grid{w: w, h: h, wrapX: Repeat, wrapY: caps}, r: r, len: length}
}

func (c *Cylinder) Kind() string    { return KindCylinder }
func (c *Cylinder) Grid() Grid      { return c.g }
func (c *Cylinder) Width() int      { return c.g.w }
func (c *Cylinder) Height() int     { return c.g.h }
func (c *Cylinder) Radius() float64 { return c.r }
func (c *Cylinder) EmbedDim() int   { return 3 }

// Length is the extent along the axis in metres.
func (c *Cylinder) Length() float64 { return c.len }

func (c *Cylinder) cell() (cw, ch float64) {
	return 2 * math.Pi * c.r / float64(c.g.w), c.len / float64(c.g.h)
}

// Embed returns (R cos θ, R sin θ, z) with θ = 2π·fx/W and
// z = Length·(1/2 − fy/H): a circle in x, the top row at the top.
func (c *Cylinder) Embed(fx, fy float64) [4]float64 {
	st, ct := math.Sincos(2 * math.Pi * fx / float64(c.g.w))
	return [4]float64{c.r * ct, c.r * st, c.len * (0.5 - fy/float64(c.g.h)), 0}
}

func (c *Cylinder) CellArea(int) float64 { cw, ch := c.cell(); return cw * ch }
func (c *Cylinder) Area() float64        { return 2 * math.Pi * c.r * c.len }

func (c *Cylinder) Distance(a, b int) float64 { return cellDistance(c, a, b) }

// DistanceAt is the geodesic on the unrolled cylinder: the shorter way round
// in x, straight in y.
func (c *Cylinder) DistanceAt(fx1, fy1, fx2, fy2 float64) float64 {
	cw, ch := c.cell()
	return math.Hypot(wrapped(fx1-fx2, float64(c.g.w))*cw, (fy1-fy2)*ch)
}

func (c *Cylinder) WithSize(width, height int) (Topology, error) {
	if err := checkSize(KindCylinder, width, height); err != nil {
		return nil, err
	}
	return newCylinder(width, height, c.g.wrapY, c.r, c.len), nil
}

func (c *Cylinder) Proto() *pb.Topology {
	return &pb.Topology{Kind: KindCylinder, WrapX: Repeat, WrapY: c.g.wrapY, Radius: c.r}
}

// Torus is a flat torus: both axes wrap. Its metric is that of the Clifford
// torus, a rectangle of 2πR × 2πr with opposite edges glued, not that of a
// ring torus in 3-D; cells are 2πR/W × 2πr/H.
type Torus struct {
	g        Grid
	r, minor float64
}

func newTorus(w, h int, r, minor float64) *Torus {
	return &Torus{g: Grid{w: w, h: h, wrapX: Repeat, wrapY: Repeat}, r: r, minor: minor}
}

func (t *Torus) Kind() string    { return KindTorus }
func (t *Torus) Grid() Grid      { return t.g }
func (t *Torus) Width() int      { return t.g.w }
func (t *Torus) Height() int     { return t.g.h }
func (t *Torus) Radius() float64 { return t.r }
func (t *Torus) EmbedDim() int   { return 4 }

// MinorRadius is the radius of the y circle in metres.
func (t *Torus) MinorRadius() float64 { return t.minor }

func (t *Torus) cell() (cw, ch float64) {
	return 2 * math.Pi * t.r / float64(t.g.w), 2 * math.Pi * t.minor / float64(t.g.h)
}

// Embed returns (R cos θ, R sin θ, r cos φ, r sin φ) with θ = 2π·fx/W and
// φ = 2π·fy/H: two circles, an isometric embedding of the flat torus.
func (t *Torus) Embed(fx, fy float64) [4]float64 {
	st, ct := math.Sincos(2 * math.Pi * fx / float64(t.g.w))
	sp, cp := math.Sincos(2 * math.Pi * fy / float64(t.g.h))
	return [4]float64{t.r * ct, t.r * st, t.minor * cp, t.minor * sp}
}

func (t *Torus) CellArea(int) float64 { cw, ch := t.cell(); return cw * ch }

// Area is 4π²·R·r.
func (t *Torus) Area() float64 { return 4 * math.Pi * math.Pi * t.r * t.minor }

func (t *Torus) Distance(a, b int) float64 { return cellDistance(t, a, b) }

// DistanceAt is the shortest flat distance, the shorter way round on each axis.
func (t *Torus) DistanceAt(fx1, fy1, fx2, fy2 float64) float64 {
	cw, ch := t.cell()
	return math.Hypot(wrapped(fx1-fx2, float64(t.g.w))*cw, wrapped(fy1-fy2, float64(t.g.h))*ch)
}

func (t *Torus) WithSize(width, height int) (Topology, error) {
	if err := checkSize(KindTorus, width, height); err != nil {
		return nil, err
	}
	return newTorus(width, height, t.r, t.minor), nil
}

func (t *Torus) Proto() *pb.Topology {
	return &pb.Topology{Kind: KindTorus, WrapX: Repeat, WrapY: Repeat, Radius: t.r, MinorRadius: t.minor}
}

// Plane is a flat rectangle whose edges clamp or reflect. Native cells are
// 1 m × 1 m; the extent is kept across pyramid levels.
type Plane struct {
	g      Grid
	ex, ey float64
}

func newPlane(w, h int, wx, wy Wrap, ex, ey float64) *Plane {
	return &Plane{g: Grid{w: w, h: h, wrapX: wx, wrapY: wy}, ex: ex, ey: ey}
}

func (p *Plane) Kind() string    { return KindPlane }
func (p *Plane) Grid() Grid      { return p.g }
func (p *Plane) Width() int      { return p.g.w }
func (p *Plane) Height() int     { return p.g.h }
func (p *Plane) Radius() float64 { return 0 }
func (p *Plane) EmbedDim() int   { return 2 }

func (p *Plane) cell() (cw, ch float64) { return p.ex / float64(p.g.w), p.ey / float64(p.g.h) }

// Embed returns (fx·cell width, fy·cell height).
func (p *Plane) Embed(fx, fy float64) [4]float64 {
	cw, ch := p.cell()
	return [4]float64{fx * cw, fy * ch, 0, 0}
}

func (p *Plane) CellArea(int) float64 { cw, ch := p.cell(); return cw * ch }
func (p *Plane) Area() float64        { return p.ex * p.ey }

func (p *Plane) Distance(a, b int) float64 { return cellDistance(p, a, b) }

// DistanceAt is the Euclidean distance; edges never shorten it.
func (p *Plane) DistanceAt(fx1, fy1, fx2, fy2 float64) float64 {
	cw, ch := p.cell()
	return math.Hypot((fx1-fx2)*cw, (fy1-fy2)*ch)
}

func (p *Plane) WithSize(width, height int) (Topology, error) {
	if err := checkSize(KindPlane, width, height); err != nil {
		return nil, err
	}
	return newPlane(width, height, p.g.wrapX, p.g.wrapY, p.ex, p.ey), nil
}

func (p *Plane) Proto() *pb.Topology {
	return &pb.Topology{Kind: KindPlane, WrapX: p.g.wrapX, WrapY: p.g.wrapY}
}

func cellDistance(t Topology, a, b int) float64 {
	g := t.Grid()
	ax, ay := g.XY(a)
	bx, by := g.XY(b)
	return t.DistanceAt(float64(ax)+0.5, float64(ay)+0.5, float64(bx)+0.5, float64(by)+0.5)
}
