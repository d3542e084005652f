package tracemark

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// Markers go to whatever file Open was given; a regular file shows exactly
// the bytes each write(2) carried (the kernel adds the line break itself).
func TestMarkerFormat(t *testing.T) {
	p := filepath.Join(t.TempDir(), "trace_marker")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Open(p); err != nil {
		t.Fatal(err)
	}
	if On() || Path() != "" {
		t.Fatal("Open alone turned markers on")
	}
	long := make([]byte, 600)
	for i := range long {
		long[i] = 'x'
	}
	Begin("erode|rivers\nnow")
	End()
	AsyncBegin("tile 3", 1<<32|7)
	AsyncEnd("tile 3", 1<<32|7)
	Counter("bytes_in", 1<<40)
	Begin(string(long))
	pid := strconv.Itoa(os.Getpid())
	want := "B|" + pid + "|erode_rivers_now" +
		"E|" + pid +
		"S|" + pid + "|tile 3|4294967303" +
		"F|" + pid + "|tile 3|4294967303" +
		"C|" + pid + "|bytes_in|1099511627776" +
		"B|" + pid + "|" + string(long[:maxName])
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("markers written:\n%q\nwant\n%q", got, want)
	}
	if err := Open(filepath.Join(t.TempDir(), "other")); err != nil {
		t.Fatalf("a second Open must return the first one's result: %v", err)
	}
}

func TestFindReadsMounts(t *testing.T) {
	dir := t.TempDir()
	mounts := filepath.Join(dir, "mounts")
	write := func(body string) {
		if err := os.WriteFile(mounts, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("proc /proc proc rw 0 0\nnodev /mnt/trace\\040fs tracefs rw 0 0\n")
	if got, err := findIn(mounts); err != nil || got != "/mnt/trace fs/trace_marker" {
		t.Fatalf("tracefs mount: %q, %v", got, err)
	}
	// Only debugfs: its tracing directory, when it has a trace_marker.
	debug := filepath.Join(dir, "debug")
	if err := os.MkdirAll(filepath.Join(debug, "tracing"), 0o755); err != nil {
		t.Fatal(err)
	}
	write("debugfs " + debug + " debugfs rw 0 0\n")
	if _, err := findIn(mounts); err == nil {
		t.Fatal("a debugfs without tracing/trace_marker was accepted")
	}
	if err := os.WriteFile(filepath.Join(debug, "tracing", "trace_marker"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := findIn(mounts); err != nil || got != filepath.Join(debug, "tracing", "trace_marker") {
		t.Fatalf("debugfs mount: %q, %v", got, err)
	}
	write("proc /proc proc rw 0 0\n")
	if _, err := findIn(mounts); err == nil {
		t.Fatal("found a tracefs in a mount table without one")
	}
}

// BenchmarkMarker is the cost of one marker: a begin/end pair is two.
// PIPEHOST_BENCH_TRACE_MARKER names the trace_marker to write (scripts/
// bench-markers.sh points it at a recording instance); "off" is the cost
// in a run without markers: the flag test.
func BenchmarkMarker(b *testing.B) {
	b.Run("off", func(b *testing.B) {
		n := 0
		for i := 0; i < b.N; i++ {
			if On() {
				Begin("erode")
				n++
			}
		}
		if n != 0 {
			b.Fatal("markers are on")
		}
	})
	p := os.Getenv("PIPEHOST_BENCH_TRACE_MARKER")
	if p == "" {
		b.Skip("PIPEHOST_BENCH_TRACE_MARKER is not set")
	}
	if err := Open(p); err != nil {
		b.Fatal(err)
	}
	b.Run("begin", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			Begin("erode")
		}
	})
	b.Run("end", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			End()
		}
	})
	b.Run("counter", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			Counter("pipehost bytes_in", int64(i))
		}
	})
}
