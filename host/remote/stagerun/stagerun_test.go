package stagerun_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/remote"
	"github.com/pipehost/pipehost/host/remote/stagerun"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/remotetest"
	"github.com/pipehost/pipehost/internal/testbin"
	"github.com/pipehost/pipehost/shm"
)

func TestMain(m *testing.M) { remotetest.Main(m) }

const pipeline = `
[run]
seed = 7

[grid]
topology = "torus"
width = 256
height = 128

[stages.noise]
kind = "ref.noise-go"
params = { octaves = 3, cell = 16 }

[stages.blur]
kind = "ref.blur-go"
inputs = { in = "noise.out" }
params = { radius = 2 }
`

// reference runs the pipeline with pipehost itself and returns, per stage,
// the cached output record of port "out" and the path of its bytes in the
// local cache: what the runner must reproduce.
type reference struct {
	plan    *plan.Plan
	plugins string
	records map[string]cache.OutputRecord
	blobs   map[string]string
}

func localReference(t *testing.T) *reference {
	t.Helper()
	bins := testbin.Build(t, "cmd")
	plugins := testbin.Build(t, "plugins/go")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pipe.toml")
	if err := os.WriteFile(cfg, []byte(pipeline), 0o644); err != nil {
		t.Fatal(err)
	}
	cacheDir := filepath.Join(dir, "cache")
	run := exec.Command(filepath.Join(bins, "pipehost"), "run", cfg, "--plugin-dir", plugins, "--cache-dir", cacheDir, "--out", filepath.Join(dir, "out"))
	if out, err := run.CombinedOutput(); err != nil {
		t.Fatalf("pipehost run: %v\n%s", err, out)
	}
	ref := &reference{plugins: plugins, records: map[string]cache.OutputRecord{}, blobs: map[string]string{}}
	c, err := cache.Open(cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	manifests, err := c.Manifests()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range manifests {
		for _, o := range m.Outputs {
			if o.Port == "out" {
				ref.records[m.Stage] = o
				ref.blobs[m.Stage] = c.BlobPath(o.Digest)
			}
		}
	}
	if len(ref.records) != 2 {
		t.Fatalf("the local cache holds outputs of %d stages, want 2 (noise, blur)", len(ref.records))
	}

	// The same plan the run used: params with defaults, stage seeds, grid.
	pcfg, err := runner.LoadConfig(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	mgr, _, reg, err := runner.StartPlugins(context.Background(), runner.Options{PluginDirs: []string{plugins}})
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	if ref.plan, err = plan.Build(pcfg, reg); err != nil {
		t.Fatal(err)
	}
	return ref
}

func writeSpec(t *testing.T, dir string, spec *stagerun.Spec) string {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, stagerun.SpecFile)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func sameBytes(t *testing.T, what, got, want string) {
	t.Helper()
	a, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Errorf("%s: %s (%d bytes) differs from the local run's %s (%d bytes)", what, got, len(a), want, len(b))
	}
}

// TestLocalMatchesEngine runs both stages with the runner, the second fed
// the first's output file, and compares with pipehost's own run.
func TestLocalMatchesEngine(t *testing.T) {
	ref := localReference(t)
	ctx := context.Background()
	work := t.TempDir()
	// The input root layout a remote action uses.
	plugin := filepath.Join(work, "plugins", "ref-go")
	os.MkdirAll(filepath.Dir(plugin), 0o755)
	copyFile(t, filepath.Join(ref.plugins, "ref-go"), plugin, 0o755)

	noiseSpec, err := stagerun.NewSpec("plugins/ref-go", ref.plan, ref.plan.Node("noise"), nil)
	if err != nil {
		t.Fatal(err)
	}
	noiseOut := filepath.Join(work, "noise-out")
	res, err := stagerun.RunFile(ctx, writeSpec(t, work, noiseSpec), noiseOut, stagerun.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Outputs) != 1 || res.Outputs[0].Digest != ref.records["noise"].Digest {
		t.Fatalf("noise outputs %+v, local run %+v", res.Outputs, ref.records["noise"].Digest)
	}
	sameBytes(t, "noise.out", filepath.Join(noiseOut, res.Outputs[0].File), ref.blobs["noise"])

	blurDir := t.TempDir()
	copyFile(t, filepath.Join(noiseOut, "out"), filepath.Join(blurDir, "in"), 0o644)
	blurSpec, err := stagerun.NewSpec(plugin, ref.plan, ref.plan.Node("blur"),
		[]stagerun.Input{stagerun.InputFrom("in", "in", res.Outputs[0].OutputRecord)})
	if err != nil {
		t.Fatal(err)
	}
	blurOut := filepath.Join(blurDir, "out")
	res, err = stagerun.RunFile(ctx, writeSpec(t, blurDir, blurSpec), blurOut, stagerun.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Outputs[0].Digest != ref.records["blur"].Digest {
		t.Fatalf("blur output %s, local run %s", res.Outputs[0].Digest, ref.records["blur"].Digest)
	}
	sameBytes(t, "blur.out", filepath.Join(blurOut, "out"), ref.blobs["blur"])
	// outputs.json, read back as a reader of the action's outputs would.
	var written stagerun.Result
	b, _ := os.ReadFile(filepath.Join(blurOut, stagerun.ResultFile))
	if err := json.Unmarshal(b, &written); err != nil || len(written.Outputs) != 1 || written.Outputs[0].Digest != res.Outputs[0].Digest {
		t.Fatalf("%s: %s (%v)", stagerun.ResultFile, b, err)
	}
	if h, err := written.Outputs[0].HandleOf(); err != nil || h.GetShape()[0] != 128 || h.GetShape()[1] != 256 {
		t.Errorf("blur output handle %v (%v)", h, err)
	}
}

func TestStageFailureIsReported(t *testing.T) {
	ref := localReference(t)
	spec, err := stagerun.NewSpec(filepath.Join(ref.plugins, "ref-go"), ref.plan, ref.plan.Node("noise"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// cell must be a power of two: the stage itself refuses.
	bad := strings.Replace(string(spec.Request), `"intValue":"16"`, `"intValue":"24"`, 1)
	if bad == string(spec.Request) {
		t.Fatalf("request %s has no cell = 16 to alter", spec.Request)
	}
	spec.Request = json.RawMessage(bad)
	dir := t.TempDir()
	_, err = stagerun.RunFile(context.Background(), writeSpec(t, dir, spec), filepath.Join(dir, "out"), stagerun.Options{})
	if err == nil || !strings.Contains(err.Error(), "stage noise (ref.noise-go)") || !strings.Contains(err.Error(), "cell") {
		t.Fatalf("a failing stage: got %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "out", stagerun.ResultFile)); err == nil {
		t.Error("a failed stage wrote outputs.json")
	}

	spec.Plugin = "plugins/none"
	_, err = stagerun.RunFile(context.Background(), writeSpec(t, dir, spec), filepath.Join(dir, "out"), stagerun.Options{})
	if err == nil || !strings.Contains(err.Error(), "plugins/none") {
		t.Fatalf("a missing plugin: got %v", err)
	}
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

func fileBlob(t *testing.T, path string) remote.Blob {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return remote.Blob{Digest: cache.DigestOf(b), Src: f}
}

// remoteStage runs a stage on the Buildbarn worker: the input root holds
// the runner, the plugin, the stage description and the inputs.
func remoteStage(t *testing.T, c *remote.Client, env *remotetest.Env, bins string, spec *stagerun.Spec, inputs map[string]string) *stagerun.Result {
	t.Helper()
	ctx := context.Background()
	specBytes, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	files := []remote.File{
		{Path: "pipehost-stage", Blob: fileBlob(t, filepath.Join(bins, "pipehost-stage")), Executable: true},
		{Path: spec.Plugin, Blob: fileBlob(t, inputs[spec.Plugin]), Executable: true},
		{Path: stagerun.SpecFile, Blob: remote.BytesBlob(specBytes)},
	}
	for _, in := range spec.Inputs {
		files = append(files, remote.File{Path: in.File, Blob: fileBlob(t, inputs[in.File])})
	}
	// As the engine does: the executor's own failures are tried again.
	run, err := c.RunAction(ctx, remote.ActionSpec{
		Args:        []string{"./pipehost-stage", stagerun.SpecFile, "out"},
		Env:         map[string]string{"PATH": "/usr/bin:/bin"},
		Inputs:      files,
		OutputPaths: []string{"out/" + stagerun.ResultFile, "out/out"},
		Platform:    env.Platform,
		Timeout:     2 * time.Minute,
	}, func(attempt int, err error) { t.Logf("attempt %d: %v; trying again", attempt, err) })
	ar := run.Result
	if err != nil {
		if d := ar.GetStderrDigest(); d != nil {
			if b, rerr := c.ReadBytes(ctx, remote.Digest{Hash: d.GetHash(), Size: d.GetSizeBytes()}); rerr == nil {
				t.Logf("remote stderr:\n%s", b)
			}
		}
		t.Fatal(err)
	}
	d, ok := remote.OutputFile(ar, "out/"+stagerun.ResultFile)
	if !ok {
		t.Fatalf("no %s in the action result %v", stagerun.ResultFile, ar)
	}
	b, err := c.ReadBytes(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	var res stagerun.Result
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("%s: %v", stagerun.ResultFile, err)
	}
	for _, o := range res.Outputs {
		if got, ok := remote.OutputFile(ar, "out/"+o.File); !ok || got != o.Digest {
			t.Fatalf("output %q: the action result has %v (present %v), %s says %v", o.Port, got, ok, stagerun.ResultFile, o.Digest)
		}
	}
	return &res
}

// TestBuildbarnMatchesEngine runs both stages as remote actions on the
// Buildbarn worker, the second fed the first's output from the CAS, and
// compares with pipehost's own local run.
func TestBuildbarnMatchesEngine(t *testing.T) {
	env := remotetest.Servers(t)
	ref := localReference(t)
	bins := testbin.Build(t, "cmd")
	c, err := remote.Dial(context.Background(), env.Executor, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	plugin := filepath.Join(ref.plugins, "ref-go")

	noiseSpec, err := stagerun.NewSpec("plugins/ref-go", ref.plan, ref.plan.Node("noise"), nil)
	if err != nil {
		t.Fatal(err)
	}
	noise := remoteStage(t, c, env, bins, noiseSpec, map[string]string{"plugins/ref-go": plugin})
	if noise.Outputs[0].Digest != ref.records["noise"].Digest {
		t.Fatalf("remote noise.out %s, local %s", noise.Outputs[0].Digest, ref.records["noise"].Digest)
	}
	// The second stage's input comes from the CAS, verified, as a sealed
	// segment; written to a file for the next input root.
	seg, err := c.Download(context.Background(), noise.Outputs[0].Digest, "noise.out")
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Close()
	inFile := filepath.Join(t.TempDir(), "in")
	writeSegment(t, seg, inFile)
	sameBytes(t, "remote noise.out", inFile, ref.blobs["noise"])

	blurSpec, err := stagerun.NewSpec("plugins/ref-go", ref.plan, ref.plan.Node("blur"),
		[]stagerun.Input{stagerun.InputFrom("in", "inputs/in", noise.Outputs[0].OutputRecord)})
	if err != nil {
		t.Fatal(err)
	}
	blur := remoteStage(t, c, env, bins, blurSpec, map[string]string{"plugins/ref-go": plugin, "inputs/in": inFile})
	if blur.Outputs[0].Digest != ref.records["blur"].Digest {
		t.Fatalf("remote blur.out %s, local %s", blur.Outputs[0].Digest, ref.records["blur"].Digest)
	}
}

func writeSegment(t *testing.T, seg *shm.Segment, path string) {
	t.Helper()
	m, err := seg.MapRO()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmap()
	if err := os.WriteFile(path, m.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}
