package shm

import (
	"errors"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The hand-off (docs/protocol.md) rests on one kernel fact: F_SEAL_WRITE is
// refused with EBUSY while any process holds a shared mapping of the memfd
// that is, or could again be made, writable. These tests pin it for the two
// cases a producer could hide: a view made read-only with mprotect, and a
// writable mapping inherited by a forked child.

// addWriteSeal asks the kernel directly, without SealWrite's bookkeeping.
func addWriteSeal(s *Segment) error {
	_, err := unix.FcntlInt(uintptr(s.FD()), unix.F_ADD_SEALS, unix.F_SEAL_WRITE)
	return err
}

func TestWriteSealRefusedForMprotectedMapping(t *testing.T) {
	s := mustCreate(t, "mprotected", 2<<20)
	b, err := unix.Mmap(s.FD(), 0, int(s.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	b[0] = 1
	if err := unix.Mprotect(b, unix.PROT_READ); err != nil {
		t.Fatal(err)
	}
	if err := addWriteSeal(s); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("F_SEAL_WRITE with a mapping mprotected read-only: %v, want EBUSY", err)
	}
	if err := s.SealWrite(); !errors.Is(err, ErrWritableMapping) {
		t.Fatalf("SealWrite: %v, want ErrWritableMapping", err)
	}
	// Why it must count: the mapping can be made writable again.
	if err := unix.Mprotect(b, unix.PROT_READ|unix.PROT_WRITE); err != nil {
		t.Fatalf("mprotect back to writable before the seal: %v", err)
	}
	b[1] = 2
	if err := unix.Mprotect(b, unix.PROT_READ); err != nil {
		t.Fatal(err)
	}
	if err := unix.Munmap(b); err != nil {
		t.Fatal(err)
	}
	if err := s.SealWrite(); err != nil {
		t.Fatalf("SealWrite once every mapping is gone: %v", err)
	}
	if seals, _ := s.Seals(); seals&unix.F_SEAL_WRITE == 0 {
		t.Fatalf("seals %s", SealString(seals))
	}
}

func TestWriteSealRefusedForForkedChildMapping(t *testing.T) {
	s := mustCreate(t, "forked", 2<<20)
	b, err := unix.Mmap(s.FD(), 0, int(s.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	b[0] = 1
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	pid, errno := forkHolding(p[0], p[1])
	if errno != 0 {
		unix.Munmap(b)
		t.Fatalf("fork: %v", errno)
	}
	reaped := false
	release := func() {
		if reaped {
			return
		}
		reaped = true
		unix.Close(p[1])
		unix.Close(p[0])
		var ws unix.WaitStatus
		if _, err := unix.Wait4(int(pid), &ws, 0, nil); err != nil {
			t.Errorf("wait for the child: %v", err)
		} else if !ws.Exited() || ws.ExitStatus() != 0 {
			t.Errorf("child: %v", ws)
		}
	}
	defer release()
	// The parent's own view goes; only the child's inherited copy is left.
	if err := unix.Munmap(b); err != nil {
		t.Fatal(err)
	}
	if err := addWriteSeal(s); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("F_SEAL_WRITE while a forked child maps the segment writable: %v, want EBUSY", err)
	}
	if err := s.SealWrite(); !errors.Is(err, ErrWritableMapping) {
		t.Fatalf("SealWrite: %v, want ErrWritableMapping", err)
	}
	if s.Sealed() {
		t.Fatal("sealed despite EBUSY")
	}
	start := time.Now()
	release() // closing the pipe lets the child exit, taking its mapping
	if err := s.SealWrite(); err != nil {
		t.Fatalf("SealWrite after the child exited (%v): %v", time.Since(start), err)
	}
	if seals, _ := s.Seals(); seals&(unix.F_SEAL_WRITE|unix.F_SEAL_SEAL) != unix.F_SEAL_WRITE|unix.F_SEAL_SEAL {
		t.Fatalf("seals %s", SealString(seals))
	}
}

// forkByte is where the child's read lands (a global: the child must not
// allocate).
var forkByte byte

// forkHolding forks a child that inherits every mapping of this process and
// blocks until the pipe whose ends are rfd and wfd is closed by the parent.
// Between fork and exit the child only makes raw system calls: like the
// child half of syscall.ForkExec, it must not touch the Go runtime.
//
//go:norace
//go:nosplit
func forkHolding(rfd, wfd int) (uintptr, syscall.Errno) {
	pid, _, errno := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if errno != 0 || pid != 0 {
		return pid, errno
	}
	syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(wfd), 0, 0)
	// EOF once the parent closes its write end (or dies).
	syscall.RawSyscall(syscall.SYS_READ, uintptr(rfd), uintptr(unsafe.Pointer(&forkByte)), 1)
	syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
	return 0, 0
}
