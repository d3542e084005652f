package arena

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipehost/pipehost/shm"
	"golang.org/x/sys/unix"
)

func fdOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

func openFDCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestAllocateAndLiveness(t *testing.T) {
	a := New(0)
	defer a.Close()
	e, err := a.Allocate("height", "terrain", 1<<20, []string{"erosion", "rivers"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if e.ID != 1 || e.Size != 1<<20 || e.Producer != "terrain" || e.Segment.Size() != 1<<20 {
		t.Fatalf("entry %+v", e)
	}
	e2, err := a.Allocate("mask", "terrain", 4096, []string{"rivers"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if e2.ID != 2 {
		t.Fatalf("second id %d", e2.ID)
	}
	if n, b := a.Live(); n != 2 || b != 1<<20+4096 {
		t.Fatalf("live %d %d", n, b)
	}
	// The producer writes, unmaps; the arena seals.
	m, err := e.Segment.MapRW()
	if err != nil {
		t.Fatal(err)
	}
	m.Bytes()[0] = 1
	if err := a.Seal(e.ID); !errors.Is(err, shm.ErrWritableMapping) || !strings.Contains(err.Error(), `stage "terrain"`) {
		t.Fatalf("seal with a writable mapping: %v", err)
	}
	m.Unmap()
	if err := a.Seal(e.ID); err != nil {
		t.Fatal(err)
	}
	if !e.Sealed() || !e.Segment.Sealed() {
		t.Fatal("not sealed")
	}
	fd := e.Segment.FD()
	if err := a.Release(e.ID, "erosion"); err != nil {
		t.Fatal(err)
	}
	if got := a.Pending(e.ID); len(got) != 1 || got[0] != "rivers" {
		t.Fatalf("pending %v", got)
	}
	if err := a.Release(e.ID, "erosion"); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("double release: %v", err)
	}
	if err := a.Release(e.ID, "nobody"); err == nil || !strings.Contains(err.Error(), "not one of its consumers") {
		t.Fatalf("stranger release: %v", err)
	}
	if a.Get(e.ID) == nil || !fdOpen(fd) {
		t.Fatal("freed before its last consumer")
	}
	if err := a.Release(e.ID, "rivers"); err != nil {
		t.Fatal(err)
	}
	if a.Get(e.ID) != nil || !e.Freed() {
		t.Fatal("still live after the last consumer")
	}
	if fdOpen(fd) {
		t.Fatal("fd still open after free")
	}
	if n, b := a.Live(); n != 1 || b != 4096 {
		t.Fatalf("live after release %d %d", n, b)
	}
	// A kept segment survives its consumers.
	if err := a.Release(e2.ID, "rivers"); err != nil {
		t.Fatal(err)
	}
	if a.Get(e2.ID) == nil {
		t.Fatal("kept segment freed")
	}
	if err := a.Release(e.ID, "rivers"); !errors.Is(err, ErrUnknownSegment) {
		t.Fatalf("release of freed: %v", err)
	}
	if a.Peak() != 1<<20+4096 {
		t.Fatalf("peak %d", a.Peak())
	}
}

func TestSealFreesConsumerless(t *testing.T) {
	a := New(0)
	defer a.Close()
	e, err := a.Allocate("scratch", "s", 8192, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if a.Get(e.ID) == nil {
		t.Fatal("consumer-less segment freed before its producer ran")
	}
	if err := a.Seal(e.ID); err != nil {
		t.Fatal(err)
	}
	if a.Get(e.ID) != nil {
		t.Fatal("unread, unkept segment not freed at Seal")
	}
	k, _ := a.Allocate("out", "s", 8192, nil, true)
	if err := a.Seal(k.ID); err != nil {
		t.Fatal(err)
	}
	if a.Get(k.ID) == nil {
		t.Fatal("kept segment freed at Seal")
	}
	if err := a.Free(k.ID); err != nil {
		t.Fatal(err)
	}
	if n, b := a.Live(); n != 0 || b != 0 {
		t.Fatalf("live %d %d", n, b)
	}
}

func TestBudget(t *testing.T) {
	a := New(10000)
	defer a.Close()
	before := openFDCount(t)
	e1, err := a.Allocate("a", "first", 6000, []string{"c"}, false)
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Allocate("b", "second", 5000, []string{"c"}, false)
	var be *BudgetError
	if !errors.As(err, &be) || !errors.Is(err, ErrOverBudget) {
		t.Fatalf("over budget: %v", err)
	}
	if be.Producer != "second" || be.Size != 5000 || be.Live != 6000 || be.Budget != 10000 {
		t.Fatalf("budget error %+v", be)
	}
	for _, want := range []string{`stage "second"`, "5000 bytes", `"b"`, "6000 of the 10000-byte"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if got := openFDCount(t); got != before+1 {
		t.Fatalf("rejected allocation created a segment: %d fds, want %d", got, before+1)
	}
	if _, err := a.Allocate("huge", "third", 20000, nil, false); err == nil || !strings.Contains(err.Error(), "more than the whole memory budget") {
		t.Fatalf("bigger than budget: %v", err)
	}
	if !a.Fits(4000) || a.Fits(4001) {
		t.Fatal("Fits wrong")
	}
	if err := a.WaitFits(context.Background(), 20000); !errors.Is(err, ErrOverBudget) {
		t.Fatalf("WaitFits beyond the budget: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := a.WaitFits(ctx, 5000); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitFits while full: %v", err)
	}
	// A waiter wakes when the bytes are released.
	woke := make(chan error, 1)
	go func() { woke <- a.WaitFits(context.Background(), 5000) }()
	select {
	case err := <-woke:
		t.Fatalf("WaitFits returned before memory was released: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	if err := a.Release(e1.ID, "c"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-woke:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitFits did not wake on release")
	}
	if _, err := a.Allocate("b", "second", 5000, nil, false); err != nil {
		t.Fatal(err)
	}
}

func TestZeroBudgetIsUnlimited(t *testing.T) {
	a := New(0)
	defer a.Close()
	if !a.Fits(1 << 50) {
		t.Fatal("unlimited arena refuses")
	}
	if _, err := a.Allocate("empty", "p", 0, nil, false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Allocate("neg", "p", -1, nil, false); err == nil {
		t.Fatal("negative size accepted")
	}
}

func TestAdopt(t *testing.T) {
	a := New(1 << 20)
	defer a.Close()
	// A plugin-made segment, as the fd channel delivers it.
	seg, err := shm.Create("plugin.table", 70000)
	if err != nil {
		t.Fatal(err)
	}
	fd, _ := unix.FcntlInt(uintptr(seg.FD()), unix.F_DUPFD_CLOEXEC, 0)
	seg.Close()
	e, err := a.Adopt(fd, "vectorize", []string{"writer"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if !e.Adopted || e.Size != 70000 || e.Name != "plugin.table" || e.Producer != "vectorize" {
		t.Fatalf("adopted %+v", e)
	}
	if n, b := a.Live(); n != 1 || b != 70000 {
		t.Fatalf("live %d %d", n, b)
	}
	if err := a.Seal(e.ID); err != nil {
		t.Fatal(err)
	}

	// Over budget: rejected and closed.
	big, _ := shm.Create("too-big", 1<<20)
	fd2, _ := unix.FcntlInt(uintptr(big.FD()), unix.F_DUPFD_CLOEXEC, 0)
	big.Close()
	if _, err := a.Adopt(fd2, "vectorize", nil, false); !errors.Is(err, ErrOverBudget) {
		t.Fatalf("over budget adopt: %v", err)
	}
	if fdOpen(fd2) {
		t.Fatal("rejected fd left open")
	}
}

func TestAdoptRejectsNonMemfd(t *testing.T) {
	a := New(0)
	defer a.Close()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[1])
	if _, err := a.Adopt(p[0], "bad", nil, false); err == nil || !strings.Contains(err.Error(), `stage "bad"`) {
		t.Fatalf("pipe adopted: %v", err)
	}
	if fdOpen(p[0]) {
		t.Fatal("rejected pipe left open")
	}
	f, err := os.CreateTemp(t.TempDir(), "regular")
	if err != nil {
		t.Fatal(err)
	}
	f.Write(make([]byte, 4096))
	rfd, _ := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	f.Close()
	if _, err := a.Adopt(rfd, "bad", nil, false); err == nil {
		t.Fatal("regular file adopted")
	}
	if fdOpen(rfd) {
		t.Fatal("rejected file left open")
	}
	// A memfd whose size is not sealed could shrink under a reader.
	mfd, _ := unix.MemfdCreate("unsealed", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	unix.Ftruncate(mfd, 4096)
	if _, err := a.Adopt(mfd, "bad", nil, false); err == nil || !strings.Contains(err.Error(), "size is not sealed") {
		t.Fatalf("unsealed memfd: %v", err)
	}
	if n, _ := a.Live(); n != 0 {
		t.Fatal("rejected segments counted")
	}
}

func TestCloseAfterPartialUse(t *testing.T) {
	before := openFDCount(t)
	a := New(1 << 24)
	var entries []*Entry
	for i := range 6 {
		e, err := a.Allocate(fmt.Sprint("out", i), "stage", 1<<20, []string{"x", "y"}, i%2 == 0)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	a.Seal(entries[0].ID)
	a.Release(entries[1].ID, "x")
	a.Release(entries[1].ID, "y") // freed
	a.Release(entries[2].ID, "x")
	m, err := entries[3].Segment.MapRW() // a producer mid-write
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if n, b := a.Live(); n != 0 || b != 0 {
		t.Fatalf("live after Close: %d %d", n, b)
	}
	for i, e := range entries {
		if e.Segment.FD() != -1 || !e.Freed() {
			t.Errorf("segment %d still open after Close", i)
		}
	}
	m.Unmap()
	if got := openFDCount(t); got != before {
		t.Fatalf("%d fds after Close, %d before", got, before)
	}
	if a.Peak() != 6<<20 {
		t.Fatalf("peak %d", a.Peak())
	}
	if _, err := a.Allocate("late", "s", 1, nil, false); !errors.Is(err, ErrClosed) {
		t.Fatalf("allocate after Close: %v", err)
	}
	if err := a.Seal(entries[3].ID); !errors.Is(err, ErrClosed) {
		t.Fatalf("seal after Close: %v", err)
	}
	if err := a.WaitFits(context.Background(), 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitFits after Close: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCloseWakesWaiters(t *testing.T) {
	a := New(100)
	if _, err := a.Allocate("x", "p", 100, nil, true); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.WaitFits(context.Background(), 50) }()
	time.Sleep(10 * time.Millisecond)
	a.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("waiter got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not wake a waiter")
	}
}

func TestPeakTracksLiveSet(t *testing.T) {
	// A chain a→b→c→d where each stage's input is freed once it ran: the
	// peak is two segments, not four.
	a := New(0)
	defer a.Close()
	const size = 1 << 16
	stages := []string{"a", "b", "c", "d"}
	var prev *Entry
	for i, s := range stages {
		var consumers []string
		if i+1 < len(stages) {
			consumers = []string{stages[i+1]}
		}
		e, err := a.Allocate("out", s, size, consumers, i == len(stages)-1)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Seal(e.ID); err != nil {
			t.Fatal(err)
		}
		if prev != nil {
			if err := a.Release(prev.ID, s); err != nil {
				t.Fatal(err)
			}
		}
		prev = e
	}
	if a.Peak() != 2*size {
		t.Fatalf("peak %d, want %d", a.Peak(), 2*size)
	}
	if n, b := a.Live(); n != 1 || b != size {
		t.Fatalf("live %d %d", n, b)
	}
}

func TestConcurrent(t *testing.T) {
	const budget = 64 << 10
	a := New(budget)
	defer a.Close()
	var wg sync.WaitGroup
	var maxSeen atomic.Int64
	var ids sync.Map
	for g := range 8 {
		wg.Go(func() {
			for i := range 40 {
				size := int64(4096 * (1 + (g+i)%4))
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				var e *Entry
				for e == nil {
					if err := a.WaitFits(ctx, size); err != nil {
						cancel()
						t.Error(err)
						return
					}
					var err error
					e, err = a.Allocate(fmt.Sprint("o", i), fmt.Sprint("g", g), size, []string{"r1", "r2"}, false)
					if err != nil && !errors.Is(err, ErrOverBudget) {
						cancel()
						t.Error(err)
						return
					}
				}
				cancel()
				if _, dup := ids.LoadOrStore(e.ID, true); dup {
					t.Errorf("id %d handed out twice", e.ID)
				}
				_, live := a.Live()
				for old := maxSeen.Load(); live > old && !maxSeen.CompareAndSwap(old, live); old = maxSeen.Load() {
				}
				m, err := e.Segment.MapRW()
				if err != nil {
					t.Error(err)
					return
				}
				m.Bytes()[0] = byte(i)
				m.Unmap()
				if err := a.Seal(e.ID); err != nil {
					t.Error(err)
				}
				var rw sync.WaitGroup
				for _, r := range []string{"r1", "r2"} {
					rw.Go(func() {
						if got := a.Get(e.ID); got != nil && got.ID != e.ID {
							t.Errorf("Get(%d) returned %d", e.ID, got.ID)
						}
						if err := a.Release(e.ID, r); err != nil {
							t.Error(err)
						}
					})
				}
				rw.Wait()
			}
		})
	}
	wg.Wait()
	if n, b := a.Live(); n != 0 || b != 0 {
		t.Fatalf("live after all released: %d %d", n, b)
	}
	if a.Peak() > budget || maxSeen.Load() > budget {
		t.Fatalf("peak %d exceeds budget %d", a.Peak(), budget)
	}
	if a.Peak() == 0 {
		t.Fatal("no peak recorded")
	}
}
