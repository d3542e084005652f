package dataset

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
)

// COGOptions controls WriteCOG. The zero value writes 512×512 deflate tiles with the
// predictor for the dtype, computes overviews, and adds no georeferencing.
type COGOptions struct {
	// TileSize is 256 or 512; 0 means 512.
	TileSize int
	// Compression of each tile; the zero value is Deflate.
	Compression Compression
	// Level is the codec's level; 0 uses GDAL's defaults (deflate 6, zstd 9).
	Level int
	// NoPredictor turns the predictor off. By default floats use TIFF predictor 3 and
	// integers predictor 2.
	NoPredictor bool
	// NoData marks cells without a value. It is stored in GDAL's nodata tag, left out of
	// computed overviews, and must be representable in the grid's dtype.
	NoData *float64
	// Overviews are the caller's pyramid levels, largest first, each no larger than the one
	// before and of the grid's dtype. They are written as they are. Levels are computed by
	// 2×2 averaging from the smallest one given (or from the grid) until a level fits in one
	// tile.
	Overviews []Grid
	// Georef places the grid on its surface; the zero value writes no georeferencing.
	Georef Georef
	// Metadata adds items to GDAL's metadata tag (read back by GDAL as dataset metadata).
	Metadata map[string]string
	// Workers is the number of tiles compressed at once; 0 means GOMAXPROCS.
	Workers int
	// BigTIFF forces the BigTIFF variant. It is chosen anyway when the file could exceed
	// 4 GiB.
	BigTIFF bool
}

// COGDTypes lists the dtypes WriteCOG accepts.
var COGDTypes = []DType{Float32, Float64, Int8, Int16, Int32, Uint8, Uint16, Uint32}

// cogLevel is one image of the file: the main grid or an overview.
type cogLevel struct {
	w, h     int
	src      *Grid // nil when computed
	ntx, nty int
	offsets  []uint64
	counts   []uint64
}

type cogPlan struct {
	opt       COGOptions
	dt        DType
	tile      int
	level     int
	predictor uint16
	levels    []*cogLevel // main first, then overviews by decreasing size
	given     int         // levels[1..given] come from the caller
	big       bool
	meta      string
	nodata    string
}

func supported(dt DType, list []DType) bool {
	for _, d := range list {
		if d == dt {
			return true
		}
	}
	return false
}

func dtypeNames(list []DType) string {
	s := make([]string, len(list))
	for i, d := range list {
		s[i] = d.String()
	}
	return strings.Join(s, ", ")
}

// planCOG checks everything that can be checked before a file is created.
func planCOG(g Grid, opt COGOptions) (*cogPlan, error) {
	if err := g.check("grid"); err != nil {
		return nil, err
	}
	if !supported(g.DType, COGDTypes) {
		return nil, fmt.Errorf("COG cannot hold dtype %s (supported: %s)", g.DType, dtypeNames(COGDTypes))
	}
	p := &cogPlan{opt: opt, dt: g.DType, tile: opt.TileSize, level: opt.Level}
	if p.tile == 0 {
		p.tile = 512
	}
	if p.tile != 256 && p.tile != 512 {
		return nil, fmt.Errorf("COG tile size must be 256 or 512, got %d", p.tile)
	}
	switch opt.Compression {
	case Deflate:
		if p.level == 0 {
			p.level = Deflate.defaultLevel()
		}
		if p.level < 1 || p.level > 9 {
			return nil, fmt.Errorf("deflate level must be 1..9, got %d", p.level)
		}
	case Zstd:
		if p.level == 0 {
			p.level = Zstd.defaultLevel()
		}
		if p.level < 1 || p.level > 22 {
			return nil, fmt.Errorf("zstd level must be 1..22, got %d", p.level)
		}
	default:
		return nil, fmt.Errorf("unknown compression %d", opt.Compression)
	}
	p.predictor = predictorFor(g.DType)
	if opt.NoPredictor {
		p.predictor = predictorNone
	}
	if opt.NoData != nil {
		if !representable(g.DType, *opt.NoData) {
			return nil, fmt.Errorf("nodata %v cannot be stored as %s", *opt.NoData, g.DType)
		}
		p.nodata = noDataString(g.DType, *opt.NoData)
	}
	if err := opt.Georef.check(); err != nil {
		return nil, err
	}
	if err := checkMetadata(opt.Georef, opt.Metadata); err != nil {
		return nil, err
	}
	p.meta = gdalMetadata(opt.Georef, opt.Metadata)

	p.addLevel(g.Width, g.Height, &g)
	for i := range opt.Overviews {
		o := &opt.Overviews[i]
		what := fmt.Sprintf("overview %d", i+1)
		if err := o.check(what); err != nil {
			return nil, err
		}
		if o.DType != g.DType {
			return nil, fmt.Errorf("%s is %s, the grid is %s", what, o.DType, g.DType)
		}
		prev := p.levels[len(p.levels)-1]
		if o.Width > prev.w || o.Height > prev.h || o.Width*o.Height >= prev.w*prev.h {
			return nil, fmt.Errorf("%s is %d×%d, not smaller than the level before it (%d×%d)", what, o.Width, o.Height, prev.w, prev.h)
		}
		p.addLevel(o.Width, o.Height, o)
	}
	p.given = len(opt.Overviews)
	for {
		last := p.levels[len(p.levels)-1]
		if last.w <= p.tile && last.h <= p.tile {
			break
		}
		w, h := overviewSize(last.w, last.h)
		p.addLevel(w, h, nil)
	}

	// Worst case: every tile incompressible, plus codec overhead and framing.
	raw := uint64(p.tile * p.tile * g.DType.Size())
	bound := uint64(1 << 20)
	for _, l := range p.levels {
		bound += uint64(l.ntx*l.nty) * (raw + raw/64 + 1024 + 16)
	}
	p.big = opt.BigTIFF || bound > math.MaxUint32
	return p, nil
}

