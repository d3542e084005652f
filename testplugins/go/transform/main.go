// Command transform is a test plugin offering two kinds: dummy.scale and
// dummy.offset, each mapping a float32 grid to another.
package main

import (
	"github.com/pipehost/pipehost/sdk"
	"github.com/pipehost/pipehost/testplugins/observe"
)

type scaleParams struct {
	Factor float64 `param:"factor" default:"2" doc:"multiplier"`
	Trace  string  `param:"trace" default:""`
}

type offsetParams struct {
	Delta float64 `param:"delta" doc:"added to every cell (required)"`
	Trace string  `param:"trace" default:""`
}

func apply(c *sdk.Context, trace string, f func(float32) float32) error {
	start := observe.Now()
	in, err := sdk.InputGrid[float32](c, "in")
	if err != nil {
		return err
	}
	out, err := sdk.OutputGrid[float32](c, "out")
	if err != nil {
		return err
	}
	end := c.Timed("map")
	for i, v := range in.Data {
		out.Data[i] = f(v)
	}
	end()
	return observe.Append(trace, observe.Record{
		Stage: c.Stage(), Kind: c.Kind(), Seed: c.Seed(), StartNs: start, EndNs: observe.Now(),
		Inputs:  map[string]float64{"in": observe.Sum(in.Data)},
		Outputs: map[string]float64{"out": observe.Sum(out.Data)},
	})
}

func main() {
	ports := func() ([]sdk.Port, []sdk.Port) {
		return []sdk.Port{sdk.GridPort("in", sdk.F32)}, []sdk.Port{sdk.GridPort("out", sdk.F32)}
	}
	in1, out1 := ports()
	in2, out2 := ports()
	sdk.Serve(
		sdk.Define(sdk.Spec{Kind: "dummy.scale", Version: "1.0.0", Doc: "Multiplies a grid by factor.",
			Inputs: in1, Outputs: out1, Concurrent: true},
			func(c *sdk.Context, p scaleParams) error {
				return apply(c, p.Trace, func(v float32) float32 { return v * float32(p.Factor) })
			}),
		sdk.Define(sdk.Spec{Kind: "dummy.offset", Version: "1.0.0", Doc: "Adds delta to a grid.",
			Inputs: in2, Outputs: out2, Concurrent: true},
			func(c *sdk.Context, p offsetParams) error {
				return apply(c, p.Trace, func(v float32) float32 { return v + float32(p.Delta) })
			}),
	)
}
