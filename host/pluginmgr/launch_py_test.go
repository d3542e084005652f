package pluginmgr_test

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/pipehost/pipehost/host/pluginmgr"
	"github.com/pipehost/pipehost/internal/clock"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// BenchmarkLaunchPython measures launch → first Describe reply for the
// Python reference plugin (bin/plugins/ref-py, a launcher written by make
// build): interpreter start, gRPC and the generated protocol code (numpy
// loads after the reply, on its own thread). With PIPEHOST_BENCH_PY_BASELINE
// naming another launcher of the same plugin (scripts/bench-python.sh
// writes one for the SDK before its start-up work), that one is measured too.
func BenchmarkLaunchPython(b *testing.B) {
	b.Run("ref-py", func(b *testing.B) { benchLaunch(b, nativeBinary(b, "py", "plugins/ref-py"), "python") })
	if base := os.Getenv("PIPEHOST_BENCH_PY_BASELINE"); base != "" {
		b.Run("baseline", func(b *testing.B) { benchLaunch(b, base, "python") })
	}
}

// BenchmarkLaunchPythonFirstRun measures what a stage waits for when its
// plugin is launched just for it: launch → the first Run of a no-op stage
// (probe-py.noop in bin/testplugins/misbehave-py) has ended, numpy
// included. PIPEHOST_BENCH_PY_BASELINE_RUN names the same plugin under an
// earlier SDK, measured alongside.
func BenchmarkLaunchPythonFirstRun(b *testing.B) {
	b.Run("misbehave-py", func(b *testing.B) { benchFirstRun(b, nativeBinary(b, "py", "testplugins/misbehave-py")) })
	if base := os.Getenv("PIPEHOST_BENCH_PY_BASELINE_RUN"); base != "" {
		b.Run("baseline", func(b *testing.B) { benchFirstRun(b, base) })
	}
}

func benchFirstRun(b *testing.B, path string) {
	var total int64
	launches(b, path, func(p *pluginmgr.Plugin, start int64) {
		stream, err := p.Client.Run(context.Background(), &pb.RunRequest{RunId: "bench", Stage: "s", Kind: "probe-py.noop"})
		if err != nil {
			b.Fatal(err)
		}
		result := false
		for {
			ev, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			result = result || ev.GetResult() != nil
		}
		if !result {
			b.Fatal("the run ended without a result")
		}
		total += clock.Now() - start
	})
	b.ReportMetric(float64(total)/float64(b.N)/1e6, "ms-to-first-run")
}

// A launcher pauses the garbage collector while the interpreter imports;
// serve() must have frozen the start-up's objects and resumed collection
// before any stage runs.
func TestPythonLauncherResumesGC(t *testing.T) {
	path := nativeBinary(t, "py", "testplugins/misbehave-py")
	t.Setenv("TMPDIR", t.TempDir())
	m, err := pluginmgr.New(pluginmgr.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	p, err := m.Launch(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := p.Run(context.Background(), &pb.RunRequest{RunId: "gc", Stage: "s", Kind: "probe-py.gc"})
	if err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			t.Fatal("the run ended without a result")
		}
		if err != nil {
			t.Fatal(err)
		}
		if ev.GetResult() != nil {
			return
		}
	}
}
