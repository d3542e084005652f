package topology

import pb "github.com/pipehost/pipehost/proto/pipehostv1"

// Wrap is the behaviour of one grid axis at its edges (the proto enum).
type Wrap = pb.Wrap

// Wrap policies.
const (
	// Clamp: nothing lies past the edge. Neighbour lookups report no cell;
	// sampling repeats the edge cell.
	Clamp = pb.Wrap_WRAP_CLAMP
	// Repeat: the axis is periodic.
	Repeat = pb.Wrap_WRAP_REPEAT
	// Reflect: the axis is mirrored at the edge, the edge cell repeated
	// (index -1 is cell 0, -2 is cell 1).
	Reflect = pb.Wrap_WRAP_REFLECT
	// Pole (y of a sphere only): a step past row 0 or row H-1 lands on the
	// same row at longitude + 180°.
	Pole = pb.Wrap_WRAP_POLE
)

// Offsets of Neighbors4 and Neighbors8, in order (dy < 0 is north).
var (
	Offsets4 = [4][2]int{{0, -1}, {1, 0}, {0, 1}, {-1, 0}}
	Offsets8 = [8][2]int{{0, -1}, {1, -1}, {1, 0}, {1, 1}, {0, 1}, {-1, 1}, {-1, 0}, {-1, -1}}
)

// Grid is the lattice of a topology: its size and per-axis wrap rules.
// Cell (x, y) has index y*Width + x; row 0 is the top (north) row.
// Grid coordinates (fx, fy) are continuous: cell (x, y) covers
// [x, x+1) × [y, y+1) and its centre is (x+0.5, y+0.5); u = fx/Width, v = fy/Height.
type Grid struct {
	w, h         int
	wrapX, wrapY Wrap
}

// Width is the number of columns.
func (g Grid) Width() int { return g.w }

// Height is the number of rows.
func (g Grid) Height() int { return g.h }

// Len is the number of cells.
func (g Grid) Len() int { return g.w * g.h }

// WrapX is the policy at the left and right edges.
func (g Grid) WrapX() Wrap { return g.wrapX }

// WrapY is the policy at the top and bottom edges.
func (g Grid) WrapY() Wrap { return g.wrapY }

// Index returns the index of cell (x, y), which must be on the grid.
func (g Grid) Index(x, y int) int { return y*g.w + x }

// XY returns the column and row of cell index i.
func (g Grid) XY(i int) (x, y int) { return i % g.w, i / g.w }

// Center returns the grid coordinates of the centre of cell (x, y).
func (g Grid) Center(x, y int) (fx, fy float64) { return float64(x) + 0.5, float64(y) + 0.5 }

// UV returns the normalised coordinates of the centre of cell (x, y), in (0, 1).
func (g Grid) UV(x, y int) (u, v float64) {
	return (float64(x) + 0.5) / float64(g.w), (float64(y) + 0.5) / float64(g.h)
}

// CellAtUV returns the cell containing (u, v); coordinates outside [0, 1) follow
// Resolve, so ok is false past a Clamp edge.
func (g Grid) CellAtUV(u, v float64) (x, y int, ok bool) {
	fx, fy := u*float64(g.w), v*float64(g.h)
	if !inRange(fx) || !inRange(fy) {
		return 0, 0, false
	}
	return g.Resolve(floorInt(fx), floorInt(fy))
}

func mod(a, n int) int {
	a %= n
	if a < 0 {
		a += n
	}
	return a
}

// mirror folds a onto [0, n) with the edge cell repeated: period 2n.
func mirror(a, n int) (m int, flipped bool) {
	m = mod(a, 2*n)
	if m >= n {
		return 2*n - 1 - m, true
	}
	return m, false
}

// Resolve maps any integer cell coordinates onto the grid by the wrap rules.
// ok is false if the position lies past a Clamp edge. The y axis is resolved
// first because crossing a pole moves x by Width/2.
func (g Grid) Resolve(x, y int) (rx, ry int, ok bool) {
	if uint(x) < uint(g.w) && uint(y) < uint(g.h) {
		return x, y, true
	}
	return g.resolve(x, y, false)
}

// ResolveClamped is Resolve with Clamp edges clamped to the edge cell, the
// rule sampling uses; it always returns a cell.
func (g Grid) ResolveClamped(x, y int) (rx, ry int) {
	if uint(x) < uint(g.w) && uint(y) < uint(g.h) {
		return x, y
	}
	rx, ry, _ = g.resolve(x, y, true)
	return rx, ry
}

func (g Grid) resolve(x, y int, clamp bool) (int, int, bool) {
	if uint(y) >= uint(g.h) {
		switch g.wrapY {
		case Repeat:
			y = mod(y, g.h)
		case Reflect:
			y, _ = mirror(y, g.h)
		case Pole:
			var crossed bool
			if y, crossed = mirror(y, g.h); crossed {
				x += g.w / 2
			}
		default:
			if !clamp {
				return 0, 0, false
			}
			y = min(max(y, 0), g.h-1)
		}
	}
	if uint(x) >= uint(g.w) {
		switch g.wrapX {
		case Repeat:
			x = mod(x, g.w)
		case Reflect:
			x, _ = mirror(x, g.w)
		default:
			if !clamp {
				return 0, 0, false
			}
			x = min(max(x, 0), g.w-1)
		}
	}
	return x, y, true
}

// Step returns the index of the cell reached from cell i by (dx, dy), or -1
// past a Clamp edge.
func (g Grid) Step(i, dx, dy int) int {
	x, y := i%g.w+dx, i/g.w+dy
	if uint(x) < uint(g.w) && uint(y) < uint(g.h) {
		return y*g.w + x
	}
	x, y, ok := g.resolve(x, y, false)
	if !ok {
		return -1
	}
	return y*g.w + x
}

// Neighbors4 returns the N, E, S and W neighbours of cell i (see Offsets4);
// -1 marks none (past a Clamp edge). On small grids an entry may repeat or be i
// itself (a Reflect edge, or a 1-cell-wide periodic axis).
func (g Grid) Neighbors4(i int) [4]int {
	x, y := i%g.w, i/g.w
	if x > 0 && x < g.w-1 && y > 0 && y < g.h-1 {
		return [4]int{i - g.w, i + 1, i + g.w, i - 1}
	}
	var n [4]int
	for k, o := range Offsets4 {
		n[k] = g.Step(i, o[0], o[1])
	}
	return n
}

// Neighbors8 returns the 8 neighbours of cell i clockwise from north (see
// Offsets8), with the conventions of Neighbors4.
func (g Grid) Neighbors8(i int) [8]int {
	x, y := i%g.w, i/g.w
	if x > 0 && x < g.w-1 && y > 0 && y < g.h-1 {
		w := g.w
		return [8]int{i - w, i - w + 1, i + 1, i + w + 1, i + w, i + w - 1, i - 1, i - w - 1}
	}
	var n [8]int
	for k, o := range Offsets8 {
		n[k] = g.Step(i, o[0], o[1])
	}
	return n
}
