// Package engine executes a plan: it starts each stage as soon as its inputs
// are ready (bounded by --jobs and the arena's memory budget), hands grids
// to plugins through sealed shared memory, and collects results, spans and
// failures.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/pipehost/pipehost/host/arena"
	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/pluginmgr"
	"github.com/pipehost/pipehost/host/remote"
	"github.com/pipehost/pipehost/internal/clock"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// Options tune a run.
type Options struct {
	// Jobs bounds how many stages run at once (default: CPU count).
	Jobs int
	// KeepGoing finishes independent branches after a stage fails.
	KeepGoing bool
	// Timeout is the default per-stage timeout when the config sets none.
	Timeout time.Duration
	// Observer sees stage starts, events and ends (run log, progress).
	Observer Observer
	// Prepare, if set, is told of each stage that is going to run (not
	// served from the cache), before it waits for memory, resources and a
	// worker slot: the runner starts the plugins it and its dependants need.
	Prepare func(n *plan.Node)
	// DeferStores makes Run return once every stage is done and every
	// output digested, with cache stores possibly still being written; the
	// caller must call Result.WaitStores before relying on the cache or
	// ending the process. The runner writes the datasets meanwhile.
	DeferStores bool
	// Manager relaunches a plugin that crashed, so later stages of the
	// same binary (with KeepGoing) still run, and starts the extra
	// processes of a pool. Nil: no relaunch, no pool beyond the main
	// process. Launcher, when set, is used instead.
	Manager *pluginmgr.Manager
	// Launcher starts processes like Manager, for any Process
	// implementation.
	Launcher Launcher
	// Cache stores and serves stage outputs by content; nil disables it.
	Cache *cache.Cache
	// Remote is a shared REAPI cache behind Cache (nil: none): a local
	// miss is looked up there, a remote hit is fetched only when a stage
	// that runs needs it, and stored outputs are uploaded in the
	// background. It is used only with Cache.
	Remote *remote.Cache
	// Refresh lists stages to recompute even when cached (their fresh
	// outputs replace the entry).
	Refresh map[string]bool
	// Resources are the capacities of named resources (e.g. "gpu": 1)
	// that stages may declare they need.
	Resources map[string]int
	// RemoteExec runs the stages the plan marks remote on an REAPI
	// executor (nil: every stage runs locally).
	RemoteExec *RemoteExec
	// NoPrefault turns off allocating a stage's outputs and fallocating
	// their pages as soon as its producers are running (done only without
	// a memory budget, whose admission order it would otherwise disturb).
	NoPrefault bool
}

// Observer is told what happens during a run. Calls come from many
// goroutines at once and must not block.
type Observer interface {
	// StageStart: the stage was sent to a plugin process.
	StageStart(n *plan.Node, r *StageResult)
	StageEvent(n *plan.Node, ev *pb.RunEvent)
	StageEnd(n *plan.Node, r *StageResult)
}

// Observers fans events out to several observers.
func Observers(obs ...Observer) Observer { return fanout(obs) }

type fanout []Observer

func (f fanout) StageStart(n *plan.Node, r *StageResult) {
	for _, o := range f {
		o.StageStart(n, r)
	}
}

func (f fanout) StageEvent(n *plan.Node, ev *pb.RunEvent) {
	for _, o := range f {
		o.StageEvent(n, ev)
	}
}

func (f fanout) StageEnd(n *plan.Node, r *StageResult) {
	for _, o := range f {
		o.StageEnd(n, r)
	}
}

// Status of a stage after a run.
type Status string

const (
	StatusOK      Status = "ok"
	StatusFailed  Status = "failed"
	StatusSkipped Status = "skipped"
)

// StageResult is what one stage did.
type StageResult struct {
	Name   string
	Kind   string
	Status Status
	Slot   int
	// StartNs and EndNs are CLOCK_MONOTONIC, host side.
	StartNs, EndNs int64
	Stats          *pb.StageStats
	Metrics        map[string]float64
	Outputs        map[string]*Output
	Err            error
	// Cache is CacheHit, CacheMiss or CacheOff; MissReason says what part
	// of the key changed; Key is the cache key (empty when off).
	Cache      CacheStatus
	MissReason string
	Key        string
	// Note says more about how the stage ended (e.g. an early cutoff).
	Note string
	// Plugin and Pid say which process ran the stage.
	Plugin string
	Pid    int
	// BytesIn and BytesOut are the sizes of the stage's inputs and outputs.
	BytesIn, BytesOut int64
	// Remote is set when the stage ran on the remote executor.
	Remote *RemoteRun

	started     chan struct{} // closed once the stage holds its memory (or ended)
	startedOnce sync.Once
	prefaulted  bool
}

