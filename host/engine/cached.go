package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/remote"
	"github.com/pipehost/pipehost/internal/clock"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// hostClaim is the arena consumer name the host itself holds on each output
// while the cache needs the bytes (to hash and store them), so an output
// nobody reads is not freed the moment it is sealed.
const hostClaim = "\x00host"

// claimants are the consumers an output is allocated with.
func (e *Engine) claimants(n *plan.Node, port string) []string {
	names := consumerNames(n, port)
	if e.opts.Cache != nil {
		names = append(names, hostClaim)
	}
	return names
}

// releaseHostClaims drops the host's claims once the cache has what it
// needs: the digests (waited for here) and, when storing, the stored bytes.
func (e *Engine) releaseHostClaims(r *StageResult) {
	if e.opts.Cache == nil {
		return
	}
	for _, o := range r.Outputs {
		if o.Entry != nil {
			_, _ = o.waitDigest(context.Background())
			_ = e.arena.Release(o.Entry.ID, hostClaim)
		}
	}
}

func logEvent(msg string) *pb.RunEvent {
	return &pb.RunEvent{Event: &pb.RunEvent_Log{Log: &pb.LogLine{
		Level: pb.LogLevel_LOG_LEVEL_WARN, Message: msg, TimeNs: clock.Now(),
	}}}
}

// inlineDigest is the size under which an output is hashed before its
// consumers start (microseconds); larger ones are hashed on their own
// goroutine while the consumers already read them.
const inlineDigest = 1 << 20

// digestGate, set only by tests, is called before a stage's output is
// digested in the background, so a test can order a digest against a
// consumer's run and pin each early-cutoff path.
var digestGate func(stage string)

// digestOutputs hashes every output of a finished stage (sealed segments,
// read through read-only mappings), the large ones in the background.
func (e *Engine) digestOutputs(r *StageResult) {
	for _, o := range r.Outputs {
		if !o.known.IsZero() {
			o.setDigest(o.known, nil)
			continue
		}
		seg := o.Entry.Segment
		if seg.Size() < inlineDigest {
			o.setDigest(cache.SegmentDigest(seg))
			continue
		}
		e.digests.Add(1)
		digestPool.run(func() {
			defer e.digests.Done()
			if digestGate != nil {
				digestGate(r.Name)
			}
			o.setDigest(cache.SegmentDigest(seg))
		})
	}
}

// run runs f on an OS thread of the pool's lowered priority, so digests
// and cache writes give way to stages when the CPUs are short. The threads
// are kept by idle workers and never end: the runtime ends a locked thread
// with its goroutine, and a thread that ends takes down every plugin
// launched from it (Pdeathsig is per thread), so a one-off locked goroutine
// could kill a running plugin.
func (p *yieldPool) run(f func()) {
	if p.slots != nil {
		p.slots <- struct{}{}
		job := f
		f = func() { defer func() { <-p.slots }(); job() }
	}
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		w := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		w <- f
		return
	}
	p.mu.Unlock()
	w := make(chan func(), 1)
	go func() {
		runtime.LockOSThread()
		_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), p.nice)
		for job := range w {
			job()
			p.mu.Lock()
			p.idle = append(p.idle, w)
			p.mu.Unlock()
		}
	}()
	w <- f
}

// runYielding runs f on one of pool's threads and waits for it.
func runYielding(pool *yieldPool, f func()) {
	done := make(chan struct{})
	pool.run(func() { defer close(done); f() })
	<-done
}

// yieldPool keeps OS threads of lowered priority, each with an idle worker
// (their number is the most jobs the pool ever ran at once).
type yieldPool struct {
	nice  int
	slots chan struct{} // nil: no bound on the jobs run at once
	mu    sync.Mutex
	idle  []chan func()
}

var (
	// digestPool hashes large outputs and writes them to the cache: work
	// that holds memory until it ends, so it gives way to stages (nice 10)
	// without waiting for an idle CPU.
	digestPool = &yieldPool{nice: 10}
	// writePool writes the entries of small outputs: file-system work no
	// stage waits for and that holds next to no memory, done when a CPU
	// has nothing better to do (nice 19). On a machine whose CPUs the
	// stages keep busy it would otherwise slow every stage that follows.
	// Four threads at most: more would not write faster, and a backlog
	// waits as goroutines, not threads. (SCHED_IDLE was slower: the
	// backlog then grows until the run's end.)
	writePool = &yieldPool{nice: 19, slots: make(chan struct{}, 4)}
)

