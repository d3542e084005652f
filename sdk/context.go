package sdk

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pipehost/pipehost/internal/clock"
	"github.com/pipehost/pipehost/internal/tracemark"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/sdk/seed"
	"github.com/pipehost/pipehost/topology"
)

// Context is what a stage's run function gets: a context.Context that is
// cancelled when the host cancels the stage, plus the stage's identity,
// seed, grid, data and reporting.
type Context struct {
	context.Context

	req  *pb.RunRequest
	desc *pb.StageDescriptor
	send func(*pb.RunEvent) error
	data *runData

	spanMu   sync.Mutex
	spanNext atomic.Uint64
	stack    []uint64

	// markers: the host asked for trace markers and the file is open.
	// markerBase makes async-slice cookies unique in the process.
	markers    bool
	markerBase uint64

	progressMu   sync.Mutex
	lastProgress time.Time

	metricsMu sync.Mutex
	metrics   map[string]float64
}

// RunID is the id of the pipeline run.
func (c *Context) RunID() string { return c.req.GetRunId() }

// Stage is the stage instance name from the pipeline config.
func (c *Context) Stage() string { return c.req.GetStage() }

// Kind is the stage kind being run.
func (c *Context) Kind() string { return c.req.GetKind() }

// Seed is the stage's 64-bit seed, derived by the host from the run seed and
// the stage name; the same on every machine and in every SDK.
func (c *Context) Seed() uint64 { return c.req.GetSeed() }

// Attempt is 0 for the first attempt of this stage in a run.
func (c *Context) Attempt() int { return int(c.req.GetAttempt()) }

// Levels is the run's grid pyramid, level 0 (native) first.
func (c *Context) Levels() []topology.Level {
	var out []topology.Level
	for _, g := range c.req.GetLevels() {
		out = append(out, topology.LevelFromProto(g))
	}
	return out
}

// Progress reports the fraction (0..1) of the stage's work done. Calls are
// cheap: the SDK sends at most one update every 50 ms, plus the last one.
func (c *Context) Progress(fraction float64, message string) {
	c.progressMu.Lock()
	now := time.Now()
	if fraction < 1 && now.Sub(c.lastProgress) < 50*time.Millisecond {
		c.progressMu.Unlock()
		return
	}
	c.lastProgress = now
	c.progressMu.Unlock()
	_ = c.send(&pb.RunEvent{Event: &pb.RunEvent_Progress{Progress: &pb.Progress{Fraction: fraction, Message: message}}})
}

// Log sends a log line to the host's run log, attributed to this stage.
func (c *Context) Log(level LogLevel, format string, args ...any) {
	_ = c.send(&pb.RunEvent{Event: &pb.RunEvent_Log{Log: &pb.LogLine{
		Level: pb.LogLevel(level), Message: fmt.Sprintf(format, args...), TimeNs: clock.Now(),
	}}})
}

// Debugf logs at debug level.
func (c *Context) Debugf(format string, args ...any) { c.Log(LevelDebug, format, args...) }

// Infof logs at info level.
func (c *Context) Infof(format string, args ...any) { c.Log(LevelInfo, format, args...) }

// Warnf logs at warning level.
func (c *Context) Warnf(format string, args ...any) { c.Log(LevelWarn, format, args...) }

// Metric records a number for the run log (the last value per name wins).
func (c *Context) Metric(name string, value float64) {
	c.metricsMu.Lock()
	if c.metrics == nil {
		c.metrics = map[string]float64{}
	}
	c.metrics[name] = value
	c.metricsMu.Unlock()
}

// Span is a timed subtask. End it exactly once.
type Span struct {
	c      *Context
	id     uint64
	parent uint64
	name   string
	start  int64
	ended  atomic.Bool
	nested bool
}

