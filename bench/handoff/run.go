package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/pipehost/pipehost/bench/handoff/xfer"
	"github.com/pipehost/pipehost/internal/clock"
)

// pipehostRun is the way a user hands a grid over: `pipehost run` on a
// two-stage config (produce → consume, both way shm), with the cache on in
// a fresh cache directory (cold) or with --no-cache. The times come from
// the run log: the plugins' metrics (CLOCK_MONOTONIC, as everywhere here)
// and the host's stage records; the host's peak RSS is the VmHWM the
// command records in run_end (its ru_maxrss would include the plugins, its
// children).
func (c *tcase) pipehostRun(ctx context.Context, noCache bool) error {
	if c.pipehost == "" || c.pluginDir == "" {
		return errors.New("the pipehost ways need -pipehost and a plugin directory holding only benchxfer (-plugin-dir)")
	}
	dir, err := os.MkdirTemp(c.dir, "handoff-run-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := filepath.Join(dir, "p.toml")
	body := fmt.Sprintf(`[run]
id = "handoff"
seed = %d
[grid]
width = %d
height = %d
[stages.produce]
kind = %q
params = { way = %q }
[stages.consume]
kind = %q
inputs = { %s = "produce.%s" }
params = { way = %q }
`, c.cases, c.width, c.height, xfer.KindProduce, xfer.WayShm, xfer.KindConsume, xfer.Port, xfer.Port, xfer.WayShm)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		return err
	}
	out := filepath.Join(dir, "out")
	args := []string{"run", cfg, "--plugin-dir", c.pluginDir, "--out", out, "--quiet"}
	if noCache {
		args = append(args, "--no-cache")
	} else {
		args = append(args, "--cache-dir", filepath.Join(dir, "cache"))
	}
	cmd := exec.CommandContext(ctx, c.pipehost, args...)
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	start := clock.Now()
	err = cmd.Run()
	c.s.Wall = clock.Now() - start
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", c.pipehost, strings.Join(args, " "), err, stderr.String())
	}
	recs, hostPeak, err := readRunLog(out)
	if err != nil {
		return err
	}
	p, ok1 := recs["produce"]
	k, ok2 := recs["consume"]
	if !ok1 || !ok2 {
		return fmt.Errorf("run log in %s: no stage_end for produce and consume", out)
	}
	if p.Status != "ok" || k.Status != "ok" {
		return fmt.Errorf("run log in %s: produce %s, consume %s", out, p.Status, k.Status)
	}
	if noCache != (p.Cache == "off") {
		return fmt.Errorf("run log in %s: produce's cache is %q with --no-cache %v", out, p.Cache, noCache)
	}
	seed := uint64(p.Metrics["seed_lo"]) | uint64(p.Metrics["seed_hi"])<<32
	sum := uint64(k.Metrics["sum_lo"]) | uint64(k.Metrics["sum_hi"])<<32
	if want := xfer.ExpectedSum(seed, c.size); sum != want {
		return fmt.Errorf("the consumer read other bytes than the producer wrote: sum %#x, want %#x", sum, want)
	}
	fillStart, fillEnd := int64(p.Metrics["fill_start_ns"]), int64(p.Metrics["fill_end_ns"])
	c.s.Handoff = k.StartNs - p.EndNs
	c.s.Tail = p.EndNs - fillEnd
	c.s.FirstByte = int64(k.Metrics["first_byte_ns"]) - k.StartNs
	c.s.FullRead = int64(k.Metrics["full_read_ns"]) - k.StartNs
	c.s.EndToEnd = int64(k.Metrics["full_read_ns"]) - fillEnd
	c.s.Fill = fillEnd - fillStart
	c.s.HostPeak = hostPeak
	c.s.ProducerPeak, c.s.ConsumerPeak = p.PeakRSS, k.PeakRSS
	c.s.ConsumerAnon = uint64(k.Metrics["rss_anon_bytes"])
	c.s.ConsumerShmem = uint64(k.Metrics["rss_shmem_bytes"])
	return nil
}

// stageEnd is what the benchmark reads of a stage_end record.
type stageEnd struct {
	Status  string             `json:"status"`
	Cache   string             `json:"cache"`
	StartNs int64              `json:"start_ns"`
	EndNs   int64              `json:"end_ns"`
	PeakRSS uint64             `json:"peak_rss_bytes"`
	Metrics map[string]float64 `json:"metrics"`
}

// readRunLog returns the stage_end records of the run log in out/logs and
// the host's peak RSS from run_end.
func readRunLog(out string) (map[string]stageEnd, uint64, error) {
	logs, _ := filepath.Glob(filepath.Join(out, "logs", "run_*.jsonl"))
	if len(logs) != 1 {
		return nil, 0, fmt.Errorf("want one run log in %s/logs, found %d", out, len(logs))
	}
	f, err := os.Open(logs[0])
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	recs := map[string]stageEnd{}
	var peak uint64
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var line struct {
			Type  string   `json:"type"`
			Stage string   `json:"stage"`
			Data  stageEnd `json:"data"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return nil, 0, fmt.Errorf("%s: %w", logs[0], err)
		}
		switch line.Type {
		case "stage_end":
			recs[line.Stage] = line.Data
		case "run_end":
			var end struct {
				Data struct {
					HostPeak uint64 `json:"host_peak_rss_bytes"`
				} `json:"data"`
			}
			if err := json.Unmarshal(sc.Bytes(), &end); err != nil {
				return nil, 0, fmt.Errorf("%s: %w", logs[0], err)
			}
			peak = end.Data.HostPeak
		}
	}
	if peak == 0 {
		return nil, 0, fmt.Errorf("%s: no host_peak_rss_bytes in run_end", logs[0])
	}
	return recs, peak, sc.Err()
}
