package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/pipehost/pipehost/bench/handoff/xfer"
	"github.com/pipehost/pipehost/host/arena"
	"github.com/pipehost/pipehost/host/pluginmgr"
	"github.com/pipehost/pipehost/internal/clock"
	benchv1 "github.com/pipehost/pipehost/proto/benchv1"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// Way is one way of handing a grid from the producer to the consumer.
type Way int

const (
	// WayShm is pipehost's data plane: a sealed memfd segment.
	WayShm Way = iota
	// WayShmPrefault is WayShm with the segment's pages allocated
	// (fallocate) before the producer runs.
	WayShmPrefault
	// WayGRPC streams the bytes in chunks over gRPC through the host.
	WayGRPC
	// WayNPY writes an .npy file and reads it back.
	WayNPY
	// WaySlice only fills a fresh Go slice in the producer: the baseline
	// for the producer's fill time.
	WaySlice
	// WayRun is `pipehost run` on the default path: the cache on, cold.
	WayRun
	// WayRunNoCache is `pipehost run --no-cache`.
	WayRunNoCache
	numWays
)

func (w Way) String() string {
	return [...]string{"(a) zero-copy", "(a) zero-copy, prefaulted", "(b) gRPC stream", "(c) .npy file", "Go slice fill only", "pipehost run (default, cold cache)", "pipehost run --no-cache"}[w]
}

// Sample is one case: one grid handed over one way. Times are nanoseconds.
type Sample struct {
	Way  Way
	Size int64
	// Handoff is what the host does between the producer's Result and the
	// consumer's request: (a) seal, handle, validation, fd send; (b)
	// receiving every chunk from the producer and pushing it to the
	// consumer; (c) passing the path.
	Handoff int64
	// FirstByte and FullRead run from the host issuing the consumer's
	// request (Run; for (b) opening Push) to the consumer holding the first
	// byte, and to it having read every byte.
	FirstByte, FullRead int64
	// EndToEnd runs from the producer's grid being filled to the consumer
	// having read every byte.
	EndToEnd int64
	// Fill is the producer's fill of its grid: mapping and filling the
	// output segment for (a), a fresh Go slice otherwise.
	Fill int64
	// Prefault is the host's fallocate of the segment before the producer
	// runs (WayShmPrefault only): off the critical path.
	Prefault int64
	// Write is the producer's write of the .npy file (WayNPY only).
	Write int64
	// Tail runs from the producer's grid being filled to its Result
	// reaching the host, for (a): mostly making the output view read-only.
	Tail int64
	// Seal is the part of (a)'s Handoff spent sealing the segment (against
	// future writes, plus the check of the producer's mappings).
	Seal int64
	// Wall is the whole `pipehost run` command (the run ways only).
	Wall int64
	// Peak resident sets (VmHWM) during the case, in bytes.
	HostPeak, ProducerPeak, ConsumerPeak uint64
	// The consumer's anonymous and shared resident bytes once it had read
	// the whole grid.
	ConsumerAnon, ConsumerShmem uint64
}

// Bench drives one producer and one consumer plugin process.
type Bench struct {
	mgr          *pluginmgr.Manager
	prod, cons   *pluginmgr.Plugin
	prodX, consX benchv1.TransferClient
	arena        *arena.Arena
	tokens       *shm.Tokens
	chunk        int
	dir          string
	cases        int
	// pipehost and pluginDir run the pipehost ways: the built command
	// and a directory holding only the benchxfer plugin.
	pipehost, pluginDir string
}

// Open launches the producer and the consumer, both from the benchxfer
// plugin at path, through the plugin manager. chunk is the gRPC chunk and
// .npy read size; dir holds the .npy files.
func Open(ctx context.Context, path string, chunk int, dir string) (*Bench, error) {
	if chunk < 4096 || chunk > maxChunk {
		return nil, fmt.Errorf("chunk size %d: want 4 KiB to %d MiB (the plugins accept gRPC messages up to 64 MiB)", chunk, maxChunk>>20)
	}
	mgr, err := pluginmgr.New(pluginmgr.Options{
		Plugins: plugin.PluginSet{xfer.PluginName: &xfer.TransferPlugin{}},
	})
	if err != nil {
		return nil, err
	}
	b := &Bench{mgr: mgr, arena: arena.New(0), tokens: shm.HostTokens(), chunk: chunk, dir: dir}
	for _, dst := range []struct {
		p *(*pluginmgr.Plugin)
		x *benchv1.TransferClient
	}{{&b.prod, &b.prodX}, {&b.cons, &b.consX}} {
		p, err := mgr.Launch(ctx, path)
		if err != nil {
			b.Close()
			return nil, err
		}
		raw, err := p.Dispense(xfer.PluginName)
		if err != nil {
			b.Close()
			return nil, err
		}
		x, ok := raw.(benchv1.TransferClient)
		if !ok {
			b.Close()
			return nil, fmt.Errorf("plugin %s: its %s service has client type %T", path, xfer.PluginName, raw)
		}
		*dst.p, *dst.x = p, x
	}
	return b, nil
}

