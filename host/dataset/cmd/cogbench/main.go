// Command cogbench writes one raster as a Cloud Optimized GeoTIFF with the dataset package,
// for comparing its speed and memory with other COG writers (scripts/bench-cog.sh).
//
//	cogbench gen -width 4096 -height 4096 -out in.f32
//	cogbench write -in in.f32 -width 4096 -height 4096 -out out.tif [-tile 512] [-compression deflate|zstd]
//
// gen writes a float32 fractal terrain as raw little-endian bytes plus an ENVI header
// (in.hdr) so GDAL reads the same raster. write maps the input read-only and prints the
// elapsed time, throughput in MB/s of input and the output size.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pipehost/pipehost/host/dataset"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: cogbench gen|write [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "gen":
		err = gen(os.Args[2:])
	case "write":
		err = write(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (want gen or write)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cogbench:", err)
		os.Exit(1)
	}
}

func gen(args []string) error {
	fs := flag.NewFlagSet("gen", flag.ExitOnError)
	w := fs.Int("width", 4096, "columns")
	h := fs.Int("height", 4096, "rows")
	out := fs.String("out", "in.f32", "raw output file; the ENVI header goes beside it with extension .hdr")
	fs.Parse(args)
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	row := make([]byte, 4**w)
	for y := 0; y < *h; y++ {
		for x := 0; x < *w; x++ {
			binary.LittleEndian.PutUint32(row[4*x:], math.Float32bits(float32(fbm(float64(x), float64(y)))))
		}
		if _, err := f.Write(row); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	hdr := strings.TrimSuffix(*out, filepath.Ext(*out)) + ".hdr"
	return os.WriteFile(hdr, []byte(fmt.Sprintf("ENVI\nsamples = %d\nlines = %d\nbands = 1\nheader offset = 0\nfile type = ENVI Standard\ndata type = 4\ninterleave = bsq\nbyte order = 0\n", *w, *h)), 0o644)
}

// fbm is fractal value noise: eight octaves from 512 cells down to 4, heights in metres.
func fbm(x, y float64) float64 {
	v, amp, scale := 0.0, 2000.0, 512.0
	for o := 0; o < 8; o++ {
		v += amp * valueNoise(x/scale, y/scale, uint64(o))
		amp *= 0.5
		scale *= 0.5
	}
	return v
}

func valueNoise(x, y float64, seed uint64) float64 {
	x0, y0 := math.Floor(x), math.Floor(y)
	fx, fy := x-x0, y-y0
	sx, sy := fx*fx*(3-2*fx), fy*fy*(3-2*fy)
	ix, iy := int64(x0), int64(y0)
	c := func(i, j int64) float64 {
		z := uint64(i)*0x9E3779B97F4A7C15 ^ uint64(j)*0xC2B2AE3D27D4EB4F ^ seed*0x165667B19E3779F9
		z = (z ^ z>>30) * 0xBF58476D1CE4E5B9
		z = (z ^ z>>27) * 0x94D049BB133111EB
		z ^= z >> 31
		return float64(z>>11)/float64(1<<53)*2 - 1
	}
	a := c(ix, iy) + sx*(c(ix+1, iy)-c(ix, iy))
	b := c(ix, iy+1) + sx*(c(ix+1, iy+1)-c(ix, iy+1))
	return a + sy*(b-a)
}

func write(args []string) error {
	fs := flag.NewFlagSet("write", flag.ExitOnError)
	in := fs.String("in", "in.f32", "raw little-endian float32 input")
	w := fs.Int("width", 4096, "columns")
	h := fs.Int("height", 4096, "rows")
	out := fs.String("out", "out.tif", "COG to write")
	tile := fs.Int("tile", 512, "tile size: 256 or 512")
	comp := fs.String("compression", "deflate", "deflate or zstd")
	level := fs.Int("level", 0, "codec level; 0 for the default (deflate 6, zstd 9)")
	workers := fs.Int("workers", 0, "tiles compressed at once; 0 for all CPUs")
	fs.Parse(args)

	f, err := os.Open(*in)
	if err != nil {
		return err
	}
	defer f.Close()
	size := 4 * *w * *h
	data, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mapping %s: %w", *in, err)
	}
	defer syscall.Munmap(data)
	opt := dataset.COGOptions{TileSize: *tile, Level: *level, Workers: *workers}
	switch *comp {
	case "deflate":
	case "zstd":
		opt.Compression = dataset.Zstd
	default:
		return fmt.Errorf("unknown compression %q", *comp)
	}
	dw, err := dataset.NewWriter(filepath.Dir(*out))
	if err != nil {
		return err
	}
	defer dw.Close()
	// Like gdal_translate, leave flushing to disk to the kernel.
	dw.NoSync = true
	start := time.Now()
	a, err := dw.WriteCOG(filepath.Base(*out), dataset.Grid{Data: data, Width: *w, Height: *h, DType: dataset.Float32}, opt)
	if err != nil {
		return err
	}
	el := time.Since(start)
	fmt.Printf("%.3f s  %.1f MB/s  %d bytes\n", el.Seconds(), float64(size)/1e6/el.Seconds(), a.Size)
	return nil
}
