// Package arena is a run's MemoryArena: the ledger of every shared memory
// segment in the run. It creates and adopts segments, counts their bytes
// against the run's memory budget, seals them when their producer is done,
// and frees each one as soon as its last consumer is finished (liveness from
// the DAG), so peak memory is the live set rather than the sum of all
// outputs.
package arena

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/pipehost/pipehost/shm"
	"golang.org/x/sys/unix"
)

var (
	// ErrOverBudget is wrapped by every *BudgetError.
	ErrOverBudget = errors.New("memory budget exceeded")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("arena is closed")
	// ErrUnknownSegment is wrapped when an id names no live segment.
	ErrUnknownSegment = errors.New("no such live segment")
)

// BudgetError says a segment does not fit the run's memory budget.
type BudgetError struct {
	Producer string // stage that needs the memory
	Name     string // segment (output) name, empty for a plain Fits query
	Size     int64  // bytes requested
	Live     int64  // bytes held by live segments at the time
	Budget   int64
}

func (e *BudgetError) Error() string {
	who := "a request"
	if e.Producer != "" {
		who = fmt.Sprintf("stage %q", e.Producer)
	}
	what := fmt.Sprintf("%d bytes", e.Size)
	if e.Name != "" {
		what = fmt.Sprintf("%d bytes for %q", e.Size, e.Name)
	}
	if e.Size > e.Budget {
		return fmt.Sprintf("%s needs %s, more than the whole memory budget of %d bytes", who, what, e.Budget)
	}
	return fmt.Sprintf("%s needs %s but %d of the %d-byte memory budget are in use (%d free)",
		who, what, e.Live, e.Budget, e.Budget-e.Live)
}

func (e *BudgetError) Unwrap() error { return ErrOverBudget }

// Entry is one segment in the ledger. Its exported fields never change;
// the rest is read through methods.
type Entry struct {
	ID        uint64
	Name      string
	Producer  string
	Size      int64
	Consumers []string // every consumer, in the order given
	Keep      bool     // a run output: kept until Close
	Adopted   bool     // created by the plugin, not the host
	Segment   *shm.Segment

	pending map[string]bool // guarded by the arena's mutex
	sealed  atomic.Bool
	freed   atomic.Bool
}

// Sealed reports whether the arena has write-sealed the segment.
func (e *Entry) Sealed() bool { return e.sealed.Load() }

// Freed reports whether the segment has been closed and its bytes returned.
func (e *Entry) Freed() bool { return e.freed.Load() }

// Arena is the ledger. All methods are safe for concurrent use.
type Arena struct {
	budget int64

	mu      sync.Mutex
	entries map[uint64]*Entry
	nextID  uint64
	live    int64
	peak    int64
	closed  bool
	changed chan struct{} // closed and replaced whenever bytes are freed
}

// New makes an empty arena. budget is in bytes; 0 means unlimited.
func New(budget int64) *Arena {
	return &Arena{
		budget:  budget,
		entries: make(map[uint64]*Entry),
		changed: make(chan struct{}),
	}
}

// Budget is the arena's budget in bytes, 0 for unlimited.
func (a *Arena) Budget() int64 { return a.budget }

// fitsLocked reports whether n more bytes fit.
func (a *Arena) fitsLocked(n int64) bool {
	return a.budget == 0 || (n <= a.budget && a.live <= a.budget-n)
}

func (a *Arena) budgetError(producer, name string, n int64) error {
	return &BudgetError{Producer: producer, Name: name, Size: n, Live: a.live, Budget: a.budget}
}

// Allocate creates a segment of size bytes for producer's output name, to be
// read by consumers. The budget is checked before anything is created. A
// keep segment (a run output) lives until Close; any other is freed when the
// last consumer calls Release, or at Seal if it has no consumers.
func (a *Arena) Allocate(name, producer string, size int64, consumers []string, keep bool) (*Entry, error) {
	if size < 0 {
		return nil, fmt.Errorf("stage %q output %q: negative size %d", producer, name, size)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, fmt.Errorf("allocate %q for stage %q: %w", name, producer, ErrClosed)
	}
	if !a.fitsLocked(size) {
		return nil, a.budgetError(producer, name, size)
	}
	seg, err := shm.Create(producer+"."+name, size)
	if err != nil {
		return nil, fmt.Errorf("stage %q output %q: %w", producer, name, err)
	}
	return a.addLocked(seg, name, producer, consumers, keep, false), nil
}