// maxChunk keeps a chunk with its framing under the plugins' 64 MiB gRPC
// receive limit.
const maxChunk = 32 << 20

// Close stops both plugins and frees every segment.
func (b *Bench) Close() {
	b.arena.Close()
	b.mgr.Close()
}

// Run measures one case. Every case checks that the consumer read exactly
// the bytes the producer wrote (the sum of the whole grid).
func (b *Bench) Run(ctx context.Context, way Way, size int64) (Sample, error) {
	if err := xfer.CheckSize(size); err != nil {
		return Sample{}, err
	}
	if err := b.settle(ctx); err != nil {
		return Sample{}, err
	}
	b.cases++
	c := &tcase{
		Bench: b, way: way, size: size,
		prodName: fmt.Sprintf("produce-%d", b.cases),
		consName: fmt.Sprintf("consume-%d", b.cases),
		seed:     uint64(b.cases) * 0x9e3779b97f4a7c15,
	}
	c.height, c.width = xfer.Shape(size)
	c.s = Sample{Way: way, Size: size}
	if err := xfer.ResetPeak(); err != nil {
		return Sample{}, fmt.Errorf("resetting the host's peak RSS: %w", err)
	}
	var err error
	switch way {
	case WayShm, WayShmPrefault:
		err = c.zeroCopy(ctx, way == WayShmPrefault)
	case WayGRPC:
		err = c.grpc(ctx)
	case WayNPY:
		err = c.npy(ctx)
	case WaySlice:
		err = c.slice(ctx)
	case WayRun, WayRunNoCache:
		err = c.pipehostRun(ctx, way == WayRunNoCache)
	default:
		err = fmt.Errorf("unknown way %d", way)
	}
	if way != WayRun && way != WayRunNoCache {
		c.s.HostPeak = xfer.ReadMemory().Peak
	}
	if err != nil {
		return Sample{}, fmt.Errorf("%v, %s: %w", way, sizeString(size), err)
	}
	return c.s, nil
}

// settle returns the memory of earlier cases to the system in all three
// processes, so each case's peak starts from the baseline.
func (b *Bench) settle(ctx context.Context) error {
	for _, p := range []struct {
		x    benchv1.TransferClient
		name string
	}{{b.prodX, "producer"}, {b.consX, "consumer"}} {
		if _, err := p.x.Settle(ctx, &benchv1.SettleRequest{}); err != nil {
			return fmt.Errorf("settling the %s plugin: %w", p.name, err)
		}
	}
	runtime.GC()
	debug.FreeOSMemory()
	return nil
}

// tcase is one case in progress.
type tcase struct {
	*Bench
	way                Way
	size               int64
	height, width      uint64
	prodName, consName string
	seed               uint64
	s                  Sample
}

func (c *tcase) request(stage, kind string, params map[string]any) *pb.RunRequest {
	req := &pb.RunRequest{RunId: "handoff", Stage: stage, Kind: kind, Seed: c.seed, Params: map[string]*pb.Value{}}
	for k, v := range params {
		switch v := v.(type) {
		case string:
			req.Params[k] = &pb.Value{Kind: &pb.Value_StringValue{StringValue: v}}
		case int:
			req.Params[k] = &pb.Value{Kind: &pb.Value_IntValue{IntValue: int64(v)}}
		case uint64:
			req.Params[k] = &pb.Value{Kind: &pb.Value_IntValue{IntValue: int64(v)}}
		}
	}
	return req
}

// sliceParams are the producer's params for the ways without a segment.
func (c *tcase) sliceParams(way string) map[string]any {
	return map[string]any{"way": way, "height": c.height, "width": c.width}
}

