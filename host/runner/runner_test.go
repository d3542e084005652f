package runner_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/testbin"
	"github.com/pipehost/pipehost/testplugins/observe"
)

func TestMain(m *testing.M) { testbin.Main(m) }

// isolate gives the test its own temp dir (where socket dirs are made) and
// an empty plugin path, and checks at the end that nothing is left there.
func isolate(t *testing.T) string {
	t.Helper()
	// A short directory, not t.TempDir(): the plugins' unix socket paths
	// live under it and must stay within sun_path's 108 bytes however long
	// the test's name and however wide the host's pid.
	tmp, err := os.MkdirTemp("", "ph")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	t.Setenv("TMPDIR", tmp)
	t.Setenv("PIPEHOST_PLUGIN_PATH", "")
	return tmp
}

func writeConfig(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func readTrace(t *testing.T, path string) map[string]observe.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs := map[string]observe.Record{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r observe.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("trace line %q: %v", sc.Text(), err)
		}
		if _, dup := recs[r.Stage]; dup {
			t.Fatalf("stage %s ran twice", r.Stage)
		}
		recs[r.Stage] = r
	}
	return recs
}

// assertNothingLeft checks that no process runs from dir (or the garbage
// script's child) and that no socket or directory is left in tmp.
func assertNothingLeft(t *testing.T, pluginDir, tmp string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		left := leftovers(pluginDir)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes left running: %v", left)
		}
		time.Sleep(20 * time.Millisecond)
	}
	entries, _ := os.ReadDir(tmp)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "pipehost-") || strings.HasPrefix(e.Name(), "plugin") {
			t.Errorf("left behind in temp dir: %s", e.Name())
		}
	}
}

func leftovers(pluginDir string) []string {
	var left []string
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		exe, _ := os.Readlink(p + "/exe")
		cmdline, _ := os.ReadFile(p + "/cmdline")
		cl := strings.ReplaceAll(string(cmdline), "\x00", " ")
		if strings.HasPrefix(exe, pluginDir+"/") || strings.Contains(cl, pluginDir+"/") || strings.HasPrefix(cl, "sleep 317") {
			left = append(left, p+" "+cl)
		}
	}
	return left
}

const threeStages = `
[run]
seed = 7
[grid]
topology = "torus"
width = 64
height = 32
[stages.source]
kind = "dummy.source"
params = { value = 1.5, trace = "%TRACE%" }
[stages.scale]
kind = "dummy.scale"
inputs = { in = "source.out" }
params = { factor = 3.0, trace = "%TRACE%" }
[stages.sink]
kind = "dummy.sink"
inputs = { in = "scale.out" }
params = { trace = "%TRACE%" }
`

func TestThreeStagesRunInOrderThroughRealPlugins(t *testing.T) {
	tmp := isolate(t)
	plugins := testbin.Build(t, "testplugins/go")
	trace := filepath.Join(t.TempDir(), "trace.jsonl")
	cfg := writeConfig(t, "p.toml", strings.ReplaceAll(threeStages, "%TRACE%", trace))

	sess, err := runner.Open(context.Background(), runner.Options{ConfigPath: cfg, PluginDirs: []string{plugins}})
	if err != nil {
		t.Fatal(err)
	}
	res := sess.Run(context.Background())
	if live, bytes := sess.Arena.Live(); live != 0 || bytes != 0 {
		t.Errorf("arena after the run: %d segments, %d bytes live; want 0", live, bytes)
	}
	if err := sess.Close(); err != nil {
		t.Fatal(err)
	}
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	recs := readTrace(t, trace)
	src, scale, sink := recs["source"], recs["scale"], recs["sink"]
	if len(recs) != 3 {
		t.Fatalf("want 3 stage records, got %v", recs)
	}
	// Order as seen by the plugins themselves.
	if !(src.EndNs <= scale.StartNs && scale.EndNs <= sink.StartNs) {
		t.Errorf("stages overlapped or ran out of order: source %d-%d, scale %d-%d, sink %d-%d",
			src.StartNs, src.EndNs, scale.StartNs, scale.EndNs, sink.StartNs, sink.EndNs)
	}
	// Each stage received exactly its upstream's output.
	if scale.Inputs["in"] != src.Outputs["out"] {
		t.Errorf("scale received sum %v, source produced %v", scale.Inputs["in"], src.Outputs["out"])
	}
	if sink.Inputs["in"] != scale.Outputs["out"] {
		t.Errorf("sink received sum %v, scale produced %v", sink.Inputs["in"], scale.Outputs["out"])
	}
	if got, want := scale.Outputs["out"], 3*src.Outputs["out"]; abs(got-want) > 1e-6*abs(want) {
		t.Errorf("scale output sum %v, want 3×%v", got, src.Outputs["out"])
	}
	if sink.Extra["width"] != float64(64) || sink.Extra["height"] != float64(32) {
		t.Errorf("sink saw a %vx%v grid, want 64x32", sink.Extra["width"], sink.Extra["height"])
	}
	// Seeds differ per stage and are what the host derived.
	if src.Seed == scale.Seed || scale.Seed == sink.Seed {
		t.Errorf("stage seeds collide: %d %d %d", src.Seed, scale.Seed, sink.Seed)
	}
	if src.Pid == scale.Pid || scale.Pid == sink.Pid {
		t.Errorf("stages of different plugins ran in one process")
	}
	assertNothingLeft(t, plugins, tmp)
}

