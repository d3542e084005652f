// Package runner ties a run together: config → plugins → plan → engine,
// and makes sure every plugin process, socket and segment is gone when the
// session closes, whatever happened.
package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pipehost/pipehost/host/arena"
	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/config"
	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/pluginmgr"
	"github.com/pipehost/pipehost/host/remote"
	"github.com/pipehost/pipehost/host/report"
	"github.com/pipehost/pipehost/host/runlog"
	"github.com/pipehost/pipehost/internal/clock"
	"github.com/pipehost/pipehost/internal/tracemark"
)

// Options for a session.
type Options struct {
	ConfigPath   string
	Overrides    []config.Override
	PluginDirs   []string
	PluginEnv    []string
	StartTimeout time.Duration
	Engine       engine.Options
	// MemBudget bounds the arena's live bytes (0: unlimited).
	MemBudget int64
	Logger    hclog.Logger
	// CacheDir is the stage-output cache ("" disables caching).
	CacheDir string
	// PluginCacheDir is the cache directory whose plugin catalog remembers
	// binary digests and descriptors, so only the plugins a plan uses are
	// launched ("" : every plugin is launched to be described). It is
	// independent of CacheDir: descriptors are keyed by binary content, so
	// using them never changes a result.
	PluginCacheDir string
	// CacheMax is the size the cache is collected down to after a run
	// (least recently used entries go first); 0 means no limit.
	CacheMax int64
	// RemoteCache is a shared REAPI cache behind the local one,
	// grpc://HOST:PORT ("": the config's remote.cache, if any). It is used
	// only with CacheDir; a server that cannot be reached costs one warning
	// and the run goes on with the local cache.
	RemoteCache string
	// RemoteExecutor is the REAPI executor the plan's remote stages run
	// on, grpc://HOST:PORT ("": the config's remote.executor).
	RemoteExecutor string
	// RemoteFallback overrides the config's remote.fallback ("error" or
	// "local").
	RemoteFallback string
	// StageRunner is pipehost-stage, shipped in every remote action (""
	// : the one beside this executable, else on PATH).
	StageRunner string
	// Warn receives one-line notices (e.g. the cache being unusable).
	Warn func(string)
	// Resources override the config's resource capacities; "gpu" defaults
	// to the number of GPUs detected.
	Resources map[string]int
	// OutDir overrides the config's output directory.
	OutDir string
	// Version is pipehost's version, for the run log.
	Version string
	// TraceMarkers writes every stage and subtask to tracefs trace_marker
	// (as does the config's output.trace_markers); see docs/runlog.md.
	TraceMarkers bool
	// UpdateLock writes the plugin lock file beside the config
	// (pipehost.lock) for the plugins the plan uses, instead of refusing
	// binaries that differ from it. Without it, an existing lock file is
	// enforced and a missing one is not created.
	UpdateLock bool
}

// DetectGPUs counts the NVIDIA and DRM render devices of this machine.
func DetectGPUs() int {
	nv, _ := filepath.Glob("/dev/nvidia[0-9]*")
	if len(nv) > 0 {
		return len(nv)
	}
	dri, _ := filepath.Glob("/dev/dri/renderD*")
	return len(dri)
}

// SetupError is a problem found before any stage ran: a bad config, a bad
// plugin, a plan that does not validate. The CLI exits 2 for these.
type SetupError struct{ Err error }

func (e *SetupError) Error() string { return e.Err.Error() }
func (e *SetupError) Unwrap() error { return e.Err }

