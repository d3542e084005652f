package dataset

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
)

// PreviewStyle selects how WritePNG turns values into colours.
type PreviewStyle uint8

const (
	// ColorRamp maps values from low to high through blue, green, tan, brown and white.
	ColorRamp PreviewStyle = iota
	// Hillshade renders relief in grey, lit from the north-west at 45°.
	Hillshade
	// ShadedRamp multiplies the colour ramp by the hillshade.
	ShadedRamp
	// Relief is shaded relief around a sea level of 0: blues by depth below it, land tints
	// from green to white above it, lit like Hillshade.
	Relief
	// Palette colours each value by PreviewOptions.Palette (categories, e.g. biomes); each
	// pixel takes the value of one cell, never a mean.
	Palette
)

// PaletteEntry is the colour of one value in a Palette preview.
type PaletteEntry struct {
	Value   float64
	R, G, B uint8
}

// PreviewOptions controls WritePNG.
type PreviewOptions struct {
	Style PreviewStyle
	// MaxSize caps the long side of the image in pixels; 0 means 1024 (2048 for Palette).
	MaxSize int
	// NoData marks cells without a value; they and NaN cells are transparent.
	NoData *float64
	// Min and Max fix the ends of the colour ramp; nil uses the smallest and largest value
	// in the preview.
	Min, Max *float64
	// Palette lists the colours of a Palette preview; values not in it are transparent.
	Palette []PaletteEntry
}

// WritePNG writes an RGBA preview of g. The grid is reduced by an integer factor so that its
// long side is at most MaxSize, each pixel the mean of (a regular sample of at most 4×4 of)
// the valid cells it covers, read row band by row band from g.Data. A pixel with no valid cell
// is fully transparent. Any dtype is accepted.
func (w *Writer) WritePNG(name string, g Grid, opt PreviewOptions) (Artifact, error) {
	if err := w.checkName(name); err != nil {
		return Artifact{}, err
	}
	fail := func(err error) (Artifact, error) {
		return Artifact{}, fmt.Errorf("dataset: %s: %w", w.display(name), err)
	}
	if err := g.check("grid"); err != nil {
		return fail(err)
	}
	if opt.Style > Palette {
		return fail(fmt.Errorf("unknown preview style %d", opt.Style))
	}
	if opt.MaxSize < 0 {
		return fail(fmt.Errorf("preview size %d is negative", opt.MaxSize))
	}
	img := renderPreview(g, opt)
	p, err := w.create(name)
	if err != nil {
		return Artifact{}, err
	}
	bw := bufio.NewWriter(p.f)
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	if err := enc.Encode(bw, img); err == nil {
		err = bw.Flush()
	}
	if err != nil {
		p.abort()
		return fail(err)
	}
	return p.commit("png")
}

// downsample reduces g to at most maxSize pixels on its long side. Invalid cells (NaN,
// nodata) are left out of each mean; a pixel without valid cells is NaN.
func downsample(g Grid, maxSize int, nodata *float64) (vals []float64, w, h int) {
	long := max(g.Width, g.Height)
	f := (long + maxSize - 1) / maxSize
	step := (f + 3) / 4 // at most 4×4 samples per pixel
	w, h = (g.Width+f-1)/f, (g.Height+f-1)/f
	vals = make([]float64, w*h)
	sum := make([]float64, w)
	cnt := make([]int, w)
	size := g.DType.Size()
	for oy := 0; oy < h; oy++ {
		clear(sum)
		clear(cnt)
		for y := oy * f; y < min(g.Height, (oy+1)*f); y += step {
			row := g.row(y)
			for ox := 0; ox < w; ox++ {
				for x := ox * f; x < min(g.Width, (ox+1)*f); x += step {
					v := sampleAt(g.DType, row[x*size:])
					if v != v || (nodata != nil && v == *nodata) {
						continue
					}
					sum[ox] += v
					cnt[ox]++
				}
			}
		}
		for ox := 0; ox < w; ox++ {
			if cnt[ox] == 0 {
				vals[oy*w+ox] = math.NaN()
			} else {
				vals[oy*w+ox] = sum[ox] / float64(cnt[ox])
			}
		}
	}
	return vals, w, h
}

func sampleAt(dt DType, b []byte) float64 {
	le := binary.LittleEndian
	switch dt {
	case Float32:
		return float64(math.Float32frombits(le.Uint32(b)))
	case Float64:
		return math.Float64frombits(le.Uint64(b))
	case Int8:
		return float64(int8(b[0]))
	case Uint8:
		return float64(b[0])
	case Int16:
		return float64(int16(le.Uint16(b)))
	case Uint16:
		return float64(le.Uint16(b))
	case Int32:
		return float64(int32(le.Uint32(b)))
	case Uint32:
		return float64(le.Uint32(b))
	case Int64:
		return float64(int64(le.Uint64(b)))
	case Uint64:
		return float64(le.Uint64(b))
	}
	return math.NaN()
}

// rampStops is the colour ramp, evenly meaningful from low (0) to high (1) values.
var rampStops = []struct {
	at      float64
	r, g, b float64
}{
	{0.00, 38, 52, 150},
	{0.25, 58, 144, 196},
	{0.45, 118, 192, 118},
	{0.62, 218, 206, 124},
	{0.80, 156, 108, 72},
	{1.00, 248, 248, 248},
}

