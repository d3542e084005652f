package sdk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// Runs on the fd channel (docs/protocol.md, "Runs on the fd channel"): the
// host sends a RUN with the RunRequest, the plugin answers with EVENTs and
// one END. The stage runs exactly as for the gRPC Run call; only the
// transport differs: one socket write and one wake-up each way instead of
// HTTP/2 streams, which cost more than a small stage does.

// errHostCancelled is the cause a stage's context carries after a CANCEL.
var errHostCancelled = errors.New("the host cancelled the run")

// channelRuns tracks the runs in flight on the fd channel, to cancel them.
type channelRuns struct {
	mu     sync.Mutex
	cancel map[uint64]context.CancelCauseFunc
	// idle hands a run to a goroutine that ran one before and waits for
	// the next: its stack has already grown to what a run needs, where a
	// new goroutine would grow it (copying it each time) on every run.
	idle chan func()
}

// start runs f on an idle run goroutine, or on a new one when all are busy.
// There are as many as runs were ever in flight at once, which the host's
// job count bounds.
func (r *channelRuns) start(f func()) {
	select {
	case r.idle <- f:
	default:
		go func() {
			for {
				f()
				f = <-r.idle
			}
		}()
	}
}

// route is the fd channel's handler for RUN and CANCEL. It runs on the
// channel's reader, so a run goes to a goroutine of its own.
func (s *server) route(m shm.Message, payload []byte) error {
	switch m.Type {
	case shm.MsgRun:
		ctx, cancel := context.WithCancelCause(context.Background())
		s.runs.mu.Lock()
		if _, dup := s.runs.cancel[m.Token]; dup {
			s.runs.mu.Unlock()
			cancel(nil)
			return fmt.Errorf("%w: RUN token %#x is already running", shm.ErrProtocol, m.Token)
		}
		if s.runs.cancel == nil {
			s.runs.cancel = map[uint64]context.CancelCauseFunc{}
			s.runs.idle = make(chan func())
		}
		s.runs.cancel[m.Token] = cancel
		s.runs.mu.Unlock()
		s.runs.start(func() { s.channelRun(ctx, m.Token, payload) })
	case shm.MsgCancel:
		s.runs.mu.Lock()
		if cancel := s.runs.cancel[m.Token]; cancel != nil {
			cancel(errHostCancelled)
		}
		s.runs.mu.Unlock()
	default:
		return fmt.Errorf("%w: a plugin never receives %v", shm.ErrProtocol, m.Type)
	}
	return nil
}

// channelRun runs one RUN to its END.
func (s *server) channelRun(ctx context.Context, token uint64, payload []byte) {
	restoreStdio()
	ch := s.data.ch
	defer func() {
		s.runs.mu.Lock()
		cancel := s.runs.cancel[token]
		delete(s.runs.cancel, token)
		s.runs.mu.Unlock()
		cancel(nil)
	}()
	// The Result is held back and leaves with the END, in one write: the
	// host waits for the END anyway, and wakes once instead of twice.
	var result []byte
	end := func(code codes.Code, msg string) {
		b, err := proto.Marshal(&pb.RunEnd{Code: int32(code), Message: msg})
		if err == nil {
			batch := make([]shm.Outgoing, 0, 2)
			if result != nil {
				batch = append(batch, shm.Outgoing{Msg: shm.Message{Type: shm.MsgEvent, Token: token}, FD: -1, Payload: result})
			}
			batch = append(batch, shm.Outgoing{Msg: shm.Message{Type: shm.MsgEnd, Token: token}, FD: -1, Payload: b})
			err = ch.SendBatch(batch)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "pipehost plugin: ending run %#x: %v\n", token, err)
		}
	}
	req := &pb.RunRequest{}
	if err := proto.Unmarshal(payload, req); err != nil {
		end(codes.InvalidArgument, fmt.Sprintf("the run request does not decode: %v", err))
		return
	}
	st, ok := s.stages[req.GetKind()]
	if !ok {
		end(codes.NotFound, fmt.Sprintf("this plugin has no stage kind %q", req.GetKind()))
		return
	}
	send := func(ev *pb.RunEvent) error {
		b, err := proto.Marshal(ev)
		if err != nil {
			return fmt.Errorf("encoding a run event: %w", err)
		}
		if ev.GetResult() != nil {
			result = b // sent with the END
			return nil
		}
		return ch.SendPayload(shm.MsgEvent, token, b)
	}
	bind := func(ctx context.Context) (*runData, error) { return s.data.bind(ctx, req) }
	if err := s.runStage(ctx, st, req, send, bind); err != nil {
		if err.wire {
			// The channel is gone: the host will not read an END, and the
			// data plane's watcher ends this process.
			return
		}
		end(err.code, err.Error())
		return
	}
	end(codes.OK, "")
}
