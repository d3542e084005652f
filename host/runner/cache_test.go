package runner_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pipehost/pipehost/host/config"
	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/testbin"
	"github.com/pipehost/pipehost/testplugins/observe"
)

// executions counts, per stage, how many times the plugins really ran it.
func executions(t *testing.T, trace string) map[string]int {
	t.Helper()
	counts := map[string]int{}
	f, err := os.Open(trace)
	if os.IsNotExist(err) {
		return counts
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r observe.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		counts[r.Stage]++
	}
	return counts
}

type cachedRun struct {
	t        *testing.T
	plugins  string
	cacheDir string
	trace    string
	cfg      string
}

func newCachedRun(t *testing.T) *cachedRun {
	isolate(t)
	dir := t.TempDir()
	return &cachedRun{t: t, plugins: testbin.Build(t, "testplugins/go"), cacheDir: filepath.Join(dir, "cache"),
		trace: filepath.Join(dir, "trace.jsonl")}
}

const cachedPipeline = grid + `
[stages.source]
kind = "dummy.source"
params = { value = 1.0, trace = "%TRACE%" }
[stages.scale]
kind = "dummy.scale"
inputs = { in = "source.out" }
params = { factor = 2.0, trace = "%TRACE%" }
[stages.sink]
kind = "dummy.sink"
inputs = { in = "scale.out" }
params = { trace = "%TRACE%" }
`

func (c *cachedRun) run(body string, sets []string, refresh ...string) *engine.Result {
	c.t.Helper()
	return c.runWith(body, sets, c.plugins, engine.Options{Refresh: toSet(refresh)})
}

func toSet(names []string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	return m
}

func (c *cachedRun) runWith(body string, sets []string, plugins string, eo engine.Options) *engine.Result {
	c.t.Helper()
	var overrides []config.Override
	for _, s := range sets {
		o, err := config.ParseOverride(s)
		if err != nil {
			c.t.Fatal(err)
		}
		overrides = append(overrides, o)
	}
	var warnings []string
	sess, err := runner.Open(context.Background(), runner.Options{
		ConfigPath: writeConfig(c.t, "p.toml", strings.ReplaceAll(body, "%TRACE%", c.trace)),
		Overrides:  overrides, PluginDirs: []string{plugins}, CacheDir: c.cacheDir, Engine: eo,
		Warn: func(s string) { warnings = append(warnings, s) },
	})
	if err != nil {
		c.t.Fatal(err)
	}
	res := sess.Run(context.Background())
	sess.Close()
	if live, _ := sess.Arena.Live(); live != 0 {
		c.t.Errorf("%d segments live after the run", live)
	}
	if err := res.Err(); err != nil {
		c.t.Fatal(err)
	}
	if len(warnings) > 0 {
		c.t.Fatalf("warnings: %v", warnings)
	}
	return res
}

func cacheStatus(res *engine.Result) map[string]engine.CacheStatus {
	m := map[string]engine.CacheStatus{}
	for _, r := range res.Stages {
		m[r.Name] = r.Cache
	}
	return m
}

func missReason(res *engine.Result, stage string) string {
	for _, r := range res.Stages {
		if r.Name == stage {
			return r.MissReason
		}
	}
	return ""
}

func TestRerunIsAllHits(t *testing.T) {
	c := newCachedRun(t)
	c.run(cachedPipeline, nil)
	if n := executions(t, c.trace); n["source"] != 1 || n["scale"] != 1 || n["sink"] != 1 {
		t.Fatalf("cold run executions %v", n)
	}
	res := c.run(cachedPipeline, nil)
	if n := executions(t, c.trace); n["source"] != 1 || n["scale"] != 1 || n["sink"] != 1 {
		t.Errorf("rerun executed stages again: %v", n)
	}
	for name, st := range cacheStatus(res) {
		if st != engine.CacheHit {
			t.Errorf("stage %s: %s on rerun", name, st)
		}
	}
}

