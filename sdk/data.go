package sdk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// fdWait bounds how long a Run waits for an fd the host announced: the fd is
// sent before the Run call, so only a broken host makes this expire.
const fdWait = 10 * time.Second

// dataPlane is the plugin's end of the fd channel.
type dataPlane struct {
	ch     *shm.Channel
	mb     *shm.Mailbox
	tokens *shm.Tokens
}

func openDataPlane() (*dataPlane, error) {
	ch, err := shm.ChannelFromEnv()
	if err != nil {
		return nil, err
	}
	dp := &dataPlane{ch: ch, mb: shm.NewMailbox(ch), tokens: shm.PluginTokens()}
	// Read os.Stderr now: go-plugin's Serve reassigns it later, and reading
	// it from the goroutine below would race with that write.
	stderr := os.Stderr
	go func() {
		// The host closed the channel or died: nobody will read our results.
		<-dp.mb.Done()
		code := 0
		if !errors.Is(dp.mb.Err(), shm.ErrPeerClosed) {
			fmt.Fprintln(stderr, "pipehost plugin: host is gone:", dp.mb.Err())
			code = 3
		}
		os.Exit(code)
	}()
	return dp, nil
}

// buffer is one bound input or output of a Run.
type buffer struct {
	binding *pb.Binding
	seg     *shm.Segment
	m       *shm.Mapping
	input   bool
}

// runData holds a Run's buffers; every mapping and fd is released when the
// Run ends, and writable mappings before its Result is sent.
type runData struct {
	dp *dataPlane
	// handOff gives a finished dynamic output's segment to the host and
	// returns the token its binding names; nil when outputs of unknown size
	// cannot be handed over (no fd channel).
	handOff func(port string, seg *shm.Segment) (uint64, error)
	mu      sync.Mutex
	inputs  map[string]*buffer
	outputs map[string]*buffer
	dynamic []*dynOutput
}

// dynOutput is an output of unknown size the plugin creates: written
// through a growable segment or allocated at a known size.
type dynOutput struct {
	port   string
	format pb.Format
	w      *shm.Writer
	seg    *shm.Segment
	m      *shm.Mapping
}

func (dp *dataPlane) bind(ctx context.Context, req *pb.RunRequest) (*runData, error) {
	rd := &runData{dp: dp, inputs: map[string]*buffer{}, outputs: map[string]*buffer{}}
	if dp != nil {
		rd.handOff = dp.handOff
	}
	if len(req.GetInputs())+len(req.GetOutputs()) == 0 {
		return rd, nil
	}
	if dp == nil {
		return nil, errors.New("the run has buffers but this plugin has no fd channel")
	}
	// On the fd channel the fds came before the RUN and are here; over the
	// gRPC call they may still be on their way, and are waited for until
	// fdWait from now.
	deadline := time.Now().Add(fdWait)
	for _, set := range []struct {
		list  []*pb.Binding
		dst   map[string]*buffer
		input bool
	}{{req.GetInputs(), rd.inputs, true}, {req.GetOutputs(), rd.outputs, false}} {
		for _, b := range set.list {
			buf, err := dp.open(ctx, deadline, b, set.input)
			if err != nil {
				rd.release()
				return nil, err
			}
			set.dst[b.GetPort()] = buf
		}
	}
	return rd, nil
}

// handOff sends a dynamic output's memfd to the host on the fd channel.
func (dp *dataPlane) handOff(port string, seg *shm.Segment) (uint64, error) {
	tok := dp.tokens.Next()
	msg := shm.Message{Type: shm.MsgAdopt, Token: tok, Size: uint64(seg.Size())}
	if err := dp.ch.Send(msg, seg.FD()); err != nil {
		return 0, fmt.Errorf("sending to host: %w", err)
	}
	return tok, nil
}

func (dp *dataPlane) open(ctx context.Context, deadline time.Time, b *pb.Binding, input bool) (*buffer, error) {
	_, fd, ok := dp.mb.TryTake(b.GetFdToken())
	if !ok {
		// Only a wait needs a timer.
		ctx, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		var err error
		if _, fd, err = dp.mb.Take(ctx, b.GetFdToken()); err != nil {
			return nil, fmt.Errorf("port %q: %w", b.GetPort(), err)
		}
	}
	seg, err := shm.Open(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("port %q: %w", b.GetPort(), err)
	}
	return openBuffer(b, seg, input)
}

