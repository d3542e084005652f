package shm

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Mapping is a shared mapping of a whole segment.
type Mapping struct {
	seg      *Segment // for its name, in messages
	writable bool

	mu   sync.Mutex
	data []byte
	done bool
}

const thpPath = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"

var hugePages = sync.OnceValue(func() bool {
	b, err := os.ReadFile(thpPath)
	if err != nil {
		return false
	}
	return shmemTHPAllows(string(b))
})

// shmemTHPAllows reads the shmem_enabled file's format, where the active
// value is bracketed: "always within_size advise [never] deny force".
func shmemTHPAllows(s string) bool {
	_, rest, ok := strings.Cut(s, "[")
	if !ok {
		return false
	}
	mode, _, ok := strings.Cut(rest, "]")
	if !ok {
		return false
	}
	switch mode {
	case "always", "within_size", "advise", "force":
		return true
	}
	return false
}

// HugePagesEnabled reports whether writable mappings ask for transparent huge
// pages (the system's shmem THP setting allows them). Read once per process.
func HugePagesEnabled() bool { return hugePages() }

// MapRW maps the segment shared and writable, for its producer. Where shmem
// transparent huge pages are allowed it asks for them, which makes first
// touch of large grids an order of magnitude faster.
func (s *Segment) MapRW() (*Mapping, error) {
	if s.Sealed() {
		return nil, fmt.Errorf("map segment %q read-write: it is write-sealed; map it read-only", s.Name())
	}
	m, err := s.mmap(unix.PROT_READ|unix.PROT_WRITE, "read-write")
	if err != nil {
		return nil, err
	}
	if len(m.data) > 0 && hugePages() {
		// Advice only: the mapping works without it.
		_ = unix.Madvise(m.data, unix.MADV_HUGEPAGE)
	}
	return m, nil
}

// MapRO maps the segment shared and read-only, for its consumers. It refuses
// a segment that is not write-sealed: only the seal makes the bytes
// immutable, and with it the kernel also refuses mprotect back to writable.
func (s *Segment) MapRO() (*Mapping, error) {
	if !s.writeSealed.Load() {
		seals, err := s.Seals()
		if err != nil {
			return nil, err
		}
		if seals&unix.F_SEAL_WRITE == 0 {
			return nil, fmt.Errorf("map segment %q read-only: %w (seals %s)", s.Name(), ErrNotSealed, SealString(seals))
		}
		s.writeSealed.Store(true)
	}
	return s.mmap(unix.PROT_READ, "read-only")
}

func (s *Segment) mmap(prot int, what string) (*Mapping, error) {
	m := &Mapping{seg: s, writable: prot&unix.PROT_WRITE != 0}
	if s.size == 0 {
		// mmap refuses length 0; an empty segment is an empty view.
		m.data = []byte{}
		return m, nil
	}
	if int64(int(s.size)) != s.size {
		return nil, fmt.Errorf("map segment %q %s: size %d does not fit in memory", s.Name(), what, s.size)
	}
	err := s.use("map", func(fd int) error {
		b, err := unix.Mmap(fd, 0, int(s.size), prot, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("map segment %q %s (%d bytes): %w", s.Name(), what, s.size, err)
		}
		m.data = b
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// Populate makes every page of a writable mapping present now, in two
// system calls: fallocate for the pages the segment lacks (none after
// Prefault: fstat says so and it is skipped), then madvise
// (MADV_POPULATE_WRITE) to map them all, instead of a trap per 4 KiB page as
// the producer first writes each. Filling a fresh segment then takes about
// a quarter less (BenchmarkFill). Best effort: a kernel before 5.14, or
// memory too short to allocate everything at once, leaves the pages to the
// faults, as without it.
func (m *Mapping) Populate() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done || !m.writable || len(m.data) == 0 {
		return
	}
	_ = m.seg.use("populate", func(fd int) error {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err == nil && st.Blocks*512 < int64(len(m.data)) {
			_ = unix.Fallocate(fd, 0, 0, int64(len(m.data)))
		}
		return nil
	})
	_ = unix.Madvise(m.data, unix.MADV_POPULATE_WRITE)
}

// Bytes is the mapped memory; nil after Unmap. Using it after Unmap faults.
func (m *Mapping) Bytes() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done {
		return nil
	}
	return m.data
}

// Writable reports whether the mapping was made by MapRW.
func (m *Mapping) Writable() bool { return m.writable }

// Unmap releases the mapping. Idempotent. A producer must unmap its writable
// mapping before the segment can be write-sealed.
func (m *Mapping) Unmap() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done {
		return nil
	}
	m.done = true
	b := m.data
	m.data = nil
	if len(b) == 0 {
		return nil
	}
	if err := unix.Munmap(b); err != nil {
		return fmt.Errorf("unmap segment %q: %w", m.seg.Name(), err)
	}
	return nil
}

// Elem is the set of element types a buffer can be viewed as; each matches
// one pb.DType.
type Elem interface {
	~int8 | ~int16 | ~int32 | ~int64 | ~uint8 | ~uint16 | ~uint32 | ~uint64 | ~float32 | ~float64
}

// View reinterprets b as a slice of T without copying. b must be aligned for
// T and its length a multiple of T's size. The view aliases b: it is only
// valid while the mapping behind b is.
func View[T Elem](b []byte) ([]T, error) {
	var zero T
	size := int(unsafe.Sizeof(zero))
	if len(b) == 0 {
		return []T{}, nil
	}
	if len(b)%size != 0 {
		return nil, fmt.Errorf("view %d bytes as %T: length is not a multiple of %d", len(b), zero, size)
	}
	p := unsafe.Pointer(unsafe.SliceData(b))
	if uintptr(p)%unsafe.Alignof(zero) != 0 {
		return nil, fmt.Errorf("view bytes at %p as %T: not %d-byte aligned", p, zero, unsafe.Alignof(zero))
	}
	return unsafe.Slice((*T)(p), len(b)/size), nil
}

// Unmapped reports whether Unmap was called.
func (m *Mapping) Unmapped() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.done
}