func (r *StageResult) markStarted() {
	if r.started != nil {
		r.startedOnce.Do(func() { close(r.started) })
	}
}

// CacheStatus of a stage.
type CacheStatus string

const (
	CacheHit  CacheStatus = "hit"
	CacheMiss CacheStatus = "miss"
	CacheOff  CacheStatus = "off"
)

// Output is a stage output: a segment in the arena, or, for a cache hit
// nobody has needed yet, only its digest (materialized on first use).
type Output struct {
	Entry  *arena.Entry
	Handle *pb.Handle
	// Digest is the content digest, set once digested is closed (with the
	// cache on); read it through waitDigest while the run goes on.
	Digest cache.Digest
	// Cached outputs are served from the cache; Entry stays nil until a
	// stage that runs needs the bytes.
	Cached bool
	// Remote: the cached bytes are in the remote cache (fetched from there
	// unless the local store has them by then).
	Remote bool

	digested  chan struct{}
	digestErr error
	// known is a digest verified when the bytes arrived (a remote
	// stage's download), so digestOutputs need not hash them again.
	known cache.Digest

	mu sync.Mutex
	// pending holds the consumers of a not-yet-materialized output that
	// have not finished, so materializing it knows who will release it.
	pending map[string]bool
}

func newOutput(ent *arena.Entry, h *pb.Handle) *Output {
	return &Output{Entry: ent, Handle: h, digested: make(chan struct{})}
}

func cachedOutput(h *pb.Handle, d cache.Digest, pending map[string]bool) *Output {
	o := &Output{Handle: h, Digest: d, Cached: true, pending: pending, digested: make(chan struct{})}
	close(o.digested)
	return o
}

// setDigest records the output's digest (or why there is none) once.
func (o *Output) setDigest(d cache.Digest, err error) {
	o.mu.Lock()
	o.Digest, o.digestErr = d, err
	o.mu.Unlock()
	close(o.digested)
}

