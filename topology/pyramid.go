package topology

import (
	"fmt"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// Level is one level of the grid pyramid; level 0 is the native grid.
type Level struct {
	Level, Width, Height int
}

// Proto returns the wire form.
func (l Level) Proto() *pb.GridInfo {
	return &pb.GridInfo{Level: uint32(l.Level), Width: uint32(l.Width), Height: uint32(l.Height)}
}

// LevelFromProto reads the wire form.
func LevelFromProto(g *pb.GridInfo) Level {
	return Level{Level: int(g.GetLevel()), Width: int(g.GetWidth()), Height: int(g.GetHeight())}
}

// NextSize is the size of the level below a width × height level of kind:
// each dimension halves, rounding up; a sphere's width then rounds up to even
// so the level can still cross its poles.
func NextSize(kind string, width, height int) (w, h int) {
	w, h = (width+1)/2, (height+1)/2
	if kind == KindSphere {
		w += w % 2
	}
	return w, h
}

// MaxLevels is how many downsampled levels a grid supports: a level is only
// made while both dimensions still shrink.
func MaxLevels(kind string, width, height int) int {
	n := 0
	for {
		w, h := NextSize(kind, width, height)
		if w >= width || h >= height {
			return n
		}
		width, height = w, h
		n++
	}
}

// Levels returns the native level and `levels` downsampled ones.
func Levels(kind string, width, height, levels int) ([]Level, error) {
	if err := checkSize(kind, width, height); err != nil {
		return nil, err
	}
	if m := MaxLevels(kind, width, height); levels < 0 || levels > m {
		return nil, fmt.Errorf("topology %s: %d pyramid levels requested for a %d×%d grid: want 0..%d (each level halves both dimensions, and both must still shrink)",
			kind, levels, width, height, m)
	}
	out := make([]Level, levels+1)
	out[0] = Level{Level: 0, Width: width, Height: height}
	for i := 1; i <= levels; i++ {
		w, h := NextSize(kind, out[i-1].Width, out[i-1].Height)
		out[i] = Level{Level: i, Width: w, Height: h}
	}
	return out, nil
}

// GridInfos is Levels in wire form.
func GridInfos(kind string, width, height, levels int) ([]*pb.GridInfo, error) {
	ls, err := Levels(kind, width, height, levels)
	if err != nil {
		return nil, err
	}
	out := make([]*pb.GridInfo, len(ls))
	for i, l := range ls {
		out[i] = l.Proto()
	}
	return out, nil
}

// Every level covers the whole surface with uniform cells, so cells nest by
// geometry: the parent of a fine cell is the coarse cell containing its
// centre. With n fine and m coarse cells on an axis, fine x has parent
// floor((2x+1)·m / 2n). For even n and m = n/2 that is x/2; for odd n some
// parents have one child instead of two. The rule holds between any two sizes,
// but for odd sizes composing adjacent levels can differ from the direct map.

func parentAxis(x, n, m int) int { return (2*x + 1) * m / (2 * n) }

// childrenAxis returns [lo, hi): the fine x with parentAxis(x) == p, i.e.
// 2np ≤ (2x+1)m < 2n(p+1).
func childrenAxis(p, n, m int) (lo, hi int) {
	first := func(q int) int { // smallest x with (2x+1)m ≥ 2nq
		return max(0, (2*n*q-m+2*m-1)/(2*m))
	}
	return first(p), min(n, first(p+1))
}

// Parent returns the cell of coarse containing the centre of cell (x, y) of fine.
func Parent(fine, coarse Level, x, y int) (px, py int) {
	return parentAxis(x, fine.Width, coarse.Width), parentAxis(y, fine.Height, coarse.Height)
}

// ParentIndex is Parent on cell indices.
func ParentIndex(fine, coarse Level, i int) int {
	px, py := Parent(fine, coarse, i%fine.Width, i/fine.Width)
	return py*coarse.Width + px
}

// Children returns the cells of fine whose parent is (px, py) of coarse, as the
// half-open ranges [x0, x1) × [y0, y1). Between adjacent levels each range
// holds one or two cells.
func Children(fine, coarse Level, px, py int) (x0, y0, x1, y1 int) {
	x0, x1 = childrenAxis(px, fine.Width, coarse.Width)
	y0, y1 = childrenAxis(py, fine.Height, coarse.Height)
	return x0, y0, x1, y1
}

// ChildIndices appends the indices of the children of coarse cell j, row by row.
func ChildIndices(fine, coarse Level, j int, dst []int) []int {
	x0, y0, x1, y1 := Children(fine, coarse, j%coarse.Width, j/coarse.Width)
	for y := y0; y < y1; y++ {
		for x := x0; x < x1; x++ {
			dst = append(dst, y*fine.Width+x)
		}
	}
	return dst
}
