package dataset

import "math"

// copyTile fills raw with the tile×tile block whose upper-left sample is (x0, y0) in an image
// of w×h samples of size bytes, reading rows through rowAt. Past the right and bottom edges it
// repeats the last column and row: the padding is never read back, and repeating keeps the
// predictor's differences at zero so it costs almost nothing once compressed.
func copyTile(raw []byte, tile, size, w, h, x0, y0 int, rowAt func(y int) []byte) {
	rowLen := tile * size
	x1 := min(x0+tile, w)
	for r := 0; r < tile; r++ {
		dst := raw[r*rowLen : (r+1)*rowLen]
		if y0+r >= h {
			copy(dst, raw[(r-1)*rowLen:r*rowLen])
			continue
		}
		n := copy(dst, rowAt(y0 + r)[x0*size:x1*size])
		for j := n; j < rowLen; j += size {
			copy(dst[j:j+size], dst[n-size:n])
		}
	}
}

// overviewSize is the size of the next pyramid level: each side halved, rounded up.
func overviewSize(w, h int) (int, int) { return (w + 1) / 2, (h + 1) / 2 }

// cascade computes overview levels in one pass over the rows of their source. Each level turns
// pairs of rows from the level below into one row of 2×2 means, rounds it to the grid's dtype
// and passes it on, so a level needs one pending row and one band of tile rows, never itself
// whole. Full bands go to flush, which compresses them.
type cascade struct {
	dt     DType
	nodata *float64
	tile   int
	levels []*cascadeLevel
	flush  func(level int, band []byte, rows, tileRow int) error
}

type cascadeLevel struct {
	inW, inH int // size of the level below
	w, h     int
	inRow    int // next row index expected from below
	outRow   int // rows produced so far
	pend     []float64
	out      []float64
	dec      []float64
	band     []byte
	bandRows int
}

func newCascade(dt DType, nodata *float64, tile, srcW, srcH, levels int, flush func(int, []byte, int, int) error) *cascade {
	c := &cascade{dt: dt, nodata: nodata, tile: tile, flush: flush}
	w, h := srcW, srcH
	for range levels {
		ow, oh := overviewSize(w, h)
		c.levels = append(c.levels, &cascadeLevel{
			inW: w, inH: h, w: ow, h: oh,
			pend: make([]float64, w),
			out:  make([]float64, ow),
			dec:  make([]float64, ow),
			band: make([]byte, tile*ow*dt.Size()),
		})
		w, h = ow, oh
	}
	return c
}

// run feeds every row of src through the levels.
func (c *cascade) run(src Grid) error {
	row := make([]float64, src.Width)
	for y := 0; y < src.Height; y++ {
		decodeRow(src.DType, src.row(y), row)
		if err := c.push(0, row); err != nil {
			return err
		}
	}
	return nil
}

func (c *cascade) push(k int, row []float64) error {
	L := c.levels[k]
	y := L.inRow
	L.inRow++
	last := y == L.inH-1
	if y%2 == 0 && !last {
		copy(L.pend, row)
		return nil
	}
	if y%2 == 0 {
		c.average(row, nil, L.out)
	} else {
		c.average(L.pend, row, L.out)
	}
	rowLen := L.w * c.dt.Size()
	dst := L.band[L.bandRows*rowLen : (L.bandRows+1)*rowLen]
	encodeRow(c.dt, L.out, dst)
	// The next level averages the stored values, as a reader recomputing it from this one would.
	decodeRow(c.dt, dst, L.dec)
	L.bandRows++
	L.outRow++
	if L.bandRows == c.tile || L.outRow == L.h {
		if err := c.flush(k, L.band, L.bandRows, (L.outRow-1)/c.tile); err != nil {
			return err
		}
		L.bandRows = 0
	}
	if k+1 < len(c.levels) {
		return c.push(k+1, L.dec)
	}
	return nil
}

// average writes the mean of each 2×2 block of rows a and b (b nil for a last, unpaired row)
// into out. NaN and nodata samples are left out of the mean; a block without any valid sample
// becomes nodata, or NaN when no nodata value is set.
func (c *cascade) average(a, b []float64, out []float64) {
	empty := math.NaN()
	nd, hasND := 0.0, c.nodata != nil
	if hasND {
		nd = *c.nodata
		empty = nd
	}
	n := len(a)
	for i := range out {
		sum, cnt := 0.0, 0
		add := func(v float64) {
			if v != v || (hasND && v == nd) {
				return
			}
			sum += v
			cnt++
		}
		j := 2 * i
		add(a[j])
		if j+1 < n {
			add(a[j+1])
		}
		if b != nil {
			add(b[j])
			if j+1 < n {
				add(b[j+1])
			}
		}
		if cnt == 0 {
			out[i] = empty
		} else {
			out[i] = sum / float64(cnt)
		}
	}
}
