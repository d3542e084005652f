package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/config"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/remote"
	"github.com/pipehost/pipehost/host/remote/stagerun"
	"github.com/pipehost/pipehost/internal/clock"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// RemoteExec runs the stages the plan chose for remote execution as REAPI
// actions. The action's command is pipehost-stage (host/remote/stagerun):
// it travels in the input root with the plugin binary, the stage
// description and one file per input, starts the plugin on the worker and
// writes the outputs as files. Their bytes come back through the CAS,
// verified against their digests, into write-sealed segments of this run's
// arena, so local consumers, the cache and the datasets see them exactly
// as a local stage's outputs.
type RemoteExec struct {
	// Target is the executor's endpoint, grpc://HOST:PORT.
	Target string
	// Client is the connection to it; nil when it could not be reached
	// when the run started (then, with fallback "local", every remote
	// stage runs locally).
	Client *remote.Client
	// Runner is pipehost-stage on this machine.
	Runner string
	// Fallback is config.FallbackError or config.FallbackLocal.
	Fallback string
	// Warn receives the one warning an executor lost mid-run costs.
	Warn func(string)

	down     atomic.Bool
	warnOnce sync.Once
}

// NewRemoteExec prepares remote execution on c (nil: the executor at target
// could not be reached).
func NewRemoteExec(target string, c *remote.Client, runner, fallback string, warn func(string)) *RemoteExec {
	x := &RemoteExec{Target: target, Client: c, Runner: runner, Fallback: fallback, Warn: warn}
	if c == nil {
		x.down.Store(true)
	}
	return x
}

// Close ends the connection to the executor.
func (x *RemoteExec) Close() error {
	if x.Client == nil {
		return nil
	}
	return x.Client.Close()
}

// RemoteRun says how a stage ran on the executor.
type RemoteRun struct {
	Executor string
	// Action is the REAPI action's digest, "hash/size".
	Action string
	// UploadNs covers hashing and uploading what the worker lacks; ExecNs
	// the Execute call (queueing, input fetch, the run, output upload);
	// DownloadNs fetching and verifying the outputs.
	UploadNs, ExecNs, DownloadNs int64
	// Worker is the worker's name as the server reports it.
	Worker string
}

// remoteOutputDir is where the runner writes the outputs in the action's
// working directory.
const remoteOutputDir = "out"

// runRemote runs n on the executor when the plan says so. It reports false
// when the stage is to run locally: it is not a remote stage, or the
// executor cannot be reached and the fallback policy allows it.
func (e *Engine) runRemote(ctx context.Context, n *plan.Node, r *StageResult, results []*StageResult) bool {
	x := e.opts.RemoteExec
	if !n.Remote || x == nil {
		return false
	}
	if x.down.Load() {
		r.Note = fmt.Sprintf("ran locally: the remote executor %s is unavailable (remote.fallback = %q)", x.Target, x.Fallback)
		return false
	}
	r.StartNs = clock.Now()
	proc, ok := e.procs.Process(n.Kind)
	if !ok {
		e.freeOutputs(r)
		r.Status, r.EndNs = StatusFailed, clock.Now()
		r.Err = fmt.Errorf("stage %s (%s): no plugin offers kind %q", n.Name, n.Kind, n.Kind)
		return true
	}
	r.Plugin = proc.Path()
	r.Remote = &RemoteRun{Executor: x.Target}
	for _, in := range n.Inputs {
		if o := results[in.From.Index].Outputs[in.Output.GetName()]; o != nil && o.Entry != nil {
			r.BytesIn += o.Entry.Size
		}
	}
	e.opts.Observer.StageStart(n, r)
	ar, err := e.execRemote(ctx, x, n, r, results, proc.Path(), proc.Digest())
	var res *stagerun.Result
	if err == nil {
		// Past this point the outputs are being written: a failure fails
		// the stage, it does not fall back to a local run.
		t := clock.Now()
		res, err = e.fetchOutputs(ctx, x, n, r, ar)
		r.Remote.DownloadNs = clock.Now() - t
		if err != nil {
			err = fmt.Errorf("action %s: reading its outputs: %v", shortHash(r.Remote.Action), err)
		}
	}
	if err != nil {
		if errors.Is(err, remote.ErrUnavailable) && ctx.Err() == nil && x.Fallback == config.FallbackLocal {
			x.down.Store(true)
			x.warnOnce.Do(func() {
				if x.Warn != nil {
					x.Warn(fmt.Sprintf("remote executor %s became unavailable (%v): remote stages run locally from now on (remote.fallback = \"local\")", x.Target, err))
				}
			})
			r.Remote, r.BytesIn = nil, 0
			r.Note = fmt.Sprintf("ran locally: the remote executor %s is unavailable (remote.fallback = %q)", x.Target, x.Fallback)
			return false
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("stopped: %v", context.Cause(ctx))
		}
		e.freeOutputs(r)
		r.Status, r.EndNs = StatusFailed, clock.Now()
		r.Err = &reportError{msg: fmt.Sprintf("stage %s (%s, remote executor %s): %v", n.Name, n.Kind, x.Target, err), err: err}
		return true
	}
	r.Metrics = res.Metrics
	for _, o := range r.Outputs {
		r.BytesOut += o.Entry.Size
	}
	r.Status = StatusOK
	r.EndNs = clock.Now()
	// The stage's time as the summary shows it: the whole remote round trip.
	r.Stats = &pb.StageStats{StartNs: r.StartNs, EndNs: r.EndNs}
	return true
}

