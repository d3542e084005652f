package runner_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/testbin"
)

// soakFaults is the cycle of faults injected beside a healthy chain, one per
// run ("" is a clean run). ok says whether the fault stage itself succeeds.
var soakFaults = []struct {
	stage string
	ok    bool
}{
	{"", true},
	{"[stages.f]\nkind = \"bad-go.panic\"\n", false},
	{"[stages.f]\nkind = \"bad-go.exit\"\n", false},
	{"[stages.f]\nkind = \"bad-go.segv\"\n", false},
	{"[stages.f]\nkind = \"bad-go.hang\"\ntimeout = \"300ms\"\n", false},
	{"[stages.f]\nkind = \"bad-go.keepmap\"\n", false},
	{"[stages.f]\nkind = \"bad-go.halfwrite\"\n", false},
	{"[stages.f]\nkind = \"bad-go.forkchild\"\n", false},
	{"[stages.f]\nkind = \"bad-go.flood\"\nparams = { lines = 3000 }\n", false},
	{"[stages.f]\nkind = \"bad-go.badlog\"\n", true},
	{"[stages.f]\nkind = \"bad-go.writeinput\"\ninputs = { in = \"source.out\" }\n", false},
	{"[stages.f]\nkind = \"bad-go.bigblob\"\nparams = { bytes = 4194304 }\n", false},
}

// soakCounts are the resources a run could leak.
type soakCounts struct {
	FDs, Procs, DevShm, Memfds, Sockets int
	CacheBytes                          int64 // every file but the entry log
	CacheEntries                        int
	logBytes                            int64 // not compared: see TestSoak
}

func (c soakCounts) String() string {
	return fmt.Sprintf("fds %d, processes %d, /dev/shm %d, memfds %d, sockets %d, cache %d bytes and %d entries (entry log %d bytes)",
		c.FDs, c.Procs, c.DevShm, c.Memfds, c.Sockets, c.CacheBytes, c.CacheEntries, c.logBytes)
}

// countSoak counts the host's fds, the processes in its tree (plugins and
// their children), /dev/shm entries, memfds held by the host's tree, socket
// files under tmp, the bytes under the cache directory and its entries.
func countSoak(t *testing.T, tmp, cacheDir string) soakCounts {
	t.Helper()
	time.Sleep(50 * time.Millisecond) // let finished goroutines close what they hold
	var c soakCounts
	fds, _ := os.ReadDir("/proc/self/fd")
	c.FDs = len(fds)
	tree := processTree(os.Getpid())
	c.Procs = len(tree) - 1
	for _, pid := range tree {
		links, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
		for _, l := range links {
			if target, err := os.Readlink(l); err == nil && strings.HasPrefix(target, "/memfd:") {
				c.Memfds++
			}
		}
	}
	shm, _ := os.ReadDir("/dev/shm")
	c.DevShm = len(shm)
	filepath.WalkDir(tmp, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type()&os.ModeSocket != 0 {
			c.Sockets++
		}
		return nil
	})
	filepath.WalkDir(cacheDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil && d.Name() == "entries.log" {
				c.logBytes = info.Size()
			} else if err == nil {
				c.CacheBytes += info.Size()
			}
		}
		return nil
	})
	c.CacheEntries = len(cacheEntries(t, cacheDir))
	return c
}

