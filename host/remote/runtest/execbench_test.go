package runtest_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/remotetest"
	"github.com/pipehost/pipehost/internal/testbin"
)

// TestRemoteStageBench times what running one stage remotely adds, through
// the engine: noise (ref.noise-go) → blur (ref.blur-go, radius 2), with
// blur run here or as an action on the Buildbarn worker (remote.kinds),
// side by side in the same round, order swapped every other round. The
// cache is off so blur always runs, and every run has a fresh seed so its
// input is new to the CAS (uploaded each time, as for fresh data). The
// stage's time is the engine's (StartNs → EndNs: for the remote stage,
// hashing and uploading its input, Execute, downloading its output into a
// sealed segment). Round 0 warms both paths up (the runner and plugin
// binaries reach the CAS) and is not counted. Run by
// scripts/bench-remote-exec.sh; PIPEHOST_BENCH_REMOTE_STAGE=ROUNDS turns it
// on, PIPEHOST_BENCH_GRIDS=WxH,... sets the grids.
func TestRemoteStageBench(t *testing.T) {
	rounds, _ := strconv.Atoi(os.Getenv("PIPEHOST_BENCH_REMOTE_STAGE"))
	if rounds <= 0 {
		t.Skip("PIPEHOST_BENCH_REMOTE_STAGE=ROUNDS runs this benchmark")
	}
	grids := "512x256,2048x1024"
	if g := os.Getenv("PIPEHOST_BENCH_GRIDS"); g != "" {
		grids = g
	}
	env := remotetest.Servers(t)
	plugins := testbin.Build(t, "plugins/go")
	runnerBin := filepath.Join(testbin.Build(t, "cmd"), "pipehost-stage")
	base := os.TempDir()
	seed := time.Now().UnixNano() % (1 << 40)

	type sample struct{ stage, run, up, exec, down time.Duration }
	once := func(w, h int, remote bool) sample {
		seed++
		dir, err := os.MkdirTemp(base, "ph")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		t.Setenv("TMPDIR", dir)
		t.Setenv("PIPEHOST_PLUGIN_PATH", "")
		body := fmt.Sprintf(`[run]
id = "remote-stage"
seed = %d
[grid]
topology = "sphere"
width = %d
height = %d
[stages.noise]
kind = "ref.noise-go"
params = { octaves = 4, cell = 32 }
[stages.blur]
kind = "ref.blur-go"
inputs = { in = "noise.out" }
params = { radius = 2 }
`, seed, w, h)
		if remote {
			body += remoteTable(env, env.Executor, "error", "ref.blur-go")
		}
		cfg := filepath.Join(dir, "p.toml")
		if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		opts := runner.Options{ConfigPath: cfg, PluginDirs: []string{plugins}, StageRunner: runnerBin,
			OutDir: filepath.Join(dir, "out"), Warn: func(s string) { t.Error(s) }}
		sess, err := runner.Open(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		res := sess.Run(context.Background())
		d := time.Since(start)
		sess.Close()
		if err := res.Err(); err != nil {
			t.Fatal(err)
		}
		r := byName(res)["blur"]
		if (r.Remote != nil) != remote || r.Cache != engine.CacheOff {
			t.Fatalf("blur: remote %+v, cache %s; want remote %v, cache off", r.Remote, r.Cache, remote)
		}
		s := sample{stage: time.Duration(r.EndNs - r.StartNs), run: d}
		if rr := r.Remote; rr != nil {
			s.up, s.exec, s.down = time.Duration(rr.UploadNs), time.Duration(rr.ExecNs), time.Duration(rr.DownloadNs)
		}
		return s
	}
	med := func(ss []sample, f func(sample) time.Duration) time.Duration {
		ds := make([]time.Duration, len(ss))
		for i, s := range ss {
			ds[i] = f(s)
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[len(ds)/2]
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }

	fmt.Printf("One stage (ref.blur-go, radius 2) run here and on the Buildbarn worker, through the engine; median of %d rounds after a warm-up round\n\n", rounds)
	fmt.Println("| grid (f32 in, f32 out) | local stage | remote stage | added per remote stage | of which: upload | Execute | download | local run | remote run |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, g := range strings.Split(grids, ",") {
		var w, h int
		if _, err := fmt.Sscanf(g, "%dx%d", &w, &h); err != nil {
			t.Fatalf("grid %q: want WxH", g)
		}
		var local, rem []sample
		for i := 0; i <= rounds; i++ {
			var l, r sample
			if i%2 == 0 {
				l, r = once(w, h, false), once(w, h, true)
			} else {
				r, l = once(w, h, true), once(w, h, false)
			}
			t.Logf("%s round %d: local %v, remote %v (upload %v, execute %v, download %v)", g, i, l.stage, r.stage, r.up, r.exec, r.down)
			if i > 0 {
				local, rem = append(local, l), append(rem, r)
			}
		}
		stage := func(s sample) time.Duration { return s.stage }
		lm, rm := med(local, stage), med(rem, stage)
		mib := float64(w) * float64(h) * 4 / (1 << 20)
		fmt.Printf("| %d×%d (%.1f MiB) | %s | %s | %s | %s | %s | %s | %s | %s |\n", w, h, mib, ms(lm), ms(rm), ms(rm-lm),
			ms(med(rem, func(s sample) time.Duration { return s.up })), ms(med(rem, func(s sample) time.Duration { return s.exec })),
			ms(med(rem, func(s sample) time.Duration { return s.down })),
			ms(med(local, func(s sample) time.Duration { return s.run })), ms(med(rem, func(s sample) time.Duration { return s.run })))
	}
}
