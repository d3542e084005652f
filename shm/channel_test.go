package shm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pair returns both ends of a channel as Channels, closed at cleanup.
func pair(t testing.TB) (*Channel, *Channel) {
	t.Helper()
	local, remote, err := NewChannelPair()
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ChannelFromFile(remote)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { local.Close(); peer.Close() })
	return local, peer
}

func TestHeaderLayout(t *testing.T) {
	m := Message{Type: MsgAdopt, Token: PluginTokenBit | 0x0102030405060708, SegmentID: 0x1112131415161718, Size: 0x2122232425262728}
	b := EncodeHeader(m)
	want := []byte{
		'P', 'H', 'F', 'D', // magic 0x44464850 little-endian
		1, 0, // version
		2, 0, // type
		0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x81, // token
		0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11, // segment id
		0x28, 0x27, 0x26, 0x25, 0x24, 0x23, 0x22, 0x21, // size
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("header\n got % x\nwant % x", b, want)
	}
	got, err := DecodeHeader(b)
	if err != nil || got != m {
		t.Fatalf("decode: %+v %v", got, err)
	}
}

func TestDecodeHeaderRejects(t *testing.T) {
	good := EncodeHeader(Message{Type: MsgSegment, Token: 5, SegmentID: 1, Size: 4096})
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for name, c := range map[string]struct {
		b    []byte
		want string
	}{
		"short":                {good[:31], "31 bytes"},
		"long":                 {append(bytes.Clone(good), 0), "33 bytes"},
		"magic":                {mod(func(b []byte) []byte { b[0] = 'X'; return b }), "bad magic"},
		"version":              {mod(func(b []byte) []byte { b[4] = 2; return b }), "version 2"},
		"type 0":               {mod(func(b []byte) []byte { b[6] = 0; return b }), "unknown message type 0"},
		"type 8":               {mod(func(b []byte) []byte { b[6] = 8; return b }), "unknown message type 8"},
		"type 4 (a RUN)":       {mod(func(b []byte) []byte { b[6] = 4; return b }), "unknown message type 4"},
		"segment tok 0":        {mod(func(b []byte) []byte { clear(b[8:16]); return b }), "not a host token"},
		"segment plugin token": {mod(func(b []byte) []byte { b[15] = 0x80; return b }), "not a host token"},
		"adopt host token":     {mod(func(b []byte) []byte { b[6] = 2; return b }), "not a plugin token"},
	} {
		_, err := DecodeHeader(c.b)
		if err == nil || !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrProtocol saying %q", name, err, c.want)
		}
	}
}

func TestTokens(t *testing.T) {
	h, p := HostTokens(), PluginTokens()
	if a, b := h.Next(), h.Next(); a != 1 || b != 2 {
		t.Fatalf("host tokens %d %d", a, b)
	}
	if a := p.Next(); a != PluginTokenBit|1 {
		t.Fatalf("plugin token %#x", a)
	}
}

func TestSendRecvSegment(t *testing.T) {
	a, b := pair(t)
	s := mustCreate(t, "sent", 8192)
	fill(t, s, []byte("abcdefgh"))
	if err := s.SealWrite(); err != nil {
		t.Fatal(err)
	}
	sent := Message{Type: MsgSegment, Token: 42, SegmentID: 9, Size: 8192}
	if err := a.Send(sent, s.FD()); err != nil {
		t.Fatal(err)
	}
	m, fd, err := b.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if m != sent {
		t.Fatalf("got %+v", m)
	}
	flags, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if flags&unix.FD_CLOEXEC == 0 {
		t.Error("received fd is not close-on-exec")
	}
	r, err := Open(fd)
	if err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	defer r.Close()
	mp, err := r.MapRO()
	if err != nil {
		t.Fatal(err)
	}
	defer mp.Unmap()
	if !bytes.Equal(mp.Bytes(), bytes.Repeat([]byte("abcdefgh"), 1024)) {
		t.Fatal("bytes differ through the channel")
	}
	// CLOSE carries no fd.
	if err := b.Send(Message{Type: MsgClose}, -1); err != nil {
		t.Fatal(err)
	}
	m, fd, err = a.Recv()
	if err != nil || m.Type != MsgClose || fd != -1 {
		t.Fatalf("close: %+v %d %v", m, fd, err)
	}
}