func (p *cogPlan) addLevel(w, h int, src *Grid) {
	ntx, nty := (w+p.tile-1)/p.tile, (h+p.tile-1)/p.tile
	p.levels = append(p.levels, &cogLevel{
		w: w, h: h, src: src, ntx: ntx, nty: nty,
		offsets: make([]uint64, ntx*nty), counts: make([]uint64, ntx*nty),
	})
}

// ifds returns the fields of every image, main first, with the current tile offsets.
func (p *cogPlan) ifds() [][]field {
	sampleFormat := uint16(1)
	switch {
	case p.dt.IsFloat():
		sampleFormat = 3
	case p.dt.IsSigned():
		sampleFormat = 2
	}
	out := make([][]field, len(p.levels))
	for i, l := range p.levels {
		f := []field{
			sizeField(tagImageWidth, l.w),
			sizeField(tagImageLength, l.h),
			shortField(tagBitsPerSample, uint16(8*p.dt.Size())),
			shortField(tagCompression, p.opt.Compression.tiffCode()),
			shortField(tagPhotometric, 1), // min-is-black
			shortField(tagSamplesPerPixel, 1),
			shortField(tagPlanarConfig, 1),
			shortField(tagTileWidth, uint16(p.tile)),
			shortField(tagTileLength, uint16(p.tile)),
			offsetsField(tagTileOffsets, p.big, l.offsets),
			offsetsField(tagTileByteCounts, p.big, l.counts),
			shortField(tagSampleFormat, sampleFormat),
		}
		if p.predictor != predictorNone {
			f = append(f, shortField(tagPredictor, p.predictor))
		}
		if i > 0 {
			f = append(f, field{tagNewSubfileType, tLong, 1, []byte{1, 0, 0, 0}}) // reduced-resolution image
		} else {
			f = append(f, p.opt.Georef.geoFields(l.w, l.h)...)
			if p.meta != "" {
				f = append(f, asciiField(tagGDALMetadata, p.meta))
			}
		}
		if p.nodata != "" {
			f = append(f, asciiField(tagGDALNoData, p.nodata))
		}
		out[i] = f
	}
	return out
}

// WriteCOG writes g as a Cloud Optimized GeoTIFF in GDAL's COG layout: TIFF header, GDAL's
// structural metadata, the IFDs of the main image and then of each overview, then the tiles of
// the smallest overview first and of the main image last, each framed by its size and a copy
// of its last 4 bytes. Accepted dtypes are listed in COGDTypes.
//
// Tiles are read straight from g.Data (and the given overviews) and compressed in parallel;
// computed overviews go through an unlinked scratch file beside the artifact so that they can
// precede the main image. Memory beyond the input stays at a band of tile rows per level.
func (w *Writer) WriteCOG(name string, g Grid, opt COGOptions) (Artifact, error) {
	if err := w.checkName(name); err != nil {
		return Artifact{}, err
	}
	plan, err := planCOG(g, opt)
	if err != nil {
		return Artifact{}, fmt.Errorf("dataset: %s: %w", w.display(name), err)
	}
	p, err := w.create(name)
	if err != nil {
		return Artifact{}, err
	}
	if err := plan.write(p); err != nil {
		p.abort()
		return Artifact{}, fmt.Errorf("dataset: %s: %w", w.display(name), err)
	}
	return p.commit("cog")
}

