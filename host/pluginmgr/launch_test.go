package pluginmgr_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pipehost/pipehost/host/pluginmgr"
	"github.com/pipehost/pipehost/internal/clock"
	"github.com/pipehost/pipehost/internal/testbin"
)

func TestMain(m *testing.M) { testbin.Main(m) }

func TestLaunchDescribeStop(t *testing.T) {
	dir := testbin.Build(t, "testplugins/go")
	t.Setenv("TMPDIR", t.TempDir())
	m, err := pluginmgr.New(pluginmgr.Options{})
	if err != nil {
		t.Fatal(err)
	}
	paths, err := pluginmgr.Discover([]string{testbin.Copy(t, dir, "source", "transform", "sink")})
	if err != nil {
		t.Fatal(err)
	}
	plugins, errs := m.LaunchAll(context.Background(), paths)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	reg, err := pluginmgr.NewRegistry(plugins)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"dummy.offset", "dummy.points", "dummy.scale", "dummy.sink", "dummy.source"}
	if got := reg.Kinds(); len(got) != len(want) {
		t.Fatalf("kinds %v, want %v", got, want)
	}
	e, _ := reg.Entry("dummy.offset")
	if filepath.Base(e.Plugin.Path) != "transform" || e.Plugin.SDK != "go" || len(e.Plugin.Digest()) != 64 {
		t.Errorf("entry %+v", e.Plugin)
	}
	// Two plugins offering one kind is refused.
	if _, err := pluginmgr.NewRegistry(append(plugins, e.Plugin)); err == nil {
		t.Error("duplicate kind accepted")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range plugins {
		if !p.Exited() {
			t.Errorf("%s still running after Close", p.Path)
		}
	}
}

// BenchmarkLaunch measures launch → handshake → first Describe reply → stop
// of one Go plugin.
func BenchmarkLaunch(b *testing.B) {
	benchLaunch(b, filepath.Join(testbin.Build(b, "testplugins/go"), "source"), "go")
}

// BenchmarkLaunchCpp measures the same for the minimal C++ plugin
// (bin/testplugins/minimal-cpp, built by make build) and the C++ reference
// plugin.
func BenchmarkLaunchCpp(b *testing.B) {
	for _, p := range []string{"testplugins/minimal-cpp", "plugins/ref-cpp"} {
		b.Run(filepath.Base(p), func(b *testing.B) { benchLaunch(b, nativeBinary(b, "cpp", p), "cpp") })
	}
}

// BenchmarkLaunchRust measures the same for the Rust reference plugin
// (bin/plugins/ref-rust, built by make build).
func BenchmarkLaunchRust(b *testing.B) {
	benchLaunch(b, nativeBinary(b, "rust", "plugins/ref-rust"), "rust")
}

// nativeBinary returns bin/<rel> of the module. A missing binary skips the
// benchmark, unless PIPEHOST_REQUIRE_NATIVE=1 (make test) makes it a failure.
func nativeBinary(b testing.TB, lang, rel string) string {
	b.Helper()
	title := map[string]string{"cpp": "C++", "rust": "Rust", "py": "Python"}[lang]
	path := filepath.Join(testbin.ModuleRoot(), "bin", rel)
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("PIPEHOST_REQUIRE_NATIVE") == "1" {
			b.Fatalf("%s plugin missing (run make build-%s): %v", title, lang, err)
		}
		b.Skipf("%s plugin missing (run make build-%s): %v", title, lang, err)
	}
	return path
}

// benchLaunch launches the plugin at path, checks it speaks through the
// given SDK and stops it, b.N times; only the launch is timed.
func benchLaunch(b *testing.B, path, sdk string) {
	var launchNs int64
	launches(b, path, func(p *pluginmgr.Plugin, _ int64) {
		launchNs += p.LaunchNs
		if p.SDK != sdk {
			b.Fatalf("sdk %q, want %q", p.SDK, sdk)
		}
	})
	b.ReportMetric(float64(launchNs)/float64(b.N)/1e6, "ms-to-describe")
}

// launches launches the plugin at path b.N times, hands each launched
// plugin and the clock.Now of its launch's start to measure, and stops it
// outside the timer.
func launches(b *testing.B, path string, measure func(p *pluginmgr.Plugin, start int64)) {
	m, err := pluginmgr.New(pluginmgr.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := clock.Now()
		p, err := m.Launch(context.Background(), path)
		if err != nil {
			b.Fatal(err)
		}
		measure(p, start)
		b.StopTimer()
		p.Stop()
		b.StartTimer()
	}
}

