package shm

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ImmutableSeals are the seals either of which makes a segment's bytes
// immutable for every mapping made after it: F_SEAL_WRITE (which the
// kernel grants only once no writable shared mapping exists, checking every
// page) and F_SEAL_FUTURE_WRITE (instant; it refuses new writable mappings,
// write(2) and mprotect to writable, but leaves mappings that already exist
// alone, so whoever adds it must know there are none).
const ImmutableSeals = unix.F_SEAL_WRITE | unix.F_SEAL_FUTURE_WRITE

// SmallSegment is the size below which a full F_SEAL_WRITE (about 10 µs per
// MiB) is cheaper than reading a process's mappings to check it kept no
// writable one: the host seals such segments fully at once, and producers
// unmap them, rather than make them read-only, before their Result.
const SmallSegment = 1 << 20

// SealFutureWrite adds F_SEAL_FUTURE_WRITE: from now on nobody can map the
// segment writable, write to it or make a read-only mapping writable. It
// costs microseconds whatever the size.
func (s *Segment) SealFutureWrite() error {
	return s.use("seal future writes", func(fd int) error {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_FUTURE_WRITE); err != nil {
			return fmt.Errorf("seal segment %q against future writes: %w", s.name, err)
		}
		return nil
	})
}

// MappedWritableBy reports whether process pid has a writable shared
// mapping of this segment, read from /proc/pid/maps (device and inode
// identify the memfd).
func (s *Segment) MappedWritableBy(pid int) (bool, error) {
	var st unix.Stat_t
	if err := s.use("stat", func(fd int) error { return unix.Fstat(fd, &st) }); err != nil {
		return false, err
	}
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		return false, fmt.Errorf("reading the mappings of process %d: %w", pid, err)
	}
	defer f.Close()
	wantDev := fmt.Sprintf("%02x:%02x", unix.Major(st.Dev), unix.Minor(st.Dev))
	wantIno := strconv.FormatUint(st.Ino, 10)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// address perms offset dev inode [path]
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || fields[4] != wantIno || fields[3] != wantDev {
			continue
		}
		if perms := fields[1]; len(perms) == 4 && perms[1] == 'w' && perms[3] == 's' {
			return true, nil
		}
	}
	return false, sc.Err()
}

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
	return &Segment{name: s.name, size: s.size, fd: dup}, nil
}
