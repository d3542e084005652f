package runner

import (
	"sync/atomic"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/internal/tracemark"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// markerObserver writes the host's side of every stage to trace_marker: an
// async slice per stage as the host ran it (S/F rather than B/E: starts and
// ends arrive on whichever goroutine the engine used, and B/E nest per
// thread), and the run's bytes in and out so far as counters.
type markerObserver struct {
	started []atomic.Bool
	in, out atomic.Int64
}

func newMarkerObserver(p *plan.Plan) *markerObserver {
	return &markerObserver{started: make([]atomic.Bool, len(p.Nodes))}
}

// The cookie only has to tell apart slices of one name in this process.
func cookie(n *plan.Node) uint64 { return uint64(n.Index) + 1 }

func (m *markerObserver) StageStart(n *plan.Node, r *engine.StageResult) {
	m.started[n.Index].Store(true)
	tracemark.AsyncBegin(n.Name, cookie(n))
	tracemark.Counter("pipehost bytes_in", m.in.Add(r.BytesIn))
}

func (m *markerObserver) StageEvent(*plan.Node, *pb.RunEvent) {}

// StageEnd closes the slice of a stage that was sent to a plugin; cache hits
// and skipped stages never started one.
func (m *markerObserver) StageEnd(n *plan.Node, r *engine.StageResult) {
	if !m.started[n.Index].Load() {
		return
	}
	tracemark.AsyncEnd(n.Name, cookie(n))
	tracemark.Counter("pipehost bytes_out", m.out.Add(r.BytesOut))
}
