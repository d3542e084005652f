package runner

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/pluginmgr"
	"github.com/pipehost/pipehost/host/report"
	"github.com/pipehost/pipehost/host/runlog"
	"github.com/pipehost/pipehost/internal/procstat"
)

// Reports are the files a run leaves for its operator.
type Reports struct {
	Dir      string
	Log      string
	Summary  string
	Trace    string
	Metadata string
}

// OutDir is where the run writes: --out, else the config's output.dir
// (relative to the config file), else out/ beside the config file.
func (s *Session) OutDir() string {
	if s.opts.OutDir != "" {
		return s.opts.OutDir
	}
	base := filepath.Dir(s.Config.File)
	if s.Config.Output.Dir != "" {
		if filepath.IsAbs(s.Config.Output.Dir) {
			return s.Config.Output.Dir
		}
		return filepath.Join(base, s.Config.Output.Dir)
	}
	return filepath.Join(base, "out")
}

// startRecording opens the run log and logs the run's start and its
// plugins. A log that cannot be opened is a warning, not a failure.
func (s *Session) startRecording() *runlog.Writer {
	stamp := time.Now().UTC().Format("20060102T150405.000000000Z")
	path := filepath.Join(s.OutDir(), "logs", "run_"+stamp+".jsonl")
	w, err := runlog.Create(path, runlog.Options{})
	if err != nil {
		s.warn(fmt.Sprintf("running without a run log: %v", err))
		return nil
	}
	cfgBytes, _ := os.ReadFile(s.Config.File)
	sum := sha256.Sum256(cfgBytes)
	host, _ := os.Hostname()
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	var overrides []string
	for _, o := range s.opts.Overrides {
		overrides = append(overrides, fmt.Sprintf("%s.%s=%v", o.Stage, o.Param, o.Value.Value))
	}
	edges := 0
	for _, n := range s.Plan.Nodes {
		edges += len(n.Inputs)
	}
	w.Log(runlog.Event{Type: "run_start", TimeNs: s.openNs, Data: map[string]any{
		"run_id": s.Config.RunID, "config": s.Config.File, "config_sha256": hex.EncodeToString(sum[:]),
		"overrides": overrides, "seed": s.Config.Seed, "stages": len(s.Plan.Nodes), "edges": edges,
		"pipehost_version": s.opts.Version, "go_version": runtime.Version(), "host": host,
		"kernel": unix.ByteSliceToString(uts.Release[:]), "cpus": runtime.NumCPU(),
		"jobs": s.opts.Engine.Jobs, "mem_budget": s.opts.MemBudget, "cache_dir": s.cacheDir(),
		"wall_clock": time.Now().UTC().Format(time.RFC3339Nano),
	}})
	st := s.Setup
	w.Log(runlog.Event{Type: "plugin_setup", Data: map[string]any{
		"installed": st.Installed, "from_catalog": st.FromCatalog, "described": nonNil(st.Described),
		"ignored": st.Ignored, "hashed": st.Hashed, "started": nonNil(st.Started),
		"describe_ns": st.DescribeNs, "plan_ns": st.PlanNs, "launch_ns": st.LaunchNs,
	}})
	logLaunch := func(p *pluginmgr.Plugin) {
		var kinds []string
		for _, d := range p.Stages {
			kinds = append(kinds, d.GetKind())
		}
		w.Log(runlog.Event{Type: "plugin_launch", Data: map[string]any{
			"path": p.Path, "sha256": p.Digest(), "pid": p.Pid, "sdk": p.SDK, "sdk_version": p.SDKVersion,
			"launch_ns": p.LaunchNs, "kinds": kinds,
		}})
	}
	for _, p := range s.Plugins {
		logLaunch(p)
	}
	// Plugins started during the run (when a stage of theirs is to run).
	s.mgr.OnLaunch(logLaunch)
	s.mgr.OnStderr(func(p *pluginmgr.Plugin, line string) {
		level, msg := parseHCLog(line)
		w.Log(runlog.Event{Type: "plugin_log", Name: filepath.Base(p.Path), Level: level, Msg: msg, ID: uint64(p.Pid)})
	})
	return w
}

func nonNil(l []string) []string {
	if l == nil {
		return []string{}
	}
	return l
}

func (s *Session) cacheDir() string {
	if s.Cache == nil {
		return ""
	}
	return s.Cache.Root()
}

// parseHCLog reads an hclog JSON line; other lines are plain messages.
func parseHCLog(line string) (level, msg string) {
	if strings.HasPrefix(line, "{") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			l, _ := m["@level"].(string)
			text, ok := m["@message"].(string)
			if ok {
				// Keep the structured fields hclog adds beyond the message.
				var extra []string
				for k, v := range m {
					if !strings.HasPrefix(k, "@") {
						extra = append(extra, fmt.Sprintf("%s=%v", k, v))
					}
				}
				if len(extra) > 0 {
					text += " " + strings.Join(extra, " ")
				}
				return l, text
			}
		}
	}
	return "", line
}

// finishRecording writes the run's end record, summary.md and trace.json.
// It runs for failed and stopped runs too.
func (s *Session) finishRecording(w *runlog.Writer, col *report.Collector, res *engine.Result, startNs, endNs int64, status string) Reports {
	out := s.OutDir()
	rep := Reports{Dir: out, Summary: filepath.Join(out, "summary.md"), Trace: filepath.Join(out, "trace.json")}
	s.mgr.OnStderr(nil)
	s.mgr.OnLaunch(nil)
	hostPeak := procstat.Peak()
	// The trace is written while the run log is closed; the summary, which
	// links the trace only if it was written, waits for it.
	traced := make(chan error, 1)
	go func() { traced <- col.WriteTrace(rep.Trace, s.Plan, res, startNs) }()
	info := report.RunInfo{
		Plan: s.Plan, Result: res, ConfigPath: s.Config.File, Status: status,
		StartNs: startNs, EndNs: endNs, SetupNs: startNs - s.openNs,
		HostPeakRSS: hostPeak, ArenaPeak: s.Arena.Peak(), Previews: s.previews,
	}
	counts := map[engine.Status]int{}
	hits := 0
	for _, r := range res.Stages {
		if r != nil {
			counts[r.Status]++
			if r.Cache == engine.CacheHit {
				hits++
			}
		}
	}
	crit, critNs := report.CriticalPath(s.Plan, res)
	info.Critical, info.CriticalNs = crit, critNs
	if w != nil {
		rep.Log = w.Path()
		info.LogPath = w.Path()
		w.Log(runlog.Event{Type: "run_end", TimeNs: endNs, Data: map[string]any{
			"status": status, "wall_ns": endNs - startNs, "setup_ns": startNs - s.openNs,
			"critical_path_ns": critNs, "stages_ok": counts[engine.StatusOK], "stages_failed": counts[engine.StatusFailed],
			"stages_skipped": counts[engine.StatusSkipped], "cache_hits": hits,
			"host_peak_rss_bytes": hostPeak, "arena_peak_bytes": s.Arena.Peak(), "dropped_events": w.Dropped(),
		}})
		if err := w.Close(); err != nil {
			s.warn(fmt.Sprintf("run log %s: %v", w.Path(), err))
		}
		info.Dropped = w.Dropped()
	}
	if err := <-traced; err != nil {
		s.warn(fmt.Sprintf("writing %s: %v", rep.Trace, err))
		rep.Trace = ""
	}
	info.TracePath = rep.Trace
	if err := col.WriteSummary(rep.Summary, info); err != nil {
		s.warn(fmt.Sprintf("writing %s: %v", rep.Summary, err))
		rep.Summary = ""
	}
	return rep
}
