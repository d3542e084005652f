// Command benchxfer is the plugin of the hand-off benchmark (bench/handoff).
// The host launches it twice, as producer and as consumer of one float32
// grid, and moves the grid between them three ways: a sealed shared memory
// segment (way "shm"), chunks over gRPC through the host (the Transfer
// service, way "grpc"), or an .npy file (way "npy"). Every time it reports is
// CLOCK_MONOTONIC nanoseconds, comparable with the host's.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"sync"

	"github.com/hashicorp/go-plugin"

	"github.com/pipehost/pipehost/bench/handoff/xfer"
	"github.com/pipehost/pipehost/internal/clock"
	benchv1 "github.com/pipehost/pipehost/proto/benchv1"
	"github.com/pipehost/pipehost/sdk"
)

type produceParams struct {
	Way    string `param:"way" default:"shm" doc:"shm: fill the output segment; grpc: fill a Go slice kept for Transfer.Pull; npy: fill a Go slice and write it to path; slice: fill a fresh Go slice and drop it"`
	Height int    `param:"height" default:"0" doc:"grid rows (ways without an output segment)"`
	Width  int    `param:"width" default:"0" doc:"grid columns (ways without an output segment)"`
	Path   string `param:"path" default:"" doc:".npy file to write (way npy)"`
}

type consumeParams struct {
	Way   string `param:"way" default:"shm" doc:"shm: read the input segment; npy: read the .npy file at path"`
	Path  string `param:"path" default:"" doc:".npy file to read (way npy)"`
	Chunk int    `param:"chunk" default:"1048576" doc:"bytes per read call (way npy)"`
}

// kept holds the grids filled for Transfer.Pull, by stage instance.
var kept = struct {
	sync.Mutex
	grids map[string][]float32
}{grids: map[string][]float32{}}

func main() {
	sdk.ServeWith(plugin.PluginSet{xfer.PluginName: &xfer.TransferPlugin{Impl: transfer{}}},
		sdk.Define(sdk.Spec{
			Kind:    xfer.KindProduce,
			Version: "1.0.0",
			Doc:     "Fills a float32 grid with the benchmark pattern (seeded) and hands it on the chosen way.",
			Outputs: []sdk.Port{sdk.GridPort(xfer.Port, sdk.F32)},
		}, produce),
		sdk.Define(sdk.Spec{
			Kind:    xfer.KindConsume,
			Version: "1.0.0",
			Doc:     "Reads every byte of a float32 grid and reports when the first and the last byte were read.",
			Inputs:  []sdk.Port{optional(sdk.GridPort(xfer.Port, sdk.F32))},
		}, consume))
}

func optional(p sdk.Port) sdk.Port {
	p.Optional = true
	return p
}

func produce(c *sdk.Context, p produceParams) error {
	start := clock.Now()
	var grid []float32
	switch p.Way {
	case xfer.WayShm:
		g, err := sdk.OutputGrid[float32](c, xfer.Port)
		if err != nil {
			return err
		}
		grid = g.Data
	case xfer.WayGRPC, xfer.WayNPY, xfer.WaySlice:
		if p.Height <= 0 || p.Width <= 0 {
			return fmt.Errorf("way %q needs height and width, got %d×%d", p.Way, p.Height, p.Width)
		}
		grid = make([]float32, p.Height*p.Width)
	default:
		return fmt.Errorf("unknown way %q (want shm, grpc, npy or slice)", p.Way)
	}
	xfer.Fill(grid, c.Seed())
	end := clock.Now()
	// The seed travels as two exact halves, so a host that did not choose
	// it (a pipehost run) can check the consumer's sum.
	c.Metric("seed_lo", float64(uint32(c.Seed())))
	c.Metric("seed_hi", float64(c.Seed()>>32))
	c.Metric("fill_start_ns", float64(start))
	c.Metric("fill_end_ns", float64(end))
	mem := xfer.ReadMemory()
	c.Metric("rss_anon_bytes", float64(mem.Anon))
	c.Metric("rss_shmem_bytes", float64(mem.Shmem))
	switch p.Way {
	case xfer.WayGRPC:
		kept.Lock()
		kept.grids[c.Stage()] = grid
		kept.Unlock()
	case xfer.WayNPY:
		if err := xfer.WriteNPY(p.Path, grid, uint64(p.Height), uint64(p.Width)); err != nil {
			return err
		}
		c.Metric("write_ns", float64(clock.Now()-end))
	}
	return nil
}