// Session is a loaded config with its plugins running and its plan built.
type Session struct {
	Config *config.Pipeline
	// Plugins are the plugin processes running when Open returned. With
	// the cache on, a plugin is started only when one of its stages is
	// going to run; Launched lists every process the session started.
	Plugins  []*pluginmgr.Plugin
	Registry *pluginmgr.Registry
	Plan     *plan.Plan
	Arena    *arena.Arena
	Cache    *cache.Cache
	// Remote is the shared cache behind Cache (nil: none).
	Remote *remote.Cache
	// Executor runs the plan's remote stages (nil: the plan has none).
	Executor *engine.RemoteExec
	// Setup says what setting the session up did and cost.
	Setup SetupStats
	// Reports are the files the last Run wrote.
	Reports Reports
	// Artifacts are the datasets the last Run wrote. RunErrors are failures
	// outside any one stage (datasets that could not be written, seal
	// violations); the run counts as failed.
	Artifacts []SavedArtifact
	RunErrors []error
	mgr       *pluginmgr.Manager
	catalog   *pluginmgr.Catalog
	opts      Options
	openNs    int64
	previews  map[string]string

	prepMu   sync.Mutex
	prepared map[*plan.Node]bool
}

// Launched lists every plugin process the session started, running or not.
func (s *Session) Launched() []*pluginmgr.Plugin { return s.mgr.Plugins() }

// prepare starts, in the background, the plugins of stage n and of every
// stage that depends on it: n is about to run, so they will very likely
// run too, and their launch then overlaps n's work. A stage seen once is
// not walked again (its dependants were seen with it).
func (s *Session) prepare(n *plan.Node) {
	s.prepMu.Lock()
	defer s.prepMu.Unlock()
	if s.prepared == nil {
		s.prepared = map[*plan.Node]bool{}
	}
	stack := []*plan.Node{n}
	for len(stack) > 0 {
		m := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if s.prepared[m] {
			continue
		}
		s.prepared[m] = true
		// A stage for the remote executor needs no local process (one is
		// started on demand if it falls back to running here).
		if e, ok := s.Registry.Entry(m.Kind); ok && !(m.Remote && s.Executor != nil) {
			s.mgr.Prestart(e.Plugin, s.catalog)
		}
		for _, out := range m.Consumers {
			stack = append(stack, out.To)
		}
	}
}

// LoadConfig reads the config and applies overrides.
func LoadConfig(path string, overrides []config.Override) (*config.Pipeline, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, &SetupError{err}
	}
	if err := cfg.Apply(overrides); err != nil {
		return nil, &SetupError{err}
	}
	return cfg, nil
}

// StartPlugins discovers and launches every plugin at once (the listing
// command describes them all). With a plugin catalog the digests come from
// its memo and every reply is recorded. On error nothing is left running.
func StartPlugins(ctx context.Context, opts Options) (*pluginmgr.Manager, []*pluginmgr.Plugin, *pluginmgr.Registry, error) {
	dirs, err := pluginmgr.SearchDirs(opts.PluginDirs)
	if err != nil {
		return nil, nil, nil, &SetupError{err}
	}
	paths, err := pluginmgr.Discover(dirs)
	if err != nil {
		return nil, nil, nil, &SetupError{err}
	}
	if len(paths) == 0 {
		return nil, nil, nil, &SetupError{fmt.Errorf("no plugins found (searched %s); pass --plugin-dir or set %s", strings.Join(dirs, ", "), pluginmgr.EnvPluginPath)}
	}
	mgr, err := pluginmgr.New(pluginmgr.Options{StartTimeout: opts.StartTimeout, Env: opts.PluginEnv, Logger: opts.Logger})
	if err != nil {
		return nil, nil, nil, &SetupError{err}
	}
	plugins, errs := mgr.DescribeAll(ctx, paths, catalog(opts))
	if len(errs) > 0 {
		mgr.Close()
		return nil, nil, nil, &SetupError{errors.Join(errs...)}
	}
	reg, err := pluginmgr.NewRegistry(plugins)
	if err != nil {
		mgr.Close()
		return nil, nil, nil, &SetupError{err}
	}
	return mgr, plugins, reg, nil
}

