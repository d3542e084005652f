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
	data := map[string]any{
		"kind": n.Kind, "plugin": r.Plugin, "pid": r.Pid, "slot": r.Slot,
		"cache": r.Cache, "miss_reason": r.MissReason, "bytes_in": r.BytesIn,
	}
	if r.Remote != nil {
		data["where"], data["executor"] = "remote", r.Remote.Executor
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
	data := map[string]any{
		"kind": n.Kind, "status": r.Status, "cache": r.Cache, "slot": r.Slot,
		"start_ns": r.StartNs, "end_ns": r.EndNs, "dur_ns": r.EndNs - r.StartNs,
		"bytes_in": r.BytesIn, "bytes_out": r.BytesOut,
	}
	if r.Plugin != "" {
		data["plugin"], data["pid"] = r.Plugin, r.Pid
	}
	if r.MissReason != "" {
		data["miss_reason"] = r.MissReason
	}
	if r.Note != "" {
		data["note"] = r.Note
	}
	if r.Key != "" {
		data["cache_key"] = r.Key
	}
	if rr := r.Remote; rr != nil {
		data["where"], data["executor"], data["action_digest"] = "remote", rr.Executor, rr.Action
		data["remote_upload_ns"], data["remote_exec_ns"], data["remote_download_ns"] = rr.UploadNs, rr.ExecNs, rr.DownloadNs
		if rr.Worker != "" {
			data["remote_worker"] = rr.Worker
		}
	}
	if st := r.Stats; st != nil {
		data["peak_rss_bytes"] = st.GetPeakRssBytes()
		data["peak_rss_shared"] = st.GetPeakShared()
		data["cpu_ns"] = st.GetCpuNs()
		data["plugin_start_ns"], data["plugin_end_ns"] = st.GetStartNs(), st.GetEndNs()
	}
	if len(r.Metrics) > 0 {
		data["metrics"] = r.Metrics
	}
	if len(r.Outputs) > 0 {
		outs := map[string]any{}
		for _, port := range sortedPorts(r.Outputs) {
			o := r.Outputs[port]
			rec := map[string]any{"sha256": o.Digest.Hash, "size": o.Digest.Size}
			if o.Entry != nil {
				rec["segment"], rec["size"] = o.Entry.ID, o.Entry.Size
			}
			outs[port] = rec
		}
		data["outputs"] = outs
	}
	if r.Err != nil {
		data["error"] = r.Err.Error()
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
