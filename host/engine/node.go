package engine

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/internal/clock"
)

// errCutoff cancels a stage that started before its inputs' digests were
// known, once they show its result is already in the cache.
var errCutoff = errors.New("its result is already in the cache (early cutoff)")

// testHookPublished, when set by a test, runs right after a stage has
// woken its consumers: the time its own bookkeeping may take then.
var testHookPublished func(n *plan.Node)

// runNode takes one stage whose producers are all done from "inputs ready"
// to a final status: skip, cache hit, or admission and execution. publish
// lets the stage's consumers start; it is called as soon as the outputs
// are sealed, before they are digested and stored.
func (e *Engine) runNode(ctx context.Context, n *plan.Node, r *StageResult, results []*StageResult, slots chan int, publish func()) {
	releaseInputs := sync.OnceFunc(func() { e.releaseInputs(n, results) })
	defer releaseInputs()
	skip := func(err error) {
		r.Status, r.Err = StatusSkipped, err
		e.freeOutputs(r) // outputs allocated early
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

	c := e.opts.Cache
	var (
		parts  cache.Parts
		unlock func()         // the key's lock, held from lookup to store
		later  <-chan *lookup // the key, once the inputs' digests are known
	)
	runCtx, cancelRun := context.WithCancelCause(ctx)
	defer cancelRun(nil)
	if e.cacheable(n) {
		r.Cache = CacheMiss
		if inputs, known := e.inputDigests(n, results); known {
			parts = e.keyParts(n, inputs)
			r.Key = parts.Key()
			if !e.opts.Refresh[n.Name] && e.serveFromCache(ctx, n, r, false) {
				return
			}
			// Another run may be computing this very key: wait for it rather
			// than compute it twice, then look again.
			u, err := c.Lock(ctx, r.Key)
			if err != nil {
				e.abort(ctx, n, r, err)
				return
			}
			// The remote cache is asked only now, under the key's lock, so
			// a miss costs one round trip, not two.
			if !e.opts.Refresh[n.Name] && e.serveFromCache(ctx, n, r, true) {
				u()
				return
			}
			unlock = u
			e.explainMiss(n, r, parts)
		} else {
			// An input's digest is still being computed: start at once and
			// look the key up when the digests land. A hit then stops the
			// stage and serves the entry, so early cutoff stays exact.
			later = e.lookupLater(ctx, n, results, cancelRun)
		}
	}
	defer func() {
		if unlock != nil {
			unlock()
		}
	}()
	if e.opts.Prepare != nil {
		e.opts.Prepare(n)
	}

	// Cached inputs nobody has needed yet are loaded now, before this
	// stage holds memory or a worker slot (a corrupt one reruns its stage).
	if err := e.materializeInputs(runCtx, n, results, slots); err != nil {
		if !e.cutOff(ctx, runCtx, n, r, later) {
			e.abort(ctx, n, r, err)
		}
		return
	}
	done := e.execute(runCtx, n, r, results, slots)
	if r.Status != StatusOK {
		releaseInputs()
		done()
		e.cutOff(ctx, runCtx, n, r, later)
		return
	}
	// Consumers start as soon as the outputs are sealed: digesting them
	// (started here, on other goroutines), storing them and the stage's
	// record need not delay them.
	if c != nil {
		e.digestOutputs(r)
	}
	// The inputs go before publish wakes the consumers: once a consumer is
	// admitted, its own consumers preallocate their outputs, and the
	// inputs must not still be held then (in a chain, three grids at most).
	releaseInputs()
	publish()
	if testHookPublished != nil {
		testHookPublished(n)
	}
	done()
	// The consumer publish woke waits on this processor's run queue: let it
	// go first, so digests, stores and the stage's record happen while it
	// runs rather than before it starts.
	runtime.Gosched()
	if c == nil {
		return
	}
	if later != nil {
		l := <-later
		if !l.ok {
			e.releaseHostClaims(r)
			return
		}
		parts = l.parts
		r.Key = parts.Key()
		if l.entry != nil && e.sameAsEntry(n, r, l.entry) {
			r.Cache, r.MissReason = CacheHit, ""
			r.Note = "early cutoff: its inputs matched a cached run only after it had finished; identical bytes"
			e.releaseHostClaims(r)
			return
		}
		e.explainMiss(n, r, parts)
	}
	if r.Key == "" {
		e.releaseHostClaims(r)
		return
	}
	e.store(ctx, n, r, parts, unlock)
	unlock = nil // the store releases it
}

// execute admits a stage (memory first, then resources, then a worker
// slot: a stage holding a slot while it waits for memory could starve the
// stages that free it) and runs it. Every stage that runs goes through here,
// recomputations included.
//
// The caller calls done once it has released the stage's inputs: until
// then the stage counts as in flight, so a consumer short of memory waits
// for those inputs to be freed instead of reporting that nothing could
// free them.
func (e *Engine) execute(ctx context.Context, n *plan.Node, r *StageResult, results []*StageResult, slots chan int) (done func()) {
	if err := e.admit(ctx, n, r); err != nil {
		e.abort(ctx, n, r, err)
		return func() {}
	}
	done = sync.OnceFunc(e.finished)
	releaseRes, err := e.res.acquire(ctx, needs(n))
	if err != nil {
		e.abort(ctx, n, r, err)
		return
	}
	defer releaseRes()
	var slot int
	select {
	case slot = <-slots:
	case <-ctx.Done():
		e.abort(ctx, n, r, context.Cause(ctx))
		return
	}
	r.Slot = slot
	e.runStage(ctx, n, r, results)
	slots <- slot
	return done
}

// abort ends the stage on err: skipped if its context was stopped, failed
// otherwise.
func (e *Engine) abort(ctx context.Context, n *plan.Node, r *StageResult, err error) {
	e.freeOutputs(r)
	if ctx.Err() != nil {
		r.Status, r.Err = StatusSkipped, fmt.Errorf("stage %s skipped: the run was stopped (%v)", n.Name, context.Cause(ctx))
		return
	}
	r.Status, r.Err = StatusFailed, fmt.Errorf("stage %s (%s): %w", n.Name, n.Kind, err)
}

// cutOff completes a stage that was stopped because its key turned out to
// be cached: it serves the entry instead. False when that is not why the
// stage stopped.
func (e *Engine) cutOff(ctx, runCtx context.Context, n *plan.Node, r *StageResult, later <-chan *lookup) bool {
	if later == nil || ctx.Err() != nil || !errors.Is(context.Cause(runCtx), errCutoff) {
		return false
	}
	l := <-later
	r.Key = l.parts.Key()
	if e.serveEntry(n, r, l.entry, l.remote) {
		r.Err = nil
		r.Note = "early cutoff: its inputs matched a cached run; stopped and served from the cache"
		return true
	}
	e.freeOutputs(r)
	r.Status = StatusFailed
	r.Err = fmt.Errorf("stage %s (%s): stopped because its result was in the cache, but the entry could not be read; run again", n.Name, n.Kind)
	return true
}

// lookup is a stage's key found after its inputs' digests landed; entry is
// its cache entry, if there is one.
type lookup struct {
	ok    bool // false: not cacheable after all (an input has no digest)
	parts cache.Parts
	entry *cache.Manifest
	// remote: entry is the remote cache's (its bytes are fetched from there).
	remote bool
}

// lookupLater waits for the stage's input digests, looks its key up, and
// cancels the stage's run with errCutoff on a hit.
func (e *Engine) lookupLater(ctx context.Context, n *plan.Node, results []*StageResult, cancelRun context.CancelCauseFunc) <-chan *lookup {
	ch := make(chan *lookup, 1)
	go func() {
		l := &lookup{}
		defer func() { ch <- l }()
		inputs, ok := e.waitInputDigests(ctx, n, results)
		if !ok {
			return
		}
		l.ok, l.parts = true, e.keyParts(n, inputs)
		if e.opts.Refresh[n.Name] {
			return
		}
		if m, err := e.opts.Cache.Lookup(l.parts.Key()); err == nil && m != nil && e.entryComplete(n, m) {
			l.entry = m
		} else if m := e.remoteLookup(ctx, n, l.parts.Key()); m != nil {
			l.entry, l.remote = m, true
		}
		if l.entry != nil {
			cancelRun(errCutoff)
		}
	}()
	return ch
}

// sameAsEntry reports whether a stage that already ran produced exactly the
// bytes of the cache entry its key found. A difference means the stage is
// not deterministic: it is said in the run log, and the fresh outputs stand
// (they are what the consumers read).
func (e *Engine) sameAsEntry(n *plan.Node, r *StageResult, m *cache.Manifest) bool {
	for _, rec := range m.Outputs {
		o := r.Outputs[rec.Port]
		if o == nil {
			return false
		}
		if d, err := o.waitDigest(context.Background()); err != nil || d != rec.Digest {
			e.opts.Observer.StageEvent(n, logEvent(fmt.Sprintf(
				"output %q differs from the cached result of the same inputs, params and seed: the stage is not deterministic", rec.Port)))
			return false
		}
	}
	return true
}

// explainMiss records why the key missed and remembers its parts for the
// next run's explanation.
func (e *Engine) explainMiss(n *plan.Node, r *StageResult, parts cache.Parts) {
	c := e.opts.Cache
	r.Cache = CacheMiss
	if e.opts.Refresh[n.Name] {
		r.MissReason = "refresh requested"
	} else if r.MissReason == "" {
		r.MissReason = cache.Explain(c.LastParts(e.plan.Config.RunID, n.Name), parts)
	}
	e.saveParts(n.Name, parts)
}

// saveParts queues the stage's key parts for the next run's miss reasons.
// One background writer stores them, off every stage's critical path and
// at the cache writes' low priority; Run returns only once they are
// written, as it does for the stores.
func (e *Engine) saveParts(stage string, parts cache.Parts) {
	e.stores.Add(1)
	e.partsBatch.add(stagedParts{stage, parts}, func(batch []stagedParts) {
		for _, b := range batch {
			_ = e.opts.Cache.SaveParts(e.plan.Config.RunID, b.stage, b.parts)
			e.stores.Done()
		}
	})
}

// stagedParts is a stage's key parts waiting to be saved.
type stagedParts struct {
	stage string
	parts cache.Parts
}

// serveFromCache completes the stage from its cache entry, if there is one:
// the local cache's, else (with remoteToo) the remote cache's.
func (e *Engine) serveFromCache(ctx context.Context, n *plan.Node, r *StageResult, remoteToo bool) bool {
	m, err := e.opts.Cache.Lookup(r.Key)
	if err != nil {
		r.MissReason = err.Error()
	}
	if m != nil && !e.entryComplete(n, m) {
		e.opts.Cache.Invalidate(r.Key)
		r.MissReason = "cache entry lacks an output or has an unreadable handle; removed"
		m = nil
	}
	if m != nil {
		return e.serveEntry(n, r, m, false)
	}
	if !remoteToo {
		return false
	}
	if m = e.remoteLookup(ctx, n, r.Key); m == nil {
		return false
	}
	if !e.serveEntry(n, r, m, true) {
		return false
	}
	r.Note = "served from the remote cache " + e.opts.Remote.Target()
	return true
}

// remoteLookup returns the remote cache's entry for key as a manifest, or
// nil. An entry that does not hold together is a miss, said in the run log
// (it is overwritten when the stage is stored); an unreachable server is a
// miss the remote cache warns about once.
func (e *Engine) remoteLookup(ctx context.Context, n *plan.Node, key string) *cache.Manifest {
	if e.opts.Remote == nil {
		return nil
	}
	recs, err := e.opts.Remote.Lookup(ctx, key)
	if err != nil {
		e.opts.Observer.StageEvent(n, logEvent("remote cache entry ignored: "+err.Error()))
		return nil
	}
	if recs == nil {
		return nil
	}
	m := &cache.Manifest{Key: key, Stage: n.Name, Kind: n.Kind, Outputs: recs}
	if !e.entryComplete(n, m) {
		e.opts.Observer.StageEvent(n, logEvent("remote cache entry ignored: it lacks an output of "+n.Name))
		return nil
	}
	return m
}

// entryComplete checks an entry has every output the stage declares, each
// with a readable handle.
func (e *Engine) entryComplete(n *plan.Node, m *cache.Manifest) bool {
	have := map[string]bool{}
	for _, rec := range m.Outputs {
		if _, err := rec.HandleOf(); err != nil {
			return false
		}
		have[rec.Port] = true
	}
	for _, op := range n.Desc.GetOutputs() {
		if !have[op.GetName()] {
			return false
		}
	}
	return true
}

// serveEntry makes the stage's outputs the entry's (lazy: read only when a
// stage that runs needs them).
func (e *Engine) serveEntry(n *plan.Node, r *StageResult, m *cache.Manifest, remote bool) bool {
	if m == nil {
		return false
	}
	start := clock.Now()
	outs := map[string]*Output{}
	for _, rec := range m.Outputs {
		h, err := rec.HandleOf()
		if err != nil {
			return false
		}
		pending := map[string]bool{}
		for _, c := range consumerNames(n, rec.Port) {
			pending[c] = true
		}
		outs[rec.Port] = cachedOutput(h, rec.Digest, pending)
		outs[rec.Port].Remote = remote
	}
	e.freeOutputs(r) // a hit needs none of the outputs allocated early
	r.Outputs, r.Status, r.Cache, r.MissReason = outs, StatusOK, CacheHit, ""
	if r.StartNs == 0 {
		r.StartNs = start
	}
	r.EndNs = clock.Now()
	return true
}

// cacheable says whether the stage's outputs go to the cache: the cache is
// on and the stage did not opt out.
func (e *Engine) cacheable(n *plan.Node) bool {
	return e.opts.Cache != nil && (n.Config.Cache == nil || *n.Config.Cache)
}

// inputDigests returns the content digests of the stage's inputs if every
// one is known already.
func (e *Engine) inputDigests(n *plan.Node, results []*StageResult) ([]cache.Input, bool) {
	var inputs []cache.Input
	for _, in := range n.Inputs {
		o := results[in.From.Index].Outputs[in.Output.GetName()]
		if o == nil {
			return nil, false
		}
		d, ok := o.digestNow()
		if !ok || d.IsZero() {
			return nil, false
		}
		inputs = append(inputs, cache.Input{Port: in.Input.GetName(), Digest: d})
	}
	return inputs, true
}

// waitInputDigests waits for the content digests of the stage's inputs;
// false if one cannot be had.
func (e *Engine) waitInputDigests(ctx context.Context, n *plan.Node, results []*StageResult) ([]cache.Input, bool) {
	var inputs []cache.Input
	for _, in := range n.Inputs {
		o := results[in.From.Index].Outputs[in.Output.GetName()]
		if o == nil {
			return nil, false
		}
		d, err := o.waitDigest(ctx)
		if err != nil || d.IsZero() {
			return nil, false
		}
		inputs = append(inputs, cache.Input{Port: in.Input.GetName(), Digest: d})
	}
	return inputs, true
}

// keyParts builds the stage's cache key parts from its input digests.
func (e *Engine) keyParts(n *plan.Node, inputs []cache.Input) cache.Parts {
	return e.stageParts(n).WithInputs(inputs)
}

// stageParts is the stage's key parts but its inputs, worked out once (the
// run goroutine of a stage with inputs does it while the producers run).
func (e *Engine) stageParts(n *plan.Node) cache.Parts {
	k := &e.stageKeys[n.Index]
	k.once.Do(func() {
		e.gridOnce.Do(func() { e.grid = cache.GridDigest(e.plan.Topology, e.plan.Levels) })
		var digest string
		if p, ok := e.procs.Process(n.Kind); ok {
			// Remembered per process (and across runs by the plugin catalog).
			digest = p.Digest()
		}
		k.parts = cache.StageParts(n.Desc, digest, n.Params, n.Seed, e.grid)
	})
	return k.parts
}

// stageKey memoises a stage's key parts but its inputs.
type stageKey struct {
	once  sync.Once
	parts cache.Parts
}
