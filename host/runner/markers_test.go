package runner_test

// Trace markers end to end: a Go → Rust → C++ → Go → Python pipeline runs with
// markers on, and the kernel's trace buffer must hold every stage and every
// subtask span of the run log, written by the right process, nested on the
// thread that ran them, at the run log's times.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/testbin"
	"github.com/pipehost/pipehost/internal/tracemark"
)

// traceInstance is a private ftrace instance that receives copies of what
// is written to the top-level trace_marker (options/copy_trace_marker, Linux
// 6.17+), so the test never touches the top-level buffer other tools use.
type traceInstance struct{ dir string }

func writeTraceFile(t *testing.T, path, v string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(v), 0); err != nil {
		t.Fatalf("tracefs: %v", err)
	}
}

// openTraceInstance mounts tracefs when it is not mounted (root only; it is
// unmounted again at the end) and creates the instance, tracing on, clock
// CLOCK_MONOTONIC like the run log. Skips, with the reason, where tracefs
// cannot be had.
func openTraceInstance(t *testing.T) *traceInstance {
	t.Helper()
	marker, err := tracemark.Find()
	if err != nil {
		const mnt = "/sys/kernel/tracing"
		if os.Geteuid() != 0 {
			t.Skipf("%v, and only root can mount it", err)
		}
		if err := unix.Mount("nodev", mnt, "tracefs", 0, ""); err != nil {
			t.Skipf("tracefs is not mounted and cannot be: mount -t tracefs nodev %s: %v", mnt, err)
		}
		t.Cleanup(func() {
			// Lazily: this process keeps its trace_marker fd open (once per
			// process), and the mount goes once it closes.
			if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
				t.Errorf("unmounting the tracefs this test mounted: %v", err)
			}
		})
		if marker, err = tracemark.Find(); err != nil {
			t.Fatalf("tracefs mounted at %s but not found: %v", mnt, err)
		}
	}
	root := filepath.Dir(marker)
	if err := unix.Access(marker, unix.W_OK); err != nil {
		t.Skipf("%s is not writable here: %v", marker, err)
	}
	if _, err := os.Stat(filepath.Join(root, "options", "copy_trace_marker")); err != nil {
		t.Skipf("this kernel cannot copy trace_marker writes to an instance (options/copy_trace_marker, Linux 6.17+): the test would need the shared top-level buffer")
	}
	dir := filepath.Join(root, "instances", fmt.Sprintf("pipehost-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot create a tracing instance: %v", err)
	}
	t.Cleanup(func() {
		// Tracing off, buffer cleared, instance (and its buffer) gone.
		_ = os.WriteFile(filepath.Join(dir, "tracing_on"), []byte("0"), 0)
		_ = os.WriteFile(filepath.Join(dir, "trace"), nil, 0)
		if err := os.Remove(dir); err != nil {
			t.Errorf("removing tracing instance: %v", err)
		}
	})
	writeTraceFile(t, filepath.Join(dir, "trace_clock"), "mono")
	writeTraceFile(t, filepath.Join(dir, "options", "copy_trace_marker"), "1")
	writeTraceFile(t, filepath.Join(dir, "tracing_on"), "1")
	return &traceInstance{dir: dir}
}

// marker is one trace_marker write as the buffer holds it.
type marker struct {
	tid  int   // the writing thread (the event's task pid)
	ts   int64 // ns, CLOCK_MONOTONIC, µs resolution
	text string
}

var markerLine = regexp.MustCompile(`-(\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[\d+\]\s+\S+\s+(\d+)\.(\d{6}): tracing_mark_write: (.*)$`)

func (ti *traceInstance) markers(t *testing.T) []marker {
	t.Helper()
	writeTraceFile(t, filepath.Join(ti.dir, "tracing_on"), "0")
	b, err := os.ReadFile(filepath.Join(ti.dir, "trace"))
	if err != nil {
		t.Fatal(err)
	}
	var out []marker
	for _, line := range strings.Split(string(b), "\n") {
		m := markerLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		tid, _ := strconv.Atoi(m[1])
		sec, _ := strconv.ParseInt(m[2], 10, 64)
		us, _ := strconv.ParseInt(m[3], 10, 64)
		out = append(out, marker{tid: tid, ts: sec*1e9 + us*1e3, text: m[4]})
	}
	return out
}

