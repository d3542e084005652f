package dataset

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"

	// Same API and zlib streams as compress/zlib, about three times faster at level 6;
	// with the standard library the writer was slower than GDAL's.
	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"
)

// Compression selects the codec of COG tiles.
type Compression uint8

const (
	// Deflate stores each tile as a zlib stream (TIFF compression 8, "Adobe deflate").
	Deflate Compression = iota
	// Zstd stores each tile as a Zstandard frame (TIFF compression 50000).
	Zstd
)

func (c Compression) String() string {
	switch c {
	case Deflate:
		return "deflate"
	case Zstd:
		return "zstd"
	}
	return fmt.Sprintf("Compression(%d)", uint8(c))
}

func (c Compression) tiffCode() uint16 {
	if c == Zstd {
		return 50000
	}
	return 8
}

// defaultLevel matches GDAL's defaults, so files compare like for like.
func (c Compression) defaultLevel() int {
	if c == Zstd {
		return 9
	}
	return 6
}

// tileEncoder turns tiles into framed, compressed records on a small pool of workers and
// hands them back in order. A record is the 4-byte little-endian size of the compressed
// tile, the tile, and a copy of its last 4 bytes: the framing GDAL's COG layout declares.
type tileEncoder struct {
	dt        DType
	tile      int
	predictor uint16
	comp      Compression
	level     int
	workers   int

	mu    sync.Mutex
	free  []*tileState
	bufs  [][]byte // record buffers kept across encode calls; at most a window's worth
	zopts []zstd.EOption
}

// tileState is one worker's scratch: the raw tile, a predictor row and the codec.
type tileState struct {
	raw []byte
	tmp []byte
	zw  *zlib.Writer
	zs  *zstd.Encoder
	out appendWriter
}

type appendWriter struct{ b []byte }

func (a *appendWriter) Write(p []byte) (int, error) { a.b = append(a.b, p...); return len(p), nil }

func newTileEncoder(dt DType, tile int, predictor uint16, comp Compression, level, workers int) *tileEncoder {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	return &tileEncoder{
		dt: dt, tile: tile, predictor: predictor, comp: comp, level: level, workers: workers,
		zopts: []zstd.EOption{
			zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
			zstd.WithEncoderConcurrency(1),
			zstd.WithEncoderCRC(false),
			zstd.WithZeroFrames(true),
		},
	}
}

func (e *tileEncoder) rawSize() int { return e.tile * e.tile * e.dt.Size() }

func (e *tileEncoder) getState() (*tileState, error) {
	e.mu.Lock()
	if n := len(e.free); n > 0 {
		s := e.free[n-1]
		e.free = e.free[:n-1]
		e.mu.Unlock()
		return s, nil
	}
	e.mu.Unlock()
	s := &tileState{raw: make([]byte, e.rawSize()), tmp: make([]byte, e.tile*e.dt.Size())}
	var err error
	switch e.comp {
	case Deflate:
		s.zw, err = zlib.NewWriterLevel(&s.out, e.level)
	case Zstd:
		s.zs, err = zstd.NewWriter(nil, e.zopts...)
	default:
		err = fmt.Errorf("unknown compression %d", e.comp)
	}
	return s, err
}

func (e *tileEncoder) putState(s *tileState) {
	e.mu.Lock()
	e.free = append(e.free, s)
	e.mu.Unlock()
}

// close releases the codecs.
func (e *tileEncoder) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.free {
		if s.zs != nil {
			s.zs.Close()
		}
	}
	e.free = nil
}

// getBuf returns an empty record buffer big enough for an incompressible tile, so that
// records never grow while being compressed.
func (e *tileEncoder) getBuf() []byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	if n := len(e.bufs); n > 0 {
		b := e.bufs[n-1]
		e.bufs = e.bufs[:n-1]
		return b[:0]
	}
	raw := e.rawSize()
	return make([]byte, 0, raw+raw/64+256)
}

func (e *tileEncoder) putBuf(b []byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.bufs) < 2*e.workers+1 {
		e.bufs = append(e.bufs, b)
	}
}

// encodeOne fills, predicts, compresses and frames one tile.
func (e *tileEncoder) encodeOne(s *tileState, fill func(raw []byte)) ([]byte, error) {
	fill(s.raw)
	size := e.dt.Size()
	switch e.predictor {
	case predictorFloat:
		predictFloat(s.raw, s.tmp, e.tile, size)
	case predictorHorizontal:
		predictHorizontal(s.raw, e.tile, size)
	}
	rec := append(e.getBuf(), 0, 0, 0, 0)
	switch e.comp {
	case Deflate:
		s.out.b = rec
		s.zw.Reset(&s.out)
		if _, err := s.zw.Write(s.raw); err != nil {
			return nil, err
		}
		if err := s.zw.Close(); err != nil {
			return nil, err
		}
		rec = s.out.b
		s.out.b = nil
	case Zstd:
		rec = s.zs.EncodeAll(s.raw, rec)
	}
	n := len(rec) - 4
	binary.LittleEndian.PutUint32(rec, uint32(n))
	var last [4]byte
	copy(last[4-min(n, 4):], rec[len(rec)-min(n, 4):])
	return append(rec, last[:]...), nil
}

type encResult struct {
	rec []byte
	err error
}

// encode runs tiles 0..n-1 through the pool: fill(i, raw) writes tile i's samples, emit(i,
// rec) receives the framed records strictly in order of i. At most two records per worker
// are in flight, so memory stays a few tiles regardless of n.
func (e *tileEncoder) encode(n int, fill func(i int, raw []byte), emit func(i int, rec []byte) error) error {
	if n == 0 {
		return nil
	}
	window := 2 * e.workers
	slots := make([]chan encResult, window)
	for i := range slots {
		slots[i] = make(chan encResult, 1)
	}
	tokens := make(chan struct{}, window)
	for range window {
		tokens <- struct{}{}
	}
	next := make(chan int)
	stop := make(chan struct{})
	go func() {
		defer close(next)
		for i := 0; i < n; i++ {
			select {
			case <-tokens:
			case <-stop:
				return
			}
			select {
			case next <- i:
			case <-stop:
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for range min(e.workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := e.getState()
			if err != nil {
				for i := range next {
					slots[i%window] <- encResult{err: err}
				}
				return
			}
			defer e.putState(s)
			for i := range next {
				rec, err := e.encodeOne(s, func(raw []byte) { fill(i, raw) })
				// The slot is free: i was dispatched only after record i-window was emitted.
				slots[i%window] <- encResult{rec, err}
			}
		}()
	}
	var err error
	for i := 0; i < n; i++ {
		r := <-slots[i%window]
		if r.err != nil {
			err = fmt.Errorf("compressing tile %d: %w", i, r.err)
			break
		}
		err = emit(i, r.rec)
		e.putBuf(r.rec)
		if err != nil {
			break
		}
		tokens <- struct{}{}
	}
	close(stop)
	wg.Wait()
	return err
}
