package shm

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestPayloadRoundTrip(t *testing.T) {
	a, b := pair(t)
	for _, n := range []int{0, 1, MaxFrame - 1, MaxFrame, MaxFrame + 1, 3*MaxFrame + 17, 200_000} {
		want := make([]byte, n)
		for i := range want {
			want[i] = byte(i*7 + n)
		}
		errc := make(chan error, 1)
		go func() { errc <- a.SendPayload(MsgEvent, 42, want) }()
		m, got, fd, err := b.RecvPayload()
		if err := <-errc; err != nil {
			t.Fatalf("%d bytes: send: %v", n, err)
		}
		if err != nil || fd != -1 {
			t.Fatalf("%d bytes: fd %d err %v", n, fd, err)
		}
		if m.Type != MsgEvent || m.Token != 42 || m.SegmentID != uint64(n) || !bytes.Equal(got, want) {
			t.Fatalf("%d bytes: got %+v with %d bytes", n, m, len(got))
		}
	}
	// CANCEL has no payload and goes through Send.
	if err := a.Send(Message{Type: MsgCancel, Token: 42}, -1); err != nil {
		t.Fatal(err)
	}
	if m, p, _, err := b.RecvPayload(); err != nil || m.Type != MsgCancel || m.Token != 42 || p != nil {
		t.Fatalf("cancel: %+v %v %v", m, p, err)
	}
}