// slice is a B/E pair of one thread.
type slice struct {
	pid, tid   int
	name       string
	start, end int64
	depth      int
}

// pairSlices pairs B and E per thread as Perfetto does, failing on an E without
// a B, an E of another process, or a B never ended.
func pairSlices(t *testing.T, ms []marker) []slice {
	t.Helper()
	open := map[int][]slice{}
	var out []slice
	for _, m := range ms {
		f := strings.Split(m.text, "|")
		switch f[0] {
		case "B":
			pid, _ := strconv.Atoi(f[1])
			open[m.tid] = append(open[m.tid], slice{pid: pid, tid: m.tid, name: f[2], start: m.ts, depth: len(open[m.tid])})
		case "E":
			st := open[m.tid]
			if len(st) == 0 {
				t.Errorf("thread %d: %q without a begin", m.tid, m.text)
				continue
			}
			s := st[len(st)-1]
			open[m.tid] = st[:len(st)-1]
			if pid, _ := strconv.Atoi(f[1]); pid != s.pid {
				t.Errorf("thread %d: %q ends a slice %q of pid %d", m.tid, m.text, s.name, s.pid)
			}
			s.end = m.ts
			out = append(out, s)
		}
	}
	for tid, st := range open {
		for _, s := range st {
			t.Errorf("thread %d: slice %q (pid %d) never ended", tid, s.name, s.pid)
		}
	}
	return out
}

func num(v any) int64 { f, _ := v.(float64); return int64(f) }

// The trace prints µs; a marker is written just outside the span it marks.
const usSlack = 1000

