package runner_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/pipehost/pipehost/host/config"
	"github.com/pipehost/pipehost/host/pluginmgr"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/testbin"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// catalogRun is one Open → Run → Close with the plugin catalog on, and
// what it launched.
type catalogRun struct {
	setup    runner.SetupStats
	launches int64    // plugin processes started during Open
	running  []string // plugin processes alive from the plugin dir after Open
	pids     map[string]int
	warnings []string
}

func openWithCatalog(t *testing.T, cfg, pluginDir, cacheDir string) (*catalogRun, error) {
	t.Helper()
	r := &catalogRun{pids: map[string]int{}}
	var mu sync.Mutex
	before := pluginmgr.Launches()
	sess, err := runner.Open(context.Background(), runner.Options{
		ConfigPath: cfg, PluginDirs: []string{pluginDir}, PluginCacheDir: cacheDir,
		Warn: func(m string) { mu.Lock(); r.warnings = append(r.warnings, m); mu.Unlock() },
	})
	r.launches = pluginmgr.Launches() - before
	if err != nil {
		return r, err
	}
	defer sess.Close()
	r.setup = sess.Setup
	for _, l := range leftovers(pluginDir) {
		r.running = append(r.running, l)
	}
	for _, p := range sess.Plugins {
		if !p.Exited() {
			r.pids[filepath.Base(p.Path)] = p.Pid
		}
	}
	res := sess.Run(context.Background())
	if err := res.Err(); err != nil {
		t.Fatalf("run: %v", err)
	}
	return r, nil
}

func bases(paths []string) []string {
	var out []string
	for _, p := range paths {
		out = append(out, filepath.Base(p))
	}
	sort.Strings(out)
	return out
}