func TestSendChecks(t *testing.T) {
	a, _ := pair(t)
	if err := a.Send(Message{Type: MsgSegment, Token: 1}, -1); err == nil {
		t.Error("SEGMENT without fd accepted")
	}
	if err := a.Send(Message{Type: MsgClose}, 0); err == nil {
		t.Error("CLOSE with fd accepted")
	}
	if err := a.Send(Message{Type: MsgAdopt, Token: 1}, 0); !errors.Is(err, ErrProtocol) {
		t.Errorf("ADOPT with a host token: %v", err)
	}
	a.Close()
	if err := a.Send(Message{Type: MsgClose}, -1); !errors.Is(err, ErrClosed) {
		t.Errorf("send after close: %v", err)
	}
}

// rawSend writes arbitrary bytes and fds, bypassing Send's checks.
func rawSend(t *testing.T, c *Channel, b []byte, fds ...int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	var serr error
	err := c.rc.Write(func(s uintptr) bool {
		serr = unix.Sendmsg(int(s), b, oob, nil, 0)
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestRecvRejectsAndClosesStrayFDs(t *testing.T) {
	before := openFDs(t)
	func() {
		a, b := pair(t)
		mk := func() int {
			fd, err := unix.MemfdCreate("stray", unix.MFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			return fd
		}
		seg := EncodeHeader(Message{Type: MsgSegment, Token: 3, SegmentID: 1, Size: 0})
		closeMsg := EncodeHeader(Message{Type: MsgClose})
		badMagic := bytes.Clone(seg)
		badMagic[3] = 0
		badVersion := bytes.Clone(seg)
		badVersion[4] = 9
		badType := bytes.Clone(seg)
		badType[6] = 77
		many := make([]int, maxFDs+4)
		for i := range many {
			many[i] = mk()
		}
		cases := []struct {
			name string
			b    []byte
			fds  []int
			want string
		}{
			{"bad magic", badMagic, []int{mk()}, "bad magic"},
			{"bad version", badVersion, []int{mk()}, "version 9"},
			{"unknown type", badType, []int{mk()}, "unknown message type 77"},
			{"segment without fd", seg, nil, "carries 0 fds, want 1"},
			{"segment with two fds", seg, []int{mk(), mk()}, "carries 2 fds, want 1"},
			{"close with fd", closeMsg, []int{mk()}, "carries 1 fds, want 0"},
			{"short", seg[:20], []int{mk()}, "20 bytes"},
			{"long", append(bytes.Clone(seg), make([]byte, 100)...), []int{mk()}, "longer than 32"},
			{"longer than a frame", append(bytes.Clone(seg), make([]byte, MaxFrame+1)...), []int{mk()}, "longer than 32"},
			{"too many fds", seg, many, "control data truncated"},
		}
		for _, c := range cases {
			rawSend(t, a, c.b, c.fds...)
			for _, fd := range c.fds {
				unix.Close(fd) // the kernel holds its own reference in flight
			}
			m, fd, err := b.Recv()
			if err == nil {
				unix.Close(fd)
				t.Errorf("%s: accepted as %+v", c.name, m)
				continue
			}
			if fd != -1 || !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: fd %d err %v, want ErrProtocol saying %q", c.name, fd, err, c.want)
			}
		}
		// The channel still works after rejected messages.
		s := mustCreate(t, "after", 64)
		if err := a.Send(Message{Type: MsgSegment, Token: 99, SegmentID: 1, Size: 64}, s.FD()); err != nil {
			t.Fatal(err)
		}
		m, fd, err := b.Recv()
		if err != nil || m.Token != 99 {
			t.Fatalf("after rejects: %+v %v", m, err)
		}
		unix.Close(fd)
		s.Close()
		a.Close()
		if _, _, err := b.Recv(); err != io.EOF {
			t.Fatalf("after peer close: %v, want io.EOF", err)
		}
		b.Close()
	}()
	checkNoLeak(t, before)
}

func TestRecvUnblocksOnClose(t *testing.T) {
	a, _ := pair(t)
	errc := make(chan error, 1)
	go func() {
		_, _, err := a.Recv()
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond)
	a.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("blocked Recv returned %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not wake Recv")
	}
}

func TestMailboxConcurrentTokens(t *testing.T) {
	before := openFDs(t)
	func() {
		host, plugin := pair(t)
		defer host.Close()
		mb := NewMailbox(plugin)
		defer mb.Close()
		const senders, each = 8, 25
		const total = senders * each
		var mu sync.Mutex
		sent := make(map[uint64]uint64) // token → value written into its segment
		got := make(map[uint64]uint64)  // token → value read from the fd filed under it

		// Takers start first, so most of them wait for fds not yet sent.
		var takers sync.WaitGroup
		for tok := uint64(1); tok <= total; tok++ {
			takers.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				m, fd, err := mb.Take(ctx, tok)
				if err != nil {
					t.Error(err)
					return
				}
				s, err := Open(fd)
				if err != nil {
					unix.Close(fd)
					t.Error(err)
					return
				}
				defer s.Close()
				mp, err := s.MapRO()
				if err != nil {
					t.Error(err)
					return
				}
				defer mp.Unmap()
				if m.Token != tok || binary.LittleEndian.Uint64(mp.Bytes()[8:]) != tok {
					t.Errorf("Take(%d) returned message %d for segment of token %d", tok, m.Token, binary.LittleEndian.Uint64(mp.Bytes()[8:]))
				}
				mu.Lock()
				got[tok] = binary.LittleEndian.Uint64(mp.Bytes())
				mu.Unlock()
			})
		}
		tokens := HostTokens()
		var senderWG sync.WaitGroup
		for g := range senders {
			senderWG.Go(func() {
				for i := range each {
					tok := tokens.Next()
					val := uint64(g)<<32 | uint64(i)
					s, err := Create(fmt.Sprintf("tok-%d", tok), 64)
					if err != nil {
						t.Error(err)
						return
					}
					m, err := s.MapRW()
					if err != nil {
						t.Error(err)
						s.Close()
						return
					}
					binary.LittleEndian.PutUint64(m.Bytes(), val)
					binary.LittleEndian.PutUint64(m.Bytes()[8:], tok)
					m.Unmap()
					if err := s.SealWrite(); err != nil {
						t.Error(err)
					}
					mu.Lock()
					sent[tok] = val
					mu.Unlock()
					if err := host.Send(Message{Type: MsgSegment, Token: tok, SegmentID: tok, Size: 64}, s.FD()); err != nil {
						t.Error(err)
					}
					s.Close() // the receiver holds its own reference
				}
			})
		}
		senderWG.Wait()
		takers.Wait()
		if len(sent) != total || len(got) != total {
			t.Fatalf("sent %d, received %d, want %d", len(sent), len(got), total)
		}
		for tok, v := range sent {
			if got[tok] != v {
				t.Errorf("token %d carried %#x, sent %#x", tok, got[tok], v)
			}
		}
	}()
	checkNoLeak(t, before)
}

