package engine

import (
	"context"
	"time"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// Process is a running process that runs stages: the seam between the
// engine's scheduling (admission, pools, relaunch, cache) and how a stage
// is executed. The plugin manager's processes are one implementation
// (pluginProcess); the engine's own tests use a fake one.
//
// Implementations must be comparable and stable: the engine keys its
// process pools on the values it is handed.
type Process interface {
	// Path names the executable: it keys the process pools and relaunches,
	// and names the process in failure reports.
	Path() string
	// Pid identifies the process in reports.
	Pid() int
	// Digest is the executable's content digest, part of every cache key.
	Digest() string
	// Run starts a stage, handing the process first the segments' fds
	// with their announcements (SEGMENT messages), which the RunRequest
	// refers to by token. The stream yields its events, then its Result,
	// then io.EOF; a failed stage ends it with a gRPC status error.
	Run(ctx context.Context, req *pb.RunRequest, segs []shm.Outgoing) (RunStream, error)
	// TakeSegment waits for the segment the process sent under token (a
	// dynamic output); the caller owns the returned fd.
	TakeSegment(ctx context.Context, token uint64) (shm.Message, int, error)
	// Exited reports whether the process has ended.
	Exited() bool
	// WaitExited waits up to d for the process to end; true if it has.
	WaitExited(d time.Duration) bool
	// ExitStatus says how the process ended ("exit status 2", "signal:
	// killed"), or "" while it runs.
	ExitStatus() string
	// StderrTail returns the last n lines the process wrote to stderr
	// (after letting a dead process's last lines arrive).
	StderrTail(n int) []string
	// Kill ends the process and everything it started; it returns once
	// nothing of it is left. Safe to call many times.
	Kill()
}

// RunStream is a running stage's event stream.
type RunStream interface {
	Recv() (*pb.RunEvent, error)
}

// Launcher starts another process of an executable: for a process pool,
// or to replace one that died.
type Launcher interface {
	Launch(ctx context.Context, path string) (Process, error)
}

// Processes says which running process serves each stage kind.
type Processes interface {
	// Process returns the main process offering kind.
	Process(kind string) (Process, bool)
}
