package engine

// A fake implementation of the Process seam: "processes" are values in
// this test process that read and write the engine's real memfd segments
// through the fds it sends them, so the engine's scheduling, admission,
// cache and failure handling run for real without plugin executables.

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pipehost/pipehost/host/arena"
	"github.com/pipehost/pipehost/host/config"
	"github.com/pipehost/pipehost/host/plan"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// stageFunc is a fake stage's body. It runs on the "process" that the
// engine chose, may read inputs and write outputs through run, and ends the
// stage with its error (a gRPC status error, as an SDK sends).
type stageFunc func(ctx context.Context, run *fakeRun) error

// fakeSys is a set of fake plugin binaries: it resolves kinds for the
// planner (plan.Registry), serves each kind's main process (Processes) and
// starts more (Launcher), recording what the engine did with them.
type fakeSys struct {
	t     *testing.T
	descs map[string]*pb.StageDescriptor // kind → descriptor
	bins  map[string]string              // kind → binary path
	body  map[string]stageFunc           // kind → body

	mu       sync.Mutex
	main     map[string]*fakeProc // path → the registry's process
	procs    []*fakeProc          // every process ever started
	launches int
	// Concurrency seen: per process, per kind and per resource.
	busyKind map[string]int
	peakKind map[string]int
	ran      map[string]int // stage name → runs
	seen     map[string][]byte
}

func newFakeSys(t *testing.T) *fakeSys {
	s := &fakeSys{t: t, descs: map[string]*pb.StageDescriptor{}, bins: map[string]string{}, body: map[string]stageFunc{},
		main: map[string]*fakeProc{}, busyKind: map[string]int{}, peakKind: map[string]int{}, ran: map[string]int{}, seen: map[string][]byte{}}
	t.Cleanup(s.close)
	return s
}

// port is a float32 grid port, or a blob port for a name "blob:NAME".
func port(name string) *pb.Port {
	if n, ok := strings.CutPrefix(name, "blob:"); ok {
		return &pb.Port{Name: n, Kind: pb.PortKind_PORT_KIND_BLOB}
	}
	return &pb.Port{Name: name, Kind: pb.PortKind_PORT_KIND_GRID, Dtype: pb.DType_DTYPE_F32}
}

// kind declares a stage kind served by binary bin with the named inputs
// and outputs (see port).
func (s *fakeSys) kind(kind, bin string, ins, outs []string, caps *pb.Capabilities, body stageFunc) {
	d := &pb.StageDescriptor{Kind: kind, Version: "1", Capabilities: caps}
	for _, in := range ins {
		d.Inputs = append(d.Inputs, port(in))
	}
	for _, out := range outs {
		d.Outputs = append(d.Outputs, port(out))
	}
	s.descs[kind], s.bins[kind], s.body[kind] = d, bin, body
}

func (s *fakeSys) Lookup(kind string) (*pb.StageDescriptor, bool) {
	d, ok := s.descs[kind]
	return d, ok
}

func (s *fakeSys) Kinds() []string {
	var out []string
	for k := range s.descs {
		out = append(out, k)
	}
	return out
}

// Process serves kind by its binary's main process, started on first use
// (a registry's processes are running before the engine starts).
func (s *fakeSys) Process(kind string) (Process, bool) {
	bin, ok := s.bins[kind]
	if !ok {
		return nil, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.main[bin]
	if p == nil {
		p = s.startLocked(bin)
		s.main[bin] = p
	}
	return p, true
}

func (s *fakeSys) Launch(ctx context.Context, path string) (Process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.launches++
	return s.startLocked(path), nil
}

func (s *fakeSys) startLocked(path string) *fakeProc {
	p := &fakeProc{sys: s, path: path, pid: 1000 + len(s.procs), fds: map[uint64]int{}, adopt: map[uint64]outgoing{}, ended: make(chan struct{})}
	s.procs = append(s.procs, p)
	return p
}

func (s *fakeSys) launched() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.launches
}

func (s *fakeSys) runs(stage string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ran[stage]
}

// close kills every process, as the plugin manager does at the end of a
// session, and checks that none kept a segment fd.
func (s *fakeSys) close() {
	s.mu.Lock()
	procs := append([]*fakeProc(nil), s.procs...)
	s.mu.Unlock()
	for _, p := range procs {
		p.Kill()
		p.bodies.Wait()
		p.mu.Lock()
		if n := len(p.fds) + len(p.adopt); n != 0 {
			s.t.Errorf("fake process %d still holds %d segment fd(s) after it was killed", p.pid, n)
		}
		p.mu.Unlock()
	}
}

