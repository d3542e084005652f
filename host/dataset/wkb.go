package dataset

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Geometry is a 2-D vector shape that can be stored as WKB (ISO/OGC well-known binary).
type Geometry interface {
	// AppendWKB appends the little-endian WKB encoding of the geometry to b.
	AppendWKB(b []byte) []byte
}

// Point is a position; on a sphere X is longitude and Y latitude in degrees.
type Point struct{ X, Y float64 }

// LineString is an open or closed path.
type LineString []Point

// Polygon is a list of rings, the exterior first; each ring should repeat its first point
// at the end.
type Polygon [][]Point

// MultiPoint, MultiLineString and MultiPolygon group geometries of one kind.
type (
	MultiPoint      []Point
	MultiLineString []LineString
	MultiPolygon    []Polygon
)

// WKB geometry type codes.
const (
	wkbPoint              = 1
	wkbLineString         = 2
	wkbPolygon            = 3
	wkbMultiPoint         = 4
	wkbMultiLineString    = 5
	wkbMultiPolygon       = 6
	wkbGeometryCollection = 7
)

var wkbTypeNames = map[uint32]string{
	wkbPoint: "Point", wkbLineString: "LineString", wkbPolygon: "Polygon",
	wkbMultiPoint: "MultiPoint", wkbMultiLineString: "MultiLineString",
	wkbMultiPolygon: "MultiPolygon", wkbGeometryCollection: "GeometryCollection",
}

func wkbHead(b []byte, typ uint32) []byte {
	b = append(b, 1) // little-endian
	return binary.LittleEndian.AppendUint32(b, typ)
}

func appendU32(b []byte, v int) []byte { return binary.LittleEndian.AppendUint32(b, uint32(v)) }

func appendXY(b []byte, p Point) []byte {
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(p.X))
	return binary.LittleEndian.AppendUint64(b, math.Float64bits(p.Y))
}

func appendPoints(b []byte, pts []Point) []byte {
	b = appendU32(b, len(pts))
	for _, p := range pts {
		b = appendXY(b, p)
	}
	return b
}

// AppendWKB implements Geometry.
func (p Point) AppendWKB(b []byte) []byte { return appendXY(wkbHead(b, wkbPoint), p) }

// AppendWKB implements Geometry.
func (l LineString) AppendWKB(b []byte) []byte { return appendPoints(wkbHead(b, wkbLineString), l) }

// AppendWKB implements Geometry.
func (p Polygon) AppendWKB(b []byte) []byte {
	b = appendU32(wkbHead(b, wkbPolygon), len(p))
	for _, ring := range p {
		b = appendPoints(b, ring)
	}
	return b
}

// AppendWKB implements Geometry.
func (m MultiPoint) AppendWKB(b []byte) []byte {
	b = appendU32(wkbHead(b, wkbMultiPoint), len(m))
	for _, p := range m {
		b = p.AppendWKB(b)
	}
	return b
}

// AppendWKB implements Geometry.
func (m MultiLineString) AppendWKB(b []byte) []byte {
	b = appendU32(wkbHead(b, wkbMultiLineString), len(m))
	for _, l := range m {
		b = l.AppendWKB(b)
	}
	return b
}

// AppendWKB implements Geometry.
func (m MultiPolygon) AppendWKB(b []byte) []byte {
	b = appendU32(wkbHead(b, wkbMultiPolygon), len(m))
	for _, p := range m {
		b = p.AppendWKB(b)
	}
	return b
}

// wkbSummary is what GeoParquet metadata needs from one geometry.
type wkbSummary struct {
	typeName string     // GeoParquet geometry type, " Z" appended for 3-D
	bbox     [4]float64 // xmin, ymin, xmax, ymax; valid only when !empty
	empty    bool
}

