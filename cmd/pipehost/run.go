package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/pipehost/pipehost/host/config"
	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/runner"
)

// commonFlags are shared by every command that loads a config.
type commonFlags struct {
	pluginDirs   listFlag
	sets         listFlag
	startTimeout time.Duration
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.Var(&c.pluginDirs, "plugin-dir", "directory of plugin executables (repeatable; searched before $PIPEHOST_PLUGIN_PATH and plugins/ beside pipehost)")
	fs.Var(&c.sets, "set", "override a stage param: stage.param=value (repeatable)")
	fs.DurationVar(&c.startTimeout, "plugin-timeout", 10*time.Second, "how long a plugin may take to start and describe itself")
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
	}, nil
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("run", "CONFIG [flags]", stderr)
	var common commonFlags
	common.register(fs)
	out := fs.String("out", "", "output directory (default: the config's output.dir, else out)")
	jobs := fs.Int("jobs", runtime.NumCPU(), "stages run at once")
	keepGoing := fs.Bool("keep-going", false, "after a stage fails, finish the branches that do not depend on it")
	timeout := fs.Duration("timeout", 0, "default per-stage timeout (0: none; the config's run.timeout and stage timeouts take precedence)")
	pos, err := parse(fs, args)
	if err != nil {
		return flagExit(err)
	}
	if len(pos) != 1 {
		fs.Usage()
		return exitUsage
	}
	opts, err := common.options(pos[0])
	if err != nil {
		return report(stderr, err)
	}
	opts.Engine = engine.Options{Jobs: *jobs, KeepGoing: *keepGoing, Timeout: *timeout}
	_ = out

	ctx, stop := signalContext()
	defer stop()
	sess, err := runner.Open(ctx, opts)
	if err != nil {
		return report(stderr, err)
	}
	defer sess.Close()
	res := sess.Run(ctx)
	for _, r := range res.Stages {
		status := string(r.Status)
		fmt.Fprintf(stdout, "%-20s %-16s %-8s %8.1f ms\n", r.Name, r.Kind, status, float64(r.EndNs-r.StartNs)/1e6)
	}
	if err := res.Err(); err != nil {
		fmt.Fprintln(stderr, "pipehost:", err)
		return exitFailed
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "pipehost: run stopped:", context.Cause(ctx))
		return exitFailed
	}
	return exitOK
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("validate", "CONFIG [flags]", stderr)
	var common commonFlags
	common.register(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return flagExit(err)
	}
	if len(pos) != 1 {
		fs.Usage()
		return exitUsage
	}
	opts, err := common.options(pos[0])
	if err != nil {
		return report(stderr, err)
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
	fmt.Fprintf(stdout, "%s: ok (%d stages, %d edges)\n", pos[0], len(sess.Plan.Nodes), edges)
	return exitOK
}
