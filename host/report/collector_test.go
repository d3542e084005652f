package report

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/pipehost/pipehost/host/arena"
	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/runlog"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// The per-stage records are encoded by hand. Each must be one valid JSON
// object whose data has its keys sorted and none twice: what json.Marshal
// writes for the same members, so readers see no difference.
func TestStageRecordsAreCanonicalJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run.jsonl")
	w, err := runlog.Create(path, runlog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := NewCollector(w)
	n := &plan.Node{Name: "s\"1", Kind: "probe.sleep"}
	full := &engine.StageResult{
		Name: n.Name, Kind: n.Kind, Status: engine.StatusFailed, Slot: 3, StartNs: 100, EndNs: 350,
		Cache: engine.CacheMiss, MissReason: "params changed", Key: "abc", Note: "early cutoff",
		Plugin: "/p/probe", Pid: 42, BytesIn: 7, BytesOut: 1 << 40,
		Metrics: map[string]float64{"z": 1.5, "a": math.NaN(), "m": 1e300},
		Remote:  &engine.RemoteRun{Executor: "grpc://x", Action: "h/1", UploadNs: 1, ExecNs: 2, DownloadNs: 3, Worker: "w1"},
		Stats:   &pb.StageStats{PeakRssBytes: math.MaxUint64, PeakShared: true, StartNs: 120, EndNs: 300, CpuNs: 9},
		Outputs: map[string]*engine.Output{
			"out": {Digest: cache.Digest{Hash: "d1", Size: 256}, Entry: &arena.Entry{ID: 5, Size: 4096}},
			"aux": {Digest: cache.Digest{Hash: "d2", Size: 8}},
		},
		Err: errors.New("bad\n\"thing\"\t<>&"),
	}
	bare := &engine.StageResult{Name: "s2", Kind: "k", Status: engine.StatusOK, Cache: engine.CacheOff}
	c.StageStart(n, full)
	c.StageEnd(n, full)
	c.StageStart(n, bare)
	c.StageEnd(n, bare)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var records []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec struct {
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("%s: %v", sc.Bytes(), err)
		}
		dec := json.NewDecoder(bytes.NewReader(rec.Data))
		dec.UseNumber()
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("%s data %s: %v", rec.Type, rec.Data, err)
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false) // the run log does not escape <, > and &
		if err := enc.Encode(m); err != nil {
			t.Fatal(err)
		}
		again := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
		if !bytes.Equal(again, rec.Data) {
			t.Errorf("%s data is not what json.Marshal writes:\n got  %s\n want %s", rec.Type, rec.Data, again)
		}
		records = append(records, m)
	}
	if len(records) != 4 {
		t.Fatalf("%d records, want 4", len(records))
	}
	end := records[1]
	for k, want := range map[string]string{
		"peak_rss_bytes": "18446744073709551615", "bytes_out": "1099511627776", "dur_ns": "250",
		"where": "remote", "remote_worker": "w1", "error": "bad\n\"thing\"\t<>&", "pid": "42",
	} {
		if got := end[k]; got == nil || fmt.Sprint(got) != want {
			t.Errorf("stage_end %s = %v, want %s", k, got, want)
		}
	}
	outs := end["outputs"].(map[string]any)
	if o := outs["out"].(map[string]any); o["segment"].(json.Number) != "5" || o["size"].(json.Number) != "4096" {
		t.Errorf("output with a segment: %v", o)
	}
	if m := end["metrics"].(map[string]any); m["a"] != nil || m["z"].(json.Number) != "1.5" {
		t.Errorf("metrics: %v", m)
	}
	for _, k := range []string{"plugin", "pid", "cache_key", "outputs", "error", "where", "cpu_ns"} {
		if _, ok := records[3][k]; ok {
			t.Errorf("stage_end of a bare result has %q", k)
		}
	}
}
