// Package topology describes the surfaces pipehost grids live on — sphere,
// cylinder, torus and plane — and the grid pyramid over them.
//
// A Topology couples a Grid (size, index order, wrap rules, neighbours,
// sampling) with the geometry of a surface (cell areas, distances, a seamless
// embedding in 2-, 3- or 4-D space for noise). The conventions are in
// docs/topology.md and are pinned by the vectors in testdata/topology/, which
// the C++ and Rust SDKs read too.
package topology

import (
	"errors"
	"fmt"
	"math"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// Kind names.
const (
	KindSphere   = "sphere"
	KindCylinder = "cylinder"
	KindTorus    = "torus"
	KindPlane    = "plane"
)

// EarthRadius is the default sphere radius in metres (the mean Earth radius).
const EarthRadius = 6371000.0

// MaxSize bounds width and height so that index arithmetic cannot overflow.
const MaxSize = 1 << 30

// Topology is a grid on a surface. Lengths are in metres, areas in square metres.
type Topology interface {
	// Kind is "sphere", "cylinder", "torus" or "plane".
	Kind() string
	// Grid is the lattice: size, index order, wrap rules, neighbours.
	Grid() Grid
	Width() int
	Height() int
	// Radius is the sphere radius, the cylinder radius or the torus major
	// radius; 0 for a plane.
	Radius() float64
	// CellArea is the area of cell i.
	CellArea(i int) float64
	// Area is the area of the whole surface (the sum of the cell areas).
	Area() float64
	// Distance is the shortest distance along the surface between the centres
	// of cells a and b.
	Distance(a, b int) float64
	// DistanceAt is Distance between two points in grid coordinates.
	DistanceAt(fx1, fy1, fx2, fy2 float64) float64
	// EmbedDim is the number of meaningful components Embed returns.
	EmbedDim() int
	// Embed maps grid coordinates to a point in EmbedDim-dimensional space, in
	// metres, that is continuous across every seam; unused components are 0.
	Embed(fx, fy float64) [4]float64
	// WithSize returns the same surface on a grid of another size (a pyramid
	// level): radii and extents are kept, cells change size.
	WithSize(width, height int) (Topology, error)
	// Proto describes the topology on the wire. Rebuild it with FromProto and
	// the native (level 0) size.
	Proto() *pb.Topology
}

// Options are the settings of Load beyond kind and size. Zero values take
// the defaults.
type Options struct {
	// Radius in metres: sphere radius (default EarthRadius), cylinder radius or
	// torus major radius (default Width/(2π), so cells are 1 m wide).
	Radius float64
	// MinorRadius in metres, torus only (default Height/(2π): cells 1 m tall).
	MinorRadius float64
	// Edge is the policy at the non-periodic edges: the caps (y) of a cylinder,
	// both axes of a plane. Clamp (default) or Reflect.
	Edge Wrap
}

// Load builds a topology from configuration values.
func Load(kind string, width, height int, opts Options) (Topology, error) {
	t := &pb.Topology{Kind: kind, Radius: opts.Radius, MinorRadius: opts.MinorRadius}
	switch kind {
	case KindCylinder:
		t.WrapY = opts.Edge
	case KindPlane:
		t.WrapX, t.WrapY = opts.Edge, opts.Edge
	case KindSphere, KindTorus:
		if opts.Edge != pb.Wrap_WRAP_UNSPECIFIED {
			return nil, fmt.Errorf("topology %q: edge policy %s set, but only a cylinder or a plane has edges", kind, WrapName(opts.Edge))
		}
	}
	return FromProto(t, width, height)
}

// FromProto builds a topology from its wire form and the native grid size.
// Unspecified wraps and zero radii take the defaults of Load.
func FromProto(t *pb.Topology, width, height int) (Topology, error) {
	if t == nil {
		return nil, errors.New("topology: none given (nil)")
	}
	kind := t.GetKind()
	if err := checkSize(kind, width, height); err != nil {
		return nil, err
	}
	r, err := length(kind, "radius", t.GetRadius())
	if err != nil {
		return nil, err
	}
	wx, wy := t.GetWrapX(), t.GetWrapY()
	switch kind {
	case KindSphere:
		if err := wantWraps(kind, wx, wy, []Wrap{Repeat}, []Wrap{Pole}); err != nil {
			return nil, err
		}
		return newSphere(width, height, orDefault(r, EarthRadius)), nil
	case KindCylinder:
		if err := wantWraps(kind, wx, wy, []Wrap{Repeat}, []Wrap{Clamp, Reflect}); err != nil {
			return nil, err
		}
		r = orDefault(r, float64(width)/(2*math.Pi))
		return newCylinder(width, height, orDefault(wy, Clamp), r, float64(height)*2*math.Pi*r/float64(width)), nil
	case KindTorus:
		if err := wantWraps(kind, wx, wy, []Wrap{Repeat}, []Wrap{Repeat}); err != nil {
			return nil, err
		}
		mr, err := length(kind, "minor radius", t.GetMinorRadius())
		if err != nil {
			return nil, err
		}
		return newTorus(width, height, orDefault(r, float64(width)/(2*math.Pi)), orDefault(mr, float64(height)/(2*math.Pi))), nil
	case KindPlane:
		if err := wantWraps(kind, wx, wy, []Wrap{Clamp, Reflect}, []Wrap{Clamp, Reflect}); err != nil {
			return nil, err
		}
		return newPlane(width, height, orDefault(wx, Clamp), orDefault(wy, Clamp), float64(width), float64(height)), nil
	}
	panic("unreachable: checkSize accepted kind " + kind)
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

func checkSize(kind string, width, height int) error {
	switch kind {
	case KindSphere, KindCylinder, KindTorus, KindPlane:
	default:
		return fmt.Errorf("topology: unknown kind %q (want sphere, cylinder, torus or plane)", kind)
	}
	if width < 1 || height < 1 || width > MaxSize || height > MaxSize {
		return fmt.Errorf("topology %s: grid %d×%d: width and height must be in 1..%d", kind, width, height, MaxSize)
	}
	if kind == KindSphere && width%2 != 0 {
		return fmt.Errorf("topology sphere: width %d is odd: crossing a pole moves half the width, so it must be even", width)
	}
	return nil
}

func length(kind, what string, v float64) (float64, error) {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		return 0, fmt.Errorf("topology %s: %s %v: must be a positive number of metres (0 for the default)", kind, what, v)
	}
	return v, nil
}

func wantWraps(kind string, wx, wy Wrap, okX, okY []Wrap) error {
	check := func(axis string, w Wrap, ok []Wrap) error {
		if w == pb.Wrap_WRAP_UNSPECIFIED {
			return nil
		}
		for _, o := range ok {
			if w == o {
				return nil
			}
		}
		names := ""
		for i, o := range ok {
			if i > 0 {
				names += " or "
			}
			names += WrapName(o)
		}
		return fmt.Errorf("topology %s: wrap %s %s not allowed (want %s)", kind, axis, WrapName(w), names)
	}
	if err := check("x", wx, okX); err != nil {
		return err
	}
	return check("y", wy, okY)
}

// WrapName is the short lower-case name of a wrap policy, as in configs and
// the test vectors (the name ParseWrap reads).
func WrapName(w Wrap) string {
	switch w {
	case Clamp:
		return "clamp"
	case Repeat:
		return "repeat"
	case Reflect:
		return "reflect"
	case Pole:
		return "pole"
	case pb.Wrap_WRAP_UNSPECIFIED:
		return "unspecified"
	}
	return w.String()
}

// ParseWrap reads a wrap policy name: clamp, repeat, reflect or pole.
func ParseWrap(s string) (Wrap, error) {
	for _, w := range []Wrap{Clamp, Repeat, Reflect, Pole} {
		if s == WrapName(w) {
			return w, nil
		}
	}
	return 0, fmt.Errorf("topology: unknown wrap %q (want clamp, repeat, reflect or pole)", s)
}

// wrapped reduces a separation d to the shortest signed one on an axis of period n.
func wrapped(d, n float64) float64 {
	d = math.Mod(d, n)
	if d > n/2 {
		d -= n
	} else if d < -n/2 {
		d += n
	}
	return d
}
