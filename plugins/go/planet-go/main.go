// Command planet-go offers the Go stages of the planet pipeline
// (docs/planet.md): terrain.fbm, the elevation from fractal noise on the
// surface's embedding, and climate.biome, temperature, moisture and biomes
// from the eroded terrain, the flow grid and the rivers table.
package main

import (
	"github.com/pipehost/pipehost/sdk"
)

func main() {
	sdk.Serve(
		sdk.Define(sdk.Spec{
			Kind: "terrain.fbm", Version: "1.0.0", Concurrent: true,
			Doc: "Elevation in metres above sea level: domain-warped fractal noise for continents plus ridged noise for mountain ranges, " +
				"sampled on the topology's 3-D/4-D embedding so it is seamless across every wrap edge and pole.",
			Outputs: []sdk.Port{sdk.GridPort("elevation", sdk.F32)},
		}, fbm),
		sdk.Define(sdk.Spec{
			Kind: "climate.biome", Version: "1.0.0", Concurrent: true,
			Doc: "Temperature from latitude and height, moisture carried from the sea and from rivers and lakes, " +
				"and a biome class per cell (u8) with its colour table.",
			Inputs: []sdk.Port{sdk.GridPort("elevation", sdk.F32), sdk.GridPort("filled", sdk.F32),
				sdk.GridPort("accum", sdk.F32), sdk.TablePort("rivers")},
			Outputs: []sdk.Port{sdk.GridPort("temperature", sdk.F32), sdk.GridPort("moisture", sdk.F32),
				sdk.GridPort("biome", sdk.U8), sdk.TablePort("biome_colors")},
		}, biome),
	)
}