// processTree lists root and every process descending from it.
func processTree(root int) []int {
	children := map[int][]int{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, s := range stats {
		b, err := os.ReadFile(s)
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces and parentheses.
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		f := strings.Fields(rest)
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(s)))
		if len(f) > 1 {
			ppid, _ := strconv.Atoi(f[1])
			children[ppid] = append(children[ppid], pid)
		}
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// TestSoak runs a small cached pipeline PIPEHOST_SOAK times (or for
// PIPEHOST_SOAK_TIME, default 10m, whichever ends first) with a fault from
// soakFaults mixed into every run but the clean ones, and checks that fds,
// processes, /dev/shm entries, memfds, socket files and cache bytes are the
// same at the end as after a warm-up round. `make soak` runs 1,000; `make
// test` runs 30 (both rounded up to whole rounds of the fault cycle).
// PIPEHOST_SOAK_REPORT names a file for the figures.
func TestSoak(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("PIPEHOST_SOAK"))
	if n <= 0 {
		t.Skip("set PIPEHOST_SOAK=N to soak (make soak, make test)")
	}
	limit := 10 * time.Minute
	if s := os.Getenv("PIPEHOST_SOAK_TIME"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		limit = d
	}
	tmp := isolate(t)
	plugins := testbin.Copy(t, testbin.Build(t, "testplugins/go"), "source", "transform", "sink", "misbehave")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	out := filepath.Join(t.TempDir(), "out")
	body := func(i int) string {
		return grid + fmt.Sprintf(`
[stages.source]
kind = "dummy.source"
params = { value = %d.0 }
[stages.scale]
kind = "dummy.scale"
inputs = { in = "source.out" }
save = { out = "npz" }
[stages.sink]
kind = "dummy.sink"
inputs = { in = "scale.out" }
`, i%3) + soakFaults[i%len(soakFaults)].stage
	}
	runOnce := func(i int) {
		cfg := writeConfig(t, "p.toml", body(i))
		sess, err := runner.Open(context.Background(), runner.Options{ConfigPath: cfg, PluginDirs: []string{plugins},
			CacheDir: cacheDir, OutDir: out, MemBudget: 1 << 20, Engine: engine.Options{KeepGoing: true}})
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		res := sess.Run(ctx)
		cancel()
		sess.Close()
		if live, bytes := sess.Arena.Live(); live != 0 || bytes != 0 {
			t.Fatalf("run %d: ledger holds %d segments, %d bytes", i, live, bytes)
		}
		s := statuses(res)
		for _, name := range []string{"source", "scale", "sink"} {
			if s[name] != engine.StatusOK {
				t.Fatalf("run %d: healthy stage %s is %s (%v)", i, name, s[name], res.Err())
			}
		}
		fault := soakFaults[i%len(soakFaults)]
		if fault.stage != "" && (s["f"] == engine.StatusOK) != fault.ok {
			t.Fatalf("run %d (%s): fault stage is %s", i, strings.TrimSpace(fault.stage), s["f"])
		}
		if len(sess.RunErrors) > 0 {
			t.Fatalf("run %d: %v", i, sess.RunErrors)
		}
		readLog(t, sess.Reports.Log)
	}
	// Warm-up: one round of every fault with every source value, so the
	// cache holds all it ever will.
	start := time.Now()
	warm := len(soakFaults) * 3
	for i := 0; i < warm; i++ {
		runOnce(i)
	}
	before := countSoak(t, tmp, cacheDir)
	done, injected := 0, 0
	// Whole rounds only: the cache's last-run records depend on which fault
	// ran last, so the counts are compared at the same point of the cycle.
	for (done < n && time.Since(start) < limit) || done%warm != 0 {
		runOnce(warm + done)
		if soakFaults[(warm+done)%len(soakFaults)].stage != "" {
			injected++
		}
		done++
	}
	took := time.Since(start)
	after := countSoak(t, tmp, cacheDir)
	summary := fmt.Sprintf("%d runs after a %d-run warm-up in %v (%d faults injected)\nafter warm-up: %s\nat the end:    %s\n",
		done, warm, took.Round(time.Second), injected, before, after)
	t.Log(summary)
	if p := os.Getenv("PIPEHOST_SOAK_REPORT"); p != "" {
		os.WriteFile(p, []byte(summary), 0o644)
	}
	// The entry log grows by superseded records (each run's last uses, the
	// entries of stages that failed and were recomputed) until the process
	// that closes the cache last rewrites it, once they pass 1 MiB and half
	// the file (docs/cache.md): bounded, not constant.
	if after.logBytes > 2<<20 {
		t.Errorf("the entry log grew to %d bytes; compaction should keep it near 1 MiB", after.logBytes)
	}
	before.logBytes, after.logBytes = 0, 0
	if after != before {
		t.Errorf("resources changed over the soak:\nbefore %s\nafter  %s", before, after)
	}
	assertNothingLeft(t, plugins, tmp)
}
