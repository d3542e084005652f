package main

import (
	"fmt"
	"math"
	"runtime"
	"sync"

	"github.com/pipehost/pipehost/sdk"
	"github.com/pipehost/pipehost/sdk/seed"
	"github.com/pipehost/pipehost/topology"
)

type fbmParams struct {
	Octaves        int     `param:"octaves" default:"8" doc:"octaves of the continent noise (1..16)"`
	Lacunarity     float64 `param:"lacunarity" default:"2.0" doc:"frequency ratio between octaves (1..4)"`
	Persistence    float64 `param:"persistence" default:"0.5" doc:"amplitude ratio between octaves (0..1)"`
	ContinentScale float64 `param:"continent_scale" default:"1.1" doc:"base frequency: roughly continents per radian of the x circle (0.1..64)"`
	SeaLevel       float64 `param:"sea_level" default:"0.02" doc:"noise value at sea level (-1..1); higher means more ocean"`
	MountainHeight float64 `param:"mountain_height" default:"3500" doc:"height of ridged mountain ranges on land, metres (0..20000)"`
}

func (p fbmParams) check() error {
	switch {
	case p.Octaves < 1 || p.Octaves > 16:
		return fmt.Errorf("param octaves = %d: want 1..16", p.Octaves)
	case !(p.Lacunarity >= 1 && p.Lacunarity <= 4):
		return fmt.Errorf("param lacunarity = %g: want 1..4", p.Lacunarity)
	case !(p.Persistence > 0 && p.Persistence < 1):
		return fmt.Errorf("param persistence = %g: want between 0 and 1", p.Persistence)
	case !(p.ContinentScale >= 0.1 && p.ContinentScale <= 64):
		return fmt.Errorf("param continent_scale = %g: want 0.1..64", p.ContinentScale)
	case !(p.SeaLevel >= -1 && p.SeaLevel <= 1):
		return fmt.Errorf("param sea_level = %g: want -1..1", p.SeaLevel)
	case !(p.MountainHeight >= 0 && p.MountainHeight <= 20000):
		return fmt.Errorf("param mountain_height = %g: want 0..20000", p.MountainHeight)
	}
	return nil
}

// fbmField holds what every cell's evaluation shares.
type fbmField struct {
	p                fbmParams
	dim              int
	warp, cont, mtn  *gradNoise
	mask             *gradNoise
	offsets          [16][4]float64 // per-octave shifts, so octaves do not align at the origin
	inv              float64        // 1 / the x circle's radius: points become unit-scale
	topo             topology.Topology
	fbmNorm, mtnNorm float64
}

func newFBMField(c *sdk.Context, p fbmParams, topo topology.Topology) *fbmField {
	s := c.Seed()
	f := &fbmField{p: p, dim: topo.EmbedDim(), topo: topo,
		warp: newGradNoise(seed.Derive(s, 1)), cont: newGradNoise(seed.Derive(s, 2)),
		mtn: newGradNoise(seed.Derive(s, 3)), mask: newGradNoise(seed.Derive(s, 4))}
	st := seed.New(seed.Derive(s, 5))
	for o := range f.offsets {
		for k := range f.offsets[o] {
			f.offsets[o][k] = st.Float64() * 256
		}
	}
	f.inv = 1 / topo.Radius()
	if topo.Kind() == topology.KindPlane || !(f.inv > 0) || math.IsInf(f.inv, 0) {
		f.inv = 2 * math.Pi / float64(topo.Width())
	}
	// Amplitude sums, so that fbm values stay roughly within [-1, 1]
	// whatever the octave count.
	a := 1.0
	for o := 0; o < p.Octaves; o++ {
		f.fbmNorm += a
		a *= p.Persistence
	}
	a = 1
	for o := 0; o < 6; o++ {
		f.mtnNorm += a
		a *= 0.5
	}
	return f
}

