// Package testenv locates the tools that tests borrow from outside Go: the Python virtual
// environment that holds the independent readers (GDAL, rasterio, NumPy, pyarrow, GeoPandas).
package testenv

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// RequireEnv names the variable that turns a missing reader from a skip into a failure.
// `make test` sets it so that a machine without the readers cannot pass by skipping.
const RequireEnv = "PIPEHOST_REQUIRE_READERS"

// PythonEnv names the variable that points at a Python interpreter to use instead of the
// module's own venv.
const PythonEnv = "PIPEHOST_PYTHON"

var (
	rootOnce sync.Once
	root     string
)

// ModuleRoot returns the directory that holds the module's go.mod, found by walking up from
// the working directory (a test's working directory is its package directory). It returns ""
// when no go.mod is found.
func ModuleRoot() string {
	rootOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			return
		}
		for {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				root = dir
				return
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				return
			}
			dir = parent
		}
	})
	return root
}

// Python returns the path of the Python interpreter whose environment holds the test readers:
// $PIPEHOST_PYTHON when set, else <module root>/.tools/venv/bin/python. When neither exists the
// test is skipped, or fails when $PIPEHOST_REQUIRE_READERS is 1.
func Python(t testing.TB) string {
	t.Helper()
	path := os.Getenv(PythonEnv)
	where := "$" + PythonEnv
	if path == "" {
		where = "the module's venv"
		if r := ModuleRoot(); r != "" {
			path = filepath.Join(r, ".tools", "venv", "bin", "python")
		}
	}
	if path != "" {
		if fi, err := os.Stat(path); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return path
		}
	}
	msg := "no Python with the test readers found (looked at " + where
	if path != "" {
		msg += ": " + path
	}
	msg += "); run `scripts/ensure-deps.sh python` to create .tools/venv"
	if os.Getenv(RequireEnv) == "1" {
		t.Fatal(msg + " ($" + RequireEnv + "=1 makes this a failure)")
	}
	t.Skip(msg)
	return ""
}
