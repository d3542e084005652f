package runner_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/pluginmgr"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/procstat"
	"github.com/pipehost/pipehost/internal/testbin"
	"github.com/pipehost/pipehost/shm"
	"github.com/pipehost/pipehost/testplugins/observe"
)

// run executes a config through real plugins and returns the session (closed)
// and result, checking that the ledger is empty and that nothing leaked:
// no plugin process, no socket, no host fd, nothing in /dev/shm.
func run(t *testing.T, body string, opts runner.Options) (*runner.Session, *engine.Result) {
	t.Helper()
	tmp := isolate(t)
	plugins := testbin.Build(t, "testplugins/go")
	fdsBefore := countFDs(t)
	shmBefore := devShm()
	opts.ConfigPath = writeConfig(t, "p.toml", body)
	opts.PluginDirs = []string{plugins}
	sess, err := runner.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if opts.Engine.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	res := sess.Run(ctx)
	if err := sess.Close(); err != nil {
		t.Fatal(err)
	}
	if live, bytes := sess.Arena.Live(); live != 0 || bytes != 0 {
		t.Errorf("ledger after the run: %d segments, %d bytes; want 0", live, bytes)
	}
	assertNothingLeft(t, plugins, tmp)
	if after := countFDs(t); after != fdsBefore {
		t.Errorf("host fds: %d before the run, %d after: %s", fdsBefore, after, fdTargets())
	}
	if after := devShm(); after != shmBefore {
		t.Errorf("/dev/shm changed: %q → %q", shmBefore, after)
	}
	return sess, res
}

func countFDs(t *testing.T) int {
	// The /proc files procstat keeps open for the process's life are
	// opened by whichever run first measures a peak: not a leak.
	procstat.Open()
	// Let finished goroutines close what they hold.
	time.Sleep(50 * time.Millisecond)
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// fdTargets lists this process's open fds and what they are, for a
// failure message.
func fdTargets() string {
	entries, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range entries {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		out = append(out, e.Name()+"→"+target)
	}
	return strings.Join(out, " ")
}

func devShm() string {
	entries, _ := os.ReadDir("/dev/shm")
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return strings.Join(names, ",")
}

func statuses(res *engine.Result) map[string]engine.Status {
	m := map[string]engine.Status{}
	for _, r := range res.Stages {
		m[r.Name] = r.Status
	}
	return m
}

func stageErr(t *testing.T, res *engine.Result, name string) string {
	t.Helper()
	for _, r := range res.Stages {
		if r.Name == name {
			if r.Err == nil {
				t.Fatalf("stage %s has no error (status %s)", name, r.Status)
			}
			return r.Err.Error()
		}
	}
	t.Fatalf("no stage %s", name)
	return ""
}

func wantAll(t *testing.T, msg string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(msg, s) {
			t.Errorf("error does not say %q:\n%s", s, msg)
		}
	}
}

const grid = "[grid]\nwidth = 64\nheight = 32\n"

func TestKeptWritableMappingFailsTheStage(t *testing.T) {
	_, res := run(t, grid+`
[stages.leaky]
kind = "bad-go.keepmap"
[stages.sink]
kind = "dummy.sink"
inputs = { in = "leaky.out" }
`, runner.Options{})
	msg := stageErr(t, res, "leaky")
	wantAll(t, msg, `stage "leaky" kept a writable mapping of its output "out"`, "stage leaky (bad-go.keepmap")
	if s := statuses(res); s["sink"] != engine.StatusSkipped {
		t.Errorf("sink ran on an unsealed input: %v", s)
	}
}

