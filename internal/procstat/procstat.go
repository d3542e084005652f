// Package procstat reads a process's memory high-water mark. Resetting it
// before a stage and reading it after gives the stage's exact peak, however
// short: a sampler would miss a spike between two samples.
package procstat

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// ResetPeak resets this process's VmHWM to its current RSS (Linux
// /proc/self/clear_refs = 5). Errors are ignored: peaks are then since
// process start.
func ResetPeak() {
	if fd := clearRefs.get(); fd >= 0 {
		_, _ = unix.Write(fd, []byte("5"))
	}
}

// The /proc files read or written around every stage stay open: opening
// one walks /proc and allocates a file, which costs more than the read.
// Raw syscalls, not os.File: nothing is registered with the poller. A
// /proc/self file opened once keeps describing this process (its threads
// share the one memory map it reports), and pread at offset 0 makes the
// kernel render it afresh each time.
type keptFile struct {
	path string
	mode int
	once sync.Once
	fd   int // -1 when it cannot be opened
}

var (
	clearRefs = keptFile{path: "/proc/self/clear_refs", mode: unix.O_WRONLY}
	statm     = keptFile{path: "/proc/self/statm", mode: unix.O_RDONLY}
	status    = keptFile{path: "/proc/self/status", mode: unix.O_RDONLY}
)

func (k *keptFile) get() int {
	k.once.Do(func() {
		fd, err := unix.Open(k.path, k.mode|unix.O_CLOEXEC, 0)
		if err != nil {
			fd = -1
		}
		k.fd = fd
	})
	return k.fd
}

// Open opens the /proc files this package keeps open, where the first use
// would: a process that counts its fds (a leak check) opens them first.
func Open() {
	clearRefs.get()
	statm.get()
	status.get()
}

// Peak is this process's VmHWM in bytes, 0 when unknown.
func Peak() uint64 { return field("VmHWM:") }

// PeakSince is this process's VmHWM in bytes at the end of a span that
// began with a Getrusage returning startMaxRSS and then an RSS reading of
// rss, given endMaxRSS from a Getrusage at its end (ru_maxrss, KiB). It
// costs nothing when ru_maxrss is exact, and reads /proc/self/status (tens
// of µs) when it may not be.
//
// ru_maxrss is max(VmHWM, the signal struct's maxrss), and the latter is
// the peak at exec and at each thread's exit: it is never reset by
// ResetPeak. It cannot exceed VmHWM at the end when startMaxRSS ≤ rss
// (both bounded it at the start, and VmHWM only grows from rss), nor when
// ru_maxrss grew during the span (it grew because VmHWM did).
func PeakSince(startMaxRSS int64, rss uint64, endMaxRSS int64) uint64 {
	if endMaxRSS > startMaxRSS || uint64(startMaxRSS)*1024 <= rss {
		return uint64(endMaxRSS) * 1024
	}
	return Peak()
}

// RSS is this process's current VmRSS in bytes, 0 when unknown. It reads
// /proc/self/statm (a few µs, against tens for /proc/self/status).
func RSS() uint64 {
	fd := statm.get()
	if fd < 0 {
		return field("VmRSS:")
	}
	var buf [128]byte
	n, err := unix.Pread(fd, buf[:], 0)
	if err != nil || n <= 0 {
		return field("VmRSS:")
	}
	// "size resident shared text lib data dt", in pages.
	f := strings.Fields(string(buf[:n]))
	if len(f) < 2 {
		return field("VmRSS:")
	}
	pages, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return field("VmRSS:")
	}
	return pages * uint64(os.Getpagesize())
}

// field reads one "Name:   123 kB" line of /proc/self/status into a stack
// buffer: it runs after most stages.
func field(name string) uint64 {
	fd := status.get()
	if fd < 0 {
		return 0
	}
	var buf [4096]byte
	n := 0
	for n < len(buf) {
		m, err := unix.Pread(fd, buf[n:], int64(n))
		if err != nil || m <= 0 {
			break
		}
		n += m
	}
	b := buf[:n]
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if rest, ok := bytes.CutPrefix(line, []byte(name)); ok {
			if f := bytes.Fields(rest); len(f) > 0 {
				kb, _ := strconv.ParseUint(string(f[0]), 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}
