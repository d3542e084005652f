package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pipehost/pipehost/internal/testbin"
)

// buildPlugin compiles testplugins/go/benchxfer, the plugin the harness
// launches as producer and consumer, alone in its directory.
func buildPlugin(t *testing.T) string {
	t.Helper()
	return build(t, "./testplugins/go/benchxfer", filepath.Join(t.TempDir(), "benchxfer"))
}

func build(t *testing.T, pkg, out string) string {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = testbin.ModuleRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", pkg, err, b)
	}
	return out
}

// TestOneRound runs every way once at 1 MiB through real plugin processes.
// Each case already fails unless the consumer read exactly the producer's
// bytes; this checks that every measurement was taken and that nothing is
// left behind.
func TestOneRound(t *testing.T) {
	plugin := buildPlugin(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := Open(ctx, plugin, 256<<10, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	b.pluginDir = filepath.Dir(plugin)
	b.pipehost = build(t, "./cmd/pipehost", filepath.Join(t.TempDir(), "pipehost"))
	const size = 1 << 20
	res := &Results{Env: readEnv(Config{Chunk: 256 << 10, Dir: dir}), Sizes: []int64{size}, Rounds: map[int64]int{size: 1}}
	for _, way := range allWays {
		s, err := b.Run(ctx, way, size)
		if err != nil {
			t.Fatal(err)
		}
		res.Samples = append(res.Samples, s)
		if s.Way != way || s.Size != size {
			t.Errorf("%v: sample is for %v at %d bytes", way, s.Way, s.Size)
		}
		if s.Fill <= 0 || s.ProducerPeak == 0 || s.HostPeak == 0 {
			t.Errorf("%v: fill %d ns, producer peak %d, host peak %d: want all > 0", way, s.Fill, s.ProducerPeak, s.HostPeak)
		}
		if way == WaySlice {
			continue
		}
		if s.Handoff <= 0 || s.FirstByte <= 0 || s.FullRead < s.FirstByte || s.EndToEnd < s.FullRead-s.FirstByte {
			t.Errorf("%v: hand-off %d, first byte %d, full read %d, end to end %d ns: not a consistent timeline",
				way, s.Handoff, s.FirstByte, s.FullRead, s.EndToEnd)
		}
		if s.ConsumerPeak == 0 {
			t.Errorf("%v: no consumer peak RSS", way)
		}
		switch way {
		case WayRun, WayRunNoCache:
			if s.Wall < s.EndToEnd || s.ConsumerShmem < size {
				t.Errorf("%v: command %d ns, end to end %d ns, consumer shmem %d bytes", way, s.Wall, s.EndToEnd, s.ConsumerShmem)
			}
		case WayShm, WayShmPrefault:
			// Zero-copy: the consumer holds the grid as shared pages.
			if s.ConsumerShmem < size || s.Seal <= 0 || s.Tail <= 0 {
				t.Errorf("%v: consumer shmem %d bytes, seal %d ns, tail %d ns", way, s.ConsumerShmem, s.Seal, s.Tail)
			}
			if n, _ := b.arena.Live(); n != 0 {
				t.Errorf("%v: %d segments still live after the consumer released it", way, n)
			}
			if (way == WayShmPrefault) != (s.Prefault > 0) {
				t.Errorf("%v: prefault time %d ns", way, s.Prefault)
			}
		case WayNPY:
			if s.Write <= 0 {
				t.Errorf("%v: no write time", way)
			}
			if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
				t.Errorf("%v: files left behind: %v", way, left)
			}
		}
	}
	res.Env.LoadEnd = loadAvg()
	var out bytes.Buffer
	if err := res.Markdown(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range append([]string{"| 1 MiB | (a) zero-copy ", "default / --no-cache", "Host peak RSS"}, wayNames()...) {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

func wayNames() []string {
	var n []string
	for _, w := range allWays {
		n = append(n, w.String())
	}
	return n
}

// TestRunRejects checks the harness's own refusals before any plugin work.
func TestRunRejects(t *testing.T) {
	ctx := context.Background()
	if _, err := Open(ctx, "/nonexistent/benchxfer", 1024, t.TempDir()); err == nil || !strings.Contains(err.Error(), "chunk size") {
		t.Errorf("chunk of 1 KiB: err = %v", err)
	}
	if _, err := Open(ctx, filepath.Join(t.TempDir(), "missing"), 1<<20, t.TempDir()); err == nil {
		t.Error("launching a missing plugin succeeded")
	}
}

func TestTableMarkdown(t *testing.T) {
	tb := NewTable("size", "way", "ms", "ratio")
	tb.Add("1 MiB", "(a) zero-copy", "0.11", "53×")
	tb.Add("64 MiB", "(b)", "222", "–")
	var out bytes.Buffer
	tb.Write(&out)
	// Numbers are right-aligned, the rest left-aligned.
	want := strings.Join([]string{
		"| size   | way           |   ms | ratio |",
		"| ------ | ------------- | ---: | ----: |",
		"| 1 MiB  | (a) zero-copy | 0.11 |   53× |",
		"| 64 MiB | (b)           |  222 |     – |",
		"",
	}, "\n")
	if out.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestMedian(t *testing.T) {
	r := &Results{}
	for _, v := range []int64{5, 1, 9} {
		r.Samples = append(r.Samples, Sample{Way: WayShm, Size: 1, Handoff: v}, Sample{Way: WayGRPC, Size: 1, Handoff: 10 * v})
	}
	r.Samples = append(r.Samples, Sample{Way: WayNPY, Size: 1, Handoff: 4}, Sample{Way: WayNPY, Size: 1, Handoff: 8})
	for _, c := range []struct {
		way  Way
		want int64
	}{{WayShm, 5}, {WayGRPC, 50}, {WayNPY, 6}} {
		if got, ok := r.median(c.way, 1, fHandoff); !ok || got != c.want {
			t.Errorf("median of %v = %d, %v; want %d", c.way, got, ok, c.want)
		}
	}
	if _, ok := r.median(WaySlice, 1, fHandoff); ok {
		t.Error("median of no samples is ok")
	}
	if got := r.ratio(WayGRPC, WayShm, 1, fHandoff); got != "10×" {
		t.Errorf("ratio = %q, want 10×", got)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"4096": 4096, "512KiB": 512 << 10, "64MiB": 64 << 20, "4GiB": 4 << 30} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1MiB", "1 GiB", "1GB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
	for n, want := range map[int64]string{1 << 20: "1 MiB", 3 << 29: "1.5 GiB", 100: "100 B"} {
		if got := sizeString(n); got != want {
			t.Errorf("sizeString(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestTooBig(t *testing.T) {
	dir := t.TempDir()
	if why := tooBig(Config{Big: "auto", Dir: dir}, 1<<30); why != "" {
		t.Errorf("1 GiB is skipped: %s", why)
	}
	if why := tooBig(Config{Big: "off", Dir: dir}, 4<<30); why == "" {
		t.Error("-big off runs 4 GiB")
	}
	// No machine this runs on has 3 PiB free.
	if why := tooBig(Config{Big: "auto", Dir: dir}, 1<<50); !strings.Contains(why, "memory available") {
		t.Errorf("1 PiB: %q", why)
	}
	if why := tooBig(Config{Big: "on", Dir: dir}, 1<<50); why != "" {
		t.Errorf("-big on skips: %s", why)
	}
}
