package shm

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func mustCreate(t *testing.T, name string, size int64) *Segment {
	t.Helper()
	s, err := Create(name, size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func fill(t *testing.T, s *Segment, pattern []byte) {
	t.Helper()
	m, err := s.MapRW()
	if err != nil {
		t.Fatal(err)
	}
	b := m.Bytes()
	for i := 0; i < len(b); i += len(pattern) {
		copy(b[i:], pattern)
	}
	if err := m.Unmap(); err != nil {
		t.Fatal(err)
	}
}

func TestCreateSealsSize(t *testing.T) {
	s := mustCreate(t, "test-create", 1<<20)
	if s.Size() != 1<<20 || s.Name() != "test-create" {
		t.Fatalf("size %d name %q", s.Size(), s.Name())
	}
	seals, err := s.Seals()
	if err != nil {
		t.Fatal(err)
	}
	if seals&(unix.F_SEAL_SHRINK|unix.F_SEAL_GROW) != unix.F_SEAL_SHRINK|unix.F_SEAL_GROW {
		t.Fatalf("seals %s, want shrink and grow", SealString(seals))
	}
	if seals&unix.F_SEAL_WRITE != 0 || s.Sealed() {
		t.Fatalf("fresh segment is write-sealed: %s", SealString(seals))
	}
	// The kernel, not our bookkeeping, refuses resizing.
	if err := unix.Ftruncate(s.FD(), 2<<20); !errors.Is(err, unix.EPERM) {
		t.Fatalf("grow: got %v, want EPERM", err)
	}
	if err := unix.Ftruncate(s.FD(), 4096); !errors.Is(err, unix.EPERM) {
		t.Fatalf("shrink: got %v, want EPERM", err)
	}
	flags, err := unix.FcntlInt(uintptr(s.FD()), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Fatalf("fd is not close-on-exec: flags %d err %v", flags, err)
	}
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(s.FD()))
	if err != nil || !strings.HasPrefix(link, "/memfd:test-create") {
		t.Fatalf("fd points at %q (%v), want a memfd", link, err)
	}
}

func TestCreateRejectsNegativeSize(t *testing.T) {
	if _, err := Create("neg", -1); err == nil {
		t.Fatal("negative size accepted")
	}
}

func TestRoundTripThroughOpen(t *testing.T) {
	s := mustCreate(t, "round-trip", 10000)
	fill(t, s, []byte("0123456789"))
	if err := s.SealWrite(); err != nil {
		t.Fatal(err)
	}
	// A second fd to the same memfd, as a receiver would get it.
	fd, err := unix.FcntlInt(uintptr(s.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(fd)
	if err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	defer r.Close()
	if r.Size() != 10000 || r.Name() != "round-trip" || !r.Sealed() {
		t.Fatalf("opened: size %d name %q sealed %v", r.Size(), r.Name(), r.Sealed())
	}
	m, err := r.MapRO()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmap()
	if want := bytes.Repeat([]byte("0123456789"), 1000); !bytes.Equal(m.Bytes(), want) {
		t.Fatal("reader sees different bytes")
	}
}

func TestZeroSizeSegment(t *testing.T) {
	s := mustCreate(t, "empty", 0)
	if err := s.Prefault(); err != nil {
		t.Fatal(err)
	}
	rw, err := s.MapRW()
	if err != nil {
		t.Fatal(err)
	}
	if b := rw.Bytes(); b == nil || len(b) != 0 {
		t.Fatalf("rw view %v, want empty non-nil", b)
	}
	if err := rw.Unmap(); err != nil {
		t.Fatal(err)
	}
	if err := s.SealWrite(); err != nil {
		t.Fatal(err)
	}
	ro, err := s.MapRO()
	if err != nil {
		t.Fatal(err)
	}
	if len(ro.Bytes()) != 0 {
		t.Fatal("ro view not empty")
	}
	v, err := View[float64](ro.Bytes())
	if err != nil || len(v) != 0 {
		t.Fatalf("view of empty: %v %v", v, err)
	}
	ro.Unmap()
	fd, _ := unix.FcntlInt(uintptr(s.FD()), unix.F_DUPFD_CLOEXEC, 0)
	r, err := Open(fd)
	if err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	if r.Size() != 0 {
		t.Fatalf("opened size %d", r.Size())
	}
	r.Close()
}

func TestOpenRejectsNonSegments(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])

	f, err := os.CreateTemp(t.TempDir(), "regular")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Write(make([]byte, 4096))

	unsealable, err := unix.MemfdCreate("no-sealing", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(unsealable)
	unix.Ftruncate(unsealable, 4096)

	sizeUnsealed, err := unix.MemfdCreate("size-unsealed", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sizeUnsealed)
	unix.Ftruncate(sizeUnsealed, 4096)

	for _, c := range []struct {
		name string
		fd   int
		want string
	}{
		{"pipe", p[0], "not a memfd"},
		{"regular file", int(f.Fd()), "not a sealable memfd"},
		{"memfd without sealing", unsealable, "size is not sealed"},
		{"memfd without size seals", sizeUnsealed, "size is not sealed"},
		{"closed fd", 1 << 20, "fstat"},
	} {
		s, err := Open(c.fd)
		if err == nil {
			s.Close()
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not say %q", c.name, err, c.want)
		}
		if c.fd < 1<<20 {
			// The fd must be left open for the caller.
			if _, err := unix.FcntlInt(uintptr(c.fd), unix.F_GETFD, 0); err != nil {
				t.Errorf("%s: Open closed the fd: %v", c.name, err)
			}
		}
	}
}

func TestSealWriteBusyWhileMappedWritable(t *testing.T) {
	s := mustCreate(t, "busy", 1<<16)
	m, err := s.MapRW()
	if err != nil {
		t.Fatal(err)
	}
	m.Bytes()[0] = 42
	err = s.SealWrite()
	if !errors.Is(err, ErrWritableMapping) {
		t.Fatalf("SealWrite with a writable mapping: %v, want ErrWritableMapping", err)
	}
	if !strings.Contains(err.Error(), `"busy"`) {
		t.Errorf("error does not name the segment: %v", err)
	}
	if s.Sealed() {
		t.Fatal("sealed despite EBUSY")
	}
	if _, err := s.MapRO(); !errors.Is(err, ErrNotSealed) {
		t.Fatalf("MapRO of unsealed segment: %v, want ErrNotSealed", err)
	}
	if err := m.Unmap(); err != nil {
		t.Fatal(err)
	}
	if err := m.Unmap(); err != nil {
		t.Fatalf("second Unmap: %v", err)
	}
	if m.Bytes() != nil {
		t.Fatal("Bytes after Unmap is not nil")
	}
	if err := s.SealWrite(); err != nil {
		t.Fatal(err)
	}
	if err := s.SealWrite(); err != nil {
		t.Fatalf("sealing twice: %v", err)
	}
	seals, _ := s.Seals()
	if seals&(unix.F_SEAL_WRITE|unix.F_SEAL_SEAL) != unix.F_SEAL_WRITE|unix.F_SEAL_SEAL {
		t.Fatalf("seals %s", SealString(seals))
	}
	if _, err := s.MapRW(); err == nil {
		t.Fatal("MapRW of a sealed segment succeeded")
	}
}

func TestSealedIsImmutable(t *testing.T) {
	s := mustCreate(t, "immutable", 3*4096)
	fill(t, s, []byte{1, 2, 3, 4})
	if err := s.SealWrite(); err != nil {
		t.Fatal(err)
	}
	m, err := s.MapRO()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmap()
	if err := unix.Mprotect(m.Bytes(), unix.PROT_READ|unix.PROT_WRITE); !errors.Is(err, unix.EACCES) {
		t.Fatalf("mprotect to writable: %v, want EACCES", err)
	}
	if _, err := unix.Write(s.FD(), []byte{9}); err == nil {
		t.Fatal("write(2) on the sealed fd succeeded")
	}
	// A read-only fd is not protection; the seal is. Reopen read-write.
	f, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(s.FD()), os.O_RDWR, 0)
	if err != nil {
		t.Logf("reopen read-write refused: %v", err)
	} else {
		defer f.Close()
		if _, err := f.WriteAt([]byte{9, 9, 9}, 100); !errors.Is(err, syscall.EPERM) {
			t.Fatalf("write through a reopened fd: %v, want EPERM", err)
		}
		if b, err := unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
			unix.Munmap(b)
			t.Fatal("writable shared mapping through a reopened fd succeeded")
		}
	}
	for i, v := range m.Bytes() {
		if v != byte(i%4+1) {
			t.Fatalf("byte %d changed to %d", i, v)
		}
	}
}