func TestMailboxTakeTimeoutAndClose(t *testing.T) {
	before := openFDs(t)
	func() {
		host, plugin := pair(t)
		mb := NewMailbox(plugin)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if _, _, err := mb.Take(ctx, 5); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Take without fd: %v", err)
		}
		// Three fds nobody takes: Close must close them.
		for tok := uint64(10); tok < 13; tok++ {
			s := mustCreate(t, "untaken", 4096)
			if err := host.Send(Message{Type: MsgSegment, Token: tok, SegmentID: 1, Size: 4096}, s.FD()); err != nil {
				t.Fatal(err)
			}
			s.Close()
		}
		// Wait until they are filed, taking the last as the signal.
		m, fd, err := mb.Take(context.Background(), 12)
		if err != nil || m.Token != 12 {
			t.Fatal(err)
		}
		unix.Close(fd)
		if err := mb.Close(); err != nil {
			t.Fatal(err)
		}
		if err := mb.Close(); err != nil {
			t.Fatal(err)
		}
		if _, _, err := mb.Take(context.Background(), 10); !errors.Is(err, ErrClosed) {
			t.Fatalf("Take after Close: %v", err)
		}
		select {
		case <-mb.Done():
		default:
			t.Fatal("Done not closed after Close")
		}
		host.Close()
	}()
	checkNoLeak(t, before)
}

