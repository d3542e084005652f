package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pipehost/pipehost/internal/testbin"
)

func TestMain(m *testing.M) { testbin.Main(m) }

// cli runs the real pipehost binary.
func cli(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	bin := filepath.Join(testbin.Build(t, "cmd"), "pipehost")
	cmd := exec.Command(bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+t.TempDir(), "PIPEHOST_PLUGIN_PATH=")
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func plugins(t *testing.T) string { return testbin.Build(t, "testplugins/go") }

func writeCfg(t *testing.T, body string) string {
	p := filepath.Join(t.TempDir(), "p.toml")
	os.WriteFile(p, []byte(body), 0o644)
	return p
}

const good = `
[grid]
width = 32
height = 16
[stages.a]
kind = "dummy.source"
[stages.b]
kind = "dummy.sink"
inputs = { in = "a.out" }
`

func TestExitStatuses(t *testing.T) {
	pd := plugins(t)
	if _, _, code := cli(t, "run", writeCfg(t, good), "--plugin-dir", pd); code != 0 {
		t.Errorf("good run: exit %d", code)
	}
	if _, errs, code := cli(t, "run", writeCfg(t, good+"bogus = 1\n"), "--plugin-dir", pd); code != 2 || !strings.Contains(errs, "unknown key") {
		t.Errorf("bad config: exit %d, %s", code, errs)
	}
	failing := strings.Replace(good, `kind = "dummy.sink"`, `kind = "bad-go.writeinput"`, 1)
	if _, errs, code := cli(t, "run", writeCfg(t, failing), "--plugin-dir", pd); code != 1 || !strings.Contains(errs, "stage b (bad-go.writeinput") {
		t.Errorf("failing stage: exit %d, %s", code, errs)
	}
	if _, _, code := cli(t, "frobnicate"); code != 2 {
		t.Errorf("unknown command: exit %d", code)
	}
	if _, _, code := cli(t, "run"); code != 2 {
		t.Errorf("missing config: exit %d", code)
	}
	if out, _, code := cli(t, "run", "--help"); code != 0 && !strings.Contains(out, "--jobs") {
		t.Errorf("run --help: exit %d", code)
	}
}

func TestPluginsListsKindsAndPorts(t *testing.T) {
	out, errs, code := cli(t, "plugins", "--plugin-dir", plugins(t))
	if code != 0 {
		t.Fatal(errs)
	}
	for _, want := range []string{"dummy.source", "out:grid<f32>", "dummy.scale", "in:grid<f32>", "dummy.offset", "delta"} {
		if !strings.Contains(out, want) {
			t.Errorf("plugins output lacks %q:\n%s", want, out)
		}
	}
	out, _, _ = cli(t, "plugins", "--json", "--plugin-dir", plugins(t))
	if !strings.Contains(out, `"kind": "dummy.source"`) || !strings.Contains(out, `"sha256"`) {
		t.Errorf("plugins --json:\n%s", out)
	}
}

func TestGraph(t *testing.T) {
	out, _, code := cli(t, "graph", writeCfg(t, good), "--plugin-dir", plugins(t))
	if code != 0 || !strings.Contains(out, `"a" -> "b"`) {
		t.Errorf("dot: %d %s", code, out)
	}
	out, _, _ = cli(t, "graph", writeCfg(t, good), "--format", "mermaid", "--plugin-dir", plugins(t))
	if !strings.Contains(out, "flowchart LR") || !strings.Contains(out, "s_a -->|out → in| s_b") {
		t.Errorf("mermaid: %s", out)
	}
}

// SIGINT mid-run stops the run cleanly: exit 1, no plugin left behind.
func TestSIGINTStopsCleanly(t *testing.T) {
	pd := plugins(t)
	bin := filepath.Join(testbin.Build(t, "cmd"), "pipehost")
	cfg := writeCfg(t, `
[grid]
width = 32
height = 16
[stages.slow]
kind = "probe.sleep"
params = { ms = 20000 }
[stages.after]
kind = "probe.sleep"
inputs = { in = "slow.out" }
`)
	out := t.TempDir()
	cmd := exec.Command(bin, "run", cfg, "--plugin-dir", pd, "--no-cache", "--out", out)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Interrupt once the slow stage is running (the run log says so), not
	// while plugins are still starting, however busy the machine is.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		logs, _ := filepath.Glob(filepath.Join(out, "logs", "run_*.jsonl"))
		if len(logs) == 1 {
			if b, _ := os.ReadFile(logs[0]); strings.Contains(string(b), `"type":"stage_start"`) {
				break
			}
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("the slow stage never started")
		}
	}
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 1 {
			t.Errorf("exit %v, want status 1; stderr:\n%s", err, errb.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("pipehost did not stop within 10 s of SIGINT")
	}
	if !strings.Contains(errb.String(), "interrupted by interrupt") {
		t.Errorf("stderr does not say why the run stopped:\n%s", errb.String())
	}
	// The run log is complete: valid JSON Lines ending with run_end.
	logs, _ := filepath.Glob(filepath.Join(out, "logs", "run_*.jsonl"))
	if len(logs) != 1 {
		t.Fatalf("run logs: %v", logs)
	}
	data, _ := os.ReadFile(logs[0])
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	last := lines[len(lines)-1]
	if !strings.Contains(last, `"type":"run_end"`) || !strings.Contains(last, `"status":"stopped (interrupted by interrupt)"`) {
		t.Errorf("last run log line: %s", last)
	}
	for i, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Errorf("run log line %d is not JSON: %s", i+1, l)
		}
	}
	if sum, err := os.ReadFile(filepath.Join(out, "summary.md")); err != nil || !strings.Contains(string(sum), "stopped") {
		t.Errorf("summary.md after SIGINT: %v", err)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range procs {
		if exe, _ := os.Readlink(p); strings.HasPrefix(exe, pd+"/") {
			t.Errorf("plugin still running: %s", exe)
		}
	}
}

