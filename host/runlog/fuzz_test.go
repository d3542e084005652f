package runlog

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

// FuzzAppendDecodes: whatever strings and numbers an event carries (plugin
// log lines are arbitrary bytes), its line decodes as JSON and gives back
// the same strings (each invalid byte as U+FFFD) and numbers.
func FuzzAppendDecodes(f *testing.F) {
	f.Add("plugin_log", "stage", "name", "info", "hello \"world\"\n\t\x00", int64(5), uint64(7), 0.5)
	f.Add("progress", "", "\xff\xfe", "", "\u2028 \\ </script>", int64(-1), uint64(0), math.Inf(1))
	f.Fuzz(func(t *testing.T, typ, stage, name, level, msg string, start int64, id uint64, value float64) {
		e := Event{Type: typ, Stage: stage, Name: name, Level: level, Msg: msg, Start: start, End: start + 3, ID: id, Value: value, TimeNs: 1}
		line := Append(nil, e)
		if strings.ContainsAny(string(line), "\n\r") {
			t.Fatalf("a raw newline in one line: %q", line)
		}
		var got struct {
			V        int      `json:"v"`
			Type     string   `json:"type"`
			Stage    string   `json:"stage"`
			Name     string   `json:"name"`
			Level    string   `json:"level"`
			Msg      string   `json:"msg"`
			ID       uint64   `json:"id"`
			StartNs  int64    `json:"start_ns"`
			Fraction *float64 `json:"fraction"`
		}
		if err := json.Unmarshal(line, &got); err != nil {
			t.Fatalf("line %q does not decode: %v", line, err)
		}
		// Each invalid byte becomes one U+FFFD, as ranging over a string does.
		valid := func(s string) string { return string([]rune(s)) }
		if got.V != SchemaVersion || got.Type != valid(typ) || got.Stage != valid(stage) || got.Name != valid(name) ||
			got.Level != valid(level) || got.Msg != valid(msg) || got.ID != id || got.StartNs != start {
			t.Fatalf("round trip of %+v gave %+v (line %q)", e, got, line)
		}
		if typ == "progress" && !math.IsNaN(value) && !math.IsInf(value, 0) && (got.Fraction == nil || *got.Fraction != value) {
			t.Fatalf("fraction %v came back as %v", value, got.Fraction)
		}
	})
}
