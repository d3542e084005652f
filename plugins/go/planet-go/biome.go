package main

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/pipehost/pipehost/sdk"
	"github.com/pipehost/pipehost/sdk/seed"
	"github.com/pipehost/pipehost/sdk/table"
	"github.com/pipehost/pipehost/topology"
)

type biomeParams struct {
	EquatorTemp float64 `param:"equator_temp" default:"29" doc:"sea-level temperature at the equator, °C"`
	PoleTemp    float64 `param:"pole_temp" default:"-28" doc:"sea-level temperature at the poles, °C"`
	LapseRate   float64 `param:"lapse_rate" default:"6.5" doc:"cooling with height, °C per km"`
	SeaReach    float64 `param:"sea_reach" default:"900" doc:"how far inland sea moisture carries, km"`
	RiverReach  float64 `param:"river_reach" default:"120" doc:"how far from a river or lake its moisture carries, km"`
	SeaLevel    float64 `param:"sea_level" default:"0" doc:"elevation of the sea surface, metres"`
}

// The biome classes, their names and colours (the biome_colors table).
var biomes = []struct {
	name    string
	r, g, b uint8
}{
	{"deep ocean", 28, 52, 110},
	{"shallow sea", 52, 98, 164},
	{"lake", 70, 130, 200},
	{"river", 60, 120, 210},
	{"ice", 240, 244, 250},
	{"tundra", 170, 180, 160},
	{"boreal forest", 70, 110, 80},
	{"temperate grassland", 186, 196, 120},
	{"temperate forest", 84, 140, 70},
	{"temperate rainforest", 40, 110, 70},
	{"desert", 226, 204, 140},
	{"savanna", 200, 180, 90},
	{"tropical seasonal forest", 120, 160, 50},
	{"tropical rainforest", 30, 120, 40},
	{"alpine", 140, 124, 112},
}

const (
	bDeep uint8 = iota
	bShallow
	bLake
	bRiver
	bIce
	bTundra
	bBoreal
	bGrassland
	bTemperate
	bTempRain
	bDesert
	bSavanna
	bTropSeasonal
	bTropRain
	bAlpine
)

func classify(elev, t, m float64) uint8 {
	switch {
	case t < -12:
		return bIce
	case elev > 2800 && t < 8:
		return bAlpine
	case t < -3:
		return bTundra
	case t < 4:
		return bBoreal
	case t < 18:
		switch {
		case m < 0.28:
			return bGrassland
		case m < 0.62:
			return bTemperate
		}
		return bTempRain
	}
	switch {
	case m < 0.22:
		return bDesert
	case m < 0.42:
		return bSavanna
	case m < 0.66:
		return bTropSeasonal
	}
	return bTropRain
}

// latitude is the climate latitude of a row in degrees: the true latitude on
// a sphere, pole to pole along a cylinder, and on a torus a cosine of the
// minor angle so the climate is periodic like the surface.
func latitude(topo topology.Topology, y int) float64 {
	fy := (float64(y) + 0.5) / float64(topo.Height())
	switch topo.Kind() {
	case topology.KindTorus:
		return 90 * math.Cos(2*math.Pi*fy)
	}
	return 90 - 180*fy
}

