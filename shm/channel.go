package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// The fd channel: a SOCK_SEQPACKET unix socketpair between the host and one
// plugin process. Each message is a 32-byte header plus, for SEGMENT and
// ADOPT, exactly one fd in SCM_RIGHTS, and for RUN, EVENT and END a payload
// cut into frames of at most MaxFrame bytes. The layout is in
// docs/protocol.md.

const (
	// EnvFDChannel names the environment variable that tells a plugin which
	// fd is its end of the fd channel.
	EnvFDChannel = "PIPEHOST_FD_CHANNEL"
	// ChildFD is the fd the channel arrives as in a plugin: the first entry
	// of exec.Cmd.ExtraFiles.
	ChildFD = 3

	// Magic is "PHFD" read as a little-endian uint32.
	Magic uint32 = 0x44464850
	// Version is the header version this package speaks.
	Version uint16 = 1
	// HeaderSize is the size of every fd channel header, and the exact size
	// of every message without a payload.
	HeaderSize = 32
	// MaxFrame is the most payload bytes one datagram carries after its
	// header: far below any socket buffer, so a send never fails for size.
	MaxFrame = 32 << 10
	// MaxPayload bounds a whole payload (a RunRequest or a RunEvent).
	MaxPayload = 64 << 20

	// PluginTokenBit is set in every token a plugin allocates (ADOPT) and
	// clear in every token the host allocates (SEGMENT), so the two
	// directions never collide. Token 0 never names an fd.
	PluginTokenBit uint64 = 1 << 63
)

// MsgType is the type field of an fd channel header.
type MsgType uint16

const (
	// MsgSegment (host → plugin) carries the fd of the binding with Token.
	MsgSegment MsgType = 1
	// MsgAdopt (plugin → host) carries a plugin-created segment for the
	// dynamic output whose Binding has Token.
	MsgAdopt MsgType = 2
	// MsgClose (either way, no fd) says the sender is shutting down cleanly.
	MsgClose MsgType = 3
	// MsgRun (host → plugin) carries a serialized RunRequest; its Token,
	// a host token, names the run in every message about it.
	MsgRun MsgType = 4
	// MsgEvent (plugin → host) carries a serialized RunEvent of a run.
	MsgEvent MsgType = 5
	// MsgEnd (plugin → host) carries the serialized RunEnd of a run: the
	// last message about it.
	MsgEnd MsgType = 6
	// MsgCancel (host → plugin, no payload) cancels a run.
	MsgCancel MsgType = 7
)

func (t MsgType) String() string {
	switch t {
	case MsgSegment:
		return "SEGMENT"
	case MsgAdopt:
		return "ADOPT"
	case MsgClose:
		return "CLOSE"
	case MsgRun:
		return "RUN"
	case MsgEvent:
		return "EVENT"
	case MsgEnd:
		return "END"
	case MsgCancel:
		return "CANCEL"
	}
	return "type " + strconv.Itoa(int(t))
}

// carriesFD reports whether messages of this type carry exactly one fd.
func (t MsgType) carriesFD() bool { return t == MsgSegment || t == MsgAdopt }

// carriesPayload reports whether messages of this type carry a payload.
func (t MsgType) carriesPayload() bool { return t == MsgRun || t == MsgEvent || t == MsgEnd }

// Message is a decoded fd channel header.
type Message struct {
	Type  MsgType
	Token uint64
	// SegmentID is the host's arena id (SEGMENT); 0 for ADOPT and CLOSE.
	// In one frame of a payload it is the whole payload's length.
	SegmentID uint64
	// Size is the segment's size in bytes, as its fstat must report. In one
	// frame of a payload it is the payload bytes that frame carries.
	Size uint64
}

// ErrProtocol is wrapped by every error about a malformed fd channel message.
var ErrProtocol = errors.New("fd channel protocol violation")

// EncodeHeader lays m out as the 32-byte little-endian wire header.
func EncodeHeader(m Message) []byte {
	b := make([]byte, HeaderSize)
	binary.LittleEndian.PutUint32(b[0:], Magic)
	binary.LittleEndian.PutUint16(b[4:], Version)
	binary.LittleEndian.PutUint16(b[6:], uint16(m.Type))
	binary.LittleEndian.PutUint64(b[8:], m.Token)
	binary.LittleEndian.PutUint64(b[16:], m.SegmentID)
	binary.LittleEndian.PutUint64(b[24:], m.Size)
	return b
}

// DecodeHeader parses one wire header and checks everything the header alone
// can tell: length, magic, version, type, and the token space of the type.
// It speaks the base protocol (SEGMENT, ADOPT, CLOSE), which every SDK
// shares; DecodeRunHeader also takes the messages of runs on the channel.
func DecodeHeader(b []byte) (Message, error) { return decodeHeader(b, false) }