func TestMailboxPeerClose(t *testing.T) {
	host, plugin := pair(t)
	mb := NewMailbox(plugin)
	defer mb.Close()
	waiting := make(chan error, 1)
	go func() {
		_, _, err := mb.Take(context.Background(), 77)
		waiting <- err
	}()
	if err := host.Send(Message{Type: MsgClose}, -1); err != nil {
		t.Fatal(err)
	}
	<-mb.Done()
	if !errors.Is(mb.Err(), ErrPeerClosed) {
		t.Fatalf("Err %v, want ErrPeerClosed", mb.Err())
	}
	if err := <-waiting; !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("pending Take: %v", err)
	}

	host2, plugin2 := pair(t)
	mb2 := NewMailbox(plugin2)
	defer mb2.Close()
	host2.Close()
	<-mb2.Done()
	if !errors.Is(mb2.Err(), ErrPeerGone) {
		t.Fatalf("Err %v, want ErrPeerGone", mb2.Err())
	}
}

func TestMailboxDuplicateToken(t *testing.T) {
	host, plugin := pair(t)
	mb := NewMailbox(plugin)
	defer mb.Close()
	s := mustCreate(t, "dup", 64)
	for range 2 {
		if err := host.Send(Message{Type: MsgSegment, Token: 4, SegmentID: 1, Size: 64}, s.FD()); err != nil {
			t.Fatal(err)
		}
	}
	<-mb.Done()
	if !errors.Is(mb.Err(), ErrProtocol) || !strings.Contains(mb.Err().Error(), "received twice") {
		t.Fatalf("Err %v", mb.Err())
	}
}

func TestChildExitsOnChannelEOF(t *testing.T) {
	local, remote, err := NewChannelPair()
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	cmd := helperCmd(t, "channel-eof", remote)
	cmd.Env = append(cmd.Env, EnvFDChannel+"=3")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// The segment goes out before the child exists: the socket queues it.
	s := mustCreate(t, "to-child", 1000)
	fill(t, s, []byte{1, 2, 3, 4, 5})
	if err := s.SealWrite(); err != nil {
		t.Fatal(err)
	}
	if err := local.Send(Message{Type: MsgSegment, Token: 7, SegmentID: 21, Size: 1000}, s.FD()); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	remote.Close()
	out := bufio.NewReader(stdout)
	first, err := out.ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child output %q: %v\n%s", first, err, stderr.String())
	}
	if want := fmt.Sprintf("segment 21 size 1000 sum %d\n", 200*15); first != want {
		t.Errorf("child read %q, want %q", first, want)
	}
	// Hang up: the child must see EOF and exit on its own.
	local.Close()
	rest, _ := io.ReadAll(out)
	if err := waitTimeout(t, cmd, 30*time.Second); err != nil {
		t.Fatalf("child: %v\nstdout %s\nstderr %s", err, rest, stderr.String())
	}
	if !strings.Contains(string(rest), "done: "+ErrPeerGone.Error()) {
		t.Fatalf("child did not report EOF: %q", rest)
	}
}

