package engine

import (
	"context"
	"fmt"

	"github.com/pipehost/pipehost/host/pluginmgr"
)

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