func TestChangedParamRerunsOnlyDownstream(t *testing.T) {
	c := newCachedRun(t)
	c.run(cachedPipeline, nil)
	res := c.run(cachedPipeline, []string{"scale.factor=3"})
	n := executions(t, c.trace)
	if n["source"] != 1 || n["scale"] != 2 || n["sink"] != 2 {
		t.Errorf("executions %v: want source once, scale and sink twice", n)
	}
	if r := missReason(res, "scale"); !strings.Contains(r, "params changed (factor)") {
		t.Errorf("scale miss reason %q", r)
	}
	if r := missReason(res, "sink"); !strings.Contains(r, `input "in" changed`) {
		t.Errorf("sink miss reason %q", r)
	}
	// --refresh recomputes exactly one stage; its identical output keeps
	// the rest cached.
	c.run(cachedPipeline, []string{"scale.factor=3"}, "source")
	if n := executions(t, c.trace); n["source"] != 2 || n["scale"] != 2 || n["sink"] != 2 {
		t.Errorf("after --refresh source: executions %v", n)
	}
}

func TestEarlyCutoff(t *testing.T) {
	c := newCachedRun(t)
	c.run(cachedPipeline, nil)
	// A different spelling of the same value changes nothing; a different
	// param value that yields the same bytes must still stop at the source.
	// dummy.source's output does not depend on its trace file, so giving it
	// another trace file reruns it with byte-identical output.
	other := filepath.Join(t.TempDir(), "other.jsonl")
	res := c.run(strings.Replace(cachedPipeline, `params = { value = 1.0, trace = "%TRACE%" }`, `params = { value = 1.0, trace = "`+other+`" }`, 1), nil)
	st := cacheStatus(res)
	if st["source"] != engine.CacheMiss || st["scale"] != engine.CacheHit || st["sink"] != engine.CacheHit {
		t.Errorf("statuses %v: want source miss, the rest hits", st)
	}
	if n := executions(t, other); n["source"] != 1 {
		t.Errorf("source did not rerun: %v", n)
	}
	if n := executions(t, c.trace); n["scale"] != 1 || n["sink"] != 1 {
		t.Errorf("downstream reran despite identical input: %v", n)
	}
}

