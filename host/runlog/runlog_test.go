package runlog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

func TestEveryLineIsValidJSON(t *testing.T) {
	p := filepath.Join(t.TempDir(), "logs", "run.jsonl")
	w, err := Create(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	nasty := "quote\" backslash\\ nl\n tab\t ctrl\x01 bad\xff utf8 ✓"
	w.Log(Event{Type: "run_start", Data: map[string]any{"config": "x.toml", "nan": nil}})
	w.Log(Event{Type: "span", Stage: "a", Name: nasty, ID: 2, Parent: 1, Start: 10, End: 25})
	w.Log(Event{Type: "progress", Stage: "a", Value: 0.5, Msg: nasty})
	w.Log(Event{Type: "log", Stage: "a", Level: "warn", Msg: nasty})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(p)
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %d %q: %v", n+1, sc.Text(), err)
		}
		if m["v"] != float64(SchemaVersion) {
			t.Errorf("line %d lacks the schema version", n+1)
		}
		if m["type"] == "span" && (m["dur_ns"] != float64(15) || m["parent"] != float64(1)) {
			t.Errorf("span encoded wrongly: %v", m)
		}
		if m["type"] == "log" && m["msg"] != "quote\" backslash\\ nl\n tab\t ctrl\x01 bad\ufffd utf8 ✓" {
			t.Errorf("message mangled: %q", m["msg"])
		}
		n++
	}
	if n != 4 {
		t.Errorf("%d lines, want 4", n)
	}
}

func TestFullQueueDropsInsteadOfBlocking(t *testing.T) {
	p := filepath.Join(t.TempDir(), "run.jsonl")
	w, err := Create(p, Options{Queue: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100000; i++ {
		w.Log(Event{Type: "progress"})
	}
	w.Close()
	if w.Dropped() == 0 {
		t.Log("writer kept up with 100k events on a 1-slot queue (fast machine)")
	}
	if w.Dropped()+w.written.Load() != 100000 {
		t.Errorf("dropped %d + written %d != 100000", w.Dropped(), w.written.Load())
	}
}

// BenchmarkLog is the caller's cost of one span event.
func BenchmarkLog(b *testing.B) {
	w, err := Create(filepath.Join(b.TempDir(), "run.jsonl"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w.Log(Event{Type: "span", Stage: "erode", Name: "tile", ID: uint64(i), Parent: 1, Start: 1, End: 2, TimeNs: 1})
	}
	b.StopTimer()
	w.Close()
	if d := w.Dropped(); d > 0 {
		b.ReportMetric(float64(d)/float64(b.N), "dropped/op")
	}
}

// BenchmarkSustained measures end-to-end throughput: every event is encoded
// and written (the queue drains at the writer's pace).
func BenchmarkSustained(b *testing.B) {
	w, err := Create(filepath.Join(b.TempDir(), "run.jsonl"), Options{Queue: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for w.backlog() >= kickAt {
			// Pace the producer to the writer so nothing is dropped.
			runtime.Gosched()
		}
		w.Log(Event{Type: "span", Stage: "erode", Name: "tile", ID: uint64(i), Parent: 1, Start: 1, End: 2, TimeNs: 1})
	}
	w.Close()
	b.StopTimer()
	if w.Dropped() != 0 {
		b.Fatalf("dropped %d", w.Dropped())
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

func BenchmarkAppend(b *testing.B) {
	buf := make([]byte, 0, 512)
	for i := 0; i < b.N; i++ {
		buf = Append(buf[:0], Event{Type: "span", Stage: "erode", Name: "tile", ID: uint64(i), Parent: 1, Start: 1, End: 2, TimeNs: 1})
	}
}

func (w *Writer) backlog() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending)
}

// An event waits at most FlushEvery before it is in the file, without
// Flush or Close; Flush writes at once; events after Close are dropped.
func TestEventsReachTheFileWithoutAKick(t *testing.T) {
	p := filepath.Join(t.TempDir(), "run.jsonl")
	w, err := Create(p, Options{FlushEvery: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	lines := func() int {
		b, _ := os.ReadFile(p)
		return bytes.Count(b, []byte("\n"))
	}
	w.Log(Event{Type: "progress"})
	deadline := time.Now().Add(5 * time.Second)
	for lines() != 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := lines(); n != 1 {
		t.Fatalf("%d lines after the flush interval, want 1", n)
	}
	w2, err := Create(filepath.Join(t.TempDir(), "b.jsonl"), Options{FlushEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		w2.Log(Event{Type: "progress"})
	}
	w2.Flush()
	if b, _ := os.ReadFile(w2.Path()); bytes.Count(b, []byte("\n")) != 3 {
		t.Errorf("Flush left events unwritten: %q", b)
	}
	w2.Close()
	w2.Log(Event{Type: "late"})
	if w2.Dropped() != 1 {
		t.Errorf("an event after Close: dropped %d, want 1", w2.Dropped())
	}
	w.Close()
}
