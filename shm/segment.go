// Package shm is pipehost's data plane: memfd segments with kernel seals,
// their mappings and typed views, the handles that describe buffers inside
// them, and the fd channel that carries segment file descriptors between the
// host and its plugins (docs/protocol.md). The host and the Go SDK both use it.
//
// Immutability of a published buffer rests on F_SEAL_WRITE alone: a read-only
// fd or mapping is not protection, since a process can reopen
// /proc/self/fd/N read-write; a write seal cannot be undone by anyone.
package shm

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

var (
	// ErrWritableMapping is wrapped by SealWrite when the kernel refuses the
	// write seal (EBUSY) because some process still holds a writable shared
	// mapping of the segment. For a plugin-written output that is a stage bug.
	ErrWritableMapping = errors.New("a writable shared mapping of the segment still exists")
	// ErrNotSealed is wrapped by MapRO for a segment without F_SEAL_WRITE.
	ErrNotSealed = errors.New("segment is not write-sealed")
	// ErrClosed is returned by operations on a closed Segment or Channel.
	ErrClosed = errors.New("closed")
)

// sizeSeals are the seals every segment carries from birth: its size is
// fixed, so a mapping can never outlive the pages behind it (no SIGBUS).
const sizeSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW

// maxNameLen is memfd_create's limit (249 bytes, without the "memfd:" prefix).
const maxNameLen = 249

// Segment is one memfd. It owns its file descriptor; all methods are safe for
// concurrent use, and Close waits for calls in progress on the fd.
type Segment struct {
	name string
	size int64
	// opened: the Segment wraps a received fd, whose name Name looks up.
	opened   bool
	nameOnce sync.Once

	mu     sync.RWMutex // RLock: fd in use; Lock: closing
	fd     int
	closed bool
	// writeSealed: F_SEAL_WRITE was seen on the fd. A seal is never
	// removed, so it need not be asked for again.
	writeSealed atomic.Bool
}

// Create makes a sealable memfd of the given size with its size sealed
// (F_SEAL_SHRINK|F_SEAL_GROW). The fd is close-on-exec and, where the kernel
// knows MFD_NOEXEC_SEAL, can never be made executable.
func Create(name string, size int64) (*Segment, error) {
	if size < 0 {
		return nil, fmt.Errorf("create segment %q: negative size %d", name, size)
	}
	fd, err := memfd(name)
	if err != nil {
		return nil, fmt.Errorf("create segment %q: %w", name, err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("create segment %q: ftruncate to %d bytes: %w", name, size, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, sizeSeals); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("create segment %q: sealing its size: %w", name, err)
	}
	return &Segment{name: name, size: size, fd: fd}, nil
}

// memfd makes a sealable, close-on-exec memfd of size 0.
func memfd(name string) (int, error) {
	memName := name
	if len(memName) > maxNameLen {
		memName = memName[:maxNameLen]
	}
	if memName == "" || strings.IndexByte(memName, 0) >= 0 {
		memName = "pipehost"
	}
	flags := unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
	fd, err := unix.MemfdCreate(memName, flags|unix.MFD_NOEXEC_SEAL)
	if errors.Is(err, unix.EINVAL) {
		// Kernels before 6.3 do not know MFD_NOEXEC_SEAL.
		fd, err = unix.MemfdCreate(memName, flags)
	}
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	return fd, nil
}

// Open adopts a received file descriptor. It must be a sealable memfd that
// already carries F_SEAL_SHRINK and F_SEAL_GROW; its size is read from fstat.
// On success the Segment owns fd. On error fd is left open and untouched:
// the caller still owns it.
func Open(fd int) (*Segment, error) {
	if fd < 0 {
		return nil, fmt.Errorf("open segment: invalid fd %d", fd)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("open segment fd %d: fstat: %w", fd, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("open segment fd %d: not a memfd (not a regular file, mode %#o)", fd, st.Mode&unix.S_IFMT)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("open segment fd %d: not a sealable memfd (F_GET_SEALS: %w)", fd, err)
	}
	if seals&sizeSeals != sizeSeals {
		return nil, fmt.Errorf("open segment fd %d: size is not sealed (seals %s; need shrink,grow)", fd, SealString(seals))
	}
	// The name only ever shows in messages: looked up when first asked for.
	s := &Segment{size: st.Size, fd: fd, opened: true}
	s.writeSealed.Store(seals&unix.F_SEAL_WRITE != 0)
	return s, nil
}

// Name is the name given to Create, or the memfd's name for an opened fd.
func (s *Segment) Name() string {
	if !s.opened {
		return s.name
	}
	s.nameOnce.Do(func() {
		fd := s.fd // fixed for the Segment's life; once closed, the lookup may fail
		s.name = "fd " + strconv.Itoa(fd)
		if link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); err == nil {
			if n, ok := strings.CutPrefix(link, "/memfd:"); ok {
				s.name = strings.TrimSuffix(n, " (deleted)")
			}
		}
	})
	return s.name
}

// Size is the segment's size in bytes, fixed for its whole life.
func (s *Segment) Size() int64 { return s.size }

// FD is the segment's file descriptor, -1 after Close. It stays owned by the
// Segment: do not close it, and do not use it concurrently with Close.
func (s *Segment) FD() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return -1
	}
	return s.fd
}

