package runner_test

// C++ plugins (sdk/cpp) run side by side with Go ones through the real host:
// the reference stages follow docs/reference-stage.md bit for bit, grids and
// blobs cross language boundaries zero-copy, and each way a C++ stage can
// misbehave fails exactly as a Go stage would. The binaries come from
// `make build` (bin/plugins/ref-cpp, bin/testplugins/{misbehave,minimal}-cpp).

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

// cppBinary returns the path of a built C++ plugin. A missing binary skips
// the test, unless PIPEHOST_REQUIRE_NATIVE=1 (make test) makes it a failure.
func cppBinary(t testing.TB, name string) string {
	t.Helper()
	sub := "testplugins"
	if name == "ref-cpp" {
		sub = "plugins"
	}
	p := filepath.Join(testbin.ModuleRoot(), "bin", sub, name)
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("PIPEHOST_REQUIRE_NATIVE") == "1" {
			t.Fatalf("C++ plugin missing (run make build-cpp): %v", err)
		}
		t.Skipf("C++ plugin missing (run make build-cpp): %v", err)
	}
	return p
}

// cppPluginDir copies the C++ plugins into a fresh directory, so a run sees
// exactly them and leftover processes can be traced to it.
func cppPluginDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"ref-cpp", "misbehave-cpp", "minimal-cpp"} {
		b, err := os.ReadFile(cppBinary(t, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// cppEvents records what each stage streamed (spans, logs, progress).
type cppEvents struct {
	engine.Observer
	mu sync.Mutex
	by map[string][]*pb.RunEvent
}

func (o *cppEvents) StageEvent(n *plan.Node, ev *pb.RunEvent) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.by[n.Name] = append(o.by[n.Name], ev)
}

func (o *cppEvents) spans(stage string) map[string]*pb.Span {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := map[string]*pb.Span{}
	for _, ev := range o.by[stage] {
		if s := ev.GetSpan(); s != nil {
			out[s.GetName()] = s
		}
	}
	return out
}

func (o *cppEvents) count(stage string, what func(*pb.RunEvent) bool) int {
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

// cppRun is a session over the Go test plugins, the Go reference plugin and
// the C++ plugins, run to completion; cleanup stops it and checks that no
// process, socket or segment is left.
type cppRun struct {
	t      *testing.T
	sess   *runner.Session
	res    *engine.Result
	tmp    string
	dirs   []string
	events *cppEvents
	took   time.Duration
}

func runWithCpp(t *testing.T, body string, opts runner.Options) *cppRun {
	t.Helper()
	tmp := isolate(t)
	dirs := []string{testbin.Build(t, "testplugins/go"), testbin.Build(t, "plugins/go"), cppPluginDir(t)}
	opts.ConfigPath = writeConfig(t, "p.toml", body)
	opts.PluginDirs = dirs
	events := &cppEvents{Observer: engine.Observers(), by: map[string][]*pb.RunEvent{}}
	opts.Engine.Observer = events
	sess, err := runner.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := &cppRun{t: t, sess: sess, tmp: tmp, dirs: dirs, events: events}
	start := time.Now()
	r.res = sess.Run(ctx)
	r.took = time.Since(start)
	t.Cleanup(r.close)
	return r
}

func (r *cppRun) close() {
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

func (r *cppRun) stage(name string) *engine.StageResult {
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
func (r *cppRun) output(stage, port string) []byte {
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

func cppFloats(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

func cppSum(v []float32) float64 {
	var s float64
	for _, x := range v {
		s += float64(x)
	}
	return s
}

// cppSpecBlur is the box blur of docs/reference-stage.md, with the topology
// package's ResolveClamped.
func cppSpecBlur(t *testing.T, kind, caps string, w, h, radius int, in []float32) []float32 {
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

// cppSpecNoise is the integer value noise of docs/reference-stage.md,
// written straight from the spec.
func cppSpecNoise(S uint64, w, h, octaves, cell int) []float32 {
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
				wx, wy := fx<<(16-k), fy<<(16-k)
				top := lat(i0, j0)*(65536-wx) + lat(i1, j0)*wx
				bottom := lat(i0, j1)*(65536-wx) + lat(i1, j1)*wx
				acc += ((top*(65536-wy) + bottom*wy) >> 32) >> o
			}
			out[y*w+x] = float32(acc) / 65536
		}
	}
	return out
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

// A Go source feeds the C++ blur, whose output a Go sink reads: on every
// topology the bytes are the spec's blur of the source and equal Go's blur.
func TestCppBlurBetweenGoStages(t *testing.T) {
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
kind = "ref.blur-cpp"
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
			r := runWithCpp(t, body, runner.Options{})
			if err := r.res.Err(); err != nil {
				t.Fatal(err)
			}
			src := cppFloats(r.output("source", "out"))
			got := r.output("blur", "out")
			sameBits(t, "C++ blur vs the spec", cppFloats(got), cppSpecBlur(t, tc.kind, tc.caps, tc.w, tc.h, tc.radius, src))
			if goBlur := r.output("goblur", "out"); !bytes.Equal(got, goBlur) {
				t.Errorf("C++ and Go blur differ: sha256 %x vs %x", sha256.Sum256(got), sha256.Sum256(goBlur))
			}
			recs := readTrace(t, trace)
			if sum := cppSum(cppFloats(got)); recs["sink"].Inputs["in"] != sum {
				t.Errorf("the Go sink saw sum %v, the C++ blur wrote %v", recs["sink"].Inputs["in"], sum)
			}
			st := r.stage("blur")
			if st.Stats.GetPeakRssBytes() == 0 || st.Stats.GetEndNs() < st.Stats.GetStartNs() ||
				st.Stats.GetStartNs() < st.StartNs || st.Stats.GetEndNs() > st.EndNs {
				t.Errorf("C++ stage stats %v outside the host's %d..%d", st.Stats, st.StartNs, st.EndNs)
			}
			spans := r.events.spans("blur")
			if s := spans["blur"]; len(spans) != 1 || s == nil || s.GetParentId() != 0 ||
				s.GetStartNs() < st.Stats.GetStartNs() || s.GetEndNs() > st.Stats.GetEndNs() {
				t.Errorf("C++ stage spans: %v (stage %d..%d)", spans, st.Stats.GetStartNs(), st.Stats.GetEndNs())
			}
		})
	}
}

// The C++ noise is the spec's, bit for bit, and a C++ chain agrees with
// the same chain in Go.
func TestCppNoiseFollowsTheSpec(t *testing.T) {
	for _, tc := range []struct {
		grid          string
		w, h          int
		octaves, cell int
	}{
		{"[grid]\ntopology = \"sphere\"\nwidth = 128\nheight = 64\n", 128, 64, 4, 16},
		{"[grid]\ntopology = \"torus\"\nwidth = 64\nheight = 32\n", 64, 32, 6, 32},
		{"[grid]\ntopology = \"plane\"\nwidth = 8\nheight = 8\n", 8, 8, 1, 2},
		{"[grid]\ntopology = \"plane\"\nwidth = 256\nheight = 128\n", 256, 128, 8, 128},
	} {
		digests := map[string][32]byte{}
		for _, lang := range []string{"cpp", "go"} {
			body := "[run]\nseed = 987654321\n" + tc.grid + `
[stages.noise]
kind = "ref.noise-` + lang + `"
params = { octaves = ` + strconv.Itoa(tc.octaves) + `, cell = ` + strconv.Itoa(tc.cell) + ` }
save = { out = "npz" }
[stages.blur]
kind = "ref.blur-` + lang + `"
inputs = { in = "noise.out" }
params = { radius = 2 }
save = { out = "npz" }
`
			r := runWithCpp(t, body, runner.Options{})
			if err := r.res.Err(); err != nil {
				t.Fatal(err)
			}
			noise := r.output("noise", "out")
			if lang == "cpp" {
				want := cppSpecNoise(seed.StageSeed(987654321, "noise"), tc.w, tc.h, tc.octaves, tc.cell)
				sameBits(t, "C++ noise vs the spec", cppFloats(noise), want)
				if spans := r.events.spans("noise"); spans["noise"] == nil {
					t.Errorf("ref.noise-cpp spans: %v", spans)
				}
				if n := r.events.count("noise", func(ev *pb.RunEvent) bool { return ev.GetProgress() != nil }); n == 0 {
					t.Error("ref.noise-cpp reported no progress")
				}
			}
			digests["noise-"+lang] = sha256.Sum256(noise)
			digests["blur-"+lang] = sha256.Sum256(r.output("blur", "out"))
			r.close()
		}
		if digests["noise-cpp"] != digests["noise-go"] || digests["blur-cpp"] != digests["blur-go"] {
			t.Errorf("%s: C++ and Go chains differ", tc.grid)
		}
	}
}

func TestCppStageErrorsNameTheParam(t *testing.T) {
	r := runWithCpp(t, grid+`
[stages.noise]
kind = "ref.noise-cpp"
params = { octaves = 4, cell = 12 }
[stages.blur]
kind = "ref.blur-cpp"
inputs = { in = "src.out" }
params = { radius = 17 }
[stages.src]
kind = "dummy.source"
`, runner.Options{Engine: engine.Options{KeepGoing: true}})
	wantAll(t, stageErr(t, r.res, "noise"), "stage noise (ref.noise-cpp", "param cell = 12", "power of two")
	wantAll(t, stageErr(t, r.res, "blur"), "stage blur (ref.blur-cpp", "param radius = 17", "0..16")
	// Failing stages do not take the plugin down: both ran in one process.
	if s := statuses(r.res); s["src"] != engine.StatusOK || s["noise"] != engine.StatusFailed || s["blur"] != engine.StatusFailed {
		t.Errorf("statuses %v", s)
	}
}

func TestCppKeptWritableMappingFailsTheStage(t *testing.T) {
	r := runWithCpp(t, grid+`
[stages.leaky]
kind = "bad-cpp.keepmap"
[stages.sink]
kind = "dummy.sink"
inputs = { in = "leaky.out" }
`, runner.Options{})
	wantAll(t, stageErr(t, r.res, "leaky"),
		`stage "leaky" kept a writable mapping of its output "out"`, "stage leaky (bad-cpp.keepmap")
	if s := statuses(r.res); s["sink"] != engine.StatusSkipped {
		t.Errorf("sink ran on an unsealed input: %v", s)
	}
}

// A C++ consumer writing to its input dies of SIGSEGV in its own process;
// the other consumer still sees the producer's bytes.
func TestCppWriteToInputFaultsAndLeavesDataIntact(t *testing.T) {
	trace := filepath.Join(t.TempDir(), "trace.jsonl")
	r := runWithCpp(t, grid+`
[stages.source]
kind = "dummy.source"
params = { trace = "`+trace+`" }
save = { out = "npz" }
[stages.vandal]
kind = "bad-cpp.writeinput"
inputs = { in = "source.out" }
[stages.reader]
kind = "dummy.sink"
inputs = { in = "source.out" }
params = { trace = "`+trace+`" }
`, runner.Options{Engine: engine.Options{KeepGoing: true, Jobs: 1}})
	msg := stageErr(t, r.res, "vandal")
	wantAll(t, msg, "stage vandal (bad-cpp.writeinput", "plugin process ended: signal: segmentation fault",
		"bad-cpp.writeinput: writing to my read-only input")
	if strings.Contains(msg, "the write did not fault") {
		t.Error("the write to a sealed input went through")
	}
	if s := statuses(r.res); s["reader"] != engine.StatusOK || s["source"] != engine.StatusOK {
		t.Fatalf("statuses %v", s)
	}
	data := cppFloats(r.output("source", "out"))
	sum := cppSum(data)
	recs := readTrace(t, trace)
	if sum != recs["source"].Outputs["out"] || sum != recs["reader"].Inputs["in"] {
		t.Errorf("segment sum %v, producer wrote %v, reader saw %v", sum, recs["source"].Outputs["out"], recs["reader"].Inputs["in"])
	}
	if data[0] == 42 {
		t.Error("the vandal's write landed")
	}
}

func TestCppCrashIsReported(t *testing.T) {
	trace := filepath.Join(t.TempDir(), "trace.jsonl")
	r := runWithCpp(t, grid+`
[stages.bad]
kind = "bad-cpp.crash"
[stages.after]
kind = "dummy.sink"
inputs = { in = "bad.out" }
[stages.other]
kind = "dummy.source"
params = { trace = "`+trace+`" }
`, runner.Options{Engine: engine.Options{KeepGoing: true}})
	wantAll(t, stageErr(t, r.res, "bad"), "stage bad (bad-cpp.crash",
		"plugin process ended: signal: aborted", "bad-cpp.crash: about to abort")
	s := statuses(r.res)
	if s["bad"] != engine.StatusFailed || s["after"] != engine.StatusSkipped || s["other"] != engine.StatusOK {
		t.Errorf("statuses %v", s)
	}
}

func TestCppHangTimesOut(t *testing.T) {
	r := runWithCpp(t, grid+`
[stages.stuck]
kind = "bad-cpp.hang"
timeout = "2s"
`, runner.Options{})
	wantAll(t, stageErr(t, r.res, "stuck"), "stage stuck (bad-cpp.hang", "stage timed out after 2s")
	if r.took < 2*time.Second || r.took > 8*time.Second {
		t.Errorf("a 2 s timeout failed the run after %v", r.took)
	}
	// cleanup (close) checks that the stopped plugin is gone.
}

// Dynamic outputs cross the fd channel both ways: a C++ blob of unknown size
// adopted by the host and read by another C++ stage, an empty one, a blob
// allocated at a known size, and a Go Arrow table read by C++.
func TestCppDynamicOutputs(t *testing.T) {
	r := runWithCpp(t, grid+`
[stages.blob]
kind = "minimal-cpp.blob"
params = { n = 100000 }
[stages.sum]
kind = "minimal-cpp.blobsum"
inputs = { in = "blob.out" }
[stages.empty]
kind = "minimal-cpp.blob"
params = { n = 0 }
[stages.emptysum]
kind = "minimal-cpp.blobsum"
inputs = { in = "empty.out" }
[stages.text]
kind = "minimal-cpp.stdout"
[stages.textsum]
kind = "minimal-cpp.blobsum"
inputs = { in = "text.text" }
[stages.rows]
kind = "probe.table"
params = { rows = 1000 }
[stages.look]
kind = "minimal-cpp.tablebytes"
inputs = { in = "rows.rows" }
`, runner.Options{})
	if err := r.res.Err(); err != nil {
		t.Fatal(err)
	}
	var want float64
	for i := 0; i < 100000; i++ {
		want += float64(i * 7 % 251)
	}
	if m := r.stage("blob").Metrics; m["sum"] != want || m["n"] != 100000 {
		t.Errorf("writer: %v, want sum %v", m, want)
	}
	if m := r.stage("sum").Metrics; m["sum"] != want || m["n"] != 100000 {
		t.Errorf("reader saw %v, want sum %v of 100000 bytes", m, want)
	}
	if m := r.stage("emptysum").Metrics; m["n"] != 0 || m["sum"] != 0 {
		t.Errorf("empty blob: reader saw %v", m)
	}
	line := "minimal-cpp: a stray line on stdout"
	var lineSum float64
	for _, c := range []byte(line) {
		lineSum += float64(c)
	}
	if m := r.stage("textsum").Metrics; m["n"] != float64(len(line)) || m["sum"] != lineSum {
		t.Errorf("blob from new_blob: reader saw %v", m)
	}
	if m := r.stage("look").Metrics; m["arrow"] != 1 || m["format"] != float64(pb.Format_FORMAT_ARROW_IPC) || m["n"] < 1000*16 {
		t.Errorf("Go table as seen by C++: %v", m)
	}
	// What the stage logged through the context reached the host, and its
	// stray stdout line went to stderr rather than breaking anything.
	if n := r.events.count("text", func(ev *pb.RunEvent) bool {
		return ev.GetLog().GetMessage() == "logged through the host"
	}); n != 1 {
		t.Errorf("log lines from minimal-cpp.stdout: %d", n)
	}
}

// The peak RSS a C++ stage reports is its own: a 200 MiB spike shows in the
// stage that made it and not in the stages after it.
func TestCppPeakRSSIsPerStage(t *testing.T) {
	r := runWithCpp(t, grid+`
[stages.spike]
kind = "minimal-cpp.alloc"
params = { mb = 200 }
[stages.quiet1]
kind = "minimal-cpp.noop"
[stages.quiet2]
kind = "minimal-cpp.noop"
`, runner.Options{Engine: engine.Options{Jobs: 1}})
	if err := r.res.Err(); err != nil {
		t.Fatal(err)
	}
	spike := r.stage("spike").Stats
	if spike.GetPeakRssBytes() < 200<<20 || spike.GetPeakShared() {
		t.Errorf("spike: peak %d MiB (shared %v), want ≥ 200 MiB", spike.GetPeakRssBytes()>>20, spike.GetPeakShared())
	}
	for _, name := range []string{"quiet1", "quiet2"} {
		if st := r.stage(name).Stats; st.GetPeakRssBytes() == 0 || st.GetPeakRssBytes() > 100<<20 {
			t.Errorf("%s after a 200 MiB spike: peak %d MiB", name, st.GetPeakRssBytes()>>20)
		}
	}
	if spike.GetCpuNs() == 0 {
		t.Error("spike: no CPU time")
	}
}

// Concurrent runs share one C++ process: four 400 ms stages overlap and
// each says its peak covers another run; a run that times out fails alone.
func TestCppConcurrentRunsInOneProcess(t *testing.T) {
	body := grid
	for _, s := range []string{"a", "b", "c", "d"} {
		body += "[stages." + s + "]\nkind = \"minimal-cpp.sleep\"\nparams = { ms = 400 }\n"
	}
	body += "[stages.late]\nkind = \"minimal-cpp.sleep\"\nparams = { ms = 5000 }\ntimeout = \"1s\"\n"
	r := runWithCpp(t, body, runner.Options{Engine: engine.Options{Jobs: 5, KeepGoing: true}})
	wantAll(t, stageErr(t, r.res, "late"), "stage late (minimal-cpp.sleep", "stage timed out after 1s")
	pids := map[int]bool{}
	for _, s := range []string{"a", "b", "c", "d"} {
		st := r.stage(s)
		if st.Status != engine.StatusOK {
			t.Fatalf("%s: %v", s, st.Err)
		}
		if !st.Stats.GetPeakShared() {
			t.Errorf("%s: peak_shared is false though four runs overlapped", s)
		}
	}
	for _, p := range r.sess.Plugins {
		if p.SDK == "cpp" && strings.HasSuffix(p.Path, "minimal-cpp") {
			pids[p.Pid] = true
		}
	}
	if len(pids) != 1 {
		t.Errorf("minimal-cpp processes: %v", pids)
	}
	if r.took > 3*time.Second {
		t.Errorf("four concurrent 400 ms stages and a 1 s timeout took %v", r.took)
	}
}

// launchCpp starts a C++ plugin through the plugin manager.
func launchCpp(t *testing.T, path string) *pluginmgr.Plugin {
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

func TestCppPluginDescribesItself(t *testing.T) {
	p := launchCpp(t, cppBinary(t, "ref-cpp"))
	if p.SDK != "cpp" || p.SDKVersion == "" {
		t.Errorf("sdk %q %q", p.SDK, p.SDKVersion)
	}
	kinds := map[string]*pb.StageDescriptor{}
	for _, s := range p.Stages {
		kinds[s.GetKind()] = s
		if s.GetVersion() != "1.0.0" || !s.GetCapabilities().GetConcurrentRuns() {
			t.Errorf("%s: version %q, caps %v", s.GetKind(), s.GetVersion(), s.GetCapabilities())
		}
	}
	if len(kinds) != 2 || kinds["ref.noise-cpp"] == nil || kinds["ref.blur-cpp"] == nil {
		t.Fatalf("kinds %v", kinds)
	}
	ps := kinds["ref.noise-cpp"].GetParams()
	if len(ps) != 2 || ps[0].GetName() != "octaves" || ps[0].GetType() != pb.ParamType_PARAM_TYPE_INT ||
		ps[0].GetDefault().GetIntValue() != 4 || ps[1].GetName() != "cell" || ps[1].GetDefault().GetIntValue() != 16 {
		t.Errorf("noise params %v", ps)
	}
	blur := kinds["ref.blur-cpp"]
	if in := blur.GetInputs(); len(in) != 1 || in[0].GetName() != "in" || in[0].GetDtype() != pb.DType_DTYPE_F32 ||
		in[0].GetKind() != pb.PortKind_PORT_KIND_GRID {
		t.Errorf("blur inputs %v", in)
	}
}

// The fd channel is how a plugin dies with its host: EOF exits 3 at once, a
// CLOSE message exits 0.
func TestCppPluginExitsWithItsChannel(t *testing.T) {
	ref := cppBinary(t, "ref-cpp")
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
	p := launchCpp(t, ref)
	p.Mailbox.Close() // closes the host's end without CLOSE: EOF
	if st := waitExit(p); st != "exit status 3" {
		t.Errorf("after EOF: %q, want exit status 3", st)
	}
	wantAll(t, strings.Join(p.Stderr.Lines(), "\n"), `"@message":"pipehost plugin: host is gone`)
	p = launchCpp(t, ref)
	start := time.Now()
	p.Stop() // CLOSE first
	if st := waitExit(p); st != "exit status 0" {
		t.Errorf("after CLOSE: %q, want exit status 0", st)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("stopping took %v", d)
	}
}

// Started by hand, or by a host it cannot serve, the plugin says why on
// stderr, prints nothing on stdout and exits 1.
func TestCppPluginRefusesToStartWrongly(t *testing.T) {
	ref := cppBinary(t, "ref-cpp")
	const cookie = "PIPEHOST_PLUGIN_COOKIE=8f3c1e2a-pipehost-stage-plugin-v1"
	for _, tc := range []struct {
		name string
		env  []string
		want string
	}{
		{"by hand", nil, "This program is a pipehost stage plugin. It is not meant to be run by hand"},
		{"wrong cookie", []string{"PIPEHOST_PLUGIN_COOKIE=nope"}, "not meant to be run by hand"},
		{"mTLS", []string{cookie, "PLUGIN_CLIENT_CERT=xyz"}, "mutual TLS"},
		{"protocol version", []string{cookie, "PLUGIN_PROTOCOL_VERSIONS=2,3"}, "accepts only versions 2,3"},
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
}

// The services go-plugin expects of a non-Go plugin, spoken to directly over
// the C++ plugin's socket: the handshake line, grpc.health.v1 SERVING for
// "plugin", a 64 MiB receive limit, StreamStdio that stays open, and
// GRPCController.Shutdown that ends the process promptly.
func TestCppPluginServesGoPluginServices(t *testing.T) {
	ref := cppBinary(t, "ref-cpp")
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
	// the unknown kind is what fails. 65 MiB is over the limit.
	for _, tc := range []struct {
		size int
		code codes.Code
	}{{16 << 20, codes.NotFound}, {65 << 20, codes.ResourceExhausted}} {
		big := &pb.RunRequest{Kind: "no.such-kind", Params: map[string]*pb.Value{
			"blob": {Kind: &pb.Value_StringValue{StringValue: strings.Repeat("x", tc.size)}},
		}}
		stream, err := pb.NewStageClient(conn).Run(ctx, big, grpc.MaxCallSendMsgSize(128<<20))
		if err == nil {
			_, err = stream.Recv()
		}
		if st, _ := status.FromError(err); st.Code() != tc.code {
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

// BenchmarkCppStageOverhead reports the host-side time per stage of C++
// near no-ops, Go for comparison: a chain of radius-0 blurs on an 8x8 grid
// (fds, handles, the Run RPC, sealing) and independent no-op stages without
// buffers (the Run RPC alone). µs-in-run is the part inside the plugin's Run.
func BenchmarkCppStageOverhead(b *testing.B) {
	cppBinary(b, "ref-cpp")
	for _, tc := range []struct{ name, kind string }{
		{"blur-chain/cpp", "ref.blur-cpp"}, {"blur-chain/go", "ref.blur-go"},
		{"noop/cpp", "minimal-cpp.noop"}, {"noop/go", "probe.noop"},
	} {
		b.Run(tc.name, func(b *testing.B) { cppBenchStages(b, tc.kind) })
	}
}

func cppBenchStages(b *testing.B, kind string) {
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
		PluginDirs: []string{testbin.Build(b, "testplugins/go"), testbin.Build(b, "plugins/go"), cppPluginDir(b)},
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