func TestFailedRunLeavesNothing(t *testing.T) {
	tmp := isolate(t)
	plugins := testbin.Build(t, "testplugins/go")
	// The scale stage cannot write its trace file: it fails, the sink is
	// skipped, and the run still cleans up after itself.
	bad := filepath.Join(t.TempDir(), "no-such-dir", "trace.jsonl")
	cfg := writeConfig(t, "p.toml", strings.ReplaceAll(strings.Replace(threeStages, "%TRACE%", "", 1), "%TRACE%", bad))
	sess, err := runner.Open(context.Background(), runner.Options{ConfigPath: cfg, PluginDirs: []string{plugins}})
	if err != nil {
		t.Fatal(err)
	}
	res := sess.Run(context.Background())
	if live, _ := sess.Arena.Live(); live != 0 {
		t.Errorf("arena after a failed run: %d segments live", live)
	}
	sess.Close()
	err = res.Err()
	if err == nil {
		t.Fatal("run succeeded; want the scale stage to fail")
	}
	if !strings.Contains(err.Error(), "stage scale (dummy.scale") || !strings.Contains(err.Error(), "no-such-dir") {
		t.Errorf("error does not name the stage and cause: %v", err)
	}
	statuses := map[string]engine.Status{}
	for _, r := range res.Stages {
		statuses[r.Name] = r.Status
	}
	if statuses["source"] != engine.StatusOK || statuses["scale"] != engine.StatusFailed || statuses["sink"] != engine.StatusSkipped {
		t.Errorf("statuses %v", statuses)
	}
	assertNothingLeft(t, plugins, tmp)
}

func TestNotAPlugin(t *testing.T) {
	good := testbin.Build(t, "testplugins/go")
	bad := testbin.Build(t, "testplugins/bad")
	script := filepath.Join(testbin.ModuleRoot(), "testplugins", "bad", "garbage.sh")
	cases := []struct {
		name, file string
		src        string
		want       string
	}{
		{"plain program", "plain", bad, "first line on stdout was not a go-plugin handshake"},
		{"exits during handshake", "exitearly", bad, "exited during the handshake"},
		{"never answers", "silent", bad, "did not complete the handshake in time"},
		{"script printing garbage", "garbage.sh", filepath.Dir(script), "not a go-plugin handshake"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tmp := isolate(t)
			dir := testbin.Copy(t, good, "source", "transform", "sink")
			b, err := os.ReadFile(filepath.Join(tc.src, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, tc.file), b, 0o755); err != nil {
				t.Fatal(err)
			}
			cfg := writeConfig(t, "p.toml", strings.ReplaceAll(threeStages, "%TRACE%", ""))
			start := time.Now()
			_, err = runner.Open(context.Background(), runner.Options{
				ConfigPath: cfg, PluginDirs: []string{dir}, StartTimeout: 1500 * time.Millisecond,
			})
			var se *runner.SetupError
			if !errors.As(err, &se) {
				t.Fatalf("want a setup error, got %v", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, filepath.Join(dir, tc.file)) || !strings.Contains(msg, tc.want) {
				t.Errorf("error should name %s and say %q:\n%s", tc.file, tc.want, msg)
			}
			if strings.Count(msg, "plugin /") != 1 {
				t.Errorf("want exactly one plugin error:\n%s", msg)
			}
			if tc.file == "exitearly" && !strings.Contains(msg, "cannot open my model file") {
				t.Errorf("error should quote the plugin's stderr:\n%s", msg)
			}
			if d := time.Since(start); d > 8*time.Second {
				t.Errorf("failing took %v", d)
			}
			assertNothingLeft(t, dir, tmp)
		})
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
