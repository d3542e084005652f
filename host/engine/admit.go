package engine

import (
	"context"
	"errors"
	"fmt"

	"github.com/pipehost/pipehost/host/arena"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/internal/units"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// outputBytes is what a stage's declared (grid) outputs need.
func (e *Engine) outputBytes(n *plan.Node) int64 {
	var total int64
	for _, op := range n.Desc.GetOutputs() {
		if op.GetKind() == pb.PortKind_PORT_KIND_GRID {
			total += e.gridBytes(op)
		}
	}
	return total
}

func (e *Engine) gridBytes(op *pb.Port) int64 {
	lv := e.plan.Levels[op.GetLevel()]
	return int64(lv.GetWidth()) * int64(lv.GetHeight()) * int64(shm.DTypeSize(op.GetDtype()))
}

// admit waits until the stage's outputs fit the memory budget and allocates
// them. When nothing is in flight and they still do not fit, waiting would
// never end: that is an error naming the stage and the sizes.
func (e *Engine) admit(ctx context.Context, n *plan.Node, r *StageResult) error {
	defer r.markStarted()
	if r.prefaulted {
		e.admitMu.Lock()
		e.inFlight++
		e.admitMu.Unlock()
		return nil
	}
	need := e.outputBytes(n)
	for {
		e.admitMu.Lock()
		if e.arena.Fits(need) {
			err := e.allocateOutputs(n, r)
			if err == nil {
				e.inFlight++
			}
			e.admitMu.Unlock()
			return err
		}
		if e.inFlight == 0 && e.storing.Load() == 0 {
			e.admitMu.Unlock()
			live, bytes := e.arena.Live()
			if need > e.arena.Budget() {
				return fmt.Errorf("its outputs need %s, more than the whole memory budget of %s (raise --mem-budget)", units.Bytes(need), units.Bytes(e.arena.Budget()))
			}
			return fmt.Errorf("its outputs need %s but the memory budget is %s with %s held by %d live segment(s) that only this stage's completion could free",
				units.Bytes(need), units.Bytes(e.arena.Budget()), units.Bytes(bytes), live)
		}
		wake := e.wake
		e.admitMu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// finished marks an admitted stage done and wakes stages waiting for memory.
func (e *Engine) finished() {
	e.admitMu.Lock()
	e.inFlight--
	e.wakeLocked()
	e.admitMu.Unlock()
}

// wakeAdmission wakes stages waiting for memory (a cache write finished and
// released what it held).
func (e *Engine) wakeAdmission() {
	e.admitMu.Lock()
	e.wakeLocked()
	e.admitMu.Unlock()
}

func (e *Engine) wakeLocked() {
	close(e.wake)
	e.wake = make(chan struct{})
}

// allocateOutputs creates the stage's grid outputs in the arena.
func (e *Engine) allocateOutputs(n *plan.Node, r *StageResult) error {
	r.Outputs = map[string]*Output{}
	for _, op := range n.Desc.GetOutputs() {
		if op.GetKind() != pb.PortKind_PORT_KIND_GRID {
			continue // tables and blobs come back as dynamic outputs
		}
		lv := e.plan.Levels[op.GetLevel()]
		size := uint64(e.gridBytes(op))
		ent, err := e.arena.Allocate(op.GetName(), n.Name, int64(size), e.claimants(n, op.GetName()), e.keep(n, op.GetName()))
		if err != nil {
			e.freeOutputs(r)
			var be *arena.BudgetError
			if errors.As(err, &be) {
				return fmt.Errorf("output %q: %w", op.GetName(), err)
			}
			return fmt.Errorf("allocating output %q: %w", op.GetName(), err)
		}
		h := shm.GridHandle(ent.ID, size, 0, op.GetDtype(), uint64(lv.GetHeight()), uint64(lv.GetWidth()), op.GetLevel())
		r.Outputs[op.GetName()] = newOutput(ent, h)
	}
	return nil
}

// freeOutputs drops a stage's outputs (it failed or never ran).
func (e *Engine) freeOutputs(r *StageResult) {
	for _, o := range r.Outputs {
		if o.Entry != nil {
			_ = e.arena.Free(o.Entry.ID)
		}
	}
	r.Outputs = nil
	r.prefaulted = false
}

// preallocate creates a stage's outputs early and fallocates them in the
// background. It only runs without a memory budget: with one, memory taken
// early could keep the stages that must run first from fitting.
func (e *Engine) preallocate(n *plan.Node, r *StageResult) {
	if e.arena.Budget() != 0 || e.outputBytes(n) == 0 {
		return
	}
	e.admitMu.Lock()
	err := e.allocateOutputs(n, r)
	e.admitMu.Unlock()
	if err != nil {
		r.Outputs = nil
		return
	}
	r.prefaulted = true
	for _, o := range r.Outputs {
		// Best effort; the stage writes the pages either way. A small
		// segment costs one quick call, less than a goroutine would.
		if o.Entry.Size <= prefaultInline {
			_ = o.Entry.Segment.Prefault()
		} else {
			go o.Entry.Segment.Prefault()
		}
	}
}

// prefaultInline is the largest output prefaulted on the caller's goroutine.
const prefaultInline = 256 << 10