// Open loads the config, starts the plugins and builds the plan.
func Open(ctx context.Context, opts Options) (*Session, error) {
	openNs := clock.Now()
	cfg, err := LoadConfig(opts.ConfigPath, opts.Overrides)
	if err != nil {
		return nil, err
	}
	var setup SetupStats
	setup.PlanNs = clock.Now() - openNs
	// Descriptors first (from the catalog where it knows a binary), then
	// the plan, then only the plugins the plan uses are launched.
	t0 := clock.Now()
	cat := catalog(opts)
	// Plugins get a scrubbed environment: what every plugin needs, what
	// the caller adds, and the host variables the config names.
	for _, k := range cfg.PluginEnv {
		if v, ok := os.LookupEnv(k); ok {
			opts.PluginEnv = append(opts.PluginEnv, k+"="+v)
		}
	}
	lock, err := ReadLock(LockPath(opts.ConfigPath))
	if err != nil {
		return nil, &SetupError{err}
	}
	if opts.UpdateLock {
		lock = nil // every installed plugin may be used, then recorded
	}
	mgr, described, ds, unlocked, err := describePlugins(ctx, opts, cat, lock)
	if err != nil {
		return nil, err
	}
	setup.DescribeNs = clock.Now() - t0
	setup.Installed, setup.FromCatalog, setup.Described, setup.Ignored = len(described), ds.FromCatalog, ds.Launched, ds.Ignored
	setup.Unlocked = unlocked
	// With the cache on, a stage may need no process at all: plugins are
	// then started when a stage is going to run (Session.prepare).
	p, reg, err := planAndStart(ctx, cfg, mgr, described, cat, &setup, opts.CacheDir != "")
	if cat != nil {
		setup.Hashed = cat.Hashed()
	}
	if err != nil {
		mgr.Close()
		return nil, err
	}
	caps := map[string]int{"gpu": DetectGPUs()}
	for k, v := range cfg.Resources {
		caps[k] = v
	}
	for k, v := range opts.Resources {
		caps[k] = v
	}
	if err := engine.CheckResources(p, caps); err != nil {
		mgr.Close()
		return nil, &SetupError{err}
	}
	opts.Engine.Resources = caps
	// Plugins launched only to be described are stopped now rather than
	// idling all run.
	used := map[*pluginmgr.Plugin]bool{}
	for _, n := range p.Nodes {
		e, _ := reg.Entry(n.Kind)
		used[e.Plugin] = true
	}
	mgr.StopUnused(used)
	if opts.UpdateLock {
		l := lockOf(LockPath(opts.ConfigPath), p, reg)
		if old, _ := ReadLock(l.Path); !sameLock(old, l) {
			if err := l.Write(); err != nil {
				mgr.Close()
				return nil, &SetupError{fmt.Errorf("writing the plugin lock: %w", err)}
			}
			if opts.Warn != nil {
				opts.Warn(fmt.Sprintf("wrote %s (%d plugins)", l.Path, len(l.Plugins)))
			}
		}
	}
	x, err := openExecutor(ctx, opts, p)
	if err != nil {
		mgr.Close()
		return nil, err
	}
	sess := &Session{Config: cfg, Plugins: mgr.Plugins(), Registry: reg, Plan: p, mgr: mgr, catalog: cat, opts: opts,
		Arena: arena.New(opts.MemBudget), openNs: openNs, Setup: setup, Executor: x}
	if opts.CacheDir != "" {
		c, err := cache.Open(opts.CacheDir)
		if err != nil {
			// An unusable cache costs speed, not correctness: run without.
			sess.warn(fmt.Sprintf("running without the cache: %v", err))
		} else {
			sess.Cache = c
		}
	}
	target := opts.RemoteCache
	if target == "" {
		target = cfg.Remote.Cache
	}
	switch {
	case target != "" && sess.Cache != nil:
		sess.Remote = openRemote(ctx, target, sess.warn)
	case target != "" && opts.RemoteCache != "":
		// The config may name a team cache a --no-cache run ignores; a
		// flag given with the cache off is a mistake worth saying.
		sess.warn(fmt.Sprintf("the remote cache %s is not used: the local cache is off", target))
	}
	return sess, nil
}

