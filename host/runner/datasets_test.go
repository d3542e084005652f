package runner_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/testbin"
	"github.com/pipehost/pipehost/internal/testenv"
)

// examples/dummy.toml saves its grid as COG and NPZ and its table as
// GeoParquet and Arrow; every file must satisfy readers nobody here wrote,
// from a cold run and from a fully cached one (whose bytes come from the
// cache).
func TestDummyExampleDatasets(t *testing.T) {
	py := testenv.Python(t)
	body, err := os.ReadFile(filepath.Join(testbin.ModuleRoot(), "examples", "dummy.toml"))
	if err != nil {
		t.Fatal(err)
	}
	isolate(t)
	cfg := writeConfig(t, "dummy.toml", string(body))
	cache := filepath.Join(t.TempDir(), "cache")
	for _, round := range []string{"cold", "cached"} {
		sess, err := runner.Open(context.Background(), runner.Options{ConfigPath: cfg, PluginDirs: []string{pluginsDir(t)}, CacheDir: cache})
		if err != nil {
			t.Fatal(err)
		}
		res := sess.Run(context.Background())
		sess.Close()
		if err := res.Err(); err != nil {
			t.Fatal(err)
		}
		if len(sess.RunErrors) > 0 {
			t.Fatal(sess.RunErrors)
		}
		if len(sess.Artifacts) != 5 {
			t.Fatalf("%s: %d artifacts, want cog, npz, png, geoparquet, arrow", round, len(sess.Artifacts))
		}
		out, err := exec.Command(py, filepath.Join("testdata", "check_run.py"), sess.Reports.Dir).CombinedOutput()
		if err != nil {
			t.Fatalf("%s run: %v\n%s", round, err, out)
		}
		var seen map[string]map[string]any
		if err := json.Unmarshal(out, &seen); err != nil {
			t.Fatalf("%s", out)
		}
		tif := seen[filepath.Join(sess.Reports.Dir, "data", "scale.out.tif")]
		if !strings.Contains(tif["crs"].(string), "pipehost sphere R=6371000") || len(tif["overviews"].([]any)) == 0 {
			t.Errorf("%s: COG %v", round, tif)
		}
		if pq := seen[filepath.Join(sess.Reports.Dir, "data", "points.points.parquet")]; pq["rows"] != float64(500) {
			t.Errorf("%s: GeoParquet %v", round, pq)
		}
		meta := checkMetadataEncoding(t, sess.Reports.Dir)
		src, scale := meta["source"], meta["scale"]
		if src.Kind != "dummy.source" || src.Params["value"] != 1.5 || scale.Params["factor"] != 2.0 || meta["points"].Params["n"] != 500.0 ||
			scale.Inputs["in"] != "source.out" || scale.Status != "ok" || len(scale.Outputs["out"].(map[string]any)["sha256"].(string)) != 64 {
			t.Errorf("%s: metadata.json stages %+v", round, meta)
		}
		sum, _ := os.ReadFile(sess.Reports.Summary)
		if !strings.Contains(string(sum), "![scale.out](previews/scale.out.png)") {
			t.Errorf("summary.md does not show the preview")
		}
	}
}

func TestSaveRefusesBadFormats(t *testing.T) {
	isolate(t)
	_, err := runner.Open(context.Background(), runner.Options{
		ConfigPath: writeConfig(t, "p.toml", grid+"[stages.a]\nkind = \"dummy.source\"\nsave = { out = [\"geoparquet\"] }\n[stages.t]\nkind = \"probe.table\"\nsave = { rows = \"cog\" }\n"),
		PluginDirs: []string{pluginsDir(t)}})
	if err == nil || !strings.Contains(err.Error(), `stages.a.save.out: format "geoparquet" cannot hold a grid output`) ||
		!strings.Contains(err.Error(), `stages.t.save.rows: format "cog" cannot hold a table output`) {
		t.Errorf("got %v", err)
	}
}

func TestUnwritableOutputDirFailsCleanly(t *testing.T) {
	isolate(t)
	notADir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notADir, nil, 0o644)
	sess, err := runner.Open(context.Background(), runner.Options{
		ConfigPath: writeConfig(t, "p.toml", grid+"[stages.a]\nkind = \"dummy.source\"\nsave = { out = \"cog\" }\n"),
		PluginDirs: []string{pluginsDir(t)}, OutDir: filepath.Join(notADir, "out")})
	if err != nil {
		t.Fatal(err)
	}
	res := sess.Run(context.Background())
	sess.Close()
	if res.Err() != nil {
		t.Fatal(res.Err())
	}
	if len(sess.RunErrors) == 0 || !strings.Contains(sess.RunErrors[0].Error(), "not a directory") {
		t.Errorf("dataset errors %v", sess.RunErrors)
	}
}

