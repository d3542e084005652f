package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pipehost/pipehost/host/arena"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/internal/clock"
	"github.com/pipehost/pipehost/internal/tracemark"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// adoptWait bounds how long the host waits for the fd of a dynamic output
// the plugin named in its Result (it is sent before the Result).
const adoptWait = 10 * time.Second

// runStage runs one stage to completion and fills r.
func (e *Engine) runStage(ctx context.Context, n *plan.Node, r *StageResult, results []*StageResult) {
	if e.runRemote(ctx, n, r, results) {
		return
	}
	r.StartNs = clock.Now()
	p, release, err := e.lease(ctx, n)
	fail := func(err error) {
		r.Status = StatusFailed
		r.Err = stageError(n, p, err)
		r.EndNs = clock.Now()
		e.freeOutputs(r)
	}
	if err != nil {
		r.Status, r.EndNs = StatusFailed, clock.Now()
		r.Err = fmt.Errorf("stage %s (%s): %w", n.Name, n.Kind, err)
		e.freeOutputs(r)
		return
	}
	defer release()
	r.Plugin, r.Pid = p.Path(), p.Pid()
	for _, in := range n.Inputs {
		if o := results[in.From.Index].Outputs[in.Output.GetName()]; o != nil && o.Entry != nil {
			r.BytesIn += o.Entry.Size
		}
	}
	e.opts.Observer.StageStart(n, r)

	req := &pb.RunRequest{
		RunId:    e.plan.Config.RunID,
		Stage:    n.Name,
		Kind:     n.Kind,
		Params:   n.Params,
		Seed:     n.Seed,
		Topology: e.plan.Topology,
		Levels:   e.plan.Levels,
	}
	req.TraceMarker = tracemark.Path()
	// The segments' fds leave with the request (call).
	var fds []shm.Outgoing
	for _, op := range n.Desc.GetOutputs() {
		o := r.Outputs[op.GetName()]
		if o == nil {
			continue
		}
		req.Outputs = append(req.Outputs, e.bind(&fds, o.Entry, o.Handle, op.GetName()))
	}
	for _, in := range n.Inputs {
		o := results[in.From.Index].Outputs[in.Output.GetName()]
		if o == nil {
			fail(fmt.Errorf("input %q: %s produced no %q", in.Input.GetName(), in.From.Name, in.Output.GetName()))
			return
		}
		req.Inputs = append(req.Inputs, e.bind(&fds, o.Entry, o.Handle, in.Input.GetName()))
	}

	timeout := n.Config.Timeout
	if timeout == 0 {
		timeout = e.plan.Config.Timeout
	}
	if timeout == 0 {
		timeout = e.opts.Timeout
	}
	runCtx, cancel := ctx, context.CancelFunc(func() {})
	if timeout > 0 {
		runCtx, cancel = context.WithTimeoutCause(ctx, timeout, fmt.Errorf("stage timed out after %s", timeout))
	}
	defer cancel()

	res, err := e.call(runCtx, n, p, req, fds)
	if err != nil {
		// gRPC sends the deadline to the plugin, whose side may reset the
		// stream a moment before the host's own timer fires.
		if dl, ok := runCtx.Deadline(); ok && time.Until(dl) < 100*time.Millisecond {
			<-runCtx.Done()
		}
		if cause := context.Cause(runCtx); cause != nil && ctx.Err() == nil {
			err = cause
			// A stage that ignores cancellation must not keep the plugin busy.
			p.Kill()
		} else if ctx.Err() != nil {
			err = fmt.Errorf("stopped: %v", context.Cause(ctx))
		}
		fail(err)
		return
	}
	r.Stats, r.Metrics = res.GetStats(), res.GetMetrics()
	for _, op := range n.Desc.GetOutputs() {
		o := r.Outputs[op.GetName()]
		if o == nil {
			continue
		}
		if err := e.arena.Seal(o.Entry.ID); err != nil {
			fail(fmt.Errorf("output %q: %w", op.GetName(), err))
			return
		}
	}
	if err := e.adopt(ctx, n, p, res, r); err != nil {
		fail(err)
		return
	}
	for _, o := range r.Outputs {
		r.BytesOut += o.Entry.Size
	}
	r.Status = StatusOK
	r.EndNs = clock.Now()
}

// bind names a segment for the plugin under a fresh token: the binding for
// the request, and the SEGMENT message (with its fd) added to fds.
func (e *Engine) bind(fds *[]shm.Outgoing, ent *arena.Entry, h *pb.Handle, port string) *pb.Binding {
	tok := e.tokens.Next()
	msg := shm.Message{Type: shm.MsgSegment, Token: tok, SegmentID: ent.ID, Size: uint64(ent.Size)}
	*fds = append(*fds, shm.Outgoing{Msg: msg, FD: ent.Segment.FD()})
	return &pb.Binding{Port: port, Handle: h, FdToken: tok}
}