// waitDigest waits until the output's digest is known.
func (o *Output) waitDigest(ctx context.Context) (cache.Digest, error) {
	// A digest already known is the answer even when ctx has ended: a
	// select over both would pick either at random.
	select {
	case <-o.digested:
	default:
		select {
		case <-o.digested:
		case <-ctx.Done():
			return cache.Digest{}, context.Cause(ctx)
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.Digest, o.digestErr
}

// digestNow returns the digest if it is known already.
func (o *Output) digestNow() (cache.Digest, bool) {
	select {
	case <-o.digested:
		o.mu.Lock()
		defer o.mu.Unlock()
		return o.Digest, o.digestErr == nil
	default:
		return cache.Digest{}, false
	}
}

// Result of a whole run.
type Result struct {
	Stages []*StageResult // plan order
	// StartNs and EndNs bound the engine's work (CLOCK_MONOTONIC): from
	// the first admission to every stage done and every output digested,
	// and, unless Options.DeferStores, every cache store written.
	StartNs, EndNs int64
	// Failed lists failed stages (not skipped ones) in plan order.
	Failed []*StageResult

	stores func()
}

// WaitStores waits until every cache store of the run is written. Run has
// already waited unless Options.DeferStores; the cache is consistent (no
// entry missing its bytes) only once this returns.
func (r *Result) WaitStores() {
	if r.stores != nil {
		r.stores()
	}
}

// Err summarises the failures, or nil.
func (r *Result) Err() error {
	if len(r.Failed) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d stage(s) failed:", len(r.Failed))
	for _, s := range r.Failed {
		fmt.Fprintf(&b, "\n  - %v", s.Err)
	}
	return errors.New(b.String())
}

// Engine runs one plan.
type Engine struct {
	plan     *plan.Plan
	procs    Processes
	launcher Launcher // nil: none
	arena    *arena.Arena
	opts     Options

	tokens *shm.Tokens
	pools  sync.Map // plugin path + kind → *pool, for kinds without concurrent runs

	// Admission: inFlight counts stages holding memory; wake is closed and
	// replaced whenever one finishes (memory may have been released).
	admitMu  sync.Mutex
	inFlight int
	wake     chan struct{}

	pluginMu  sync.Mutex         // guards respawn
	launching sync.Map           // plugin path → *sync.Mutex held while it is (re)started
	respawn   map[string]Process // crashed process's path → replacement

	digests     sync.WaitGroup // background output digests
	stores      sync.WaitGroup // background cache writes
	stageKeys   []stageKey     // by node index: key parts but the inputs
	gridOnce    sync.Once      // grid: the plan's GridDigest
	grid        string
	smallBatch  batcher[*smallStore] // entries of small outputs (cached.go)
	partsBatch  batcher[stagedParts] // key parts for the next run's miss reasons
	storing     atomic.Int64         // cache writes in progress (they hold memory)
	recomputing sync.Map             // *StageResult → *sync.Mutex, one recomputation at a time
	res         *resources
}

// New prepares a run of p using the registry's plugins and the arena.
func New(p *plan.Plan, reg *pluginmgr.Registry, a *arena.Arena, opts Options) *Engine {
	if opts.Launcher == nil && opts.Manager != nil {
		opts.Launcher = ManagerLauncher(opts.Manager)
	}
	return NewWith(p, RegistryProcesses(reg), a, opts)
}

// NewWith prepares a run of p on any processes: procs serves each kind,
// opts.Launcher starts more (opts.Manager is ignored).
func NewWith(p *plan.Plan, procs Processes, a *arena.Arena, opts Options) *Engine {
	if opts.Jobs <= 0 {
		opts.Jobs = runtime.NumCPU()
	}
	if opts.Observer == nil {
		opts.Observer = nopObserver{}
	}
	return &Engine{plan: p, procs: procs, launcher: opts.Launcher, arena: a, opts: opts, tokens: shm.HostTokens(),
		wake: make(chan struct{}), respawn: map[string]Process{}, res: newResources(opts.Resources),
		stageKeys: make([]stageKey, len(p.Nodes))}
}

type nopObserver struct{}

func (nopObserver) StageStart(*plan.Node, *StageResult) {}
func (nopObserver) StageEvent(*plan.Node, *pb.RunEvent) {}
func (nopObserver) StageEnd(*plan.Node, *StageResult)   {}

// Run executes the plan. It returns when every stage has finished, failed or
// been skipped; ctx cancellation stops running stages.
func (e *Engine) Run(ctx context.Context) *Result {
	startNs := clock.Now()
	ctx, cancel := context.WithCancel(ctx)
	// Stores in flight run under ctx: with DeferStores it lives until they
	// are done (Result.WaitStores), not only until Run returns.
	deferred := false
	defer func() {
		if !deferred {
			cancel()
		}
	}()
	nodes := e.plan.Nodes
	results := make([]*StageResult, len(nodes))
	// ready[i] closes when stage i's outputs are sealed (or it ended
	// without them): its consumers start then, while its outputs are still
	// being digested and stored.
	ready := make([]chan struct{}, len(nodes))
	started := make([]chan struct{}, len(nodes))
	for i := range ready {
		ready[i] = make(chan struct{})
		started[i] = make(chan struct{})
	}
	slots := make(chan int, e.opts.Jobs)
	for i := 0; i < e.opts.Jobs; i++ {
		slots <- i
	}
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			publish := sync.OnceFunc(func() { close(ready[i]) })
			defer publish()
			r := &StageResult{Name: n.Name, Kind: n.Kind, Slot: -1, Cache: CacheOff}
			results[i] = r
			r.started = started[i]
			defer r.markStarted()
			defer func() {
				// The record names the outputs' digests: wait for them.
				for _, o := range r.Outputs {
					if o.Entry != nil && e.opts.Cache != nil {
						_, _ = o.waitDigest(context.Background())
					}
				}
				e.opts.Observer.StageEnd(n, r)
			}()
			// Once every producer is under way, allocate and prefault this
			// stage's outputs while they compute: fresh shared pages cost
			// page faults, better paid off the critical path.
			if !e.opts.NoPrefault && len(n.Inputs) > 0 {
				for _, in := range n.Inputs {
					<-started[in.From.Index]
				}
				e.preallocate(n, r)
			}
			// The key but its inputs' digests, while the producers run.
			if len(n.Inputs) > 0 && e.cacheable(n) {
				e.stageParts(n)
			}
			// Wait for every producer, so a stage that will not run can
			// release what the successful ones made for it.
			for _, in := range n.Inputs {
				<-ready[in.From.Index]
			}
			e.runNode(ctx, n, r, results, slots, publish)
			if r.Status == StatusFailed && !e.opts.KeepGoing {
				cancel()
			}
		}()
	}
	wg.Wait()
	// The cache must be consistent when Run returns, even when stopped
	// (with DeferStores, once WaitStores returns).
	e.digests.Wait()
	res := &Result{Stages: results, StartNs: startNs}
	if e.opts.DeferStores {
		deferred = true
		res.stores = sync.OnceFunc(func() {
			e.stores.Wait()
			cancel()
		})
	} else {
		e.stores.Wait()
	}
	res.EndNs = clock.Now()
	for _, r := range results {
		if r.Status == StatusFailed {
			res.Failed = append(res.Failed, r)
		}
	}
	return res
}

