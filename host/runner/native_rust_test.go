package runner_test

// Rust plugins (sdk/rust) run side by side with Go ones through the real
// host: the reference stages agree with Go bit for bit, data crosses
// language boundaries zero-copy, and each way a Rust stage can misbehave
// fails exactly as a Go stage would. The binaries come from `make build`
// (bin/plugins/ref-rust, bin/testplugins/misbehave-rust).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math"
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
	"github.com/pipehost/pipehost/shm"
	"github.com/pipehost/pipehost/topology"
)

// rustBinaries returns the paths of the built Rust plugins. Missing binaries
// skip the test, unless PIPEHOST_REQUIRE_NATIVE=1 (make test) makes that a
// failure.
func rustBinaries(t testing.TB) (ref, misbehave string) {
	t.Helper()
	root := testbin.ModuleRoot()
	ref = filepath.Join(root, "bin", "plugins", "ref-rust")
	misbehave = filepath.Join(root, "bin", "testplugins", "misbehave-rust")
	for _, p := range []string{ref, misbehave} {
		if _, err := os.Stat(p); err != nil {
			if os.Getenv("PIPEHOST_REQUIRE_NATIVE") == "1" {
				t.Fatalf("Rust plugin missing (run make build-rust): %v", err)
			}
			t.Skipf("Rust plugin missing (run make build-rust): %v", err)
		}
	}
	return ref, misbehave
}

// rustPluginDir copies the Rust plugins into a fresh directory, so a run
// sees exactly them and leftover processes can be traced to it.
func rustPluginDir(t *testing.T) string {
	t.Helper()
	ref, misbehave := rustBinaries(t)
	dir := t.TempDir()
	for _, p := range []string{ref, misbehave} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// rustRun is a session over the Go test plugins, the Go reference stages
// and the Rust plugins, run to completion. close stops it and checks that
// no process, socket or segment is left.
type rustRun struct {
	t      *testing.T
	sess   *runner.Session
	res    *engine.Result
	tmp    string
	dirs   []string
	events *rustEvents
}

// rustEvents records the events each stage streamed (spans, logs, progress);
// the other observer calls go to a no-op.
type rustEvents struct {
	engine.Observer
	mu sync.Mutex
	by map[string][]*pb.RunEvent
}

func (o *rustEvents) StageEvent(n *plan.Node, ev *pb.RunEvent) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.by[n.Name] = append(o.by[n.Name], ev)
}

// spans lists the names of the spans a stage reported.
func (o *rustEvents) spans(stage string) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var names []string
	for _, ev := range o.by[stage] {
		if s := ev.GetSpan(); s != nil {
			names = append(names, s.GetName())
		}
	}
	return names
}

func runWithRust(t *testing.T, body string, opts runner.Options) *rustRun {
	t.Helper()
	tmp := isolate(t)
	dirs := []string{testbin.Build(t, "testplugins/go"), testbin.Build(t, "plugins/go"), rustPluginDir(t)}
	opts.ConfigPath = writeConfig(t, "p.toml", body)
	opts.PluginDirs = dirs
	events := &rustEvents{Observer: engine.Observers(), by: map[string][]*pb.RunEvent{}}
	opts.Engine.Observer = events
	sess, err := runner.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := &rustRun{t: t, sess: sess, tmp: tmp, dirs: dirs, events: events}
	r.res = sess.Run(ctx)
	t.Cleanup(r.close)
	return r
}

