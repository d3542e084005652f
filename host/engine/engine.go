// Package engine executes a plan: it starts each stage as soon as its inputs
// are ready (bounded by --jobs and the arena's memory budget), hands grids
// to plugins through sealed shared memory, and collects results, spans and
// failures.
package engine

import (
	"context"
	"errors"
	"fmt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pipehost/pipehost/host/arena"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/pluginmgr"
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
	// Manager relaunches a plugin that crashed, so later stages of the
	// same binary (with KeepGoing) still run. Nil: no relaunch.
	Manager *pluginmgr.Manager
}

// Observer is told what happens during a run. Calls come from many
// goroutines at once and must not block.
type Observer interface {
	StageStart(n *plan.Node, slot int)
	StageEvent(n *plan.Node, ev *pb.RunEvent)
	StageEnd(n *plan.Node, r *StageResult)
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
}

// Output is a stage output living in the arena.
type Output struct {
	Entry  *arena.Entry
	Handle *pb.Handle
}

// Result of a whole run.
type Result struct {
	Stages []*StageResult // plan order
	// Failed lists failed stages (not skipped ones) in plan order.
	Failed []*StageResult
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
	plan  *plan.Plan
	reg   *pluginmgr.Registry
	arena *arena.Arena
	opts  Options

	tokens *shm.Tokens
	locks  sync.Map // plugin path + kind → *sync.Mutex for non-concurrent kinds

	// Admission: inFlight counts stages holding memory; wake is closed and
	// replaced whenever one finishes (memory may have been released).
	admitMu  sync.Mutex
	inFlight int
	wake     chan struct{}

	pluginMu sync.Mutex
	respawn  map[string]*pluginmgr.Plugin // crashed plugin path → replacement
}

// New prepares a run of p using the registry's plugins and the arena.
func New(p *plan.Plan, reg *pluginmgr.Registry, a *arena.Arena, opts Options) *Engine {
	if opts.Jobs <= 0 {
		opts.Jobs = runtime.NumCPU()
	}
	if opts.Observer == nil {
		opts.Observer = nopObserver{}
	}
	return &Engine{plan: p, reg: reg, arena: a, opts: opts, tokens: shm.HostTokens(),
		wake: make(chan struct{}), respawn: map[string]*pluginmgr.Plugin{}}
}

type nopObserver struct{}

func (nopObserver) StageStart(*plan.Node, int)          {}
func (nopObserver) StageEvent(*plan.Node, *pb.RunEvent) {}
func (nopObserver) StageEnd(*plan.Node, *StageResult)   {}

// Run executes the plan. It returns when every stage has finished, failed or
// been skipped; ctx cancellation stops running stages.
func (e *Engine) Run(ctx context.Context) *Result {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	nodes := e.plan.Nodes
	results := make([]*StageResult, len(nodes))
	done := make([]chan struct{}, len(nodes))
	for i := range done {
		done[i] = make(chan struct{})
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
			defer close(done[i])
			r := &StageResult{Name: n.Name, Kind: n.Kind, Slot: -1}
			results[i] = r
			defer func() { e.opts.Observer.StageEnd(n, r) }()
			// Wait for every producer, so a stage that will not run can
			// release what the successful ones made for it.
			for _, in := range n.Inputs {
				<-done[in.From.Index]
			}
			skip := func(err error) {
				r.Status, r.Err = StatusSkipped, err
				e.releaseInputs(n, results)
			}
			for _, in := range n.Inputs {
				if up := results[in.From.Index]; up.Status != StatusOK {
					skip(fmt.Errorf("stage %s skipped: input %q comes from %s, which %s", n.Name, in.Input.GetName(), up.Name, up.Status))
					return
				}
			}
			if ctx.Err() != nil {
				skip(fmt.Errorf("stage %s skipped: the run was stopped (%v)", n.Name, context.Cause(ctx)))
				return
			}
			// Memory first, then a worker slot: a stage holding a slot while
			// it waits for memory could starve the stages that free it.
			if err := e.admit(ctx, n, r); err != nil {
				if ctx.Err() != nil {
					skip(fmt.Errorf("stage %s skipped: the run was stopped (%v)", n.Name, context.Cause(ctx)))
				} else {
					r.Status, r.Err = StatusFailed, fmt.Errorf("stage %s (%s): %w", n.Name, n.Kind, err)
					e.releaseInputs(n, results)
					if !e.opts.KeepGoing {
						cancel()
					}
				}
				return
			}
			defer e.finished()
			var slot int
			select {
			case slot = <-slots:
			case <-ctx.Done():
				e.freeOutputs(r)
				skip(fmt.Errorf("stage %s skipped: the run was stopped (%v)", n.Name, context.Cause(ctx)))
				return
			}
			r.Slot = slot
			e.runStage(ctx, n, r, results)
			slots <- slot
			if r.Status == StatusFailed && !e.opts.KeepGoing {
				cancel()
			}
		}()
	}
	wg.Wait()
	res := &Result{Stages: results}
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
	seen := map[uint64]bool{}
	for _, in := range n.Inputs {
		up := results[in.From.Index]
		if up == nil || up.Status != StatusOK {
			continue
		}
		if o := up.Outputs[in.Output.GetName()]; o != nil && !seen[o.Entry.ID] {
			seen[o.Entry.ID] = true
			_ = e.arena.Release(o.Entry.ID, n.Name)
		}
	}
}

// stageError builds a failure report naming the stage, its plugin and how
// the plugin ended, with the plugin's last stderr lines.
func stageError(n *plan.Node, p *pluginmgr.Plugin, err error) error {
	s, ok := status.FromError(err)
	broken := (ok && s.Code() == codes.Unavailable) || strings.Contains(err.Error(), "EOF") || strings.Contains(err.Error(), "connection")
	if broken {
		// The connection broke: the process is probably dying.
		p.WaitExited(2 * time.Second)
	}
	if p.Exited() {
		p.Stderr.Settle(20*time.Millisecond, 500*time.Millisecond)
		if broken {
			err = errors.New("the plugin process died during the stage")
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "stage %s (%s, plugin %s): %v", n.Name, n.Kind, p.Path, err)
	if p.Exited() {
		fmt.Fprintf(&b, "\n    plugin process ended: %s", p.ExitStatus())
	}
	if lines := p.Stderr.Excerpt(10); len(lines) > 0 {
		b.WriteString("\n    last stderr lines:\n      ")
		b.WriteString(strings.Join(lines, "\n      "))
	}
	return errors.New(b.String())
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