// Timed starts a subtask span nested under the innermost span still open
// in this stage (or at the top) and returns the function that ends it:
//
//	defer c.Timed("erode")()
//
// For spans started from several goroutines, use StartSpan and Span.Child,
// whose parents are explicit.
func (c *Context) Timed(name string) func() {
	c.spanMu.Lock()
	var parent uint64
	if n := len(c.stack); n > 0 {
		parent = c.stack[n-1]
	}
	s := c.newSpan(name, parent, true)
	c.stack = append(c.stack, s.id)
	c.spanMu.Unlock()
	return s.End
}

// StartSpan starts a top-level span with an explicit lifetime.
func (c *Context) StartSpan(name string) *Span { return c.newSpan(name, 0, false) }

// Child starts a span whose parent is s.
func (s *Span) Child(name string) *Span { return s.c.newSpan(name, s.id, false) }

func (c *Context) newSpan(name string, parent uint64, nested bool) *Span {
	s := &Span{c: c, id: c.spanNext.Add(1), parent: parent, name: name, nested: nested}
	if c.markers {
		if nested {
			// B and E nest per thread: keep this goroutine on its thread
			// until the span ends (Timed spans end on their goroutine).
			runtime.LockOSThread()
			tracemark.Begin(name)
		} else {
			// An explicit span may end on another goroutine: async slice.
			tracemark.AsyncBegin(name, c.markerBase|s.id)
		}
	}
	s.start = clock.Now()
	return s
}

var markerBases atomic.Uint64

// beginStageMarker writes the stage's begin marker when the host asked for
// trace markers, and returns what writes its end. The Run goroutine stays
// on its thread in between, so the stage slice holds its Timed spans.
func (c *Context) beginStageMarker() func() {
	p := c.req.GetTraceMarker()
	if p == "" {
		return func() {}
	}
	if err := tracemark.Open(p); err != nil {
		markerWarn.Do(func() { fmt.Fprintf(os.Stderr, "%v; no trace markers from this plugin\n", err) })
		return func() {}
	}
	c.markers = true
	c.markerBase = markerBases.Add(1) << 32
	runtime.LockOSThread()
	tracemark.Begin(c.req.GetStage())
	return func() {
		tracemark.End()
		runtime.UnlockOSThread()
	}
}

var markerWarn sync.Once

// End ends the span and sends it to the host. Extra calls do nothing.
func (s *Span) End() {
	if s.ended.Swap(true) {
		return
	}
	end := clock.Now()
	if s.c.markers {
		if s.nested {
			tracemark.End()
			runtime.UnlockOSThread()
		} else {
			tracemark.AsyncEnd(s.name, s.c.markerBase|s.id)
		}
	}
	if s.nested {
		c := s.c
		c.spanMu.Lock()
		for i := len(c.stack) - 1; i >= 0; i-- {
			if c.stack[i] == s.id {
				c.stack = append(c.stack[:i], c.stack[i+1:]...)
				break
			}
		}
		c.spanMu.Unlock()
	}
	_ = s.c.send(&pb.RunEvent{Event: &pb.RunEvent_Span{Span: &pb.Span{
		Id: s.id, ParentId: s.parent, Name: s.name, StartNs: s.start, EndNs: end,
	}}})
}

// Rand returns the stage's deterministic random stream. Use Fork(i) or
// Child("label") for independent sub-streams (per tile, per row) so
// parallel code inside a stage stays deterministic; see docs/seeds.md.
func (c *Context) Rand() seed.Stream { return seed.New(c.Seed()) }

// Topology returns the run's grid topology at the native resolution:
// wrap rules, neighbours, coordinates, cell areas, sampling. Use
// Topology().WithSize(w, h) for a coarser pyramid level.
func (c *Context) Topology() (topology.Topology, error) {
	levels := c.req.GetLevels()
	if len(levels) == 0 {
		return nil, fmt.Errorf("the run has no grid")
	}
	return topology.FromProto(c.req.GetTopology(), int(levels[0].GetWidth()), int(levels[0].GetHeight()))
}
