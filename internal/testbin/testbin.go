// Package testbin builds the repository's plugin executables for tests, once
// per test process, so tests drive real plugin processes.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var (
	mu    sync.Mutex
	built = map[string]string{}
	// baseTmp is read once: tests may point TMPDIR elsewhere later.
	baseTmp = os.TempDir()
)

// ModuleRoot is the repository root (the directory holding go.mod).
func ModuleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Build compiles each Go main package under pkgDir (relative to the module
// root, e.g. "testplugins/go") into one directory and returns it. The
// directory lives until the test process exits.
func Build(tb testing.TB, pkgDir string) string {
	tb.Helper()
	mu.Lock()
	defer mu.Unlock()
	if dir, ok := built[pkgDir]; ok {
		return dir
	}
	root := ModuleRoot()
	entries, err := os.ReadDir(filepath.Join(root, pkgDir))
	if err != nil {
		tb.Fatalf("testbin: %v", err)
	}
	dir, err := os.MkdirTemp(baseTmp, "pipehost-testbin-")
	if err != nil {
		tb.Fatalf("testbin: %v", err)
	}
	var pkgs []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		// Only directories with Go files are packages (one being written
		// may still be empty).
		if gos, _ := filepath.Glob(filepath.Join(root, pkgDir, e.Name(), "*.go")); len(gos) > 0 {
			pkgs = append(pkgs, "./"+filepath.ToSlash(filepath.Join(pkgDir, e.Name())))
		}
	}
	args := []string{"build", "-o", dir + "/"}
	if Race {
		args = append(args, "-race")
	}
	args = append(args, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("testbin: go %v: %v\n%s", args, err, out)
	}
	built[pkgDir] = dir
	return dir
}

// Cleanup removes every directory Build made; call it from TestMain.
func Cleanup() {
	mu.Lock()
	defer mu.Unlock()
	for k, dir := range built {
		os.RemoveAll(dir)
		delete(built, k)
	}
}

// Copy puts the named executables from src into a fresh directory, so a
// test can choose exactly which plugins a run sees.
func Copy(tb testing.TB, src string, names ...string) string {
	tb.Helper()
	dir := tb.TempDir()
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			tb.Fatalf("testbin: %v", err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o755); err != nil {
			tb.Fatalf("testbin: %v", err)
		}
	}
	return dir
}

// Main wraps a package's TestMain body: it runs the tests and removes the
// built binaries.
func Main(m *testing.M) {
	if Race {
		// A race found inside a plugin ends that plugin at once (exit
		// status 66), so the stage fails and so does the test; plugins get
		// GORACE from the host's environment.
		os.Setenv("GORACE", "halt_on_error=1 exitcode=66")
	}
	code := m.Run()
	Cleanup()
	if code != 0 {
		fmt.Fprintln(os.Stderr, "testbin: tests failed")
	}
	os.Exit(code)
}

// BuildAs compiles the Go main package pkg (relative to the module root)
// into the executable out with extra linker flags (e.g. "-X main.name=a"),
// so a test can make distinct binaries from one package.
func BuildAs(tb testing.TB, pkg, out, ldflags string) {
	tb.Helper()
	cmd := exec.Command("go", "build", "-ldflags", ldflags, "-o", out, "./"+filepath.ToSlash(pkg))
	cmd.Dir = ModuleRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("testbin: go build -ldflags %q %s: %v\n%s", ldflags, pkg, err, b)
	}
}
