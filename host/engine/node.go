package engine

import (
	"context"
	"fmt"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/internal/clock"
)

// runNode takes one stage whose producers are all done from "inputs ready"
// to a final status: skip, cache hit, or admission and execution.
func (e *Engine) runNode(ctx context.Context, n *plan.Node, r *StageResult, results []*StageResult, slots chan int) {
	skip := func(err error) {
		r.Status, r.Err = StatusSkipped, err
		e.freeOutputs(r) // outputs allocated early
		e.releaseInputs(n, results)
	}
	stopped := func() {
		skip(fmt.Errorf("stage %s skipped: the run was stopped (%v)", n.Name, context.Cause(ctx)))
	}
	for _, in := range n.Inputs {
		if up := results[in.From.Index]; up.Status != StatusOK {
			skip(fmt.Errorf("stage %s skipped: input %q comes from %s, which %s", n.Name, in.Input.GetName(), up.Name, up.Status))
			return
		}
	}
	if ctx.Err() != nil {
		stopped()
		return
	}
	// abort ends the stage on err: skipped if the run is being stopped,
	// failed otherwise.
	abort := func(err error) {
		if ctx.Err() != nil {
			stopped()
			return
		}
		r.Status, r.Err = StatusFailed, fmt.Errorf("stage %s (%s): %w", n.Name, n.Kind, err)
		e.freeOutputs(r)
		e.releaseInputs(n, results)
	}

	var unlock func()
	parts, cacheable := e.keyParts(n, results)
	if cacheable {
		r.Key, r.Cache = parts.Key(), CacheMiss
		c := e.opts.Cache
		if !e.opts.Refresh[n.Name] && e.serveFromCache(n, r, results) {
			return
		}
		// Another run may be computing this very key: wait for it rather
		// than compute it twice, then look again.
		u, err := c.Lock(ctx, r.Key)
		if err != nil {
			abort(err)
			return
		}
		if !e.opts.Refresh[n.Name] && e.serveFromCache(n, r, results) {
			u()
			return
		}
		unlock = u
		if r.MissReason == "" {
			r.MissReason = cache.Explain(c.LastParts(e.plan.Config.RunID, n.Name), parts)
		}
		if e.opts.Refresh[n.Name] {
			r.MissReason = "refresh requested"
		}
		_ = c.SaveParts(e.plan.Config.RunID, n.Name, parts)
	}
	stored := false
	defer func() {
		if unlock != nil && !stored {
			unlock()
		}
	}()

	// Cached inputs nobody has needed yet are loaded now, before this
	// stage holds memory or a worker slot (a corrupt one reruns its stage).
	if err := e.materializeInputs(ctx, n, results, slots); err != nil {
		abort(err)
		return
	}
	// Memory first, then a worker slot: a stage holding a slot while it
	// waits for memory could starve the stages that free it.
	if err := e.admit(ctx, n, r); err != nil {
		abort(err)
		return
	}
	defer e.finished()
	releaseRes, err := e.res.acquire(ctx, needs(n))
	if err != nil {
		e.freeOutputs(r)
		stopped()
		return
	}
	defer releaseRes()
	var slot int
	select {
	case slot = <-slots:
	case <-ctx.Done():
		e.freeOutputs(r)
		stopped()
		return
	}
	r.Slot = slot
	e.runStage(ctx, n, r, results)
	slots <- slot
	if r.Status != StatusOK {
		return
	}
	if e.opts.Cache != nil {
		if err := e.digestOutputs(r); err != nil {
			r.Status, r.Err = StatusFailed, fmt.Errorf("stage %s (%s): hashing outputs: %w", n.Name, n.Kind, err)
			e.freeOutputs(r)
			return
		}
	}
	if unlock != nil {
		e.store(n, r, parts, unlock)
		stored = true
	}
	e.releaseHostClaims(r)
}

// serveFromCache completes the stage from a cache entry, if there is one.
func (e *Engine) serveFromCache(n *plan.Node, r *StageResult, results []*StageResult) bool {
	start := clock.Now()

	m, err := e.opts.Cache.Lookup(r.Key)
	if err != nil {
		r.MissReason = err.Error()
		return false
	}
	if m == nil {
		return false
	}
	outs := map[string]*Output{}
	for _, rec := range m.Outputs {
		h, err := rec.HandleOf()
		if err != nil {
			e.opts.Cache.Invalidate(r.Key)
			r.MissReason = err.Error()
			return false
		}
		pending := map[string]bool{}
		for _, c := range consumerNames(n, rec.Port) {
			pending[c] = true
		}
		outs[rec.Port] = &Output{Handle: h, Digest: rec.Digest, Cached: true, pending: pending}
	}
	for _, op := range n.Desc.GetOutputs() {
		if outs[op.GetName()] == nil {
			e.opts.Cache.Invalidate(r.Key)
			r.MissReason = fmt.Sprintf("cache entry lacks output %q; removed", op.GetName())
			return false
		}
	}
	e.freeOutputs(r) // a hit needs none of the outputs allocated early
	r.Outputs, r.Status, r.Cache = outs, StatusOK, CacheHit
	r.StartNs, r.EndNs = start, clock.Now()
	e.releaseInputs(n, results)
	return true
}

// keyParts builds the stage's cache key parts; ok is false when the stage
// is not cacheable (cache off, stage opted out, or an input without a
// content digest).
func (e *Engine) keyParts(n *plan.Node, results []*StageResult) (cache.Parts, bool) {
	c := e.opts.Cache
	if c == nil || (n.Config.Cache != nil && !*n.Config.Cache) {
		return cache.Parts{}, false
	}
	var inputs []cache.Input
	for _, in := range n.Inputs {
		o := results[in.From.Index].Outputs[in.Output.GetName()]
		if o == nil || o.Digest.IsZero() {
			return cache.Parts{}, false
		}
		inputs = append(inputs, cache.Input{Port: in.Input.GetName(), Digest: o.Digest})
	}
	entry, _ := e.reg.Entry(n.Kind)
	pluginDigest := c.PluginDigest(entry.Plugin.Path, entry.Plugin.Digest)
	return cache.NewParts(n.Desc, pluginDigest, n.Params, n.Seed, e.plan.Topology, e.plan.Levels, inputs), true
}

// digestOutputs hashes every output of a finished stage (sealed segments,
// read through read-only mappings).
func (e *Engine) digestOutputs(r *StageResult) error {
	for port, o := range r.Outputs {
		d, err := cache.SegmentDigest(o.Entry.Segment)
		if err != nil {
			return fmt.Errorf("output %q: %w", port, err)
		}
		o.Digest = d
	}
	return nil
}