func (r *rustRun) close() {
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

func (r *rustRun) stage(name string) *engine.StageResult {
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
func (r *rustRun) output(stage, port string) []byte {
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

func rustFloats(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

// rustExpectedBlur is docs/reference-stage.md's box blur, computed here with the
// topology package.
func rustExpectedBlur(t *testing.T, kind, caps string, w, h, radius int, in []float32) []float32 {
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

// A Go source feeds the Rust blur, whose output a Go sink reads: the bytes
// are the blur of the source's, on every topology, and equal to Go's blur.
func TestRustBlurBetweenGoStages(t *testing.T) {
	for _, tc := range []struct {
		kind, caps string
		w, h       int
		radius     int
	}{
		{"sphere", "", 64, 32, 2},
		{"torus", "", 48, 16, 3},
		{"cylinder", "reflect", 40, 24, 1},
		{"plane", "", 32, 32, 4},
	} {
		t.Run(tc.kind, func(t *testing.T) {
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
kind = "ref.blur-rust"
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
			r := runWithRust(t, body, runner.Options{})
			if err := r.res.Err(); err != nil {
				t.Fatal(err)
			}
			src := rustFloats(r.output("source", "out"))
			got := r.output("blur", "out")
			want := rustExpectedBlur(t, tc.kind, tc.caps, tc.w, tc.h, tc.radius, src)
			for i, v := range rustFloats(got) {
				if math.Float32bits(v) != math.Float32bits(want[i]) {
					t.Fatalf("cell %d: Rust blur %v, spec %v", i, v, want[i])
				}
			}
			if goBlur := r.output("goblur", "out"); !bytes.Equal(got, goBlur) {
				t.Errorf("Rust and Go blur differ: sha256 %x vs %x", sha256.Sum256(got), sha256.Sum256(goBlur))
			}
			recs := readTrace(t, trace)
			var sum float64
			for _, v := range rustFloats(got) {
				sum += float64(v)
			}
			if recs["sink"].Inputs["in"] != sum {
				t.Errorf("the Go sink saw sum %v, the Rust blur wrote %v", recs["sink"].Inputs["in"], sum)
			}
			st := r.stage("blur")
			if st.Stats.GetPeakRssBytes() == 0 || st.Stats.GetEndNs() < st.Stats.GetStartNs() || st.Stats.GetStartNs() < st.StartNs {
				t.Errorf("Rust stage stats: %v (host start %d)", st.Stats, st.StartNs)
			}
			if spans := r.events.spans("blur"); len(spans) != 1 || spans[0] != "blur" {
				t.Errorf("Rust stage spans: %v", spans)
			}
		})
	}
}

// The Rust noise equals the Go noise bit for bit: same stage name (so same
// seed) in two runs, one per language; and a mixed chain agrees both ways.
func TestRustReferenceStagesMatchGo(t *testing.T) {
	for _, tc := range []struct {
		grid   string
		params string
	}{
		{"[grid]\ntopology = \"sphere\"\nwidth = 128\nheight = 64\n", ""},
		{"[grid]\ntopology = \"torus\"\nwidth = 64\nheight = 32\n", "params = { octaves = 6, cell = 32 }"},
		{"[grid]\ntopology = \"plane\"\nwidth = 8\nheight = 8\n", "params = { octaves = 1, cell = 2 }"},
	} {
		digests := map[string][32]byte{}
		for _, lang := range []string{"go", "rust"} {
			other := map[string]string{"go": "rust", "rust": "go"}[lang]
			body := "[run]\nseed = 1234567\n" + tc.grid + `
[stages.noise]
kind = "ref.noise-` + lang + `"
` + tc.params + `
save = { out = "npz" }
[stages.blur]
kind = "ref.blur-` + other + `"
inputs = { in = "noise.out" }
params = { radius = 2 }
save = { out = "npz" }
`
			r := runWithRust(t, body, runner.Options{})
			if err := r.res.Err(); err != nil {
				t.Fatal(err)
			}
			digests["noise-"+lang] = sha256.Sum256(r.output("noise", "out"))
			digests["blur-after-"+lang] = sha256.Sum256(r.output("blur", "out"))
			if lang == "rust" {
				if spans := strings.Join(r.events.spans("noise"), ","); spans != "lattice,fill" {
					t.Errorf("ref.noise-rust spans: %v", spans)
				}
			}
			r.close()
		}
		if digests["noise-go"] != digests["noise-rust"] {
			t.Errorf("%s: noise differs: go %x, rust %x", tc.grid, digests["noise-go"], digests["noise-rust"])
		}
		if digests["blur-after-go"] != digests["blur-after-rust"] {
			t.Errorf("%s: mixed chains differ", tc.grid)
		}
	}
}

func TestRustNoiseRejectsBadParams(t *testing.T) {
	r := runWithRust(t, grid+`
[stages.noise]
kind = "ref.noise-rust"
params = { octaves = 4, cell = 12 }
`, runner.Options{})
	wantAll(t, stageErr(t, r.res, "noise"), "stage noise (ref.noise-rust", `param "cell"`, "power of two")
}

func TestRustKeptWritableMappingFailsTheStage(t *testing.T) {
	r := runWithRust(t, grid+`
[stages.leaky]
kind = "bad-rust.keepmap"
[stages.sink]
kind = "dummy.sink"
inputs = { in = "leaky.out" }
`, runner.Options{})
	wantAll(t, stageErr(t, r.res, "leaky"),
		`stage "leaky" kept a writable mapping of its output "out"`, "stage leaky (bad-rust.keepmap")
	if s := statuses(r.res); s["sink"] != engine.StatusSkipped {
		t.Errorf("sink ran on an unsealed input: %v", s)
	}
}

// A Rust consumer writing to its input dies of SIGSEGV in its own process;
// the other consumer still sees the producer's bytes.
func TestRustWriteToInputFaultsAndLeavesDataIntact(t *testing.T) {
	trace := filepath.Join(t.TempDir(), "trace.jsonl")
	r := runWithRust(t, grid+`
[stages.source]
kind = "dummy.source"
params = { trace = "`+trace+`" }
save = { out = "npz" }
[stages.vandal]
kind = "bad-rust.writeinput"
inputs = { in = "source.out" }
[stages.reader]
kind = "dummy.sink"
inputs = { in = "source.out" }
params = { trace = "`+trace+`" }
`, runner.Options{Engine: engine.Options{KeepGoing: true, Jobs: 1}})
	wantAll(t, stageErr(t, r.res, "vandal"), "stage vandal (bad-rust.writeinput",
		"plugin process ended: signal: segmentation fault", "writing to a read-only input on purpose")
	if s := statuses(r.res); s["reader"] != engine.StatusOK || s["source"] != engine.StatusOK {
		t.Fatalf("statuses %v", s)
	}
	data := rustFloats(r.output("source", "out"))
	var sum float64
	for _, v := range data {
		sum += float64(v)
	}
	recs := readTrace(t, trace)
	if sum != recs["source"].Outputs["out"] || sum != recs["reader"].Inputs["in"] {
		t.Errorf("segment sum %v, producer wrote %v, reader saw %v", sum, recs["source"].Outputs["out"], recs["reader"].Inputs["in"])
	}
	if data[0] == -1 {
		t.Error("the vandal's write landed")
	}
}

func TestRustCrashIsReported(t *testing.T) {
	trace := filepath.Join(t.TempDir(), "trace.jsonl")
	r := runWithRust(t, grid+`
[stages.bad]
kind = "bad-rust.crash"
[stages.after]
kind = "dummy.sink"
inputs = { in = "bad.out" }
[stages.other]
kind = "dummy.source"
params = { trace = "`+trace+`" }
`, runner.Options{Engine: engine.Options{KeepGoing: true}})
	wantAll(t, stageErr(t, r.res, "bad"), "stage bad (bad-rust.crash",
		"plugin process ended: signal: aborted", "aborting on purpose")
	s := statuses(r.res)
	if s["bad"] != engine.StatusFailed || s["after"] != engine.StatusSkipped || s["other"] != engine.StatusOK {
		t.Errorf("statuses %v", s)
	}
}

func TestRustHangTimesOut(t *testing.T) {
	start := time.Now()
	r := runWithRust(t, grid+`
[stages.stuck]
kind = "bad-rust.hang"
timeout = "2s"
`, runner.Options{})
	wantAll(t, stageErr(t, r.res, "stuck"), "stage stuck (bad-rust.hang", "stage timed out after 2s")
	if d := time.Since(start); d > 12*time.Second {
		t.Errorf("a 2 s timeout took %v to fail the run", d)
	}
	// close (at cleanup) checks that the stopped plugin is gone.
}

// Dynamic outputs cross the fd channel both ways: a Rust blob adopted by the
// host and read by another Rust stage, and a Go Arrow table read by Rust.
func TestRustDynamicOutputs(t *testing.T) {
	r := runWithRust(t, grid+`
[stages.blob]
kind = "probe-rust.blob"
params = { n = 100000 }
[stages.sum]
kind = "probe-rust.blobsum"
inputs = { in = "blob.out" }
[stages.empty]
kind = "probe-rust.blob"
params = { n = 0 }
[stages.emptysum]
kind = "probe-rust.blobsum"
inputs = { in = "empty.out" }
[stages.rows]
kind = "probe.table"
params = { rows = 1000 }
[stages.look]
kind = "probe-rust.tablebytes"
inputs = { in = "rows.rows" }
`, runner.Options{})
	if err := r.res.Err(); err != nil {
		t.Fatal(err)
	}
	var want float64
	for i := 0; i < 100000; i++ {
		want += float64(i * 7 % 251)
	}
	if got := r.stage("blob").Metrics["sum"]; got != want {
		t.Errorf("writer sum %v, want %v", got, want)
	}
	if m := r.stage("sum").Metrics; m["sum"] != want || m["n"] != 100000 {
		t.Errorf("reader saw %v, want sum %v of 100000 bytes", m, want)
	}
	if m := r.stage("emptysum").Metrics; m["n"] != 0 || m["sum"] != 0 {
		t.Errorf("empty blob: reader saw %v", m)
	}
	if m := r.stage("look").Metrics; m["arrow"] != 1 || m["format"] != float64(pb.Format_FORMAT_ARROW_IPC) || m["n"] < 1000*16 {
		t.Errorf("Go table as seen by Rust: %v", m)
	}
}

// launchRust starts a Rust plugin through the plugin manager.
func launchRust(t *testing.T, path string) (*pluginmgr.Manager, *pluginmgr.Plugin) {
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
	return m, p
}

func TestRustPluginDescribesItself(t *testing.T) {
	ref, _ := rustBinaries(t)
	_, p := launchRust(t, ref)
	if p.SDK != "rust" || p.SDKVersion == "" {
		t.Errorf("sdk %q %q", p.SDK, p.SDKVersion)
	}
	kinds := map[string]bool{}
	for _, s := range p.Stages {
		kinds[s.GetKind()] = true
		if s.GetVersion() != "1.0.0" || !s.GetCapabilities().GetConcurrentRuns() {
			t.Errorf("%s: version %q, caps %v", s.GetKind(), s.GetVersion(), s.GetCapabilities())
		}
		if s.GetKind() == "ref.noise-rust" {
			ps := s.GetParams()
			if len(ps) != 2 || ps[0].GetName() != "octaves" || ps[0].GetDefault().GetIntValue() != 4 ||
				ps[1].GetName() != "cell" || ps[1].GetDefault().GetIntValue() != 16 {
				t.Errorf("noise params %v", ps)
			}
		}
	}
	if !kinds["ref.noise-rust"] || !kinds["ref.blur-rust"] || len(kinds) != 2 {
		t.Errorf("kinds %v", kinds)
	}
}

// The fd channel is how a plugin dies with its host: EOF exits 3 at once,
// a CLOSE message exits 0.
func TestRustPluginExitsWithItsChannel(t *testing.T) {
	ref, _ := rustBinaries(t)
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
	_, p := launchRust(t, ref)
	p.Mailbox.Close() // closes the host's end without CLOSE: EOF
	if st := waitExit(p); st != "exit status 3" {
		t.Errorf("after EOF: %q, want exit status 3", st)
	}
	_, p = launchRust(t, ref)
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
func TestRustPluginRefusesToStartWrongly(t *testing.T) {
	ref, _ := rustBinaries(t)
	const cookie = "PIPEHOST_PLUGIN_COOKIE=8f3c1e2a-pipehost-stage-plugin-v1"
	for _, tc := range []struct {
		name string
		env  []string
		want string
	}{
		{"by hand", nil, "is a pipehost stage plugin (it offers ref.noise-rust, ref.blur-rust)"},
		{"wrong cookie", []string{"PIPEHOST_PLUGIN_COOKIE=nope"}, "not meant to be run by hand"},
		{"mTLS", []string{cookie, "PLUGIN_CLIENT_CERT=xyz"}, "mutual TLS"},
		{"protocol version", []string{cookie, "PLUGIN_PROTOCOL_VERSIONS=2,3"}, `speaks plugin protocol versions "2,3"; this plugin speaks 1`},
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

// BenchmarkRustStageOverhead runs a chain of near no-op reference blurs
// (radius 0 on an 8x8 grid), Rust and Go for comparison, and reports the
// host-side time per stage (handles, fds, the Run RPC, sealing) and the part
// spent inside the plugin's Run.
func BenchmarkRustStageOverhead(b *testing.B) {
	rustBinaries(b)
	for _, lang := range []string{"rust", "go"} {
		b.Run(lang, func(b *testing.B) { rustBenchNoopChain(b, "ref.blur-"+lang) })
	}
}

func rustBenchNoopChain(b *testing.B, kind string) {
	const n = 20
	body := "[grid]\ntopology = \"plane\"\nwidth = 8\nheight = 8\n[stages.s0]\nkind = \"dummy.source\"\n"
	for i := 1; i <= n; i++ {
		body += "[stages.s" + strconv.Itoa(i) + "]\nkind = \"" + kind + "\"\nparams = { radius = 0 }\n" +
			"inputs = { in = \"s" + strconv.Itoa(i-1) + ".out\" }\n"
	}
	cfg := filepath.Join(b.TempDir(), "p.toml")
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		b.Fatal(err)
	}
	ref, _ := rustBinaries(b)
	plugins := b.TempDir()
	raw, err := os.ReadFile(ref)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(plugins, "ref-rust"), raw, 0o755); err != nil {
		b.Fatal(err)
	}
	sess, err := runner.Open(context.Background(), runner.Options{
		ConfigPath: cfg,
		PluginDirs: []string{testbin.Build(b, "testplugins/go"), testbin.Build(b, "plugins/go"), plugins},
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

// The services go-plugin expects of a non-Go plugin, spoken to directly over
// the plugin's socket: the handshake line, grpc.health.v1 SERVING for
// "plugin", a 64 MiB receive limit, StreamStdio that stays open, and
// GRPCController.Shutdown that ends the process promptly.
func TestRustPluginServesGoPluginServices(t *testing.T) {
	ref, _ := rustBinaries(t)
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

	// A 16 MiB request passes the plugin's receive limit (gRPC's default is
	// 4 MiB); the unknown kind is what fails.
	big := &pb.RunRequest{Kind: "no.such-kind", Params: map[string]*pb.Value{
		"blob": {Kind: &pb.Value_StringValue{StringValue: strings.Repeat("x", 16<<20)}},
	}}
	stream, err := pb.NewStageClient(conn).Run(ctx, big, grpc.MaxCallSendMsgSize(64<<20))
	if err == nil {
		_, err = stream.Recv()
	}
	if st, _ := status.FromError(err); st.Code() != codes.NotFound || !strings.Contains(st.Message(), "no.such-kind") {
		t.Errorf("a 16 MiB Run: %v", err)
	}

	// StreamStdio stays open and silent.
	sctx, scancel := context.WithCancel(ctx)
	sdesc := &grpc.StreamDesc{ServerStreams: true}
	ss, err := conn.NewStream(sctx, sdesc, "/plugin.GRPCStdio/StreamStdio")
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
