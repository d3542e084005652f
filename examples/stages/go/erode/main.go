// Command erode is a pipehost plugin offering example.erode-go.
package main

import (
	"fmt"

	"github.com/pipehost/pipehost/sdk"
)

type params struct {
	Iterations int     `param:"iterations" default:"8" doc:"smoothing passes"`
	Rate       float64 `param:"rate" default:"0.25" doc:"fraction moved per pass"`
	Label      string  `param:"label" doc:"required: no default"`
}

// Erode is the stage: main serves it, erode_test.go runs it in-process.
var Erode = sdk.Define(sdk.Spec{
	Kind:       "example.erode-go", // unique across all plugins of a run
	Version:    "1.0.0",            // bump when outputs change: it is part of the cache key
	Doc:        "Moves height downhill.",
	Inputs:     []sdk.Port{sdk.GridPort("height", sdk.F32)},
	Outputs:    []sdk.Port{sdk.GridPort("eroded", sdk.F32)},
	Concurrent: true, // several runs at once in this process are fine
}, erode)

func main() { sdk.Serve(Erode) }

func erode(c *sdk.Context, p params) error {
	in, err := sdk.InputGrid[float32](c, "height") // read-only: writing faults
	if err != nil {
		return err
	}
	out, err := sdk.OutputGrid[float32](c, "eroded") // writable until erode returns
	if err != nil {
		return err
	}
	topo, err := c.Topology() // wrap rules, neighbours, coordinates
	if err != nil {
		return err
	}
	copy(out.Data, in.Data)
	for it := 0; it < p.Iterations; it++ {
		if err := c.Err(); err != nil { // cancelled: timeout or Ctrl-C
			return err
		}
		end := c.Timed(fmt.Sprintf("pass %d", it)) // a subtask span in the trace
		for i := range out.Data {
			for _, j := range topo.Grid().Neighbors4(i) {
				if j >= 0 && out.Data[j] < out.Data[i] {
					out.Data[i] -= float32(p.Rate) * (out.Data[i] - out.Data[j]) / 4
				}
			}
		}
		end()
		c.Progress(float64(it+1)/float64(p.Iterations), "eroding")
	}
	c.Infof("eroded %dx%d with %s", out.Width, out.Height, p.Label)
	return nil
}