func TestTraceMarkersShowEveryStageAndSubtask(t *testing.T) {
	plugins := refPlugins(t)
	body, err := os.ReadFile(filepath.Join(testbin.ModuleRoot(), "examples", "mixed.toml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.ReplaceAll(string(body), `save = `, `# save = `)
	// And last a Python blur (its subtask: "blur"), so every SDK writes markers.
	cfg += "\n[stages.py]\nkind = \"ref.blur-py\"\ninputs = { in = \"final.out\" }\nparams = { radius = 1 }\n"

	run := func(t *testing.T, opts runner.Options) (*runner.Session, []record) {
		t.Helper()
		isolate(t)
		opts.ConfigPath = writeConfig(t, "p.toml", cfg)
		opts.PluginDirs = []string{plugins}
		sess, err := runner.Open(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		res := sess.Run(context.Background())
		sess.Close()
		if err := res.Err(); err != nil {
			t.Fatal(err)
		}
		return sess, readLog(t, sess.Reports.Log)
	}

	if _, err := tracemark.Find(); err != nil {
		// Not mounted yet: markers asked for must leave the run alone, with
		// one line in the run log saying why.
		t.Run("off without tracefs", func(t *testing.T) {
			_, recs := run(t, runner.Options{TraceMarkers: true})
			var lines []string
			for _, r := range recs {
				if msg, _ := r["msg"].(string); strings.Contains(msg, "trace markers") {
					lines = append(lines, msg)
				}
			}
			if len(lines) != 1 || !strings.Contains(lines[0], "trace markers off") {
				t.Fatalf("run log lines about trace markers: %q, want exactly one saying they are off", lines)
			}
		})
	}

	ti := openTraceInstance(t)
	// The config key turns them on as well as the option.
	cfg = strings.Replace(cfg, "[grid]", "[output]\ntrace_markers = true\n\n[grid]", 1)
	_, recs := run(t, runner.Options{})
	ms := ti.markers(t)
	all := pairSlices(t, ms)

	type stageRec struct {
		pid        int
		start, end int64
		bytesOut   int64
	}
	stages := map[string]stageRec{}
	spans := map[string][]record{}
	pids := map[int]bool{}
	var bytesOut int64
	for _, r := range recs {
		st, _ := r["stage"].(string)
		switch r["type"] {
		case "stage_end":
			d := r.data()
			s := stageRec{pid: int(num(d["pid"])), start: num(d["plugin_start_ns"]), end: num(d["plugin_end_ns"]), bytesOut: num(d["bytes_out"])}
			stages[st] = s
			pids[s.pid] = true
			bytesOut += s.bytesOut
		case "span":
			spans[st] = append(spans[st], r)
		}
	}
	if len(stages) != 5 || len(pids) != 4 {
		t.Fatalf("expected 5 stages in 4 plugin processes (Go, Rust, C++, Python), got %d stages in %d", len(stages), len(pids))
	}
	for name, s := range stages {
		var top []slice
		for _, sl := range all {
			if sl.name == name && sl.depth == 0 && sl.pid == s.pid {
				top = append(top, sl)
			}
		}
		if len(top) != 1 {
			t.Errorf("stage %s: %d top-level slices of pid %d in the trace, want 1", name, len(top), s.pid)
			continue
		}
		st := top[0]
		if st.start > s.start || st.end < s.end-usSlack {
			t.Errorf("stage %s: slice [%d, %d] does not cover the stage [%d, %d]", name, st.start, st.end, s.start, s.end)
		}
		if len(spans[name]) == 0 {
			t.Errorf("stage %s logged no subtask spans", name)
		}
		for _, sp := range spans[name] {
			spName, _ := sp["name"].(string)
			start, end := num(sp["start_ns"]), num(sp["end_ns"])
			found := false
			for _, sl := range all {
				if sl.name == spName && sl.pid == s.pid && sl.tid == st.tid && sl.depth > 0 &&
					sl.start >= st.start && sl.end <= st.end &&
					sl.start <= start && sl.end >= end-usSlack {
					found = true
				}
			}
			if !found {
				t.Errorf("stage %s: subtask %q [%d, %d] of pid %d not in the trace inside the stage's slice", name, spName, start, end, s.pid)
			}
		}
	}

	// The host's side: an async slice per stage and the bytes counters, in
	// the host's (this test's) process.
	host := strconv.Itoa(os.Getpid())
	hostBegin, hostEnd := map[string]string{}, map[string]string{}
	var lastOut int64 = -1
	for _, m := range ms {
		f := strings.Split(m.text, "|")
		if len(f) < 4 || f[1] != host {
			continue
		}
		switch f[0] {
		case "S":
			hostBegin[f[2]] = f[3]
		case "F":
			hostEnd[f[2]] = f[3]
		case "C":
			if f[2] == "pipehost bytes_out" {
				lastOut, _ = strconv.ParseInt(f[3], 10, 64)
			}
		}
	}
	for name := range stages {
		if hostBegin[name] == "" || hostBegin[name] != hostEnd[name] {
			t.Errorf("stage %s: host slice begin cookie %q, end cookie %q", name, hostBegin[name], hostEnd[name])
		}
	}
	if lastOut != bytesOut {
		t.Errorf("host counter \"pipehost bytes_out\" ended at %d, the run log's stages wrote %d bytes", lastOut, bytesOut)
	}
	if t.Failed() {
		var lines []string
		for _, m := range ms {
			lines = append(lines, fmt.Sprintf("%d %d %s", m.tid, m.ts, m.text))
		}
		t.Logf("markers in the trace:\n%s", strings.Join(lines, "\n"))
	}
}

// BenchmarkTraceMarkersOnOff runs the same wide polyglot pipeline (a Go
// source and 60 blurs in each of Go, Rust and C++, every one with a timed
// subtask) with markers off and on, alternated, and reports the median wall
// time of each. scripts/bench-markers.sh runs it while an ftrace instance
// records (see docs/BENCHMARKS.md, "Trace markers").
func BenchmarkTraceMarkersOnOff(b *testing.B) {
	if _, err := tracemark.Find(); err != nil {
		b.Skipf("trace markers need tracefs: %v", err)
	}
	root := testbin.ModuleRoot()
	dir := b.TempDir()
	for _, p := range []string{filepath.Join(testbin.Build(b, "plugins/go"), "ref-go"), filepath.Join(root, "bin", "plugins", "ref-cpp"), filepath.Join(root, "bin", "plugins", "ref-rust")} {
		data, err := os.ReadFile(p)
		if err != nil {
			b.Skipf("reference plugin missing: %v", err)
		}
		os.WriteFile(filepath.Join(dir, filepath.Base(p)), data, 0o755)
	}
	var sb strings.Builder
	sb.WriteString("[grid]\nwidth = 64\nheight = 64\n[stages.src]\nkind = \"ref.noise-go\"\nparams = { octaves = 2, cell = 16 }\n")
	const perLang = 60
	for _, lang := range []string{"go", "rust", "cpp"} {
		for i := 0; i < perLang; i++ {
			fmt.Fprintf(&sb, "[stages.%s%d]\nkind = \"ref.blur-%s\"\ninputs = { in = \"src.out\" }\nparams = { radius = 1 }\n", lang, i, lang)
		}
	}
	cfg := filepath.Join(b.TempDir(), "p.toml")
	os.WriteFile(cfg, []byte(sb.String()), 0o644)
	stages := float64(1 + 3*perLang)
	// cpuNs is the CPU time of this process and its reaped children (the
	// plugin processes, waited for when the session closes): less sensitive
	// than wall time to other work on a busy machine.
	cpuNs := func() float64 {
		var self, kids unix.Rusage
		_ = unix.Getrusage(unix.RUSAGE_SELF, &self)
		_ = unix.Getrusage(unix.RUSAGE_CHILDREN, &kids)
		return float64(self.Utime.Nano() + self.Stime.Nano() + kids.Utime.Nano() + kids.Stime.Nano())
	}
	run := func(markers bool) (wall, cpu float64) {
		cpu0 := cpuNs()
		sess, err := runner.Open(context.Background(), runner.Options{ConfigPath: cfg, PluginDirs: []string{dir},
			OutDir: b.TempDir(), TraceMarkers: markers})
		if err != nil {
			b.Fatal(err)
		}
		res := sess.Run(context.Background())
		sess.Close()
		if err := res.Err(); err != nil {
			b.Fatal(err)
		}
		if markers {
			for _, r := range readLogB(b, sess.Reports.Log) {
				if msg, _ := r["msg"].(string); strings.Contains(msg, "trace markers off") {
					b.Fatal(msg)
				}
			}
		}
		return float64(res.EndNs - res.StartNs), cpuNs() - cpu0
	}
	const rounds = 15
	for i := 0; i < b.N; i++ {
		var off, on, offCPU, onCPU, paired, pairedCPU []float64
		run(false) // warm the page cache and the plugins' first launch
		for r := 0; r < rounds; r++ {
			// Alternate which goes first, so drift in the machine's load
			// does not favour one side.
			var offNs, onNs, offC, onC float64
			if r%2 == 0 {
				offNs, offC = run(false)
				onNs, onC = run(true)
			} else {
				onNs, onC = run(true)
				offNs, offC = run(false)
			}
			off, on = append(off, offNs), append(on, onNs)
			offCPU, onCPU = append(offCPU, offC), append(onCPU, onC)
			paired = append(paired, 100*(onNs-offNs)/offNs)
			pairedCPU = append(pairedCPU, 100*(onC-offC)/offC)
		}
		mOff, mOn := median(off), median(on)
		b.ReportMetric(mOff/1e6, "ms/run-off")
		b.ReportMetric(mOn/1e6, "ms/run-on")
		b.ReportMetric(100*(mOn-mOff)/mOff, "%-wall")
		b.ReportMetric(median(paired), "%-wall-paired")
		cOff, cOn := median(offCPU), median(onCPU)
		b.ReportMetric(cOff/1e6, "cpu-ms/run-off")
		b.ReportMetric(cOn/1e6, "cpu-ms/run-on")
		b.ReportMetric((cOn-cOff)/stages/1e3, "cpu-µs/stage-extra")
		b.ReportMetric(median(pairedCPU), "%-cpu-paired")
	}
}

// readLogB reads the run log's records for a benchmark.
func readLogB(b *testing.B, path string) []record {
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	var out []record
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var r record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			b.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}