func TestChildWritingSealedMappingFaults(t *testing.T) {
	s := mustCreate(t, "child-fault", 1<<16)
	fill(t, s, []byte("sealed"))
	if err := s.SealWrite(); err != nil {
		t.Fatal(err)
	}
	dup, err := unix.FcntlInt(uintptr(s.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(dup), "segment")
	defer f.Close()
	cmd := helperCmd(t, "write-sealed", f)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	err = waitTimeout(t, cmd, 30*time.Second)
	if err == nil {
		t.Fatalf("child exited cleanly; stdout %q", stdout.String())
	}
	if !strings.Contains(stdout.String(), "mapped") || strings.Contains(stdout.String(), "wrote") {
		t.Fatalf("child stdout %q: want it to map and never finish the write", stdout.String())
	}
	// Go reports the fault as a fatal SIGSEGV; code 0x2 is SEGV_ACCERR, a
	// write to a present but read-only page.
	if e := stderr.String(); !strings.Contains(e, "SIGSEGV") || !strings.Contains(e, "code=0x2") {
		t.Fatalf("child did not die of a SIGSEGV access error: %v\n%s", err, e)
	}
	m, err := s.MapRO()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmap()
	for i, v := range m.Bytes() {
		if v != "sealed"[i%6] {
			t.Fatalf("byte %d changed to %d", i, v)
		}
	}
}

func TestNoSHMFiles(t *testing.T) {
	name := fmt.Sprintf("pipehost-shm-test-%d", os.Getpid())
	s := mustCreate(t, name, 1<<20)
	fill(t, s, []byte{7})
	ents, err := os.ReadDir("/dev/shm")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), name) {
			t.Fatalf("/dev/shm/%s exists", e.Name())
		}
	}
	link, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(s.FD()))
	if !strings.HasPrefix(link, "/memfd:"+name) {
		t.Fatalf("segment lives at %q, not in an anonymous memfd", link)
	}
}