// Adopt takes over fd, a segment a plugin created for a dynamic output of
// producer. It must be a memfd with its size sealed (shm.Open); it counts
// against the budget. On any error fd is closed: the segment is rejected.
// On success the arena owns fd. The caller compares the size the plugin
// announced (shm.Message.Size, the handle's segment_size) with Entry.Size.
func (a *Arena) Adopt(fd int, producer string, consumers []string, keep bool) (*Entry, error) {
	seg, err := shm.Open(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stage %q sent an unusable segment: %w", producer, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		seg.Close()
		return nil, fmt.Errorf("adopt segment %q from stage %q: %w", seg.Name(), producer, ErrClosed)
	}
	if !a.fitsLocked(seg.Size()) {
		err := a.budgetError(producer, seg.Name(), seg.Size())
		seg.Close()
		return nil, err
	}
	return a.addLocked(seg, seg.Name(), producer, consumers, keep, true), nil
}

func (a *Arena) addLocked(seg *shm.Segment, name, producer string, consumers []string, keep, adopted bool) *Entry {
	a.nextID++
	e := &Entry{
		ID:        a.nextID,
		Name:      name,
		Producer:  producer,
		Size:      seg.Size(),
		Consumers: slices.Clone(consumers),
		Keep:      keep,
		Adopted:   adopted,
		Segment:   seg,
		pending:   make(map[string]bool, len(consumers)),
	}
	for _, c := range consumers {
		e.pending[c] = true
	}
	a.entries[e.ID] = e
	a.live += e.Size
	a.peak = max(a.peak, a.live)
	return e
}

func (a *Arena) lookupLocked(id uint64) (*Entry, error) {
	if a.closed {
		return nil, fmt.Errorf("segment %d: %w", id, ErrClosed)
	}
	e, ok := a.entries[id]
	if !ok {
		return nil, fmt.Errorf("segment %d: %w", id, ErrUnknownSegment)
	}
	return e, nil
}

// Release marks consumer done with segment id. When no consumer is left and
// the segment is not kept, it is closed and its bytes return to the budget
// at once.
func (a *Arena) Release(id uint64, consumer string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, err := a.lookupLocked(id)
	if err != nil {
		return fmt.Errorf("release by %q: %w", consumer, err)
	}
	if !e.pending[consumer] {
		if slices.Contains(e.Consumers, consumer) {
			return fmt.Errorf("segment %d (%q of stage %q): consumer %q released it twice", id, e.Name, e.Producer, consumer)
		}
		return fmt.Errorf("segment %d (%q of stage %q): %q is not one of its consumers %v", id, e.Name, e.Producer, consumer, e.Consumers)
	}
	delete(e.pending, consumer)
	if len(e.pending) == 0 && !e.Keep {
		a.freeLocked(e)
	}
	return nil
}

// Free closes segment id now, whatever its consumers: for outputs of a failed
// stage and for segments nobody will read.
func (a *Arena) Free(id uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, err := a.lookupLocked(id)
	if err != nil {
		return err
	}
	a.freeLocked(e)
	return nil
}

func (a *Arena) freeLocked(e *Entry) {
	if e.freed.Swap(true) {
		return
	}
	delete(a.entries, e.ID)
	a.live -= e.Size
	e.Segment.Close()
	close(a.changed)
	a.changed = make(chan struct{})
}

// Get returns the live entry with this id, or nil.
func (a *Arena) Get(id uint64) *Entry {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.entries[id]
}

// Fits reports whether n more bytes fit the budget now.
func (a *Arena) Fits(n int64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return !a.closed && a.fitsLocked(n)
}