// zeroCopy is way (a): the host allocates the segment, the producer fills
// it, the host seals it and hands the fd to the consumer.
func (c *tcase) zeroCopy(ctx context.Context, prefault bool) error {
	ent, err := c.arena.Allocate(xfer.Port, c.prodName, c.size, []string{c.consName}, false)
	if err != nil {
		return err
	}
	// Release frees the segment when the consumer is done; this frees it
	// on every other way out.
	defer func() {
		if !ent.Freed() {
			_ = c.arena.Free(ent.ID)
		}
	}()
	if prefault {
		t := clock.Now()
		if err := ent.Segment.Prefault(); err != nil {
			return err
		}
		c.s.Prefault = clock.Now() - t
	}
	out, err := c.sendFD(c.prod, ent, shm.GridHandle(ent.ID, uint64(ent.Size), 0, pb.DType_DTYPE_F32, c.height, c.width, 0))
	if err != nil {
		return err
	}
	req := c.request(c.prodName, xfer.KindProduce, map[string]any{"way": xfer.WayShm})
	req.Outputs = []*pb.Binding{out}
	pres, resultAt, err := call(ctx, c.prod, req)
	if err != nil {
		return err
	}

	// The hand-off, as the engine does it: seal against future writes
	// and check the producer kept no writable mapping (the full seal
	// follows in the background), build and check the consumer's handle,
	// send the fd.
	t := clock.Now()
	if err := c.arena.Seal(ent.ID); err != nil {
		return err
	}
	c.s.Seal = clock.Now() - t
	h := shm.GridHandle(ent.ID, uint64(ent.Size), 0, pb.DType_DTYPE_F32, c.height, c.width, 0)
	if err := shm.Validate(h, uint64(ent.Segment.Size())); err != nil {
		return err
	}
	in, err := c.sendFD(c.cons, ent, h)
	if err != nil {
		return err
	}
	req = c.request(c.consName, xfer.KindConsume, map[string]any{"way": xfer.WayShm})
	req.Inputs = []*pb.Binding{in}
	issued := clock.Now()
	c.s.Handoff = issued - resultAt

	cres, _, err := call(ctx, c.cons, req)
	if err != nil {
		return err
	}
	if err := c.arena.Release(ent.ID, c.consName); err != nil {
		return err
	}
	c.s.Tail = resultAt - metric(pres, "fill_end_ns")
	return c.record(pres, cres, issued)
}

func (c *tcase) sendFD(p *pluginmgr.Plugin, ent *arena.Entry, h *pb.Handle) (*pb.Binding, error) {
	tok := c.tokens.Next()
	msg := shm.Message{Type: shm.MsgSegment, Token: tok, SegmentID: ent.ID, Size: uint64(ent.Size)}
	if err := p.Channel.Send(msg, ent.Segment.FD()); err != nil {
		return nil, fmt.Errorf("sending segment %d to %s: %w", ent.ID, p.Path, err)
	}
	return &pb.Binding{Port: xfer.Port, Handle: h, FdToken: tok}, nil
}

// grpc is way (b): the producer fills a Go slice; the host pulls it in
// chunks and pushes each chunk on to the consumer as it arrives.
func (c *tcase) grpc(ctx context.Context) error {
	pres, resultAt, err := call(ctx, c.prod, c.request(c.prodName, xfer.KindProduce, c.sliceParams(xfer.WayGRPC)))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	limits := []grpc.CallOption{grpc.MaxCallRecvMsgSize(2 * maxChunk), grpc.MaxCallSendMsgSize(2 * maxChunk)}
	issued := clock.Now()
	push, err := c.consX.Push(ctx, limits...)
	if err != nil {
		return fmt.Errorf("opening Push to the consumer: %w", err)
	}
	pull, err := c.prodX.Pull(ctx, &benchv1.PullRequest{Key: c.prodName, ChunkBytes: uint64(c.chunk)}, limits...)
	if err != nil {
		return fmt.Errorf("opening Pull from the producer: %w", err)
	}
	var prodReport *benchv1.Report
	first := true
	for {
		m, err := pull.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("pulling from the producer: %w", err)
		}
		if m.GetReport() != nil {
			prodReport = m.GetReport()
			continue
		}
		if first {
			m.TotalBytes = uint64(c.size)
			first = false
		}
		if err := push.Send(m); err != nil {
			return fmt.Errorf("pushing to the consumer: %w", err)
		}
	}
	if err := push.CloseSend(); err != nil {
		return fmt.Errorf("pushing to the consumer: %w", err)
	}
	c.s.Handoff = clock.Now() - resultAt
	rep, err := push.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("pushing to the consumer: %w", err)
	}
	if prodReport == nil {
		return errors.New("the producer's Pull ended without its report")
	}
	if err := c.checkSum(rep.GetSum()); err != nil {
		return err
	}
	c.s.FirstByte = rep.GetFirstByteNs() - issued
	c.s.FullRead = rep.GetFullReadNs() - issued
	c.s.EndToEnd = rep.GetFullReadNs() - metric(pres, "fill_end_ns")
	c.s.Fill = metric(pres, "fill_end_ns") - metric(pres, "fill_start_ns")
	c.s.ProducerPeak = prodReport.GetPeakRssBytes()
	c.s.ConsumerPeak = rep.GetPeakRssBytes()
	c.s.ConsumerAnon, c.s.ConsumerShmem = rep.GetRssAnonBytes(), rep.GetRssShmemBytes()
	return nil
}