// use runs f with the fd held open.
func (s *Segment) use(op string, f func(fd int) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return fmt.Errorf("%s segment %q: %w", op, s.Name(), ErrClosed)
	}
	return f(s.fd)
}

// Seals returns the segment's current F_GET_SEALS bit set.
func (s *Segment) Seals() (int, error) {
	var seals int
	err := s.use("seals of", func(fd int) error {
		var err error
		seals, err = unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
		if err != nil {
			return fmt.Errorf("segment %q: F_GET_SEALS: %w", s.Name(), err)
		}
		return nil
	})
	return seals, err
}

// SealWrite makes the segment immutable for every process (F_SEAL_WRITE) and
// freezes its seals (F_SEAL_SEAL). Sealing an already write-sealed segment is
// a no-op. If a writable shared mapping still exists anywhere the kernel says
// EBUSY and the error wraps ErrWritableMapping.
func (s *Segment) SealWrite() error {
	return s.use("seal", func(fd int) error {
		seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
		if err != nil {
			return fmt.Errorf("seal segment %q: F_GET_SEALS: %w", s.Name(), err)
		}
		if seals&unix.F_SEAL_WRITE != 0 {
			return nil
		}
		if seals&unix.F_SEAL_SEAL != 0 {
			return fmt.Errorf("seal segment %q: its seals are frozen without F_SEAL_WRITE (seals %s)", s.Name(), SealString(seals))
		}
		_, err = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, writeSeals)
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("seal segment %q: %w (%v)", s.Name(), ErrWritableMapping, err)
		}
		if err != nil {
			return fmt.Errorf("seal segment %q: F_ADD_SEALS: %w", s.Name(), err)
		}
		return nil
	})
}

// Sealed reports whether the segment is write-sealed. It asks the kernel, so
// it sees seals added by another process; false on any error.
func (s *Segment) Sealed() bool {
	seals, err := s.Seals()
	return err == nil && seals&unix.F_SEAL_WRITE != 0
}

// Prefault allocates every page of the segment now (fallocate), so the
// producer's first touch only maps pages instead of allocating and zeroing
// them. It does not make the total cheaper (fallocate zeroes the pages
// itself); it pays off when done ahead of time, off a stage's critical path:
// with 4 KiB pages the producer's fill then takes roughly half as long
// (BenchmarkFill).
func (s *Segment) Prefault() error {
	if s.size == 0 {
		return nil
	}
	return s.use("prefault", func(fd int) error {
		if err := unix.Fallocate(fd, 0, 0, s.size); err != nil {
			return fmt.Errorf("prefault segment %q (%d bytes): fallocate: %w", s.Name(), s.size, err)
		}
		return nil
	})
}

// Close closes the fd. Mappings stay valid until unmapped; the memory is
// freed when the last fd and mapping in any process are gone. Idempotent.
func (s *Segment) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if err := unix.Close(s.fd); err != nil {
		return fmt.Errorf("close segment %q: %w", s.Name(), err)
	}
	return nil
}

// SealString renders a seal bit set for messages, e.g. "shrink,grow,write".
func SealString(seals int) string {
	names := []struct {
		bit  int
		name string
	}{
		{unix.F_SEAL_SEAL, "seal"},
		{unix.F_SEAL_SHRINK, "shrink"},
		{unix.F_SEAL_GROW, "grow"},
		{unix.F_SEAL_WRITE, "write"},
		{unix.F_SEAL_FUTURE_WRITE, "future-write"},
		{unix.F_SEAL_EXEC, "exec"},
	}
	var parts []string
	for _, n := range names {
		if seals&n.bit != 0 {
			parts = append(parts, n.name)
			seals &^= n.bit
		}
	}
	if seals != 0 {
		parts = append(parts, fmt.Sprintf("%#x", seals))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ",")
}

// Use runs f with the segment's fd, keeping Close from closing it meanwhile
// (for in-kernel copies to and from the segment).
func (s *Segment) Use(f func(fd int) error) error { return s.use("use", f) }

// Dup returns a second Segment on a duplicate descriptor of the same memfd
// (it keeps the memory alive on its own; close both).
func (s *Segment) Dup() (*Segment, error) {
	var dup int
	err := s.use("dup", func(fd int) error {
		var err error
		dup, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &Segment{name: s.Name(), size: s.size, fd: dup}, nil
}
