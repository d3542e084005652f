package runner_test

// C++ (sdk/cpp), Rust (sdk/rust) and Python (sdk/python) plugins run side
// by side with Go ones
// through the real host: the reference stages follow docs/reference-stage.md
// bit for bit, grids and blobs cross language boundaries zero-copy, and each
// way a native stage can misbehave fails exactly as a Go stage would. The
// binaries come from `make build` (bin/plugins/ref-{cpp,rust},
// bin/testplugins/{misbehave,minimal}-cpp, bin/testplugins/misbehave-rust,
// and the Python launchers bin/plugins/ref-py, bin/testplugins/misbehave-py).
// A test that is the same for every language runs once per language, as a
// subtest named after it.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"math/bits"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/pluginmgr"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/testbin"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/sdk/seed"
	"github.com/pipehost/pipehost/shm"
	"github.com/pipehost/pipehost/topology"
)

// nativeLangs are the native SDKs, by the suffix of their reference kinds.
var nativeLangs = []string{"cpp", "rust", "py"}

// nativeTitle names a language in messages.
var nativeTitle = map[string]string{"cpp": "C++", "rust": "Rust", "py": "Python"}

// nativeSDK is what each language's plugins report as their SDK.
var nativeSDK = map[string]string{"cpp": "cpp", "rust": "rust", "py": "python"}

// nativePlugins are the binaries `make build-<lang>` installs: the reference
// plugin in bin/plugins, the others in bin/testplugins.
var nativePlugins = map[string][]string{
	"cpp":  {"ref-cpp", "misbehave-cpp", "minimal-cpp"},
	"rust": {"ref-rust", "misbehave-rust"},
	"py":   {"ref-py", "misbehave-py"},
}

// nativeBinary returns the path of a built native plugin. A missing binary
// skips the test, unless PIPEHOST_REQUIRE_NATIVE=1 (make test) makes it a
// failure.
func nativeBinary(t testing.TB, lang, name string) string {
	t.Helper()
	sub := "testplugins"
	if name == "ref-"+lang {
		sub = "plugins"
	}
	p := filepath.Join(testbin.ModuleRoot(), "bin", sub, name)
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("PIPEHOST_REQUIRE_NATIVE") == "1" {
			t.Fatalf("%s plugin missing (run make build-%s): %v", nativeTitle[lang], lang, err)
		}
		t.Skipf("%s plugin missing (run make build-%s): %v", nativeTitle[lang], lang, err)
	}
	return p
}

// nativePluginDir copies one language's plugins into a fresh directory, so a
// run sees exactly them and leftover processes can be traced to it.
func nativePluginDir(t testing.TB, lang string) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range nativePlugins[lang] {
		b, err := os.ReadFile(nativeBinary(t, lang, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// nativeDirs are the plugin dirs of a run over the Go test plugins, the Go
// reference plugin and one language's plugins.
func nativeDirs(t testing.TB, lang string) []string {
	t.Helper()
	return []string{testbin.Build(t, "testplugins/go"), testbin.Build(t, "plugins/go"), nativePluginDir(t, lang)}
}

// stageEvents records what each stage streamed (spans, logs, progress); the
// other observer calls go to a no-op.
type stageEvents struct {
	engine.Observer
	mu sync.Mutex
	by map[string][]*pb.RunEvent
}

func (o *stageEvents) StageEvent(n *plan.Node, ev *pb.RunEvent) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.by[n.Name] = append(o.by[n.Name], ev)
}

// spans lists the spans a stage reported, in the order they came.
func (o *stageEvents) spans(stage string) []*pb.Span {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []*pb.Span
	for _, ev := range o.by[stage] {
		if s := ev.GetSpan(); s != nil {
			out = append(out, s)
		}
	}
	return out
}

func spanNames(spans []*pb.Span) string {
	names := make([]string, len(spans))
	for i, s := range spans {
		names[i] = s.GetName()
	}
	return strings.Join(names, ",")
}

func (o *stageEvents) count(stage string, what func(*pb.RunEvent) bool) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, ev := range o.by[stage] {
		if what(ev) {
			n++
		}
	}
	return n
}

// nativeRun is a session over the given plugin dirs, run to completion;
// cleanup (or close) stops it and checks that no process, socket or segment
// is left.
type nativeRun struct {
	t      *testing.T
	sess   *runner.Session
	res    *engine.Result
	tmp    string
	dirs   []string
	events *stageEvents
	took   time.Duration // Run alone, without opening the session
}

func runNative(t *testing.T, body string, opts runner.Options, dirs []string) *nativeRun {
	t.Helper()
	tmp := isolate(t)
	opts.ConfigPath = writeConfig(t, "p.toml", body)
	opts.PluginDirs = dirs
	events := &stageEvents{Observer: engine.Observers(), by: map[string][]*pb.RunEvent{}}
	opts.Engine.Observer = events
	sess, err := runner.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := &nativeRun{t: t, sess: sess, tmp: tmp, dirs: dirs, events: events}
	start := time.Now()
	r.res = sess.Run(ctx)
	r.took = time.Since(start)
	t.Cleanup(r.close)
	return r
}

func (r *nativeRun) close() {
	r.t.Helper()
	if r.sess == nil {
		return
	}
	if err := r.sess.Close(); err != nil {
		r.t.Error(err)
	}
	if live, n := r.sess.Arena.Live(); live != 0 || n != 0 {
		r.t.Errorf("ledger after the run: %d segments, %d bytes; want 0", live, n)
	}
	r.sess = nil
	for _, d := range r.dirs {
		assertNothingLeft(r.t, d, r.tmp)
	}
}

func (r *nativeRun) stage(name string) *engine.StageResult {
	r.t.Helper()
	for _, s := range r.res.Stages {
		if s.Name == name {
			return s
		}
	}
	r.t.Fatalf("no stage %s", name)
	return nil
}

// output copies the bytes of a kept (saved) output out of the arena.
func (r *nativeRun) output(stage, port string) []byte {
	r.t.Helper()
	s := r.stage(stage)
	if s.Status != engine.StatusOK {
		r.t.Fatalf("stage %s: %s: %v", stage, s.Status, s.Err)
	}
	o := s.Outputs[port]
	if o == nil {
		r.t.Fatalf("stage %s has no output %q", stage, port)
	}
	m, err := o.Entry.Segment.MapRO()
	if err != nil {
		r.t.Fatal(err)
	}
	defer m.Unmap()
	return bytes.Clone(m.Bytes())
}

// floats reads little-endian float32 cells.
func floats(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

// sumOf adds in float64, as the Go sink and source do in their traces.
func sumOf(v []float32) float64 {
	var s float64
	for _, x := range v {
		s += float64(x)
	}
	return s
}

func sameBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d cells, want %d", what, len(got), len(want))
	}
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: cell %d is %v, want %v", what, i, got[i], want[i])
		}
	}
}

