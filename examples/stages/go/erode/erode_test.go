package main

import (
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pipehost/pipehost/internal/testbin"
	"github.com/pipehost/pipehost/sdk/sdktest"
)

func TestMain(m *testing.M) { testbin.Main(m) }

func TestErodeLowersAPeak(t *testing.T) {
	const w, h = 16, 8
	in := make([]float32, w*h)
	peak := 3*w + 5
	in[peak] = 8
	res, err := sdktest.Run(Erode, sdktest.Options{
		Width: w, Height: h,
		Params: map[string]any{"iterations": 1, "rate": 0.5, "label": "a peak"},
		Inputs: map[string]any{"height": in},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	out, err := sdktest.Grid[float32](res, "eroded")
	if err != nil {
		t.Fatal(err)
	}
	// Each of the 4 lower neighbours takes rate/4 of the remaining drop.
	want := 8 * math.Pow(1-0.5/4, 4)
	if got := float64(out.Data[peak]); math.Abs(got-want) > 1e-5 {
		t.Errorf("peak %g, want %g", got, want)
	}
	for i, v := range out.Data {
		if i != peak && v != in[i] {
			t.Errorf("cell %d moved: %g", i, v)
		}
	}
	if len(res.Spans) != 1 || res.Spans[0].Name != "pass 0" {
		t.Errorf("spans %+v", res.Spans)
	}
	if len(res.Logs) != 1 || res.Logs[0].Message != "eroded 16x8 with a peak" {
		t.Errorf("logs %+v", res.Logs)
	}
}

func TestLabelIsRequired(t *testing.T) {
	_, err := sdktest.Run(Erode, sdktest.Options{Inputs: map[string]any{"height": make([]float32, 64*32)}})
	if err == nil || !strings.Contains(err.Error(), `param "label" is required`) {
		t.Fatalf("error %v", err)
	}
}

// TestPipeline runs pipeline.toml as its README says: the real pipehost,
// terrain.fbm from plugins/go and this plugin, built here.
func TestPipeline(t *testing.T) {
	if testing.Short() {
		t.Skip("builds pipehost and plugins")
	}
	shipped := testbin.Build(t, "plugins/go")
	examples := testbin.Build(t, "examples/stages/go")
	cmds := testbin.Build(t, "cmd")
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(cmds, "pipehost"), "run", "pipeline.toml", "--out", out,
		"--plugin-dir", examples, "--plugin-dir", shipped)
	cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+t.TempDir(), "PIPEHOST_PLUGIN_PATH=")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	for _, f := range []string{"data/erode.eroded.npz", "data/erode.eroded.tif", "summary.md"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
}
