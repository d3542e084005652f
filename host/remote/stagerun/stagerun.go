// Package stagerun runs one stage, once, from files: the command of a
// remote action (cmd/pipehost-stage). It reads a stage description, starts
// the plugin with the host's own launch code, fills write-sealed segments
// from the input files, runs the stage through the same protocol as the
// engine, and writes each output's bytes to a file plus outputs.json with
// their handles and digests. The outputs are byte-identical to a local run
// of the same stage: same plugin, same request, same bytes in.
package stagerun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/pluginmgr"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// SpecFile and ResultFile are the names a remote action uses.
const (
	SpecFile   = "stage.json"
	ResultFile = "outputs.json"
)

// Spec describes one stage run.
type Spec struct {
	// Plugin is the plugin executable, relative to the spec's directory
	// (the action's input root) unless absolute.
	Plugin string `json:"plugin"`
	// Request is the RunRequest as protojson, without bindings: run id,
	// stage, kind, params, seed, topology and levels.
	Request json.RawMessage `json:"request"`
	// Inputs are the stage's inputs, one file each.
	Inputs []Input `json:"inputs"`
}

// Input is one input port's bytes and handle.
type Input struct {
	Port string `json:"port"`
	// File holds the segment's bytes, relative to the spec's directory.
	File string `json:"file"`
	// Handle is the buffer's handle as protojson; its segment id and size
	// are set by the runner.
	Handle json.RawMessage `json:"handle"`
}

// Output is one output written by Run.
type Output struct {
	cache.OutputRecord
	// File is the output's bytes, relative to the output directory.
	File string `json:"file"`
}

// Result is what Run writes to ResultFile.
type Result struct {
	Stage   string             `json:"stage"`
	Kind    string             `json:"kind"`
	Outputs []Output           `json:"outputs"`
	Metrics map[string]float64 `json:"metrics,omitempty"`
}

// Options tune Run.
type Options struct {
	// Log receives the stage's log lines and progress (nil: discarded).
	Log io.Writer
	// Timeout bounds the stage's Run call (0: none).
	Timeout time.Duration
}

// RunFile reads the spec at specPath and runs it, writing the outputs and
// ResultFile into outDir.
func RunFile(ctx context.Context, specPath, outDir string, opts Options) (*Result, error) {
	b, err := os.ReadFile(specPath)
	if err != nil {
		return nil, fmt.Errorf("stage description: %w", err)
	}
	var spec Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, fmt.Errorf("stage description %s: %w", specPath, err)
	}
	return Run(ctx, &spec, filepath.Dir(specPath), outDir, opts)
}