// execRemote uploads the stage's action and executes it.
func (e *Engine) execRemote(ctx context.Context, x *RemoteExec, n *plan.Node, r *StageResult, results []*StageResult, pluginPath, pluginDigest string) (*repb.ActionResult, error) {
	t0 := clock.Now()
	var files []remote.File
	var open []io.Closer
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	addFile := func(rel, path, known string) error {
		f, d, err := fileBlob(path, known)
		if err != nil {
			return err
		}
		open = append(open, f)
		files = append(files, remote.File{Path: rel, Blob: remote.Blob{Digest: d, Src: f}, Executable: true})
		return nil
	}
	if err := addFile("pipehost-stage", x.Runner, ""); err != nil {
		return nil, fmt.Errorf("the stage runner: %w", err)
	}
	pluginRel := "plugins/" + filepath.Base(pluginPath)
	// The plugin's digest is the one the plugin catalog remembers.
	if err := addFile(pluginRel, pluginPath, pluginDigest); err != nil {
		return nil, fmt.Errorf("plugin binary: %w", err)
	}
	var inputs []stagerun.Input
	for _, in := range n.Inputs {
		port := in.Input.GetName()
		o := results[in.From.Index].Outputs[in.Output.GetName()]
		if o == nil || o.Entry == nil {
			return nil, fmt.Errorf("input %q: %s produced no %q", port, in.From.Name, in.Output.GetName())
		}
		d, err := e.contentDigest(ctx, o)
		if err != nil {
			return nil, fmt.Errorf("input %q: %w", port, err)
		}
		rel := "inputs/" + port
		files = append(files, remote.File{Path: rel, Blob: remote.Blob{Digest: d, Src: remote.SegmentReader(o.Entry.Segment)}})
		inputs = append(inputs, stagerun.Input{Port: port, File: rel, Handle: cache.EncodeHandle(o.Handle)})
	}
	spec, err := stagerun.NewSpec(pluginRel, e.plan, n, inputs)
	if err != nil {
		return nil, err
	}
	specBytes, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	files = append(files, remote.File{Path: stagerun.SpecFile, Blob: remote.BytesBlob(specBytes)})
	outPaths := []string{remoteOutputDir + "/" + stagerun.ResultFile}
	for _, op := range n.Desc.GetOutputs() {
		outPaths = append(outPaths, remoteOutputDir+"/"+op.GetName())
	}
	args := []string{"./pipehost-stage"}
	timeout := e.stageTimeout(n)
	var actionTimeout time.Duration
	if timeout > 0 {
		args = append(args, "-timeout", timeout.String())
		// Room for the worker to start the plugin and copy the files.
		actionTimeout = timeout + time.Minute
	}
	args = append(args, stagerun.SpecFile, remoteOutputDir)
	action := remote.ActionSpec{
		Args:        args,
		Env:         map[string]string{"PATH": "/usr/local/bin:/usr/bin:/bin"},
		Inputs:      files,
		OutputPaths: outPaths,
		Platform:    n.Platform,
		Timeout:     actionTimeout,
		// pipehost's own cache decides what is reused; a stage that opted
		// out of it is not cached by the server either.
		DoNotCache: !e.cacheable(n),
	}
	rr := r.Remote
	t1 := clock.Now()
	run, err := x.Client.RunAction(ctx, action, func(attempt int, err error) {
		// The executor could not run the command (a worker failed to fetch
		// an input, went away...): said in the run log, and tried again.
		e.opts.Observer.StageEvent(n, logEvent(fmt.Sprintf("remote executor %s could not run the stage (attempt %d of %d), trying again: %v",
			x.Target, attempt, remote.Attempts, err)))
	})
	rr.UploadNs = t1 - t0 + run.Upload.Nanoseconds()
	rr.ExecNs = run.Exec.Nanoseconds()
	if run.Action.Hash != "" {
		rr.Action = fmt.Sprintf("%s/%d", run.Action.Hash, run.Action.Size)
	}
	rr.Worker = run.Result.GetExecutionMetadata().GetWorker()
	if err != nil {
		return nil, fmt.Errorf("%w%s", err, x.stderrTail(ctx, run.Result))
	}
	return run.Result, nil
}

