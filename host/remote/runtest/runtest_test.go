// Package runtest runs whole pipelines against the real REAPI servers of
// internal/remotetest: two hosts sharing one remote cache, and the
// failures a shared cache must survive (a server down, hung or serving
// bytes that do not match their digest).
package runtest_test

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/remote"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/remotetest"
	"github.com/pipehost/pipehost/internal/testbin"
)

func TestMain(m *testing.M) { remotetest.Main(m) }

// pipeline is noise → blur → final (saved). The seed is new for every test
// so the shared server holds none of its keys yet.
func pipeline(seed int64) string {
	return fmt.Sprintf(`[run]
id = "remote"
seed = %d

[grid]
topology = "sphere"
width = 512
height = 256
levels = 2

[stages.noise]
kind = "ref.noise-go"
params = { octaves = 4, cell = 32 }

[stages.blur]
kind = "ref.blur-go"
inputs = { in = "noise.out" }
params = { radius = 2 }

[stages.final]
kind = "ref.blur-go"
inputs = { in = "blur.out" }
params = { radius = 1 }
save = { out = ["cog", "npz"] }
`, seed)
}

// host is one machine: its own local cache and output directory.
type host struct {
	cacheDir, outDir string
	plugins          string // "" : the Go reference plugins
	warnings         []string
	mu               sync.Mutex
}

func newHost(t *testing.T) *host {
	d := t.TempDir()
	return &host{cacheDir: filepath.Join(d, "cache"), outDir: filepath.Join(d, "out")}
}

func (h *host) warns() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.warnings...)
}

