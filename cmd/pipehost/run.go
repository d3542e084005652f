package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/config"
	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/units"
)

// commonFlags are shared by every command that loads a config.
type commonFlags struct {
	pluginDirs   listFlag
	sets         listFlag
	startTimeout time.Duration
	cacheDir     string
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.Var(&c.pluginDirs, "plugin-dir", "directory of plugin executables (repeatable; searched before $PIPEHOST_PLUGIN_PATH and plugins/ beside pipehost)")
	fs.Var(&c.sets, "set", "override a stage param: stage.param=value (repeatable)")
	fs.DurationVar(&c.startTimeout, "plugin-timeout", 10*time.Second, "how long a plugin may take to start and describe itself")
	fs.StringVar(&c.cacheDir, "cache-dir", cache.DefaultDir(), "cache directory: stage outputs, and plugin descriptors (kept even with --no-cache)")
}

// parseConfigArgs parses a command that takes exactly one CONFIG argument
// and builds its options; ok is false when the command must exit with code.
func (c *commonFlags) parseConfigArgs(fs *flag.FlagSet, args []string, stderr io.Writer) (opts runner.Options, code int, ok bool) {
	pos, err := parse(fs, args)
	if err != nil {
		return opts, flagExit(err), false
	}
	if len(pos) != 1 {
		fs.Usage()
		return opts, exitUsage, false
	}
	opts, err = c.options(pos[0])
	if err != nil {
		return opts, report(stderr, err), false
	}
	opts.Warn = func(msg string) { fmt.Fprintln(stderr, "pipehost:", msg) }
	return opts, 0, true
}