func fileSHA256(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// The first run describes every installed plugin and records them; later
// runs launch only the plugins the plan uses. A rebuilt binary is described
// again, a corrupt catalog entry is ignored with a reason and rewritten,
// and nothing is left running.
func TestPluginCatalogLaunchesOnlyUsedPlugins(t *testing.T) {
	tmp := isolate(t)
	pd := testbin.Copy(t, testbin.Build(t, "testplugins/go"), "source", "transform", "sink", "probe")
	for _, name := range []string{"alpha", "beta"} {
		testbin.BuildAs(t, "testplugins/variant", filepath.Join(pd, name), "-X main.name="+name)
	}
	cacheDir := filepath.Join(t.TempDir(), "cache")
	trace := filepath.Join(t.TempDir(), "trace.jsonl")
	cfg := writeConfig(t, "p.toml", strings.ReplaceAll(threeStages, "%TRACE%", trace))
	all := []string{"alpha", "beta", "probe", "sink", "source", "transform"}
	used := []string{"sink", "source", "transform"}

	// Cold: everything is launched to be described, then the unused ones
	// are stopped.
	r, err := openWithCatalog(t, cfg, pd, cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	if got := bases(r.setup.Described); strings.Join(got, ",") != strings.Join(all, ",") || r.setup.FromCatalog != 0 || r.launches != 6 {
		t.Fatalf("cold run: described %v, from catalog %d, %d launches", got, r.setup.FromCatalog, r.launches)
	}
	descs, _ := filepath.Glob(filepath.Join(runner.CatalogDir(cacheDir), "desc", "*.json"))
	if len(descs) != 6 {
		t.Fatalf("catalog holds %d descriptor files, want 6: %v", len(descs), descs)
	}
	assertNothingLeft(t, pd, tmp)

	// Warm: three launches, exactly the used plugins, seen in /proc too.
	r, err = openWithCatalog(t, cfg, pd, cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	if r.setup.FromCatalog != 6 || len(r.setup.Described) != 0 || r.launches != 3 ||
		strings.Join(bases(r.setup.Started), ",") != strings.Join(used, ",") {
		t.Fatalf("warm run: from catalog %d, described %v, started %v, %d launches", r.setup.FromCatalog, r.setup.Described, r.setup.Started, r.launches)
	}
	if len(r.running) != 3 || len(r.pids) != 3 {
		t.Fatalf("warm run: processes %v, session plugins %v", r.running, r.pids)
	}
	if len(r.warnings) > 0 {
		t.Errorf("warnings: %q", r.warnings)
	}
	assertNothingLeft(t, pd, tmp)

	// A rebuilt binary (different bytes, different kinds) is described
	// again: the plan can use its new kind only if it was.
	testbin.BuildAs(t, "testplugins/variant", filepath.Join(pd, "alpha"), "-X main.name=gamma")
	cfg2 := writeConfig(t, "q.toml", `
[grid]
width = 16
height = 8
[stages.fill]
kind = "gamma.fill"
params = { value = 2.0 }
[stages.copy]
kind = "gamma.pass"
inputs = { in = "fill.out" }
[stages.sink]
kind = "dummy.sink"
inputs = { in = "copy.out" }
`)
	r, err = openWithCatalog(t, cfg2, pd, cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	if got := bases(r.setup.Described); len(got) != 1 || got[0] != "alpha" || r.setup.FromCatalog != 5 || r.launches != 2 {
		t.Fatalf("after a rebuild: described %v, from catalog %d, %d launches (want alpha described and kept, sink started)", got, r.setup.FromCatalog, r.launches)
	}
	assertNothingLeft(t, pd, tmp)

	// A corrupt entry is ignored with a reason and rewritten.
	bad := filepath.Join(runner.CatalogDir(cacheDir), "desc", fileSHA256(t, filepath.Join(pd, "transform"))+".json")
	if err := os.WriteFile(bad, []byte(`{"format":"pipehost-plugin-descriptors/1","binary_sha`), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err = openWithCatalog(t, cfg, pd, cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	if got := bases(r.setup.Described); len(got) != 1 || got[0] != "transform" || r.launches != 3 {
		t.Fatalf("corrupt entry: described %v, %d launches", got, r.launches)
	}
	why := r.setup.Ignored[filepath.Join(pd, "transform")]
	if !strings.Contains(why, "corrupt") {
		t.Errorf("reason for transform: %q (all: %v)", why, r.setup.Ignored)
	}
	if len(r.warnings) != 1 || !strings.Contains(r.warnings[0], bad) || !strings.Contains(r.warnings[0], "corrupt") {
		t.Errorf("warnings: %q", r.warnings)
	}
	// Rewritten: the next run launches the used plugins only, silently.
	r, err = openWithCatalog(t, cfg, pd, cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.setup.Described) != 0 || r.launches != 3 || len(r.warnings) != 0 {
		t.Fatalf("after the rewrite: described %v, %d launches, warnings %q", r.setup.Described, r.launches, r.warnings)
	}
	assertNothingLeft(t, pd, tmp)
}

// Two binaries offering one kind are refused as without the catalog, and
// a warm run finds the conflict in the catalog without launching anything.
func TestPluginCatalogDetectsConflicts(t *testing.T) {
	tmp := isolate(t)
	pd := testbin.Copy(t, testbin.Build(t, "testplugins/go"), "source", "sink")
	testbin.BuildAs(t, "testplugins/variant", filepath.Join(pd, "one"), "-X main.name=dup -X main.build=1")
	testbin.BuildAs(t, "testplugins/variant", filepath.Join(pd, "two"), "-X main.name=dup -X main.build=2")
	if fileSHA256(t, filepath.Join(pd, "one")) == fileSHA256(t, filepath.Join(pd, "two")) {
		t.Fatal("the two variants are the same binary")
	}
	cacheDir := filepath.Join(t.TempDir(), "cache")
	cfg := writeConfig(t, "p.toml", strings.ReplaceAll(threeStages, "%TRACE%", ""))
	want := `stage kind "dup.fill" is offered by two plugins: ` + filepath.Join(pd, "one") + " and " + filepath.Join(pd, "two")
	for i, wantLaunches := range []int64{4, 0} {
		r, err := openWithCatalog(t, cfg, pd, cacheDir)
		if err == nil || err.Error() != want {
			t.Fatalf("run %d: error %v, want %s", i+1, err, want)
		}
		if r.launches != wantLaunches {
			t.Errorf("run %d: %d launches, want %d", i+1, r.launches, wantLaunches)
		}
		assertNothingLeft(t, pd, tmp)
	}
	// The same error without a catalog.
	_, err := runner.Open(context.Background(), runner.Options{ConfigPath: cfg, PluginDirs: []string{pd}})
	if err == nil || err.Error() != want {
		t.Fatalf("without the catalog: %v", err)
	}
	assertNothingLeft(t, pd, tmp)
}

// A catalog entry that no longer matches what the binary says (it was
// replaced between hashing and launch) is corrected: the run plans again
// with the live descriptors and records them.
func TestPluginCatalogStaleEntryIsCorrected(t *testing.T) {
	tmp := isolate(t)
	pd := testbin.Copy(t, testbin.Build(t, "testplugins/go"), "source", "transform", "sink")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	cfg := writeConfig(t, "p.toml", strings.ReplaceAll(threeStages, "%TRACE%", ""))
	if _, err := openWithCatalog(t, cfg, pd, cacheDir); err != nil {
		t.Fatal(err)
	}
	cat := pluginmgr.OpenCatalog(runner.CatalogDir(cacheDir), nil)
	digest := fileSHA256(t, filepath.Join(pd, "transform"))
	live, why := cat.Lookup(digest)
	if live == nil {
		t.Fatalf("transform not in the catalog: %s", why)
	}
	stale := proto.Clone(live).(*pb.DescribeResponse)
	for _, d := range stale.GetStages() {
		d.Version = "9.9.9"
	}
	if err := cat.Record(digest, stale); err != nil {
		t.Fatal(err)
	}

	sess, err := runner.Open(context.Background(), runner.Options{ConfigPath: cfg, PluginDirs: []string{pd}, PluginCacheDir: cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	if v := sess.Plan.Node("scale").Desc.GetVersion(); v != "1.0.0" {
		t.Errorf("planned with version %q of dummy.scale, want the live 1.0.0", v)
	}
	if len(sess.Setup.Described) != 0 || len(sess.Setup.Started) != 3 {
		t.Errorf("described %v, started %v", sess.Setup.Described, sess.Setup.Started)
	}
	res := sess.Run(context.Background())
	sess.Close()
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	if got, _ := pluginmgr.OpenCatalog(runner.CatalogDir(cacheDir), nil).Lookup(digest); !proto.Equal(got, live) {
		t.Errorf("catalog entry not corrected: %v", got)
	}
	assertNothingLeft(t, pd, tmp)
}

// With the cache on, a plugin starts only when one of its stages is going
// to run: a fully cached rerun starts none, and a rerun after one param
// changed starts the plugins of that stage and its dependants only (the
// run log names each launch). Nothing is left running either way.
func TestCachedStagesStartNoPlugin(t *testing.T) {
	tmp := isolate(t)
	pd := testbin.Copy(t, testbin.Build(t, "testplugins/go"), "source", "transform", "sink")
	cfg := writeConfig(t, "p.toml", strings.ReplaceAll(threeStages, "%TRACE%", ""))
	cacheDir := filepath.Join(t.TempDir(), "cache")
	run := func(set ...string) (launched []string, sess *runner.Session) {
		t.Helper()
		opts := runner.Options{ConfigPath: cfg, PluginDirs: []string{pd}, CacheDir: cacheDir, PluginCacheDir: cacheDir}
		for _, s := range set {
			o, err := config.ParseOverride(s)
			if err != nil {
				t.Fatal(err)
			}
			opts.Overrides = append(opts.Overrides, o)
		}
		before := pluginmgr.Launches()
		sess, err := runner.Open(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		res := sess.Run(context.Background())
		procs := sess.Launched()
		sess.Close()
		if err := res.Err(); err != nil {
			t.Fatal(err)
		}
		if n := pluginmgr.Launches() - before; n != int64(len(procs)) {
			t.Fatalf("%d launches, session lists %d", n, len(procs))
		}
		for _, p := range procs {
			launched = append(launched, filepath.Base(p.Path))
		}
		sort.Strings(launched)
		assertNothingLeft(t, pd, tmp)
		return launched, sess
	}
	if got, _ := run(); strings.Join(got, ",") != "sink,source,transform" {
		t.Fatalf("cold run started %v", got)
	}
	got, sess := run()
	if len(got) != 0 {
		t.Fatalf("fully cached rerun started %v", got)
	}
	got, sess = run("scale.factor=4")
	if strings.Join(got, ",") != "sink,transform" {
		t.Fatalf("rerun after scale.factor changed started %v, want sink and transform", got)
	}
	logs, _ := filepath.Glob(filepath.Join(sess.Reports.Dir, "logs", "run_*.jsonl"))
	sort.Strings(logs)
	body, _ := os.ReadFile(logs[len(logs)-1])
	if n := strings.Count(string(body), `"type":"plugin_launch"`); n != 2 {
		t.Errorf("the run log has %d plugin_launch events, want 2", n)
	}
}