// fakeProc is one fake process. Pointers are comparable, as the seam asks.
type fakeProc struct {
	sys  *fakeSys
	path string
	pid  int

	mu     sync.Mutex
	fds    map[uint64]int      // token → the process's copy of a sent segment fd
	adopt  map[uint64]outgoing // token → a segment the process sent the host
	nsent  uint64              // segments sent so far (their tokens)
	exit   string              // how it ended; "" while it runs
	killed bool
	stderr []string
	ended  chan struct{} // closed when it ends
	busy   int           // runs in progress
	bodies sync.WaitGroup
}

func (p *fakeProc) Path() string   { return p.path }
func (p *fakeProc) Pid() int       { return p.pid }
func (p *fakeProc) Digest() string { return "digest-of-" + filepath.Base(p.path) }

// sendSegment keeps a duplicate of fd, as the kernel gives the receiving
// process its own descriptor.
func (p *fakeProc) sendSegment(msg shm.Message, fd int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exit != "" {
		return fmt.Errorf("fd channel: send %v token %#x: %w", msg.Type, msg.Token, unix.EPIPE)
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err
	}
	p.fds[msg.Token] = dup
	return nil
}

// outgoing is a segment fd on its way to the host, with its announcement.
type outgoing struct {
	msg shm.Message
	fd  int
}

// TakeSegment hands over a segment the process sent before its Result.
func (p *fakeProc) TakeSegment(ctx context.Context, token uint64) (shm.Message, int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m, ok := p.adopt[token]
	if !ok {
		return shm.Message{}, -1, fmt.Errorf("fd channel: token %#x never arrived: %w", token, shm.ErrPeerGone)
	}
	delete(p.adopt, token)
	return m.msg, m.fd, nil
}

func (p *fakeProc) Exited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit != ""
}

func (p *fakeProc) WaitExited(d time.Duration) bool {
	select {
	case <-p.ended:
		return true
	case <-time.After(d):
		return false
	}
}

func (p *fakeProc) ExitStatus() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit
}

func (p *fakeProc) StderrTail(n int) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.stderr[max(0, len(p.stderr)-n):]...)
}

func (p *fakeProc) Kill() {
	p.end("signal: killed", true)
}

// end makes the process exit: every fd it held closes with it.
func (p *fakeProc) end(how string, killed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exit != "" {
		return
	}
	p.exit, p.killed = how, killed
	for tok, fd := range p.fds {
		unix.Close(fd)
		delete(p.fds, tok)
	}
	// Segments in flight die with the channel.
	for tok, m := range p.adopt {
		unix.Close(m.fd)
		delete(p.adopt, tok)
	}
	close(p.ended)
}

func (p *fakeProc) wasKilled() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.killed
}

// Run files the segments, then starts the body on its own goroutine, as a
// plugin runs a stage while the host waits on the stream.
func (p *fakeProc) Run(ctx context.Context, req *pb.RunRequest, segs []shm.Outgoing) (RunStream, error) {
	for _, o := range segs {
		if err := p.sendSegment(o.Msg, o.FD); err != nil {
			return nil, err
		}
	}
	p.mu.Lock()
	if p.exit != "" {
		p.mu.Unlock()
		return nil, status.Error(codes.Unavailable, "connection error: desc = \"transport: Error while dialing: dial unix: connect: connection refused\"")
	}
	p.busy++
	if p.busy > 1 && !p.sys.descs[req.GetKind()].GetCapabilities().GetConcurrentRuns() {
		p.sys.t.Errorf("process %d runs two %s stages at once, though the kind does not allow concurrent runs", p.pid, req.GetKind())
	}
	p.mu.Unlock()
	s := p.sys
	s.mu.Lock()
	s.ran[req.GetStage()]++
	s.busyKind[req.GetKind()]++
	s.peakKind[req.GetKind()] = max(s.peakKind[req.GetKind()], s.busyKind[req.GetKind()])
	s.mu.Unlock()

	st := &fakeStream{done: make(chan struct{}), ctx: ctx}
	run := &fakeRun{proc: p, req: req}
	p.bodies.Add(1)
	go func() {
		defer p.bodies.Done()
		err := s.body[req.GetKind()](ctx, run)
		run.closeFDs()
		s.mu.Lock()
		s.busyKind[req.GetKind()]--
		s.mu.Unlock()
		p.mu.Lock()
		p.busy--
		p.mu.Unlock()
		if err == nil {
			st.result = &pb.Result{Stats: &pb.StageStats{}, DynamicOutputs: run.dyn}
		}
		st.err = err
		close(st.done)
	}()
	return st, nil
}