// fetchOutputs reads the runner's outputs.json, checks it against the
// action result and the stage's descriptor, and brings every output into
// the arena: a grid output is written into the segment admission
// pre-allocated for it, a table or blob output into a new one it adopts.
// Each is checked against its digest while it arrives and write-sealed,
// as a local stage's outputs are at its Result.
func (e *Engine) fetchOutputs(ctx context.Context, x *RemoteExec, n *plan.Node, r *StageResult, ar *repb.ActionResult) (*stagerun.Result, error) {
	d, ok := remote.OutputFile(ar, remoteOutputDir+"/"+stagerun.ResultFile)
	if !ok {
		return nil, fmt.Errorf("the action result has no %s", stagerun.ResultFile)
	}
	b, err := x.Client.ReadBytes(ctx, d)
	if err != nil {
		return nil, err
	}
	var res stagerun.Result
	if err := json.Unmarshal(b, &res); err != nil {
		return nil, fmt.Errorf("%s: %w", stagerun.ResultFile, err)
	}
	if res.Stage != n.Name || res.Kind != n.Kind {
		return nil, fmt.Errorf("%s is for stage %s (%s)", stagerun.ResultFile, res.Stage, res.Kind)
	}
	recs := map[string]stagerun.Output{}
	for _, o := range res.Outputs {
		recs[o.Port] = o
	}
	if r.Outputs == nil {
		r.Outputs = map[string]*Output{}
	}
	for _, op := range n.Desc.GetOutputs() {
		port := op.GetName()
		rec, ok := recs[port]
		if !ok {
			return nil, fmt.Errorf("the stage returned no %q output", port)
		}
		if got, ok := remote.OutputFile(ar, remoteOutputDir+"/"+rec.File); !ok || got != rec.Digest {
			return nil, fmt.Errorf("output %q: the action result's file does not match %s", port, stagerun.ResultFile)
		}
		h, err := rec.HandleOf()
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", port, err)
		}
		if o := r.Outputs[port]; o != nil {
			err = e.fillRemote(ctx, x, o, op, rec.Digest, h)
		} else if op.GetKind() == pb.PortKind_PORT_KIND_GRID {
			err = errors.New("no segment was allocated for it")
		} else {
			err = e.adoptRemote(ctx, x, n, r, port, op, rec.Digest, h)
		}
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", port, err)
		}
	}
	return &res, nil
}

// fillRemote writes a grid output into its pre-allocated segment and seals
// it. The worker's handle must describe exactly that segment.
func (e *Engine) fillRemote(ctx context.Context, x *RemoteExec, o *Output, op *pb.Port, d cache.Digest, h *pb.Handle) error {
	want := o.Handle
	if h.GetDtype() != want.GetDtype() || fmt.Sprint(h.GetShape()) != fmt.Sprint(want.GetShape()) ||
		fmt.Sprint(h.GetStrides()) != fmt.Sprint(want.GetStrides()) || h.GetNbytes() != want.GetNbytes() || h.GetOffset() != want.GetOffset() {
		return fmt.Errorf("the worker returned a %v grid of shape %v, strides %v (%d bytes at %d), want %v %v, strides %v (%d bytes at %d)",
			h.GetDtype(), h.GetShape(), h.GetStrides(), h.GetNbytes(), h.GetOffset(), want.GetDtype(), want.GetShape(), want.GetStrides(), want.GetNbytes(), want.GetOffset())
	}
	if err := x.Client.DownloadTo(ctx, d, o.Entry.Segment); err != nil {
		return err
	}
	if err := e.arena.Seal(o.Entry.ID); err != nil {
		return err
	}
	o.known = d // checked on download: no need to hash it again
	return nil
}