// DecodeRunHeader is DecodeHeader for a side that takes runs on the
// channel: RUN, EVENT, END and CANCEL are known types too, and for RUN,
// EVENT and END the last two fields are a payload's length and the bytes of
// it this frame carries, checked against MaxFrame and MaxPayload.
func DecodeRunHeader(b []byte) (Message, error) { return decodeHeader(b, true) }

func decodeHeader(b []byte, runs bool) (Message, error) {
	if len(b) != HeaderSize {
		return Message{}, fmt.Errorf("%w: message is %d bytes, want %d", ErrProtocol, len(b), HeaderSize)
	}
	if mg := binary.LittleEndian.Uint32(b[0:]); mg != Magic {
		return Message{}, fmt.Errorf("%w: bad magic %#08x, want %#08x (\"PHFD\")", ErrProtocol, mg, Magic)
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != Version {
		return Message{}, fmt.Errorf("%w: header version %d, this side speaks %d", ErrProtocol, v, Version)
	}
	m := Message{
		Type:      MsgType(binary.LittleEndian.Uint16(b[6:])),
		Token:     binary.LittleEndian.Uint64(b[8:]),
		SegmentID: binary.LittleEndian.Uint64(b[16:]),
		Size:      binary.LittleEndian.Uint64(b[24:]),
	}
	if !runs && m.Type > MsgClose {
		return Message{}, fmt.Errorf("%w: unknown message type %d", ErrProtocol, uint16(m.Type))
	}
	if err := checkToken(m); err != nil {
		return Message{}, err
	}
	return m, nil
}

func checkToken(m Message) error {
	switch m.Type {
	case MsgSegment:
		if m.Token == 0 || m.Token&PluginTokenBit != 0 {
			return fmt.Errorf("%w: SEGMENT token %#x is not a host token (1 ≤ token < 2^63)", ErrProtocol, m.Token)
		}
	case MsgAdopt:
		if m.Token&PluginTokenBit == 0 {
			return fmt.Errorf("%w: ADOPT token %#x is not a plugin token (top bit set)", ErrProtocol, m.Token)
		}
	case MsgClose:
	case MsgRun, MsgEvent, MsgEnd, MsgCancel:
		if m.Token == 0 || m.Token&PluginTokenBit != 0 {
			return fmt.Errorf("%w: %v token %#x is not a run token (1 ≤ token < 2^63)", ErrProtocol, m.Type, m.Token)
		}
		switch {
		case m.Type == MsgCancel && (m.SegmentID != 0 || m.Size != 0):
			return fmt.Errorf("%w: CANCEL carries no payload, header says %d of %d bytes", ErrProtocol, m.Size, m.SegmentID)
		case m.SegmentID > MaxPayload:
			return fmt.Errorf("%w: %v payload of %d bytes, at most %d", ErrProtocol, m.Type, m.SegmentID, MaxPayload)
		case m.Size > MaxFrame || m.Size > m.SegmentID:
			return fmt.Errorf("%w: %v frame of %d bytes in a payload of %d (frames hold at most %d)", ErrProtocol, m.Type, m.Size, m.SegmentID, MaxFrame)
		case m.Size == 0 && m.SegmentID > 0:
			return fmt.Errorf("%w: empty %v frame in a payload of %d bytes", ErrProtocol, m.Type, m.SegmentID)
		}
	default:
		return fmt.Errorf("%w: unknown message type %d", ErrProtocol, uint16(m.Type))
	}
	return nil
}

// Tokens hands out unique fd channel tokens in one direction's space.
type Tokens struct {
	bit  uint64
	next atomic.Uint64
}

// HostTokens allocates SEGMENT tokens: 1, 2, 3, ...
func HostTokens() *Tokens { return &Tokens{} }

// PluginTokens allocates ADOPT tokens: 2^63+1, 2^63+2, ...
func PluginTokens() *Tokens { return &Tokens{bit: PluginTokenBit} }

// Next returns a token not returned before by t.
func (t *Tokens) Next() uint64 { return t.bit | t.next.Add(1) }

// maxFDs is how many fds Recv makes room for, so a message with too many is
// seen (and its fds closed) rather than silently truncated.
const maxFDs = 16

// Channel is one end of an fd channel. Send and Recv are safe for concurrent
// use; Close wakes a blocked Recv.
type Channel struct {
	f      *os.File
	rc     syscall.RawConn
	sendMu sync.Mutex
	// recvMu keeps one reader at a time: a payload's frames are joined
	// in order, and the receive buffers are reused.
	recvMu  sync.Mutex
	recvBuf []byte
	recvOOB []byte
	closed  atomic.Bool
	// idle runs on the reader when no message is waiting, before it waits
	// (Mailbox.OnIdle).
	idle atomic.Pointer[func()]
}

// NewChannelPair makes the fd channel for one plugin process. Pass remote as
// the first exec.Cmd.ExtraFiles entry (it becomes fd ChildFD in the child),
// set EnvFDChannel=3 in the child's environment, and close remote in the
// host once the child has started: then the channel reports EOF when the
// child exits. local is close-on-exec, so no other child inherits it.
func NewChannelPair() (local *Channel, remote *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("fd channel: socketpair: %w", err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("fd channel: %w", err)
	}
	local, err = newChannel(os.NewFile(uintptr(fds[0]), "pipehost-fd-channel"))
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return local, os.NewFile(uintptr(fds[1]), "pipehost-fd-channel-remote"), nil
}

// ChannelFromEnv opens a plugin's end of the fd channel: the fd named by
// EnvFDChannel. It checks that the fd is a SOCK_SEQPACKET unix socket, marks
// it close-on-exec (the plugin's own children must not hold it) and removes
// the variable from the environment.
func ChannelFromEnv() (*Channel, error) {
	v, ok := os.LookupEnv(EnvFDChannel)
	if !ok {
		return nil, fmt.Errorf("fd channel: %s is not set; this program is a pipehost plugin and must be started by pipehost", EnvFDChannel)
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 0 {
		return nil, fmt.Errorf("fd channel: %s=%q is not an fd number", EnvFDChannel, v)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("fd channel: fd %d from %s is not a socket: %w", fd, EnvFDChannel, err)
	}
	if typ != unix.SOCK_SEQPACKET {
		return nil, fmt.Errorf("fd channel: fd %d from %s is a socket of type %d, want SOCK_SEQPACKET", fd, EnvFDChannel, typ)
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("fd channel: fd %d: %w", fd, err)
	}
	os.Unsetenv(EnvFDChannel)
	return newChannel(os.NewFile(uintptr(fd), "pipehost-fd-channel"))
}

// ChannelFromFile wraps an fd channel end the caller already has (e.g. the
// remote end of NewChannelPair in the same process, for tests). The Channel
// takes ownership of f.
func ChannelFromFile(f *os.File) (*Channel, error) {
	// A duplicate gets a fresh, non-blocking fd registered with Go's poller;
	// f's own fd may have been put in blocking mode by f.Fd().
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fd channel: dup %s: %w", f.Name(), err)
	}
	f.Close()
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fd channel: %w", err)
	}
	return newChannel(os.NewFile(uintptr(fd), "pipehost-fd-channel"))
}

