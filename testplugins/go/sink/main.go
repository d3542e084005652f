// Command sink is a test plugin: dummy.sink reads a float32 grid and
// records what it received.
package main

import (
	"github.com/pipehost/pipehost/sdk"
	"github.com/pipehost/pipehost/testplugins/observe"
)

type params struct {
	Trace string `param:"trace" default:""`
}

func main() {
	sdk.Serve(sdk.Define(sdk.Spec{
		Kind:       "dummy.sink",
		Version:    "1.0.0",
		Doc:        "Consumes a grid and reports its sum.",
		Inputs:     []sdk.Port{sdk.GridPort("in", sdk.F32)},
		Concurrent: true,
	}, func(c *sdk.Context, p params) error {
		start := observe.Now()
		in, err := sdk.InputGrid[float32](c, "in")
		if err != nil {
			return err
		}
		sum := observe.Sum(in.Data)
		c.Metric("sum", sum)
		c.Infof("received %dx%d grid, sum %g", in.Width, in.Height, sum)
		return observe.Append(p.Trace, observe.Record{
			Stage: c.Stage(), Kind: c.Kind(), Seed: c.Seed(), StartNs: start, EndNs: observe.Now(),
			Inputs: map[string]float64{"in": sum},
			Extra:  map[string]any{"width": in.Width, "height": in.Height, "first": in.Data[0]},
		})
	}))
}