// specBlur is the box blur of docs/reference-stage.md: float64 sums in the
// spec's loop order, one division, one rounding to float32, with the
// topology package's ResolveClamped.
func specBlur(t *testing.T, kind, caps string, w, h, radius int, in []float32) []float32 {
	t.Helper()
	opts := topology.Options{}
	if caps != "" {
		e, err := topology.ParseWrap(caps)
		if err != nil {
			t.Fatal(err)
		}
		opts.Edge = e
	}
	topo, err := topology.Load(kind, w, h, opts)
	if err != nil {
		t.Fatal(err)
	}
	g := topo.Grid()
	out := make([]float32, w*h)
	n := float64((2*radius + 1) * (2*radius + 1))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			var sum float64
			for dy := -radius; dy <= radius; dy++ {
				for dx := -radius; dx <= radius; dx++ {
					nx, ny := g.ResolveClamped(x+dx, y+dy)
					sum += float64(in[ny*w+nx])
				}
			}
			out[y*w+x] = float32(sum / n)
		}
	}
	return out
}

// specNoise is the integer value noise of docs/reference-stage.md, written
// straight from the spec: S is the stage seed.
func specNoise(S uint64, w, h, octaves, cell int) []float32 {
	out := make([]float32, w*h)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			var acc uint64
			for o := 0; o < octaves; o++ {
				s := uint64(cell) >> o
				k := uint(bits.TrailingZeros64(s))
				nx, ny := uint64(w)/s, uint64(h)/s
				key := seed.Derive(S, uint64(o))
				lat := func(i, j uint64) uint64 { return seed.Derive(key, j<<32|i) >> 48 }
				i0, fx := uint64(x)>>k, uint64(x)&(s-1)
				j0, fy := uint64(y)>>k, uint64(y)&(s-1)
				i1, j1 := (i0+1)%nx, (j0+1)%ny
				var wx, wy uint64
				if k <= 16 {
					wx, wy = fx<<(16-k), fy<<(16-k)
				} else {
					wx, wy = fx>>(k-16), fy>>(k-16)
				}
				top := lat(i0, j0)*(65536-wx) + lat(i1, j0)*wx
				bottom := lat(i0, j1)*(65536-wx) + lat(i1, j1)*wx
				acc += ((top*(65536-wy) + bottom*wy) >> 32) >> o
			}
			out[y*w+x] = float32(acc) / 65536
		}
	}
	return out
}