// `plugins` describes every plugin and fills the plugin catalog; a later
// run, even with --no-cache, plans from it and launches only the two
// plugins it uses, and writes no stage-cache entry.
func TestNoCacheRunUsesPluginCatalog(t *testing.T) {
	pd := plugins(t)
	cache := t.TempDir()
	out, errOut, code := cli(t, "plugins", "--plugin-dir", pd, "--cache-dir", cache, "--json")
	if code != 0 {
		t.Fatalf("plugins: exit %d: %s", code, errOut)
	}
	var listed []struct {
		Path   string `json:"path"`
		Digest string `json:"sha256"`
	}
	if err := json.Unmarshal([]byte(out), &listed); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(pd)
	if len(listed) != len(entries) {
		t.Fatalf("listed %d plugins, %d installed", len(listed), len(entries))
	}
	for _, p := range listed {
		if _, err := os.Stat(filepath.Join(cache, "v1", "plugins", "desc", p.Digest+".json")); err != nil {
			t.Errorf("%s: no catalog entry: %v", p.Path, err)
		}
	}
	dir := t.TempDir()
	if _, errOut, code := cli(t, "run", writeCfg(t, good), "--plugin-dir", pd, "--cache-dir", cache, "--no-cache", "--out", dir, "--quiet"); code != 0 {
		t.Fatalf("run: exit %d: %s", code, errOut)
	}
	logs, _ := filepath.Glob(filepath.Join(dir, "logs", "run_*.jsonl"))
	if len(logs) != 1 {
		t.Fatalf("run logs: %v", logs)
	}
	data, _ := os.ReadFile(logs[0])
	var setup struct {
		FromCatalog int      `json:"from_catalog"`
		Described   []string `json:"described"`
		Started     []string `json:"started"`
	}
	for _, line := range strings.Split(string(data), "\n") {
		var rec struct {
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Type == "plugin_setup" {
			json.Unmarshal(rec.Data, &setup)
		}
	}
	if setup.FromCatalog != len(entries) || len(setup.Described) != 0 || len(setup.Started) != 2 {
		t.Errorf("plugin_setup: %+v, want all %d from the catalog and 2 started", setup, len(entries))
	}
	if st, err := os.Stat(filepath.Join(cache, "v1", "entries.log")); err == nil {
		t.Errorf("--no-cache opened the stage cache (entries.log, %d bytes)", st.Size())
	}
}
