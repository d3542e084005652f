package report

import (
	"fmt"
	"path/filepath"
	"sort"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/runlog"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// traceEvent is one Chrome Trace Event (the JSON format Perfetto and
// chrome://tracing open). Times are microseconds since the run started.
// Events are encoded by hand (appendJSON): a trace has several per stage,
// and encoding/json's reflection over maps cost more than building them.
type traceEvent struct {
	Name string
	Cat  string // omitted when empty
	Ph   string
	Ts   float64
	Dur  float64 // omitted when not positive (metadata events)
	Pid  int
	Tid  int
	Args []arg // keys sorted, as encoding/json writes a map
}

// arg is one member of an event's args: a string, an int64 or a uint64.
type arg struct {
	key string
	val any
}

func (e *traceEvent) appendJSON(b []byte) []byte {
	o := runlog.Open(b)
	o.String("name", e.Name)
	if e.Cat != "" {
		o.String("cat", e.Cat)
	}
	o.String("ph", e.Ph)
	o.Float("ts", e.Ts)
	if e.Dur > 0 {
		o.Float("dur", e.Dur)
	}
	o.Int("pid", int64(e.Pid))
	o.Int("tid", int64(e.Tid))
	if len(e.Args) > 0 {
		a := o.Begin("args")
		for _, kv := range e.Args {
			switch v := kv.val.(type) {
			case string:
				a.String(kv.key, v)
			case int64:
				a.Int(kv.key, v)
			case uint64:
				a.Uint(kv.key, v)
			default:
				panic(fmt.Sprintf("report: trace arg %q of type %T", kv.key, kv.val))
			}
		}
		o.End(&a)
	}
	return o.Close()
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
	dur := func(a, b int64) float64 { return max(float64(b-a)/1e3, 0.001) }
	// Metadata events (names of processes and threads) come first.
	var metas []traceEvent
	evs := make([]traceEvent, 0, 2*len(res.Stages))
	meta := func(pid, tid int, what, name string) {
		metas = append(metas, traceEvent{Name: what, Ph: "M", Pid: pid, Tid: tid, Args: []arg{{"name", name}}})
	}
	meta(hostPid, 0, "process_name", "pipehost "+p.Config.RunID)
	slots := map[int]bool{}
	procs := map[int]string{}
	procSlots := map[[2]int]bool{}
	for _, r := range res.Stages {
		if r == nil || r.StartNs == 0 {
			continue
		}
		// In key order: action_digest, cache, error, executor, kind,
		// peak_rss_bytes, status, where.
		args := make([]arg, 0, 8)
		if rr := r.Remote; rr != nil {
			args = append(args, arg{"action_digest", rr.Action})
		}
		args = append(args, arg{"cache", string(r.Cache)})
		if r.Err != nil {
			args = append(args, arg{"error", r.Err.Error()})
		}
		if rr := r.Remote; rr != nil {
			args = append(args, arg{"executor", rr.Executor})
		}
		args = append(args, arg{"kind", r.Kind})
		tail := []arg{{"status", string(r.Status)}}
		if r.Remote != nil {
			tail = append(tail, arg{"where", "remote"})
		}
		if r.Cache == engine.CacheHit {
			evs = append(evs, traceEvent{Name: r.Name, Cat: "cache_hit", Ph: "X", Ts: us(r.StartNs), Dur: dur(r.StartNs, r.EndNs), Pid: hostPid, Tid: cacheTid, Args: append(args, tail...)})
			continue
		}
		if r.Slot < 0 {
			continue
		}
		slots[r.Slot] = true
		if r.Stats != nil {
			args = append(args, arg{"peak_rss_bytes", r.Stats.GetPeakRssBytes()})
		}
		args = append(args, tail...)
		evs = append(evs, traceEvent{Name: r.Name, Cat: "stage", Ph: "X", Ts: us(r.StartNs), Dur: dur(r.StartNs, max(r.EndNs, r.StartNs)), Pid: hostPid, Tid: r.Slot + 1, Args: args})
		if r.Pid == 0 || r.Stats == nil || r.Stats.GetStartNs() == 0 {
			continue
		}
		procs[r.Pid] = r.Plugin
		key := [2]int{r.Pid, r.Slot}
		procSlots[key] = true
		tid := r.Pid*100 + r.Slot + 1
		evs = append(evs, traceEvent{Name: r.Name, Cat: "plugin_stage", Ph: "X", Ts: us(r.Stats.GetStartNs()), Dur: dur(r.Stats.GetStartNs(), r.Stats.GetEndNs()), Pid: r.Pid, Tid: tid, Args: []arg{{"kind", r.Kind}}})
		// Spans that overlap without nesting (from goroutines) go to extra
		// lanes so every lane nests properly.
		for i, lane := range lanes(c.Spans(r.Name)) {
			for _, s := range lane {
				evs = append(evs, traceEvent{Name: s.GetName(), Cat: "span", Ph: "X", Ts: us(s.GetStartNs()), Dur: dur(s.GetStartNs(), s.GetEndNs()), Pid: r.Pid, Tid: tid + i*10000, Args: []arg{{"parent_id", s.GetParentId()}, {"span_id", s.GetId()}, {"stage", r.Name}}})
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
	evs = append(metas, evs...)
	// One event per line: the file stays readable and greppable.
	b := make([]byte, 0, 64+200*len(evs))
	b = append(b, `{"displayTimeUnit":"ns","traceEvents":[`...)
	for i := range evs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '\n')
		b = evs[i].appendJSON(b)
	}
	return append(b, "\n]}\n"...), nil
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