func consume(c *sdk.Context, p consumeParams) error {
	var first, full int64
	var sum uint64
	var mem xfer.Memory
	switch p.Way {
	case xfer.WayShm:
		g, err := sdk.InputGrid[float32](c, xfer.Port)
		if err != nil {
			return err
		}
		if len(g.Data) == 0 {
			return errors.New("the input grid is empty")
		}
		// The first element, in this process's hands; reported, so the
		// read stays.
		c.Metric("first_value", float64(g.Data[0]))
		first = clock.Now()
		b := xfer.Bytes(g.Data)
		if sum, err = xfer.Sum(b); err != nil {
			return err
		}
		full = clock.Now()
		mem = xfer.ReadMemory()
	case xfer.WayNPY:
		grid, t, err := xfer.ReadNPY(p.Path, p.Chunk)
		if err != nil {
			return err
		}
		first = t
		if sum, err = xfer.Sum(xfer.Bytes(grid)); err != nil {
			return err
		}
		full = clock.Now()
		mem = xfer.ReadMemory()
	default:
		return fmt.Errorf("unknown way %q (want shm or npy; grpc arrives through Transfer.Push)", p.Way)
	}
	c.Metric("first_byte_ns", float64(first))
	c.Metric("full_read_ns", float64(full))
	// A metric is a double: the 64-bit sum travels as two exact halves.
	c.Metric("sum_lo", float64(uint32(sum)))
	c.Metric("sum_hi", float64(sum>>32))
	c.Metric("rss_anon_bytes", float64(mem.Anon))
	c.Metric("rss_shmem_bytes", float64(mem.Shmem))
	return nil
}

// transfer serves the bench-only Transfer service.
type transfer struct {
	benchv1.UnimplementedTransferServer
}

func (transfer) Pull(req *benchv1.PullRequest, stream benchv1.Transfer_PullServer) error {
	kept.Lock()
	grid, ok := kept.grids[req.GetKey()]
	delete(kept.grids, req.GetKey())
	kept.Unlock()
	if !ok {
		return fmt.Errorf("no grid kept for stage %q: run %s with way grpc first", req.GetKey(), xfer.KindProduce)
	}
	chunk := int(max(req.GetChunkBytes(), 4096))
	b := xfer.Bytes(grid)
	for off := 0; off < len(b); off += chunk {
		if err := stream.Send(&benchv1.Chunk{Data: b[off:min(off+chunk, len(b))]}); err != nil {
			return err
		}
	}
	mem := xfer.ReadMemory()
	return stream.Send(&benchv1.Chunk{Report: &benchv1.Report{
		PeakRssBytes: mem.Peak, RssAnonBytes: mem.Anon, RssShmemBytes: mem.Shmem,
	}})
}

// Push receives the grid into a fresh Go slice, as a consumer without
// shared memory must, then reads it all.
func (transfer) Push(stream benchv1.Transfer_PushServer) error {
	_ = xfer.ResetPeak()
	var grid []float32
	var b []byte
	var first int64
	off := 0
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if grid == nil {
			total := msg.GetTotalBytes()
			if total == 0 || total%4 != 0 {
				return fmt.Errorf("push: the first chunk announces %d bytes; want a positive multiple of 4", total)
			}
			grid = make([]float32, total/4)
			b = xfer.Bytes(grid)
		}
		if len(msg.GetData()) > len(b)-off {
			return fmt.Errorf("push: more than the announced %d bytes arrived", len(b))
		}
		off += copy(b[off:], msg.GetData())
		if first == 0 && off > 0 {
			first = clock.Now()
		}
	}
	if off != len(b) || len(b) == 0 {
		return fmt.Errorf("push: %d of the announced %d bytes arrived", off, len(b))
	}
	sum, err := xfer.Sum(b)
	if err != nil {
		return err
	}
	full := clock.Now()
	mem := xfer.ReadMemory()
	return stream.SendAndClose(&benchv1.Report{
		FirstByteNs: first, FullReadNs: full, Sum: sum,
		PeakRssBytes: mem.Peak, RssAnonBytes: mem.Anon, RssShmemBytes: mem.Shmem,
	})
}

// Settle frees the grids of finished cases and gives their memory back to
// the system, so the next case's peak starts from the baseline.
func (transfer) Settle(context.Context, *benchv1.SettleRequest) (*benchv1.Report, error) {
	kept.Lock()
	clear(kept.grids)
	kept.Unlock()
	runtime.GC()
	debug.FreeOSMemory()
	mem := xfer.ReadMemory()
	return &benchv1.Report{PeakRssBytes: mem.Peak, RssAnonBytes: mem.Anon, RssShmemBytes: mem.Shmem}, nil
}