// summarizeWKB reads a WKB (ISO, or EWKB's Z/M/SRID flags) geometry of any byte order and
// returns its type and 2-D bounding box.
func summarizeWKB(b []byte) (wkbSummary, error) {
	r := wkbReader{b: b}
	s := wkbSummary{bbox: [4]float64{math.Inf(1), math.Inf(1), math.Inf(-1), math.Inf(-1)}, empty: true}
	typ, z, err := r.geometry(&s, 0)
	if err != nil {
		return s, err
	}
	if r.off != len(b) {
		return s, fmt.Errorf("WKB has %d bytes after the geometry", len(b)-r.off)
	}
	s.typeName = wkbTypeNames[typ]
	if z {
		s.typeName += " Z"
	}
	return s, nil
}

type wkbReader struct {
	b   []byte
	off int
	bo  binary.ByteOrder
}

func (r *wkbReader) need(n int) error {
	if r.off+n > len(r.b) {
		return fmt.Errorf("WKB truncated at byte %d", r.off)
	}
	return nil
}

func (r *wkbReader) u32() (uint32, error) {
	if err := r.need(4); err != nil {
		return 0, err
	}
	v := r.bo.Uint32(r.b[r.off:])
	r.off += 4
	return v, nil
}

func (r *wkbReader) coords(s *wkbSummary, dims int) error {
	if err := r.need(8 * dims); err != nil {
		return err
	}
	x := math.Float64frombits(r.bo.Uint64(r.b[r.off:]))
	y := math.Float64frombits(r.bo.Uint64(r.b[r.off+8:]))
	r.off += 8 * dims
	if math.IsNaN(x) || math.IsNaN(y) {
		return nil // an empty point
	}
	s.empty = false
	s.bbox[0], s.bbox[1] = math.Min(s.bbox[0], x), math.Min(s.bbox[1], y)
	s.bbox[2], s.bbox[3] = math.Max(s.bbox[2], x), math.Max(s.bbox[3], y)
	return nil
}

func (r *wkbReader) count(dims int) (int, error) {
	n, err := r.u32()
	if err != nil {
		return 0, err
	}
	// Every element takes at least dims*8 (or 9) bytes: refuse counts the data cannot hold.
	if int64(n) > int64(len(r.b)-r.off) {
		return 0, fmt.Errorf("WKB count %d exceeds the remaining %d bytes", n, len(r.b)-r.off)
	}
	return int(n), nil
}

func (r *wkbReader) geometry(s *wkbSummary, depth int) (uint32, bool, error) {
	if depth > 32 {
		return 0, false, fmt.Errorf("WKB nested too deeply")
	}
	if err := r.need(1); err != nil {
		return 0, false, err
	}
	switch r.b[r.off] {
	case 0:
		r.bo = binary.BigEndian
	case 1:
		r.bo = binary.LittleEndian
	default:
		return 0, false, fmt.Errorf("WKB byte order %d at byte %d", r.b[r.off], r.off)
	}
	r.off++
	t, err := r.u32()
	if err != nil {
		return 0, false, err
	}
	z, m := t&0x80000000 != 0, t&0x40000000 != 0
	if t&0x20000000 != 0 { // EWKB SRID follows
		if _, err := r.u32(); err != nil {
			return 0, false, err
		}
	}
	t &= 0x0fffffff
	switch t / 1000 {
	case 1:
		z = true
	case 2:
		m = true
	case 3:
		z, m = true, true
	}
	t %= 1000
	dims := 2
	if z {
		dims++
	}
	if m {
		dims++
	}
	switch t {
	case wkbPoint:
		err = r.coords(s, dims)
	case wkbLineString:
		err = r.points(s, dims)
	case wkbPolygon:
		var rings int
		if rings, err = r.count(dims); err == nil {
			for i := 0; i < rings && err == nil; i++ {
				err = r.points(s, dims)
			}
		}
	case wkbMultiPoint, wkbMultiLineString, wkbMultiPolygon, wkbGeometryCollection:
		var n int
		if n, err = r.count(dims); err == nil {
			for i := 0; i < n && err == nil; i++ {
				_, _, err = r.geometry(s, depth+1)
			}
		}
	default:
		return 0, false, fmt.Errorf("WKB geometry type %d not supported", t)
	}
	return t, z, err
}

func (r *wkbReader) points(s *wkbSummary, dims int) error {
	n, err := r.count(dims)
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		if err := r.coords(s, dims); err != nil {
			return err
		}
	}
	return nil
}
