package runner

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"

	"github.com/pipehost/pipehost/host/config"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/pluginmgr"
	"github.com/pipehost/pipehost/internal/clock"
)

// SetupStats say what a session's setup did and cost.
type SetupStats struct {
	// Installed counts the plugin binaries found on the search path.
	Installed int
	// FromCatalog counts those described by the plugin catalog, unlaunched.
	FromCatalog int
	// Described lists the plugins launched to be described (unknown to the
	// catalog, or without one).
	Described []string
	// Ignored maps a plugin to why its catalog entry was not used.
	Ignored map[string]string
	// Hashed counts the binaries hashed (their stat was not remembered).
	Hashed int
	// Unlocked lists installed plugins left out because the pipeline's
	// lock file does not approve them.
	Unlocked []string
	// Started lists the plugins launched because a stage uses them.
	Started []string
	// DescribeNs is discovery, digests and descriptors (including launches
	// to describe); PlanNs is loading the config and planning; LaunchNs is
	// starting the plugins the plan uses.
	DescribeNs, PlanNs, LaunchNs int64
}

// CatalogDir is where the plugin catalog lives inside a cache directory.
func CatalogDir(cacheDir string) string { return filepath.Join(cacheDir, "v1", "plugins") }

// catalog opens the plugin catalog, or returns nil without one.
func catalog(opts Options) *pluginmgr.Catalog {
	if opts.PluginCacheDir == "" {
		return nil
	}
	return pluginmgr.OpenCatalog(CatalogDir(opts.PluginCacheDir), opts.Warn)
}

// describePlugins finds the installed plugins and their descriptors,
// launching only those the catalog does not know. On error nothing is left
// running.
// Installed plugins the lock does not approve are left out and named in
// unlocked.
func describePlugins(ctx context.Context, opts Options, cat *pluginmgr.Catalog, lock *Lock) (mgr *pluginmgr.Manager, plugins []*pluginmgr.Plugin, stats pluginmgr.DescribeStats, unlocked []string, err error) {
	dirs, err := pluginmgr.SearchDirs(opts.PluginDirs)
	if err != nil {
		return nil, nil, stats, nil, &SetupError{err}
	}
	paths, err := pluginmgr.Discover(dirs)
	if err != nil {
		return nil, nil, stats, nil, &SetupError{err}
	}
	if len(paths) == 0 {
		return nil, nil, stats, nil, &SetupError{fmt.Errorf("no plugins found (searched %s); pass --plugin-dir or set %s", strings.Join(dirs, ", "), pluginmgr.EnvPluginPath)}
	}
	if lock != nil {
		// Checked before anything is launched: a binary the lock does not
		// approve is never run.
		digest := pluginmgr.HashFile
		if cat != nil {
			digest = cat.Digest
		}
		var kept []string
		kept, unlocked, err = filterLocked(lock, paths, digest)
		if err != nil {
			return nil, nil, stats, nil, &SetupError{err}
		}
		if len(kept) == 0 {
			return nil, nil, stats, nil, &SetupError{fmt.Errorf("none of the plugins %s approves is installed (searched %s)", lock.Path, strings.Join(dirs, ", "))}
		}
		paths = kept
	}
	mgr, err = pluginmgr.New(pluginmgr.Options{StartTimeout: opts.StartTimeout, Env: opts.PluginEnv, Logger: opts.Logger})
	if err != nil {
		return nil, nil, stats, nil, &SetupError{err}
	}
	plugins, stats, errs := mgr.Describe(ctx, paths, cat)
	if len(errs) > 0 {
		mgr.Close()
		return nil, nil, stats, nil, &SetupError{errors.Join(errs...)}
	}
	return mgr, plugins, stats, unlocked, nil
}

// planAndStart builds the plan from the descriptors and, unless lazy, starts
// the plugins its stages use. A started plugin that describes itself
// otherwise than the catalog said (rebuilt since it was hashed) makes it
// plan again with the live descriptors. plugins is updated in place with
// the started ones. Lazy leaves plugins the catalog described unstarted.
func planAndStart(ctx context.Context, cfg *config.Pipeline, mgr *pluginmgr.Manager, plugins []*pluginmgr.Plugin,
	cat *pluginmgr.Catalog, setup *SetupStats, lazy bool) (*plan.Plan, *pluginmgr.Registry, error) {
	for attempt := 0; ; attempt++ {
		t0 := clock.Now()
		reg, err := pluginmgr.NewRegistry(plugins)
		if err != nil {
			return nil, nil, &SetupError{err}
		}
		p, err := plan.Build(cfg, reg)
		if err != nil {
			if len(setup.Unlocked) > 0 {
				err = fmt.Errorf("%w\n(not considered: %d installed plugin(s) that %s does not approve: %s; if they are trusted, run `pipehost lock`)",
					err, len(setup.Unlocked), LockFileName, strings.Join(setup.Unlocked, ", "))
			}
			return nil, nil, &SetupError{err}
		}
		t1 := clock.Now()
		setup.PlanNs += t1 - t0
		if lazy {
			return p, reg, nil
		}
		index := map[*pluginmgr.Plugin]int{}
		for i, pl := range plugins {
			index[pl] = i
		}
		var need []int
		seen := map[int]bool{}
		for _, n := range p.Nodes {
			e, _ := reg.Entry(n.Kind)
			if i := index[e.Plugin]; !seen[i] {
				seen[i] = true
				need = append(need, i)
			}
		}
		changed, err := startPlugins(ctx, mgr, plugins, need, cat, setup)
		setup.LaunchNs += clock.Now() - t1
		if err != nil {
			return nil, nil, &SetupError{err}
		}
		if !changed {
			reg, err := pluginmgr.NewRegistry(plugins)
			if err != nil {
				return nil, nil, &SetupError{err}
			}
			return p, reg, nil
		}
		if attempt == 2 {
			return nil, nil, &SetupError{errors.New("plugin binaries keep changing while the run starts; try again once they are rebuilt")}
		}
	}
}

// startPlugins starts plugins[i] for every i in need, in parallel, and
// reports whether any described itself otherwise than the catalog said.
func startPlugins(ctx context.Context, mgr *pluginmgr.Manager, plugins []*pluginmgr.Plugin, need []int,
	cat *pluginmgr.Catalog, setup *SetupStats) (bool, error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	changed := false
	for _, i := range need {
		if plugins[i].Running() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			live, ch, err := mgr.Start(ctx, plugins[i], cat)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			setup.Started = append(setup.Started, live.Path)
			plugins[i] = live
			changed = changed || ch
		}()
	}
	wg.Wait()
	return changed, errors.Join(errs...)
}
