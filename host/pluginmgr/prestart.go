package pluginmgr

import (
	"context"
	"fmt"
)

// A run starts a plugin only when one of its stages is going to run: a
// stage served from the cache needs no process, so a fully cached rerun
// starts none. To keep the launch off the critical path, the runner calls
// Prestart for the plugins of the stages that depend on one that runs, and
// the engine's Launch of that path then takes the process already on its
// way instead of starting another.

// pendingStart is a Prestart in flight or done, until Launch claims it.
type pendingStart struct {
	done    chan struct{}
	claimed bool
	live    *Plugin
	err     error
}

// Prestart begins starting p (described from the catalog, not running) in
// the background, once per path. The process it starts is checked against
// p's descriptors, as Start does: one that describes its stages otherwise
// (the binary was rebuilt since the run was planned) is refused when
// claimed.
func (m *Manager) Prestart(p *Plugin, cat *Catalog) {
	if p == nil || p.Running() {
		return
	}
	m.mu.Lock()
	if m.closed || m.pending[p.Path] != nil {
		m.mu.Unlock()
		return
	}
	if m.pending == nil {
		m.pending = map[string]*pendingStart{}
	}
	ps := &pendingStart{done: make(chan struct{})}
	m.pending[p.Path] = ps
	m.mu.Unlock()
	go func() {
		defer close(ps.done)
		live, changed, err := m.Start(context.Background(), p, cat)
		if err == nil && changed {
			live.Stop()
			live, err = nil, &LaunchError{Path: p.Path, Err: fmt.Errorf("the binary was rebuilt after the run was planned: it describes its stages otherwise now; run again")}
		}
		ps.live, ps.err = live, err
	}()
}

// claim takes path's pending start, if there is one nobody took yet, and
// waits for it. ok is false when there is none: the caller launches.
func (m *Manager) claim(ctx context.Context, path string) (p *Plugin, ok bool, err error) {
	m.mu.Lock()
	ps := m.pending[path]
	if ps == nil || ps.claimed {
		m.mu.Unlock()
		return nil, false, nil
	}
	ps.claimed = true
	m.mu.Unlock()
	select {
	case <-ps.done:
		return ps.live, true, ps.err
	case <-ctx.Done():
		// The process, if it comes up, is the Manager's: Close stops it.
		return nil, true, context.Cause(ctx)
	}
}
