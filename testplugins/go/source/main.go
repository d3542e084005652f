// Command source is a test plugin: dummy.source fills a float32 grid.
package main

import (
	"math"

	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/pipehost/pipehost/host/dataset"
	"github.com/pipehost/pipehost/sdk"
	"github.com/pipehost/pipehost/sdk/seed"
	"github.com/pipehost/pipehost/sdk/table"
	"github.com/pipehost/pipehost/testplugins/observe"
)

type params struct {
	Value float64 `param:"value" default:"1" doc:"base value of every cell"`
	Trace string  `param:"trace" default:"" doc:"file to append an observation record to"`
}

type pointsParams struct {
	N     int    `param:"n" default:"100" doc:"number of points"`
	Trace string `param:"trace" default:""`
}

// points scatters n seeded points over the surface (lon/lat degrees on a
// sphere, cell coordinates elsewhere) with a value column.
func points(c *sdk.Context, p pointsParams) error {
	rng := c.Rand()
	lv := c.Levels()[0]
	topo, err := c.Topology()
	if err != nil {
		return err
	}
	sphere := topo.Kind() == "sphere"
	geoms := make([]dataset.Geometry, p.N)
	vals := array.NewFloat64Builder(memory.DefaultAllocator)
	defer vals.Release()
	for i := range geoms {
		u, v := rng.Float64(), rng.Float64()
		if sphere {
			geoms[i] = dataset.Point{X: -180 + 360*u, Y: math.Asin(2*v-1) * 180 / math.Pi}
		} else {
			geoms[i] = dataset.Point{X: u * float64(lv.Width), Y: v * float64(lv.Height)}
		}
		vals.Append(rng.Float64())
	}
	col := vals.NewArray()
	defer col.Release()
	rec, err := dataset.GeometryRecord(memory.DefaultAllocator, geoms, dataset.Column{Name: "value", Values: col})
	if err != nil {
		return err
	}
	defer rec.Release()
	if err := table.Write(c, "points", rec.Schema(), rec); err != nil {
		return err
	}
	return observe.Append(p.Trace, observe.Record{Stage: c.Stage(), Kind: c.Kind(), Seed: c.Seed()})
}

func main() {
	sdk.Serve(sdk.Define(sdk.Spec{
		Kind:       "dummy.points",
		Version:    "1.0.0",
		Doc:        "Scatters seeded points over the surface as a GeoParquet-ready table (WKB geometry, value).",
		Outputs:    []sdk.Port{sdk.TablePort("points")},
		Concurrent: true,
	}, points), sdk.Define(sdk.Spec{
		Kind:       "dummy.source",
		Version:    "1.0.0",
		Doc:        "Fills a grid with value plus a small seeded ramp.",
		Outputs:    []sdk.Port{sdk.GridPort("out", sdk.F32)},
		Concurrent: true,
	}, func(c *sdk.Context, p params) error {
		start := observe.Now()
		defer c.Timed("fill")()
		out, err := sdk.OutputGrid[float32](c, "out")
		if err != nil {
			return err
		}
		rng := seed.New(c.Seed())
		jitter := float32(rng.Float64())
		for i := range out.Data {
			out.Data[i] = float32(p.Value) + float32(i%7) + jitter
		}
		c.Progress(1, "filled")
		return observe.Append(p.Trace, observe.Record{
			Stage: c.Stage(), Kind: c.Kind(), Seed: c.Seed(), StartNs: start, EndNs: observe.Now(),
			Outputs: map[string]float64{"out": observe.Sum(out.Data)},
		})
	}))
}
