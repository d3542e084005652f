package runner_test

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/testplugins/observe"
)

// maxOverlap is the largest number of records running at one instant.
func maxOverlap(recs []observe.Record) int {
	type ev struct {
		t     int64
		delta int
	}
	var evs []ev
	for _, r := range recs {
		evs = append(evs, ev{r.StartNs, 1}, ev{r.EndNs, -1})
	}
	sort.Slice(evs, func(i, j int) bool {
		if evs[i].t != evs[j].t {
			return evs[i].t < evs[j].t
		}
		return evs[i].delta < evs[j].delta
	})
	cur, best := 0, 0
	for _, e := range evs {
		cur += e.delta
		best = max(best, cur)
	}
	return best
}

func traceList(t *testing.T, path string) []observe.Record {
	var out []observe.Record
	for _, r := range readTrace(t, path) {
		out = append(out, r)
	}
	return out
}

func wide(n int, kind, trace string, ms int) string {
	var b strings.Builder
	b.WriteString(grid)
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "[stages.w%d]\nkind = %q\nparams = { ms = %d, trace = %q }\n", i, kind, ms, trace)
	}
	return b.String()
}

func TestWideDAGRespectsJobs(t *testing.T) {
	for _, jobs := range []int{1, 3} {
		t.Run(fmt.Sprintf("jobs=%d", jobs), func(t *testing.T) {
			trace := filepath.Join(t.TempDir(), "trace.jsonl")
			_, res := run(t, wide(6, "probe.sleep", trace, 200), runner.Options{Engine: engine.Options{Jobs: jobs}})
			if err := res.Err(); err != nil {
				t.Fatal(err)
			}
			if got := maxOverlap(traceList(t, trace)); got != jobs {
				t.Errorf("at most %d stages ran at once, want exactly %d", got, jobs)
			}
		})
	}
}

func TestDiamondBranchesOverlap(t *testing.T) {
	trace := filepath.Join(t.TempDir(), "trace.jsonl")
	_, res := run(t, grid+`
[stages.top]
kind = "probe.sleep"
params = { ms = 50, trace = "`+trace+`" }
[stages.left]
kind = "probe.sleep"
inputs = { in = "top.out" }
params = { ms = 300, trace = "`+trace+`" }
[stages.right]
kind = "probe.sleep"
inputs = { in = "top.out" }
params = { ms = 300, trace = "`+trace+`" }
[stages.bottom]
kind = "probe.sleep"
inputs = { in = "left.out", in2 = "right.out" }
params = { ms = 50, trace = "`+trace+`" }
`, runner.Options{Engine: engine.Options{Jobs: 4}})
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	r := readTrace(t, trace)
	top, left, right, bottom := r["top"], r["left"], r["right"], r["bottom"]
	if !(top.EndNs <= left.StartNs && top.EndNs <= right.StartNs && left.EndNs <= bottom.StartNs && right.EndNs <= bottom.StartNs) {
		t.Errorf("dependency order violated: %+v", r)
	}
	if left.StartNs >= right.EndNs || right.StartNs >= left.EndNs {
		t.Errorf("left and right did not overlap: left %d-%d, right %d-%d", left.StartNs, left.EndNs, right.StartNs, right.EndNs)
	}
}

func TestMemoryBudgetBoundsParallelism(t *testing.T) {
	// Each stage needs one 8 KiB grid; a 16 KiB budget lets two run at once
	// even with four worker slots (their outputs live until the run ends
	// only if consumed, and these are not: each frees at its end).
	trace := filepath.Join(t.TempDir(), "trace.jsonl")
	sess, res := run(t, wide(6, "probe.sleep", trace, 200), runner.Options{MemBudget: 16 << 10, Engine: engine.Options{Jobs: 4}})
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	if got := maxOverlap(traceList(t, trace)); got != 2 {
		t.Errorf("%d stages ran at once under a budget for 2", got)
	}
	if peak := sess.Arena.Peak(); peak > 16<<10 {
		t.Errorf("arena peak %d over budget", peak)
	}
}

func TestResourceQueue(t *testing.T) {
	trace := filepath.Join(t.TempDir(), "trace.jsonl")
	_, res := run(t, wide(4, "probe.gpusleep", trace, 150), runner.Options{
		Resources: map[string]int{"gpu": 1}, Engine: engine.Options{Jobs: 4}})
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	if got := maxOverlap(traceList(t, trace)); got != 1 {
		t.Errorf("%d gpu stages ran at once on 1 gpu", got)
	}
	trace2 := filepath.Join(t.TempDir(), "trace.jsonl")
	_, res = run(t, wide(4, "probe.gpusleep", trace2, 150), runner.Options{
		Resources: map[string]int{"gpu": 2}, Engine: engine.Options{Jobs: 4}})
	if got := maxOverlap(traceList(t, trace2)); got != 2 {
		t.Errorf("%d gpu stages ran at once on 2 gpus", got)
	}
}

func TestTooFewResourcesIsAPlanError(t *testing.T) {
	isolate(t)
	_, err := runner.Open(t.Context(), runner.Options{
		ConfigPath: writeConfig(t, "p.toml", wide(1, "probe.gpusleep", "", 10)),
		PluginDirs: []string{pluginsDir(t)}, Resources: map[string]int{"gpu": 0}})
	if err == nil || !strings.Contains(err.Error(), "stage w0 (probe.gpusleep) needs 1 gpu but 0 are available (set --gpus N)") {
		t.Errorf("got %v", err)
	}
}

func TestNonConcurrentKindUsesAPool(t *testing.T) {
	trace := filepath.Join(t.TempDir(), "trace.jsonl")
	_, res := run(t, wide(4, "probe.serial", trace, 200), runner.Options{Engine: engine.Options{Jobs: 2}})
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	recs := traceList(t, trace)
	if got := maxOverlap(recs); got != 2 {
		t.Errorf("%d runs of a non-concurrent kind at once with --jobs 2", got)
	}
	// Overlapping runs must be in different processes.
	for i := range recs {
		for j := range recs {
			a, b := recs[i], recs[j]
			if i < j && a.Pid == b.Pid && a.StartNs < b.EndNs && b.StartNs < a.EndNs {
				t.Errorf("%s and %s overlapped in one process %d", a.Stage, b.Stage, a.Pid)
			}
		}
	}
}

// Same config → byte-identical outputs across runs and --jobs values.
func TestDeterministicAcrossJobs(t *testing.T) {
	body := grid + `
[run]
seed = 99
[stages.a]
kind = "dummy.source"
[stages.b]
kind = "dummy.scale"
inputs = { in = "a.out" }
[stages.c]
kind = "dummy.offset"
inputs = { in = "a.out" }
params = { delta = 0.25 }
[stages.t]
kind = "probe.table"
`
	var first map[string]string
	for _, jobs := range []int{1, 4, 1} {
		dir := t.TempDir()
		_, res := run(t, body, runner.Options{CacheDir: filepath.Join(dir, "cache"), Engine: engine.Options{Jobs: jobs}})
		if err := res.Err(); err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, r := range res.Stages {
			for port, o := range r.Outputs {
				got[r.Name+"."+port] = o.Digest.String()
			}
		}
		if first == nil {
			first = got
			if len(got) != 4 {
				t.Fatalf("digests %v", got)
			}
			continue
		}
		for k, v := range first {
			if got[k] != v {
				t.Errorf("jobs=%d: %s digest %s, first run %s", jobs, k, got[k], v)
			}
		}
	}
}