// npy is way (c): the producer writes an .npy file, the host passes its
// path, the consumer reads it back.
func (c *tcase) npy(ctx context.Context) error {
	path := filepath.Join(c.dir, c.prodName+".npy")
	defer os.Remove(path)
	params := c.sliceParams(xfer.WayNPY)
	params["path"] = path
	pres, resultAt, err := call(ctx, c.prod, c.request(c.prodName, xfer.KindProduce, params))
	if err != nil {
		return err
	}
	req := c.request(c.consName, xfer.KindConsume, map[string]any{"way": xfer.WayNPY, "path": path, "chunk": c.chunk})
	issued := clock.Now()
	c.s.Handoff = issued - resultAt
	cres, _, err := call(ctx, c.cons, req)
	if err != nil {
		return err
	}
	c.s.Write = metric(pres, "write_ns")
	return c.record(pres, cres, issued)
}

// slice is the baseline: the producer fills a fresh Go slice and drops it.
func (c *tcase) slice(ctx context.Context) error {
	pres, _, err := call(ctx, c.prod, c.request(c.prodName, xfer.KindProduce, c.sliceParams(xfer.WaySlice)))
	if err != nil {
		return err
	}
	c.s.Fill = metric(pres, "fill_end_ns") - metric(pres, "fill_start_ns")
	c.s.ProducerPeak = pres.GetStats().GetPeakRssBytes()
	return nil
}

// record fills the sample from the producer's and the consumer's Results.
func (c *tcase) record(pres, cres *pb.Result, issued int64) error {
	sum := uint64(metric(cres, "sum_lo")) | uint64(metric(cres, "sum_hi"))<<32
	if err := c.checkSum(sum); err != nil {
		return err
	}
	c.s.FirstByte = metric(cres, "first_byte_ns") - issued
	c.s.FullRead = metric(cres, "full_read_ns") - issued
	c.s.EndToEnd = metric(cres, "full_read_ns") - metric(pres, "fill_end_ns")
	c.s.Fill = metric(pres, "fill_end_ns") - metric(pres, "fill_start_ns")
	c.s.ProducerPeak = pres.GetStats().GetPeakRssBytes()
	c.s.ConsumerPeak = cres.GetStats().GetPeakRssBytes()
	c.s.ConsumerAnon = uint64(metric(cres, "rss_anon_bytes"))
	c.s.ConsumerShmem = uint64(metric(cres, "rss_shmem_bytes"))
	return nil
}

func (c *tcase) checkSum(got uint64) error {
	if want := xfer.ExpectedSum(c.seed, c.size); got != want {
		return fmt.Errorf("the consumer read other bytes than the producer wrote: sum %#x, want %#x", got, want)
	}
	return nil
}

// metric reads a metric a plugin reported; clock readings and byte counts
// are below 2^53, so the double holds them exactly.
func metric(r *pb.Result, name string) int64 {
	v := r.GetMetrics()[name]
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return int64(v)
}

// call runs one stage and returns its Result and when the host received
// it; like the engine, it reads the stream to its end.
func call(ctx context.Context, p *pluginmgr.Plugin, req *pb.RunRequest) (*pb.Result, int64, error) {
	fail := func(err error) (*pb.Result, int64, error) {
		err = fmt.Errorf("stage %s (%s) in %s: %w", req.GetStage(), req.GetKind(), p.Path, err)
		if lines := p.Stderr.Excerpt(8); len(lines) > 0 {
			err = fmt.Errorf("%w\n  last stderr lines:\n    %s", err, strings.Join(lines, "\n    "))
		}
		return nil, 0, err
	}
	stream, err := p.Client.Run(ctx, req)
	if err != nil {
		return fail(err)
	}
	var res *pb.Result
	var at int64
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fail(err)
		}
		if r := ev.GetResult(); r != nil {
			res, at = r, clock.Now()
		}
	}
	if res == nil {
		return fail(errors.New("the run ended without a result"))
	}
	return res, at, nil
}