// launchNative starts a native plugin through the plugin manager.
func launchNative(t *testing.T, path string) *pluginmgr.Plugin {
	t.Helper()
	isolate(t)
	m, err := pluginmgr.New(pluginmgr.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	p, err := m.Launch(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A Go source feeds the native blur, whose output a Go sink reads: on every
// topology the bytes are the spec's blur of the source and equal Go's blur.
func TestNativeBlurBetweenGoStages(t *testing.T) {
	for _, lang := range nativeLangs {
		t.Run(lang, func(t *testing.T) {
			title := nativeTitle[lang]
			for _, tc := range []struct {
				kind, caps string
				w, h       int
				radius     int
			}{
				{"sphere", "", 64, 32, 2},
				{"torus", "", 48, 16, 3},
				{"cylinder", "reflect", 40, 24, 1},
				{"cylinder", "", 16, 40, 16},
				{"plane", "", 32, 32, 4},
			} {
				t.Run(tc.kind+tc.caps, func(t *testing.T) {
					trace := filepath.Join(t.TempDir(), "trace.jsonl")
					caps := ""
					if tc.caps != "" {
						caps = "caps = \"" + tc.caps + "\"\n"
					}
					body := "[grid]\ntopology = \"" + tc.kind + "\"\n" + caps +
						"width = " + strconv.Itoa(tc.w) + "\nheight = " + strconv.Itoa(tc.h) + `
[stages.source]
kind = "dummy.source"
params = { trace = "` + trace + `" }
save = { out = "npz" }
[stages.blur]
kind = "ref.blur-` + lang + `"
inputs = { in = "source.out" }
params = { radius = ` + strconv.Itoa(tc.radius) + ` }
save = { out = "npz" }
[stages.goblur]
kind = "ref.blur-go"
inputs = { in = "source.out" }
params = { radius = ` + strconv.Itoa(tc.radius) + ` }
save = { out = "npz" }
[stages.sink]
kind = "dummy.sink"
inputs = { in = "blur.out" }
params = { trace = "` + trace + `" }
`
					r := runNative(t, body, runner.Options{}, nativeDirs(t, lang))
					if err := r.res.Err(); err != nil {
						t.Fatal(err)
					}
					src := floats(r.output("source", "out"))
					got := r.output("blur", "out")
					sameBits(t, title+" blur vs the spec", floats(got), specBlur(t, tc.kind, tc.caps, tc.w, tc.h, tc.radius, src))
					if goBlur := r.output("goblur", "out"); !bytes.Equal(got, goBlur) {
						t.Errorf("%s and Go blur differ: sha256 %x vs %x", title, sha256.Sum256(got), sha256.Sum256(goBlur))
					}
					recs := readTrace(t, trace)
					if sum := sumOf(floats(got)); recs["sink"].Inputs["in"] != sum {
						t.Errorf("the Go sink saw sum %v, the %s blur wrote %v", recs["sink"].Inputs["in"], title, sum)
					}
					st := r.stage("blur")
					if st.Stats.GetPeakRssBytes() == 0 || st.Stats.GetEndNs() < st.Stats.GetStartNs() ||
						st.Stats.GetStartNs() < st.StartNs || st.Stats.GetEndNs() > st.EndNs {
						t.Errorf("%s stage stats %v outside the host's %d..%d", title, st.Stats, st.StartNs, st.EndNs)
					}
					spans := r.events.spans("blur")
					if len(spans) != 1 || spans[0].GetName() != "blur" || spans[0].GetParentId() != 0 ||
						spans[0].GetStartNs() < st.Stats.GetStartNs() || spans[0].GetEndNs() > st.Stats.GetEndNs() {
						t.Errorf("%s stage spans: %v (stage %d..%d)", title, spans, st.Stats.GetStartNs(), st.Stats.GetEndNs())
					}
				})
			}
		})
	}
}

// The native noise is the spec's, bit for bit, and equals Go's noise: the
// same stage name (so the same seed) in two runs, one per language. Chains
// agree both within a language (noise → blur) and mixed (noise → the other
// language's blur).
func TestNativeNoiseFollowsTheSpec(t *testing.T) {
	const runSeed = 987654321
	for _, tc := range []struct {
		lang       string
		noiseSpans string // the spans ref.noise-<lang> reports, in order
	}{
		{"cpp", "noise"},
		{"rust", "lattice,fill"},
		{"py", "lattice,fill"},
	} {
		t.Run(tc.lang, func(t *testing.T) {
			title := nativeTitle[tc.lang]
			for _, c := range []struct {
				grid          string
				params        string // empty: the defaults
				w, h          int
				octaves, cell int
			}{
				{"[grid]\ntopology = \"sphere\"\nwidth = 128\nheight = 64\n", "", 128, 64, 4, 16},
				{"[grid]\ntopology = \"torus\"\nwidth = 64\nheight = 32\n", "params = { octaves = 6, cell = 32 }", 64, 32, 6, 32},
				{"[grid]\ntopology = \"plane\"\nwidth = 8\nheight = 8\n", "params = { octaves = 1, cell = 2 }", 8, 8, 1, 2},
				{"[grid]\ntopology = \"plane\"\nwidth = 256\nheight = 128\n", "params = { octaves = 8, cell = 128 }", 256, 128, 8, 128},
			} {
				digests := map[string][32]byte{}
				for _, lang := range []string{tc.lang, "go"} {
					other := tc.lang // the mixed chain blurs with the other language
					if lang == tc.lang {
						other = "go"
					}
					body := "[run]\nseed = " + strconv.Itoa(runSeed) + "\n" + c.grid + `
[stages.noise]
kind = "ref.noise-` + lang + `"
` + c.params + `
save = { out = "npz" }
[stages.blur]
kind = "ref.blur-` + lang + `"
inputs = { in = "noise.out" }
params = { radius = 2 }
save = { out = "npz" }
[stages.mixed]
kind = "ref.blur-` + other + `"
inputs = { in = "noise.out" }
params = { radius = 2 }
save = { out = "npz" }
`
					r := runNative(t, body, runner.Options{}, nativeDirs(t, tc.lang))
					if err := r.res.Err(); err != nil {
						t.Fatal(err)
					}
					noise := r.output("noise", "out")
					if lang == tc.lang {
						want := specNoise(seed.StageSeed(runSeed, "noise"), c.w, c.h, c.octaves, c.cell)
						sameBits(t, title+" noise vs the spec", floats(noise), want)
						if spans := spanNames(r.events.spans("noise")); spans != tc.noiseSpans {
							t.Errorf("ref.noise-%s spans: %v, want %v", lang, spans, tc.noiseSpans)
						}
						if n := r.events.count("noise", func(ev *pb.RunEvent) bool { return ev.GetProgress() != nil }); n == 0 {
							t.Errorf("ref.noise-%s reported no progress", lang)
						}
					}
					digests["noise-"+lang] = sha256.Sum256(noise)
					digests["blur-"+lang] = sha256.Sum256(r.output("blur", "out"))
					digests["mixed-after-"+lang] = sha256.Sum256(r.output("mixed", "out"))
					r.close()
				}
				if digests["noise-"+tc.lang] != digests["noise-go"] {
					t.Errorf("%s: noise differs: %s %x, go %x", c.grid, tc.lang, digests["noise-"+tc.lang], digests["noise-go"])
				}
				if digests["blur-"+tc.lang] != digests["blur-go"] {
					t.Errorf("%s: %s and Go chains differ", c.grid, title)
				}
				if digests["mixed-after-"+tc.lang] != digests["mixed-after-go"] {
					t.Errorf("%s: mixed chains differ", c.grid)
				}
			}
		})
	}
}

// Failing stages name the param, and do not take the plugin down: both ran
// in one process.
func TestNativeStageErrorsNameTheParam(t *testing.T) {
	for _, tc := range []struct {
		lang               string
		noiseSays, blurSay string
	}{
		{"cpp", "param cell = 12", "param radius = 17"},
		{"rust", `param "cell"`, `param "radius"`},
		{"py", `param "cell"`, `param "radius"`},
	} {
		t.Run(tc.lang, func(t *testing.T) {
			r := runNative(t, grid+`
[stages.noise]
kind = "ref.noise-`+tc.lang+`"
params = { octaves = 4, cell = 12 }
[stages.blur]
kind = "ref.blur-`+tc.lang+`"
inputs = { in = "src.out" }
params = { radius = 17 }
[stages.src]
kind = "dummy.source"
`, runner.Options{Engine: engine.Options{KeepGoing: true}}, nativeDirs(t, tc.lang))
			wantAll(t, stageErr(t, r.res, "noise"), "stage noise (ref.noise-"+tc.lang, tc.noiseSays, "power of two")
			wantAll(t, stageErr(t, r.res, "blur"), "stage blur (ref.blur-"+tc.lang, tc.blurSay, "0..16")
			if s := statuses(r.res); s["src"] != engine.StatusOK || s["noise"] != engine.StatusFailed || s["blur"] != engine.StatusFailed {
				t.Errorf("statuses %v", s)
			}
		})
	}
}

func TestNativeKeptWritableMappingFailsTheStage(t *testing.T) {
	for _, lang := range nativeLangs {
		t.Run(lang, func(t *testing.T) {
			r := runNative(t, grid+`
[stages.leaky]
kind = "bad-`+lang+`.keepmap"
[stages.sink]
kind = "dummy.sink"
inputs = { in = "leaky.out" }
`, runner.Options{}, nativeDirs(t, lang))
			wantAll(t, stageErr(t, r.res, "leaky"),
				`stage "leaky" kept a writable mapping of its output "out"`, "stage leaky (bad-"+lang+".keepmap")
			if s := statuses(r.res); s["sink"] != engine.StatusSkipped {
				t.Errorf("sink ran on an unsealed input: %v", s)
			}
		})
	}
}

// A native consumer writing to its input dies of SIGSEGV in its own process;
// the other consumer still sees the producer's bytes.
func TestNativeWriteToInputFaultsAndLeavesDataIntact(t *testing.T) {
	for _, tc := range []struct {
		lang              string
		says, wentThrough string  // what the vandal logs before and after its write
		writes            float32 // what it writes to cell 0
	}{
		{"cpp", "bad-cpp.writeinput: writing to my read-only input", "the write did not fault", 42},
		{"rust", "writing to a read-only input on purpose", "the write to a sealed input went through", -1},
		{"py", "numpy refused the write: assignment destination is read-only", "the write to a sealed input went through", -1},
	} {
		t.Run(tc.lang, func(t *testing.T) {
			trace := filepath.Join(t.TempDir(), "trace.jsonl")
			r := runNative(t, grid+`
[stages.source]
kind = "dummy.source"
params = { trace = "`+trace+`" }
save = { out = "npz" }
[stages.vandal]
kind = "bad-`+tc.lang+`.writeinput"
inputs = { in = "source.out" }
[stages.reader]
kind = "dummy.sink"
inputs = { in = "source.out" }
params = { trace = "`+trace+`" }
`, runner.Options{Engine: engine.Options{KeepGoing: true, Jobs: 1}}, nativeDirs(t, tc.lang))
			msg := stageErr(t, r.res, "vandal")
			wantAll(t, msg, "stage vandal (bad-"+tc.lang+".writeinput", "plugin process ended: signal: segmentation fault", tc.says)
			if strings.Contains(msg, tc.wentThrough) {
				t.Error("the write to a sealed input went through")
			}
			if s := statuses(r.res); s["reader"] != engine.StatusOK || s["source"] != engine.StatusOK {
				t.Fatalf("statuses %v", s)
			}
			data := floats(r.output("source", "out"))
			sum := sumOf(data)
			recs := readTrace(t, trace)
			if sum != recs["source"].Outputs["out"] || sum != recs["reader"].Inputs["in"] {
				t.Errorf("segment sum %v, producer wrote %v, reader saw %v", sum, recs["source"].Outputs["out"], recs["reader"].Inputs["in"])
			}
			if data[0] == tc.writes {
				t.Error("the vandal's write landed")
			}
		})
	}
}

func TestNativeCrashIsReported(t *testing.T) {
	for _, tc := range []struct{ lang, says string }{
		{"cpp", "bad-cpp.crash: about to abort"},
		{"rust", "aborting on purpose"},
		{"py", "bad-py.crash: aborting on purpose"},
	} {
		t.Run(tc.lang, func(t *testing.T) {
			trace := filepath.Join(t.TempDir(), "trace.jsonl")
			r := runNative(t, grid+`
[stages.bad]
kind = "bad-`+tc.lang+`.crash"
[stages.after]
kind = "dummy.sink"
inputs = { in = "bad.out" }
[stages.other]
kind = "dummy.source"
params = { trace = "`+trace+`" }
`, runner.Options{Engine: engine.Options{KeepGoing: true}}, nativeDirs(t, tc.lang))
			wantAll(t, stageErr(t, r.res, "bad"), "stage bad (bad-"+tc.lang+".crash",
				"plugin process ended: signal: aborted", tc.says)
			s := statuses(r.res)
			if s["bad"] != engine.StatusFailed || s["after"] != engine.StatusSkipped || s["other"] != engine.StatusOK {
				t.Errorf("statuses %v", s)
			}
		})
	}
}

func TestNativeHangTimesOut(t *testing.T) {
	for _, lang := range nativeLangs {
		t.Run(lang, func(t *testing.T) {
			start := time.Now()
			r := runNative(t, grid+`
[stages.stuck]
kind = "bad-`+lang+`.hang"
timeout = "2s"
`, runner.Options{}, nativeDirs(t, lang))
			wantAll(t, stageErr(t, r.res, "stuck"), "stage stuck (bad-"+lang+".hang", "stage timed out after 2s")
			if r.took < 2*time.Second || r.took > 8*time.Second {
				t.Errorf("a 2 s timeout failed the run after %v", r.took)
			}
			if d := time.Since(start); d > 12*time.Second {
				t.Errorf("a 2 s timeout took %v to fail the run, opening included", d)
			}
			// cleanup (close) checks that the stopped plugin is gone.
		})
	}
}

// Dynamic outputs cross the fd channel both ways: a native blob of unknown
// size adopted by the host and read by another native stage, an empty one,
// and a Go Arrow table read by native code. The C++ prober also allocates a
// blob at a known size and logs through the host.
func TestNativeDynamicOutputs(t *testing.T) {
	for _, tc := range []struct {
		lang, prober string
		writerSaysN  bool // the blob writer reports its size as metric n
		stdout       bool // the prober has a .stdout stage
	}{
		{"cpp", "minimal-cpp", true, true},
		{"rust", "probe-rust", false, false},
		{"py", "probe-py", true, true},
	} {
		t.Run(tc.lang, func(t *testing.T) {
			title := nativeTitle[tc.lang]
			body := grid + `
[stages.blob]
kind = "` + tc.prober + `.blob"
params = { n = 100000 }
[stages.sum]
kind = "` + tc.prober + `.blobsum"
inputs = { in = "blob.out" }
[stages.empty]
kind = "` + tc.prober + `.blob"
params = { n = 0 }
[stages.emptysum]
kind = "` + tc.prober + `.blobsum"
inputs = { in = "empty.out" }
[stages.rows]
kind = "probe.table"
params = { rows = 1000 }
[stages.look]
kind = "` + tc.prober + `.tablebytes"
inputs = { in = "rows.rows" }
`
			if tc.lang == "rust" {
				// The streaming writer: a growing memfd, never mapped.
				body += `[stages.streamed]
kind = "probe-rust.blob"
params = { n = 100000, stream = true }
[stages.streamedsum]
kind = "probe-rust.blobsum"
inputs = { in = "streamed.out" }
`
			}
			if tc.lang == "py" {
				body += `[stages.pyrows]
kind = "probe-py.table"
params = { rows = 777 }
[stages.pylook]
kind = "probe-py.tablebytes"
inputs = { in = "pyrows.rows" }
`
			}
			if tc.stdout {
				body += `[stages.text]
kind = "` + tc.prober + `.stdout"
[stages.textsum]
kind = "` + tc.prober + `.blobsum"
inputs = { in = "text.text" }
`
			}
			r := runNative(t, body, runner.Options{}, nativeDirs(t, tc.lang))
			if err := r.res.Err(); err != nil {
				t.Fatal(err)
			}
			var want float64
			for i := 0; i < 100000; i++ {
				want += float64(i * 7 % 251)
			}
			if m := r.stage("blob").Metrics; m["sum"] != want || (tc.writerSaysN && m["n"] != 100000) {
				t.Errorf("writer: %v, want sum %v", m, want)
			}
			if m := r.stage("sum").Metrics; m["sum"] != want || m["n"] != 100000 {
				t.Errorf("reader saw %v, want sum %v of 100000 bytes", m, want)
			}
			if tc.lang == "rust" {
				if m := r.stage("streamedsum").Metrics; m["sum"] != want || m["n"] != 100000 {
					t.Errorf("reader of the streamed blob saw %v, want sum %v of 100000 bytes", m, want)
				}
			}
			if m := r.stage("emptysum").Metrics; m["n"] != 0 || m["sum"] != 0 {
				t.Errorf("empty blob: reader saw %v", m)
			}
			if m := r.stage("look").Metrics; m["arrow"] != 1 || m["format"] != float64(pb.Format_FORMAT_ARROW_IPC) || m["n"] < 1000*16 {
				t.Errorf("Go table as seen by %s: %v", title, m)
			}
			if tc.lang == "py" {
				// pyarrow read the Go table zero-copy, and a pyarrow table went back.
				if m := r.stage("look").Metrics; m["rows"] != 1000 {
					t.Errorf("pyarrow read %v rows of the Go table, want 1000", m["rows"])
				}
				if m := r.stage("pylook").Metrics; m["rows"] != 777 || m["columns"] != 2 || m["arrow"] != 1 {
					t.Errorf("the pyarrow table as read back: %v", m)
				}
			}
			if !tc.stdout {
				return
			}
			line := tc.prober + ": a stray line on stdout"
			var lineSum float64
			for _, c := range []byte(line) {
				lineSum += float64(c)
			}
			if m := r.stage("textsum").Metrics; m["n"] != float64(len(line)) || m["sum"] != lineSum {
				t.Errorf("blob from new_blob: reader saw %v", m)
			}
			// What the stage logged through the context reached the host, and
			// its stray stdout line went to stderr rather than breaking anything.
			if n := r.events.count("text", func(ev *pb.RunEvent) bool {
				return ev.GetLog().GetMessage() == "logged through the host"
			}); n != 1 {
				t.Errorf("log lines from %s.stdout: %d", tc.prober, n)
			}
		})
	}
}

func TestNativePluginDescribesItself(t *testing.T) {
	for _, lang := range nativeLangs {
		t.Run(lang, func(t *testing.T) {
			p := launchNative(t, nativeBinary(t, lang, "ref-"+lang))
			if p.SDK != nativeSDK[lang] || p.SDKVersion == "" {
				t.Errorf("sdk %q %q", p.SDK, p.SDKVersion)
			}
			kinds := map[string]*pb.StageDescriptor{}
			for _, s := range p.Stages {
				kinds[s.GetKind()] = s
				if s.GetVersion() != "1.0.0" || !s.GetCapabilities().GetConcurrentRuns() {
					t.Errorf("%s: version %q, caps %v", s.GetKind(), s.GetVersion(), s.GetCapabilities())
				}
			}
			noise, blur := kinds["ref.noise-"+lang], kinds["ref.blur-"+lang]
			if len(kinds) != 2 || noise == nil || blur == nil {
				t.Fatalf("kinds %v", kinds)
			}
			ps := noise.GetParams()
			if len(ps) != 2 || ps[0].GetName() != "octaves" || ps[0].GetType() != pb.ParamType_PARAM_TYPE_INT ||
				ps[0].GetDefault().GetIntValue() != 4 || ps[1].GetName() != "cell" || ps[1].GetDefault().GetIntValue() != 16 {
				t.Errorf("noise params %v", ps)
			}
			if in := blur.GetInputs(); len(in) != 1 || in[0].GetName() != "in" || in[0].GetDtype() != pb.DType_DTYPE_F32 ||
				in[0].GetKind() != pb.PortKind_PORT_KIND_GRID {
				t.Errorf("blur inputs %v", in)
			}
		})
	}
}

// The fd channel is how a plugin dies with its host: EOF exits 3 at once
// and says so on stderr, a CLOSE message exits 0.
func TestNativePluginExitsWithItsChannel(t *testing.T) {
	for _, tc := range []struct{ lang, gone string }{
		{"cpp", `"@message":"pipehost plugin: host is gone`},
		{"rust", `"@message":"host is gone (fd channel EOF)`},
		{"py", `"@message":"host is gone (fd channel EOF)`},
	} {
		t.Run(tc.lang, func(t *testing.T) {
			ref := nativeBinary(t, tc.lang, "ref-"+tc.lang)
			waitExit := func(p *pluginmgr.Plugin) string {
				deadline := time.Now().Add(3 * time.Second)
				for !p.Exited() {
					if time.Now().After(deadline) {
						t.Fatal("plugin still running 3 s after its fd channel ended")
					}
					time.Sleep(5 * time.Millisecond)
				}
				return p.ExitStatus()
			}
			p := launchNative(t, ref)
			p.Mailbox.Close() // closes the host's end without CLOSE: EOF
			if st := waitExit(p); st != "exit status 3" {
				t.Errorf("after EOF: %q, want exit status 3", st)
			}
			wantAll(t, strings.Join(p.Stderr.Lines(), "\n"), tc.gone)
			p = launchNative(t, ref)
			start := time.Now()
			p.Stop() // CLOSE first
			if st := waitExit(p); st != "exit status 0" {
				t.Errorf("after CLOSE: %q, want exit status 0", st)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("stopping took %v", d)
			}
		})
	}
}

// Started by hand, or by a host it cannot serve, the plugin says why on
// stderr, prints nothing on stdout and exits 1.
func TestNativePluginRefusesToStartWrongly(t *testing.T) {
	const cookie = "PIPEHOST_PLUGIN_COOKIE=8f3c1e2a-pipehost-stage-plugin-v1"
	for _, lang := range []struct{ name, byHand, versions string }{
		{"cpp", "This program is a pipehost stage plugin. It is not meant to be run by hand",
			"accepts only versions 2,3"},
		{"rust", "is a pipehost stage plugin (it offers ref.noise-rust, ref.blur-rust)",
			`speaks plugin protocol versions "2,3"; this plugin speaks 1`},
		{"py", "is a pipehost stage plugin (it offers ref.noise-py, ref.blur-py)",
			`speaks plugin protocol versions "2,3"; this plugin speaks 1`},
	} {
		t.Run(lang.name, func(t *testing.T) {
			ref := nativeBinary(t, lang.name, "ref-"+lang.name)
			for _, tc := range []struct {
				name string
				env  []string
				want string
			}{
				{"by hand", nil, lang.byHand},
				{"wrong cookie", []string{"PIPEHOST_PLUGIN_COOKIE=nope"}, "not meant to be run by hand"},
				{"mTLS", []string{cookie, "PLUGIN_CLIENT_CERT=xyz"}, "mutual TLS"},
				{"protocol version", []string{cookie, "PLUGIN_PROTOCOL_VERSIONS=2,3"}, lang.versions},
				{"no fd channel", []string{cookie, "PLUGIN_PROTOCOL_VERSIONS=1"}, "PIPEHOST_FD_CHANNEL is not set"},
				{"fd channel not a socket", []string{cookie, "PIPEHOST_FD_CHANNEL=0"}, "is not a socket"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					cmd := exec.Command(ref)
					cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, tc.env...)
					cmd.Stdin = strings.NewReader("")
					var stdout, stderr bytes.Buffer
					cmd.Stdout, cmd.Stderr = &stdout, &stderr
					err := cmd.Run()
					if code := cmd.ProcessState.ExitCode(); code != 1 {
						t.Errorf("exit code %d (%v), want 1", code, err)
					}
					if stdout.Len() != 0 {
						t.Errorf("stdout %q, want nothing", stdout.String())
					}
					if !strings.Contains(stderr.String(), tc.want) {
						t.Errorf("stderr %q does not say %q", stderr.String(), tc.want)
					}
				})
			}
		})
	}
}

// The services go-plugin expects of a non-Go plugin, spoken to directly over
// the plugin's socket: the handshake line, grpc.health.v1 SERVING for
// "plugin", a 64 MiB receive limit, StreamStdio that stays open, and
// GRPCController.Shutdown that ends the process promptly.
func TestNativePluginServesGoPluginServices(t *testing.T) {
	for _, tc := range []struct {
		lang      string
		overLimit codes.Code // how the SDK's gRPC server refuses a message over its limit
	}{
		{"cpp", codes.ResourceExhausted},
		{"rust", codes.OutOfRange},
		{"py", codes.ResourceExhausted},
	} {
		t.Run(tc.lang, func(t *testing.T) {
			servesGoPluginServices(t, nativeBinary(t, tc.lang, "ref-"+tc.lang), tc.overLimit)
		})
	}
}

func servesGoPluginServices(t *testing.T, ref string, overLimit codes.Code) {
	sockDir := t.TempDir()
	local, remote, err := shm.NewChannelPair()
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	cmd := exec.Command(ref)
	cmd.Env = []string{
		"PIPEHOST_PLUGIN_COOKIE=8f3c1e2a-pipehost-stage-plugin-v1",
		"PLUGIN_PROTOCOL_VERSIONS=1",
		"PLUGIN_UNIX_SOCKET_DIR=" + sockDir,
		"PIPEHOST_FD_CHANNEL=3",
	}
	cmd.ExtraFiles = []*os.File{remote}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	remote.Close()
	exited := make(chan error, 1)
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the handshake: %v (stderr %q)", err, stderr.String())
	}
	go func() { exited <- cmd.Wait() }()
	parts := strings.Split(strings.TrimSuffix(line, "\n"), "|")
	if len(parts) != 5 || parts[0] != "1" || parts[1] != "1" || parts[2] != "unix" || parts[4] != "grpc" ||
		filepath.Dir(parts[3]) != sockDir {
		t.Fatalf("handshake line %q", line)
	}
	conn, err := grpc.NewClient("unix://"+parts[3], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "plugin"})
	if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health of plugin: %v, %v", hr, err)
	}

	// A 16 MiB request passes the receive limit (gRPC's default is 4 MiB);
	// the unknown kind is what fails, and the error names it. 65 MiB is over
	// the limit.
	for _, tc := range []struct {
		size int
		code codes.Code
		says string
	}{{16 << 20, codes.NotFound, "no.such-kind"}, {65 << 20, overLimit, ""}} {
		big := &pb.RunRequest{Kind: "no.such-kind", Params: map[string]*pb.Value{
			"blob": {Kind: &pb.Value_StringValue{StringValue: strings.Repeat("x", tc.size)}},
		}}
		stream, err := pb.NewStageClient(conn).Run(ctx, big, grpc.MaxCallSendMsgSize(128<<20))
		if err == nil {
			_, err = stream.Recv()
		}
		if st, _ := status.FromError(err); st.Code() != tc.code || !strings.Contains(st.Message(), tc.says) {
			t.Errorf("a %d MiB Run: %v, want %v", tc.size>>20, err, tc.code)
		}
	}

	// StreamStdio stays open and silent.
	sctx, scancel := context.WithCancel(ctx)
	ss, err := conn.NewStream(sctx, &grpc.StreamDesc{ServerStreams: true}, "/plugin.GRPCStdio/StreamStdio")
	if err != nil {
		t.Fatal(err)
	}
	if err := ss.SendMsg(&emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	ss.CloseSend()
	got := make(chan error, 1)
	go func() { got <- ss.RecvMsg(&emptypb.Empty{}) }()
	select {
	case err := <-got:
		t.Errorf("StreamStdio ended early: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	scancel()

	// Shutdown replies, then the process exits 0 and removes its socket.
	start := time.Now()
	if err := conn.Invoke(ctx, "/plugin.GRPCController/Shutdown", &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit after Shutdown: %v (stderr %q)", err, stderr.String())
		}
	case <-time.After(3 * time.Second):
		t.Fatal("plugin still running 3 s after Shutdown")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Shutdown took %v", d)
	}
	if _, err := os.Stat(parts[3]); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

// BenchmarkNativeStageOverhead reports the host-side time per stage of
// near no-ops in each SDK: a chain of radius-0 blurs on an 8x8 grid (fds,
// handles, the Run RPC, sealing) and independent no-op stages without
// buffers (the Run RPC alone). µs-in-run is the part inside the plugin's Run.
func BenchmarkNativeStageOverhead(b *testing.B) {
	for _, tc := range []struct{ name, lang, kind string }{
		{"blur-chain/cpp", "cpp", "ref.blur-cpp"}, {"blur-chain/rust", "rust", "ref.blur-rust"},
		{"blur-chain/go", "go", "ref.blur-go"}, {"blur-chain/py", "py", "ref.blur-py"},
		{"noop/cpp", "cpp", "minimal-cpp.noop"}, {"noop/go", "go", "probe.noop"}, {"noop/py", "py", "probe-py.noop"},
		// The C++, Go, Python and Rust SDKs take runs on the fd channel;
		// these send them over the gRPC Run call, as every SDK did before.
		{"noop-grpc/cpp", "cpp", "minimal-cpp.noop"}, {"noop-grpc/go", "go", "probe.noop"},
		{"noop-grpc/py", "py", "probe-py.noop"},
		{"noop/rust", "rust", "probe-rust.noop"}, {"noop-grpc/rust", "rust", "probe-rust.noop"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if strings.HasPrefix(tc.name, "noop-grpc/") {
				b.Setenv(pluginmgr.EnvRunOverGRPC, "1")
			}
			dirs := []string{testbin.Build(b, "testplugins/go"), testbin.Build(b, "plugins/go")}
			if tc.lang != "go" {
				dirs = nativeDirs(b, tc.lang)
			}
			benchStages(b, dirs, tc.kind)
		})
	}
}

func benchStages(b *testing.B, dirs []string, kind string) {
	const n = 20
	body := "[grid]\ntopology = \"plane\"\nwidth = 8\nheight = 8\n[stages.s0]\nkind = \"dummy.source\"\n"
	for i := 1; i <= n; i++ {
		body += "[stages.s" + strconv.Itoa(i) + "]\nkind = \"" + kind + "\"\n"
		if strings.HasPrefix(kind, "ref.blur") {
			body += "params = { radius = 0 }\ninputs = { in = \"s" + strconv.Itoa(i-1) + ".out\" }\n"
		}
	}
	cfg := filepath.Join(b.TempDir(), "p.toml")
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		b.Fatal(err)
	}
	sess, err := runner.Open(context.Background(), runner.Options{
		ConfigPath: cfg,
		PluginDirs: dirs,
		Engine:     engine.Options{Jobs: 1},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sess.Close()
	var host, plugin int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res := sess.Run(context.Background())
		if err := res.Err(); err != nil {
			b.Fatal(err)
		}
		for _, s := range res.Stages {
			if s.Kind == kind {
				host += s.EndNs - s.StartNs
				plugin += s.Stats.GetEndNs() - s.Stats.GetStartNs()
			}
		}
	}
	b.ReportMetric(float64(host)/float64(b.N*n)/1e3, "µs/stage")
	b.ReportMetric(float64(plugin)/float64(b.N*n)/1e3, "µs-in-run/stage")
}
