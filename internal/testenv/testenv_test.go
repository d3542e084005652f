package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

func TestModuleRootHoldsGoMod(t *testing.T) {
	r := ModuleRoot()
	if r == "" {
		t.Fatal("ModuleRoot found no go.mod above the package directory")
	}
	data, err := os.ReadFile(filepath.Join(r, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "module github.com/pipehost/pipehost"; string(data[:len(want)]) != want {
		t.Fatalf("go.mod at %s starts with %q, want %q", r, data[:len(want)], want)
	}
}

func TestPythonHonoursEnv(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(PythonEnv, exe)
	if got := Python(t); got != exe {
		t.Fatalf("Python() = %q, want %q from $%s", got, exe, PythonEnv)
	}
}

func TestPythonMissingSkipsOrFails(t *testing.T) {
	t.Setenv(PythonEnv, filepath.Join(t.TempDir(), "no-such-python"))
	t.Setenv(RequireEnv, "")
	ft := &fakeTB{TB: t}
	func() {
		defer func() { recover() }()
		Python(ft)
	}()
	if !ft.skipped || ft.failed {
		t.Fatalf("missing interpreter without %s: skipped=%v failed=%v, want a skip", RequireEnv, ft.skipped, ft.failed)
	}
	t.Setenv(RequireEnv, "1")
	ft = &fakeTB{TB: t}
	func() {
		defer func() { recover() }()
		Python(ft)
	}()
	if !ft.failed {
		t.Fatalf("missing interpreter with %s=1 did not fail", RequireEnv)
	}
}

// fakeTB records Skip and Fatal instead of ending the real test; both panic to stop the
// caller the way runtime.Goexit would.
type fakeTB struct {
	testing.TB
	skipped, failed bool
}

func (f *fakeTB) Helper()           {}
func (f *fakeTB) Skip(args ...any)  { f.skipped = true; panic("skip") }
func (f *fakeTB) Fatal(args ...any) { f.failed = true; panic("fatal") }