// openBuffer checks seg against b's handle and maps an input read-only. It
// owns seg: on error seg is closed.
func openBuffer(b *pb.Binding, seg *shm.Segment, input bool) (*buffer, error) {
	var err error
	if err := shm.Validate(b.GetHandle(), uint64(seg.Size())); err != nil {
		seg.Close()
		return nil, fmt.Errorf("port %q: %w", b.GetPort(), err)
	}
	buf := &buffer{binding: b, seg: seg, input: input}
	if input {
		// Inputs are sealed by the host; MapRO refuses anything else.
		if buf.m, err = seg.MapRO(); err != nil {
			seg.Close()
			return nil, fmt.Errorf("input %q: %w", b.GetPort(), err)
		}
	}
	return buf, nil
}

// populateMin is the smallest output whose pages are made present when it
// is mapped (shm.Mapping.Populate); a smaller one takes few page faults.
const populateMin = 1 << 20

// bytes returns the buffer's bytes, mapping an output on first use.
func (b *buffer) bytes() ([]byte, error) {
	if b.m == nil {
		m, err := b.seg.MapRW()
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", b.binding.GetPort(), err)
		}
		if b.seg.Size() >= populateMin {
			// The stage is about to write it all: pages in two system
			// calls, not a page fault each.
			m.Populate()
		}
		b.m = m
	}
	h := b.binding.GetHandle()
	return b.m.Bytes()[h.GetOffset() : h.GetOffset()+h.GetNbytes()], nil
}

// finish unmaps every output view and hands dynamic outputs to the host.
// It runs before the Result is sent: the host write-seals the outputs as
// soon as the Result arrives, and the kernel refuses the seal while any
// writable mapping is left (docs/protocol.md, "Hand-off").
func (rd *runData) finish() ([]*pb.Binding, error) {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	for _, b := range rd.outputs {
		if err := unmap(b.m); err != nil {
			return nil, fmt.Errorf("output %q: %w", b.binding.GetPort(), err)
		}
	}
	var out []*pb.Binding
	for _, d := range rd.dynamic {
		if err := unmap(d.m); err != nil {
			return nil, fmt.Errorf("dynamic output %q: %w", d.port, err)
		}
		if d.w != nil {
			seg, err := d.w.Finish()
			d.w = nil
			if err != nil {
				return nil, fmt.Errorf("dynamic output %q: %w", d.port, err)
			}
			d.seg = seg
		}
		size := uint64(d.seg.Size())
		tok, err := rd.handOff(d.port, d.seg)
		if err != nil {
			return nil, fmt.Errorf("dynamic output %q: %w", d.port, err)
		}
		kind := pb.PortKind_PORT_KIND_BLOB
		if d.format == pb.Format_FORMAT_ARROW_IPC {
			kind = pb.PortKind_PORT_KIND_TABLE
		}
		out = append(out, &pb.Binding{Port: d.port, Handle: shm.AdoptedHandle(kind, size), FdToken: tok})
	}
	return out, nil
}

func unmap(m *shm.Mapping) error {
	if m == nil {
		return nil
	}
	return m.Unmap()
}

// release unmaps and closes everything the Run held.
func (rd *runData) release() {
	if rd == nil {
		return
	}
	rd.mu.Lock()
	defer rd.mu.Unlock()
	for _, b := range rd.inputs {
		b.close()
	}
	for _, b := range rd.outputs {
		b.close()
	}
	for _, d := range rd.dynamic {
		_ = unmap(d.m)
		if d.w != nil {
			d.w.Abort()
		}
		if d.seg != nil {
			_ = d.seg.Close()
		}
	}
	rd.dynamic = nil
}

func (b *buffer) close() {
	if b.m != nil {
		_ = b.m.Unmap()
		b.m = nil
	}
	if b.seg != nil {
		_ = b.seg.Close()
		b.seg = nil
	}
}
