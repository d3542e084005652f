package runner_test

// Fault tests: each drives real plugin processes into one misbehaviour and
// checks the same things (faultRun and checkFault): one clear error naming
// the stage, no plugin process or socket left, the ledger at zero, no host
// fd or /dev/shm entry leaked, no partial cache entry, the independent
// branch's results intact (its dataset written, its cache entry whole) and
// a run log whose every line decodes. docs/reliability.md lists them.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/testbin"
)

// healthy is an independent branch every fault pipeline carries: its saved
// dataset and cache entry must survive the fault next to it.
const healthy = `
[stages.other]
kind = "dummy.source"
params = { value = 2.5 }
save = { out = "npz" }
`

type fault struct {
	sess     *runner.Session
	res      *engine.Result
	out      string
	cacheDir string
	warnings []string
}

// faultRun runs body (plus the healthy branch) with a cache and an output
// directory of its own, through run's leak checks.
func faultRun(t *testing.T, body string, opts runner.Options) *fault {
	t.Helper()
	f := &fault{out: opts.OutDir, cacheDir: opts.CacheDir}
	if f.out == "" {
		f.out = filepath.Join(t.TempDir(), "out")
	}
	if f.cacheDir == "" {
		f.cacheDir = filepath.Join(t.TempDir(), "cache")
	}
	opts.OutDir, opts.CacheDir = f.out, f.cacheDir
	var mu sync.Mutex
	opts.Warn = func(s string) { mu.Lock(); f.warnings = append(f.warnings, s); mu.Unlock() }
	opts.Engine.KeepGoing = true
	f.sess, f.res = run(t, grid+body+healthy, opts)
	return f
}

// checkFault checks what every fault must leave: stage failed with one
// error naming it (and saying want), the rest as described above.
func (f *fault) checkFault(t *testing.T, stage, kind string, want ...string) {
	t.Helper()
	msg := stageErr(t, f.res, stage)
	wantAll(t, msg, append([]string{"stage " + stage + " (" + kind}, want...)...)
	if n := len(f.res.Failed); n != 1 {
		t.Errorf("%d stages failed, want only %s: %v", n, stage, statuses(f.res))
	}
	f.checkRest(t, stage)
}

// checkRest checks the healthy branch, the cache and the run log.
func (f *fault) checkRest(t *testing.T, failed string) {
	t.Helper()
	if s := statuses(f.res); s["other"] != engine.StatusOK {
		t.Errorf("the independent branch did not finish: %v", s)
	}
	if st, err := os.Stat(filepath.Join(f.out, "data", "other.out.npz")); err != nil || st.Size() < 64*32*4 {
		t.Errorf("the independent branch's dataset: %v", err)
	}
	checkCacheWhole(t, f.cacheDir)
	if failed != "" {
		if n := cacheEntriesFor(t, f.cacheDir, failed); n != 0 {
			t.Errorf("%d cache entries stored for the failed stage %s", n, failed)
		}
	}
	if f.sess.Reports.Log == "" {
		t.Fatal("no run log")
	}
	recs := readLog(t, f.sess.Reports.Log)
	if last := recs[len(recs)-1]; last["type"] != "run_end" {
		t.Errorf("run log does not end with run_end: %v", last)
	}
}

// checkCacheWhole fails on any blob that does not match its digest and on
// any temporary file left behind.
func checkCacheWhole(t *testing.T, dir string) {
	t.Helper()
	for _, b := range blobs(t, dir) {
		if err := verifyBlob(b); err != nil {
			t.Error(err)
		}
	}
	if tmps, _ := os.ReadDir(filepath.Join(dir, "v1", "tmp")); len(tmps) > 0 {
		t.Errorf("%d temporary files left in the cache (first %s)", len(tmps), tmps[0].Name())
	}
}

