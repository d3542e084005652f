package runner_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/report"
	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/testbin"
)

// benchRun runs a config once through real plugins and returns the engine's
// wall time (first admission to last stage done; plugin launch and the
// reports written afterwards are not in it) and the result.
func benchRun(b *testing.B, body string, opts runner.Options) (int64, *runner.Session, *engine.Result) {
	b.Helper()
	dir := b.TempDir()
	cfg := filepath.Join(dir, "p.toml")
	os.WriteFile(cfg, []byte(body), 0o644)
	opts.ConfigPath = cfg
	opts.PluginDirs = []string{testbin.Copy(b, testbin.Build(b, "testplugins/go"), "probe", "source", "sink", "transform")}
	sess, err := runner.Open(context.Background(), opts)
	if err != nil {
		b.Fatal(err)
	}
	defer sess.Close()
	res := sess.Run(context.Background())
	wall := res.EndNs - res.StartNs
	if err := res.Err(); err != nil {
		b.Fatal(err)
	}
	return wall, sess, res
}

func noopDAG(n int, chain bool) string {
	var sb strings.Builder
	sb.WriteString("[grid]\nwidth = 8\nheight = 8\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&sb, "[stages.s%d]\nkind = \"probe.sleep\"\nparams = { ms = 0 }\n", i)
		if chain && i > 0 {
			fmt.Fprintf(&sb, "inputs = { in = \"s%d.out\" }\n", i-1)
		}
	}
	return sb.String()
}

// BenchmarkPerStageOverhead runs no-op stages (probe.sleep with ms = 0,
// one 256-byte grid output each) through a real plugin process; ms/stage
// is the engine's wall time over the stages: scheduling, segment
// allocation, fd passing, the Run RPC, sealing and release, and with the
// cache on (a fresh directory each run) the key, lookup, digest and store.
// scripts/bench-stages.sh measures the whole command.
func BenchmarkPerStageOverhead(b *testing.B) {
	for _, n := range []int{1000} {
		for _, shape := range []string{"chain", "wide"} {
			for _, cached := range []bool{false, true} {
				name := fmt.Sprintf("%s-%d/cache-off", shape, n)
				if cached {
					name = fmt.Sprintf("%s-%d/cache-cold", shape, n)
				}
				b.Run(name, func(b *testing.B) {
					body := noopDAG(n, shape == "chain")
					var total int64
					for i := 0; i < b.N; i++ {
						var opts runner.Options
						if cached {
							opts.CacheDir = filepath.Join(b.TempDir(), "cache")
						}
						wall, _, _ := benchRun(b, body, opts)
						total += wall
					}
					b.ReportMetric(float64(total)/float64(b.N)/float64(n)/1e6, "ms/stage")
				})
			}
		}
	}
}

// BenchmarkFrameworkOverhead runs 12 stages of ~250 ms of CPU work each, as
// two independent chains of six on the two cores, and reports wall time
// minus the critical path's stage work as a share of wall time, with the
// cache off and on (a fresh cache directory each run: every stage misses,
// is digested and stored). Metrics are medians over b.N runs of each.
func BenchmarkFrameworkOverhead(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("[grid]\nwidth = 256\nheight = 256\n")
	for c := 0; c < 2; c++ {
		for i := 0; i < 6; i++ {
			fmt.Fprintf(&sb, "[stages.c%d_%d]\nkind = \"probe.work\"\nparams = { ms = 250 }\n", c, i)
			if i > 0 {
				fmt.Fprintf(&sb, "inputs = { in = \"c%d_%d.out\" }\n", c, i-1)
			}
		}
	}
	// The two modes alternate, in turn first, so load affects both alike.
	var over, share [2][]float64
	for i := 0; i < b.N; i++ {
		for j := range 2 {
			cached := (i+j)%2 == 1
			opts := runner.Options{Engine: engine.Options{Jobs: 2}}
			if cached {
				opts.CacheDir = filepath.Join(b.TempDir(), "cache")
			}
			w, sess, res := benchRun(b, sb.String(), opts)
			for _, r := range res.Stages {
				if cached && r.Cache != engine.CacheMiss {
					b.Fatalf("%s: cache %s, want a miss", r.Name, r.Cache)
				}
			}
			_, crit := report.CriticalPath(sess.Plan, res)
			k := 0
			if cached {
				k = 1
			}
			over[k] = append(over[k], float64(w-crit)/1e6)
			share[k] = append(share[k], 100*float64(w-crit)/float64(w))
		}
	}
	for k, name := range []string{"off", "cold"} {
		b.ReportMetric(median(share[k]), "%overhead-cache-"+name)
		b.ReportMetric(median(over[k]), "ms-overhead-cache-"+name)
	}
}

// median of v (v is reordered).
func median(v []float64) float64 {
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// BenchmarkCachedRerun compares a cold run producing 1 GiB of grid output
// with the cached rerun of the same config.
func BenchmarkCachedRerun(b *testing.B) {
	body := `
[grid]
width = 16384
height = 16384
[stages.source]
kind = "dummy.source"
[stages.sink]
kind = "dummy.sink"
inputs = { in = "source.out" }
`
	var cold, warm float64
	for i := 0; i < b.N; i++ {
		cache := filepath.Join(b.TempDir(), "cache")
		w1, _, _ := benchRun(b, body, runner.Options{CacheDir: cache})
		w2, _, res := benchRun(b, body, runner.Options{CacheDir: cache})
		for _, r := range res.Stages {
			if r.Cache != engine.CacheHit {
				b.Fatalf("rerun: %s was a %s", r.Name, r.Cache)
			}
		}
		cold += float64(w1)
		warm += float64(w2)
	}
	b.ReportMetric(cold/float64(b.N)/1e6, "ms-cold")
	b.ReportMetric(warm/float64(b.N)/1e6, "ms-cached")
	b.ReportMetric(100*warm/cold, "%cached/cold")
}

// BenchmarkPrefault runs a chain of three 512 MiB float32 stages with and
// without allocating and fallocating each stage's output while its
// producer runs, and reports the engine's wall time for each.
func BenchmarkPrefault(b *testing.B) {
	body := `
[grid]
width = 16384
height = 8192
[stages.a]
kind = "dummy.source"
[stages.b]
kind = "dummy.scale"
inputs = { in = "a.out" }
[stages.c]
kind = "dummy.scale"
inputs = { in = "b.out" }
`
	// Alternate the two settings so both see the same machine load.
	var on, off float64
	for i := 0; i < b.N; i++ {
		w, _, _ := benchRun(b, body, runner.Options{})
		on += float64(w)
		w, _, _ = benchRun(b, body, runner.Options{Engine: engine.Options{NoPrefault: true}})
		off += float64(w)
	}
	b.ReportMetric(on/float64(b.N)/1e6, "ms-prefault")
	b.ReportMetric(off/float64(b.N)/1e6, "ms-no-prefault")
}
