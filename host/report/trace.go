package report

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/plan"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// traceEvent is one Chrome Trace Event (the JSON format Perfetto and
// chrome://tracing open). Times are microseconds since the run started.
type traceEvent struct {
	Name string         `json:"name"`
	Cat  string         `json:"cat,omitempty"`
	Ph   string         `json:"ph"`
	Ts   float64        `json:"ts"`
	Dur  *float64       `json:"dur,omitempty"`
	Pid  int            `json:"pid"`
	Tid  int            `json:"tid"`
	Args map[string]any `json:"args,omitempty"`
}

// hostPid is the trace's process id for pipehost itself; its threads are
// the worker slots, plus one track for cache hits.
const (
	hostPid  = 1
	cacheTid = 100000
)

// Trace builds the run's trace: a track per worker slot (the stages as the
// host scheduled them), a track per plugin process and slot (the stage as
// the plugin ran it, with its subtask spans nested inside), and a track of
// cache hits.
func (c *Collector) Trace(p *plan.Plan, res *engine.Result, startNs int64) ([]byte, error) {
	us := func(ns int64) float64 { return float64(ns-startNs) / 1e3 }
	dur := func(a, b int64) *float64 { d := max(float64(b-a)/1e3, 0.001); return &d }
	var evs []traceEvent
	meta := func(pid, tid int, what, name string) {
		evs = append(evs, traceEvent{Name: what, Ph: "M", Pid: pid, Tid: tid, Args: map[string]any{"name": name}})
	}
	meta(hostPid, 0, "process_name", "pipehost "+p.Config.RunID)
	slots := map[int]bool{}
	procs := map[int]string{}
	procSlots := map[[2]int]bool{}
	for _, r := range res.Stages {
		if r == nil || r.StartNs == 0 {
			continue
		}
		args := map[string]any{"kind": r.Kind, "status": string(r.Status), "cache": string(r.Cache)}
		if r.Err != nil {
			args["error"] = r.Err.Error()
		}
		if rr := r.Remote; rr != nil {
			args["where"], args["executor"], args["action_digest"] = "remote", rr.Executor, rr.Action
		}
		if r.Cache == engine.CacheHit {
			evs = append(evs, traceEvent{Name: r.Name, Cat: "cache_hit", Ph: "X", Ts: us(r.StartNs), Dur: dur(r.StartNs, r.EndNs), Pid: hostPid, Tid: cacheTid, Args: args})
			continue
		}
		if r.Slot < 0 {
			continue
		}
		slots[r.Slot] = true
		if r.Stats != nil {
			args["peak_rss_bytes"] = r.Stats.GetPeakRssBytes()
		}
		evs = append(evs, traceEvent{Name: r.Name, Cat: "stage", Ph: "X", Ts: us(r.StartNs), Dur: dur(r.StartNs, max(r.EndNs, r.StartNs)), Pid: hostPid, Tid: r.Slot + 1, Args: args})
		if r.Pid == 0 || r.Stats == nil || r.Stats.GetStartNs() == 0 {
			continue
		}
		procs[r.Pid] = r.Plugin
		key := [2]int{r.Pid, r.Slot}
		procSlots[key] = true
		tid := r.Pid*100 + r.Slot + 1
		evs = append(evs, traceEvent{Name: r.Name, Cat: "plugin_stage", Ph: "X", Ts: us(r.Stats.GetStartNs()), Dur: dur(r.Stats.GetStartNs(), r.Stats.GetEndNs()), Pid: r.Pid, Tid: tid, Args: map[string]any{"kind": r.Kind}})
		// Spans that overlap without nesting (from goroutines) go to extra
		// lanes so every lane nests properly.
		for i, lane := range lanes(c.Spans(r.Name)) {
			for _, s := range lane {
				evs = append(evs, traceEvent{Name: s.GetName(), Cat: "span", Ph: "X", Ts: us(s.GetStartNs()), Dur: dur(s.GetStartNs(), s.GetEndNs()), Pid: r.Pid, Tid: tid + i*10000, Args: map[string]any{"stage": r.Name, "span_id": s.GetId(), "parent_id": s.GetParentId()}})
				if i > 0 {
					procSlots[[2]int{r.Pid, r.Slot + i*100}] = true
				}
			}
		}
	}
	for s := range slots {
		meta(hostPid, s+1, "thread_name", fmt.Sprintf("slot %d", s))
	}
	meta(hostPid, cacheTid, "thread_name", "cache hits")
	for pid, path := range procs {
		meta(pid, 0, "process_name", fmt.Sprintf("plugin %s", filepath.Base(path)))
	}
	for k := range procSlots {
		slot, lane := k[1]%100, k[1]/100
		name := fmt.Sprintf("slot %d", slot)
		if lane > 0 {
			name += fmt.Sprintf(" (lane %d)", lane)
		}
		meta(k[0], k[0]*100+slot+1+lane*10000, "thread_name", name)
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].Ph == "M" && evs[j].Ph != "M" })
	return json.MarshalIndent(map[string]any{"traceEvents": evs, "displayTimeUnit": "ns"}, "", " ")
}

// lanes splits spans into groups in which any two spans either nest or do
// not overlap, which is what a trace track can show.
func lanes(spans []*pb.Span) [][]*pb.Span {
	sort.Slice(spans, func(i, j int) bool {
		if spans[i].GetStartNs() != spans[j].GetStartNs() {
			return spans[i].GetStartNs() < spans[j].GetStartNs()
		}
		return spans[i].GetEndNs() > spans[j].GetEndNs()
	})
	var out [][]*pb.Span
	var stacks [][]*pb.Span // open spans per lane
	for _, s := range spans {
		placed := false
		for i := range out {
			st := stacks[i]
			for len(st) > 0 && st[len(st)-1].GetEndNs() <= s.GetStartNs() {
				st = st[:len(st)-1]
			}
			if len(st) == 0 || st[len(st)-1].GetEndNs() >= s.GetEndNs() {
				out[i] = append(out[i], s)
				stacks[i] = append(st, s)
				placed = true
				break
			}
			stacks[i] = st
		}
		if !placed {
			out = append(out, []*pb.Span{s})
			stacks = append(stacks, []*pb.Span{s})
		}
	}
	return out
}
