package shm

import (
	"bytes"
	"os"
	"strconv"
	"testing"
)

// rssShmem is this process's RssShmem in bytes: shared pages it has mapped.
func rssShmem(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("RssShmem:")); ok {
			kb, err := strconv.ParseInt(string(bytes.Fields(rest)[0]), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Skip("no RssShmem in /proc/self/status")
	return 0
}

// Populate maps every page of a writable view before anything is written
// (with and without the segment's pages allocated first), leaves the bytes
// zero, and does nothing to a read-only or unmapped view.
func TestPopulateMapsEveryPage(t *testing.T) {
	const size = 32 << 20
	for _, prefault := range []bool{false, true} {
		s := mustCreate(t, "populate", size)
		if prefault {
			if err := s.Prefault(); err != nil {
				t.Fatal(err)
			}
		}
		m, err := s.MapRW()
		if err != nil {
			t.Fatal(err)
		}
		before := rssShmem(t)
		m.Populate()
		if grew := rssShmem(t) - before; grew < size*9/10 {
			t.Errorf("prefault %v: RssShmem grew by %d after Populate, want about %d", prefault, grew, size)
		}
		b := m.Bytes()
		if b[0] != 0 || b[size/2] != 0 || b[size-1] != 0 {
			t.Errorf("prefault %v: populated pages are not zero", prefault)
		}
		b[size-1] = 7
		m.Unmap()
		m.Populate() // unmapped: nothing to do, and no fault
		if err := s.SealWrite(); err != nil {
			t.Fatal(err)
		}
		ro, err := s.MapRO()
		if err != nil {
			t.Fatal(err)
		}
		ro.Populate() // read-only: left alone
		if ro.Bytes()[size-1] != 7 {
			t.Errorf("prefault %v: the write through the populated view is lost", prefault)
		}
		ro.Unmap()
	}
}