func ramp(t float64) (r, g, b float64) {
	t = math.Max(0, math.Min(1, t))
	for i := 1; i < len(rampStops); i++ {
		a, c := rampStops[i-1], rampStops[i]
		if t <= c.at {
			u := (t - a.at) / (c.at - a.at)
			return a.r + u*(c.r-a.r), a.g + u*(c.g-a.g), a.b + u*(c.b-a.b)
		}
	}
	last := rampStops[len(rampStops)-1]
	return last.r, last.g, last.b
}

func renderPreview(g Grid, opt PreviewOptions) *image.NRGBA {
	maxSize := opt.MaxSize
	if maxSize == 0 {
		maxSize = 1024
	}
	if opt.Style == Palette {
		if opt.MaxSize == 0 {
			maxSize = 2048 // one-cell features (rivers) survive at common sizes
		}
		return renderPalette(g, maxSize, opt.Palette)
	}
	vals, w, h := downsample(g, maxSize, opt.NoData)
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, v := range vals {
		if v == v {
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	if opt.Min != nil {
		lo = *opt.Min
	}
	if opt.Max != nil {
		hi = *opt.Max
	}
	span := hi - lo
	if !(span > 0) || math.IsInf(span, 0) {
		span = 1
	}
	// Relief: the full value range rises a tenth of the image's long side.
	zScale := 0.1 * float64(max(w, h)) / span
	at := func(x, y int, centre float64) float64 {
		x, y = max(0, min(w-1, x)), max(0, min(h-1, y))
		if v := vals[y*w+x]; v == v {
			return v
		}
		return centre
	}
	const az, alt = 315 * math.Pi / 180, 45 * math.Pi / 180
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			v := vals[y*w+x]
			if v != v {
				continue // transparent
			}
			shade := 1.0
			if opt.Style != ColorRamp {
				dx := (at(x+1, y, v) - at(x-1, y, v)) / 2 * zScale
				dy := (at(x, y+1, v) - at(x, y-1, v)) / 2 * zScale
				slope := math.Atan(math.Hypot(dx, dy))
				aspect := math.Atan2(dy, -dx)
				shade = math.Sin(alt)*math.Cos(slope) + math.Cos(alt)*math.Sin(slope)*math.Cos(az-math.Pi/2-aspect)
				shade = math.Max(0, math.Min(1, shade))
			}
			var r, gr, b float64
			switch opt.Style {
			case Hillshade:
				r, gr, b = 255*shade, 255*shade, 255*shade
			case Relief:
				r, gr, b = relief(v, lo, hi)
				k := 0.35 + 0.65*shade
				if v < 0 {
					k = 0.8 + 0.2*shade // the sea surface is flat: only a hint of the floor
				}
				r, gr, b = r*k, gr*k, b*k
			case ShadedRamp:
				r, gr, b = ramp((v - lo) / span)
				k := 0.35 + 0.65*shade
				r, gr, b = r*k, gr*k, b*k
			default:
				r, gr, b = ramp((v - lo) / span)
			}
			img.SetNRGBA(x, y, color.NRGBA{uint8(math.Round(r)), uint8(math.Round(gr)), uint8(math.Round(b)), 255})
		}
	}
	return img
}

// landStops tint land from the coast (0) to the highest value (1).
var landStops = []struct {
	at      float64
	r, g, b float64
}{
	{0.00, 86, 140, 72},
	{0.12, 128, 168, 92},
	{0.30, 206, 196, 130},
	{0.55, 160, 118, 82},
	{0.80, 128, 112, 104},
	{1.00, 250, 250, 250},
}

// relief is the colour of value v in a Relief preview whose values span lo..hi.
func relief(v, lo, hi float64) (r, g, b float64) {
	if v < 0 {
		t := 0.0
		if lo < 0 {
			t = math.Min(1, v/lo)
		}
		// Light shelf water to deep navy.
		return 120 - 95*t, 180 - 140*t, 230 - 120*t
	}
	t := 0.0
	if hi > 0 {
		t = math.Min(1, v/hi)
	}
	for i := 1; i < len(landStops); i++ {
		a, c := landStops[i-1], landStops[i]
		if t <= c.at {
			u := (t - a.at) / (c.at - a.at)
			return a.r + u*(c.r-a.r), a.g + u*(c.g-a.g), a.b + u*(c.b-a.b)
		}
	}
	last := landStops[len(landStops)-1]
	return last.r, last.g, last.b
}

// renderPalette draws categories: each pixel is the cell at its block's centre, so a
// reduced image never invents a category by averaging two others.
func renderPalette(g Grid, maxSize int, palette []PaletteEntry) *image.NRGBA {
	long := max(g.Width, g.Height)
	f := (long + maxSize - 1) / maxSize
	w, h := (g.Width+f-1)/f, (g.Height+f-1)/f
	colours := make(map[float64]color.NRGBA, len(palette))
	for _, p := range palette {
		colours[p.Value] = color.NRGBA{p.R, p.G, p.B, 255}
	}
	size := g.DType.Size()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		sy := min(g.Height-1, y*f+f/2)
		row := g.row(sy)
		for x := 0; x < w; x++ {
			sx := min(g.Width-1, x*f+f/2)
			if c, ok := colours[sampleAt(g.DType, row[sx*size:])]; ok {
				img.SetNRGBA(x, y, c)
			}
		}
	}
	return img
}
