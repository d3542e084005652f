// Command handoff benchmarks handing a float32 grid from a producer plugin
// process to a consumer plugin process three ways, side by side in one run:
// (a) pipehost's zero-copy data plane (a sealed memfd segment), with and
// without prefaulting the segment ahead of the producer; (b) the same bytes
// streamed in chunks over gRPC through the host; (c) an .npy file written
// and read back. Both plugins are real processes launched through the
// plugin manager from testplugins/go/benchxfer. The ways are interleaved
// within each round, and the report is medians as Markdown tables.
//
//	go build -o /tmp/benchxfer ./testplugins/go/benchxfer
//	go run ./bench/handoff -plugin /tmp/benchxfer
//
// scripts/bench-handoff.sh does both.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/pipehost/pipehost/bench/handoff/xfer"
)

// Config is one benchmark run.
type Config struct {
	Plugin string
	Sizes  []int64
	// Rounds per size; 0 means 5.
	Rounds int
	Chunk  int
	Dir    string
	// Big decides sizes above 1 GiB: "auto" runs them only when memory and
	// disk allow, "on" always, "off" never.
	Big string
	// Ways to measure; nil means all.
	Ways     []Way
	Progress io.Writer
	// Pipehost and PluginDir run the pipehost ways (`pipehost run`).
	Pipehost, PluginDir string
}

func main() {
	var cfg Config
	var sizes, chunk string
	flag.StringVar(&cfg.Plugin, "plugin", "", "path of the built testplugins/go/benchxfer plugin (required)")
	flag.StringVar(&cfg.Pipehost, "pipehost", "", "built pipehost command, for the ways run and run-no-cache")
	flag.StringVar(&cfg.PluginDir, "plugin-dir", "", "plugin directory holding only benchxfer, for the ways run and run-no-cache")
	flag.StringVar(&sizes, "sizes", "64MiB,1GiB,4GiB", "grid sizes, comma-separated (multiples of 4 KiB)")
	flag.IntVar(&cfg.Rounds, "rounds", 0, "rounds per size; 0: 5")
	flag.StringVar(&chunk, "chunk", "1MiB", "gRPC chunk size of way (b), and read size of way (c)")
	flag.StringVar(&cfg.Dir, "dir", os.TempDir(), "directory for the .npy files of way (c)")
	flag.StringVar(&cfg.Big, "big", "auto", "sizes above 1 GiB: auto (only if free memory and disk allow), on, off")
	ways := flag.String("ways", "run,run-no-cache,a,b,c", "ways to measure: run (pipehost run, cache on and cold), run-no-cache, a, a-prefault, b, c, slice (the producer's Go slice fill)")
	quiet := flag.Bool("q", false, "no progress lines on stderr")
	flag.Parse()
	if cfg.Plugin == "" {
		fmt.Fprintln(os.Stderr, "handoff: -plugin is required (build it with: go build -o DIR/benchxfer ./testplugins/go/benchxfer)")
		os.Exit(2)
	}
	var err error
	if cfg.Sizes, err = parseSizes(sizes); err == nil {
		var c int64
		c, err = parseSize(chunk)
		cfg.Chunk = int(c)
	}
	if err == nil {
		cfg.Ways, err = parseWays(*ways)
	}
	if err == nil && cfg.Big != "auto" && cfg.Big != "on" && cfg.Big != "off" {
		err = fmt.Errorf("-big %q: want auto, on or off", cfg.Big)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "handoff:", err)
		os.Exit(2)
	}
	if !*quiet {
		cfg.Progress = os.Stderr
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "handoff:", err)
		os.Exit(1)
	}
	if err := res.Markdown(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "handoff:", err)
		os.Exit(1)
	}
}

// allWays is the order of a round; each round starts one further along.
var allWays = []Way{WayRun, WayRunNoCache, WayShm, WayShmPrefault, WayGRPC, WayNPY, WaySlice}

