package shm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ErrPeerClosed is the Mailbox error after the peer sent CLOSE: it is
// shutting down cleanly.
var ErrPeerClosed = errors.New("fd channel: peer closed the channel cleanly")

// ErrPeerGone is the Mailbox error after EOF without a CLOSE message: the
// peer process exited or crashed. For a plugin it means the host is gone.
var ErrPeerGone = errors.New("fd channel: peer is gone (EOF)")

// Mailbox reads a Channel in the background and files each received fd
// under its token until someone takes it. The fd for a token is sent before
// the gRPC call that names the token, but the two sockets race, so a reader
// may have to wait for it.
type Mailbox struct {
	ch *Channel
	// runs gets RUN, EVENT, END and CANCEL messages; nil until Route.
	runs atomic.Pointer[func(Message, []byte) error]

	mu      sync.Mutex
	pending map[uint64]parcel
	arrived chan struct{} // closed and replaced on every arrival
	closed  bool
	err     error

	done   chan struct{}
	exited chan struct{}
}

type parcel struct {
	msg Message
	fd  int
}

// NewMailbox starts reading ch. Until Close the caller may still Send on ch;
// the Mailbox is its only reader.
func NewMailbox(ch *Channel) *Mailbox {
	mb := &Mailbox{
		ch:      ch,
		pending: make(map[uint64]parcel),
		arrived: make(chan struct{}),
		done:    make(chan struct{}),
		exited:  make(chan struct{}),
	}
	go mb.read()
	return mb
}

// Route hands every RUN, EVENT, END and CANCEL message to f, called on the
// reader goroutine in the order they arrive, with the message's payload
// (the callee's to keep). f must not block: fds behind the message wait for
// it. An error from f (a message this side never takes) ends the channel
// like a protocol error. Until Route, every such message is one.
func (mb *Mailbox) Route(f func(m Message, payload []byte) error) { mb.runs.Store(&f) }

// OnIdle sets f to run on the reader goroutine each time it has read every
// message that arrived and is about to wait for more. A Route handler can
// leave its wake-ups to f: messages that arrive together (a Result and its
// END) then wake their reader once, after the last of them. f must not
// block.
func (mb *Mailbox) OnIdle(f func()) { mb.ch.idle.Store(&f) }

func (mb *Mailbox) read() {
	defer close(mb.exited)
	for {
		m, payload, fd, err := mb.ch.RecvPayload()
		if err == nil && m.Type == MsgClose {
			err = ErrPeerClosed
		}
		if err == nil && (m.Type.carriesPayload() || m.Type == MsgCancel) {
			if f := mb.runs.Load(); f == nil {
				err = fmt.Errorf("%w: a %v message, and this side takes no runs on the channel", ErrProtocol, m.Type)
			} else if err = (*f)(m, payload); err == nil {
				continue
			}
		}
		if errors.Is(err, io.EOF) {
			err = ErrPeerGone
		}
		mb.mu.Lock()
		if err == nil {
			if _, dup := mb.pending[m.Token]; dup {
				unix.Close(fd)
				err = fmt.Errorf("%w: token %#x received twice", ErrProtocol, m.Token)
			}
		}
		if err != nil {
			if mb.err == nil {
				mb.err = err
			}
			mb.mu.Unlock()
			close(mb.done)
			return
		}
		if mb.closed {
			unix.Close(fd)
		} else {
			mb.pending[m.Token] = parcel{m, fd}
			close(mb.arrived)
			mb.arrived = make(chan struct{})
		}
		mb.mu.Unlock()
	}
}

// TryTake hands over the fd sent under token if it has arrived; ok is
// false if it has not (yet). On the fd channel a run's fds come before the
// RUN, so they are there and no wait (and no timer) is needed.
func (mb *Mailbox) TryTake(token uint64) (msg Message, fd int, ok bool) {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	p, ok := mb.takeLocked(token)
	return p.msg, p.fd, ok
}

// takeLocked removes and returns the parcel filed under token; mb.mu is
// held. Its fd is -1 when there is none.
func (mb *Mailbox) takeLocked(token uint64) (parcel, bool) {
	p, ok := mb.pending[token]
	if !ok {
		return parcel{fd: -1}, false
	}
	delete(mb.pending, token)
	return p, true
}

// Take waits for the fd sent under token and hands it over: the caller owns
// the returned fd. It fails when ctx ends, when the channel ends first, or
// when the Mailbox is closed.
func (mb *Mailbox) Take(ctx context.Context, token uint64) (Message, int, error) {
	for {
		mb.mu.Lock()
		if p, ok := mb.takeLocked(token); ok {
			mb.mu.Unlock()
			return p.msg, p.fd, nil
		}
		if mb.closed {
			mb.mu.Unlock()
			return Message{}, -1, fmt.Errorf("fd channel: waiting for token %#x: mailbox %w", token, ErrClosed)
		}
		if mb.err != nil {
			err := mb.err
			mb.mu.Unlock()
			return Message{}, -1, fmt.Errorf("fd channel: token %#x never arrived: %w", token, err)
		}
		arrived := mb.arrived
		mb.mu.Unlock()
		select {
		case <-arrived:
		case <-mb.done:
		case <-ctx.Done():
			return Message{}, -1, fmt.Errorf("fd channel: waiting for token %#x: %w", token, context.Cause(ctx))
		}
	}
}

// Done is closed when the channel ends: the peer sent CLOSE, closed its end
// (EOF), or broke the protocol. A plugin should exit when it fires.
func (mb *Mailbox) Done() <-chan struct{} { return mb.done }

// Err says why Done fired: ErrPeerClosed, ErrPeerGone, a protocol error, or
// ErrClosed after Close. nil while the channel is open.
func (mb *Mailbox) Err() error {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	return mb.err
}

// Close closes the Channel, waits for the reader to stop and closes every fd
// not yet taken. Idempotent.
func (mb *Mailbox) Close() error {
	mb.mu.Lock()
	already := mb.closed
	mb.closed = true
	mb.mu.Unlock()
	if already {
		<-mb.exited
		return nil
	}
	err := mb.ch.Close()
	<-mb.exited
	mb.mu.Lock()
	for tok, p := range mb.pending {
		unix.Close(p.fd)
		delete(mb.pending, tok)
	}
	mb.mu.Unlock()
	return err
}
