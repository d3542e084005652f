// Package report records a run for the people who operate it: every stage
// and subtask goes to the JSON Lines run log as it happens, and at the end
// the collected timeline becomes summary.md (tables, critical path, memory,
// failures) and trace.json (Chrome Trace Event format, opens in Perfetto).
package report

import (
	"sort"
	"strings"
	"sync"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/runlog"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// Collector is an engine.Observer that logs every stage event and keeps
// what the summary and the trace need.
type Collector struct {
	log *runlog.Writer

	mu       sync.Mutex
	spans    map[string][]*pb.Span // stage → spans
	logs     map[string][]string   // stage → last log lines (for failures)
	progress map[string]float64
	running  map[string]int64 // stage → start
	results  map[string]*engine.StageResult
}

// NewCollector logs to w (which may be nil: then only the summary and
// trace are produced).
func NewCollector(w *runlog.Writer) *Collector {
	return &Collector{log: w, spans: map[string][]*pb.Span{}, logs: map[string][]string{},
		progress: map[string]float64{}, running: map[string]int64{}, results: map[string]*engine.StageResult{}}
}

func (c *Collector) emit(e runlog.Event) {
	if c.log != nil {
		c.log.Log(e)
	}
}

// StageStart implements engine.Observer.
func (c *Collector) StageStart(n *plan.Node, r *engine.StageResult) {
	c.mu.Lock()
	c.running[n.Name] = r.StartNs
	c.mu.Unlock()
	// Members in key order, as for every record's data.
	data := &runlog.Object{}
	data.Int("bytes_in", r.BytesIn)
	data.String("cache", string(r.Cache))
	if r.Remote != nil {
		data.String("executor", r.Remote.Executor)
	}
	data.String("kind", n.Kind)
	data.String("miss_reason", r.MissReason)
	data.Int("pid", int64(r.Pid))
	data.String("plugin", r.Plugin)
	data.Int("slot", int64(r.Slot))
	if r.Remote != nil {
		data.String("where", "remote")
	}
	c.emit(runlog.Event{Type: "stage_start", TimeNs: r.StartNs, Stage: n.Name, Data: data})
}

// StageEvent implements engine.Observer.
func (c *Collector) StageEvent(n *plan.Node, ev *pb.RunEvent) {
	switch x := ev.GetEvent().(type) {
	case *pb.RunEvent_Span:
		s := x.Span
		c.mu.Lock()
		c.spans[n.Name] = append(c.spans[n.Name], s)
		c.mu.Unlock()
		c.emit(runlog.Event{Type: "span", TimeNs: s.GetEndNs(), Stage: n.Name, Name: s.GetName(), ID: s.GetId(), Parent: s.GetParentId(), Start: s.GetStartNs(), End: s.GetEndNs()})
	case *pb.RunEvent_Progress:
		c.mu.Lock()
		c.progress[n.Name] = x.Progress.GetFraction()
		c.mu.Unlock()
		c.emit(runlog.Event{Type: "progress", Stage: n.Name, Value: x.Progress.GetFraction(), Msg: x.Progress.GetMessage()})
	case *pb.RunEvent_Log:
		l := x.Log
		level := strings.ToLower(strings.TrimPrefix(l.GetLevel().String(), "LOG_LEVEL_"))
		c.mu.Lock()
		ls := append(c.logs[n.Name], level+": "+l.GetMessage())
		if len(ls) > 20 {
			ls = ls[len(ls)-20:]
		}
		c.logs[n.Name] = ls
		c.mu.Unlock()
		c.emit(runlog.Event{Type: "log", TimeNs: l.GetTimeNs(), Stage: n.Name, Level: level, Msg: l.GetMessage()})
	}
}

// StageEnd implements engine.Observer.
func (c *Collector) StageEnd(n *plan.Node, r *engine.StageResult) {
	c.mu.Lock()
	delete(c.running, n.Name)
	c.results[n.Name] = r
	c.mu.Unlock()
	// Members in key order, as for every record's data.
	rr, st := r.Remote, r.Stats
	data := &runlog.Object{}
	if rr != nil {
		data.String("action_digest", rr.Action)
	}
	data.Int("bytes_in", r.BytesIn)
	data.Int("bytes_out", r.BytesOut)
	data.String("cache", string(r.Cache))
	if r.Key != "" {
		data.String("cache_key", r.Key)
	}
	if st != nil {
		data.Uint("cpu_ns", st.GetCpuNs())
	}
	data.Int("dur_ns", r.EndNs-r.StartNs)
	data.Int("end_ns", r.EndNs)
	if r.Err != nil {
		data.String("error", r.Err.Error())
	}
	if rr != nil {
		data.String("executor", rr.Executor)
	}
	data.String("kind", n.Kind)
	if len(r.Metrics) > 0 {
		data.Floats("metrics", r.Metrics)
	}
	if r.MissReason != "" {
		data.String("miss_reason", r.MissReason)
	}
	if r.Note != "" {
		data.String("note", r.Note)
	}
	if len(r.Outputs) > 0 {
		outs := &runlog.Object{}
		for _, port := range sortedPorts(r.Outputs) {
			o := r.Outputs[port]
			rec := &runlog.Object{}
			size := o.Digest.Size
			if o.Entry != nil {
				rec.Uint("segment", o.Entry.ID)
				size = o.Entry.Size
			}
			rec.String("sha256", o.Digest.Hash)
			rec.Int("size", size)
			outs.Object(port, rec)
		}
		data.Object("outputs", outs)
	}
	if st != nil {
		data.Uint("peak_rss_bytes", st.GetPeakRssBytes())
		data.Bool("peak_rss_shared", st.GetPeakShared())
	}
	if r.Plugin != "" {
		data.Int("pid", int64(r.Pid))
		data.String("plugin", r.Plugin)
	}
	if st != nil {
		data.Int("plugin_end_ns", st.GetEndNs())
		data.Int("plugin_start_ns", st.GetStartNs())
	}
	if rr != nil {
		data.Int("remote_download_ns", rr.DownloadNs)
		data.Int("remote_exec_ns", rr.ExecNs)
		data.Int("remote_upload_ns", rr.UploadNs)
		if rr.Worker != "" {
			data.String("remote_worker", rr.Worker)
		}
	}
	data.Int("slot", int64(r.Slot))
	data.Int("start_ns", r.StartNs)
	data.String("status", string(r.Status))
	if rr != nil {
		data.String("where", "remote")
	}
	end := r.EndNs
	if end == 0 {
		end = 0 // stamped "now" by the writer
	}
	c.emit(runlog.Event{Type: "stage_end", TimeNs: end, Stage: n.Name, Data: data})
}

// Running returns the stages running now with their progress.
func (c *Collector) Running() map[string]float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]float64{}
	for name := range c.running {
		out[name] = c.progress[name]
	}
	return out
}

// Spans returns the spans a stage reported.
func (c *Collector) Spans(stage string) []*pb.Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*pb.Span(nil), c.spans[stage]...)
}

func sortedPorts(m map[string]*engine.Output) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