func newChannel(f *os.File) (*Channel, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("fd channel: %w", err)
	}
	return &Channel{f: f, rc: rc}, nil
}

// Send writes one message. fd must be an open descriptor for SEGMENT and
// ADOPT and -1 for CLOSE; the kernel passes a duplicate, and the caller keeps
// its own fd.
func (c *Channel) Send(m Message, fd int) error {
	if m.Type.carriesPayload() {
		return fmt.Errorf("fd channel: a %v message is sent with SendPayload", m.Type)
	}
	return c.SendBatch([]Outgoing{{Msg: m, FD: fd}})
}

// SendPayload writes a RUN, EVENT or END message: payload cut into frames of
// at most MaxFrame bytes, sent back to back under the send lock so no other
// message of this side comes between them.
func (c *Channel) SendPayload(t MsgType, token uint64, payload []byte) error {
	if !t.carriesPayload() {
		return fmt.Errorf("fd channel: a %v message has no payload", t)
	}
	return c.SendBatch([]Outgoing{{Msg: Message{Type: t, Token: token}, FD: -1, Payload: payload}})
}

// Recv reads one message of the base protocol and the fd it carries (-1 if
// none); RUN, EVENT, END and CANCEL are unknown types here (see
// RecvPayload). The fd is close-on-exec and owned by the caller. It returns
// io.EOF when the peer has closed its end. A malformed message is an error
// wrapping ErrProtocol; any fds it carried are closed, so nothing leaks.
func (c *Channel) Recv() (Message, int, error) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	m, fd, _, err := c.recvFrame(false)
	return m, fd, err
}