func (p *cogPlan) write(pf *pending) error {
	f := pf.f
	enc := newTileEncoder(p.dt, p.tile, p.predictor, p.opt.Compression, p.level, p.opt.Workers)
	defer enc.close()
	size := p.dt.Size()

	head := append(tiffHeader(p.big, 0), ghostHeader(p.big)...)
	ifdBytes, _ := encodeIFDs(p.big, uint64(len(head)), p.ifds())
	dataStart := uint64(len(head) + len(ifdBytes))

	// Computed overviews: one scratch file per level, filled in a single pass over the source.
	computed := p.levels[1+p.given:]
	scratch := make([]*os.File, len(computed))
	defer func() {
		for _, s := range scratch {
			if s != nil {
				s.Close()
			}
		}
	}()
	if len(computed) > 0 {
		bufs := make([]*bufio.Writer, len(computed))
		pos := make([]uint64, len(computed))
		for i := range computed {
			s, err := pf.scratch()
			if err != nil {
				return err
			}
			scratch[i] = s
			bufs[i] = bufio.NewWriterSize(s, 256<<10)
		}
		src := p.levels[p.given].src
		c := newCascade(p.dt, p.opt.NoData, p.tile, src.Width, src.Height, len(computed), func(k int, band []byte, rows, ty int) error {
			l := computed[k]
			rowLen := l.w * size
			rowAt := func(y int) []byte { return band[y*rowLen : (y+1)*rowLen] }
			return enc.encode(l.ntx, func(tx int, raw []byte) {
				copyTile(raw, p.tile, size, l.w, rows, tx*p.tile, 0, rowAt)
			}, func(tx int, rec []byte) error {
				i := ty*l.ntx + tx
				l.offsets[i] = pos[k] + 4
				l.counts[i] = uint64(len(rec) - 8)
				pos[k] += uint64(len(rec))
				_, err := bufs[k].Write(rec)
				return err
			})
		})
		if err := c.run(*src); err != nil {
			return fmt.Errorf("computing overviews: %w", err)
		}
		for i, b := range bufs {
			if err := b.Flush(); err != nil {
				return fmt.Errorf("overview scratch file: %w", err)
			}
			if computed[i].offsets[len(computed[i].offsets)-1] == 0 {
				return fmt.Errorf("overview %d: not every tile was produced", p.given+1+i)
			}
		}
	}

	if _, err := f.Seek(int64(dataStart), io.SeekStart); err != nil {
		return err
	}
	pos := dataStart
	// Smallest overview first: computed levels from the scratch files, copied in the kernel.
	for i := len(computed) - 1; i >= 0; i-- {
		if _, err := scratch[i].Seek(0, io.SeekStart); err != nil {
			return err
		}
		n, err := io.Copy(f, scratch[i])
		if err != nil {
			return fmt.Errorf("copying overview %d: %w", p.given+1+i, err)
		}
		for j := range computed[i].offsets {
			computed[i].offsets[j] += pos
		}
		pos += uint64(n)
		scratch[i].Close()
		scratch[i] = nil
	}
	// Then the caller's overviews, smallest first, and the main image, straight from memory.
	bw := bufio.NewWriterSize(f, 1<<20)
	for li := p.given; li >= 0; li-- {
		l := p.levels[li]
		g := *l.src
		err := enc.encode(l.ntx*l.nty, func(i int, raw []byte) {
			copyTile(raw, p.tile, size, l.w, l.h, (i%l.ntx)*p.tile, (i/l.ntx)*p.tile, g.row)
		}, func(i int, rec []byte) error {
			l.offsets[i] = pos + 4
			l.counts[i] = uint64(len(rec) - 8)
			pos += uint64(len(rec))
			_, err := bw.Write(rec)
			return err
		})
		if err != nil {
			if li == 0 {
				return fmt.Errorf("main image: %w", err)
			}
			return fmt.Errorf("overview %d: %w", li, err)
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if !p.big && pos > math.MaxUint32 {
		return fmt.Errorf("file grew to %d bytes, past the 4 GiB limit of classic TIFF", pos)
	}
	final, _ := encodeIFDs(p.big, uint64(len(head)), p.ifds())
	if len(final) != len(ifdBytes) {
		return fmt.Errorf("internal error: IFD size changed from %d to %d bytes", len(ifdBytes), len(final))
	}
	head = append(tiffHeader(p.big, uint64(len(head))), ghostHeader(p.big)...)
	if _, err := f.WriteAt(append(head, final...), 0); err != nil {
		return err
	}
	return nil
}