func scaled(p [4]float64, s float64, off [4]float64) [4]float64 {
	return [4]float64{p[0]*s + off[0], p[1]*s + off[1], p[2]*s + off[2], p[3]*s + off[3]}
}

// at is the elevation in metres above sea level at grid coordinates (fx, fy).
func (f *fbmField) at(fx, fy float64) float64 {
	e := f.topo.Embed(fx, fy)
	for k := range e {
		e[k] *= f.inv
	}
	p := f.p
	// Domain warp: bend the continent coordinates with low-frequency noise so
	// coasts are not blobs of one noise frequency.
	var q [4]float64
	for k := 0; k < f.dim; k++ {
		w := f.warp.sample(scaled(e, p.ContinentScale*0.8, f.offsets[k]), f.dim)
		w += 0.5 * f.warp.sample(scaled(e, p.ContinentScale*1.6, f.offsets[k+4]), f.dim)
		q[k] = e[k]*p.ContinentScale + 0.45*w
	}
	// Continents: fractal Brownian motion over the warped point.
	var sum float64
	amp, freq := 1.0, 1.0
	for o := 0; o < p.Octaves; o++ {
		sum += amp * f.cont.sample(scaled(q, freq, f.offsets[o]), f.dim)
		amp *= p.Persistence
		freq *= p.Lacunarity
	}
	h := 1.6*sum/f.fbmNorm - p.SeaLevel
	if h <= 0 {
		// Ocean: shelves near the coast, deep basins further out.
		return 5500 * math.Max(h, -1) * (0.3 + 0.7*smoothstep(0, 0.12, -h))
	}
	// Land: lowlands rise with the continent field; ridged noise makes ranges
	// where a slow mask allows them.
	mask := smoothstep(-0.15, 0.35, f.mask.sample(scaled(e, p.ContinentScale*1.2, f.offsets[15]), f.dim))
	var ridge float64
	amp, freq, weight := 1.0, 3.0, 1.0
	for o := 0; o < 6; o++ {
		r := 1 - math.Abs(f.mtn.sample(scaled(q, freq, f.offsets[o+8]), f.dim))
		r *= r * weight
		weight = math.Min(1, r*2)
		ridge += amp * r
		amp *= 0.5
		freq *= 2.1
	}
	ridge /= f.mtnNorm
	return 1800*h + p.MountainHeight*ridge*mask*smoothstep(0, 0.08, h)
}

func smoothstep(a, b, x float64) float64 {
	t := (x - a) / (b - a)
	t = math.Max(0, math.Min(1, t))
	return t * t * (3 - 2*t)
}

func fbm(c *sdk.Context, p fbmParams) error {
	if err := p.check(); err != nil {
		return err
	}
	out, err := sdk.OutputGrid[float32](c, "elevation")
	if err != nil {
		return err
	}
	topo, err := c.Topology()
	if err != nil {
		return err
	}
	f := newFBMField(c, p, topo)
	defer c.Timed("noise")()
	W, H := out.Width, out.Height
	// Rows are independent: workers take bands in any order and every cell
	// is a pure function of its coordinates, so the bytes never depend on
	// scheduling.
	workers := runtime.GOMAXPROCS(0)
	var next int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	const band = 16
	done := 0
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				y0 := int(next)
				next += band
				mu.Unlock()
				if y0 >= H || c.Err() != nil {
					return
				}
				for y := y0; y < min(y0+band, H); y++ {
					row := out.Row(y)
					for x := 0; x < W; x++ {
						row[x] = float32(f.at(float64(x)+0.5, float64(y)+0.5))
					}
				}
				mu.Lock()
				done += band
				d := done
				mu.Unlock()
				c.Progress(math.Min(1, float64(d)/float64(H)), "noise")
			}
		}()
	}
	wg.Wait()
	if err := c.Err(); err != nil {
		return err
	}
	var land int
	for _, v := range out.Data {
		if v > 0 {
			land++
		}
	}
	c.Metric("land_fraction", float64(land)/float64(len(out.Data)))
	return nil
}