// fakeStream yields the Result (or the body's error) once the body ends.
// Like a gRPC client stream it returns as soon as its context ends.
type fakeStream struct {
	ctx    context.Context
	done   chan struct{}
	result *pb.Result
	err    error
	sent   bool
}

func (st *fakeStream) Recv() (*pb.RunEvent, error) {
	select {
	case <-st.done:
	case <-st.ctx.Done():
		return nil, status.FromContextError(st.ctx.Err()).Err()
	}
	if st.err != nil {
		return nil, st.err
	}
	if st.sent {
		return nil, io.EOF
	}
	st.sent = true
	return &pb.RunEvent{Event: &pb.RunEvent_Result{Result: st.result}}, nil
}

// fakeRun is what a body sees of its stage.
type fakeRun struct {
	proc *fakeProc
	req  *pb.RunRequest
	dyn  []*pb.Binding // dynamic outputs for the Result
}

// fd returns the process's copy of a binding's segment.
func (r *fakeRun) fd(b *pb.Binding) (int, error) {
	r.proc.mu.Lock()
	defer r.proc.mu.Unlock()
	fd, ok := r.proc.fds[b.GetFdToken()]
	if !ok {
		return -1, status.Errorf(codes.InvalidArgument, "port %q: no segment under token %#x", b.GetPort(), b.GetFdToken())
	}
	return fd, nil
}

// input reads an input's bytes.
func (r *fakeRun) input(port string) ([]byte, error) {
	for _, b := range r.req.GetInputs() {
		if b.GetPort() != port {
			continue
		}
		fd, err := r.fd(b)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, b.GetHandle().GetNbytes())
		if _, err := unix.Pread(fd, buf, int64(b.GetHandle().GetOffset())); err != nil {
			return nil, status.Errorf(codes.Internal, "reading %q: %v", port, err)
		}
		return buf, nil
	}
	return nil, status.Errorf(codes.InvalidArgument, "no input %q", port)
}

// fill writes every byte of every output with v (no mapping, so nothing
// stands in the way of the host's seal).
func (r *fakeRun) fill(v byte) error {
	for _, b := range r.req.GetOutputs() {
		fd, err := r.fd(b)
		if err != nil {
			return err
		}
		buf := make([]byte, b.GetHandle().GetNbytes())
		for i := range buf {
			buf[i] = v
		}
		if _, err := unix.Pwrite(fd, buf, int64(b.GetHandle().GetOffset())); err != nil {
			return status.Errorf(codes.Internal, "writing %q: %v", b.GetPort(), err)
		}
	}
	return nil
}

// blob returns data as a dynamic blob output, as an SDK does: a memfd of
// the process's own with its size sealed, sent before the Result.
func (r *fakeRun) blob(port string, data []byte) error {
	seg, err := shm.Create(port, int64(len(data)))
	if err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	defer seg.Close()
	var dup int
	if err := seg.Use(func(fd int) error {
		if _, err := unix.Pwrite(fd, data, 0); err != nil {
			return err
		}
		dup, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		return err
	}); err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	size := uint64(len(data))
	r.proc.mu.Lock()
	r.proc.nsent++
	tok := 1<<62 + r.proc.nsent
	r.proc.adopt[tok] = outgoing{shm.Message{Type: shm.MsgAdopt, Token: tok, Size: size}, dup}
	r.proc.mu.Unlock()
	r.dyn = append(r.dyn, &pb.Binding{Port: port, FdToken: tok, Handle: &pb.Handle{
		SegmentSize: size, Nbytes: size, Format: pb.Format_FORMAT_RAW, Kind: pb.PortKind_PORT_KIND_BLOB,
		Dtype: pb.DType_DTYPE_U8, Shape: []uint64{size}, Strides: []uint64{1},
	}})
	return nil
}

