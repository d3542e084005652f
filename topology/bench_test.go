package topology

import (
	"math/rand/v2"
	"testing"
)

func benchSphere(b *testing.B) Topology {
	top, err := Load(KindSphere, 1024, 512, Options{})
	if err != nil {
		b.Fatal(err)
	}
	return top
}

var sinkInt int
var sinkF float64

// One op is the neighbour lookup of one cell, sweeping the whole grid (edges
// and poles included, in their natural 0.6% share).
func BenchmarkNeighbors4(b *testing.B) {
	g := benchSphere(b).Grid()
	n, i, s := g.Len(), 0, 0
	for b.Loop() {
		nb := g.Neighbors4(i)
		s += nb[0] + nb[3]
		if i++; i == n {
			i = 0
		}
	}
	sinkInt = s
}

func BenchmarkNeighbors8(b *testing.B) {
	g := benchSphere(b).Grid()
	n, i, s := g.Len(), 0, 0
	for b.Loop() {
		nb := g.Neighbors8(i)
		s += nb[0] + nb[7]
		if i++; i == n {
			i = 0
		}
	}
	sinkInt = s
}

// Neighbours of polar and seam cells only: the wrapping path.
func BenchmarkNeighbors8Edges(b *testing.B) {
	g := benchSphere(b).Grid()
	var edge []int
	for x := 0; x < g.Width(); x++ {
		edge = append(edge, g.Index(x, 0), g.Index(x, g.Height()-1))
	}
	for y := 0; y < g.Height(); y++ {
		edge = append(edge, g.Index(0, y), g.Index(g.Width()-1, y))
	}
	i, s := 0, 0
	for b.Loop() {
		nb := g.Neighbors8(edge[i])
		s += nb[0] + nb[7]
		if i++; i == len(edge) {
			i = 0
		}
	}
	sinkInt = s
}

func samplePoints(g Grid, margin float64) [][2]float64 {
	r := rand.New(rand.NewPCG(1, 2))
	pts := make([][2]float64, 4096)
	for k := range pts {
		if margin > 0 { // within margin of the x seam or a pole
			fx := (r.Float64()*2 - 1) * margin
			fy := r.Float64() * float64(g.Height())
			if k%2 == 1 {
				fx, fy = r.Float64()*float64(g.Width()), (r.Float64()*2-1)*margin
			}
			pts[k] = [2]float64{fx, fy}
			continue
		}
		pts[k] = [2]float64{r.Float64() * float64(g.Width()), r.Float64() * float64(g.Height())}
	}
	return pts
}

// One op is one bilinear sample at a random point of a float32 grid.
func BenchmarkSampleF32(b *testing.B) {
	g := benchSphere(b).Grid()
	data := make([]float32, g.Len())
	for i := range data {
		data[i] = float32(i % 977)
	}
	pts := samplePoints(g, 0)
	k, s := 0, 0.0
	for b.Loop() {
		p := pts[k]
		s += Sample(g, data, p[0], p[1])
		k = (k + 1) & 4095
	}
	sinkF = s
}

// Samples within half a cell of the seam or a pole: the wrapping path.
func BenchmarkSampleF32Seams(b *testing.B) {
	g := benchSphere(b).Grid()
	data := make([]float32, g.Len())
	for i := range data {
		data[i] = float32(i % 977)
	}
	pts := samplePoints(g, 0.5)
	k, s := 0, 0.0
	for b.Loop() {
		p := pts[k]
		s += Sample(g, data, p[0], p[1])
		k = (k + 1) & 4095
	}
	sinkF = s
}