// openRemote connects to the remote cache. A server that is down, slow or
// unfit costs speed, not correctness: one warning, and the run uses the
// local cache only.
func openRemote(ctx context.Context, target string, warn func(string)) *remote.Cache {
	c, err := remote.Dial(ctx, target, remote.Options{})
	if err != nil {
		warn(fmt.Sprintf("running with the local cache only: %v", err))
		return nil
	}
	if !c.CanUpdateActionCache() {
		warn(fmt.Sprintf("remote cache %s does not accept action results from clients: it is only read", target))
	}
	return remote.NewCache(c, warn)
}

func (s *Session) warn(msg string) {
	if s.opts.Warn != nil {
		s.opts.Warn(msg)
	}
}

// Run executes the plan and records it: the run log as it happens, then
// summary.md and trace.json in the output directory (for failed and
// stopped runs too).
func (s *Session) Run(ctx context.Context) *engine.Result {
	w := s.startRecording()
	col := report.NewCollector(w)
	opts := s.opts.Engine
	opts.Manager = s.mgr
	opts.Prepare = s.prepare
	// The last stores are written while the datasets are: the run's
	// results do not wait for the cache, and Run still returns only once
	// both are done.
	opts.DeferStores = true
	opts.Cache = s.Cache
	opts.Remote = s.Remote
	opts.RemoteExec = s.Executor
	if opts.Observer != nil {
		opts.Observer = engine.Observers(col, opts.Observer)
	} else {
		opts.Observer = col
	}
	if s.opts.TraceMarkers || s.Config.Output.TraceMarkers {
		if err := tracemark.Enable(); err != nil {
			// Profiling is optional: the run goes on without markers.
			msg := fmt.Sprintf("trace markers off: %v", err)
			if w != nil {
				w.Log(runlog.Event{Type: "log", TimeNs: clock.Now(), Level: "warn", Msg: msg})
			}
			s.warn(msg)
		} else {
			defer tracemark.Disable()
			opts.Observer = engine.Observers(newMarkerObserver(s.Plan), opts.Observer)
		}
	}
	res := engine.New(s.Plan, s.Registry, s.Arena, opts).Run(ctx)
	startNs, endNs := res.StartNs, res.EndNs
	status := "ok"
	switch {
	case ctx.Err() != nil:
		status = fmt.Sprintf("stopped (%v)", context.Cause(ctx))
	case len(res.Failed) > 0:
		status = "failed"
	}
	artifacts, errs := s.saveDatasets(res)
	res.WaitStores()
	s.RunErrors = errs
	if len(errs) > 0 && status == "ok" {
		status = "failed"
	}
	s.Artifacts = artifacts
	// metadata.json is written while the run log, trace and summary are:
	// they only read the results.
	type written struct {
		path string
		err  error
	}
	meta := make(chan written, 1)
	go func() {
		path, err := s.writeMetadata(res, status, artifacts)
		meta <- written{path, err}
	}()
	s.Reports = s.finishRecording(w, col, res, startNs, endNs, status)
	if m := <-meta; m.err != nil {
		s.warn(fmt.Sprintf("writing metadata.json: %v", m.err))
	} else {
		s.Reports.Metadata = m.path
	}
	if s.Cache != nil && s.opts.CacheMax > 0 && s.Cache.Usage() > s.opts.CacheMax {
		if _, err := s.Cache.GC(s.opts.CacheMax); errors.Is(err, cache.ErrBusy) {
			s.warn(fmt.Sprintf("the cache is over --cache-max but was not collected: %v; a later run collects it", err))
		} else if err != nil {
			s.warn(fmt.Sprintf("cache collection failed: %v", err))
		}
	}
	return res
}

// SetObserver adds an observer of the next Run (e.g. a progress display).
func (s *Session) SetObserver(o engine.Observer) { s.opts.Engine.Observer = o }

// Close stops every plugin, removes their sockets and frees every segment.
func (s *Session) Close() error {
	err := s.mgr.Close()
	s.Arena.Close()
	if s.Remote != nil {
		s.Remote.Close()
	}
	if s.Executor != nil {
		s.Executor.Close()
	}
	if s.Cache != nil {
		s.Cache.Close()
	}
	return err
}