// store writes the stage's outputs to the cache in the background, once
// their digests are known, and releases the host's claims on them when
// done. unlock is the key's lock if the stage holds it already; otherwise
// the store takes it, and skips an entry another run stored meanwhile.
// Pending stores keep their segments in the ledger, so they count against
// the memory budget like any live output: bounded, and never dropped.
func (e *Engine) store(ctx context.Context, n *plan.Node, r *StageResult, parts cache.Parts, unlock func()) {
	e.stores.Add(1)
	e.storing.Add(1)
	if unlock != nil && e.opts.Remote == nil && smallAndDigested(r) {
		e.queueSmallStore(&smallStore{n: n, r: r, parts: parts, unlock: unlock})
		return
	}
	go func() {
		defer e.stores.Done()
		defer func() {
			e.releaseHostClaims(r)
			e.storing.Add(-1)
			e.wakeAdmission()
		}()
		m, segs, err := entryOf(ctx, n, r, parts)
		if err != nil {
			if unlock != nil {
				unlock()
			}
			e.warnStore(n, err)
			return
		}
		if unlock == nil {
			u, err := e.opts.Cache.Lock(ctx, r.Key)
			if err != nil {
				e.warnStore(n, err)
				return
			}
			unlock = u
			if prev, _ := e.opts.Cache.Lookup(r.Key); prev != nil && !e.opts.Refresh[n.Name] {
				unlock()
				return // another run stored it meanwhile
			}
		}
		defer unlock()
		var bytes int64
		for _, seg := range segs {
			bytes += seg.Size()
		}
		write := func() {
			m.Created = time.Now().UTC()
			if err := e.opts.Cache.Store(m, segs); err != nil {
				e.warnStore(n, err)
			}
			if e.opts.Remote != nil {
				// Still within the store: the host's claims (released when it
				// returns) keep the segments alive for the upload, and the
				// run waits for it like for the local write.
				open := func(port string) (io.ReaderAt, error) { return remote.SegmentReader(segs[port]), nil }
				if err := e.opts.Remote.Store(ctx, r.Key, m.Outputs, open); err != nil {
					e.opts.Observer.StageEvent(n, logEvent("could not upload to the remote cache: "+err.Error()))
				}
			}
		}
		pool := writePool
		if bytes >= inlineDigest {
			pool = digestPool
		}
		runYielding(pool, write)
	}()
}

// entryOf is the cache entry of a finished stage, once its outputs' digests
// are known: the manifest (Created is set when it is written) and the
// outputs' segments.
func entryOf(ctx context.Context, n *plan.Node, r *StageResult, parts cache.Parts) (*cache.Manifest, map[string]*shm.Segment, error) {
	m := &cache.Manifest{Key: r.Key, Stage: n.Name, Kind: n.Kind, Parts: parts}
	segs := map[string]*shm.Segment{}
	for port, o := range r.Outputs {
		d, err := o.waitDigest(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("output %q: %w", port, err)
		}
		segs[port] = o.Entry.Segment
		m.Outputs = append(m.Outputs, cache.OutputRecord{Port: port, Digest: d, Handle: cache.EncodeHandle(o.Handle)})
	}
	return m, segs, nil
}

func (e *Engine) warnStore(n *plan.Node, err error) {
	e.opts.Observer.StageEvent(n, logEvent("could not store cache entry: "+err.Error()))
}

// smallAndDigested reports whether every output of r is small and hashed
// already, so its entry can be written at once.
func smallAndDigested(r *StageResult) bool {
	for _, o := range r.Outputs {
		if o.Entry == nil || o.Entry.Segment.Size() >= inlineDigest {
			return false
		}
		if d, ok := o.digestNow(); !ok || d.IsZero() {
			return false
		}
	}
	return true
}

