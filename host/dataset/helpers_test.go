package dataset

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/pipehost/pipehost/internal/testenv"
)

// runPy runs one of the checker scripts in testdata with the readers' Python and fails the
// test with its output when it exits non-zero.
func runPy(t *testing.T, script string, args ...string) string {
	t.Helper()
	py := testenv.Python(t)
	abs, err := filepath.Abs(filepath.Join("testdata", script))
	if err != nil {
		t.Fatal(err)
	}
	return runCmd(t, py, append([]string{abs}, args...)...)
}

func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// makeGrid fills a w×h grid of dt with f(x, y), stored little-endian as the writers expect.
func makeGrid(dt DType, w, h int, f func(x, y int) float64) Grid {
	g := Grid{Data: make([]byte, w*h*dt.Size()), Width: w, Height: h, DType: dt}
	row := make([]float64, w)
	for y := 0; y < h; y++ {
		for x := range row {
			row[x] = f(x, y)
		}
		if dt == Int64 || dt == Uint64 {
			for x, v := range row {
				binary.LittleEndian.PutUint64(g.row(y)[8*x:], uint64(int64(v)))
			}
			continue
		}
		encodeRow(dt, row, g.row(y))
	}
	return g
}

// terrain is a smooth field with detail at several scales: compressible like real output.
func terrain(x, y int) float64 {
	fx, fy := float64(x), float64(y)
	return 1000*math.Sin(fx/97)*math.Cos(fy/131) + 120*math.Sin((fx+2*fy)/17) + 7*math.Sin(fx*fy/53)
}

// listDir returns the names in dir, sorted.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

func ptr[T any](v T) *T { return &v }

// runPyModule runs `python -m module args...` with the readers' Python.
func runPyModule(t *testing.T, module string, args ...string) string {
	t.Helper()
	py := testenv.Python(t)
	return runCmd(t, py, append([]string{"-m", module}, args...)...)
}