// BenchmarkLaunchTen starts ten plugin processes at once, as a run with ten
// plugin binaries does.
func BenchmarkLaunchTen(b *testing.B) {
	dir := testbin.Build(b, "testplugins/go")
	var paths []string
	for i := 0; i < 10; i++ {
		paths = append(paths, filepath.Join(dir, []string{"source", "transform", "sink"}[i%3]))
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m, err := pluginmgr.New(pluginmgr.Options{})
		if err != nil {
			b.Fatal(err)
		}
		_, errs := m.LaunchAll(context.Background(), paths)
		if len(errs) > 0 {
			b.Fatal(errs)
		}
		b.StopTimer()
		m.Close()
		b.StartTimer()
	}
}

// A run killed with SIGKILL cannot remove its socket directory; the next
// run removes it (and leaves a live run's alone).
func TestStaleSocketDirsAreRemoved(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	base := os.TempDir()
	// A pid that is certainly gone: a child that has exited and been reaped.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := filepath.Join(base, "pipehost-sock-"+strconv.Itoa(cmd.Process.Pid)+"-123")
	live := filepath.Join(base, "pipehost-sock-"+strconv.Itoa(os.Getpid())+"-456")
	other := filepath.Join(base, "pipehost-sock-notapid")
	for _, d := range []string{dead, live, other} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(d, "plugin1"), nil, 0o600)
	}
	m, err := pluginmgr.New(pluginmgr.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("stale socket directory %s survived", dead)
	}
	for _, d := range []string{live, other} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s was removed: %v", d, err)
		}
	}
}

// A plugin's socket path must fit sun_path (108 bytes with its NUL) however
// long $TMPDIR is: the socket directory falls back to a shorter base when
// $TMPDIR leaves too little room. Real Go, Rust and C++ plugins start with
// $TMPDIR lengths around the point where the fallback begins and at 100 and
// 200 bytes, and nothing is left behind in $TMPDIR or /tmp.
func TestSocketPathFitsAnyTMPDIR(t *testing.T) {
	goPlugin := filepath.Join(testbin.Build(t, "testplugins/go"), "source")
	// A short root, so the sweep below can start under the fallback point.
	root, err := os.MkdirTemp("/tmp", "ph")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	tmpdirOf := func(n int) string {
		if n <= len(root)+1 {
			t.Fatalf("length %d is shorter than the test's root %s", n, root)
		}
		d := root + "/" + strings.Repeat("d", n-len(root)-1)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		return d
	}
	// launch starts each plugin with TMPDIR set to tmp and checks the
	// socket it made; it returns whether the socket directory was in tmp.
	launch := func(t *testing.T, tmp string, paths ...string) bool {
		t.Setenv("TMPDIR", tmp)
		m, err := pluginmgr.New(pluginmgr.Options{})
		if err != nil {
			t.Fatal(err)
		}
		inTmp := filepath.Dir(m.SocketDir()) == tmp
		// Guaranteed, not just observed: the longest name os.MkdirTemp can
		// give the directory (a uint32 in decimal) plus go-plugin's longest
		// socket name ("plugin" and a uint32) still leave room for the NUL.
		dirName := "pipehost-sock-" + strconv.Itoa(os.Getpid()) + "-4294967295"
		if worst := filepath.Join(filepath.Dir(m.SocketDir()), dirName, "plugin4294967295"); len(worst) >= 108 {
			t.Errorf("TMPDIR of %d bytes: a socket path could be %s (%d bytes)", len(tmp), worst, len(worst))
		}
		for _, path := range paths {
			p, err := m.Launch(context.Background(), path)
			if err != nil {
				m.Close()
				t.Fatalf("TMPDIR of %d bytes, socket directory %s: %v", len(tmp), m.SocketDir(), err)
			}
			socks, _ := filepath.Glob(filepath.Join(m.SocketDir(), "*"))
			for _, s := range socks {
				if len(s) >= 108 {
					t.Errorf("socket path %s is %d bytes", s, len(s))
				}
			}
			if len(socks) == 0 {
				t.Errorf("%s: no socket in %s", path, m.SocketDir())
			}
			p.Stop()
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(m.SocketDir()); !os.IsNotExist(err) {
			t.Errorf("socket directory %s left behind", m.SocketDir())
		}
		return inTmp
	}
	// The sweep crosses the fallback point for any pid length; the longest
	// $TMPDIR still used is then tried with every SDK too.
	longestUsed := 0
	for n := 30; n <= 70; n++ {
		if launch(t, tmpdirOf(n), goPlugin) {
			longestUsed = n
		}
	}
	if longestUsed == 0 {
		t.Fatal("no $TMPDIR of 30 to 70 bytes was used for sockets")
	}
	if longestUsed >= 70 {
		t.Fatalf("a $TMPDIR of %d bytes was still used: the sweep did not reach the fallback", longestUsed)
	}
	all := []string{goPlugin,
		nativeBinary(t, "rust", "plugins/ref-rust"),
		nativeBinary(t, "cpp", "testplugins/minimal-cpp"),
		nativeBinary(t, "cpp", "plugins/ref-cpp")}
	for _, n := range []int{longestUsed, 100, 200} {
		tmp := tmpdirOf(n)
		if inTmp := launch(t, tmp, all...); inTmp != (n == longestUsed) {
			t.Errorf("TMPDIR of %d bytes: socket directory in it = %v", n, inTmp)
		}
	}
	// Nothing of ours is left in any base.
	pidPrefix := "pipehost-sock-" + strconv.Itoa(os.Getpid()) + "-"
	for _, base := range []string{"/tmp", os.Getenv("XDG_RUNTIME_DIR")} {
		if base == "" {
			continue
		}
		if left, _ := filepath.Glob(filepath.Join(base, pidPrefix+"*")); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	}
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && (strings.HasPrefix(d.Name(), "pipehost-") || strings.HasPrefix(d.Name(), "plugin")) {
			t.Errorf("left behind: %s", p)
		}
		return nil
	})
}