// closeFDs drops the run's segment fds, as an SDK does when a Run ends.
func (r *fakeRun) closeFDs() {
	r.proc.mu.Lock()
	defer r.proc.mu.Unlock()
	for _, b := range append(append([]*pb.Binding(nil), r.req.GetInputs()...), r.req.GetOutputs()...) {
		if fd, ok := r.proc.fds[b.GetFdToken()]; ok {
			unix.Close(fd)
			delete(r.proc.fds, b.GetFdToken())
		}
	}
}

// record keeps what a stage read, for the test to check.
func (r *fakeRun) record(b []byte) {
	s := r.proc.sys
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen[r.req.GetStage()] = b
}

// crash makes the process die mid-stage, as a segfault would: the stream
// breaks with gRPC's transport error.
func (r *fakeRun) crash(lastWords string) error {
	r.proc.mu.Lock()
	r.proc.stderr = append(r.proc.stderr, lastWords)
	r.proc.mu.Unlock()
	r.closeFDs()
	r.proc.end("signal: segmentation fault (core dumped)", false)
	return status.Error(codes.Unavailable, "error reading from server: EOF")
}

// Bodies.

// source fills its outputs with v.
func source(v byte) stageFunc {
	return func(ctx context.Context, run *fakeRun) error { return run.fill(v) }
}

// plusOne writes its input "in" plus one to its outputs.
func plusOne(ctx context.Context, run *fakeRun) error {
	in, err := run.input("in")
	if err != nil {
		return err
	}
	run.record(in)
	return run.fill(in[0] + 1)
}

// sink records its input "in".
func sink(ctx context.Context, run *fakeRun) error {
	in, err := run.input("in")
	if err != nil {
		return err
	}
	run.record(in)
	return nil
}

// blockUntilStopped waits for its context, reporting its start on started.
func blockUntilStopped(started chan<- string) stageFunc {
	return func(ctx context.Context, run *fakeRun) error {
		started <- run.req.GetStage()
		<-ctx.Done()
		return status.FromContextError(ctx.Err()).Err()
	}
}

// Harness.

// pipeline builds a plan from stage tables (TOML, without the [run] and
// [grid] headers) on a 16×8 grid: every grid output is 512 bytes.
func (s *fakeSys) pipeline(stages string) *plan.Plan {
	s.t.Helper()
	return s.pipelineOn(16, 8, stages)
}

// pipelineOn is pipeline on a width×height grid.
func (s *fakeSys) pipelineOn(width, height int, stages string) *plan.Plan {
	s.t.Helper()
	src := fmt.Sprintf("[run]\nid = \"fake\"\nseed = 7\n\n[grid]\ntopology = \"sphere\"\nwidth = %d\nheight = %d\nlevels = 1\n\n", width, height) + stages
	cfg, err := config.Parse("pipeline.toml", []byte(src))
	if err != nil {
		s.t.Fatalf("config: %v", err)
	}
	p, err := plan.Build(cfg, s)
	if err != nil {
		s.t.Fatalf("plan: %v", err)
	}
	return p
}

const outBytes = 16 * 8 * 4

// run runs p to the end, failing the test if the engine does not return
// within a minute (a hang is a bug, never a result).
func (s *fakeSys) run(ctx context.Context, p *plan.Plan, a *arena.Arena, opts Options) *Result {
	s.t.Helper()
	opts.Launcher = s
	done := make(chan *Result, 1)
	go func() { done <- NewWith(p, s, a, opts).Run(ctx) }()
	select {
	case res := <-done:
		return res
	case <-time.After(time.Minute):
		s.t.Fatal("the engine did not return within a minute")
		return nil
	}
}

// result returns the named stage's result.
func result(t *testing.T, res *Result, name string) *StageResult {
	t.Helper()
	for _, r := range res.Stages {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no result for stage %s", name)
	return nil
}

// memfds counts this process's open memfds: every segment is one.
func memfds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.HasPrefix(l, "/memfd:") {
			n++
		}
	}
	return n
}

// checkReleased checks the arena holds no segment once a run is over and,
// after the processes are gone, that no memfd is left open.
func checkReleased(t *testing.T, s *fakeSys, a *arena.Arena, before int) {
	t.Helper()
	if live, bytes := a.Live(); live != 0 {
		t.Errorf("%d segment(s) (%d bytes) still live in the arena after the run", live, bytes)
	}
	s.close()
	a.Close()
	if n := memfds(t); n > before {
		t.Errorf("%d memfd(s) left open after the run (was %d)", n, before)
	}
}
