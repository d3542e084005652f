package runtest_test

// Remote execution through the engine: stages the config marks remote run
// as REAPI actions on the Buildbarn worker of internal/remotetest, and the
// planet pipeline shared through one bazel-remote.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pipehost/pipehost/host/config"
	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/remotetest"
	"github.com/pipehost/pipehost/internal/testbin"
)

// planetPlugins copies the planet's plugins of all four SDKs into one
// directory (the native ones come from make build).
func planetPlugins(t *testing.T) string {
	t.Helper()
	root := testbin.ModuleRoot()
	dir := t.TempDir()
	for _, p := range []string{filepath.Join(testbin.Build(t, "plugins/go"), "planet-go"),
		filepath.Join(root, "bin", "plugins", "planet-rust"), filepath.Join(root, "bin", "plugins", "hydro-cpp"),
		filepath.Join(root, "bin", "plugins", "planet-py")} {
		b, err := os.ReadFile(p)
		if err != nil {
			if os.Getenv("PIPEHOST_REQUIRE_NATIVE") == "1" {
				t.Fatalf("planet plugin missing (run make build): %v", err)
			}
			t.Skipf("planet plugin missing (run make build): %v", err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// planetConfig is examples/planet.toml with extra TOML appended (a
// [remote] table) and a fresh seed, so the shared servers hold none of its
// keys yet.
func planetConfig(t *testing.T, extra string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testbin.ModuleRoot(), "examples", "planet.toml"))
	if err != nil {
		t.Fatal(err)
	}
	body := string(b)
	if !strings.Contains(body, "seed = 2026") {
		t.Fatal("examples/planet.toml no longer sets seed = 2026")
	}
	body = strings.Replace(body, "seed = 2026", fmt.Sprintf("seed = %d", time.Now().UnixNano()%(1<<40)), 1)
	return writeConfig(t, body+"\n"+extra)
}

// smallPlanet keeps each planet run to a second or two.
func smallPlanet(o *runner.Options) {
	for _, s := range []string{"grid.width=256", "grid.height=128"} {
		ov, err := config.ParseOverride(s)
		if err != nil {
			panic(err)
		}
		o.Overrides = append(o.Overrides, ov)
	}
}

// remoteTable is a [remote] table sending kinds to the test executor.
func remoteTable(env *remotetest.Env, executor, fallback string, kinds ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[remote]\nexecutor = %q\n", executor)
	if fallback != "" {
		fmt.Fprintf(&b, "fallback = %q\n", fallback)
	}
	q := make([]string, len(kinds))
	for i, k := range kinds {
		q[i] = strconv.Quote(k)
	}
	fmt.Fprintf(&b, "kinds = [%s]\n\n[remote.platform]\n", strings.Join(q, ", "))
	keys := make([]string, 0, len(env.Platform))
	for k := range env.Platform {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %q\n", k, env.Platform[k])
	}
	return b.String()
}

// withRunner ships this checkout's pipehost-stage in the remote actions.
func withRunner(t *testing.T) func(*runner.Options) {
	bins := testbin.Build(t, "cmd")
	return func(o *runner.Options) { o.StageRunner = filepath.Join(bins, "pipehost-stage") }
}

func both(fs ...func(*runner.Options)) func(*runner.Options) {
	return func(o *runner.Options) {
		for _, f := range fs {
			f(o)
		}
	}
}

// mustSession is session, failing the test on an error.
func (h *host) mustSession(t *testing.T, cfg string, edit func(*runner.Options)) *runner.Session {
	t.Helper()
	sess, err := h.session(t, cfg, edit)
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

// runLogStages reads the run log's stage_end records by stage.
func runLogStages(t *testing.T, path string) map[string]map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[string]any{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var ev struct {
			Type  string         `json:"type"`
			Stage string         `json:"stage"`
			Data  map[string]any `json:"data"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if ev.Type == "stage_end" {
			out[ev.Stage] = ev.Data
		}
	}
	return out
}

// TestPlanetErodeOnBuildbarn runs the planet with terrain.erode as an
// action on the Buildbarn worker: its datasets are byte-identical to a
// fully local run's, the erosion's outputs feed the local hydro, climate
// and relief stages, and they go into the local cache under the key a local
// run computes (a later local run is served entirely from that cache).
func TestPlanetErodeOnBuildbarn(t *testing.T) {
	env := remotetest.Servers(t)
	plugins := planetPlugins(t)
	cfg := planetConfig(t, remoteTable(env, env.Executor, "", "terrain.erode"))
	local := planetConfig(t, "")
	// The same seed in both configs: copy the remote one's [run] table.
	b, _ := os.ReadFile(cfg)
	body := string(b)
	if err := os.WriteFile(local, []byte(body[:strings.Index(body, "[remote]")]), 0o644); err != nil {
		t.Fatal(err)
	}

	// A fully local run, with its own cache (a saved output's digest is
	// written into its COG only when the cache computes it).
	a := newHost(t)
	a.plugins = plugins
	resA := byName(run(t, a.mustSession(t, local, smallPlanet)))
	if resA["erode"].Remote != nil {
		t.Fatal("the local run sent erode to the executor")
	}

	h := newHost(t)
	h.plugins = plugins
	sess := h.mustSession(t, cfg, both(smallPlanet, withRunner(t)))
	res := byName(run(t, sess))
	er := res["erode"]
	if er.Remote == nil || er.Remote.Action == "" || er.Remote.Executor != env.Executor {
		t.Fatalf("erode: remote %+v, want an action on %s", er.Remote, env.Executor)
	}
	if er.Cache != engine.CacheMiss || er.Slot < 0 {
		t.Errorf("erode: cache %s, slot %d: want a miss admitted like a local stage", er.Cache, er.Slot)
	}
	for name, r := range res {
		if name != "erode" && r.Remote != nil {
			t.Errorf("stage %s ran remotely; only terrain.erode should", name)
		}
	}
	if w := h.warns(); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}
	sameDatasets(t, datasets(t, a.outDir), datasets(t, h.outDir))

	// The run log, summary and trace mark the remote stage.
	recs := runLogStages(t, sess.Reports.Log)
	if d := recs["erode"]; d["where"] != "remote" || d["action_digest"] != er.Remote.Action || d["executor"] != env.Executor {
		t.Errorf("run log, erode: %v", d)
	}
	if d := recs["hydro"]; d["where"] != nil {
		t.Errorf("run log, hydro: where = %v", d["where"])
	}
	sum, err := os.ReadFile(sess.Reports.Summary)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(sum), "ran remotely on "+env.Executor+", action `"+er.Remote.Action[:12]+"`") {
		t.Errorf("summary.md does not mark erode as remote:\n%s", sum)
	}
	traceBytes, err := os.ReadFile(sess.Reports.Trace)
	if err != nil {
		t.Fatal(err)
	}
	var trace struct {
		TraceEvents []struct {
			Name, Cat string
			Args      map[string]any
		}
	}
	if err := json.Unmarshal(traceBytes, &trace); err != nil {
		t.Fatal(err)
	}
	marked := false
	for _, ev := range trace.TraceEvents {
		if ev.Name == "erode" && ev.Cat == "stage" {
			marked = ev.Args["where"] == "remote" && ev.Args["action_digest"] == er.Remote.Action
		}
	}
	if !marked {
		t.Error("trace.json's erode slice does not carry where = remote and the action digest")
	}

	// A local run on the same cache: every stage is a hit, erode included.
	h.outDir = filepath.Join(t.TempDir(), "out")
	res = byName(run(t, h.mustSession(t, local, smallPlanet)))
	for name, r := range res {
		if r.Cache != engine.CacheHit {
			t.Errorf("local rerun, stage %s: cache %s (%s), want a hit on the remote run's entry", name, r.Cache, r.MissReason)
		}
	}
	sameDatasets(t, datasets(t, a.outDir), datasets(t, h.outDir))
}

// TestRemoteStageWithoutCache: with the cache off a remote stage's inputs
// are hashed for the action and its outputs still feed a local consumer.
func TestRemoteStageWithoutCache(t *testing.T) {
	env := remotetest.Servers(t)
	seed := time.Now().UnixNano()
	a := newHost(t)
	a.cacheDir = ""
	run(t, a.mustSession(t, writeConfig(t, pipeline(seed)), nil))

	h := newHost(t)
	h.cacheDir = ""
	cfg := writeConfig(t, pipeline(seed)+"\n"+remoteTable(env, env.Executor, "error", "ref.blur-go"))
	res := byName(run(t, h.mustSession(t, cfg, withRunner(t))))
	for _, name := range []string{"blur", "final"} {
		if res[name].Remote == nil {
			t.Errorf("stage %s ran locally", name)
		}
	}
	if res["noise"].Remote != nil {
		t.Error("noise ran remotely")
	}
	sameDatasets(t, datasets(t, a.outDir), datasets(t, h.outDir))
}

// leftovers lists what a failed start could leave behind: child
// processes, memfds, files in the run's TMPDIR.
func leftovers(t *testing.T) []string {
	t.Helper()
	var found []string
	self := strconv.Itoa(os.Getpid())
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 && fields[1] == self {
			found = append(found, "child process "+p)
		}
	}
	fds, _ := filepath.Glob("/proc/self/fd/*")
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && strings.HasPrefix(l, "/memfd:") {
			found = append(found, "open "+l)
		}
	}
	if ents, err := os.ReadDir(os.Getenv("TMPDIR")); err == nil {
		for _, e := range ents {
			found = append(found, "TMPDIR holds "+e.Name())
		}
	}
	return found
}

// TestExecutorDownFails: nothing listens at the executor's address and
// the policy is "error": the run does not start, the error names the
// remote stage and the endpoint, and nothing is left behind.
func TestExecutorDownFails(t *testing.T) {
	env := remotetest.Servers(t)
	target := "grpc://127.0.0.1:" + remotetest.FreePort(t)
	h := newHost(t)
	cfg := writeConfig(t, pipeline(time.Now().UnixNano())+"\n"+remoteTable(env, target, "error", "ref.blur-go"))
	sess, err := h.session(t, cfg, withRunner(t))
	if err == nil {
		sess.Close()
		t.Fatal("the run opened with its executor down and fallback = \"error\"")
	}
	var se *runner.SetupError
	if !errors.As(err, &se) {
		t.Errorf("error %T, want a setup error (exit status 2)", err)
	}
	for _, want := range []string{"blur (ref.blur-go)", "final (ref.blur-go)", strings.TrimPrefix(target, "grpc://"), `remote.fallback = "local"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if l := leftovers(t); len(l) > 0 {
		t.Errorf("left behind: %q", l)
	}
	if ents, _ := os.ReadDir(h.outDir); len(ents) > 0 {
		t.Errorf("%s holds %d entries after a run that did not start", h.outDir, len(ents))
	}
	if st, err := os.Stat(filepath.Join(h.cacheDir, "v1", "entries.log")); err == nil && st.Size() > 0 {
		t.Errorf("the cache holds %d bytes of entries after a run that did not start", st.Size())
	}
}

// TestExecutorDownFallsBackLocal: the same with fallback = "local": one
// warning naming the executor, every stage runs here, same datasets.
func TestExecutorDownFallsBackLocal(t *testing.T) {
	env := remotetest.Servers(t)
	seed := time.Now().UnixNano()
	a := newHost(t)
	run(t, a.open(t, writeConfig(t, pipeline(seed)), ""))

	target := "grpc://127.0.0.1:" + remotetest.FreePort(t)
	h := newHost(t)
	cfg := writeConfig(t, pipeline(seed)+"\n"+remoteTable(env, target, "local", "ref.blur-go"))
	res := byName(run(t, h.mustSession(t, cfg, withRunner(t))))
	oneWarning(t, h, target)
	for _, name := range []string{"blur", "final"} {
		r := res[name]
		if r.Remote != nil || r.Slot < 0 || !strings.Contains(r.Note, "ran locally") {
			t.Errorf("stage %s: remote %+v, slot %d, note %q: want run locally", name, r.Remote, r.Slot, r.Note)
		}
	}
	sameDatasets(t, datasets(t, a.outDir), datasets(t, h.outDir))
}

// TestRemoteStageNeedsExecutor: a stage marked remote with no executor
// anywhere is a config error naming the file, line and key.
func TestRemoteStageNeedsExecutor(t *testing.T) {
	h := newHost(t)
	cfg := writeConfig(t, strings.Replace(pipeline(1), "params = { radius = 2 }", "params = { radius = 2 }\nremote = true", 1))
	_, err := h.session(t, cfg, nil)
	if err == nil {
		t.Fatal("a remote stage without an executor was accepted")
	}
	if want := cfg + ":19:10: stages.blur.remote"; !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "--remote-executor") {
		t.Errorf("error %q, want it to name %s and say how to set an executor", err, want)
	}
}

// TestTwoHostsShareOneCachePlanet: the planet pipeline (Go, Rust, C++ and
// Python stages) on two hosts with separate local caches sharing one
// bazel-remote: the second host runs no stage and writes byte-identical
// datasets.
func TestTwoHostsShareOneCachePlanet(t *testing.T) {
	env := remotetest.Servers(t)
	plugins := planetPlugins(t)
	cfg := planetConfig(t, "")
	withCache := func(o *runner.Options) { smallPlanet(o); o.RemoteCache = env.Cache }

	a := newHost(t)
	a.plugins = plugins
	resA := run(t, a.mustSession(t, cfg, withCache))
	b := newHost(t)
	b.plugins = plugins
	resB := run(t, b.mustSession(t, cfg, withCache))
	if len(resA.Stages) != 5 {
		t.Fatalf("the planet ran %d stages, want 5", len(resA.Stages))
	}
	for name, r := range byName(resA) {
		if r.Cache != engine.CacheMiss {
			t.Errorf("host A, stage %s: cache %s, want a miss", name, r.Cache)
		}
	}
	for name, r := range byName(resB) {
		if r.Cache != engine.CacheHit || !strings.Contains(r.Note, "remote cache") || r.Slot != -1 {
			t.Errorf("host B, stage %s: cache %s (%q, slot %d), want a remote hit", name, r.Cache, r.Note, r.Slot)
		}
	}
	da, db := datasets(t, a.outDir), datasets(t, b.outDir)
	if len(da) < 10 {
		t.Fatalf("host A wrote %d datasets (%v), want the planet's COG, NPZ, GeoParquet and Arrow files", len(da), da)
	}
	sameDatasets(t, da, db)
	if w := append(a.warns(), b.warns()...); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}
}