// smallStore is the entry of a stage whose outputs are all small and
// digested, waiting for the batch writer; the stage holds its key's lock.
type smallStore struct {
	n      *plan.Node
	r      *StageResult
	parts  cache.Parts
	unlock func()
}

// queueSmallStore hands an entry to the batch writer of small entries: it
// stores every entry queued since it last looked and appends their records
// to the entry log in one write, instead of a goroutine and a thread
// hand-off per entry (most stages of a many-stage DAG have only small
// outputs).
func (e *Engine) queueSmallStore(s *smallStore) {
	e.smallBatch.add(s, e.writeSmallStores)
}

func (e *Engine) writeSmallStores(batch []*smallStore) {
	now := time.Now().UTC()
	var ms []*cache.Manifest
	var stored []*smallStore
	for _, s := range batch {
		// The digests are known (smallAndDigested): this does not wait.
		m, segs, err := entryOf(context.Background(), s.n, s.r, s.parts)
		if err == nil {
			m.Created = now
			err = e.opts.Cache.StoreBlobs(m, segs)
		}
		if err != nil {
			e.warnStore(s.n, err)
			continue
		}
		ms = append(ms, m)
		stored = append(stored, s)
	}
	if err := e.opts.Cache.PutManifests(ms); err != nil {
		for _, s := range stored {
			e.warnStore(s.n, err)
		}
	}
	for _, s := range batch {
		s.unlock()
		e.releaseHostClaims(s.r)
		e.storing.Add(-1)
		e.stores.Done()
	}
	e.wakeAdmission()
}

// batcher hands items to one writer at a time, on writePool: the writer
// takes everything queued since it last looked, so a burst of items costs
// one thread hand-off, not one each.
type batcher[T any] struct {
	mu      sync.Mutex
	queue   []T
	writing bool
}

// add queues item and, unless a writer is running, starts one that calls
// write with each batch until the queue is empty.
func (b *batcher[T]) add(item T, write func([]T)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.queue = append(b.queue, item)
	if b.writing {
		return
	}
	b.writing = true
	// On its own goroutine: the pool may make it wait for a thread, and
	// b.mu is held here.
	go runYielding(writePool, func() {
		for {
			b.mu.Lock()
			batch := b.queue
			b.queue = nil
			if len(batch) == 0 {
				b.writing = false
				b.mu.Unlock()
				return
			}
			b.mu.Unlock()
			write(batch)
		}
	})
}

// materialize makes a cached output's bytes available as an arena segment
// that needBy (a stage about to run) will release.
func (e *Engine) materialize(ctx context.Context, producer *plan.Node, port string, o *Output, needBy string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.Entry != nil && !o.Entry.Freed() {
		return e.arena.AddConsumer(o.Entry.ID, needBy)
	}
	if !o.Cached {
		return fmt.Errorf("output %q of %s is gone", port, producer.Name)
	}
	seg, err := CachedSegment(ctx, e.opts.Cache, e.opts.Remote, o, port)
	if err != nil {
		return err
	}
	defer seg.Close()
	consumers := []string{needBy}
	for c := range o.pending {
		if c != needBy {
			consumers = append(consumers, c)
		}
	}
	var fd int
	if err := seg.Use(func(f int) error {
		var err error
		fd, err = unix.FcntlInt(uintptr(f), unix.F_DUPFD_CLOEXEC, 0)
		return err
	}); err != nil {
		return err
	}
	ent, err := e.arena.Adopt(fd, producer.Name, consumers, e.keep(producer, port))
	if err != nil {
		return err // Adopt closed fd
	}
	if err := e.arena.Seal(ent.ID); err != nil {
		e.arena.Free(ent.ID)
		return err
	}
	o.Entry = ent
	o.Handle.SegmentId = ent.ID
	return nil
}