func TestChildAdoptsSegmentToHost(t *testing.T) {
	local, remote, err := NewChannelPair()
	if err != nil {
		t.Fatal(err)
	}
	mb := NewMailbox(local)
	defer mb.Close()
	cmd := helperCmd(t, "adopt", remote)
	cmd.Env = append(cmd.Env, EnvFDChannel+"=3")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	remote.Close()
	if err := waitTimeout(t, cmd, 30*time.Second); err != nil {
		t.Fatalf("child: %v\n%s", err, stderr.String())
	}
	var tok uint64
	if _, err := fmt.Sscanf(stdout.String(), "token %d", &tok); err != nil {
		t.Fatalf("child stdout %q: %v", stdout.String(), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, fd, err := mb.Take(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != MsgAdopt || m.Size != 3000 {
		t.Fatalf("message %+v", m)
	}
	s, err := Open(fd)
	if err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	defer s.Close()
	if s.Name() != "dynamic-output" || uint64(s.Size()) != m.Size {
		t.Fatalf("adopted %q size %d", s.Name(), s.Size())
	}
	// The child unmapped and exited, so the host can seal it.
	if err := s.SealWrite(); err != nil {
		t.Fatal(err)
	}
	mp, err := s.MapRO()
	if err != nil {
		t.Fatal(err)
	}
	defer mp.Unmap()
	if !bytes.Equal(mp.Bytes(), bytes.Repeat([]byte("adopted!"), 375)) {
		t.Fatal("adopted bytes differ")
	}
	<-mb.Done()
	if !errors.Is(mb.Err(), ErrPeerClosed) {
		t.Fatalf("Err %v, want ErrPeerClosed after the child's CLOSE", mb.Err())
	}
}

func TestChannelFromEnvErrors(t *testing.T) {
	t.Setenv(EnvFDChannel, "")
	os.Unsetenv(EnvFDChannel)
	if _, err := ChannelFromEnv(); err == nil || !strings.Contains(err.Error(), "must be started by pipehost") {
		t.Errorf("unset: %v", err)
	}
	t.Setenv(EnvFDChannel, "x")
	if _, err := ChannelFromEnv(); err == nil {
		t.Error("non-number accepted")
	}
	f, err := os.CreateTemp(t.TempDir(), "notasocket")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	t.Setenv(EnvFDChannel, fmt.Sprint(f.Fd()))
	if _, err := ChannelFromEnv(); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file: %v", err)
	}
	st, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(st)
	t.Setenv(EnvFDChannel, fmt.Sprint(st))
	if _, err := ChannelFromEnv(); err == nil || !strings.Contains(err.Error(), "SOCK_SEQPACKET") {
		t.Errorf("stream socket: %v", err)
	}
}

// FuzzDecodeHeader: never panics; whatever decodes re-encodes to the input.
func FuzzDecodeHeader(f *testing.F) {
	f.Add(EncodeHeader(Message{Type: MsgSegment, Token: 1, SegmentID: 1, Size: 4096}))
	f.Add(EncodeHeader(Message{Type: MsgAdopt, Token: PluginTokenBit | 9, Size: 1 << 30}))
	f.Add(EncodeHeader(Message{Type: MsgClose}))
	f.Add([]byte("PHFD"))
	f.Add(make([]byte, 32))
	f.Add(append(EncodeHeader(Message{Type: MsgClose}), 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeHeader(b)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error does not wrap ErrProtocol: %v", err)
			}
			return
		}
		if !bytes.Equal(EncodeHeader(m), b) {
			t.Fatalf("%+v re-encodes differently", m)
		}
		if m.Type != MsgSegment && m.Type != MsgAdopt && m.Type != MsgClose {
			t.Fatalf("accepted type %d", m.Type)
		}
		if m.Type == MsgSegment && (m.Token == 0 || m.Token&PluginTokenBit != 0) ||
			m.Type == MsgAdopt && m.Token&PluginTokenBit == 0 {
			t.Fatalf("accepted token %#x for %v", m.Token, m.Type)
		}
	})
}
