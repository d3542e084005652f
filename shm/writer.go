package shm

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Writer builds a segment whose size is not known in advance (an Arrow IPC
// file, a blob) by appending to a memfd. The bytes go straight into the
// shared pages: Finish seals the size and returns the Segment without a
// copy.
type Writer struct {
	f    *os.File
	name string
	n    int64
}

// NewWriter starts an empty growable segment.
func NewWriter(name string) (*Writer, error) {
	fd, err := memfd(name)
	if err != nil {
		return nil, fmt.Errorf("segment writer %q: %w", name, err)
	}
	return &Writer{f: os.NewFile(uintptr(fd), "memfd:"+name), name: name}, nil
}

// Write appends p.
func (w *Writer) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("segment writer %q: %w", w.name, err)
	}
	return n, nil
}

// Len is the number of bytes written so far.
func (w *Writer) Len() int64 { return w.n }

// Finish seals the segment's size and hands it over; the Writer is done.
func (w *Writer) Finish() (*Segment, error) {
	fd, err := unix.Dup(int(w.f.Fd()))
	w.f.Close()
	if err != nil {
		return nil, fmt.Errorf("segment writer %q: %w", w.name, err)
	}
	unix.CloseOnExec(fd)
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, sizeSeals); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("segment writer %q: sealing its size: %w", w.name, err)
	}
	seg, err := Open(fd)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	seg.name = w.name
	return seg, nil
}

// Abort discards the segment.
func (w *Writer) Abort() { w.f.Close() }
