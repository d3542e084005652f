package runner_test

// C++ tests with no Rust twin, through minimal-cpp: per-stage peak RSS and
// concurrent runs in one plugin process. The shared machinery and the tests
// run for every native language are in native_test.go.

import (
	"strings"
	"testing"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/runner"
)

// The peak RSS a C++ stage reports is its own: a 200 MiB spike shows in the
// stage that made it and not in the stages after it.
func TestCppPeakRSSIsPerStage(t *testing.T) {
	r := runNative(t, grid+`
[stages.spike]
kind = "minimal-cpp.alloc"
params = { mb = 200 }
[stages.quiet1]
kind = "minimal-cpp.noop"
[stages.quiet2]
kind = "minimal-cpp.noop"
`, runner.Options{Engine: engine.Options{Jobs: 1}}, nativeDirs(t, "cpp"))
	if err := r.res.Err(); err != nil {
		t.Fatal(err)
	}
	spike := r.stage("spike").Stats
	if spike.GetPeakRssBytes() < 200<<20 || spike.GetPeakShared() {
		t.Errorf("spike: peak %d MiB (shared %v), want ≥ 200 MiB", spike.GetPeakRssBytes()>>20, spike.GetPeakShared())
	}
	for _, name := range []string{"quiet1", "quiet2"} {
		if st := r.stage(name).Stats; st.GetPeakRssBytes() == 0 || st.GetPeakRssBytes() > 100<<20 {
			t.Errorf("%s after a 200 MiB spike: peak %d MiB", name, st.GetPeakRssBytes()>>20)
		}
	}
	if spike.GetCpuNs() == 0 {
		t.Error("spike: no CPU time")
	}
}

// Concurrent runs share one C++ process: four 400 ms stages overlap and
// each says its peak covers another run; a run that times out fails alone.
func TestCppConcurrentRunsInOneProcess(t *testing.T) {
	body := grid
	for _, s := range []string{"a", "b", "c", "d"} {
		body += "[stages." + s + "]\nkind = \"minimal-cpp.sleep\"\nparams = { ms = 400 }\n"
	}
	body += "[stages.late]\nkind = \"minimal-cpp.sleep\"\nparams = { ms = 5000 }\ntimeout = \"1s\"\n"
	r := runNative(t, body, runner.Options{Engine: engine.Options{Jobs: 5, KeepGoing: true}}, nativeDirs(t, "cpp"))
	wantAll(t, stageErr(t, r.res, "late"), "stage late (minimal-cpp.sleep", "stage timed out after 1s")
	pids := map[int]bool{}
	for _, s := range []string{"a", "b", "c", "d"} {
		st := r.stage(s)
		if st.Status != engine.StatusOK {
			t.Fatalf("%s: %v", s, st.Err)
		}
		if !st.Stats.GetPeakShared() {
			t.Errorf("%s: peak_shared is false though four runs overlapped", s)
		}
	}
	for _, p := range r.sess.Plugins {
		if p.SDK == "cpp" && strings.HasSuffix(p.Path, "minimal-cpp") {
			pids[p.Pid] = true
		}
	}
	if len(pids) != 1 {
		t.Errorf("minimal-cpp processes: %v", pids)
	}
	// They ran side by side: some instant lies inside all four runs
	// (plugin-side clocks, so load on the machine cannot fake it).
	var latestStart, earliestEnd int64 = 0, 1<<63 - 1
	for _, s := range []string{"a", "b", "c", "d"} {
		st := r.stage(s).Stats
		latestStart, earliestEnd = max(latestStart, st.GetStartNs()), min(earliestEnd, st.GetEndNs())
	}
	if latestStart >= earliestEnd {
		t.Errorf("the four runs never all overlapped (latest start %d, earliest end %d)", latestStart, earliestEnd)
	}
}