// Run runs spec with file paths relative to base.
func Run(ctx context.Context, spec *Spec, base, outDir string, opts Options) (*Result, error) {
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	req := &pb.RunRequest{}
	if err := protojson.Unmarshal(spec.Request, req); err != nil {
		return nil, fmt.Errorf("stage description: request: %w", err)
	}
	if len(req.GetInputs()) > 0 || len(req.GetOutputs()) > 0 {
		return nil, errors.New("stage description: the request must not carry bindings (inputs are files)")
	}
	name := fmt.Sprintf("stage %s (%s)", req.GetStage(), req.GetKind())
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, err
	}

	mgr, err := pluginmgr.New(pluginmgr.Options{})
	if err != nil {
		return nil, err
	}
	defer mgr.Close()
	pluginPath := resolve(base, spec.Plugin)
	p, err := mgr.Launch(ctx, pluginPath)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var desc *pb.StageDescriptor
	for _, d := range p.Stages {
		if d.GetKind() == req.GetKind() {
			desc = d
		}
	}
	if desc == nil {
		return nil, fmt.Errorf("%s: plugin %s does not offer kind %q", name, pluginPath, req.GetKind())
	}

	s := &run{name: name, p: p, segs: map[string]*shm.Segment{}, handles: map[string]*pb.Handle{}}
	defer s.close()
	tokens := shm.HostTokens()
	send := func(seg *shm.Segment, h *pb.Handle, port string) (*pb.Binding, error) {
		tok := tokens.Next()
		msg := shm.Message{Type: shm.MsgSegment, Token: tok, SegmentID: h.GetSegmentId(), Size: uint64(seg.Size())}
		if err := p.Channel.Send(msg, seg.FD()); err != nil {
			return nil, fmt.Errorf("sending %q to the plugin: %w", port, err)
		}
		return &pb.Binding{Port: port, Handle: h, FdToken: tok}, nil
	}

	// Grid outputs are allocated in advance, exactly as the engine does.
	for _, op := range desc.GetOutputs() {
		if op.GetKind() != pb.PortKind_PORT_KIND_GRID {
			continue
		}
		if int(op.GetLevel()) >= len(req.GetLevels()) {
			return nil, fmt.Errorf("%s: output %q is at level %d, the request has %d levels", name, op.GetName(), op.GetLevel(), len(req.GetLevels()))
		}
		lv := req.GetLevels()[op.GetLevel()]
		size := uint64(lv.GetWidth()) * uint64(lv.GetHeight()) * uint64(shm.DTypeSize(op.GetDtype()))
		seg, err := shm.Create(req.GetStage()+"."+op.GetName(), int64(size))
		if err != nil {
			return nil, fmt.Errorf("%s: output %q: %w", name, op.GetName(), err)
		}
		s.segs[op.GetName()] = seg
		h := shm.GridHandle(s.nextID(), size, 0, op.GetDtype(), uint64(lv.GetHeight()), uint64(lv.GetWidth()), op.GetLevel())
		s.handles[op.GetName()] = h
		b, err := send(seg, h, op.GetName())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		req.Outputs = append(req.Outputs, b)
	}
	for _, in := range spec.Inputs {
		seg, h, err := loadInput(resolve(base, in.File), in, req.GetStage(), s.nextID())
		if err != nil {
			return nil, fmt.Errorf("%s: input %q: %w", name, in.Port, err)
		}
		s.inputs = append(s.inputs, seg)
		b, err := send(seg, h, in.Port)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		req.Inputs = append(req.Inputs, b)
	}

	runCtx, cancel := ctx, context.CancelFunc(func() {})
	if opts.Timeout > 0 {
		runCtx, cancel = context.WithTimeoutCause(ctx, opts.Timeout, fmt.Errorf("stage timed out after %s", opts.Timeout))
	}
	defer cancel()
	res, err := call(runCtx, p, req, opts.Log)
	if err != nil {
		if cause := context.Cause(runCtx); cause != nil {
			err = cause
		}
		return nil, fmt.Errorf("%s: %w%s", name, err, stderrNote(p))
	}
	if err := s.collect(ctx, desc, res); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p.Stop()
	result := &Result{Stage: req.GetStage(), Kind: req.GetKind(), Metrics: res.GetMetrics()}
	for _, op := range desc.GetOutputs() {
		port := op.GetName()
		seg := s.segs[port]
		d, err := cache.SegmentDigest(seg)
		if err != nil {
			return nil, fmt.Errorf("%s: output %q: %w", name, port, err)
		}
		file := port
		if err := writeFile(filepath.Join(outDir, file), seg); err != nil {
			return nil, fmt.Errorf("%s: output %q: %w", name, port, err)
		}
		result.Outputs = append(result.Outputs, Output{
			OutputRecord: cache.OutputRecord{Port: port, Digest: d, Handle: cache.EncodeHandle(s.handles[port])},
			File:         file,
		})
	}
	sort.Slice(result.Outputs, func(i, j int) bool { return result.Outputs[i].Port < result.Outputs[j].Port })
	b, err := json.MarshalIndent(result, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(outDir, ResultFile), append(b, '\n'), 0o644); err != nil {
		return nil, err
	}
	return result, nil
}

type run struct {
	name    string
	p       *pluginmgr.Plugin
	id      uint64
	segs    map[string]*shm.Segment
	handles map[string]*pb.Handle
	inputs  []*shm.Segment
}

func (s *run) nextID() uint64 { s.id++; return s.id }

func (s *run) close() {
	for _, seg := range s.segs {
		seg.Close()
	}
	for _, seg := range s.inputs {
		seg.Close()
	}
}

// collect write-seals the pre-allocated outputs at once, as the engine does
// (docs/protocol.md, "Hand-off"): EBUSY means the stage kept a writable
// mapping somewhere. Then it takes the dynamic outputs.
func (s *run) collect(ctx context.Context, desc *pb.StageDescriptor, res *pb.Result) error {
	for port, seg := range s.segs {
		if err := seg.SealWrite(); err != nil {
			if errors.Is(err, shm.ErrWritableMapping) {
				return fmt.Errorf("the stage kept a writable mapping of its output %q after returning: unmap every writable view of an output before the stage returns: %w", port, err)
			}
			return fmt.Errorf("output %q: %w", port, err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, b := range res.GetDynamicOutputs() {
		port := b.GetPort()
		var op *pb.Port
		for _, o := range desc.GetOutputs() {
			if o.GetName() == port {
				op = o
			}
		}
		if op == nil || op.GetKind() == pb.PortKind_PORT_KIND_GRID {
			return fmt.Errorf("protocol violation: dynamic output %q is not a table or blob output of %s", port, desc.GetKind())
		}
		if s.segs[port] != nil {
			return fmt.Errorf("protocol violation: output %q returned twice", port)
		}
		msg, fd, err := s.p.Mailbox.Take(ctx, b.GetFdToken())
		if err != nil {
			return fmt.Errorf("dynamic output %q: %w", port, err)
		}
		seg, err := shm.Open(fd)
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("dynamic output %q: unusable segment: %w", port, err)
		}
		s.segs[port] = seg
		if uint64(seg.Size()) != msg.Size {
			return fmt.Errorf("protocol violation: dynamic output %q announced %d bytes, its segment has %d", port, msg.Size, seg.Size())
		}
		h := b.GetHandle()
		if h == nil {
			h = &pb.Handle{}
		}
		h.SegmentId = s.nextID()
		if err := shm.Validate(h, uint64(seg.Size())); err != nil {
			return fmt.Errorf("dynamic output %q: %w", port, err)
		}
		s.handles[port] = h
	}
	for _, op := range desc.GetOutputs() {
		if s.segs[op.GetName()] == nil {
			return fmt.Errorf("the stage returned no %q output", op.GetName())
		}
	}
	return nil
}

// call runs the stage (on the plugin's fd channel when it takes runs
// there, as the engine does), passing log lines on, until the Result.
func call(ctx context.Context, p *pluginmgr.Plugin, req *pb.RunRequest, log io.Writer) (*pb.Result, error) {
	stream, err := p.Run(ctx, req)
	if err != nil {
		return nil, rpcError(err)
	}
	var result *pb.Result
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, rpcError(err)
		}
		switch {
		case ev.GetResult() != nil:
			if result != nil {
				return nil, errors.New("protocol violation: the plugin sent two results")
			}
			result = ev.GetResult()
		case ev.GetLog() != nil:
			fmt.Fprintf(log, "%s: %s\n", req.GetStage(), ev.GetLog().GetMessage())
		}
	}
	if result == nil {
		return nil, errors.New("protocol violation: the plugin ended the run without a result")
	}
	return result, nil
}

