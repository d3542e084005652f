package engine

import (
	"context"
	"fmt"
	"sync"

	"github.com/pipehost/pipehost/host/plan"
)

// maxPool bounds the processes of one binary serving one kind that does
// not allow concurrent runs in a process.
const maxPool = 4

// plugin returns a live process for kind's plugin binary. A plugin that
// crashed is relaunched once per crash, so with KeepGoing the stages it
// still has to serve run in a fresh process.
func (e *Engine) plugin(kind string) (Process, error) {
	p, ok := e.procs.Process(kind)
	if !ok {
		return nil, fmt.Errorf("no plugin offers kind %q", kind)
	}
	// One launch at a time per binary; a slow start of one plugin does not
	// hold up stages of the others.
	m, _ := e.launching.LoadOrStore(p.Path(), &sync.Mutex{})
	m.(*sync.Mutex).Lock()
	defer m.(*sync.Mutex).Unlock()
	e.pluginMu.Lock()
	if r, ok := e.respawn[p.Path()]; ok {
		p = r
	}
	e.pluginMu.Unlock()
	if !p.Exited() {
		return p, nil
	}
	// A plugin with no exit status was never started: with the cache on,
	// plugins start when a stage of theirs is going to run.
	status := p.ExitStatus()
	if e.launcher == nil {
		if status == "" {
			return nil, fmt.Errorf("plugin %s is not running", p.Path())
		}
		return nil, fmt.Errorf("plugin %s is no longer running (%s)", p.Path(), status)
	}
	np, err := e.launcher.Launch(context.Background(), p.Path())
	if err != nil {
		if status == "" {
			return nil, fmt.Errorf("starting plugin: %w", err)
		}
		return nil, fmt.Errorf("relaunching plugin after it ended (%s): %w", status, err)
	}
	e.pluginMu.Lock()
	e.respawn[p.Path()] = np
	e.pluginMu.Unlock()
	return np, nil
}

// pool hands out processes for a kind that runs one instance per process:
// the plugin's main process first, then up to maxPool-1 more launched on
// demand, so such stages still run side by side.
type pool struct {
	mu    sync.Mutex
	procs []Process
	busy  map[Process]bool
	wake  chan struct{}
	// launching counts processes being started, so the bound holds.
	launching int
}

// lease returns a process to run stage n on and the function that gives
// it back.
func (e *Engine) lease(ctx context.Context, n *plan.Node) (Process, func(), error) {
	if n.Desc.GetCapabilities().GetConcurrentRuns() {
		p, err := e.plugin(n.Kind)
		return p, func() {}, err
	}
	mainProc, ok := e.procs.Process(n.Kind)
	if !ok {
		return nil, nil, fmt.Errorf("no plugin offers kind %q", n.Kind)
	}
	path := mainProc.Path()
	v, _ := e.pools.LoadOrStore(path+"\x00"+n.Kind, &pool{busy: map[Process]bool{}, wake: make(chan struct{})})
	pl := v.(*pool)
	limit := min(maxPool, e.opts.Jobs)
	for {
		pl.mu.Lock()
		if len(pl.procs) == 0 {
			main, err := e.plugin(n.Kind)
			if err != nil {
				pl.mu.Unlock()
				return nil, nil, err
			}
			pl.procs = append(pl.procs, main)
		}
		// Forget processes that died; the main one is relaunched by plugin().
		live := pl.procs[:0]
		for _, p := range pl.procs {
			if !p.Exited() {
				live = append(live, p)
			} else {
				delete(pl.busy, p)
			}
		}
		pl.procs = live
		for _, p := range pl.procs {
			if !pl.busy[p] {
				pl.busy[p] = true
				pl.mu.Unlock()
				return p, func() { pl.put(p) }, nil
			}
		}
		if len(pl.procs)+pl.launching < limit && e.launcher != nil {
			pl.launching++
			pl.mu.Unlock()
			p, err := e.launcher.Launch(ctx, path)
			pl.mu.Lock()
			pl.launching--
			if err != nil {
				pl.mu.Unlock()
				return nil, nil, fmt.Errorf("starting another process of %s: %w", path, err)
			}
			pl.procs = append(pl.procs, p)
			pl.busy[p] = true
			pl.mu.Unlock()
			return p, func() { pl.put(p) }, nil
		}
		if len(pl.procs) == 0 {
			pl.procs = nil // relaunch on the next pass
		}
		wake := pl.wake
		pl.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, nil, context.Cause(ctx)
		}
	}
}

func (pl *pool) put(p Process) {
	pl.mu.Lock()
	delete(pl.busy, p)
	close(pl.wake)
	pl.wake = make(chan struct{})
	pl.mu.Unlock()
}
