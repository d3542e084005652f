// Command source is a test plugin: dummy.source fills a float32 grid.
package main

import (
	"github.com/pipehost/pipehost/sdk"
	"github.com/pipehost/pipehost/sdk/seed"
	"github.com/pipehost/pipehost/testplugins/observe"
)

type params struct {
	Value float64 `param:"value" default:"1" doc:"base value of every cell"`
	Trace string  `param:"trace" default:"" doc:"file to append an observation record to"`
}

func main() {
	sdk.Serve(sdk.Define(sdk.Spec{
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