// releaseInputs tells the arena a stage is done with its inputs (whether it
// ran or not), once per segment, so segments die with their last reader.
func (e *Engine) releaseInputs(n *plan.Node, results []*StageResult) {
	seen := map[*Output]bool{}
	for _, in := range n.Inputs {
		up := results[in.From.Index]
		if up == nil || up.Status != StatusOK {
			continue
		}
		o := up.Outputs[in.Output.GetName()]
		if o == nil || seen[o] {
			continue
		}
		seen[o] = true
		o.mu.Lock()
		if o.Entry != nil {
			_ = e.arena.Release(o.Entry.ID, n.Name)
		} else {
			delete(o.pending, n.Name)
		}
		o.mu.Unlock()
	}
}

// ErrProcessDied is the cause of a stage whose process ended during it.
var ErrProcessDied = errors.New("the plugin process died during the stage")

// stageError builds a failure report naming the stage, its plugin and how
// the plugin ended, with the plugin's last stderr lines. A call the plugin
// answered keeps its gRPC status (status.Code sees it through the report);
// a call whose transport failed is a crash if the process has ended.
func stageError(n *plan.Node, p Process, err error) error {
	if wait := exitWait(err); wait > 0 && p.WaitExited(wait) {
		err = ErrProcessDied
	}
	var b strings.Builder
	fmt.Fprintf(&b, "stage %s (%s, plugin %s): %v", n.Name, n.Kind, p.Path(), err)
	if p.Exited() {
		fmt.Fprintf(&b, "\n    plugin process ended: %s", p.ExitStatus())
	}
	if lines := p.StderrTail(10); len(lines) > 0 {
		b.WriteString("\n    last stderr lines:\n      ")
		b.WriteString(strings.Join(lines, "\n      "))
	}
	return &reportError{msg: b.String(), err: err}
}

// exitWait is how long to wait for the process to be seen gone after err,
// by what err says about the connection (0: the process answered, so it
// is alive). gRPC's own transport failures have no code of the plugin's.
func exitWait(err error) time.Duration {
	var se *StatusError
	if errors.As(err, &se) {
		switch se.Code() {
		case codes.Unavailable:
			// The connection broke: the process is most likely dying.
			return 2 * time.Second
		case codes.Unknown, codes.Internal:
			// Set by gRPC itself for a stream cut short, as well as by an
			// SDK for its own bug: only the exit state can tell.
			return 250 * time.Millisecond
		}
		return 0
	}
	// The fd channel or the stream failed below gRPC.
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, shm.ErrPeerGone) || errors.Is(err, shm.ErrPeerClosed) {
		return 2 * time.Second
	}
	return 0
}

// reportError is a failure report for the user that keeps its cause for
// errors.Is and errors.As (e.g. *arena.WritableMappingError).
type reportError struct {
	msg string
	err error
}

func (e *reportError) Error() string { return e.msg }
func (e *reportError) Unwrap() error { return e.err }