func (c *commonFlags) options(configPath string) (runner.Options, error) {
	var overrides []config.Override
	for _, s := range c.sets {
		o, err := config.ParseOverride(s)
		if err != nil {
			return runner.Options{}, &runner.SetupError{Err: err}
		}
		overrides = append(overrides, o)
	}
	return runner.Options{
		ConfigPath:   configPath,
		Overrides:    overrides,
		PluginDirs:   c.pluginDirs,
		StartTimeout: c.startTimeout,
		// Descriptors are keyed by binary content, so they are used even
		// with --no-cache: they never change a result, only what is launched.
		PluginCacheDir: c.cacheDir,
	}, nil
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("run", "CONFIG [flags]", stderr)
	var common commonFlags
	common.register(fs)
	out := fs.String("out", "", "output directory (default: the config's output.dir, relative to the config file, else out/ beside it)")
	quiet := fs.Bool("quiet", false, "print nothing but errors")
	noPrefault := fs.Bool("no-prefault", false, "do not allocate and prefault a stage's outputs while its inputs are computed")
	jobs := fs.Int("jobs", runtime.NumCPU(), "stages run at once")
	keepGoing := fs.Bool("keep-going", false, "after a stage fails, finish the branches that do not depend on it")
	timeout := fs.Duration("timeout", 0, "default per-stage timeout (0: none; the config's run.timeout and stage timeouts take precedence)")
	var budget byteSize
	var refresh, resources listFlag
	gpus := fs.Int("gpus", -1, "GPUs stages may use at once (default: detected)")
	fs.Var(&resources, "resource", "capacity of a named resource: name=N (repeatable)")
	noCache := fs.Bool("no-cache", false, "neither read nor write the stage cache")
	remoteCache := fs.String("remote-cache", "", "shared REAPI cache behind the local one, grpc://HOST:PORT (also remote.cache in the config); a server that cannot be reached costs one warning")
	remoteExecutor := fs.String("remote-executor", "", "REAPI executor for the stages the config marks remote (remote.kinds, a stage's remote = true), grpc://HOST:PORT (also remote.executor in the config)")
	remoteFallback := fs.String("remote-fallback", "", "when the remote executor cannot be reached: error (fail, the default) or local (run those stages here, with one warning); also remote.fallback")
	stageRunner := fs.String("stage-runner", "", "pipehost-stage binary shipped in every remote action (default: the one beside pipehost, else on PATH)")
	updateLock := fs.Bool("update-lock", false, "accept the installed plugin binaries and rewrite pipehost.lock beside the config, instead of refusing ones that differ from it")
	traceMarkers := fs.Bool("trace-markers", false, "write every stage and subtask to tracefs trace_marker for perf, trace-cmd and Perfetto (also output.trace_markers)")
	fs.Var(&refresh, "refresh", "recompute this stage even if cached (repeatable)")
	cacheMax := byteSize(10 << 30)
	fs.Var(&cacheMax, "cache-max", "collect the cache down to this size after a run, least recently used first (0: no limit)")
	fs.Var(&budget, "mem-budget", "bound on live shared-memory bytes, e.g. 4GiB (0: unlimited); a stage starts only when its outputs fit")
	opts, code, ok := common.parseConfigArgs(fs, args, stderr)
	if !ok {
		return code
	}
	opts.Engine = engine.Options{Jobs: *jobs, KeepGoing: *keepGoing, Timeout: *timeout, NoPrefault: *noPrefault}
	opts.MemBudget = int64(budget)
	opts.CacheDir, opts.CacheMax = common.cacheDir, int64(cacheMax)
	opts.RemoteCache = *remoteCache
	opts.RemoteExecutor, opts.RemoteFallback, opts.StageRunner = *remoteExecutor, *remoteFallback, *stageRunner
	if *noCache {
		opts.CacheDir = ""
	}
	opts.Resources = map[string]int{}
	if *gpus >= 0 {
		opts.Resources["gpu"] = *gpus
	}
	for _, r := range resources {
		name, n, ok := strings.Cut(r, "=")
		v, err := strconv.Atoi(n)
		if !ok || name == "" || err != nil || v < 0 {
			return report(stderr, &runner.SetupError{Err: fmt.Errorf("--resource %q: expected name=N", r)})
		}
		opts.Resources[name] = v
	}
	opts.Engine.Refresh = map[string]bool{}
	for _, r := range refresh {
		opts.Engine.Refresh[r] = true
	}
	opts.OutDir, opts.Version = *out, version
	opts.TraceMarkers = *traceMarkers
	opts.UpdateLock = *updateLock

	ctx, stop := signalContext()
	defer stop()
	sess, err := runner.Open(ctx, opts)
	if err != nil {
		return report(stderr, err)
	}
	defer sess.Close()
	for name := range opts.Engine.Refresh {
		if sess.Plan.Node(name) == nil {
			return report(stderr, &runner.SetupError{Err: fmt.Errorf("--refresh %s: no such stage in %s", name, opts.ConfigPath)})
		}
	}
	var prog *progress
	if !*quiet {
		prog = newProgress(stdout, len(sess.Plan.Nodes))
		sess.SetObserver(prog)
	}
	res := sess.Run(ctx)
	if prog != nil {
		prog.close()
		hits := 0
		for _, r := range res.Stages {
			if r.Cache == engine.CacheHit {
				hits++
			}
		}
		fmt.Fprintf(stdout, "%d stages, %d from the cache, %d datasets; summary %s\n", len(res.Stages), hits, len(sess.Artifacts), sess.Reports.Summary)
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "pipehost: run stopped:", context.Cause(ctx))
		return exitFailed
	}
	if err := res.Err(); err != nil {
		fmt.Fprintln(stderr, "pipehost:", err)
		return exitFailed
	}
	if len(sess.RunErrors) > 0 {
		for _, err := range sess.RunErrors {
			fmt.Fprintln(stderr, "pipehost:", err)
		}
		return exitFailed
	}
	return exitOK
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("validate", "CONFIG [flags]", stderr)
	var common commonFlags
	common.register(fs)
	opts, code, ok := common.parseConfigArgs(fs, args, stderr)
	if !ok {
		return code
	}
	ctx, stop := signalContext()
	defer stop()
	sess, err := runner.Open(ctx, opts)
	if err != nil {
		return report(stderr, err)
	}
	defer sess.Close()
	edges := 0
	for _, n := range sess.Plan.Nodes {
		edges += len(n.Inputs)
	}
	fmt.Fprintf(stdout, "%s: ok (%d stages, %d edges)\n", opts.ConfigPath, len(sess.Plan.Nodes), edges)
	return exitOK
}

// cmdLock writes pipehost.lock beside the config: the digest of every plugin
// binary the plan uses. Runs then refuse a binary that differs.
func cmdLock(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("lock", "CONFIG [flags]", stderr)
	var common commonFlags
	common.register(fs)
	opts, code, ok := common.parseConfigArgs(fs, args, stderr)
	if !ok {
		return code
	}
	opts.UpdateLock = true
	opts.Warn = func(string) {}
	ctx, stop := signalContext()
	defer stop()
	sess, err := runner.Open(ctx, opts)
	if err != nil {
		return report(stderr, err)
	}
	defer sess.Close()
	l, err := runner.ReadLock(runner.LockPath(opts.ConfigPath))
	if err != nil || l == nil {
		return report(stderr, fmt.Errorf("the lock file was not written: %v", err))
	}
	fmt.Fprintf(stdout, "%s: %d plugin(s) locked\n", l.Path, len(l.Plugins))
	return exitOK
}

// byteSize is a size flag: 512MiB, 4GiB, 1.5G or a number of bytes.
type byteSize int64

func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

func (b *byteSize) Set(s string) error {
	n, err := units.ParseBytes(s)
	*b = byteSize(n)
	return err
}
