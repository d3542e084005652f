package topology

import (
	"fmt"
	"math"
)

// Number is any element type a grid buffer may hold.
type Number interface {
	~int8 | ~int16 | ~int32 | ~int64 | ~int |
		~uint8 | ~uint16 | ~uint32 | ~uint64 | ~uint |
		~float32 | ~float64
}

// maxCoord bounds the grid coordinates Sample and CellAtUV accept, so that
// they convert to int exactly.
const maxCoord = 1 << 40

func inRange(f float64) bool { return f > -maxCoord && f < maxCoord }

func floorInt(f float64) int { return int(math.Floor(f)) }

// Sample interpolates data (one value per cell, row-major, len = g.Len())
// bilinearly between cell centres at grid coordinates (fx, fy). The four cells
// around the point are found with ResolveClamped, so the result is continuous
// across periodic seams and poles. It returns NaN for coordinates that are not
// finite or lie more than 2^40 cells away, and panics if len(data) != g.Len().
func Sample[T Number](g Grid, data []T, fx, fy float64) float64 {
	if len(data) != g.w*g.h {
		panic(fmt.Sprintf("topology: Sample: %d values for a %d×%d grid", len(data), g.w, g.h))
	}
	px, py := fx-0.5, fy-0.5
	if !inRange(px) || !inRange(py) {
		return math.NaN()
	}
	xf, yf := math.Floor(px), math.Floor(py)
	tx, ty := px-xf, py-yf
	x0, y0 := int(xf), int(yf)
	var a, b, c, d float64
	if x0 >= 0 && x0 < g.w-1 && y0 >= 0 && y0 < g.h-1 {
		i := y0*g.w + x0
		a, b = float64(data[i]), float64(data[i+1])
		c, d = float64(data[i+g.w]), float64(data[i+g.w+1])
	} else {
		at := func(x, y int) float64 {
			x, y = g.ResolveClamped(x, y)
			return float64(data[y*g.w+x])
		}
		a, b = at(x0, y0), at(x0+1, y0)
		c, d = at(x0, y0+1), at(x0+1, y0+1)
	}
	top := a + tx*(b-a)
	bottom := c + tx*(d-c)
	return top + ty*(bottom-top)
}

// SampleUV is Sample at normalised coordinates: fx = u·Width, fy = v·Height.
func SampleUV[T Number](g Grid, data []T, u, v float64) float64 {
	return Sample(g, data, u*float64(g.w), v*float64(g.h))
}
