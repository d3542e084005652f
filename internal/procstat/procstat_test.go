package procstat

import (
	"testing"

	"golang.org/x/sys/unix"
)

func maxRSS(t *testing.T) int64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return ru.Maxrss
}

// RSS through statm agrees with VmRSS in /proc/self/status.
func TestRSSMatchesStatus(t *testing.T) {
	a, b := RSS(), field("VmRSS:")
	if a == 0 || b == 0 {
		t.Fatalf("RSS %d, VmRSS %d: want both known", a, b)
	}
	if d := int64(a) - int64(b); d > 1<<20 || d < -1<<20 {
		t.Errorf("RSS %d from statm, %d from status", a, b)
	}
}

// The peak of a span that touches 64 MiB more is what VmHWM says, however
// it is read, and a span that touches nothing new still reads VmHWM.
func TestPeakSinceMatchesVmHWM(t *testing.T) {
	for _, grow := range []int{0, 64 << 20} {
		ResetPeak()
		start := maxRSS(t)
		rss := RSS()
		m, err := unix.Mmap(-1, 0, grow+4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(m); i += 4096 {
			m[i] = 1
		}
		_ = unix.Munmap(m) // the peak stays
		got, want := PeakSince(start, rss, maxRSS(t)), Peak()
		if d := int64(got) - int64(want); d > 1<<20 || d < -1<<20 {
			t.Errorf("grew %d: PeakSince %d, VmHWM %d", grow, got, want)
		}
		if grow > 0 && got+1<<20 < rss+uint64(grow) {
			t.Errorf("grew %d: PeakSince %d, under the %d at the start plus the growth", grow, got, rss)
		}
	}
}

// A ru_maxrss above the span's start RSS (the peak at exec or at a thread's
// exit) is not trusted: VmHWM is read instead.
func TestPeakSinceDistrustsStaleMaxRSS(t *testing.T) {
	if got, want := PeakSince(1<<40, 4096, 1<<40), Peak(); got != want {
		t.Errorf("PeakSince with a stale ru_maxrss: %d, want VmHWM %d", got, want)
	}
}