func TestSegmentCloseIdempotent(t *testing.T) {
	s, err := Create("close", 4096)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s.FD() != -1 {
		t.Fatal("FD after Close")
	}
	if err := s.SealWrite(); !errors.Is(err, ErrClosed) {
		t.Fatalf("SealWrite after Close: %v", err)
	}
	if _, err := s.MapRW(); !errors.Is(err, ErrClosed) {
		t.Fatalf("MapRW after Close: %v", err)
	}
}

func TestMappingOutlivesClose(t *testing.T) {
	s, err := Create("outlive", 8192)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.MapRW()
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	b := m.Bytes()
	b[8191] = 5
	if b[8191] != 5 {
		t.Fatal("write lost")
	}
	m.Unmap()
}

func TestShmemTHPParse(t *testing.T) {
	for in, want := range map[string]bool{
		"always within_size advise [never] deny force\n": false,
		"[always] within_size advise never deny force\n": true,
		"always [within_size] advise never deny force":   true,
		"always within_size [advise] never deny force":   true,
		"always within_size advise never [deny] force":   false,
		"always within_size advise never deny [force]":   true,
		"garbage": false,
		"[broken": false,
	} {
		if got := shmemTHPAllows(in); got != want {
			t.Errorf("%q: %v, want %v", in, got, want)
		}
	}
}

func TestView(t *testing.T) {
	s := mustCreate(t, "view", 4096)
	m, err := s.MapRW()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmap()
	b := m.Bytes()
	f, err := View[float32](b)
	if err != nil {
		t.Fatal(err)
	}
	if len(f) != 1024 {
		t.Fatalf("len %d", len(f))
	}
	f[3] = 1.5
	if got := math.Float32frombits(uint32(b[12]) | uint32(b[13])<<8 | uint32(b[14])<<16 | uint32(b[15])<<24); got != 1.5 {
		t.Fatalf("view does not alias the mapping: %v", got)
	}
	if _, err := View[float64](b[4:]); err == nil {
		t.Fatal("misaligned float64 view accepted")
	}
	if _, err := View[uint32](b[:10]); err == nil {
		t.Fatal("length 10 accepted for uint32")
	}
	u8, err := View[uint8](b[1:4])
	if err != nil || len(u8) != 3 {
		t.Fatalf("u8 view: %v %v", len(u8), err)
	}
	type height float64
	h, err := View[height](b[8:])
	if err != nil || len(h) != 511 || uintptr(unsafe.Pointer(&h[0])) != uintptr(unsafe.Pointer(&b[8])) {
		t.Fatalf("named type view: %d %v", len(h), err)
	}
}

func TestSegmentLifecycleLeaksNothing(t *testing.T) {
	before := openFDs(t)
	for i := range 20 {
		s, err := Create(fmt.Sprint("cycle-", i), int64(i)*4096)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Prefault(); err != nil {
			t.Fatal(err)
		}
		rw, err := s.MapRW()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SealWrite(); i > 0 && !errors.Is(err, ErrWritableMapping) {
			t.Fatalf("seal while mapped: %v", err)
		}
		rw.Unmap()
		if err := s.SealWrite(); err != nil {
			t.Fatal(err)
		}
		dup, _ := unix.FcntlInt(uintptr(s.FD()), unix.F_DUPFD_CLOEXEC, 0)
		r, err := Open(dup)
		if err != nil {
			t.Fatal(err)
		}
		ro, err := r.MapRO()
		if err != nil {
			t.Fatal(err)
		}
		ro.Unmap()
		r.Close()
		s.Close()
	}
	checkNoLeak(t, before)
}