func TestRebuiltPluginRerunsItsStages(t *testing.T) {
	c := newCachedRun(t)
	c.run(cachedPipeline, nil)
	// "Rebuild" the transform plugin: same code, different bytes.
	dir := testbin.Copy(t, c.plugins, "source", "transform", "sink")
	f, err := os.OpenFile(filepath.Join(dir, "transform"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("rebuilt"))
	f.Close()
	res := c.runWith(cachedPipeline, nil, dir, engine.Options{})
	st := cacheStatus(res)
	if st["source"] != engine.CacheHit || st["scale"] != engine.CacheMiss || st["sink"] != engine.CacheHit {
		t.Errorf("statuses %v: want only scale rerun (its output is identical, so sink stays a hit)", st)
	}
	if r := missReason(res, "scale"); !strings.Contains(r, "plugin binary changed") {
		t.Errorf("scale miss reason %q", r)
	}
}

func blobs(t *testing.T, cacheDir string) []string {
	var out []string
	filepath.WalkDir(filepath.Join(cacheDir, "v1", "cas"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func TestCorruptEntriesAreDetectedAndReplaced(t *testing.T) {
	for _, how := range []string{"truncate", "flip"} {
		t.Run(how, func(t *testing.T) {
			c := newCachedRun(t)
			first := c.run(cachedPipeline, nil)
			var sinkSum float64
			for _, r := range first.Stages {
				if r.Name == "sink" {
					sinkSum = r.Metrics["sum"]
				}
			}
			// Damage every stored blob.
			for _, b := range blobs(t, c.cacheDir) {
				data, _ := os.ReadFile(b)
				if how == "truncate" {
					data = data[:len(data)/2]
				} else {
					data[len(data)/3] ^= 0xff
				}
				os.WriteFile(b, data, 0o644)
			}
			// The sink must run again (new factor) and needs the bytes.
			res := c.run(cachedPipeline, []string{"sink.trace=" + c.trace + ".2"})
			_ = res
			res = c.run(cachedPipeline, []string{"scale.factor=2.0", "sink.trace=" + c.trace + ".3"})
			var got float64
			for _, r := range res.Stages {
				if r.Name == "sink" {
					got = r.Metrics["sum"]
				}
			}
			if got != sinkSum {
				t.Errorf("sink saw sum %v after the corruption, %v before", got, sinkSum)
			}
			// Every blob is whole again.
			c2 := c.run(cachedPipeline, nil)
			for name, st := range cacheStatus(c2) {
				if st != engine.CacheHit {
					t.Errorf("after repair, %s is a %s", name, st)
				}
			}
			for _, b := range blobs(t, c.cacheDir) {
				if err := verifyBlob(b); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func TestUnwritableCacheDirRunsWithoutCache(t *testing.T) {
	if os.Geteuid() == 0 {
		// root ignores permissions: use a path under a regular file instead.
	}
	isolate(t)
	plugins := testbin.Build(t, "testplugins/go")
	notADir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notADir, nil, 0o644)
	var warnings []string
	sess, err := runner.Open(context.Background(), runner.Options{
		ConfigPath: writeConfig(t, "p.toml", strings.ReplaceAll(cachedPipeline, "%TRACE%", "")),
		PluginDirs: []string{plugins}, CacheDir: filepath.Join(notADir, "cache"),
		Warn: func(s string) { warnings = append(warnings, s) },
	})
	if err != nil {
		t.Fatal(err)
	}
	res := sess.Run(context.Background())
	sess.Close()
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "running without the cache") {
		t.Errorf("warnings %q: want exactly one saying the cache is off", warnings)
	}
	for name, st := range cacheStatus(res) {
		if st != engine.CacheOff {
			t.Errorf("%s: cache %s", name, st)
		}
	}
}

func TestConcurrentRunsShareOneCache(t *testing.T) {
	c := newCachedRun(t)
	body := grid + `
[stages.slow]
kind = "probe.sleep"
params = { ms = 600, trace = "%TRACE%" }
[stages.sink]
kind = "dummy.sink"
inputs = { in = "slow.out" }
params = { trace = "%TRACE%" }
`
	var wg sync.WaitGroup
	results := make([]*engine.Result, 3)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.run(body, nil)
		}()
	}
	wg.Wait()
	if n := executions(t, c.trace); n["slow"] != 1 || n["sink"] != 1 {
		t.Errorf("three concurrent runs executed %v; want each stage once", n)
	}
	hits := 0
	for _, r := range results {
		if cacheStatus(r)["slow"] == engine.CacheHit {
			hits++
		}
	}
	if hits != 2 {
		t.Errorf("%d runs got slow from the cache, want 2", hits)
	}
}

func verifyBlob(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if d := cacheDigest(data); d != filepath.Base(path) {
		return &blobError{path}
	}
	return nil
}

type blobError struct{ path string }

func (e *blobError) Error() string { return "blob " + e.path + " does not match its name" }

// A stage recomputed because its cache entry turned out corrupt is admitted
// like any other: with one gpu it never runs beside another gpu stage.
func TestRecomputeRespectsResources(t *testing.T) {
	c := newCachedRun(t)
	body := grid + `
[stages.g1]
kind = "probe.gpusleep"
params = { ms = 300, trace = "%TRACE%" }
[stages.use]
kind = "probe.sleep"
inputs = { in = "g1.out" }
params = { ms = 1, trace = "%TRACE%" }
[stages.g2]
kind = "probe.gpusleep"
params = { ms = 300, trace = "%TRACE%" }
`
	run := func(sets []string, refresh ...string) *engine.Result {
		t.Helper()
		var overrides []config.Override
		for _, s := range sets {
			o, err := config.ParseOverride(s)
			if err != nil {
				t.Fatal(err)
			}
			overrides = append(overrides, o)
		}
		sess, err := runner.Open(context.Background(), runner.Options{
			ConfigPath: writeConfig(t, "p.toml", strings.ReplaceAll(body, "%TRACE%", c.trace)),
			Overrides:  overrides, PluginDirs: []string{c.plugins}, CacheDir: c.cacheDir,
			Resources: map[string]int{"gpu": 1},
			Engine:    engine.Options{Jobs: 4, Refresh: toSet(refresh)},
		})
		if err != nil {
			t.Fatal(err)
		}
		res := sess.Run(context.Background())
		sess.Close()
		if err := res.Err(); err != nil {
			t.Fatal(err)
		}
		return res
	}
	run(nil)
	for _, b := range blobs(t, c.cacheDir) {
		data, _ := os.ReadFile(b)
		data[len(data)/3] ^= 0xff
		os.WriteFile(b, data, 0o644)
	}
	os.Remove(c.trace)
	// use runs again (new param) and needs g1's bytes: g1 is recomputed,
	// while g2 is refreshed; both hold the only gpu.
	res := run([]string{"use.ms=2"}, "g2")
	if st := cacheStatus(res); st["g1"] != engine.CacheMiss || missReason(res, "g1") != "its cache entry was corrupt" {
		t.Fatalf("g1 was not recomputed: %v (%q)", st, missReason(res, "g1"))
	}
	var gpu []observe.Record
	for _, r := range traceList(t, c.trace) {
		if r.Kind == "probe.gpusleep" {
			gpu = append(gpu, r)
		}
	}
	if len(gpu) != 2 {
		t.Fatalf("%d gpu stage runs, want 2 (g1 recomputed, g2 refreshed): %+v", len(gpu), gpu)
	}
	if got := maxOverlap(gpu); got != 1 {
		t.Errorf("%d gpu stages ran at once on 1 gpu: %+v", got, gpu)
	}
}

// With outputs large enough to be digested in the background, consumers
// start before their key is known. Early cutoff must stay exact through
// real plugins whatever the timing: a consumer whose inputs turn out
// identical to a cached run's is a hit, and so are its own consumers.
// Which way it gets there depends on when the digest lands: before the
// consumer starts (a plain hit), while it runs (stopped and served from
// the cache) or after it finished (its identical bytes make it a hit).
// The cases make one way likely (the engine's tests pin each for certain);
// the outcome and the executions must agree with the way reported.
func TestEarlyCutoffWhileInputsAreDigested(t *testing.T) {
	const (
		stopped  = "stopped and served from the cache"
		finished = "only after it had finished"
	)
	for _, tc := range []struct {
		name          string
		width, height int
		ms            int
	}{
		// A 32 MiB input takes tens of ms to digest; slow sleeps 5 s.
		{"likely stopped", 4096, 2048, 5000},
		// A 256 MiB input; slow returns at once.
		{"likely finished first", 8192, 8192, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCachedRun(t)
			body := fmt.Sprintf(`[grid]
width = %d
height = %d
[stages.source]
kind = "dummy.source"
params = { value = 1.0, trace = "%%TRACE%%" }
[stages.slow]
kind = "probe.sleep"
inputs = { in = "source.out" }
params = { ms = %d, trace = "%%TRACE%%" }
[stages.sink]
kind = "dummy.sink"
inputs = { in = "slow.out" }
params = { trace = "%%TRACE%%" }
`, tc.width, tc.height, tc.ms)
			c.run(body, nil)
			other := filepath.Join(t.TempDir(), "other.jsonl")
			res := c.run(strings.Replace(body, `params = { value = 1.0, trace = "%TRACE%" }`, `params = { value = 1.0, trace = "`+other+`" }`, 1), nil)
			st := cacheStatus(res)
			if st["source"] != engine.CacheMiss || st["slow"] != engine.CacheHit || st["sink"] != engine.CacheHit {
				t.Fatalf("statuses %v: want source miss, the rest hits", st)
			}
			// The trace holds the executions whose stage function
			// completed, in both runs: one in the first; in the second,
			// none for a plain hit, one for a stage that finished before
			// its key was known, and none or one for a stage that was
			// stopped (its function may have returned just before the stop
			// reached the call; its Result is then dropped all the same).
			n := executions(t, c.trace)
			notes := map[string]string{}
			for _, r := range res.Stages {
				if r.Name != "slow" && r.Name != "sink" {
					continue
				}
				notes[r.Name] = r.Note
				low, high := 1, 1
				switch {
				case strings.Contains(r.Note, finished):
					low, high = 2, 2
				case strings.Contains(r.Note, stopped):
					high = 2
				case r.Note == "":
				default:
					t.Fatalf("%s's note %q is none of the early-cutoff outcomes", r.Name, r.Note)
				}
				if n[r.Name] < low || n[r.Name] > high {
					t.Errorf("%s's function completed %d time(s) in both runs with the note %q; want %d to %d", r.Name, n[r.Name], r.Note, low, high)
				}
			}
			if tc.ms > 0 && n["slow"] != 1 {
				// slow sleeps 5 s: stopped or served, it never completes twice.
				t.Errorf("slow completed %d time(s); its 5 s sleep must have been cut off", n["slow"])
			}
			t.Logf("notes %q, completed executions %v", notes, n)
		})
	}
}
