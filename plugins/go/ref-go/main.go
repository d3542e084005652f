// Command ref offers the reference stages ref.noise-go and ref.blur-go
// (docs/reference-stage.md), whose outputs the C++ and Rust versions must
// match bit for bit.
package main

import (
	"fmt"
	"math/bits"

	"github.com/pipehost/pipehost/sdk"
	"github.com/pipehost/pipehost/sdk/seed"
)

type noiseParams struct {
	Octaves int `param:"octaves" default:"4" doc:"octaves of value noise (1..8)"`
	Cell    int `param:"cell" default:"16" doc:"lattice spacing of octave 0 in cells (a power of two)"`
}

type blurParams struct {
	Radius int `param:"radius" default:"1" doc:"box radius in cells (0..16)"`
}

func main() {
	sdk.Serve(
		sdk.Define(sdk.Spec{
			Kind: "ref.noise-go", Version: "1.0.0", Concurrent: true,
			Doc:     "Integer value noise, bit-identical across SDKs.",
			Outputs: []sdk.Port{sdk.GridPort("out", sdk.F32)},
		}, noise),
		sdk.Define(sdk.Spec{
			Kind: "ref.blur-go", Version: "1.0.0", Concurrent: true,
			Doc:     "Box blur that respects the topology's wrap rules.",
			Inputs:  []sdk.Port{sdk.GridPort("in", sdk.F32)},
			Outputs: []sdk.Port{sdk.GridPort("out", sdk.F32)},
		}, blur),
	)
}

func noise(c *sdk.Context, p noiseParams) error {
	out, err := sdk.OutputGrid[float32](c, "out")
	if err != nil {
		return err
	}
	if p.Octaves < 1 || p.Octaves > 8 {
		return fmt.Errorf("param octaves = %d: want 1..8", p.Octaves)
	}
	if p.Cell < 1 || p.Cell&(p.Cell-1) != 0 || p.Cell < 1<<(p.Octaves-1) {
		return fmt.Errorf("param cell = %d: want a power of two ≥ %d", p.Cell, 1<<(p.Octaves-1))
	}
	W, H := out.Width, out.Height
	if W%p.Cell != 0 || H%p.Cell != 0 {
		return fmt.Errorf("param cell = %d: the %dx%d grid is not a multiple of it", p.Cell, W, H)
	}
	type octave struct {
		k, nx, ny uint
		lattice   []uint64
	}
	end := c.Timed("lattice")
	octs := make([]octave, p.Octaves)
	for o := range octs {
		s := uint(p.Cell) >> o
		k := uint(bits.TrailingZeros(s))
		nx, ny := uint(W)/s, uint(H)/s
		key := seed.Derive(c.Seed(), uint64(o))
		lat := make([]uint64, nx*ny)
		for j := uint(0); j < ny; j++ {
			for i := uint(0); i < nx; i++ {
				lat[j*nx+i] = seed.Derive(key, uint64(j)<<32|uint64(i)) >> 48
			}
		}
		octs[o] = octave{k: k, nx: nx, ny: ny, lattice: lat}
	}
	end()
	defer c.Timed("fill")()
	for y := 0; y < H; y++ {
		row := out.Row(y)
		for x := 0; x < W; x++ {
			var acc uint64
			for o, oc := range octs {
				s := uint64(1) << oc.k
				i0, fx := uint(x)>>oc.k, uint64(x)&(s-1)
				j0, fy := uint(y)>>oc.k, uint64(y)&(s-1)
				i1, j1 := (i0+1)%oc.nx, (j0+1)%oc.ny
				wx, wy := weight(fx, oc.k), weight(fy, oc.k)
				l := oc.lattice
				top := l[j0*oc.nx+i0]*(65536-wx) + l[j0*oc.nx+i1]*wx
				bottom := l[j1*oc.nx+i0]*(65536-wx) + l[j1*oc.nx+i1]*wx
				val := (top*(65536-wy) + bottom*wy) >> 32
				acc += val >> uint(o)
			}
			row[x] = float32(acc) / 65536
		}
		if y%64 == 0 {
			c.Progress(float64(y)/float64(H), "noise")
		}
	}
	return nil
}

// weight is the fixed-point (16-bit) interpolation weight of offset f in a
// lattice cell of 2^k.
func weight(f uint64, k uint) uint64 {
	if k > 16 {
		return f >> (k - 16)
	}
	return f << (16 - k)
}

func blur(c *sdk.Context, p blurParams) error {
	if p.Radius < 0 || p.Radius > 16 {
		return fmt.Errorf("param radius = %d: want 0..16", p.Radius)
	}
	in, err := sdk.InputGrid[float32](c, "in")
	if err != nil {
		return err
	}
	out, err := sdk.OutputGrid[float32](c, "out")
	if err != nil {
		return err
	}
	topo, err := c.Topology()
	if err != nil {
		return err
	}
	g := topo.Grid()
	r := p.Radius
	n := float64((2*r + 1) * (2*r + 1))
	defer c.Timed("blur")()
	for y := 0; y < in.Height; y++ {
		for x := 0; x < in.Width; x++ {
			var sum float64
			for dy := -r; dy <= r; dy++ {
				for dx := -r; dx <= r; dx++ {
					nx, ny := g.ResolveClamped(x+dx, y+dy)
					sum += float64(in.Data[ny*in.Width+nx])
				}
			}
			out.Data[y*out.Width+x] = float32(sum / n)
		}
	}
	return nil
}