// call runs the RPC and forwards events until the Result.
func (e *Engine) call(ctx context.Context, n *plan.Node, p Process, req *pb.RunRequest, segs []shm.Outgoing) (*pb.Result, error) {
	stream, err := p.Run(ctx, req, segs)
	if err != nil {
		return nil, rpcError(err)
	}
	var result *pb.Result
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, rpcError(err)
		}
		if res := ev.GetResult(); res != nil {
			if result != nil {
				return nil, errors.New("protocol violation: the plugin sent two results")
			}
			result = res
			continue
		}
		e.opts.Observer.StageEvent(n, ev)
	}
	if result == nil {
		return nil, errors.New("protocol violation: the plugin ended the run without a result")
	}
	return result, nil
}

// rpcError keeps a failed call's gRPC status for classification
// (status.Code, errors.As) while its text stays the plugin's own message.
func rpcError(err error) error {
	if s, ok := status.FromError(err); ok {
		return &StatusError{st: s}
	}
	return err
}

// StatusError is a stage call that ended with a gRPC status: the plugin's
// answer (InvalidArgument for params it refused, Aborted for the stage's
// own failure, ...) or the transport's (Unavailable: the connection broke).
// status.Code and status.FromError see its code through any wrapping.
type StatusError struct{ st *status.Status }

func (e *StatusError) Error() string              { return e.st.Message() }
func (e *StatusError) GRPCStatus() *status.Status { return e.st }

// Code is the call's gRPC status code.
func (e *StatusError) Code() codes.Code { return e.st.Code() }

// adopt takes ownership of the plugin-created segments named in the result.
func (e *Engine) adopt(ctx context.Context, n *plan.Node, p Process, res *pb.Result, r *StageResult) error {
	ctx, cancel := context.WithTimeout(ctx, adoptWait)
	defer cancel()
	for _, b := range res.GetDynamicOutputs() {
		op := n.OutputPort(b.GetPort())
		if op == nil || op.GetKind() == pb.PortKind_PORT_KIND_GRID {
			return fmt.Errorf("protocol violation: dynamic output %q is not a table or blob output of %s", b.GetPort(), n.Kind)
		}
		if r.Outputs[b.GetPort()] != nil {
			return fmt.Errorf("protocol violation: output %q returned twice", b.GetPort())
		}
		msg, fd, err := p.TakeSegment(ctx, b.GetFdToken())
		if err != nil {
			return fmt.Errorf("dynamic output %q: %w", b.GetPort(), err)
		}
		ent, err := e.arena.Adopt(fd, n.Name, e.claimants(n, b.GetPort()), e.keep(n, b.GetPort()))
		if err != nil {
			// Adopt closed fd: closing it again could close another's.
			return fmt.Errorf("dynamic output %q: %w", b.GetPort(), err)
		}
		r.Outputs[b.GetPort()] = newOutput(ent, nil)
		if uint64(ent.Size) != msg.Size {
			return fmt.Errorf("protocol violation: dynamic output %q announced %d bytes, its segment has %d", b.GetPort(), msg.Size, ent.Size)
		}
		h := b.GetHandle()
		if h == nil {
			h = &pb.Handle{}
		}
		h.SegmentId = ent.ID
		if err := shm.Validate(h, uint64(ent.Size)); err != nil {
			return fmt.Errorf("dynamic output %q: %w", b.GetPort(), err)
		}
		if want := pb.PortKind_PORT_KIND_TABLE; op.GetKind() == want && h.GetFormat() != pb.Format_FORMAT_ARROW_IPC {
			return fmt.Errorf("protocol violation: table output %q is not in Arrow IPC format", b.GetPort())
		}
		if err := e.arena.Seal(ent.ID); err != nil {
			return fmt.Errorf("dynamic output %q: %w", b.GetPort(), err)
		}
		r.Outputs[b.GetPort()].Handle = h
	}
	for _, op := range n.Desc.GetOutputs() {
		if r.Outputs[op.GetName()] == nil {
			return fmt.Errorf("the stage returned no %q output", op.GetName())
		}
	}
	return nil
}

// consumerNames lists the distinct stages reading an output port.
func consumerNames(n *plan.Node, port string) []string {
	var names []string
	for _, e := range n.ConsumersOf(port) {
		if !slices.Contains(names, e.To.Name) {
			names = append(names, e.To.Name)
		}
	}
	return names
}

// keep says whether an output outlives its consumers: saved outputs are
// written as datasets at the end of the run.
func (e *Engine) keep(n *plan.Node, port string) bool {
	for _, s := range n.Config.Save {
		if s.Port == port {
			return true
		}
	}
	return false
}