// materializeInputs loads the cached inputs of a stage about to run. A
// cache entry that turns out corrupt is removed and its stage recomputed,
// so the run still completes with correct data.
func (e *Engine) materializeInputs(ctx context.Context, n *plan.Node, results []*StageResult, slots chan int) error {
	if e.opts.Cache == nil {
		return nil
	}
	for _, in := range n.Inputs {
		up := results[in.From.Index]
		port := in.Output.GetName()
		err := e.materialize(ctx, in.From, port, up.Outputs[port], n.Name)
		if isCorrupt(err) {
			e.opts.Observer.StageEvent(in.From, logEvent(fmt.Sprintf("cached output %q is corrupt (%v): entry removed, recomputing %s", port, err, in.From.Name)))
			e.opts.Cache.Invalidate(up.Key)
			e.opts.Cache.RemoveBlob(up.Outputs[port].Digest)
			if err := e.recompute(ctx, in.From, up, results, slots, n.Name); err != nil {
				return fmt.Errorf("recomputing %s after its cache entry turned out corrupt: %w", in.From.Name, err)
			}
			err = e.materialize(ctx, in.From, port, up.Outputs[port], n.Name)
		}
		if err != nil {
			return fmt.Errorf("input %q (cached output of %s): %w", in.Input.GetName(), in.From.Name, err)
		}
	}
	return nil
}

// CachedSegment loads a cached output's bytes into a new write-sealed
// segment, verified against its digest: from the local store if it has
// them, else from the remote cache for a remote hit. Remote bytes that do
// not match, have been evicted or cannot be had wrap cache.ErrCorrupt, so
// the stage is recomputed like for a corrupt local entry.
func CachedSegment(ctx context.Context, c *cache.Cache, rc *remote.Cache, o *Output, name string) (*shm.Segment, error) {
	if o.Remote && rc != nil {
		if _, err := os.Stat(c.BlobPath(o.Digest)); err != nil {
			seg, err := rc.Fetch(ctx, o.Digest, name)
			if err != nil {
				return nil, fmt.Errorf("%w: %v", cache.ErrCorrupt, err)
			}
			return seg, nil
		}
	}
	return c.Materialize(o.Digest, name)
}

func isCorrupt(err error) bool { return err != nil && errors.Is(err, cache.ErrCorrupt) }

// recompute runs a stage that was served from the cache, because a
// consumer found the cached bytes corrupt, and swaps its outputs in. It goes
// through the same admission, resources and slot as any stage.
func (e *Engine) recompute(ctx context.Context, n *plan.Node, up *StageResult, results []*StageResult, slots chan int, needBy string) error {
	mu, _ := e.recomputing.LoadOrStore(up, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	if up.Cache != CacheHit {
		return nil // another consumer already did it
	}
	releaseInputs := sync.OnceFunc(func() { e.releaseInputs(n, results) })
	defer releaseInputs()
	if err := e.materializeInputs(ctx, n, results, slots); err != nil {
		return err
	}
	fresh := &StageResult{Name: n.Name, Kind: n.Kind, Slot: -1}
	done := e.execute(ctx, n, fresh, results, slots)
	releaseInputs()
	done()
	if fresh.Status != StatusOK {
		return fresh.Err
	}
	e.digestOutputs(fresh)
	for port, o := range fresh.Outputs {
		if _, err := o.waitDigest(ctx); err != nil {
			e.freeOutputs(fresh)
			return fmt.Errorf("output %q: %w", port, err)
		}
	}
	if inputs, ok := e.inputDigests(n, results); ok {
		fresh.Key = up.Key
		// ctx is the run of the consumer that found the entry corrupt, which
		// may well end before the store does: the repaired entry must not
		// be lost with it.
		e.store(context.WithoutCancel(ctx), n, fresh, e.keyParts(n, inputs), nil)
	} else {
		e.releaseHostClaims(fresh)
	}
	for port, o := range up.Outputs {
		fo := fresh.Outputs[port]
		o.mu.Lock()
		// Consumers that already finished will never release the new
		// segment: release on their behalf (not for the one waiting).
		for _, c := range fo.Entry.Consumers {
			if !o.pending[c] && c != needBy && c != hostClaim {
				_ = e.arena.Release(fo.Entry.ID, c)
			}
		}
		o.Entry, o.Handle, o.Cached = fo.Entry, fo.Handle, false
		o.mu.Unlock()
	}
	up.Cache, up.MissReason = CacheMiss, "its cache entry was corrupt"
	up.Stats, up.Metrics = fresh.Stats, fresh.Metrics
	return nil
}