// A rerun whose outputs all come from the cache keeps the datasets already
// in place (same files, untouched), rewrites exactly those edited or removed
// since, and writes into a new directory from the cached bytes the same
// files as the first run did.
func TestDatasetsReusedWhenUnchanged(t *testing.T) {
	body, err := os.ReadFile(filepath.Join(testbin.ModuleRoot(), "examples", "dummy.toml"))
	if err != nil {
		t.Fatal(err)
	}
	isolate(t)
	cfg := writeConfig(t, "dummy.toml", string(body))
	cache := filepath.Join(t.TempDir(), "cache")
	run := func(out string) *runner.Session {
		t.Helper()
		sess, err := runner.Open(context.Background(), runner.Options{ConfigPath: cfg, PluginDirs: []string{pluginsDir(t)}, CacheDir: cache, OutDir: out})
		if err != nil {
			t.Fatal(err)
		}
		res := sess.Run(context.Background())
		sess.Close()
		if err := res.Err(); err != nil {
			t.Fatal(err)
		}
		if len(sess.RunErrors) > 0 {
			t.Fatal(sess.RunErrors)
		}
		return sess
	}
	type fileID struct {
		ino   uint64
		mtime int64
		sum   string
	}
	files := func(sess *runner.Session) map[string]fileID {
		t.Helper()
		m := map[string]fileID{}
		for _, a := range sess.Artifacts {
			p := filepath.Join(sess.Reports.Dir, filepath.FromSlash(a.Path))
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(p)
			if a.Key == "" || cacheDigest(b) != a.SHA256 {
				t.Fatalf("%s: key %q, recorded digest %s, file %s", a.Path, a.Key, a.SHA256, cacheDigest(b))
			}
			m[a.Path] = fileID{st.Sys().(*syscall.Stat_t).Ino, st.ModTime().UnixNano(), a.SHA256}
		}
		return m
	}
	out := filepath.Join(t.TempDir(), "out")
	first := files(run(out))
	if len(first) != 5 {
		t.Fatalf("artifacts %v", first)
	}
	second := files(run(out))
	for p, id := range first {
		if second[p] != id {
			t.Errorf("%s: rewritten by a fully cached rerun (%v, then %v)", p, id, second[p])
		}
	}
	// One file edited, one removed: those two, and only they, are written
	// again, with the bytes of the first run.
	edited, removed := "data/scale.out.npz", "data/points.points.parquet"
	f, err := os.OpenFile(filepath.Join(out, edited), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0})
	f.Close()
	if err := os.Remove(filepath.Join(out, removed)); err != nil {
		t.Fatal(err)
	}
	third := files(run(out))
	for p, id := range first {
		changed := third[p].ino != id.ino || third[p].mtime != id.mtime
		if want := p == edited || p == removed; changed != want {
			t.Errorf("%s: rewritten %v, want %v", p, changed, want)
		}
		if third[p].sum != id.sum {
			t.Errorf("%s: bytes differ from the first run's", p)
		}
	}
	// A new directory: everything written, from the cached bytes, the same.
	fresh := files(run(filepath.Join(t.TempDir(), "out2")))
	for p, id := range first {
		if fresh[p].sum != id.sum {
			t.Errorf("%s: written from the cache, bytes differ from the first run's", p)
		}
	}
}

// metadataStage is one stage of metadata.json, its members in the order
// the file has them.
type metadataStage struct {
	Kind       string             `json:"kind"`
	Version    string             `json:"version"`
	Plugin     string             `json:"plugin,omitempty"`
	Seed       uint64             `json:"seed"`
	Params     map[string]any     `json:"params"`
	Inputs     map[string]string  `json:"inputs,omitempty"`
	Status     string             `json:"status"`
	Cache      string             `json:"cache"`
	MissReason string             `json:"miss_reason,omitempty"`
	TimeNs     int64              `json:"time_ns"`
	PeakRSS    uint64             `json:"peak_rss_bytes,omitempty"`
	CPUNs      uint64             `json:"cpu_ns,omitempty"`
	Metrics    map[string]float64 `json:"metrics,omitempty"`
	Outputs    map[string]any     `json:"outputs,omitempty"`
	Error      string             `json:"error,omitempty"`
}

// checkMetadataEncoding fails unless metadata.json in dir is byte for byte
// what json.MarshalIndent writes for the same members (its stages are
// encoded by hand), and returns its stages.
func checkMetadataEncoding(t *testing.T, dir string) map[string]metadataStage {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "metadata.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(doc["stages"])))
	dec.DisallowUnknownFields()
	var stages map[string]metadataStage
	if err := dec.Decode(&stages); err != nil {
		t.Fatalf("metadata.json stages: %v", err)
	}
	if len(stages) == 0 {
		t.Fatal("metadata.json has no stages")
	}
	again := map[string]any{}
	for k, v := range doc {
		again[k] = v
	}
	again["stages"] = stages
	want, err := json.MarshalIndent(again, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != string(want) {
		t.Errorf("metadata.json is not what encoding/json writes for its members:\n%s\nwant\n%s", b, want)
	}
	return stages
}
