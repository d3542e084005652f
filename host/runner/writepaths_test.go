package runner_test

// Every way a stage can keep write access to its output after returning
// fails that stage when its Result arrives (docs/protocol.md, "Hand-off"),
// through real plugin processes and 2 MiB outputs, with the cache on and the
// output saved: no consumer runs on the bytes, no cache entry and no dataset
// exist for them, and nothing is leaked, the process that kept the mapping
// included. A control branch in the same run shows that each of those
// checks would see an entry, a dataset or a consumer if there were one.

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/testbin"
	"github.com/pipehost/pipehost/shm"
	"golang.org/x/sys/unix"
)

// bigGrid is 1024×512 float32 cells: 2 MiB per grid output.
const (
	bigW, bigH = 1024, 512
	bigGrid    = "[grid]\nwidth = 1024\nheight = 512\n"
	bigBytes   = bigW * bigH * 4
)

// writePathRun is one run of a stage that keeps write access to its output
// ("leaky"), a consumer of that output ("sink"), and an independent control
// stage ("good") whose output is cached and saved.
type writePathRun struct {
	t        *testing.T
	sess     *runner.Session
	res      *engine.Result
	cacheDir string
	outDir   string
	trace    string
	note     string
}

// writePathConfig wires leaky (kind, with params in which %NOTE% stands for
// the note file) to a recording sink and adds the control branch; both grid
// outputs are saved as NPZ.
func writePathConfig(kind, params, trace, note string) string {
	return bigGrid + `
[stages.leaky]
kind = "` + kind + `"
params = { ` + strings.ReplaceAll(params, "%NOTE%", note) + ` }
save = { out = "npz" }
[stages.sink]
kind = "dummy.sink"
inputs = { in = "leaky.out" }
params = { trace = "` + trace + `" }
[stages.good]
kind = "dummy.source"
params = { trace = "` + trace + `" }
save = { out = "npz" }
[stages.goodsink]
kind = "dummy.sink"
inputs = { in = "good.out" }
params = { trace = "` + trace + `" }
`
}

