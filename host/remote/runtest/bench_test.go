package runtest_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/remotetest"
	"github.com/pipehost/pipehost/internal/testbin"
)

// TestRemoteHitBench times a run whose source stage makes a large output
// (ref.noise-go, 16384×16384 f32 = 1 GiB) and whose consumer (dummy.sink,
// refreshed so it always runs) reads it: recomputed without a cache,
// recomputed with a local cache (written before the run ends), and served
// from the remote cache by a host whose local cache is empty (the output
// fetched into a sealed, digest-checked segment for the consumer). The
// three alternate round by round. Run by scripts/bench-remote-hit.sh;
// PIPEHOST_BENCH_REMOTE_HIT=ROUNDS turns it on, PIPEHOST_BENCH_SIDE=N sets
// the grid side.
func TestRemoteHitBench(t *testing.T) {
	rounds, _ := strconv.Atoi(os.Getenv("PIPEHOST_BENCH_REMOTE_HIT"))
	if rounds <= 0 {
		t.Skip("PIPEHOST_BENCH_REMOTE_HIT=ROUNDS runs this benchmark")
	}
	side := 16384
	if s, err := strconv.Atoi(os.Getenv("PIPEHOST_BENCH_SIDE")); err == nil && s > 0 {
		side = s
	}
	env := remotetest.Servers(t)
	plugins := t.TempDir()
	for _, p := range []string{filepath.Join(testbin.Build(t, "plugins/go"), "ref-go"), filepath.Join(testbin.Build(t, "testplugins/go"), "sink")} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(plugins, filepath.Base(p)), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := writeConfig(t, fmt.Sprintf(`[run]
id = "remote-hit"
seed = %d
[grid]
topology = "sphere"
width = %d
height = %d
levels = 1
[stages.noise]
kind = "ref.noise-go"
params = { octaves = 6, cell = 64 }
[stages.sink]
kind = "dummy.sink"
inputs = { in = "noise.out" }
`, time.Now().UnixNano(), side, side))

	base := os.TempDir()
	once := func(remoteCache string, local bool) (time.Duration, *engine.StageResult) {
		dir, err := os.MkdirTemp(base, "ph")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		t.Setenv("TMPDIR", dir)
		t.Setenv("PIPEHOST_PLUGIN_PATH", "")
		opts := runner.Options{ConfigPath: cfg, PluginDirs: []string{plugins}, RemoteCache: remoteCache,
			OutDir: filepath.Join(dir, "out"), Warn: func(s string) { t.Error(s) }}
		if local {
			opts.CacheDir = filepath.Join(dir, "cache")
		}
		opts.Engine.Refresh = map[string]bool{"sink": true}
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
		return d, byName(res)["noise"]
	}
	// Prime the remote cache (not timed).
	if _, r := once(env.Cache, true); r.Cache != engine.CacheMiss {
		t.Fatalf("priming: noise %s", r.Cache)
	}
	var none, local, hit []time.Duration
	for i := 0; i < rounds; i++ {
		order := []int{0, 1, 2}
		if i%2 == 1 {
			order = []int{2, 1, 0}
		}
		for _, k := range order {
			switch k {
			case 0:
				d, r := once("", false)
				if r.Cache != engine.CacheOff {
					t.Fatalf("no cache: noise %s", r.Cache)
				}
				none = append(none, d)
			case 1:
				d, r := once("", true)
				if r.Cache != engine.CacheMiss {
					t.Fatalf("local cache: noise %s", r.Cache)
				}
				local = append(local, d)
			case 2:
				d, r := once(env.Cache, true)
				if r.Cache != engine.CacheHit {
					t.Fatalf("remote: noise %s, want a remote hit", r.Cache)
				}
				hit = append(hit, d)
			}
		}
		t.Logf("round %d: recompute %v, recompute+local store %v, remote hit %v", i, none[i], local[i], hit[i])
	}
	med := func(ds []time.Duration) time.Duration {
		s := append([]time.Duration(nil), ds...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[len(s)/2]
	}
	mib := float64(side) * float64(side) * 4 / (1 << 20)
	fmt.Printf("remote-cache hit of a %.0f MiB output, median of %d rounds:\n", mib, rounds)
	fmt.Printf("  recompute, no cache:                   %v\n", med(none).Round(time.Millisecond))
	fmt.Printf("  recompute, local cache written:        %v\n", med(local).Round(time.Millisecond))
	fmt.Printf("  remote hit, fetched into a sealed seg: %v (%.2fx the recompute without cache)\n",
		med(hit).Round(time.Millisecond), float64(med(hit))/float64(med(none)))
}
