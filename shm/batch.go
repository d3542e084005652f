package shm

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Outgoing is one message of a batch: a base message with its fd (-1 for
// none), or, when Payload is set or Msg.Type carries one, a RUN, EVENT or
// END with its payload.
type Outgoing struct {
	Msg     Message
	FD      int
	Payload []byte
}

// datagram is one record on the wire: header, optional payload bytes, and
// the SCM_RIGHTS control message for an fd.
type datagram struct {
	bufs [][]byte
	oob  []byte
}

// SendBatch writes every message of batch with sendmmsg(2), in order and
// with no other message of this side between them. The peer sees the same
// records as from one Send or SendPayload each, but its reader wakes once
// for all of them and this side makes one system call, not one per
// message: a run and the fds it names, or a Result and the END after it,
// travel together. The kernel passes duplicates of the fds; the caller
// keeps its own.
func (c *Channel) SendBatch(batch []Outgoing) error {
	var grams []datagram
	for _, o := range batch {
		g, err := o.datagrams()
		if err != nil {
			return err
		}
		grams = append(grams, g...)
	}
	if len(grams) == 0 {
		return nil
	}
	first := batch[0].Msg
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if c.closed.Load() {
		return fmt.Errorf("fd channel: send %v: %w", first.Type, ErrClosed)
	}
	hdrs, iovs := mmsgHeaders(grams)
	sent := 0
	var serr error
	err := c.rc.Write(func(s uintptr) bool {
		for sent < len(hdrs) {
			n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, s, uintptr(unsafe.Pointer(&hdrs[sent])),
				uintptr(len(hdrs)-sent), unix.MSG_NOSIGNAL, 0, 0)
			if errno == unix.EINTR {
				continue
			}
			if errno == unix.EAGAIN {
				return false // wait until the socket takes more
			}
			if errno != 0 {
				serr = errno
				return true
			}
			sent += int(n)
		}
		return true
	})
	runtime.KeepAlive(grams)
	runtime.KeepAlive(iovs)
	if err == nil {
		err = serr
	}
	if err != nil {
		if c.closed.Load() {
			err = ErrClosed
		}
		if len(batch) > 1 {
			return fmt.Errorf("fd channel: send %v token %#x and %d more: %w", first.Type, first.Token, len(batch)-1, err)
		}
		return fmt.Errorf("fd channel: send %v token %#x: %w", first.Type, first.Token, err)
	}
	return nil
}

// datagrams checks o as every receiver would and lays it out: one datagram
// for a base message, a frame per MaxFrame bytes (at least one) for a
// payload.
func (o Outgoing) datagrams() ([]datagram, error) {
	m := o.Msg
	if m.Type.carriesPayload() {
		if o.FD >= 0 {
			return nil, fmt.Errorf("fd channel: a %v message must not carry an fd", m.Type)
		}
		total := uint64(len(o.Payload))
		if err := checkToken(Message{Type: m.Type, Token: m.Token, SegmentID: total, Size: min(total, MaxFrame)}); err != nil {
			return nil, err
		}
		var grams []datagram
		for off := 0; ; {
			n := min(len(o.Payload)-off, MaxFrame)
			hdr := EncodeHeader(Message{Type: m.Type, Token: m.Token, SegmentID: total, Size: uint64(n)})
			grams = append(grams, datagram{bufs: [][]byte{hdr, o.Payload[off : off+n]}})
			off += n
			if off >= len(o.Payload) {
				return grams, nil
			}
		}
	}
	if o.Payload != nil {
		return nil, fmt.Errorf("fd channel: a %v message has no payload", m.Type)
	}
	if err := checkToken(m); err != nil {
		return nil, err
	}
	if m.Type.carriesFD() != (o.FD >= 0) {
		if o.FD >= 0 {
			return nil, fmt.Errorf("fd channel: %v message must not carry an fd", m.Type)
		}
		return nil, fmt.Errorf("fd channel: %v message for token %#x needs an fd", m.Type, m.Token)
	}
	g := datagram{bufs: [][]byte{EncodeHeader(m)}}
	if o.FD >= 0 {
		g.oob = unix.UnixRights(o.FD)
	}
	return []datagram{g}, nil
}

// mmsghdr is struct mmsghdr: a msghdr and the bytes the kernel sent of it.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// mmsgHeaders lays the datagrams out for sendmmsg; iovs must stay alive
// until the call returns.
func mmsgHeaders(grams []datagram) ([]mmsghdr, [][]unix.Iovec) {
	hdrs := make([]mmsghdr, len(grams))
	iovs := make([][]unix.Iovec, len(grams))
	for i, g := range grams {
		for _, b := range g.bufs {
			if len(b) == 0 {
				continue
			}
			v := unix.Iovec{Base: &b[0]}
			v.SetLen(len(b))
			iovs[i] = append(iovs[i], v)
		}
		h := &hdrs[i].hdr
		if len(iovs[i]) > 0 {
			h.Iov = &iovs[i][0]
			h.SetIovlen(len(iovs[i]))
		}
		if len(g.oob) > 0 {
			h.Control = &g.oob[0]
			h.SetControllen(len(g.oob))
		}
	}
	return hdrs, iovs
}