// A consumer that writes to its input dies of the fault in its own process;
// every other consumer still sees the producer's bytes.
func TestWriteToInputFaultsAndLeavesDataIntact(t *testing.T) {
	trace := filepath.Join(t.TempDir(), "trace.jsonl")
	body := grid + `
[stages.source]
kind = "dummy.source"
params = { trace = "` + trace + `" }
save = { out = "npz" }
[stages.vandal]
kind = "bad-go.writeinput"
inputs = { in = "source.out" }
[stages.reader]
kind = "dummy.sink"
inputs = { in = "source.out" }
params = { trace = "` + trace + `" }
`
	tmp := isolate(t)
	plugins := testbin.Build(t, "testplugins/go")
	sess, err := runner.Open(context.Background(), runner.Options{
		ConfigPath: writeConfig(t, "p.toml", body), PluginDirs: []string{plugins},
		Engine: engine.Options{KeepGoing: true, Jobs: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	res := sess.Run(context.Background())
	msg := stageErr(t, res, "vandal")
	wantAll(t, msg, "stage vandal (bad-go.writeinput", "plugin process ended: exit status 2", "SIGSEGV")
	if s := statuses(res); s["reader"] != engine.StatusOK {
		t.Fatalf("reader: %v", s)
	}
	// The source output is a run output (saved), still in the arena: map it
	// and compare with what the producer wrote and the reader saw.
	var src *engine.StageResult
	for _, r := range res.Stages {
		if r.Name == "source" {
			src = r
		}
	}
	out := src.Outputs["out"]
	m, err := out.Entry.Segment.MapRO()
	if err != nil {
		t.Fatal(err)
	}
	data, _ := shm.View[float32](m.Bytes())
	sum := observe.Sum(data)
	first := data[0]
	m.Unmap()
	recs := readTrace(t, trace)
	if sum != recs["source"].Outputs["out"] || sum != recs["reader"].Inputs["in"] {
		t.Errorf("segment sum %v, producer wrote %v, reader saw %v", sum, recs["source"].Outputs["out"], recs["reader"].Inputs["in"])
	}
	if first == 42 {
		t.Error("the vandal's write landed")
	}
	sess.Close()
	assertNothingLeft(t, plugins, tmp)
}

func TestCrashesAreReported(t *testing.T) {
	cases := []struct {
		kind string
		want []string
	}{
		{"bad-go.panic", []string{"stage panicked: assignment to entry in nil map"}},
		{"bad-go.exit", []string{"plugin process ended: exit status 7", "giving up with status 7"}},
		{"bad-go.segv", []string{"plugin process ended: exit status 2", "SIGSEGV", "dereferencing nil"}},
	}
	for _, tc := range cases {
		t.Run(tc.kind, func(t *testing.T) {
			trace := filepath.Join(t.TempDir(), "trace.jsonl")
			// The crash must not take the independent branch down with it.
			_, res := run(t, grid+`
[stages.bad]
kind = "`+tc.kind+`"
[stages.after]
kind = "dummy.sink"
inputs = { in = "bad.out" }
[stages.other]
kind = "dummy.source"
params = { trace = "`+trace+`" }
`, runner.Options{Engine: engine.Options{KeepGoing: true}})
			msg := stageErr(t, res, "bad")
			wantAll(t, msg, append([]string{"stage bad (" + tc.kind}, tc.want...)...)
			s := statuses(res)
			if s["bad"] != engine.StatusFailed || s["after"] != engine.StatusSkipped || s["other"] != engine.StatusOK {
				t.Errorf("statuses %v", s)
			}
		})
	}
}

func TestHangTimesOut(t *testing.T) {
	start := time.Now()
	_, res := run(t, grid+`
[stages.stuck]
kind = "bad-go.hang"
timeout = "1s"
`, runner.Options{})
	wantAll(t, stageErr(t, res, "stuck"), "stage timed out after 1s")
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("a 1 s timeout took %v to fail the run", d)
	}
}

func TestCancelledRunCleansUp(t *testing.T) {
	tmp := isolate(t)
	plugins := testbin.Build(t, "testplugins/go")
	sess, err := runner.Open(context.Background(), runner.Options{
		ConfigPath: writeConfig(t, "p.toml", grid+`
[stages.a]
kind = "probe.sleep"
params = { ms = 10000 }
[stages.b]
kind = "probe.sleep"
inputs = { in = "a.out" }
`), PluginDirs: []string{plugins}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	res := sess.Run(ctx)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancellation took %v", d)
	}
	if live, _ := sess.Arena.Live(); live != 0 {
		t.Errorf("%d segments live after cancellation", live)
	}
	sess.Close()
	s := statuses(res)
	// a was running (failed: stopped) or, on a very busy machine, not yet
	// started (skipped); b never ran.
	if (s["a"] != engine.StatusFailed && s["a"] != engine.StatusSkipped) || s["b"] != engine.StatusSkipped {
		t.Errorf("statuses %v", s)
	}
	assertNothingLeft(t, plugins, tmp)
}

func TestArrowTableZeroCopyBetweenPlugins(t *testing.T) {
	trace := filepath.Join(t.TempDir(), "trace.jsonl")
	_, res := run(t, grid+`
[stages.rows]
kind = "probe.table"
params = { rows = 5000, trace = "`+trace+`" }
[stages.sum]
kind = "probe.tablesum"
inputs = { rows = "rows.rows" }
params = { trace = "`+trace+`" }
`, runner.Options{})
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	recs := readTrace(t, trace)
	if recs["sum"].Inputs["rows"] != recs["rows"].Outputs["rows"] || recs["sum"].Extra["n"] != float64(5000) {
		t.Errorf("table consumer saw %v (%v rows), producer wrote %v", recs["sum"].Inputs["rows"], recs["sum"].Extra["n"], recs["rows"].Outputs["rows"])
	}
}

func TestMemoryBudget(t *testing.T) {
	chain := grid + `
[stages.a]
kind = "dummy.source"
[stages.b]
kind = "dummy.scale"
inputs = { in = "a.out" }
[stages.c]
kind = "dummy.scale"
inputs = { in = "b.out" }
`
	// 64×32 float32 = 8 KiB per grid: two live grids fit, a chain never
	// needs more.
	sess, res := run(t, chain, runner.Options{MemBudget: 16 << 10})
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	if peak := sess.Arena.Peak(); peak > 16<<10 {
		t.Errorf("peak %d over the budget", peak)
	}
	_, res = run(t, chain, runner.Options{MemBudget: 4 << 10})
	wantAll(t, stageErr(t, res, "a"), "stage a (dummy.source)", "more than the whole memory budget")
}

func TestPluginExitsWhenTheHostIsGone(t *testing.T) {
	isolate(t)
	plugins := testbin.Build(t, "testplugins/go")
	m, err := pluginmgr.New(pluginmgr.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	p, err := m.Launch(context.Background(), filepath.Join(plugins, "source"))
	if err != nil {
		t.Fatal(err)
	}
	// Close the host's end without a CLOSE message: the plugin sees EOF.
	p.Mailbox.Close()
	deadline := time.Now().Add(3 * time.Second)
	for !p.Exited() {
		if time.Now().After(deadline) {
			t.Fatal("plugin still running 3 s after its fd channel hit EOF")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := p.ExitStatus(); st != "exit status 3" {
		t.Errorf("exit status %q, want 3 (host gone)", st)
	}
}
