package pluginmgr_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/pipehost/pipehost/host/pluginmgr"
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
func nativeBinary(b *testing.B, lang, rel string) string {
	b.Helper()
	title := map[string]string{"cpp": "C++", "rust": "Rust"}[lang]
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
	m, err := pluginmgr.New(pluginmgr.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	var launchNs int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p, err := m.Launch(context.Background(), path)
		if err != nil {
			b.Fatal(err)
		}
		launchNs += p.LaunchNs
		if p.SDK != sdk {
			b.Fatalf("sdk %q, want %q", p.SDK, sdk)
		}
		b.StopTimer()
		p.Stop()
		b.StartTimer()
	}
	b.ReportMetric(float64(launchNs)/float64(b.N)/1e6, "ms-to-describe")
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