// adoptRemote downloads a table or blob output into a new write-sealed
// segment and hands it to the arena, as the engine adopts a plugin's
// dynamic output.
func (e *Engine) adoptRemote(ctx context.Context, x *RemoteExec, n *plan.Node, r *StageResult, port string, op *pb.Port, d cache.Digest, h *pb.Handle) error {
	if op.GetKind() == pb.PortKind_PORT_KIND_TABLE && h.GetFormat() != pb.Format_FORMAT_ARROW_IPC {
		return fmt.Errorf("protocol violation: table output %q is not in Arrow IPC format", port)
	}
	seg, err := x.Client.Download(ctx, d, n.Name+"."+port)
	if err != nil {
		return err
	}
	defer seg.Close()
	var fd int
	if err := seg.Use(func(f int) error {
		var err error
		fd, err = unix.FcntlInt(uintptr(f), unix.F_DUPFD_CLOEXEC, 0)
		return err
	}); err != nil {
		return err
	}
	ent, err := e.arena.Adopt(fd, n.Name, e.claimants(n, port), e.keep(n, port))
	if err != nil {
		unix.Close(fd)
		return err
	}
	o := newOutput(ent, nil)
	r.Outputs[port] = o // freed with the others if a later output fails
	if err := e.arena.Seal(ent.ID); err != nil {
		return err
	}
	h.SegmentId = ent.ID
	if err := shm.Validate(h, uint64(ent.Size)); err != nil {
		return err
	}
	o.Handle, o.known = h, d
	return nil
}

// shortHash is an action digest ("hash/size") cut to 12 hex digits.
func shortHash(a string) string {
	if len(a) > 12 {
		return a[:12]
	}
	return a
}

// contentDigest is an input segment's digest: the one the cache computes
// when it is on, else computed here.
func (e *Engine) contentDigest(ctx context.Context, o *Output) (cache.Digest, error) {
	if e.opts.Cache != nil {
		return o.waitDigest(ctx)
	}
	if !o.known.IsZero() {
		return o.known, nil
	}
	var d cache.Digest
	var err error
	runYielding(digestPool, func() { d, err = cache.SegmentDigest(o.Entry.Segment) })
	return d, err
}

// stageTimeout is the stage's timeout: its own, the config's, the run's.
func (e *Engine) stageTimeout(n *plan.Node) time.Duration {
	if n.Config.Timeout > 0 {
		return n.Config.Timeout
	}
	if e.plan.Config.Timeout > 0 {
		return e.plan.Config.Timeout
	}
	return e.opts.Timeout
}

// fileDigests remembers the digests of the files remote actions ship, by
// path, size and modification time, so each is hashed once a process.
var fileDigests sync.Map // fileStamp → cache.Digest

type fileStamp struct {
	path  string
	size  int64
	mtime time.Time
}

// fileBlob opens a file for upload with its digest: known (a SHA-256 in
// hex computed elsewhere) or hashed here, once a process. A file changed
// under a stale digest is refused by the server, which checks every blob.
func fileBlob(path, known string) (*os.File, cache.Digest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, cache.Digest{}, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, cache.Digest{}, err
	}
	if known != "" {
		return f, cache.Digest{Hash: known, Size: st.Size()}, nil
	}
	stamp := fileStamp{path, st.Size(), st.ModTime()}
	if d, ok := fileDigests.Load(stamp); ok {
		return f, d.(cache.Digest), nil
	}
	h := sha256.New()
	n, err := io.Copy(h, io.NewSectionReader(f, 0, st.Size()))
	if err != nil {
		f.Close()
		return nil, cache.Digest{}, fmt.Errorf("%s: %w", path, err)
	}
	d := cache.Digest{Hash: hex.EncodeToString(h.Sum(nil)), Size: n}
	fileDigests.Store(stamp, d)
	return f, d, nil
}

// stderrTail is the last lines the failed action wrote to stderr, for the
// failure report.
func (x *RemoteExec) stderrTail(ctx context.Context, ar *repb.ActionResult) string {
	b := ar.GetStderrRaw()
	if len(b) == 0 && ar.GetStderrDigest() != nil {
		d := ar.GetStderrDigest()
		if d.GetSizeBytes() > 1<<20 {
			return ""
		}
		b, _ = x.Client.ReadBytes(ctx, cache.Digest{Hash: d.GetHash(), Size: d.GetSizeBytes()})
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) == 0 || lines[0] == "" {
		return ""
	}
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return "\n    last stderr lines on the worker:\n      " + strings.Join(lines, "\n      ")
}
