package runner_test

// Python tests with no C++ or Rust twin: what only a Python stage can do
// wrong (keep a numpy view of its output, raise an exception, print before
// the SDK is imported). The tests run for every native language, Python
// included, are in native_test.go.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/testbin"
)

// A numpy view of an output kept past the stage would be a writable mapping
// at hand-off: the SDK refuses to send the Result, naming the output, and
// the consumer never runs.
func TestPythonKeptViewFailsTheStage(t *testing.T) {
	r := runNative(t, grid+`
[stages.keeper]
kind = "bad-py.keepview"
[stages.sink]
kind = "dummy.sink"
inputs = { in = "keeper.out" }
`, runner.Options{}, nativeDirs(t, "py"))
	wantAll(t, stageErr(t, r.res, "keeper"), "stage keeper (bad-py.keepview",
		"the stage kept a reference to its output 'out' after returning", ".copy()")
	if s := statuses(r.res); s["keeper"] != engine.StatusFailed || s["sink"] != engine.StatusSkipped {
		t.Errorf("statuses %v", s)
	}
}

// An exception in a Python stage fails that stage with the exception and
// where it was raised; the plugin process lives on and runs the next stage.
func TestPythonExceptionFailsTheStageNotThePlugin(t *testing.T) {
	r := runNative(t, grid+`
[stages.buggy]
kind = "bad-py.raise"
params = { what = "missing" }
[stages.after]
kind = "probe-py.blob"
params = { n = 4096 }
[stages.sum]
kind = "probe-py.blobsum"
inputs = { in = "after.out" }
`, runner.Options{Engine: engine.Options{KeepGoing: true, Jobs: 1}}, nativeDirs(t, "py"))
	wantAll(t, stageErr(t, r.res, "buggy"), "stage buggy (bad-py.raise", "stage raised KeyError: 'missing'",
		"misbehave_py.py:")
	if s := statuses(r.res); s["buggy"] != engine.StatusFailed || s["after"] != engine.StatusOK || s["sum"] != engine.StatusOK {
		t.Fatalf("statuses %v", s)
	}
	if m := r.stage("sum").Metrics; m["n"] != 4096 {
		t.Errorf("blob read back: %v", m)
	}
	pids := map[int]bool{}
	for _, p := range r.sess.Plugins {
		if strings.HasSuffix(p.Path, "misbehave-py") && p.Pid != 0 {
			pids[p.Pid] = true
		}
	}
	if len(pids) != 1 {
		t.Errorf("misbehave-py processes: %v, want one that survived the exception", pids)
	}
}

// A Python plugin that prints (and flushes) before importing the SDK puts
// garbage where the handshake belongs: the host refuses it with one error
// naming it, and nothing is left running.
func TestPythonGarbageOnStdout(t *testing.T) {
	garbage := filepath.Join(testbin.ModuleRoot(), "bin", "badplugins", "garbage-py")
	b, err := os.ReadFile(garbage)
	if err != nil {
		if os.Getenv("PIPEHOST_REQUIRE_NATIVE") == "1" {
			t.Fatalf("Python plugin missing (run make build-python): %v", err)
		}
		t.Skipf("Python plugin missing (run make build-python): %v", err)
	}
	tmp := isolate(t)
	dir := testbin.Copy(t, testbin.Build(t, "testplugins/go"), "source", "transform", "sink")
	if err := os.WriteFile(filepath.Join(dir, "garbage-py"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, "p.toml", strings.ReplaceAll(threeStages, "%TRACE%", ""))
	start := time.Now()
	_, err = runner.Open(context.Background(), runner.Options{
		ConfigPath: cfg, PluginDirs: []string{dir}, StartTimeout: 5 * time.Second,
	})
	var se *runner.SetupError
	if !errors.As(err, &se) {
		t.Fatalf("want a setup error, got %v", err)
	}
	msg := err.Error()
	wantAll(t, msg, filepath.Join(dir, "garbage-py"), "not a go-plugin handshake", "loading my model")
	if strings.Count(msg, "plugin /") != 1 {
		t.Errorf("want exactly one plugin error:\n%s", msg)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("failing took %v", d)
	}
	assertNothingLeft(t, dir, tmp)
}
