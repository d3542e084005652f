package engine

import (
	"context"
	"fmt"
	"sync"

	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/pluginmgr"
)

// maxPool bounds the processes of one binary serving one kind that does
// not allow concurrent runs in a process.
const maxPool = 4

// plugin returns a live process for kind's plugin binary. A plugin that
// crashed is relaunched once per crash, so with KeepGoing the stages it
// still has to serve run in a fresh process.
func (e *Engine) plugin(kind string) (*pluginmgr.Plugin, error) {
	entry, ok := e.reg.Entry(kind)
	if !ok {
		return nil, fmt.Errorf("no plugin offers kind %q", kind)
	}
	e.pluginMu.Lock()
	defer e.pluginMu.Unlock()
	p := entry.Plugin
	if r, ok := e.respawn[p.Path]; ok {
		p = r
	}
	if !p.Exited() {
		return p, nil
	}
	if e.opts.Manager == nil {
		return nil, fmt.Errorf("plugin %s is no longer running (%s)", p.Path, p.ExitStatus())
	}
	np, err := e.opts.Manager.Launch(context.Background(), p.Path)
	if err != nil {
		return nil, fmt.Errorf("relaunching plugin after it ended (%s): %w", p.ExitStatus(), err)
	}
	e.respawn[p.Path] = np
	return np, nil
}

// pool hands out processes for a kind that runs one instance per process:
// the plugin's main process first, then up to maxPool-1 more launched on
// demand, so such stages still run side by side.
type pool struct {
	mu    sync.Mutex
	procs []*pluginmgr.Plugin
	busy  map[*pluginmgr.Plugin]bool
	wake  chan struct{}
	// launching counts processes being started, so the bound holds.
	launching int
}

// lease returns a process to run stage n on and the function that gives
// it back.
func (e *Engine) lease(ctx context.Context, n *plan.Node) (*pluginmgr.Plugin, func(), error) {
	if n.Desc.GetCapabilities().GetConcurrentRuns() {
		p, err := e.plugin(n.Kind)
		return p, func() {}, err
	}
	entry, _ := e.reg.Entry(n.Kind)
	v, _ := e.pools.LoadOrStore(entry.Plugin.Path+"\x00"+n.Kind, &pool{busy: map[*pluginmgr.Plugin]bool{}, wake: make(chan struct{})})
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
		if len(pl.procs)+pl.launching < limit && e.opts.Manager != nil {
			pl.launching++
			pl.mu.Unlock()
			p, err := e.opts.Manager.Launch(ctx, entry.Plugin.Path)
			pl.mu.Lock()
			pl.launching--
			if err != nil {
				pl.mu.Unlock()
				return nil, nil, fmt.Errorf("starting another process of %s: %w", entry.Plugin.Path, err)
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

func (pl *pool) put(p *pluginmgr.Plugin) {
	pl.mu.Lock()
	delete(pl.busy, p)
	close(pl.wake)
	pl.wake = make(chan struct{})
	pl.mu.Unlock()
}
