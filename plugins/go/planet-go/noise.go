package main

import (
	"math"

	"github.com/pipehost/pipehost/sdk/seed"
)

// gradNoise is seeded gradient (Perlin-style) noise in 3 and 4 dimensions.
// Sampling it on a topology's embedding makes every wrap edge and pole
// seamless: neighbouring cells on the surface are neighbours in space.
type gradNoise struct {
	perm [512]uint8
}

func newGradNoise(key uint64) *gradNoise {
	n := &gradNoise{}
	var p [256]uint8
	for i := range p {
		p[i] = uint8(i)
	}
	// Fisher–Yates with the stage's own stream: the same seed, the same table.
	s := seed.New(key)
	for i := 255; i > 0; i-- {
		j := s.Intn(i + 1)
		p[i], p[j] = p[j], p[i]
	}
	for i := range n.perm {
		n.perm[i] = p[i&255]
	}
	return n
}

func fade(t float64) float64 { return t * t * t * (t*(t*6-15) + 10) }

func lerp(t, a, b float64) float64 { return a + t*(b-a) }

// grad3 dots (x, y, z) with one of 12 edge directions of a cube.
func grad3(h uint8, x, y, z float64) float64 {
	switch h % 12 {
	case 0:
		return x + y
	case 1:
		return -x + y
	case 2:
		return x - y
	case 3:
		return -x - y
	case 4:
		return x + z
	case 5:
		return -x + z
	case 6:
		return x - z
	case 7:
		return -x - z
	case 8:
		return y + z
	case 9:
		return -y + z
	case 10:
		return y - z
	default:
		return -y - z
	}
}

// grad4 dots (x, y, z, w) with one of 32 directions (one axis zero, the
// others ±1).
func grad4(h uint8, x, y, z, w float64) float64 {
	h &= 31
	a, b, c := y, z, w
	switch h >> 3 {
	case 1:
		a, b, c = x, z, w
	case 2:
		a, b, c = x, y, w
	case 3:
		a, b, c = x, y, z
	}
	if h&4 != 0 {
		a = -a
	}
	if h&2 != 0 {
		b = -b
	}
	if h&1 != 0 {
		c = -c
	}
	return a + b + c
}

func (n *gradNoise) noise3(x, y, z float64) float64 {
	fx, fy, fz := math.Floor(x), math.Floor(y), math.Floor(z)
	X, Y, Z := int(fx)&255, int(fy)&255, int(fz)&255
	x, y, z = x-fx, y-fy, z-fz
	u, v, w := fade(x), fade(y), fade(z)
	p := &n.perm
	A := int(p[X]) + Y
	AA, AB := int(p[A])+Z, int(p[A+1])+Z
	B := int(p[X+1]) + Y
	BA, BB := int(p[B])+Z, int(p[B+1])+Z
	return lerp(w,
		lerp(v, lerp(u, grad3(p[AA], x, y, z), grad3(p[BA], x-1, y, z)),
			lerp(u, grad3(p[AB], x, y-1, z), grad3(p[BB], x-1, y-1, z))),
		lerp(v, lerp(u, grad3(p[AA+1], x, y, z-1), grad3(p[BA+1], x-1, y, z-1)),
			lerp(u, grad3(p[AB+1], x, y-1, z-1), grad3(p[BB+1], x-1, y-1, z-1))))
}

func (n *gradNoise) noise4(x, y, z, w float64) float64 {
	fx, fy, fz, fw := math.Floor(x), math.Floor(y), math.Floor(z), math.Floor(w)
	X, Y, Z, W := int(fx)&255, int(fy)&255, int(fz)&255, int(fw)&255
	x, y, z, w = x-fx, y-fy, z-fz, w-fw
	t := [4]float64{fade(x), fade(y), fade(z), fade(w)}
	p := &n.perm
	var c [16]float64
	for i := 0; i < 16; i++ {
		dx, dy, dz, dw := i&1, (i>>1)&1, (i>>2)&1, (i>>3)&1
		h := p[int(p[int(p[int(p[X+dx])+Y+dy])+Z+dz])+W+dw]
		c[i] = grad4(h, x-float64(dx), y-float64(dy), z-float64(dz), w-float64(dw))
	}
	// Interpolate axis by axis: x pairs, then y, z, w.
	for axis, size := 0, 16; size > 1; axis, size = axis+1, size/2 {
		for i := 0; i < size/2; i++ {
			c[i] = lerp(t[axis], c[2*i], c[2*i+1])
		}
	}
	return c[0]
}

// sample is noise at a point of dim 3 or 4 dimensions.
func (n *gradNoise) sample(p [4]float64, dim int) float64 {
	if dim == 4 {
		return n.noise4(p[0], p[1], p[2], p[3])
	}
	return n.noise3(p[0], p[1], p[2])
}
