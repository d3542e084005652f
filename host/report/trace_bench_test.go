package report

import (
	"fmt"
	"testing"

	"github.com/pipehost/pipehost/host/config"
	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/runlog"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// BenchmarkTrace1000 builds the trace of a 1,000-stage run, as at the end
// of every `pipehost run`.
func BenchmarkTrace1000(b *testing.B) {
	w, err := runlog.Create(b.TempDir()+"/run.jsonl", runlog.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	c := NewCollector(w)
	res := &engine.Result{}
	for i := range 1000 {
		t := int64(i) * 400_000
		res.Stages = append(res.Stages, &engine.StageResult{Name: fmt.Sprintf("s%d", i), Kind: "probe.sleep",
			Status: engine.StatusOK, Cache: engine.CacheOff, Slot: 0, StartNs: t + 1, EndNs: t + 300_000, Pid: 77, Plugin: "/p/probe",
			Stats: &pb.StageStats{PeakRssBytes: 9 << 20, StartNs: t + 100_000, EndNs: t + 105_000, CpuNs: 5000}})
	}
	p := &plan.Plan{Config: &config.Pipeline{RunID: "r"}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Trace(p, res, 0); err != nil {
			b.Fatal(err)
		}
	}
}