// A host killed with SIGKILL while $TMPDIR was too long left its socket
// directory in the fallback base; the next host removes it from there too.
func TestStaleSocketDirInFallbackIsRemoved(t *testing.T) {
	long := filepath.Join(t.TempDir(), strings.Repeat("x", 150))
	if err := os.MkdirAll(long, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", long)
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead, err := os.MkdirTemp("/tmp", "pipehost-sock-"+strconv.Itoa(cmd.Process.Pid)+"-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dead)
	m, err := pluginmgr.New(pluginmgr.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if strings.HasPrefix(m.SocketDir(), long) {
		t.Fatalf("socket directory %s under a %d-byte TMPDIR", m.SocketDir(), len(long))
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("stale socket directory %s survived", dead)
	}
}

// A plugin the catalog describes and a run then starts is not hashed again,
// not even by the launch callback that records its digest (the run log's
// plugin_launch does): its digest is the catalog's.
func TestStartKeepsTheCatalogDigest(t *testing.T) {
	dir := testbin.Build(t, "testplugins/go")
	t.Setenv("TMPDIR", t.TempDir())
	paths, err := pluginmgr.Discover([]string{testbin.Copy(t, dir, "transform")})
	if err != nil {
		t.Fatal(err)
	}
	catDir := t.TempDir()
	describe := func() (*pluginmgr.Manager, []*pluginmgr.Plugin) {
		m, err := pluginmgr.New(pluginmgr.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		plugins, _, errs := m.Describe(context.Background(), paths, pluginmgr.OpenCatalog(catDir, func(string) {}))
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		return m, plugins
	}
	first, _ := describe() // launched and recorded
	first.Close()
	time.Sleep(2100 * time.Millisecond) // past the catalog's racy window: the next run trusts the stat
	describe()                          // remembers the digest
	m, plugins := describe()
	if plugins[0].Running() {
		t.Fatal("the plugin was launched to be described; want it from the catalog")
	}
	var logged string
	m.OnLaunch(func(p *pluginmgr.Plugin) { logged = p.Digest() })
	before := pluginmgr.FileHashes()
	live, changed, err := m.Start(context.Background(), plugins[0], pluginmgr.OpenCatalog(catDir, func(string) {}))
	if err != nil || changed {
		t.Fatalf("Start: changed %v, %v", changed, err)
	}
	if n := pluginmgr.FileHashes() - before; n != 0 {
		t.Errorf("the started plugin was hashed %d times", n)
	}
	if logged != plugins[0].Digest() || live.Digest() != logged || len(logged) != 64 {
		t.Errorf("digests: logged %q, live %q, catalog %q", logged, live.Digest(), plugins[0].Digest())
	}
}
