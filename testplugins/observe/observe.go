// Package observe lets test stages record what they saw, as JSON lines in a
// file the test names, so tests assert from the plugins' side rather than
// from the host's plan.
package observe

import (
	"encoding/json"
	"os"

	"github.com/pipehost/pipehost/internal/clock"
)

// Record is one stage execution as seen from inside the plugin.
type Record struct {
	Stage   string             `json:"stage"`
	Kind    string             `json:"kind"`
	Pid     int                `json:"pid"`
	Seed    uint64             `json:"seed"`
	StartNs int64              `json:"start_ns"`
	EndNs   int64              `json:"end_ns"`
	Inputs  map[string]float64 `json:"inputs,omitempty"`  // port → sum of elements
	Outputs map[string]float64 `json:"outputs,omitempty"` // port → sum of elements
	Extra   map[string]any     `json:"extra,omitempty"`
}

// Now is the clock records use (CLOCK_MONOTONIC ns, shared by processes).
func Now() int64 { return clock.Now() }

// Append writes r as one line to path (no-op for an empty path). O_APPEND
// keeps lines from concurrent processes whole.
func Append(path string, r Record) error {
	if path == "" {
		return nil
	}
	r.Pid = os.Getpid()
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Write(append(b, '\n'))
	return err
}

// Sum adds up a grid's elements in float64.
func Sum(data []float32) float64 {
	var s float64
	for _, v := range data {
		s += float64(v)
	}
	return s
}