// open starts a session of cfg on this host with remoteCache behind its
// local cache.
func (h *host) open(t *testing.T, cfg, remoteCache string, refresh ...string) *runner.Session {
	t.Helper()
	sess, err := h.session(t, cfg, func(o *runner.Options) {
		o.RemoteCache = remoteCache
		for _, r := range refresh {
			o.Engine.Refresh[r] = true
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

// session opens cfg on this host with options edit may change (remote
// execution, overrides); the error is runner.Open's.
func (h *host) session(t *testing.T, cfg string, edit func(*runner.Options)) (*runner.Session, error) {
	t.Helper()
	// A short TMPDIR: the plugins' socket paths must fit sun_path.
	tmp, err := os.MkdirTemp("", "ph")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	t.Setenv("TMPDIR", tmp)
	t.Setenv("PIPEHOST_PLUGIN_PATH", "")
	plugins := h.plugins
	if plugins == "" {
		plugins = testbin.Build(t, "plugins/go")
	}
	opts := runner.Options{
		ConfigPath: cfg,
		PluginDirs: []string{plugins},
		CacheDir:   h.cacheDir,
		OutDir:     h.outDir,
		Warn: func(s string) {
			h.mu.Lock()
			h.warnings = append(h.warnings, s)
			h.mu.Unlock()
		},
	}
	opts.Engine.Refresh = map[string]bool{}
	if edit != nil {
		edit(&opts)
	}
	return runner.Open(context.Background(), opts)
}

// run runs a session to its end and checks it succeeded and freed every
// segment.
func run(t *testing.T, sess *runner.Session) *engine.Result {
	t.Helper()
	res := sess.Run(context.Background())
	sess.Close()
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	if len(sess.RunErrors) > 0 {
		t.Fatal(sess.RunErrors)
	}
	if live, _ := sess.Arena.Live(); live != 0 {
		t.Errorf("%d segments live after the run", live)
	}
	return res
}

func byName(res *engine.Result) map[string]*engine.StageResult {
	m := map[string]*engine.StageResult{}
	for _, r := range res.Stages {
		m[r.Name] = r
	}
	return m
}

// datasets hashes every file the run wrote under data/, read back from disk.
func datasets(t *testing.T, outDir string) map[string]string {
	t.Helper()
	got := map[string]string{}
	root := filepath.Join(outDir, "data")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		got[rel] = cache.DigestOf(b).Hash
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 {
		t.Fatalf("no datasets under %s", root)
	}
	return got
}

func sameDatasets(t *testing.T, a, b map[string]string) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("datasets differ: %v vs %v", a, b)
	}
	for k, v := range a {
		if b[k] != v {
			t.Errorf("dataset %s differs between the hosts", k)
		}
	}
}

func writeConfig(t *testing.T, body string) string {
	p := filepath.Join(t.TempDir(), "p.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTwoHostsShareOneCache: the second host, with an empty local cache,
// is served entirely from the remote cache and writes the same bytes.
func TestTwoHostsShareOneCache(t *testing.T) {
	env := remotetest.Servers(t)
	cfg := writeConfig(t, pipeline(time.Now().UnixNano()))

	a := newHost(t)
	resA := run(t, a.open(t, cfg, env.Cache))
	for name, r := range byName(resA) {
		if r.Cache != engine.CacheMiss {
			t.Fatalf("host A, stage %s: cache %s, want a miss (fresh keys)", name, r.Cache)
		}
	}

	b := newHost(t)
	resB := run(t, b.open(t, cfg, env.Cache))
	for name, r := range byName(resB) {
		if r.Cache != engine.CacheHit || !strings.Contains(r.Note, "remote cache") {
			t.Errorf("host B, stage %s: cache %s (%q), want a remote hit", name, r.Cache, r.Note)
		}
		if r.Slot != -1 {
			t.Errorf("host B, stage %s ran on worker slot %d", name, r.Slot)
		}
	}
	sameDatasets(t, datasets(t, a.outDir), datasets(t, b.outDir))
	if w := append(a.warns(), b.warns()...); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}
}

// TestTwoHostsShareOneCacheMixed runs examples/mixed.toml (Go, Rust and C++
// stages) on two hosts sharing one cache: the second is served entirely
// from it and writes the same COG and NPZ bytes.
func TestTwoHostsShareOneCacheMixed(t *testing.T) {
	env := remotetest.Servers(t)
	root := testbin.ModuleRoot()
	plugins := t.TempDir()
	for _, p := range []string{filepath.Join(testbin.Build(t, "plugins/go"), "ref-go"),
		filepath.Join(root, "bin", "plugins", "ref-cpp"), filepath.Join(root, "bin", "plugins", "ref-rust")} {
		b, err := os.ReadFile(p)
		if err != nil {
			if os.Getenv("PIPEHOST_REQUIRE_NATIVE") == "1" {
				t.Fatalf("reference plugin missing (run make build): %v", err)
			}
			t.Skipf("reference plugin missing (run make build): %v", err)
		}
		if err := os.WriteFile(filepath.Join(plugins, filepath.Base(p)), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	body, err := os.ReadFile(filepath.Join(root, "examples", "mixed.toml"))
	if err != nil {
		t.Fatal(err)
	}
	// A fresh seed: the shared server holds none of these keys yet.
	cfg := writeConfig(t, strings.Replace(string(body), "seed = 7", fmt.Sprintf("seed = %d", time.Now().UnixNano()), 1))

	a := newHost(t)
	a.plugins = plugins
	resA := run(t, a.open(t, cfg, env.Cache))
	b := newHost(t)
	b.plugins = plugins
	resB := run(t, b.open(t, cfg, env.Cache))
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
	if len(da) < 2 {
		t.Fatalf("host A wrote %v, want a COG and an NPZ", da)
	}
	sameDatasets(t, da, db)
}

// TestRemoteInputFetchedForARunningStage: a stage that runs on the second
// host reads its remote-hit input, fetched into a sealed segment.
func TestRemoteInputFetchedForARunningStage(t *testing.T) {
	env := remotetest.Servers(t)
	cfg := writeConfig(t, pipeline(time.Now().UnixNano()))
	a := newHost(t)
	run(t, a.open(t, cfg, env.Cache))
	b := newHost(t)
	res := byName(run(t, b.open(t, cfg, env.Cache, "final")))
	if res["blur"].Cache != engine.CacheHit || res["final"].Cache != engine.CacheMiss || res["final"].Slot < 0 {
		t.Fatalf("blur %s, final %s (slot %d): want blur a remote hit and final run", res["blur"].Cache, res["final"].Cache, res["final"].Slot)
	}
	sameDatasets(t, datasets(t, a.outDir), datasets(t, b.outDir))
}

// TestCorruptRemoteBlobRecomputed: bytes in the remote CAS that do not
// match their digest are rejected on download and the stage that made them
// is recomputed; the datasets are still right.
func TestCorruptRemoteBlobRecomputed(t *testing.T) {
	env := remotetest.Servers(t)
	if env.BazelRemoteDir == "" {
		t.Fatal("the bazel-remote storage directory is not known")
	}
	cfg := writeConfig(t, pipeline(time.Now().UnixNano()))
	a := newHost(t)
	resA := byName(run(t, a.open(t, cfg, env.Cache)))
	d := resA["blur"].Outputs["out"].Digest
	var stored string
	filepath.Walk(env.BazelRemoteDir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && strings.Contains(filepath.Base(p), d.Hash) && strings.Contains(p, "cas") {
			stored = p
		}
		return nil
	})
	if stored == "" {
		t.Fatalf("blob %s not found under %s", d.Hash[:12], env.BazelRemoteDir)
	}
	flipByte(t, stored)

	b := newHost(t)
	res := byName(run(t, b.open(t, cfg, env.Cache, "final")))
	if r := res["blur"]; r.Cache != engine.CacheMiss || !strings.Contains(r.MissReason, "corrupt") {
		t.Errorf("blur: cache %s (%q), want recomputed after the corrupt download", r.Cache, r.MissReason)
	}
	if r := res["noise"]; r.Cache != engine.CacheHit {
		t.Errorf("noise: cache %s, want a remote hit", r.Cache)
	}
	sameDatasets(t, datasets(t, a.outDir), datasets(t, b.outDir))

	// The second host uploaded the recomputed bytes again. Whether the
	// server replaces the blob it holds is up to it (REAPI lets a server
	// answer an upload of a digest it has without reading it, and
	// bazel-remote sometimes does): a third host either reads blur from the
	// remote cache or finds it corrupt again and recomputes it, never uses
	// the bad bytes, and writes the same datasets.
	c := newHost(t)
	res = byName(run(t, c.open(t, cfg, env.Cache, "final")))
	if r := res["blur"]; r.Cache != engine.CacheHit && (r.Cache != engine.CacheMiss || !strings.Contains(r.MissReason, "corrupt")) {
		t.Errorf("third host, blur: cache %s (%q), want a remote hit or a recompute of a corrupt blob", r.Cache, r.MissReason)
	}
	sameDatasets(t, datasets(t, a.outDir), datasets(t, c.outDir))
}

func flipByte(t *testing.T, path string) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	st, _ := fh.Stat()
	var one [1]byte
	off := st.Size() - 1000 // inside the data, past any header
	if _, err := fh.ReadAt(one[:], off); err != nil {
		t.Fatal(err)
	}
	one[0] ^= 0xff
	if _, err := fh.WriteAt(one[:], off); err != nil {
		t.Fatal(err)
	}
}

// oneWarning checks the run warned exactly once, naming the server.
func oneWarning(t *testing.T, h *host, target string) {
	t.Helper()
	w := h.warns()
	if len(w) != 1 || !strings.Contains(w[0], strings.TrimPrefix(target, "grpc://")) {
		t.Errorf("warnings %q: want exactly one, naming %s", w, target)
	}
}

// TestCacheServerDown: nothing listens at the address: one warning, and the
// run goes on with the local cache.
func TestCacheServerDown(t *testing.T) {
	target, proc := remotetest.BazelRemote(t)
	proc.Kill()
	proc.Wait()
	h := newHost(t)
	res := byName(run(t, h.open(t, writeConfig(t, pipeline(1)), target)))
	if res["final"].Status != engine.StatusOK {
		t.Fatal(res["final"].Err)
	}
	oneWarning(t, h, target)
}

// TestCacheServerGoesAwayMidRun: the server answered when the session
// opened and is gone when the stages look their keys up.
func TestCacheServerGoesAwayMidRun(t *testing.T) {
	target, proc := remotetest.BazelRemote(t)
	h := newHost(t)
	sess := h.open(t, writeConfig(t, pipeline(time.Now().UnixNano())), target)
	proc.Kill()
	proc.Wait()
	start := time.Now()
	res := byName(run(t, sess))
	if res["final"].Status != engine.StatusOK || res["final"].Cache != engine.CacheMiss {
		t.Fatalf("final: %s %s", res["final"].Status, res["final"].Cache)
	}
	oneWarning(t, h, target)
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the run took %s with the server gone", d)
	}
}

// TestCacheServerHung: the server accepts connections and never answers:
// the session gives up on it after the connect timeout, with one warning.
func TestCacheServerHung(t *testing.T) {
	target, proc := remotetest.BazelRemote(t)
	if err := proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	h := newHost(t)
	start := time.Now()
	res := byName(run(t, h.open(t, writeConfig(t, pipeline(2)), target)))
	if res["final"].Status != engine.StatusOK {
		t.Fatal(res["final"].Err)
	}
	oneWarning(t, h, target)
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("the run took %s with a hung server", d)
	}
}

// TestInterruptedUploadLeavesNoEntry kills the cache server while a run
// uploads a 256 MiB output, then starts a server again on the blobs the
// killed one left: the stage's key must not name bytes that are missing.
func TestInterruptedUploadLeavesNoEntry(t *testing.T) {
	dir, port := t.TempDir(), remotetest.FreePort(t)
	target, proc := remotetest.BazelRemoteAt(t, dir, port)
	cfg := writeConfig(t, fmt.Sprintf(`[run]
seed = %d
[grid]
width = 8192
height = 8192
[stages.noise]
kind = "ref.noise-go"
params = { octaves = 1, cell = 64 }
`, time.Now().UnixNano()))
	h := newHost(t)
	sess := h.open(t, cfg, target)
	// Kill the server as soon as its store has bytes of the upload (the
	// run's other cache writes are small and go first).
	killed := make(chan bool, 1)
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				killed <- false
				return
			case <-time.After(10 * time.Millisecond):
			}
			var big bool
			filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
				if err == nil && !info.IsDir() && info.Size() > 1<<20 {
					big = true
				}
				return nil
			})
			if big {
				proc.Kill()
				killed <- true
				return
			}
		}
	}()
	res := sess.Run(context.Background())
	sess.Close()
	close(stop)
	if !<-killed {
		t.Fatal("the run ended before any upload bytes reached the server")
	}
	if err := res.Err(); err != nil {
		t.Fatalf("the run failed with the cache server killed: %v", err)
	}
	oneWarning(t, h, target)
	key := byName(res)["noise"].Key
	proc.Wait()

	target, _ = remotetest.BazelRemoteAt(t, dir, port)
	c, err := remote.Dial(context.Background(), target, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	recs, err := c.LookupKey(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	var digests []remote.Digest
	for _, r := range recs {
		digests = append(digests, r.Digest)
	}
	if missing, err := c.FindMissing(context.Background(), digests); err != nil || len(missing) > 0 {
		t.Fatalf("the entry names blobs the server lacks: %v (%v)", missing, err)
	}
	t.Logf("after the interrupted upload: entry %v", recs != nil)
}