// WaitFits blocks until n more bytes fit the budget, ctx ends, or the arena
// closes. It fails at once with a *BudgetError if n exceeds the whole
// budget. Fits/WaitFits followed by Allocate is race-free only when one
// goroutine admits stages (releases only ever make room).
func (a *Arena) WaitFits(ctx context.Context, n int64) error {
	for {
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			return ErrClosed
		}
		if a.fitsLocked(n) {
			a.mu.Unlock()
			return nil
		}
		if a.budget != 0 && n > a.budget {
			err := a.budgetError("", "", n)
			a.mu.Unlock()
			return err
		}
		changed := a.changed
		a.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d bytes of memory: %w", n, context.Cause(ctx))
		}
	}
}

// Live returns the number of live segments and their total bytes.
func (a *Arena) Live() (segments int, bytes int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.entries), a.live
}

// Peak is the largest number of live bytes seen so far.
func (a *Arena) Peak() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.peak
}

// Close frees every segment, kept ones included (the end of a run, after
// success or failure). Later calls fail with ErrClosed. Idempotent.
func (a *Arena) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	for _, e := range a.entries {
		a.freeLocked(e)
	}
	a.closed = true
	close(a.changed)
	a.changed = make(chan struct{})
	return nil
}

// Pending lists the consumers that have not released the segment yet.
func (a *Arena) Pending(id uint64) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.entries[id]
	if !ok {
		return nil
	}
	var out []string
	for _, c := range e.Consumers {
		if e.pending[c] {
			out = append(out, c)
		}
	}
	return out
}

// AddConsumer registers one more consumer of a live segment (a stage that
// must read it again, e.g. to recompute a corrupt cache entry).
func (a *Arena) AddConsumer(id uint64, consumer string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, err := a.lookupLocked(id)
	if err != nil {
		return fmt.Errorf("add consumer %q: %w", consumer, err)
	}
	if !slices.Contains(e.Consumers, consumer) {
		e.Consumers = append(e.Consumers, consumer)
	}
	e.pending[consumer] = true
	return nil
}

// Seal write-seals segment id once its producer's Result has arrived: the
// producer must have unmapped every writable view of it by then
// (docs/protocol.md). A segment the plugin sealed itself is accepted as it
// is. EBUSY from the kernel is a definite answer, not a race: some process
// (the plugin, a child it forked, a helper it gave the fd to) still maps the
// output writable, so the stage fails and nobody ever sees the bytes. A
// segment with no pending consumers that is not kept is freed once sealed.
func (a *Arena) Seal(id uint64) error {
	a.mu.Lock()
	e, err := a.lookupLocked(id)
	a.mu.Unlock()
	if err != nil {
		return err
	}
	// Sealing takes milliseconds per GiB: not under the arena lock. The
	// Segment itself keeps a concurrent free from closing the fd meanwhile.
	if err := e.Segment.SealWrite(); err != nil {
		if errors.Is(err, shm.ErrWritableMapping) {
			return &WritableMappingError{Stage: e.Producer, Output: e.Name, Segment: e.ID, Err: err}
		}
		return fmt.Errorf("stage %q output %q (segment %d): %w", e.Producer, e.Name, e.ID, err)
	}
	return a.markSealed(e)
}

// WritableMappingError says a stage's output could not be sealed because a
// writable mapping of it still existed when the stage returned.
type WritableMappingError struct {
	Stage, Output string
	Segment       uint64
	Err           error
}

func (e *WritableMappingError) Error() string {
	return fmt.Sprintf("stage %q kept a writable mapping of its output %q (segment %d) after returning, "+
		"so its bytes could still change: unmap every writable view of an output before the stage returns, "+
		"and do not leave one in a child process or a helper the segment was passed to (%v)",
		e.Stage, e.Output, e.Segment, e.Err)
}

func (e *WritableMappingError) Unwrap() error { return e.Err }

// markSealed records a segment as immutable and frees it at once when no
// consumer will read it.
func (a *Arena) markSealed(e *Entry) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	e.sealed.Store(true)
	if e.freed.Load() {
		return nil
	}
	if len(e.pending) == 0 && !e.Keep {
		a.freeLocked(e)
	}
	return nil
}
