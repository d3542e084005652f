package report

import (
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/internal/atomicfile"
	"github.com/pipehost/pipehost/internal/units"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// RunInfo is what the summary says about the run as a whole.
type RunInfo struct {
	Plan        *plan.Plan
	Result      *engine.Result
	ConfigPath  string
	Status      string // "ok", "failed" or "stopped: …"
	StartNs     int64  // engine start (CLOCK_MONOTONIC)
	EndNs       int64
	SetupNs     int64 // config, plugin launch and plan, before StartNs
	HostPeakRSS uint64
	ArenaPeak   int64
	LogPath     string
	TracePath   string
	// Previews are PNG files (relative to the summary) by artifact name.
	Previews map[string]string
	Dropped  int64
	// Critical and CriticalNs are CriticalPath's answer, when the caller
	// has it already; nil means WriteSummary works it out.
	Critical   []string
	CriticalNs int64
}

// CriticalPath returns the chain of stages whose plugin-side durations add
// up to the longest path through the DAG, and that total.
func CriticalPath(p *plan.Plan, res *engine.Result) ([]string, int64) {
	byName := map[string]*engine.StageResult{}
	for _, r := range res.Stages {
		if r != nil {
			byName[r.Name] = r
		}
	}
	finish := map[string]int64{}
	prev := map[string]string{}
	var best string
	for _, n := range p.Nodes {
		var start int64
		for _, in := range n.Inputs {
			if f := finish[in.From.Name]; f > start {
				start, prev[n.Name] = f, in.From.Name
			}
		}
		finish[n.Name] = start + StageTime(byName[n.Name])
		if best == "" || finish[n.Name] > finish[best] {
			best = n.Name
		}
	}
	var path []string
	for s := best; s != ""; s = prev[s] {
		path = append(path, s)
	}
	slices.Reverse(path)
	return path, finish[best]
}

// StageTime is a stage's own work: the plugin-side duration when it ran,
// 0 for a cache hit or a stage that did not run.
func StageTime(r *engine.StageResult) int64 {
	if r == nil || r.Cache == engine.CacheHit || r.Stats == nil {
		return 0
	}
	return r.Stats.GetEndNs() - r.Stats.GetStartNs()
}

// WriteSummary writes summary.md.
func (c *Collector) WriteSummary(path string, info RunInfo) error {
	var b strings.Builder
	res, p := info.Result, info.Plan
	wall := info.EndNs - info.StartNs
	counts := map[string]int{}
	hits := 0
	for _, r := range res.Stages {
		if r == nil {
			continue
		}
		counts[string(r.Status)]++
		if r.Cache == engine.CacheHit {
			hits++
		}
	}
	crit, critNs := info.Critical, info.CriticalNs
	if crit == nil {
		crit, critNs = CriticalPath(p, res)
	}
	fmt.Fprintf(&b, "# Run %s\n\n", p.Config.RunID)
	fmt.Fprintf(&b, "| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| status | **%s** |\n", info.Status)
	fmt.Fprintf(&b, "| config | `%s` |\n", info.ConfigPath)
	fmt.Fprintf(&b, "| grid | %s %d×%d, %d level(s), seed %d |\n", p.Topology.GetKind(), p.Config.Grid.Width, p.Config.Grid.Height, len(p.Levels), p.Config.Seed)
	fmt.Fprintf(&b, "| stages | %d ok, %d failed, %d skipped; %d cache hit(s) |\n", counts["ok"], counts["failed"], counts["skipped"], hits)
	fmt.Fprintf(&b, "| wall time | %s (plus %s setup: plugins and plan) |\n", dur(wall), dur(info.SetupNs))
	fmt.Fprintf(&b, "| critical path | %s of stage work: %s |\n", dur(critNs), strings.Join(crit, " → "))
	if wall > 0 {
		over := wall - critNs
		fmt.Fprintf(&b, "| framework overhead | %s (%.2f%% of wall time; wall minus critical-path stage work) |\n", dur(over), 100*float64(over)/float64(wall))
	}
	fmt.Fprintf(&b, "| memory | shared segments peak %s; pipehost peak RSS %s |\n", units.Bytes(info.ArenaPeak), units.Bytes(int64(info.HostPeakRSS)))
	if info.LogPath != "" {
		fmt.Fprintf(&b, "| run log | [%s](%s) |\n", filepath.Base(info.LogPath), rel(path, info.LogPath))
	}
	if info.TracePath != "" {
		fmt.Fprintf(&b, "| trace | [%s](%s) (open in https://ui.perfetto.dev) |\n", filepath.Base(info.TracePath), rel(path, info.TracePath))
	}
	if info.Dropped > 0 {
		fmt.Fprintf(&b, "| run log | %d event(s) dropped: the log writer could not keep up |\n", info.Dropped)
	}

	b.WriteString("\n## Stages\n\n| stage | kind | status | cache | time | peak RSS | in | out |\n|---|---|---|---|---:|---:|---:|---:|\n")
	for _, n := range p.Nodes {
		r := res.Stages[n.Index]
		if r == nil {
			continue
		}
		peak := "–"
		if r.Stats != nil && r.Stats.GetPeakRssBytes() > 0 {
			peak = units.Bytes(int64(r.Stats.GetPeakRssBytes()))
			if r.Stats.GetPeakShared() {
				peak += "*"
			}
		}
		cacheCol := string(r.Cache)
		if r.Cache == engine.CacheMiss && r.MissReason != "" {
			cacheCol += ": " + mdEscape(r.MissReason)
		}
		if r.Note != "" {
			cacheCol += " (" + mdEscape(r.Note) + ")"
		}
		if rr := r.Remote; rr != nil && rr.Action != "" {
			cacheCol += fmt.Sprintf(" (ran remotely on %s, action `%s`)", mdEscape(rr.Executor), shortAction(rr.Action))
		}
		fmt.Fprintf(&b, "| %s | `%s` | %s | %s | %s | %s | %s | %s |\n", n.Name, n.Kind, r.Status, cacheCol, dur(StageTime(r)), peak, units.Bytes(r.BytesIn), units.Bytes(r.BytesOut))
	}
	b.WriteString("\nTime is the plugin's own stage time. A * on the peak RSS marks a process that ran other stages at the same time. Shared-memory segments are counted once, in the memory line above, not in each process.\n")

	type spanRow struct {
		stage string
		s     *pb.Span
	}
	var spans []spanRow
	for _, n := range p.Nodes {
		for _, s := range c.Spans(n.Name) {
			spans = append(spans, spanRow{n.Name, s})
		}
	}
	if len(spans) > 0 {
		sort.Slice(spans, func(i, j int) bool {
			return spans[i].s.GetEndNs()-spans[i].s.GetStartNs() > spans[j].s.GetEndNs()-spans[j].s.GetStartNs()
		})
		b.WriteString("\n## Slowest subtasks\n\n| stage | subtask | time |\n|---|---|---:|\n")
		for i, r := range spans {
			if i == 10 {
				break
			}
			fmt.Fprintf(&b, "| %s | %s | %s |\n", r.stage, mdEscape(r.s.GetName()), dur(r.s.GetEndNs()-r.s.GetStartNs()))
		}
	}

	if len(info.Previews) > 0 {
		b.WriteString("\n## Datasets\n\n")
		var names []string
		for k := range info.Previews {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			fmt.Fprintf(&b, "### %s\n\n![%s](%s)\n\n", k, k, info.Previews[k])
		}
	}

	var failed []*engine.StageResult
	for _, r := range res.Stages {
		if r != nil && r.Status == engine.StatusFailed {
			failed = append(failed, r)
		}
	}
	if len(failed) > 0 {
		b.WriteString("\n## Failures\n\n")
		for _, r := range failed {
			fmt.Fprintf(&b, "### %s (`%s`)\n\n```\n%s\n```\n\n", r.Name, r.Kind, r.Err)
			c.mu.Lock()
			logs := c.logs[r.Name]
			c.mu.Unlock()
			if len(logs) > 0 {
				fmt.Fprintf(&b, "Last log lines of the stage:\n\n```\n%s\n```\n\n", strings.Join(logs, "\n"))
			}
		}
	}
	fmt.Fprintf(&b, "\n_Written %s._\n", time.Now().UTC().Format(time.RFC3339))
	return atomicfile.Write(path, []byte(b.String()))
}

func dur(ns int64) string {
	if ns <= 0 {
		return "0"
	}
	d := time.Duration(ns)
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(ns)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(ns)/1e6)
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func mdEscape(s string) string {
	return strings.NewReplacer("|", "\\|", "\n", " ").Replace(s)
}

func rel(from, to string) string {
	r, err := filepath.Rel(filepath.Dir(from), to)
	if err != nil {
		return to
	}
	return filepath.ToSlash(r)
}

// WriteTrace writes trace.json atomically.
func (c *Collector) WriteTrace(path string, p *plan.Plan, res *engine.Result, startNs int64) error {
	b, err := c.Trace(p, res, startNs)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, b)
}

// shortAction is an action digest cut to its first 12 hex digits.
func shortAction(a string) string {
	if len(a) > 12 {
		return a[:12]
	}
	return a
}