// runWritePath runs a write-path config with the cache on, in a fresh
// cache and output directory. Before the session closes (which stops the
// plugins) it waits until the note says every late write happened; after,
// it checks that nothing is left: no segment in the ledger, no plugin or
// helper process, no socket, no host fd, nothing new in /dev/shm.
func runWritePath(t *testing.T, kind, params string, dirs []string, lateWrites int) *writePathRun {
	t.Helper()
	tmp := isolate(t)
	work := t.TempDir()
	r := &writePathRun{t: t, cacheDir: filepath.Join(work, "cache"), outDir: filepath.Join(work, "out"),
		trace: filepath.Join(work, "trace.jsonl"), note: filepath.Join(work, "note.txt")}
	fdsBefore := countFDs(t)
	shmBefore := devShm()
	sess, err := runner.Open(context.Background(), runner.Options{
		ConfigPath: writeConfig(t, "p.toml", writePathConfig(kind, params, r.trace, r.note)),
		PluginDirs: dirs, CacheDir: r.cacheDir, OutDir: r.outDir,
		Engine: engine.Options{KeepGoing: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.sess = sess
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r.res = sess.Run(ctx)
	if lateWrites > 0 {
		r.waitForNote("wrote after the stage returned", lateWrites)
	}
	helpers := r.helperPids()
	if err := sess.Close(); err != nil {
		t.Fatal(err)
	}
	if live, n := sess.Arena.Live(); live != 0 || n != 0 {
		t.Errorf("ledger after the run: %d segments, %d bytes; want 0", live, n)
	}
	for _, d := range dirs {
		assertNothingLeft(t, d, tmp)
	}
	for _, pid := range helpers {
		waitGone(t, pid)
	}
	if after := countFDs(t); after != fdsBefore {
		t.Errorf("host fds: %d before the run, %d after: %s", fdsBefore, after, fdTargets())
	}
	if after := devShm(); after != shmBefore {
		t.Errorf("/dev/shm changed: %q → %q", shmBefore, after)
	}
	return r
}

func (r *writePathRun) noteText() string {
	b, _ := os.ReadFile(r.note)
	return string(b)
}

// waitForNote waits until line appears n times in the note (the late
// writes come a moment after the stage returned).
func (r *writePathRun) waitForNote(line string, n int) {
	r.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(r.noteText(), line) < n {
		if time.Now().After(deadline) {
			r.t.Fatalf("want %d× %q in the stage's note, have:\n%s", n, line, r.noteText())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var helperLine = regexp.MustCompile(`(?m)^(?:helper|child) (\d+) mapped`)

// helperPids are the processes the stage started, as they noted themselves.
func (r *writePathRun) helperPids() []int {
	var pids []int
	for _, m := range helperLine.FindAllStringSubmatch(r.noteText(), -1) {
		pid, _ := strconv.Atoi(m[1])
		pids = append(pids, pid)
	}
	return pids
}

// waitGone waits until pid no longer runs (gone, or a zombie: its mappings
// are gone with it).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return
		}
		// pid (comm) state ...: the state follows the last ')'.
		if s := string(stat); strings.HasPrefix(s[strings.LastIndexByte(s, ')')+1:], " Z") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d, started by the stage, still runs after the session closed: %s", pid, stat)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkRefused checks everything the hand-off promises for a stage whose
// output could not be sealed, and that the control branch did get through.
func (r *writePathRun) checkRefused() {
	t := r.t
	t.Helper()
	var leaky *engine.StageResult
	for _, s := range r.res.Stages {
		if s.Name == "leaky" {
			leaky = s
		}
	}
	if leaky == nil || leaky.Status != engine.StatusFailed {
		t.Fatalf("leaky: %+v; want it failed (note:\n%s)", leaky, r.noteText())
	}
	// The stage fails naming itself and the output. (The engine passes the
	// arena's WritableMappingError on as text, so the text is what counts.)
	wantAll(t, leaky.Err.Error(), "stage leaky (", `output "out": stage "leaky" kept a writable mapping of its output "out"`,
		"a writable shared mapping of the segment still exists")
	// No consumer ran on those bytes; the control's consumer did.
	s := statuses(r.res)
	if s["sink"] != engine.StatusSkipped || s["good"] != engine.StatusOK || s["goodsink"] != engine.StatusOK {
		t.Errorf("statuses %v", s)
	}
	recs := readTrace(t, r.trace)
	if _, ran := recs["sink"]; ran {
		t.Errorf("sink ran on leaky's output: %+v", recs["sink"])
	}
	if _, ran := recs["goodsink"]; !ran {
		t.Errorf("the control consumer did not run: %v", recs)
	}
	// No cache entry for leaky; the control's 2 MiB is the only blob.
	c, err := cache.Open(r.cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	entries, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	stages := map[string]bool{}
	for _, e := range entries {
		stages[e.Stage] = true
	}
	if stages["leaky"] || !stages["good"] {
		t.Errorf("cache entries for stages %v; want good's and none for leaky", stages)
	}
	if leaky.Key == "" {
		t.Error("leaky has no cache key: was the cache on?")
	} else if m, err := c.Lookup(leaky.Key); m != nil || err != nil {
		t.Errorf("cache lookup of leaky's key %s: %+v, %v", leaky.Key, m, err)
	}
	if u := c.Usage(); u != bigBytes {
		t.Errorf("cache content store holds %d bytes; want only the control's %d", u, bigBytes)
	}
	// No dataset for leaky; the control's was written.
	data, _ := filepath.Glob(filepath.Join(r.outDir, "data", "*"))
	var names []string
	for _, p := range data {
		names = append(names, filepath.Base(p))
	}
	for _, n := range names {
		if strings.HasPrefix(n, "leaky.") {
			t.Errorf("dataset written from leaky's output: %s", n)
		}
	}
	if !strings.Contains(strings.Join(names, ","), "good.out.npz") {
		t.Errorf("data files %v; want the control's good.out.npz", names)
	}
	for _, a := range r.sess.Artifacts {
		if a.Stage == "leaky" {
			t.Errorf("artifact from leaky: %+v", a)
		}
	}
}

func goPlugins(t *testing.T) []string { return []string{testbin.Build(t, "testplugins/go")} }

// A stage that maps its output a second time and never unmaps it.
func TestWritePathKeptMapping(t *testing.T) {
	r := runWritePath(t, "bad-go.keepmap", "", goPlugins(t), 0)
	r.checkRefused()
}

// A stage that maps its output itself and makes the view read-only with
// mprotect: the view could be made writable again, so the seal is refused;
// the rewrite variant does make it writable again and writes after its
// Result, which lands in memory nobody will ever read.
func TestWritePathMprotect(t *testing.T) {
	for _, tc := range []struct {
		name    string
		rewrite bool
	}{{"kept read-only", false}, {"made writable again", true}} {
		t.Run(tc.name, func(t *testing.T) {
			late := 0
			if tc.rewrite {
				late = 1
			}
			r := runWritePath(t, "bad-go.mprotect", `note = "%NOTE%", rewrite = `+strconv.FormatBool(tc.rewrite), goPlugins(t), late)
			wantAll(t, r.noteText(), "protected 2097152 bytes read-only")
			r.checkRefused()
		})
	}
}

// A helper process the stage started keeps a writable mapping of the memfd,
// given to it at exec or over a unix socket, and writes into it after the
// stage's Result.
func TestWritePathHelperProcess(t *testing.T) {
	for _, pass := range []string{"inherit", "socket"} {
		t.Run(pass, func(t *testing.T) {
			r := runWritePath(t, "bad-go.helper", `note = "%NOTE%", pass = "`+pass+`"`, goPlugins(t), 1)
			wantAll(t, r.noteText(), "mapped 2097152 bytes writable ("+pass+")")
			if len(r.helperPids()) != 1 {
				t.Errorf("helpers noted: %v", r.helperPids())
			}
			r.checkRefused()
		})
	}
}

// A dynamic output the plugin sealed itself (F_SEAL_WRITE|F_SEAL_SEAL)
// before handing it over is accepted as it is: a 3 MB blob and a 2.4 MB
// Arrow table reach their consumers byte for byte, and are cached and
// served from the cache on the next run.
func TestPluginSealedDynamicOutputs(t *testing.T) {
	trace := filepath.Join(t.TempDir(), "trace.jsonl")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	body := strings.ReplaceAll(grid+`
[stages.blob]
kind = "probe.sealedblob"
params = { n = 3000000, trace = "%TRACE%" }
[stages.sum]
kind = "probe.blobsum"
inputs = { in = "blob.out" }
params = { trace = "%TRACE%" }
[stages.rows]
kind = "probe.sealedtable"
params = { rows = 150000, trace = "%TRACE%" }
[stages.tsum]
kind = "probe.tablesum"
inputs = { rows = "rows.rows" }
params = { trace = "%TRACE%" }
`, "%TRACE%", trace)
	_, res := run(t, body, runner.Options{CacheDir: cacheDir})
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	const sealed = unix.F_SEAL_WRITE | unix.F_SEAL_SEAL
	for _, name := range []string{"blob", "rows"} {
		for _, s := range res.Stages {
			if s.Name == name && int(s.Metrics["seals"])&sealed != sealed {
				t.Errorf("%s left the plugin with seals %s; want it sealed there", name, shm.SealString(int(s.Metrics["seals"])))
			}
		}
	}
	var want float64
	for i := 0; i < 3000000; i++ {
		want += float64(i * 7 % 251)
	}
	recs := readTrace(t, trace)
	if recs["blob"].Outputs["out"] != want || recs["sum"].Inputs["in"] != want || recs["sum"].Extra["n"] != float64(3000000) {
		t.Errorf("blob: wrote %v, reader saw %v of %v bytes; want %v of 3000000",
			recs["blob"].Outputs["out"], recs["sum"].Inputs["in"], recs["sum"].Extra["n"], want)
	}
	if recs["tsum"].Inputs["rows"] != recs["rows"].Outputs["rows"] || recs["tsum"].Extra["n"] != float64(150000) {
		t.Errorf("table: wrote sum %v, reader saw %v over %v rows", recs["rows"].Outputs["rows"], recs["tsum"].Inputs["rows"], recs["tsum"].Extra["n"])
	}
	_, res = run(t, body, runner.Options{CacheDir: cacheDir})
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	if cs := cacheStatus(res); cs["blob"] != engine.CacheHit || cs["rows"] != engine.CacheHit {
		t.Errorf("second run: %v; want the sealed outputs served from the cache", cs)
	}
}

// The same write paths from the native SDKs' stages (C++, Rust, Python): a
// kept second mapping, and a forked child holding the writable mapping it
// inherited and writing into it after the Result.
func TestNativeWritePaths(t *testing.T) {
	for _, lang := range nativeLangs {
		t.Run(lang+"/keepmap", func(t *testing.T) {
			r := runWritePath(t, "bad-"+lang+".keepmap", "", nativeDirs(t, lang), 0)
			r.checkRefused()
		})
		t.Run(lang+"/forkmap", func(t *testing.T) {
			r := runWritePath(t, "bad-"+lang+".forkmap", `note = "%NOTE%"`, nativeDirs(t, lang), 1)
			wantAll(t, r.noteText(), "mapped 2097152 bytes writable (fork)")
			if len(r.helperPids()) != 1 {
				t.Errorf("children noted: %v", r.helperPids())
			}
			r.checkRefused()
		})
	}
}

// C++ and Rust consumers read outputs a Go plugin sealed itself. (Neither
// native SDK can hand over a segment the stage made: their dynamic outputs
// are always SDK-made and sealed by the host.)
func TestNativeReadPluginSealedOutputs(t *testing.T) {
	for _, tc := range []struct{ lang, prober string }{{"cpp", "minimal-cpp"}, {"rust", "probe-rust"}} {
		t.Run(tc.lang, func(t *testing.T) {
			r := runNative(t, grid+`
[stages.blob]
kind = "probe.sealedblob"
params = { n = 3000000 }
[stages.sum]
kind = "`+tc.prober+`.blobsum"
inputs = { in = "blob.out" }
[stages.rows]
kind = "probe.sealedtable"
params = { rows = 150000 }
[stages.look]
kind = "`+tc.prober+`.tablebytes"
inputs = { in = "rows.rows" }
`, runner.Options{}, nativeDirs(t, tc.lang))
			if err := r.res.Err(); err != nil {
				t.Fatal(err)
			}
			want := r.stage("blob").Metrics["sum"]
			if m := r.stage("sum").Metrics; want == 0 || m["sum"] != want || m["n"] != 3000000 {
				t.Errorf("%s read %v; the Go stage wrote sum %v over 3000000 bytes", nativeTitle[tc.lang], m, want)
			}
			if m := r.stage("look").Metrics; m["arrow"] != 1 || m["n"] < 150000*16 {
				t.Errorf("sealed Go table as seen by %s: %v", nativeTitle[tc.lang], m)
			}
		})
	}
}