// cacheEntries lists the entries of the cache in dir (no run may be using it).
func cacheEntries(t *testing.T, dir string) []cache.EntryInfo {
	t.Helper()
	c, err := cache.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	entries, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

// cacheEntriesFor counts the cache's entries for stage (entries record the
// stage they came from).
func cacheEntriesFor(t *testing.T, dir, stage string) int {
	t.Helper()
	n := 0
	for _, e := range cacheEntries(t, dir) {
		if e.Stage == stage {
			n++
		}
	}
	return n
}

func TestFaultCrashAfterHalfAnOutput(t *testing.T) {
	f := faultRun(t, `
[stages.half]
kind = "bad-go.halfwrite"
save = { out = "npz" }
[stages.after]
kind = "dummy.sink"
inputs = { in = "half.out" }
`, runner.Options{})
	f.checkFault(t, "half", "bad-go.halfwrite", "signal: killed", "half written")
	if s := statuses(f.res); s["after"] != engine.StatusSkipped {
		t.Errorf("a consumer ran on a half-written output: %v", s)
	}
	if _, err := os.Stat(filepath.Join(f.out, "data", "half.out.npz")); !os.IsNotExist(err) {
		t.Errorf("a dataset of the half-written output exists: %v", err)
	}
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func TestFaultLogFlood(t *testing.T) {
	// Race-built plugins write far slower: a shorter flood says the same.
	lines, limit := 60000, 60*time.Second
	if testbin.Race {
		lines, limit = 15000, 3*time.Minute
	}
	before := heapInUse()
	start := time.Now()
	f := faultRun(t, fmt.Sprintf(`
[stages.noisy]
kind = "bad-go.flood"
params = { lines = %d }
`, lines), runner.Options{})
	took := time.Since(start)
	f.checkFault(t, "noisy", "bad-go.flood", fmt.Sprintf("flooded %d lines", lines))
	msg := stageErr(t, f.res, "noisy")
	// The excerpt in the error is a few lines of bounded length, however
	// much the plugin wrote.
	if n := strings.Count(msg, "\n"); n > 20 || len(msg) > 24<<10 {
		t.Errorf("error is %d lines, %d bytes: the excerpt is not bounded", n, len(msg))
	}
	// ~12 MB of stderr (a quarter under race) went through the host; what it keeps is bounded.
	if grown := int64(heapInUse()) - int64(before); grown > 32<<20 {
		t.Errorf("host heap grew by %d MiB over the flood", grown>>20)
	}
	if took > limit {
		t.Errorf("a flood of %d lines took %v", lines, took)
	}
	st, err := os.Stat(f.sess.Reports.Log)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d lines in %v; run log %d KiB; heap %d → %d KiB", lines, took, st.Size()>>10, before>>10, heapInUse()>>10)
}

func TestFaultChildKeepsPluginStdioOpen(t *testing.T) {
	start := time.Now()
	f := faultRun(t, `
[stages.parent]
kind = "bad-go.forkchild"
`, runner.Options{})
	f.checkFault(t, "parent", "bad-go.forkchild", "exit status 4", "holds my stdout and stderr")
	// run's assertNothingLeft has checked that the child ("sleep 317") is
	// gone too.
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("the run took %v: the host waited on the child's pipes", d)
	}
}

// go-plugin's log reader asserts that @message, @level and @timestamp are
// strings and panics otherwise, taking the host down, whenever the logger
// handed to it is enabled. The run log reads plugin stderr itself.
func TestFaultHCLogFieldsOfWrongTypes(t *testing.T) {
	var buf safeBuffer
	logger := hclog.New(&hclog.LoggerOptions{Name: "pipehost", Level: hclog.Trace, Output: &buf})
	f := faultRun(t, `
[stages.odd]
kind = "bad-go.badlog"
[stages.sink]
kind = "dummy.sink"
inputs = { in = "odd.out" }
`, runner.Options{Logger: logger})
	if err := f.res.Err(); err != nil {
		t.Fatal(err)
	}
	f.checkRest(t, "")
	var got []string
	for _, r := range readLog(t, f.sess.Reports.Log) {
		if r["type"] == "plugin_log" {
			if m, _ := r["msg"].(string); strings.Contains(m, "@message") || strings.HasPrefix(m, "[1,2,3]") ||
				strings.HasPrefix(m, "level is a number") || strings.HasPrefix(m, "bad time") {
				got = append(got, m)
			}
		}
	}
	if len(got) != 6 {
		t.Errorf("run log holds %d of the 6 odd lines: %q", len(got), got)
	}
	// go-plugin's own messages still reach the host's logger.
	if !strings.Contains(buf.String(), "plugin") {
		t.Errorf("the host logger saw nothing: %q", buf.String())
	}
}

type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestFaultDynamicOutputOverBudget(t *testing.T) {
	f := faultRun(t, `
[stages.big]
kind = "bad-go.bigblob"
params = { bytes = 1048576 }
`, runner.Options{MemBudget: 256 << 10})
	f.checkFault(t, "big", "bad-go.bigblob", "memory budget", "1048576")
	if peak := f.sess.Arena.Peak(); peak > 256<<10 {
		t.Errorf("arena peak %d over the budget", peak)
	}
}

// mountTmpfs mounts a tmpfs of size bytes at a fresh directory (root only).
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// A 512×256 float32 grid (512 KiB) is saved to a 256 KiB file system: the
// write fails mid-dataset and leaves nothing under the final name.
func TestFaultOutputDirFullMidDataset(t *testing.T) {
	out := mountTmpfs(t, 256<<10)
	isolate(t)
	plugins := testbin.Build(t, "testplugins/go")
	sess, err := runner.Open(context.Background(), runner.Options{
		ConfigPath: writeConfig(t, "p.toml", "[grid]\nwidth = 512\nheight = 256\n"+`
[stages.big]
kind = "dummy.source"
save = { out = ["npz", "cog"] }
`), PluginDirs: []string{plugins}, OutDir: out})
	if err != nil {
		t.Fatal(err)
	}
	res := sess.Run(context.Background())
	sess.Close()
	if res.Err() != nil {
		t.Fatal(res.Err())
	}
	joined := fmt.Sprint(sess.RunErrors)
	wantAll(t, joined, "big.out", "no space left on device")
	filepath.WalkDir(filepath.Join(out, "data"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			t.Errorf("left in data/: %s", p)
		}
		return nil
	})
	if live, _ := sess.Arena.Live(); live != 0 {
		t.Errorf("%d segments live", live)
	}
	assertNothingLeft(t, plugins, os.Getenv("TMPDIR"))
}

