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
// ADOPT, exactly one fd in SCM_RIGHTS. The layout is in docs/protocol.md.

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
	// HeaderSize is the exact size of every fd channel message.
	HeaderSize = 32

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
)

func (t MsgType) String() string {
	switch t {
	case MsgSegment:
		return "SEGMENT"
	case MsgAdopt:
		return "ADOPT"
	case MsgClose:
		return "CLOSE"
	}
	return "type " + strconv.Itoa(int(t))
}

// carriesFD reports whether messages of this type carry exactly one fd.
func (t MsgType) carriesFD() bool { return t == MsgSegment || t == MsgAdopt }

// Message is a decoded fd channel header.
type Message struct {
	Type  MsgType
	Token uint64
	// SegmentID is the host's arena id (SEGMENT); 0 for ADOPT and CLOSE.
	SegmentID uint64
	// Size is the segment's size in bytes, as its fstat must report.
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
func DecodeHeader(b []byte) (Message, error) {
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
	closed atomic.Bool
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
	if err := checkToken(m); err != nil {
		return err
	}
	if m.Type.carriesFD() != (fd >= 0) {
		if fd >= 0 {
			return fmt.Errorf("fd channel: %v message must not carry an fd", m.Type)
		}
		return fmt.Errorf("fd channel: %v message for token %#x needs an fd", m.Type, m.Token)
	}
	hdr := EncodeHeader(m)
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if c.closed.Load() {
		return fmt.Errorf("fd channel: send %v: %w", m.Type, ErrClosed)
	}
	var serr error
	err := c.rc.Write(func(s uintptr) bool {
		// MSG_NOSIGNAL: a gone peer is an EPIPE error, not a signal.
		serr = unix.Sendmsg(int(s), hdr, oob, nil, unix.MSG_NOSIGNAL)
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		if c.closed.Load() {
			err = ErrClosed
		}
		return fmt.Errorf("fd channel: send %v token %#x: %w", m.Type, m.Token, err)
	}
	return nil
}

// Recv reads one message and the fd it carries (-1 if none). The fd is
// close-on-exec and owned by the caller. It returns io.EOF when the peer has
// closed its end. A malformed message is an error wrapping ErrProtocol; any
// fds it carried are closed, so nothing leaks.
func (c *Channel) Recv() (Message, int, error) {
	buf := make([]byte, HeaderSize)
	oob := make([]byte, unix.CmsgSpace(4*maxFDs))
	var n, oobn, flags int
	var rerr error
	err := c.rc.Read(func(s uintptr) bool {
		n, oobn, flags, _, rerr = unix.Recvmsg(int(s), buf, oob, unix.MSG_CMSG_CLOEXEC)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		if c.closed.Load() {
			err = ErrClosed
		}
		return Message{}, -1, fmt.Errorf("fd channel: receive: %w", err)
	}
	fds, cmsgErr := parseRights(oob[:oobn])
	fail := func(format string, args ...any) (Message, int, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return Message{}, -1, fmt.Errorf("fd channel: "+format, args...)
	}
	if cmsgErr != nil {
		return fail("%w: bad control message: %v", ErrProtocol, cmsgErr)
	}
	if n == 0 && oobn == 0 && flags&unix.MSG_TRUNC == 0 {
		return Message{}, -1, io.EOF
	}
	if flags&unix.MSG_CTRUNC != 0 {
		return fail("%w: control data truncated (more than %d fds, or the fd limit is reached)", ErrProtocol, maxFDs)
	}
	if flags&unix.MSG_TRUNC != 0 {
		return fail("%w: message longer than %d bytes", ErrProtocol, HeaderSize)
	}
	m, err := DecodeHeader(buf[:n])
	if err != nil {
		return fail("%w", err)
	}
	want := 0
	if m.Type.carriesFD() {
		want = 1
	}
	if len(fds) != want {
		return fail("%w: %v message for token %#x carries %d fds, want %d", ErrProtocol, m.Type, m.Token, len(fds), want)
	}
	if want == 0 {
		return m, -1, nil
	}
	return m, fds[0], nil
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
