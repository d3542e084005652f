package sdk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pipehost/pipehost/internal/clock"
	"github.com/pipehost/pipehost/internal/procstat"
	"github.com/pipehost/pipehost/internal/wire"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// Version is the Go SDK's version, reported in Describe.
const Version = "0.1.0"

// Serve runs the plugin until the host stops it. It never returns: the
// process exits when the host shuts it down or goes away.
func Serve(stages ...Stage) { ServeWith(nil, stages...) }

// ServeWith is Serve for a plugin that also offers gRPC services of its
// own: each entry of extra is served on the same connection under its
// go-plugin name, which a host dispenses with pluginmgr's Plugin.Dispense.
func ServeWith(extra plugin.PluginSet, stages ...Stage) {
	srv, err := newServer(stages)
	if err == nil {
		if _, clash := extra[wire.PluginName]; clash {
			err = fmt.Errorf("extra plugin name %q is the stage service's own", wire.PluginName)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pipehost plugin:", err)
		os.Exit(1)
	}
	plugins := wire.PluginSet(srv)
	for name, p := range extra {
		plugins[name] = p
	}
	logger := hclog.New(&hclog.LoggerOptions{
		Name: "plugin", Level: hclog.Info, JSONFormat: true, Output: os.Stderr,
	})
	if os.Getenv(wire.Handshake.MagicCookieKey) == wire.Handshake.MagicCookieValue {
		// Started by a host: the data plane must be there too.
		dp, err := openDataPlane()
		if err != nil {
			fmt.Fprintln(os.Stderr, "pipehost plugin:", err)
			os.Exit(1)
		}
		srv.data = dp
		dp.mb.Route(srv.route)
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: wire.Handshake,
		Plugins:         plugins,
		GRPCServer:      wire.ServerOptions,
		Logger:          logger,
	})
	os.Exit(0)
}

type server struct {
	pb.UnimplementedStageServer
	stages map[string]Stage
	order  []Stage
	data   *dataPlane
	runs   channelRuns
	active atomic.Int32
	// overlap is set while more than one Run is active, so each of them can
	// say its peak RSS covers another stage too.
	overlapMu sync.Mutex
}

func newServer(stages []Stage) (*server, error) {
	s := &server{stages: map[string]Stage{}}
	if len(stages) == 0 {
		return nil, fmt.Errorf("Serve was called with no stages")
	}
	for _, st := range stages {
		if st.desc == nil {
			return nil, fmt.Errorf("a stage was not built with sdk.Define")
		}
		if _, dup := s.stages[st.desc.Kind]; dup {
			return nil, fmt.Errorf("stage kind %q is registered twice (kinds: %s)", st.desc.Kind, kindList(stages))
		}
		s.stages[st.desc.Kind] = st
		s.order = append(s.order, st)
	}
	return s, nil
}

// restoreStdio points os.Stdout and os.Stderr at the process's real stderr
// once the handshake is done. go-plugin forwards them over an asynchronous
// gRPC stream that loses the last lines when a process dies; the real
// stderr is a pipe the host reads to the end, so a crash report always has
// the stage's last words. Stdout after the handshake is discarded by the
// host, so it goes to stderr too (fd 1 included, for code that writes it
// directly).
var restoreStdio = sync.OnceFunc(func() {
	_ = unix.Dup2(2, 1)
	os.Stderr = os.NewFile(2, "/dev/stderr")
	os.Stdout = os.Stderr
})

func (s *server) Describe(_ context.Context, req *pb.DescribeRequest) (*pb.DescribeResponse, error) {
	restoreStdio()
	resp := &pb.DescribeResponse{Sdk: "go", SdkVersion: Version, ProtocolRevision: wire.ProtocolRevision,
		ChannelRuns: s.data != nil}
	for _, st := range s.order {
		resp.Stages = append(resp.Stages, st.desc)
	}
	return resp, nil
}

func (s *server) Run(req *pb.RunRequest, stream pb.Stage_RunServer) error {
	restoreStdio()
	st, ok := s.stages[req.GetKind()]
	if !ok {
		return status.Errorf(codes.NotFound, "this plugin has no stage kind %q", req.GetKind())
	}
	var sendMu sync.Mutex
	send := func(ev *pb.RunEvent) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(ev)
	}
	bind := func(ctx context.Context) (*runData, error) { return s.data.bind(ctx, req) }
	if err := s.runStage(stream.Context(), st, req, send, bind); err != nil {
		if err.wire {
			return err.err // the stream itself failed: pass gRPC's error on
		}
		return status.Errorf(err.code, "%s", err.Error())
	}
	return nil
}

// stageError is a Run's failure with the gRPC code the host sees.
type stageError struct {
	code codes.Code
	err  error
	msg  string // what the host is told, when not err's text
	wire bool   // err came from sending the Result
}

func (e *stageError) Error() string {
	if e.msg != "" {
		return e.msg
	}
	return e.err.Error()
}
func (e *stageError) Unwrap() error { return e.err }