func TestSendPayloadRefusesWhatNoPeerWouldAccept(t *testing.T) {
	a, _ := pair(t)
	for name, err := range map[string]error{
		"segment type":     a.SendPayload(MsgSegment, 1, nil),
		"cancel type":      a.SendPayload(MsgCancel, 1, nil),
		"plugin token":     a.SendPayload(MsgRun, PluginTokenBit|1, []byte{1}),
		"token 0":          a.SendPayload(MsgEnd, 0, nil),
		"too large":        a.SendPayload(MsgEvent, 1, make([]byte, MaxPayload+1)),
		"run through Send": a.Send(Message{Type: MsgRun, Token: 1}, -1),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// frame is one raw payload frame, header and bytes, as a peer might send it.
func frame(t MsgType, token, total uint64, body []byte) []byte {
	return append(EncodeHeader(Message{Type: t, Token: token, SegmentID: total, Size: uint64(len(body))}), body...)
}

func TestRecvPayloadRejectsBadFramesAndClosesFDs(t *testing.T) {
	before := openFDs(t)
	mk := func() int {
		s := mustCreate(t, "stray", 64)
		fd, err := unix.FcntlInt(uintptr(s.FD()), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		return fd
	}
	cases := []struct {
		name   string
		frames [][]byte
		fds    []int // sent with the last frame
		want   string
	}{
		{"size beyond the datagram", [][]byte{frame(MsgRun, 1, 10, make([]byte, 10))[:HeaderSize+4]}, nil, "36 bytes, its header says 42"},
		{"empty frame of a non-empty payload", [][]byte{frame(MsgRun, 1, 10, nil)}, nil, "empty RUN frame"},
		{"frame larger than MaxFrame", [][]byte{frame(MsgEvent, 1, MaxFrame+1, make([]byte, MaxFrame+1))}, nil, "longer than"},
		{"payload larger than MaxPayload", [][]byte{frame(MsgEvent, 1, MaxPayload+1, make([]byte, 8))}, nil, "at most"},
		{"fd on a RUN", [][]byte{frame(MsgRun, 1, 3, []byte{1, 2, 3})}, []int{mk()}, "carries 1 fds, want 0"},
		{"another token inside a payload", [][]byte{frame(MsgEvent, 1, 20, make([]byte, 10)), frame(MsgEvent, 2, 20, make([]byte, 10))}, nil, "inside a EVENT payload"},
		{"a segment inside a payload", [][]byte{frame(MsgEvent, 1, 20, make([]byte, 10)), EncodeHeader(Message{Type: MsgSegment, Token: 5, SegmentID: 1, Size: 64})}, []int{mk()}, "inside a EVENT payload"},
		{"frames beyond the total", [][]byte{frame(MsgEvent, 1, 20, make([]byte, 10)), frame(MsgEvent, 1, 20, make([]byte, 11))}, nil, "add up to more than the 20 bytes"},
		{"cancel with a body", [][]byte{append(EncodeHeader(Message{Type: MsgCancel, Token: 1}), 1)}, nil, "33 bytes, its header says 32"},
	}
	for _, c := range cases {
		a, b := pair(t)
		for i, f := range c.frames {
			if i == len(c.frames)-1 {
				rawSend(t, a, f, c.fds...)
			} else {
				rawSend(t, a, f)
			}
		}
		for _, fd := range c.fds {
			unix.Close(fd)
		}
		_, _, fd, err := b.RecvPayload()
		if err == nil || fd != -1 || !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: fd %d err %v, want ErrProtocol saying %q", c.name, fd, err, c.want)
		}
		a.Close()
		b.Close()
	}
	// Recv speaks the base protocol: a RUN is unknown there.
	a, b := pair(t)
	if err := a.SendPayload(MsgRun, 1, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Recv(); !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "unknown message type 4") {
		t.Errorf("Recv of a RUN: %v", err)
	}
	a.Close()
	b.Close()
	if after := openFDs(t); len(after) != len(before) {
		t.Errorf("fds before %d, after %d: %v", len(before), len(after), after)
	}
}

func TestDecodeRunHeaderRejects(t *testing.T) {
	good := EncodeHeader(Message{Type: MsgRun, Token: 5, SegmentID: 1, Size: 1})
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	if m, err := DecodeRunHeader(good); err != nil || m.Type != MsgRun {
		t.Fatalf("good RUN header: %+v %v", m, err)
	}
	for name, c := range map[string]struct {
		b    []byte
		want string
	}{
		"type 8":               {mod(func(b []byte) []byte { b[6] = 8; return b }), "unknown message type 8"},
		"plugin token":         {mod(func(b []byte) []byte { b[15] = 0x80; return b }), "not a run token"},
		"token 0":              {mod(func(b []byte) []byte { clear(b[8:16]); return b }), "not a run token"},
		"frame > total":        {mod(func(b []byte) []byte { b[24] = 2; return b }), "frame of 2 bytes in a payload of 1"},
		"frame > MaxFrame":     {EncodeHeader(Message{Type: MsgEvent, Token: 5, SegmentID: MaxPayload, Size: MaxFrame + 1}), "frames hold at most"},
		"payload > MaxPayload": {EncodeHeader(Message{Type: MsgEnd, Token: 5, SegmentID: MaxPayload + 1, Size: 1}), "at most"},
		"empty frame":          {mod(func(b []byte) []byte { b[24] = 0; return b }), "empty RUN frame"},
		"cancel with payload":  {mod(func(b []byte) []byte { b[6] = 7; return b }), "CANCEL carries no payload"},
	} {
		_, err := DecodeRunHeader(c.b)
		if err == nil || !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrProtocol saying %q", name, err, c.want)
		}
	}
}

func TestMailboxRoutesRunsAndFilesFDs(t *testing.T) {
	a, b := pair(t)
	mb := NewMailbox(b)
	defer mb.Close()
	type got struct {
		m Message
		p []byte
	}
	routed := make(chan got, 4)
	mb.Route(func(m Message, p []byte) error { routed <- got{m, p}; return nil })
	s := mustCreate(t, "seg", 64)
	defer s.Close()
	// The order a host keeps: the run's fd, then the run.
	if err := a.Send(Message{Type: MsgSegment, Token: 7, SegmentID: 1, Size: 64}, s.FD()); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("run"), MaxFrame)
	if err := a.SendPayload(MsgRun, 8, big); err != nil {
		t.Fatal(err)
	}
	if err := a.Send(Message{Type: MsgCancel, Token: 8}, -1); err != nil {
		t.Fatal(err)
	}
	select {
	case g := <-routed:
		if g.m.Type != MsgRun || g.m.Token != 8 || !bytes.Equal(g.p, big) {
			t.Fatalf("routed %+v, %d bytes", g.m, len(g.p))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RUN never routed")
	}
	// By the time the RUN is seen, its fd is filed.
	if _, fd, err := mb.Take(t.Context(), 7); err != nil {
		t.Fatal(err)
	} else {
		unix.Close(fd)
	}
	if g := <-routed; g.m.Type != MsgCancel || g.m.Token != 8 {
		t.Fatalf("routed %+v", g.m)
	}
}

func TestMailboxWithoutRouteRejectsRuns(t *testing.T) {
	a, b := pair(t)
	mb := NewMailbox(b)
	defer mb.Close()
	if err := a.SendPayload(MsgEvent, 3, []byte("ev")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-mb.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("mailbox kept reading after an unroutable EVENT")
	}
	if err := mb.Err(); !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "takes no runs") {
		t.Errorf("err %v", err)
	}
}
