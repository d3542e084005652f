package pluginmgr

import (
	"context"
	"fmt"
	"io"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// EnvRunOverGRPC, set to any value in the host's environment, makes every
// run use the gRPC Run call even with plugins that take runs on their fd
// channel: for comparing the two, and as a way back should a plugin's
// channel path misbehave.
const EnvRunOverGRPC = "PIPEHOST_RUN_OVER_GRPC"

// channelRuns is a plugin's table of runs in flight on its fd channel.
type channelRuns struct {
	mu   sync.Mutex
	next uint64
	runs map[uint64]*ChannelRun
	// news lists the runs that got messages since the reader last ran
	// dry; they are woken then (wakeRuns), once each. held counts those
	// messages.
	news []*ChannelRun
	held int
}

// wakeAfter bounds how many messages wait for the reader to run dry: the
// events of a plugin that sends without pause are still taken as they
// come, and never pile up unread.
const wakeAfter = 32

// ChannelRun is one run sent on a plugin's fd channel: the stream of its
// events, as the gRPC Run call's would be.
type ChannelRun struct {
	p     *Plugin
	token uint64
	ctx   context.Context

	mu     sync.Mutex
	queue  [][]byte // EVENT payloads not yet received
	end    *pb.RunEnd
	wake   chan struct{}
	closed bool // the host gave up on it (error, cancellation)
	news   bool // listed in channelRuns.news; under channelRuns.mu
}

// RunEvents is a run's stream of events, whichever way it travels: Recv
// returns them in order, then io.EOF, or the run's error as a gRPC status.
type RunEvents interface {
	Recv() (*pb.RunEvent, error)
}

// Run starts a run on the fd channel when the plugin takes runs there
// (ChannelRuns), else over the gRPC Run call. The caller must have sent every
// fd the request names first, and must Recv until an error or io.EOF.
func (p *Plugin) Run(ctx context.Context, req *pb.RunRequest) (RunEvents, error) {
	return p.RunWithSegments(ctx, req, nil)
}

// RunWithSegments is Run with the SEGMENT messages of the fds req names
// that have not been sent yet. On the fd channel they leave with the RUN in
// one sendmmsg(2), the plugin then wakes once for the whole run; over gRPC
// they are sent before the call.
func (p *Plugin) RunWithSegments(ctx context.Context, req *pb.RunRequest, segs []shm.Outgoing) (RunEvents, error) {
	if p.ChannelRuns {
		r, err := p.runOnChannel(ctx, req, segs)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return r, nil
	}
	if len(segs) > 0 {
		if err := p.Channel.SendBatch(segs); err != nil {
			return nil, status.Errorf(codes.Unavailable, "sending the run's segments to the plugin: %v", err)
		}
	}
	s, err := p.Client.Run(ctx, req)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// RunOnChannel sends req as a RUN on the fd channel. The caller must have
// sent every fd the request names first (they travel on the same socket,
// so the plugin has them when it reads the RUN), and must Recv until an
// error or io.EOF.
func (p *Plugin) RunOnChannel(ctx context.Context, req *pb.RunRequest) (*ChannelRun, error) {
	return p.runOnChannel(ctx, req, nil)
}

func (p *Plugin) runOnChannel(ctx context.Context, req *pb.RunRequest, segs []shm.Outgoing) (*ChannelRun, error) {
	b, err := proto.Marshal(req)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encoding the run request: %v", err)
	}
	r := &ChannelRun{p: p, ctx: ctx, wake: make(chan struct{}, 1)}
	p.chanRuns.mu.Lock()
	p.chanRuns.next++
	r.token = p.chanRuns.next
	if p.chanRuns.runs == nil {
		p.chanRuns.runs = map[uint64]*ChannelRun{}
	}
	p.chanRuns.runs[r.token] = r
	p.chanRuns.mu.Unlock()
	// The segments first: the plugin has filed every fd when it reads the RUN.
	batch := append(segs[:len(segs):len(segs)], shm.Outgoing{Msg: shm.Message{Type: shm.MsgRun, Token: r.token}, FD: -1, Payload: b})
	if err := p.Channel.SendBatch(batch); err != nil {
		r.forget()
		return nil, status.Errorf(codes.Unavailable, "sending the run to the plugin: %v", err)
	}
	return r, nil
}

// route is the fd channel's handler for EVENT and END. It runs on the
// channel's reader and only queues: decoding happens in Recv.
func (p *Plugin) route(m shm.Message, payload []byte) error {
	if m.Type != shm.MsgEvent && m.Type != shm.MsgEnd {
		return fmt.Errorf("%w: the host never receives %v", shm.ErrProtocol, m.Type)
	}
	p.chanRuns.mu.Lock()
	r := p.chanRuns.runs[m.Token]
	if m.Type == shm.MsgEnd {
		delete(p.chanRuns.runs, m.Token)
	}
	p.chanRuns.mu.Unlock()
	if r == nil {
		return nil // a run the host gave up on: its late words go nowhere
	}
	r.mu.Lock()
	if m.Type == shm.MsgEvent {
		r.queue = append(r.queue, payload)
	} else {
		r.end = &pb.RunEnd{}
		if err := proto.Unmarshal(payload, r.end); err != nil {
			r.end = &pb.RunEnd{Code: int32(codes.Internal), Message: fmt.Sprintf("protocol violation: the run's END does not decode: %v", err)}
		}
	}
	r.mu.Unlock()
	p.chanRuns.mu.Lock()
	if !r.news {
		r.news = true
		p.chanRuns.news = append(p.chanRuns.news, r)
	}
	p.chanRuns.held++
	full := p.chanRuns.held >= wakeAfter
	p.chanRuns.mu.Unlock()
	if full {
		p.wakeRuns()
	}
	return nil
}

// wakeRuns wakes every run with news. It runs on the channel's reader when
// it has read everything that arrived (Mailbox.OnIdle), so a Result and the
// END sent with it wake the run's reader once, after both are queued.
func (p *Plugin) wakeRuns() {
	p.chanRuns.mu.Lock()
	news := p.chanRuns.news
	p.chanRuns.news, p.chanRuns.held = nil, 0
	for _, r := range news {
		r.news = false
	}
	p.chanRuns.mu.Unlock()
	for _, r := range news {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// Recv returns the run's next event; io.EOF after a successful END; a gRPC
// status error after a failed one, when ctx ends (the plugin is sent a
// CANCEL) or when the channel ends.
func (r *ChannelRun) Recv() (*pb.RunEvent, error) {
	gone := false
	for {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return nil, status.Error(codes.Canceled, "the run was abandoned")
		}
		if len(r.queue) > 0 {
			b := r.queue[0]
			r.queue[0] = nil
			r.queue = r.queue[1:]
			r.mu.Unlock()
			ev := &pb.RunEvent{}
			if err := proto.Unmarshal(b, ev); err != nil {
				r.abandon()
				return nil, status.Errorf(codes.Internal, "protocol violation: a run event does not decode: %v", err)
			}
			return ev, nil
		}
		if end := r.end; end != nil {
			r.mu.Unlock()
			if end.GetCode() == 0 {
				return nil, io.EOF
			}
			return nil, status.Error(codes.Code(end.GetCode()), end.GetMessage())
		}
		r.mu.Unlock()
		if gone {
			r.forget()
			return nil, status.Errorf(codes.Unavailable, "the plugin's fd channel ended during the run: %v", r.p.Mailbox.Err())
		}
		select {
		case <-r.wake:
		case <-r.p.Mailbox.Done():
			gone = true // one more look: what came before the end is kept
		case <-r.ctx.Done():
			r.abandon()
			return nil, status.FromContextError(r.ctx.Err()).Err()
		}
	}
}

// abandon stops waiting for the run and tells the plugin to cancel it.
func (r *ChannelRun) abandon() {
	if r.forget() {
		// Best effort: a channel that cannot take it is broken, and the
		// plugin goes with it.
		_ = r.p.Channel.Send(shm.Message{Type: shm.MsgCancel, Token: r.token}, -1)
	}
}

// forget drops the run from the table; it reports whether the plugin may
// still be running it (no END came).
func (r *ChannelRun) forget() bool {
	r.p.chanRuns.mu.Lock()
	_, live := r.p.chanRuns.runs[r.token]
	delete(r.p.chanRuns.runs, r.token)
	r.p.chanRuns.mu.Unlock()
	r.mu.Lock()
	r.closed, r.queue = true, nil
	r.mu.Unlock()
	return live
}