func biome(c *sdk.Context, p biomeParams) error {
	elev, err := sdk.InputGrid[float32](c, "elevation")
	if err != nil {
		return err
	}
	filled, err := sdk.InputGrid[float32](c, "filled")
	if err != nil {
		return err
	}
	accum, err := sdk.InputGrid[float32](c, "accum")
	if err != nil {
		return err
	}
	topo, err := c.Topology()
	if err != nil {
		return err
	}
	g := topo.Grid()
	W, H, N := g.Width(), g.Height(), g.Len()
	for name, gr := range map[string]int{"filled": len(filled.Data), "accum": len(accum.Data)} {
		if gr != len(elev.Data) {
			return fmt.Errorf("input %q has %d cells, elevation %d", name, gr, len(elev.Data))
		}
	}
	if !(p.SeaReach > 0 && p.RiverReach > 0) {
		return fmt.Errorf("params sea_reach and river_reach must be > 0")
	}
	temp, err := sdk.OutputGrid[float32](c, "temperature")
	if err != nil {
		return err
	}
	moist, err := sdk.OutputGrid[float32](c, "moisture")
	if err != nil {
		return err
	}
	out, err := sdk.OutputGrid[uint8](c, "biome")
	if err != nil {
		return err
	}

	// Rivers: the cells their polylines pass through, read from the table.
	end := c.Timed("rivers")
	river := make([]bool, N)
	nRivers, err := rasterRivers(c, topo, river)
	if err != nil {
		return err
	}
	end()

	end = c.Timed("distances")
	sea := make([]bool, N)
	land := make([]bool, N)
	water := make([]bool, N) // rivers and lakes: fresh-water sources
	for i := range N {
		e := float64(elev.Data[i])
		sea[i] = e <= p.SeaLevel
		land[i] = !sea[i]
		water[i] = land[i] && (river[i] || float64(filled.Data[i])-e > 2)
	}
	// Only the sea along the coast starts the search: the open ocean adds
	// nothing but heap entries.
	coast := make([]bool, N)
	for i := range N {
		if sea[i] {
			for _, n := range g.Neighbors8(i) {
				if n >= 0 && land[n] {
					coast[i] = true
					break
				}
			}
		}
	}
	dSea := distances(topo, coast, land)
	dWater := distances(topo, water, land)
	end()

	defer c.Timed("climate")()
	wobble := newGradNoise(seed.Derive(c.Seed(), 1))
	inv := 1 / topo.Radius()
	if topo.Kind() == topology.KindPlane || !(inv > 0) || math.IsInf(inv, 0) {
		inv = 2 * math.Pi / float64(W)
	}
	counts := make([]int, len(biomes))
	for y := 0; y < H; y++ {
		lat := latitude(topo, y)
		a := math.Abs(lat) / 90
		t0 := p.EquatorTemp + (p.PoleTemp-p.EquatorTemp)*math.Pow(a, 1.4)
		// Dry subtropics, wet equator: the Hadley cells' signature.
		belt := 1 - 0.45*math.Exp(-sq((math.Abs(lat)-27)/9)) + 0.25*math.Exp(-sq(lat/12))
		for x := 0; x < W; x++ {
			i := y*W + x
			e := float64(elev.Data[i])
			t := t0 - p.LapseRate*math.Max(0, e-p.SeaLevel)/1000
			temp.Data[i] = float32(t)
			if sea[i] {
				moist.Data[i] = 1
				switch {
				case t < -12:
					out.Data[i] = bIce
				case e > p.SeaLevel-250:
					out.Data[i] = bShallow
				default:
					out.Data[i] = bDeep
				}
				counts[out.Data[i]]++
				continue
			}
			q := topo.Embed(float64(x)+0.5, float64(y)+0.5)
			for k := range q {
				q[k] *= inv * 3
			}
			m := 0.9*math.Exp(-dSea[i]/(p.SeaReach*1000)) + 0.45*math.Exp(-dWater[i]/(p.RiverReach*1000))
			// Floodplains: wetter where much water passes (drained km²).
			m += 0.08 * math.Min(1, math.Log10(1+float64(accum.Data[i]))/5)
			m = m*belt + 0.18*wobble.sample(q, topo.EmbedDim())
			m = math.Max(0, math.Min(1, m))
			moist.Data[i] = float32(m)
			b := classify(e, t, m)
			switch {
			case river[i]:
				b = bRiver
			case float64(filled.Data[i])-e > 2:
				b = bLake
			}
			out.Data[i] = b
			counts[b]++
		}
		if y%64 == 0 {
			c.Progress(float64(y)/float64(H), "climate")
		}
	}
	for k, n := range counts {
		c.Metric("cells_"+biomes[k].name, float64(n))
	}
	c.Metric("rivers_read", float64(nRivers))
	return writeColors(c)
}

func sq(x float64) float64 { return x * x }

// rasterRivers marks the cells under every vertex of the rivers table's
// polylines (vertices are cell centres, one per cell along a river).
func rasterRivers(c *sdk.Context, topo topology.Topology, river []bool) (int, error) {
	r, err := table.Read(c, "rivers")
	if err != nil {
		return 0, err
	}
	defer r.Close()
	W, H := topo.Width(), topo.Height()
	var dx, dy float64
	switch topo.Kind() {
	case topology.KindCylinder:
		dx = 2 * math.Pi * topo.Radius() / float64(W)
		dy = dx
	case topology.KindTorus:
		t := topo.Proto()
		dx = 2 * math.Pi * t.GetRadius() / float64(W)
		dy = 2 * math.Pi * t.GetMinorRadius() / float64(H)
	default:
		dx, dy = 1, 1
	}
	sphere, _ := topo.(*topology.Sphere)
	cell := func(px, py float64) int {
		var x, y int
		if sphere != nil {
			x, y = sphere.CellOf(px, py)
		} else {
			x, y = int(math.Floor(px/dx)), int(math.Floor(float64(H)-py/dy))
		}
		if x < 0 || x >= W || y < 0 || y >= H {
			return -1
		}
		return y*W + x
	}
	n := 0
	for b := 0; b < r.NumRecords(); b++ {
		rec, err := r.RecordBatch(b)
		if err != nil {
			return 0, fmt.Errorf("input \"rivers\": %w", err)
		}
		idx := rec.Schema().FieldIndices("geometry")
		if len(idx) != 1 {
			return 0, fmt.Errorf("input \"rivers\": no geometry column")
		}
		col, ok := rec.Column(idx[0]).(*array.Binary)
		if !ok {
			return 0, fmt.Errorf("input \"rivers\": geometry is %s, want binary WKB", rec.Column(idx[0]).DataType())
		}
		for j := 0; j < col.Len(); j++ {
			if err := wkbPoints(col.Value(j), func(px, py float64) {
				if i := cell(px, py); i >= 0 {
					river[i] = true
				}
			}); err != nil {
				return 0, fmt.Errorf("input \"rivers\" row %d: %w", j, err)
			}
			n++
		}
	}
	return n, nil
}