// RecvPayload is Recv for a channel that also carries runs: a RUN, EVENT or
// END message comes whole, its frames joined into payload (the caller's to
// keep); its Message then has Size 0 and SegmentID the payload's length.
func (c *Channel) RecvPayload() (m Message, payload []byte, fd int, err error) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	m, fd, frame, err := c.recvFrame(true)
	if err != nil || !m.Type.carriesPayload() {
		return m, nil, fd, err
	}
	if m.Size == m.SegmentID { // one frame: the common case
		m.Size = 0
		return m, append([]byte(nil), frame...), -1, nil
	}
	payload = make([]byte, 0, m.SegmentID)
	payload = append(payload, frame...)
	for uint64(len(payload)) < m.SegmentID {
		next, nfd, frame, err := c.recvFrame(true)
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("fd channel: %w: the channel ended inside a %v payload", ErrProtocol, m.Type)
		}
		if err != nil {
			return Message{}, nil, -1, err
		}
		if next.Type != m.Type || next.Token != m.Token || next.SegmentID != m.SegmentID {
			if nfd >= 0 {
				unix.Close(nfd)
			}
			return Message{}, nil, -1, fmt.Errorf("fd channel: %w: a %v message for token %#x came inside a %v payload for token %#x",
				ErrProtocol, next.Type, next.Token, m.Type, m.Token)
		}
		if uint64(len(payload))+next.Size > m.SegmentID {
			return Message{}, nil, -1, fmt.Errorf("fd channel: %w: %v frames add up to more than the %d bytes announced", ErrProtocol, m.Type, m.SegmentID)
		}
		payload = append(payload, frame...)
	}
	m.Size = 0
	return m, payload, -1, nil
}

// recvFrame reads one datagram: a message, or one frame of a payload (then
// the returned slice, valid until the next call, holds its bytes). Without
// runs, it checks exactly what the shared vectors (testdata/fdchannel.json)
// pin, in their order.
func (c *Channel) recvFrame(runs bool) (Message, int, []byte, error) {
	if c.recvBuf == nil {
		c.recvBuf = make([]byte, HeaderSize+MaxFrame)
		c.recvOOB = make([]byte, unix.CmsgSpace(4*maxFDs))
	}
	buf, oob := c.recvBuf, c.recvOOB
	var n, oobn, flags int
	var rerr error
	err := c.rc.Read(func(s uintptr) bool {
		n, oobn, flags, _, rerr = unix.Recvmsg(int(s), buf, oob, unix.MSG_CMSG_CLOEXEC)
		if rerr != unix.EAGAIN {
			return true
		}
		if idle := c.idle.Load(); idle != nil {
			(*idle)()
		}
		return false
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		if c.closed.Load() {
			err = ErrClosed
		}
		return Message{}, -1, nil, fmt.Errorf("fd channel: receive: %w", err)
	}
	fds, cmsgErr := parseRights(oob[:oobn])
	fail := func(format string, args ...any) (Message, int, []byte, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return Message{}, -1, nil, fmt.Errorf("fd channel: "+format, args...)
	}
	if cmsgErr != nil {
		return fail("%w: bad control message: %v", ErrProtocol, cmsgErr)
	}
	if n == 0 && oobn == 0 && flags&unix.MSG_TRUNC == 0 {
		return Message{}, -1, nil, io.EOF
	}
	if flags&unix.MSG_CTRUNC != 0 {
		return fail("%w: control data truncated (more than %d fds, or the fd limit is reached)", ErrProtocol, maxFDs)
	}
	if flags&unix.MSG_TRUNC != 0 || (!runs && n > HeaderSize) {
		longest := HeaderSize
		if runs {
			longest += MaxFrame
		}
		return fail("%w: message longer than %d bytes", ErrProtocol, longest)
	}
	if n < HeaderSize {
		return fail("%w: message is %d bytes, want %d", ErrProtocol, n, HeaderSize)
	}
	m, err := decodeHeader(buf[:HeaderSize], runs)
	if err != nil {
		return fail("%w", err)
	}
	var body uint64
	if m.Type.carriesPayload() {
		body = m.Size
	}
	if uint64(n) != HeaderSize+body {
		return fail("%w: %v message is %d bytes, its header says %d", ErrProtocol, m.Type, n, HeaderSize+body)
	}
	want := 0
	if m.Type.carriesFD() {
		want = 1
	}
	if len(fds) != want {
		return fail("%w: %v message for token %#x carries %d fds, want %d", ErrProtocol, m.Type, m.Token, len(fds), want)
	}
	if want == 0 {
		return m, -1, buf[HeaderSize:n], nil
	}
	return m, fds[0], nil, nil
}

// parseRights collects every fd in SCM_RIGHTS messages. Even on error it
// returns the fds it found, so the caller can close them.
func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	var bad error
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			bad = fmt.Errorf("unexpected control message level %d type %d", msgs[i].Header.Level, msgs[i].Header.Type)
			continue
		}
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			bad = err
			continue
		}
		fds = append(fds, got...)
	}
	return fds, bad
}

// Close closes this end. The peer's Recv then returns io.EOF. Idempotent.
func (c *Channel) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	return c.f.Close()
}