func rpcError(err error) error {
	if s, ok := status.FromError(err); ok {
		return errors.New(s.Message())
	}
	return err
}

func stderrNote(p *pluginmgr.Plugin) string {
	lines := p.Stderr.Excerpt(12)
	if len(lines) == 0 {
		return ""
	}
	return "\n  last stderr lines:\n    " + strings.Join(lines, "\n    ")
}

func resolve(base, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(base, p)
}

// loadInput fills a new segment from a file with an in-kernel copy and
// write-seals it.
func loadInput(path string, in Input, stage string, id uint64) (*shm.Segment, *pb.Handle, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	h := &pb.Handle{}
	if err := protojson.Unmarshal(in.Handle, h); err != nil {
		return nil, nil, fmt.Errorf("handle: %w", err)
	}
	h.SegmentId, h.SegmentSize = id, uint64(st.Size())
	if err := shm.Validate(h, uint64(st.Size())); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	seg, err := shm.Create(stage+"."+in.Port, st.Size())
	if err != nil {
		return nil, nil, err
	}
	err = seg.Use(func(fd int) error { return kernelCopy(fd, int(f.Fd()), st.Size()) })
	if err == nil {
		err = seg.SealWrite()
	}
	if err != nil {
		seg.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return seg, h, nil
}

// writeFile writes a segment's bytes to a new file with an in-kernel copy.
func writeFile(path string, seg *shm.Segment) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	err = seg.Use(func(fd int) error { return kernelCopy(int(f.Fd()), fd, seg.Size()) })
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// kernelCopy copies n bytes from the start of src to the start of dst
// without passing them through user space: copy_file_range, else sendfile.
func kernelCopy(dst, src int, n int64) error {
	var off int64
	for off < n {
		roff, woff := off, off
		k, err := unix.CopyFileRange(src, &roff, dst, &woff, int(min(n-off, 1<<30)), 0)
		if err != nil || k == 0 {
			break
		}
		off += int64(k)
	}
	if off < n {
		if _, err := unix.Seek(dst, off, io.SeekStart); err != nil {
			return err
		}
	}
	for off < n {
		roff := off
		k, err := unix.Sendfile(dst, src, &roff, int(min(n-off, 1<<30)))
		if err != nil {
			return fmt.Errorf("sendfile: %w", err)
		}
		if k == 0 {
			return fmt.Errorf("source ended after %d of %d bytes", off, n)
		}
		off += int64(k)
	}
	return nil
}

// NewSpec describes a planned stage for the runner, with the same request
// the engine sends (run id, stage, kind, params, seed, topology, levels).
// plugin is the plugin's path as the runner will see it.
func NewSpec(plugin string, p *plan.Plan, n *plan.Node, inputs []Input) (*Spec, error) {
	req := &pb.RunRequest{
		RunId: p.Config.RunID, Stage: n.Name, Kind: n.Kind, Params: n.Params, Seed: n.Seed,
		Topology: p.Topology, Levels: p.Levels,
	}
	b, err := protojson.Marshal(req)
	if err != nil {
		return nil, err
	}
	return &Spec{Plugin: plugin, Request: b, Inputs: inputs}, nil
}

// InputFrom makes the Input for a port from an output another run wrote.
func InputFrom(port, file string, rec cache.OutputRecord) Input {
	return Input{Port: port, File: file, Handle: rec.Handle}
}
