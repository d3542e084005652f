package runner

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/pipehost/pipehost/host/config"
	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/remote"
)

// openExecutor connects to the remote executor when the plan has remote
// stages. An executor that cannot be reached is a setup error naming the
// stages and the endpoint, or, with remote.fallback = "local", one warning
// and a run with every stage local.
func openExecutor(ctx context.Context, opts Options, p *plan.Plan) (*engine.RemoteExec, error) {
	stages := p.RemoteStages()
	if len(stages) == 0 {
		return nil, nil
	}
	rc := p.Config.Remote
	target := opts.RemoteExecutor
	if target == "" {
		target = rc.Executor
	}
	fallback := opts.RemoteFallback
	if fallback == "" {
		fallback = rc.Fallback
	}
	switch fallback {
	case "":
		fallback = config.FallbackError
	case config.FallbackError, config.FallbackLocal:
	default:
		return nil, &SetupError{fmt.Errorf("remote fallback %q: use %q or %q", fallback, config.FallbackError, config.FallbackLocal)}
	}
	names := stageList(stages)
	if target == "" {
		pos, key := p.RemotePos(stages[0])
		return nil, &SetupError{&config.Error{Pos: pos, Key: key, Msg: fmt.Sprintf(
			"%s set to run on a remote executor, but none is configured: set remote.executor = \"grpc://HOST:PORT\" or pass --remote-executor", names)}}
	}
	runner, err := stageRunner(opts.StageRunner)
	if err != nil {
		return nil, &SetupError{err}
	}
	c, err := remote.Dial(ctx, target, remote.Options{})
	if err == nil && !c.CanExecute() {
		c.Close()
		c, err = nil, fmt.Errorf("remote %s: %w: it runs no actions (no Execution service for SHA-256 digests)", target, remote.ErrUnsupported)
	}
	if err != nil {
		if fallback == config.FallbackLocal {
			if opts.Warn != nil {
				opts.Warn(fmt.Sprintf("remote executor unusable, running %s locally (remote.fallback = \"local\"): %v", names, err))
			}
			return engine.NewRemoteExec(target, nil, runner, fallback, opts.Warn), nil
		}
		return nil, &SetupError{fmt.Errorf("%s set to run on the remote executor %s, which cannot be used: %v\n  start the executor, or set remote.fallback = \"local\" (--remote-fallback local) to run them here when it is down", names, target, err)}
	}
	return engine.NewRemoteExec(target, c, runner, fallback, opts.Warn), nil
}

// stageList names remote stages for a message: "stage erode (terrain.erode) is".
func stageList(ns []*plan.Node) string {
	var parts []string
	for _, n := range ns {
		parts = append(parts, fmt.Sprintf("%s (%s)", n.Name, n.Kind))
	}
	if len(parts) == 1 {
		return "stage " + parts[0] + " is"
	}
	return "stages " + strings.Join(parts, ", ") + " are"
}

// stageRunner finds pipehost-stage: the path given, else beside this
// executable, else on PATH.
func stageRunner(given string) (string, error) {
	if given != "" {
		if _, err := os.Stat(given); err != nil {
			return "", fmt.Errorf("the stage runner for remote stages: %w", err)
		}
		return filepath.Abs(given)
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "pipehost-stage")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("pipehost-stage"); err == nil {
		return filepath.Abs(p)
	}
	return "", fmt.Errorf("remote stages need pipehost-stage, the stage runner shipped with pipehost: it is neither beside this executable nor on PATH (build it with make build, or pass --stage-runner)")
}