// The cache on a full disk: the run succeeds, the run log says why nothing
// was stored, and no partial entry or temporary file is left. Once there is
// room again, the next run stores everything.
func TestFaultCacheDiskFull(t *testing.T) {
	cacheDir := mountTmpfs(t, 128<<10)
	c, err := cache.Open(cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	filler := filepath.Join(cacheDir, "filler")
	fill(t, filler)
	body := `
[stages.wide]
kind = "dummy.source"
[stages.sink]
kind = "dummy.sink"
inputs = { in = "wide.out" }
`
	f := faultRun(t, body, runner.Options{CacheDir: cacheDir})
	if err := f.res.Err(); err != nil {
		t.Fatal(err)
	}
	f.checkRest(t, "")
	if b := blobs(t, cacheDir); len(b) != 0 {
		t.Errorf("blobs stored on a full disk: %v", b)
	}
	logText, _ := os.ReadFile(f.sess.Reports.Log)
	if !bytes.Contains(logText, []byte("could not store cache entry")) || !bytes.Contains(logText, []byte("no space left on device")) {
		t.Errorf("the run log does not say why nothing was stored")
	}
	if len(f.warnings) != 0 {
		t.Errorf("warnings: %q", f.warnings)
	}
	os.Remove(filler)
	f = faultRun(t, body, runner.Options{CacheDir: cacheDir})
	if err := f.res.Err(); err != nil {
		t.Fatal(err)
	}
	f.checkRest(t, "")
	if n := len(blobs(t, cacheDir)); n == 0 {
		t.Error("nothing stored once the disk had room")
	}
}

// fill writes to path until the file system is full.
func fill(t *testing.T, path string) {
	t.Helper()
	fh, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := fh.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
}

// A race inside a plugin fails its stage in the race-enabled run: plugins
// are built with -race and a report ends the plugin (testbin.Main).
func TestFaultRaceInsidePluginIsCaught(t *testing.T) {
	if !testbin.Race {
		t.Skip("plugins are built with -race only in the race-enabled run")
	}
	f := faultRun(t, `
[stages.racy]
kind = "bad-go.race"
`, runner.Options{})
	// 66 is the exit status GORACE asks for on a race.
	f.checkFault(t, "racy", "bad-go.race", "exit status 66")
	found := false
	for _, p := range f.sess.Plugins {
		for _, l := range p.Stderr.Lines() {
			found = found || strings.Contains(l, "WARNING: DATA RACE")
		}
	}
	if !found {
		t.Error("no plugin reported a data race")
	}
}

// The host killed with SIGKILL mid-run: its plugins exit by themselves
// (Pdeathsig, fd-channel EOF), and the next run removes the dead run's
// socket directory and serves what the killed run had stored.
func TestFaultHostKilledMidRun(t *testing.T) {
	tmp := isolate(t)
	plugins := testbin.Build(t, "testplugins/go")
	bin := filepath.Join(testbin.Build(t, "cmd"), "pipehost")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	cfg := writeConfig(t, "p.toml", grid+`
[stages.source]
kind = "dummy.source"
params = { value = 4.0 }
[stages.slow]
kind = "probe.sleep"
inputs = { in = "source.out" }
params = { ms = 30000 }
`)
	cmd := exec.Command(bin, "run", cfg, "--plugin-dir", plugins, "--cache-dir", cacheDir, "--out", filepath.Join(t.TempDir(), "out"))
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "PIPEHOST_PLUGIN_PATH=")
	var stderr safeBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait for source's entry to be stored while slow runs.
	deadline := time.Now().Add(30 * time.Second)
	for cacheEntriesFor(t, cacheDir, "source") == 0 || len(leftovers(plugins)) == 0 {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("source was not stored in 30 s; host stderr:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	gone := time.Now().Add(3 * time.Second)
	for len(leftovers(plugins)) > 0 {
		if time.Now().After(gone) {
			t.Fatalf("plugins still running 3 s after the host was killed: %v", leftovers(plugins))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if stale, _ := filepath.Glob(filepath.Join(tmp, "pipehost-sock-*")); len(stale) == 0 {
		t.Log("the killed host left no socket directory")
	}
	f := faultRun(t, `
[stages.source]
kind = "dummy.source"
params = { value = 4.0 }
[stages.slow]
kind = "probe.sleep"
inputs = { in = "source.out" }
params = { ms = 1 }
`, runner.Options{CacheDir: cacheDir})
	if err := f.res.Err(); err != nil {
		t.Fatal(err)
	}
	f.checkRest(t, "")
	if st := cacheStatus(f.res)["source"]; st != engine.CacheHit {
		t.Errorf("source after the kill: %s, want a hit on what the killed run stored", st)
	}
	// run (inside faultRun) checked that no pipehost-* entry is left in tmp.
}

// A $TMPDIR and cache path of 200 characters.
func TestFaultLongPaths(t *testing.T) {
	base := t.TempDir()
	long := base
	for len(long) < 200 {
		long = filepath.Join(long, strings.Repeat("d", min(40, 200-len(long)-1)))
	}
	if err := os.MkdirAll(long, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", long)
	t.Setenv("PIPEHOST_PLUGIN_PATH", "")
	plugins := testbin.Build(t, "testplugins/go")
	cacheDir := filepath.Join(long, "cache")
	cfg := writeConfig(t, "p.toml", cachedPipeline)
	cfg = strings.ReplaceAll(cfg, "%TRACE%", "")
	body, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, []byte(strings.ReplaceAll(string(body), "%TRACE%", "")), 0o644)
	for i := 0; i < 2; i++ {
		sess, err := runner.Open(context.Background(), runner.Options{ConfigPath: cfg, PluginDirs: []string{plugins},
			CacheDir: cacheDir, OutDir: filepath.Join(long, "out")})
		if err != nil && strings.Contains(err.Error(), "bind: invalid argument") {
			t.Skipf("plugin socket path under a %d-character TMPDIR is too long for a unix socket; enable once the socket-directory change (short private socket dir) is merged: %v", len(long), err)
		}
		if err != nil {
			t.Fatal(err)
		}
		res := sess.Run(context.Background())
		sess.Close()
		if err := res.Err(); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			for name, st := range cacheStatus(res) {
				if st != engine.CacheHit {
					t.Errorf("rerun under long paths: %s is a %s", name, st)
				}
			}
		}
		assertNothingLeft(t, plugins, long)
	}
}
