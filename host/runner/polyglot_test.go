package runner_test

// The reference stages (docs/reference-stage.md) exist in Go, C++, Rust and
// Python; all must produce the same bytes, and a pipeline mixing them hands
// grids across languages without copies.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/testbin"
)

// refPlugins is a directory with the reference plugins of every SDK (the
// Python one is a launcher script naming the venv and the module).
func refPlugins(t *testing.T) string {
	t.Helper()
	root := testbin.ModuleRoot()
	dir := t.TempDir()
	goRef := filepath.Join(testbin.Build(t, "plugins/go"), "ref-go")
	for _, p := range []string{goRef, filepath.Join(root, "bin", "plugins", "ref-cpp"), filepath.Join(root, "bin", "plugins", "ref-rust"),
		filepath.Join(root, "bin", "plugins", "ref-py")} {
		b, err := os.ReadFile(p)
		if err != nil {
			if os.Getenv("PIPEHOST_REQUIRE_NATIVE") == "1" {
				t.Fatalf("reference plugin missing (run make build): %v", err)
			}
			t.Skipf("reference plugin missing (run make build): %v", err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func digests(t *testing.T, plugins, body string, opts runner.Options) (map[string]string, *runner.Session, *engine.Result) {
	t.Helper()
	isolate(t)
	opts.ConfigPath = writeConfig(t, "p.toml", body)
	opts.PluginDirs = []string{plugins}
	opts.CacheDir = filepath.Join(t.TempDir(), "cache") // outputs are hashed when the cache is on
	sess, err := runner.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	res := sess.Run(context.Background())
	sess.Close()
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	if live, _ := sess.Arena.Live(); live != 0 {
		t.Errorf("%d segments live after the run", live)
	}
	out := map[string]string{}
	for _, r := range res.Stages {
		for port, o := range r.Outputs {
			out[r.Name+"."+port] = o.Digest.Hash
		}
	}
	return out, sess, res
}

func TestReferenceStagesAgreeAcrossLanguages(t *testing.T) {
	plugins := refPlugins(t)
	for _, topo := range []string{"sphere", "torus", "cylinder", "plane"} {
		t.Run(topo, func(t *testing.T) {
			grid := "[run]\nseed = 2024\n[grid]\ntopology = \"" + topo + "\"\nwidth = 256\nheight = 128\n"
			var noise, blur []string
			for _, lang := range []string{"go", "cpp", "rust", "py"} {
				// The same stage names in every run: the seed derives from them.
				d, _, _ := digests(t, plugins, grid+`
[stages.noise]
kind = "ref.noise-`+lang+`"
params = { octaves = 5, cell = 32 }
[stages.blur]
kind = "ref.blur-`+lang+`"
inputs = { in = "noise.out" }
params = { radius = 2 }
`, runner.Options{})
				noise = append(noise, d["noise.out"])
				blur = append(blur, d["blur.out"])
			}
			for i, lang := range []string{"cpp", "rust", "py"} {
				if noise[i+1] != noise[0] {
					t.Errorf("ref.noise-%s digest %s, Go %s", lang, noise[i+1][:12], noise[0][:12])
				}
				if blur[i+1] != blur[0] {
					t.Errorf("ref.blur-%s digest %s, Go %s", lang, blur[i+1][:12], blur[0][:12])
				}
			}
		})
	}
}

// Go → Rust → C++ → Go, the pipeline of examples/mixed.toml at a size where
// a copy would show: 4096×2048 float32, 32 MiB a grid.
func TestMixedPipelineIsZeroCopy(t *testing.T) {
	if testbin.Race {
		// Race-built Go plugins carry the detector's shadow memory in their
		// RSS; scripts/test.sh runs this again without -race.
		t.Skip("peak RSS of race-built plugins is not the stage's own")
	}
	plugins := refPlugins(t)
	body, err := os.ReadFile(filepath.Join(testbin.ModuleRoot(), "examples", "mixed.toml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(body), "width = 1024\nheight = 512", "width = 4096\nheight = 2048", 1)
	if cfg == string(body) {
		t.Fatal("examples/mixed.toml no longer has the grid size this test expects")
	}
	cfg = strings.ReplaceAll(cfg, `save = `, `# save = `)
	_, sess, res := digests(t, plugins, cfg, runner.Options{Engine: engine.Options{Jobs: 1}})
	const grid = 4096 * 2048 * 4
	langs := map[string]string{}
	for _, r := range res.Stages {
		langs[r.Name] = r.Kind[strings.LastIndexByte(r.Kind, '-')+1:]
		peak := r.Stats.GetPeakRssBytes()
		// A stage maps its input (read fully) and its output (written
		// fully): two grids plus the process's own baseline. A copy of
		// either grid would add another 32 MiB.
		if peak > 2*grid+48<<20 {
			t.Errorf("stage %s (%s) peaked at %d MiB: more than its two mapped grids allow", r.Name, r.Kind, peak>>20)
		}
	}
	if got := strings.Join([]string{langs["noise"], langs["rust"], langs["cpp"], langs["final"]}, ","); got != "go,rust,cpp,go" {
		t.Fatalf("mixed pipeline languages %s", got)
	}
	// The ledger, with the cache off (with it on, an output also stays live
	// until its cache copy is written, off the critical path): in a chain
	// at most the input and output of the running stage are live at once,
	// plus the next stage's output, allocated and prefaulted while this one
	// runs.
	opts := runner.Options{ConfigPath: writeConfig(t, "nocache.toml", cfg), PluginDirs: []string{plugins}, Engine: engine.Options{Jobs: 1}}
	sess, err = runner.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if res := sess.Run(context.Background()); res.Err() != nil {
		t.Fatal(res.Err())
	}
	sess.Close()
	if peak := sess.Arena.Peak(); peak > 3*grid {
		t.Errorf("arena peak %d MiB for a chain of %d MiB grids: a segment outlived its consumer", peak>>20, grid>>20)
	}
}

// Go → Python → Rust → C++, examples/mixed-python.toml at 4096×2048: the
// Python stage reads its input and writes its output through numpy views of
// the sealed segments, so its peak RSS is its process's baseline plus two
// grids, and the ledger never holds a fourth grid.
func TestMixedPipelineWithPythonIsZeroCopy(t *testing.T) {
	if testbin.Race {
		// Race-built Go plugins carry the detector's shadow memory in their
		// RSS; scripts/test.sh runs this again without -race.
		t.Skip("peak RSS of race-built plugins is not the stage's own")
	}
	plugins := refPlugins(t)
	// The baseline of a fresh Python plugin (interpreter, numpy, gRPC): the
	// peak of its first stage on a grid too small to matter.
	_, _, small := digests(t, plugins, "[grid]\ntopology = \"plane\"\nwidth = 8\nheight = 8\n"+
		"[stages.src]\nkind = \"ref.noise-go\"\nparams = { octaves = 1, cell = 8 }\n"+
		"[stages.tiny]\nkind = \"ref.blur-py\"\ninputs = { in = \"src.out\" }\n", runner.Options{})
	var pyBase uint64
	for _, r := range small.Stages {
		if r.Name == "tiny" {
			pyBase = r.Stats.GetPeakRssBytes()
		}
	}
	if pyBase == 0 {
		t.Fatal("the small Python stage reported no peak RSS")
	}
	body, err := os.ReadFile(filepath.Join(testbin.ModuleRoot(), "examples", "mixed-python.toml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(body), "width = 1024\nheight = 512", "width = 4096\nheight = 2048", 1)
	if cfg == string(body) {
		t.Fatal("examples/mixed-python.toml no longer has the grid size this test expects")
	}
	cfg = strings.ReplaceAll(cfg, `save = `, `# save = `)
	_, sess, res := digests(t, plugins, cfg, runner.Options{Engine: engine.Options{Jobs: 1}})
	const grid = 4096 * 2048 * 4
	langs := map[string]string{}
	for _, r := range res.Stages {
		langs[r.Name] = r.Kind[strings.LastIndexByte(r.Kind, '-')+1:]
		peak := r.Stats.GetPeakRssBytes()
		t.Logf("stage %s (%s): peak RSS %d MiB", r.Name, r.Kind, peak>>20)
		if r.Name == "python" {
			// Its input and output mapped and touched fully, plus a few MiB of
			// per-chunk temporaries; a copy of either grid would add 32 MiB.
			if peak > pyBase+2*grid+16<<20 {
				t.Errorf("Python stage peaked at %d MiB over a %d MiB baseline: more than its two mapped grids allow",
					peak>>20, pyBase>>20)
			}
		} else if peak > 2*grid+48<<20 {
			t.Errorf("stage %s (%s) peaked at %d MiB: more than its two mapped grids allow", r.Name, r.Kind, peak>>20)
		}
	}
	if got := strings.Join([]string{langs["noise"], langs["python"], langs["rust"], langs["cpp"]}, ","); got != "go,py,rust,cpp" {
		t.Fatalf("mixed pipeline languages %s", got)
	}
	// The ledger: the running stage's input and output, plus the next
	// stage's output, allocated and prefaulted while this one runs.
	if peak := sess.Arena.Peak(); peak > 3*grid {
		t.Errorf("arena peak %d MiB for a chain of %d MiB grids: a segment outlived its consumer", peak>>20, grid>>20)
	}
}

// BenchmarkNoopStagePerLanguage compares the per-stage overhead of the
// three SDKs: 200 independent near no-op stages (a radius-0 blur of an 8×8
// grid) per language, through the real host.
func BenchmarkNoopStagePerLanguage(b *testing.B) {
	root := testbin.ModuleRoot()
	dir := b.TempDir()
	for _, p := range []string{filepath.Join(testbin.Build(b, "plugins/go"), "ref-go"), filepath.Join(root, "bin", "plugins", "ref-cpp"), filepath.Join(root, "bin", "plugins", "ref-rust"), filepath.Join(root, "bin", "plugins", "ref-py")} {
		data, err := os.ReadFile(p)
		if err != nil {
			b.Skipf("reference plugin missing: %v", err)
		}
		os.WriteFile(filepath.Join(dir, filepath.Base(p)), data, 0o755)
	}
	for _, lang := range []string{"go", "cpp", "rust", "py"} {
		b.Run(lang, func(b *testing.B) {
			var sb strings.Builder
			sb.WriteString("[grid]\nwidth = 8\nheight = 8\n[stages.src]\nkind = \"ref.noise-go\"\nparams = { octaves = 1, cell = 8 }\n")
			const n = 200
			for i := 0; i < n; i++ {
				fmt.Fprintf(&sb, "[stages.s%d]\nkind = \"ref.blur-%s\"\ninputs = { in = \"src.out\" }\nparams = { radius = 0 }\n", i, lang)
			}
			var total float64
			for i := 0; i < b.N; i++ {
				cfg := filepath.Join(b.TempDir(), "p.toml")
				os.WriteFile(cfg, []byte(sb.String()), 0o644)
				sess, err := runner.Open(context.Background(), runner.Options{ConfigPath: cfg, PluginDirs: []string{dir}})
				if err != nil {
					b.Fatal(err)
				}
				res := sess.Run(context.Background())
				sess.Close()
				if err := res.Err(); err != nil {
					b.Fatal(err)
				}
				total += float64(res.EndNs - res.StartNs)
			}
			b.ReportMetric(total/float64(b.N)/n/1e6, "ms/stage")
		})
	}
}