// runStage decodes the params, binds the buffers, runs the stage, unmaps its
// writable views and sends the Result: everything a Run does between the
// wire and the stage function, shared by the plugin server and the
// in-process harness (package sdktest) so a unit test sees what the host
// would.
func (s *server) runStage(ctx context.Context, st Stage, req *pb.RunRequest, send func(*pb.RunEvent) error,
	bind func(context.Context) (*runData, error)) *stageError {
	params, err := st.decode(req.GetParams())
	if err != nil {
		return &stageError{code: codes.InvalidArgument, err: fmt.Errorf("stage %s (%s): %w", req.GetStage(), req.GetKind(), err)}
	}
	c := &Context{Context: ctx, req: req, desc: st.desc, send: send}
	data, err := bind(ctx)
	if err != nil {
		return &stageError{code: codes.InvalidArgument, err: fmt.Errorf("stage %s (%s): %w", req.GetStage(), req.GetKind(), err)}
	}
	c.data = data
	defer data.release()

	shared := s.enter()
	endMarker := c.beginStageMarker()
	var cpu0 unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &cpu0)
	rssBefore := procstat.RSS() // after cpu0: PeakSince relies on the order
	start := clock.Now()
	runErr := safeRun(st, c, params)
	end := clock.Now()
	endMarker()
	var cpu1 unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &cpu1)
	peak := procstat.PeakSince(cpu0.Maxrss, rssBefore, cpu1.Maxrss)
	// After the Result, not before: the host waits for this Run to end.
	defer releaseMemory(rssBefore, peak)
	shared = s.leave() || shared

	if runErr != nil {
		st := status.Convert(stageStatus(runErr))
		return &stageError{code: st.Code(), err: runErr, msg: st.Message()}
	}
	dyn, err := data.finish()
	if err != nil {
		return &stageError{code: codes.FailedPrecondition, err: fmt.Errorf("stage %s (%s): %w", req.GetStage(), req.GetKind(), err)}
	}
	// Everything this Run held is let go before the Result, so the Run's
	// end follows the Result at once and both usually leave in one write:
	// the host then wakes once, not twice.
	data.release()
	c.metricsMu.Lock()
	metrics := c.metrics
	c.metricsMu.Unlock()
	err = c.send(&pb.RunEvent{Event: &pb.RunEvent_Result{Result: &pb.Result{
		DynamicOutputs: dyn,
		Metrics:        metrics,
		Stats: &pb.StageStats{
			PeakRssBytes: peak, PeakShared: shared, StartNs: start, EndNs: end,
			CpuNs: uint64(cpuNs(cpu1) - cpuNs(cpu0)),
		},
	}}})
	if err != nil {
		return &stageError{code: status.Code(err), err: err, wire: true}
	}
	return nil
}

// enter marks a Run active; the first one resets the process's peak RSS so
// VmHWM afterwards is this stage's peak. It reports whether another Run was
// already active.
func (s *server) enter() bool {
	s.overlapMu.Lock()
	defer s.overlapMu.Unlock()
	if s.active.Add(1) == 1 {
		releasing.Wait()
		procstat.ResetPeak()
		return false
	}
	return true
}

func (s *server) leave() bool {
	s.overlapMu.Lock()
	defer s.overlapMu.Unlock()
	return s.active.Add(-1) > 0
}

// stageStatus is the status a failed stage ends its Run with. A status
// the stage chose itself (status.Error, e.g. InvalidArgument for params
// that do not go together) is kept; a stage stopped by its context says
// Canceled or DeadlineExceeded; any other failure is Aborted: the stage's
// own failure, a code gRPC's transport never produces, so the host can tell
// it from a broken connection (Unavailable) or an SDK fault (Internal).
func stageStatus(err error) error {
	s, ok := status.FromError(err)
	if ok && s.Code() != codes.Unknown {
		return s.Err()
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, s.Message())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, s.Message())
	}
	return status.Error(codes.Aborted, s.Message())
}

// safeRun turns a panic in the stage's own goroutine into a stage error; the
// stack goes to stderr, which the host keeps for its failure report.
func safeRun(st Stage, c *Context, params reflect.Value) (err error) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "panic in stage %s (%s): %v\n%s", c.Stage(), c.Kind(), r, debug.Stack())
			err = fmt.Errorf("stage panicked: %v", r)
		}
	}()
	return st.run(c, params)
}

func cpuNs(r unix.Rusage) int64 {
	return r.Utime.Nano() + r.Stime.Nano()
}

// releaseMemory returns the heap a stage grew by to the OS when that was a
// lot: Go otherwise keeps it resident for minutes, and the next stage's
// peak RSS (and the machine) would carry this one's garbage.
// It runs on its own goroutine: a full collection and scavenge take tens of
// milliseconds, which the next stage of the pipeline need not wait for. The
// next Run in this process waits for it (enter) before it resets the peak,
// so its own peak never carries this one's garbage.
func releaseMemory(before, peak uint64) {
	if peak > before+64<<20 {
		releasing.Add(1)
		go func() {
			defer releasing.Done()
			debug.FreeOSMemory()
		}()
	}
}

// releasing counts releaseMemory calls still returning memory.
var releasing sync.WaitGroup