// wkbPoints calls f for every vertex of a little-endian WKB LineString or
// MultiLineString.
func wkbPoints(b []byte, f func(x, y float64)) error {
	le := binary.LittleEndian
	var line func(b []byte) ([]byte, error)
	line = func(b []byte) ([]byte, error) {
		if len(b) < 9 || b[0] != 1 {
			return nil, fmt.Errorf("not little-endian WKB")
		}
		switch le.Uint32(b[1:]) {
		case 2:
			n := int(le.Uint32(b[5:]))
			b = b[9:]
			if len(b) < 16*n {
				return nil, fmt.Errorf("truncated LineString")
			}
			for k := 0; k < n; k++ {
				f(math.Float64frombits(le.Uint64(b[16*k:])), math.Float64frombits(le.Uint64(b[16*k+8:])))
			}
			return b[16*n:], nil
		case 5:
			n := int(le.Uint32(b[5:]))
			b = b[9:]
			var err error
			for k := 0; k < n; k++ {
				if b, err = line(b); err != nil {
					return nil, err
				}
			}
			return b, nil
		}
		return nil, fmt.Errorf("WKB type %d is not a LineString or MultiLineString", le.Uint32(b[1:]))
	}
	_, err := line(b)
	return err
}

// distances is the shortest path length in metres from every land cell to
// the nearest source cell, over the 8-neighbour graph of the surface (wraps
// and poles included), by Dijkstra through land only. Steps use each row's
// cell size, so a sphere's narrow polar cells count for what they are.
func distances(topo topology.Topology, src, land []bool) []float64 {
	g := topo.Grid()
	W, H := g.Width(), g.Height()
	// Step lengths per row and direction (N, NE, E, SE, S, SW, W, NW).
	steps := make([][8]float64, H)
	for y := range steps {
		i := y * W
		for k, n := range g.Neighbors8(i) {
			if n >= 0 {
				steps[y][k] = topo.Distance(i, n)
			}
		}
	}
	d := make([]float64, g.Len())
	q := distHeap{}
	for i := range d {
		d[i] = math.Inf(1)
		if src[i] {
			d[i] = 0
			q.push(distItem{0, int32(i)})
		}
	}
	for len(q) > 0 {
		it := q.pop()
		i := int(it.i)
		if it.d > d[i] {
			continue
		}
		row := &steps[i/W]
		for k, n := range g.Neighbors8(i) {
			if n < 0 || !land[n] {
				continue
			}
			if nd := it.d + row[k]; nd < d[n] {
				d[n] = nd
				q.push(distItem{nd, int32(n)})
			}
		}
	}
	return d
}

type distItem struct {
	d float64
	i int32
}

// distHeap is a binary min-heap ordered by distance, then index, so equal
// distances pop in one fixed order.
type distHeap []distItem

func (h distHeap) less(a, b int) bool {
	return h[a].d < h[b].d || (h[a].d == h[b].d && h[a].i < h[b].i)
}

func (h *distHeap) push(it distItem) {
	*h = append(*h, it)
	q := *h
	for c := len(q) - 1; c > 0; {
		p := (c - 1) / 2
		if !q.less(c, p) {
			break
		}
		q[c], q[p] = q[p], q[c]
		c = p
	}
}

func (h *distHeap) pop() distItem {
	q := *h
	top := q[0]
	last := len(q) - 1
	q[0] = q[last]
	q = q[:last]
	for p := 0; ; {
		c := 2*p + 1
		if c >= len(q) {
			break
		}
		if c+1 < len(q) && q.less(c+1, c) {
			c++
		}
		if !q.less(c, p) {
			break
		}
		q[c], q[p] = q[p], q[c]
		p = c
	}
	*h = q
	return top
}

// writeColors writes the biome_colors table: value, r, g, b and name of
// every class. The host previews the biome grid in these colours.
func writeColors(c *sdk.Context) error {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "value", Type: arrow.PrimitiveTypes.Uint8},
		{Name: "r", Type: arrow.PrimitiveTypes.Uint8},
		{Name: "g", Type: arrow.PrimitiveTypes.Uint8},
		{Name: "b", Type: arrow.PrimitiveTypes.Uint8},
		{Name: "name", Type: arrow.BinaryTypes.String},
	}, nil)
	bld := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer bld.Release()
	for k, b := range biomes {
		bld.Field(0).(*array.Uint8Builder).Append(uint8(k))
		bld.Field(1).(*array.Uint8Builder).Append(b.r)
		bld.Field(2).(*array.Uint8Builder).Append(b.g)
		bld.Field(3).(*array.Uint8Builder).Append(b.b)
		bld.Field(4).(*array.StringBuilder).Append(b.name)
	}
	rec := bld.NewRecordBatch()
	defer rec.Release()
	return table.Write(c, "biome_colors", schema, rec)
}
