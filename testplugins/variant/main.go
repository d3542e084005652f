// Command variant is a test plugin whose stage kinds are chosen at link
// time, so tests and benchmarks can make many distinct plugin binaries:
//
//	go build -ldflags "-X main.name=fill07 -X main.build=2" ./testplugins/variant
//
// offers fill07.fill (a float32 grid of a constant) and fill07.pass (copies
// a grid). build changes the bytes without changing the kinds.
package main

import (
	"github.com/pipehost/pipehost/sdk"
)

var (
	name  = "variant"
	build = "1"
)

type fillParams struct {
	Value float64 `param:"value" default:"1" doc:"value of every cell"`
}

func main() {
	sdk.Serve(
		sdk.Define(sdk.Spec{
			Kind:       name + ".fill",
			Version:    "1.0.0",
			Doc:        "Fills a float32 grid with one value (build " + build + ").",
			Outputs:    []sdk.Port{sdk.GridPort("out", sdk.F32)},
			Concurrent: true,
		}, func(c *sdk.Context, p fillParams) error {
			out, err := sdk.OutputGrid[float32](c, "out")
			if err != nil {
				return err
			}
			for i := range out.Data {
				out.Data[i] = float32(p.Value)
			}
			return nil
		}),
		sdk.Define(sdk.Spec{
			Kind:       name + ".pass",
			Version:    "1.0.0",
			Doc:        "Copies a float32 grid.",
			Inputs:     []sdk.Port{sdk.GridPort("in", sdk.F32)},
			Outputs:    []sdk.Port{sdk.GridPort("out", sdk.F32)},
			Concurrent: true,
		}, func(c *sdk.Context, _ struct{}) error {
			in, err := sdk.InputGrid[float32](c, "in")
			if err != nil {
				return err
			}
			out, err := sdk.OutputGrid[float32](c, "out")
			if err != nil {
				return err
			}
			copy(out.Data, in.Data)
			return nil
		}),
	)
}
