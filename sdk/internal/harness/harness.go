// Package harness joins package sdk to its in-process test harness
// (package sdktest) without widening sdk's public API: sdk fills in the
// functions below when it is initialised.
package harness

import (
	"context"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// Output is a dynamic output (table or blob of unknown size) the stage
// handed over; Token matches the FdToken of its binding in the Result.
type Output struct {
	Port  string
	Token uint64
	Seg   *shm.Segment
}

// Describe returns the descriptor of stage (an sdk.Stage), or false when
// stage is not one built with sdk.Define.
var Describe func(stage any) (*pb.StageDescriptor, bool)

// Run runs stage (an sdk.Stage) for req in this process, exactly as the
// plugin server would, with the segments of req's bindings given by port
// instead of received on the fd channel. Run owns every segment in inputs
// and outputs (closes them, also on error); the caller keeps its own
// duplicates. Every event of the Run goes to send, the Result last.
var Run func(ctx context.Context, stage any, req *pb.RunRequest, inputs, outputs map[string]*shm.Segment,
	send func(*pb.RunEvent) error) ([]Output, error)