// Run launches the plugins and measures every way at every size.
func Run(ctx context.Context, cfg Config) (*Results, error) {
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	b, err := Open(ctx, cfg.Plugin, cfg.Chunk, cfg.Dir)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	b.pipehost, b.pluginDir = cfg.Pipehost, cfg.PluginDir
	res := &Results{Env: readEnv(cfg), Rounds: map[int64]int{}}
	for _, size := range cfg.Sizes {
		if err := xfer.CheckSize(size); err != nil {
			return nil, err
		}
		if why := tooBig(cfg, size); why != "" {
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s skipped: %s", sizeString(size), why))
			fmt.Fprintf(cfg.Progress, "%s skipped: %s\n", sizeString(size), why)
			continue
		}
		rounds := cfg.Rounds
		if rounds <= 0 {
			rounds = 5
		}
		res.Sizes = append(res.Sizes, size)
		res.Rounds[size] = rounds
		ways := cfg.Ways
		if len(ways) == 0 {
			ways = allWays
		}
		for r := range rounds {
			for i := range ways {
				way := ways[(i+r)%len(ways)]
				s, err := b.Run(ctx, way, size)
				if err != nil {
					return nil, err
				}
				res.Samples = append(res.Samples, s)
				fmt.Fprintf(cfg.Progress, "%-8s round %d/%d  %-26v %s\n", sizeString(size), r+1, rounds, way, progressLine(s))
			}
		}
	}
	res.Env.LoadEnd = loadAvg()
	return res, nil
}

func progressLine(s Sample) string {
	if s.Way == WaySlice {
		return "fill " + ms(s.Fill) + " ms"
	}
	return fmt.Sprintf("hand-off %s ms, first byte %s ms, end to end %s ms, fill %s ms", ms(s.Handoff), ms(s.FirstByte), ms(s.EndToEnd), ms(s.Fill))
}

// tooBig says why a size above 1 GiB is skipped, or "" to run it. Way (c)
// holds the grid three times at once (the producer's slice, the page cache,
// the consumer's slice); 2 GiB more are kept free for everyone else.
func tooBig(cfg Config, size int64) string {
	if size <= 1<<30 || cfg.Big == "on" {
		return ""
	}
	if cfg.Big == "off" {
		return "sizes above 1 GiB are off (-big off)"
	}
	need := 3*size + 2<<30
	avail, err := memAvailable()
	if err != nil {
		return err.Error()
	}
	if avail < need {
		return fmt.Sprintf("%s of memory available, %s needed (-big on forces it)", sizeString(avail), sizeString(need))
	}
	var st unix.Statfs_t
	if err := unix.Statfs(cfg.Dir, &st); err != nil {
		return fmt.Sprintf("checking free space in %s: %v", cfg.Dir, err)
	}
	if free := int64(st.Bavail) * st.Bsize; free < size+1<<30 {
		return fmt.Sprintf("%s free in %s, %s needed for the .npy file (-dir elsewhere, or -big on)", sizeString(free), cfg.Dir, sizeString(size+1<<30))
	}
	return ""
}

// memAvailable is MemAvailable from /proc/meminfo in bytes (what `free`
// calls available).
func memAvailable() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("reading free memory: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return kb * 1024, nil
				}
			}
		}
	}
	return 0, errors.New("reading free memory: no MemAvailable in /proc/meminfo")
}

// wayFlags are the names of the ways on the command line.
var wayFlags = map[string]Way{"run": WayRun, "run-no-cache": WayRunNoCache, "a": WayShm, "a-prefault": WayShmPrefault, "b": WayGRPC, "c": WayNPY, "slice": WaySlice}

func parseWays(s string) ([]Way, error) {
	var out []Way
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		w, ok := wayFlags[f]
		if !ok {
			return nil, fmt.Errorf("-ways: unknown way %q (want run, run-no-cache, a, a-prefault, b, c or slice)", f)
		}
		if !slices.Contains(out, w) {
			out = append(out, w)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("-ways: no way given")
	}
	return out, nil
}

func parseSizes(s string) ([]int64, error) {
	var out []int64
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := parseSize(f)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("-sizes: no size given")
	}
	return out, nil
}

// parseSize reads "64MiB", "1GiB", "512KiB" or a byte count.
func parseSize(s string) (int64, error) {
	v, mult := s, int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive size like 64MiB or 1GiB", s)
	}
	return n * mult, nil
}

// sizeString prints a byte count in the largest binary unit that keeps it
// readable: "64 MiB", "1 GiB", "1.5 GiB".
func sizeString(n int64) string {
	for _, u := range []struct {
		name string
		size int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size {
			v := float64(n) / float64(u.size)
			if v == float64(int64(v)) {
				return fmt.Sprintf("%d %s", int64(v), u.name)
			}
			return fmt.Sprintf("%.1f %s", v, u.name)
		}
	}
	return fmt.Sprintf("%d B", n)
}
