package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pipehost/pipehost/host/arena"
	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/plan"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

func concurrent() *pb.Capabilities { return &pb.Capabilities{ConcurrentRuns: true} }

func TestChainRunsAndPassesBytes(t *testing.T) {
	before := memfds(t)
	s := newFakeSys(t)
	s.kind("src", "/bin/a", nil, []string{"out"}, concurrent(), source(7))
	s.kind("inc", "/bin/a", []string{"in"}, []string{"out"}, concurrent(), plusOne)
	s.kind("sink", "/bin/b", []string{"in"}, nil, concurrent(), sink)
	p := s.pipeline(`
[stages.a]
kind = "src"
[stages.b]
kind = "inc"
inputs.in = "a.out"
[stages.c]
kind = "sink"
inputs.in = "b.out"
`)
	a := arena.New(0)
	res := s.run(context.Background(), p, a, Options{Jobs: 2})
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	if got := s.seen["c"]; len(got) != outBytes || !bytes.Equal(got, bytes.Repeat([]byte{8}, outBytes)) {
		t.Fatalf("sink read %d bytes starting %v, want %d bytes of 8", len(got), got[:min(4, len(got))], outBytes)
	}
	if r := result(t, res, "b"); r.Plugin != "/bin/a" || r.BytesIn != outBytes || r.BytesOut != outBytes {
		t.Errorf("stage b: plugin %q, %d bytes in, %d out", r.Plugin, r.BytesIn, r.BytesOut)
	}
	checkReleased(t, s, a, before)
}

// A budget smaller than one stage's outputs: the stage fails at once,
// naming the sizes and the flag, and the rest is skipped.
func TestAdmissionOverWholeBudget(t *testing.T) {
	before := memfds(t)
	s := newFakeSys(t)
	s.kind("src", "/bin/a", nil, []string{"out"}, concurrent(), source(1))
	s.kind("sink", "/bin/a", []string{"in"}, nil, concurrent(), sink)
	p := s.pipeline(`
[stages.a]
kind = "src"
[stages.b]
kind = "sink"
inputs.in = "a.out"
`)
	a := arena.New(outBytes - 1)
	res := s.run(context.Background(), p, a, Options{Jobs: 2})
	ra, rb := result(t, res, "a"), result(t, res, "b")
	if ra.Status != StatusFailed || !strings.Contains(ra.Err.Error(), "more than the whole memory budget") || !strings.Contains(ra.Err.Error(), "--mem-budget") {
		t.Fatalf("stage a: %s, %v; want a failure naming the budget", ra.Status, ra.Err)
	}
	if rb.Status != StatusSkipped {
		t.Errorf("stage b: %s, want skipped", rb.Status)
	}
	if s.runs("a") != 0 {
		t.Errorf("stage a ran although it could not be admitted")
	}
	checkReleased(t, s, a, before)
}

// Outputs waiting for a consumer hold the whole budget, and the consumer's
// own outputs do not fit: nothing in flight can free memory, so the engine
// must say so instead of waiting for ever.
func TestAdmissionDeadlockIsReported(t *testing.T) {
	before := memfds(t)
	s := newFakeSys(t)
	s.kind("src", "/bin/a", nil, []string{"out"}, concurrent(), source(1))
	s.kind("join", "/bin/a", []string{"x", "y"}, []string{"out"}, concurrent(), source(2))
	s.kind("sink", "/bin/a", []string{"in"}, nil, concurrent(), sink)
	s.kind("noop", "/bin/a", nil, nil, concurrent(), source(0))
	p := s.pipeline(`
[stages.s1]
kind = "src"
[stages.s2]
kind = "src"
[stages.j]
kind = "join"
inputs = { x = "s1.out", y = "s2.out" }
[stages.k]
kind = "sink"
inputs.in = "j.out"
[stages.other]
kind = "noop"
`)
	// s1 and s2 fit together; j's output never fits beside its inputs;
	// "other" needs no memory and runs whatever happens.
	a := arena.New(2 * outBytes)
	res := s.run(context.Background(), p, a, Options{Jobs: 4, KeepGoing: true})
	rj := result(t, res, "j")
	if rj.Status != StatusFailed {
		t.Fatalf("stage j: %s (%v), want failed", rj.Status, rj.Err)
	}
	msg := rj.Err.Error()
	for _, want := range []string{"stage j (join)", "held by 2 live segment(s)", "only this stage's completion could free"} {
		if !strings.Contains(msg, want) {
			t.Errorf("stage j's error %q does not say %q", msg, want)
		}
	}
	if r := result(t, res, "k"); r.Status != StatusSkipped || !strings.Contains(r.Err.Error(), "from j") {
		t.Errorf("stage k: %s (%v), want skipped because of j", r.Status, r.Err)
	}
	for _, name := range []string{"s1", "s2", "other"} {
		if r := result(t, res, name); r.Status != StatusOK {
			t.Errorf("stage %s: %s (%v), want ok", name, r.Status, r.Err)
		}
	}
	if len(res.Failed) != 1 {
		t.Errorf("%d failed stages, want 1 (j)", len(res.Failed))
	}
	checkReleased(t, s, a, before)
}

// A stage's own failure skips its dependants; with KeepGoing, independent
// branches still finish, and the failure keeps the plugin's gRPC code.
func TestKeepGoingSkipsDependants(t *testing.T) {
	for _, keepGoing := range []bool{true, false} {
		t.Run(map[bool]string{true: "keep-going", false: "stop"}[keepGoing], func(t *testing.T) {
			before := memfds(t)
			s := newFakeSys(t)
			release := make(chan struct{})
			s.kind("src", "/bin/a", nil, []string{"out"}, concurrent(), source(3))
			s.kind("fail", "/bin/a", []string{"in"}, []string{"out"}, concurrent(), func(ctx context.Context, run *fakeRun) error {
				return status.Error(codes.Aborted, "the erosion diverged")
			})
			s.kind("inc", "/bin/b", []string{"in"}, []string{"out"}, concurrent(), plusOne)
			// The independent branch waits until the failure is in, so
			// whether it finishes depends on KeepGoing only.
			s.kind("slow", "/bin/b", []string{"in"}, nil, concurrent(), func(ctx context.Context, run *fakeRun) error {
				select {
				case <-release:
				case <-ctx.Done():
					return status.FromContextError(ctx.Err()).Err()
				}
				return sink(ctx, run)
			})
			p := s.pipeline(`
[stages.a]
kind = "src"
[stages.bad]
kind = "fail"
inputs.in = "a.out"
[stages.after]
kind = "inc"
inputs.in = "bad.out"
[stages.last]
kind = "slow"
inputs.in = "after.out"
[stages.d]
kind = "src"
[stages.e]
kind = "inc"
inputs.in = "d.out"
[stages.f]
kind = "slow"
inputs.in = "e.out"
`)
			a := arena.New(0)
			obs := &endWatcher{ended: map[string]chan struct{}{"bad": make(chan struct{})}}
			if keepGoing {
				go func() { <-obs.ended["bad"]; close(release) }()
			}
			res := s.run(context.Background(), p, a, Options{Jobs: 4, KeepGoing: keepGoing, Observer: obs})
			bad := result(t, res, "bad")
			if bad.Status != StatusFailed || status.Code(bad.Err) != codes.Aborted || errors.Is(bad.Err, ErrProcessDied) {
				t.Fatalf("stage bad: %s, code %v, %v; want failed with Aborted, no crash", bad.Status, status.Code(bad.Err), bad.Err)
			}
			if !strings.Contains(bad.Err.Error(), "stage bad (fail, plugin /bin/a): the erosion diverged") {
				t.Errorf("stage bad's report: %v", bad.Err)
			}
			for _, name := range []string{"after", "last"} {
				if r := result(t, res, name); r.Status != StatusSkipped {
					t.Errorf("stage %s: %s, want skipped", name, r.Status)
				}
			}
			if r := result(t, res, "after"); r.Err == nil || !strings.Contains(r.Err.Error(), "comes from bad, which failed") {
				t.Errorf("stage after's reason: %v", r.Err)
			}
			if s.runs("after") != 0 || s.runs("last") != 0 {
				t.Errorf("dependants of the failed stage ran")
			}
			f := result(t, res, "f")
			if keepGoing {
				if f.Status != StatusOK || !bytes.Equal(s.seen["f"], bytes.Repeat([]byte{4}, outBytes)) {
					t.Errorf("independent stage f: %s (%v), want ok having read 4s", f.Status, f.Err)
				}
			} else if f.Status == StatusOK {
				t.Errorf("stage f finished although the run stops at the first failure")
			}
			if keepGoing && (len(res.Failed) != 1 || res.Failed[0].Name != "bad") {
				t.Errorf("failed stages: %v, want only bad", names(res.Failed))
			}
			checkReleased(t, s, a, before)
		})
	}
}

func names(rs []*StageResult) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Name)
	}
	return out
}

// endWatcher closes ended[stage] when that stage ends.
type endWatcher struct {
	nopObserver
	ended map[string]chan struct{}
}

func (w *endWatcher) StageEnd(n *plan.Node, r *StageResult) {
	if c := w.ended[n.Name]; c != nil {
		close(c)
	}
}

// A cached output whose bytes were damaged on disk is found corrupt when a
// stage needs it: the entry is removed, its producer recomputed, and the
// consumer reads correct bytes.
func TestRecomputeAfterCorruptEntry(t *testing.T) {
	before := memfds(t)
	c, err := cache.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := newFakeSys(t)
	s.kind("src", "/bin/a", nil, []string{"out"}, concurrent(), source(9))
	s.kind("inc", "/bin/a", []string{"in"}, []string{"out"}, concurrent(), plusOne)
	s.kind("sink", "/bin/b", []string{"in"}, nil, concurrent(), sink)
	// b is not cached, so each run reads a's output from the cache.
	p := s.pipeline(`
[stages.a]
kind = "src"
[stages.b]
kind = "inc"
inputs.in = "a.out"
cache = false
[stages.c]
kind = "sink"
inputs.in = "b.out"
cache = false
`)
	want := bytes.Repeat([]byte{9}, outBytes)

	a1 := arena.New(0)
	res := s.run(context.Background(), p, a1, Options{Jobs: 2, Cache: c})
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	ra := result(t, res, "a")
	if ra.Cache != CacheMiss || s.runs("a") != 1 {
		t.Fatalf("first run: stage a %s, ran %d time(s)", ra.Cache, s.runs("a"))
	}
	d := ra.Outputs["out"].Digest
	if live, _ := a1.Live(); live != 0 {
		t.Errorf("first run left %d live segment(s)", live)
	}
	a1.Close()

	// Flip one byte of the stored blob.
	blob := c.BlobPath(d)
	data, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.Chmod(blob, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blob, data, 0o644); err != nil {
		t.Fatal(err)
	}

	a2 := arena.New(0)
	s.seen = map[string][]byte{}
	res = s.run(context.Background(), p, a2, Options{Jobs: 2, Cache: c})
	if err := res.Err(); err != nil {
		t.Fatalf("second run: %v", err)
	}
	ra = result(t, res, "a")
	if s.runs("a") != 2 || ra.Cache != CacheMiss || ra.MissReason != "its cache entry was corrupt" {
		t.Errorf("second run: stage a ran %d time(s) in all, cache %s (%q); want recomputed once", s.runs("a"), ra.Cache, ra.MissReason)
	}
	if !bytes.Equal(s.seen["b"], want) || !bytes.Equal(s.seen["c"], bytes.Repeat([]byte{10}, outBytes)) {
		t.Errorf("wrong bytes read after the recomputation")
	}
	if m, err := c.Lookup(ra.Key); err != nil || m == nil {
		t.Errorf("the recomputed entry was not stored again: %v", err)
	}
	if seg, err := c.Materialize(d, "check"); err != nil {
		t.Errorf("the stored blob is still unreadable: %v", err)
	} else {
		seg.Close()
	}

	// A third run serves a from the repaired entry.
	a3 := arena.New(0)
	s.seen = map[string][]byte{}
	res = s.run(context.Background(), p, a3, Options{Jobs: 2, Cache: c})
	if err := res.Err(); err != nil {
		t.Fatalf("third run: %v", err)
	}
	if r := result(t, res, "a"); r.Cache != CacheHit || s.runs("a") != 2 {
		t.Errorf("third run: stage a %s, ran %d time(s) in all; want a hit", r.Cache, s.runs("a"))
	}
	if !bytes.Equal(s.seen["b"], want) {
		t.Errorf("stage b read wrong bytes from the repaired entry")
	}
	a2.Close()
	checkReleased(t, s, a3, before)
}

// A kind without concurrent runs gets one process per running stage, at
// most maxPool (and at most --jobs) of them.
func TestProcessPoolBound(t *testing.T) {
	for _, jobs := range []int{8, 2} {
		t.Run(map[int]string{8: "jobs-8", 2: "jobs-2"}[jobs], func(t *testing.T) {
			before := memfds(t)
			s := newFakeSys(t)
			s.kind("solo", "/bin/solo", nil, []string{"out"}, &pb.Capabilities{}, func(ctx context.Context, run *fakeRun) error {
				time.Sleep(30 * time.Millisecond)
				return run.fill(1)
			})
			var b strings.Builder
			for _, n := range []string{"s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10"} {
				b.WriteString("[stages." + n + "]\nkind = \"solo\"\n")
			}
			p := s.pipeline(b.String())
			a := arena.New(0)
			res := s.run(context.Background(), p, a, Options{Jobs: jobs})
			if err := res.Err(); err != nil {
				t.Fatal(err)
			}
			limit := min(maxPool, jobs)
			if got := s.peakKind["solo"]; got > limit {
				t.Errorf("%d solo stages ran at once, over the pool bound of %d", got, limit)
			}
			if got := len(s.procs); got > limit {
				t.Errorf("%d processes started for the kind, over the pool bound of %d", got, limit)
			}
			if s.launched() != len(s.procs)-1 {
				t.Errorf("%d launches for %d processes besides the main one", s.launched(), len(s.procs)-1)
			}
			pids := map[int]bool{}
			for _, r := range res.Stages {
				pids[r.Pid] = true
			}
			if len(pids) > limit {
				t.Errorf("stages ran on %d processes, over the bound of %d", len(pids), limit)
			}
			checkReleased(t, s, a, before)
		})
	}
}

// Stages holding a resource never run more at once than its capacity.
func TestResourcesNeverOversubscribed(t *testing.T) {
	for _, gpus := range []int{1, 2} {
		t.Run(map[int]string{1: "one-gpu", 2: "two-gpus"}[gpus], func(t *testing.T) {
			before := memfds(t)
			s := newFakeSys(t)
			var mu sync.Mutex
			holding, peak := 0, 0
			caps := &pb.Capabilities{ConcurrentRuns: true, Resources: []*pb.ResourceRequest{{Name: "gpu", Count: 1}}}
			s.kind("render", "/bin/gpu", nil, []string{"out"}, caps, func(ctx context.Context, run *fakeRun) error {
				mu.Lock()
				holding++
				peak = max(peak, holding)
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
				mu.Lock()
				holding--
				mu.Unlock()
				return run.fill(5)
			})
			big := &pb.Capabilities{ConcurrentRuns: true, Resources: []*pb.ResourceRequest{{Name: "gpu", Count: uint32(gpus)}}}
			s.kind("renderall", "/bin/gpu", nil, []string{"out"}, big, func(ctx context.Context, run *fakeRun) error {
				mu.Lock()
				holding += gpus
				peak = max(peak, holding)
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
				mu.Lock()
				holding -= gpus
				mu.Unlock()
				return run.fill(6)
			})
			s.kind("cpu", "/bin/cpu", nil, []string{"out"}, concurrent(), source(1))
			var b strings.Builder
			for _, n := range []string{"g1", "g2", "g3", "g4", "g5", "g6"} {
				b.WriteString("[stages." + n + "]\nkind = \"render\"\n")
			}
			b.WriteString("[stages.all1]\nkind = \"renderall\"\n[stages.all2]\nkind = \"renderall\"\n")
			b.WriteString("[stages.c1]\nkind = \"cpu\"\n[stages.c2]\nkind = \"cpu\"\n")
			p := s.pipeline(b.String())
			if err := CheckResources(p, map[string]int{"gpu": gpus}); err != nil {
				t.Fatal(err)
			}
			a := arena.New(0)
			res := s.run(context.Background(), p, a, Options{Jobs: 8, Resources: map[string]int{"gpu": gpus}})
			if err := res.Err(); err != nil {
				t.Fatal(err)
			}
			if peak > gpus {
				t.Errorf("%d gpus held at once, capacity %d", peak, gpus)
			}
			if peak == 0 {
				t.Errorf("no stage held a gpu")
			}
			checkReleased(t, s, a, before)
		})
	}
	// More than exists is a plan error, before anything runs.
	s := newFakeSys(t)
	s.kind("render", "/bin/gpu", nil, []string{"out"}, &pb.Capabilities{Resources: []*pb.ResourceRequest{{Name: "gpu", Count: 2}}}, source(1))
	p := s.pipeline("[stages.g]\nkind = \"render\"\n")
	if err := CheckResources(p, map[string]int{"gpu": 1}); err == nil || !strings.Contains(err.Error(), "--gpus N") {
		t.Errorf("CheckResources with too few gpus: %v", err)
	}
}

// Cancelling the run stops every running stage (their calls see the
// cancellation), the stages not started are skipped, and nothing is left:
// no segment in the arena, no memfd once the processes are gone.
func TestCancelStopsEverything(t *testing.T) {
	before := memfds(t)
	s := newFakeSys(t)
	started := make(chan string, 16)
	stopped := make(chan string, 16)
	s.kind("src", "/bin/a", nil, []string{"out"}, concurrent(), source(1))
	s.kind("block", "/bin/a", []string{"in"}, []string{"out"}, concurrent(), func(ctx context.Context, run *fakeRun) error {
		err := blockUntilStopped(started)(ctx, run)
		stopped <- run.req.GetStage()
		return err
	})
	s.kind("sink", "/bin/b", []string{"in"}, nil, concurrent(), sink)
	p := s.pipeline(`
[stages.a]
kind = "src"
[stages.b1]
kind = "block"
inputs.in = "a.out"
[stages.b2]
kind = "block"
inputs.in = "a.out"
[stages.b3]
kind = "block"
inputs.in = "a.out"
[stages.c]
kind = "sink"
inputs.in = "b1.out"
`)
	a := arena.New(0)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for range 3 {
			<-started
		}
		cancel()
	}()
	res := s.run(ctx, p, a, Options{Jobs: 4})
	for range 3 {
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			t.Fatal("a running stage never saw the cancellation")
		}
	}
	for _, name := range []string{"b1", "b2", "b3", "c"} {
		if r := result(t, res, name); r.Status == StatusOK {
			t.Errorf("stage %s: ok after the run was cancelled", name)
		}
	}
	if r := result(t, res, "c"); s.runs("c") != 0 || r.Status != StatusSkipped {
		t.Errorf("stage c: %s, ran %d time(s); want skipped", r.Status, s.runs("c"))
	}
	if r := result(t, res, "b1"); r.Err == nil || !strings.Contains(r.Err.Error(), "stopped") {
		t.Errorf("stage b1's report: %v", r.Err)
	}
	checkReleased(t, s, a, before)
}

// A stage that ignores its timeout gets its process killed, and the next
// stage of that binary runs in a relaunched one.
func TestTimeoutKillsAndRelaunches(t *testing.T) {
	before := memfds(t)
	s := newFakeSys(t)
	obs := &endWatcher{ended: map[string]chan struct{}{"h": make(chan struct{})}}
	s.kind("hang", "/bin/a", nil, []string{"out"}, concurrent(), func(ctx context.Context, run *fakeRun) error {
		<-run.proc.ended // ignores its context; only a kill ends it
		return status.Error(codes.Unavailable, "error reading from server: EOF")
	})
	s.kind("gate", "/bin/g", nil, []string{"out"}, concurrent(), afterEnd(obs, "h"))
	s.kind("sink", "/bin/a", []string{"in"}, nil, concurrent(), sink)
	p := s.pipeline(`
[stages.h]
kind = "hang"
timeout = "50ms"
[stages.x]
kind = "gate"
[stages.y]
kind = "sink"
inputs.in = "x.out"
`)
	a := arena.New(0)
	res := s.run(context.Background(), p, a, Options{Jobs: 2, KeepGoing: true, Observer: obs})
	h := result(t, res, "h")
	if h.Status != StatusFailed || !strings.Contains(h.Err.Error(), "stage timed out after 50ms") {
		t.Fatalf("stage h: %s, %v; want a timeout", h.Status, h.Err)
	}
	if !strings.Contains(h.Err.Error(), "plugin process ended: signal: killed") {
		t.Errorf("stage h's report does not say the process was killed: %v", h.Err)
	}
	if !s.main["/bin/a"].wasKilled() {
		t.Errorf("the process that ran the hung stage was not killed")
	}
	for _, name := range []string{"x", "y"} {
		if r := result(t, res, name); r.Status != StatusOK {
			t.Errorf("stage %s: %s (%v)", name, r.Status, r.Err)
		}
	}
	if r := result(t, res, "y"); r.Pid == h.Pid || s.launched() != 1 {
		t.Errorf("stage y ran on pid %d, h on %d, %d relaunch(es): want one fresh process", r.Pid, h.Pid, s.launched())
	}
	checkReleased(t, s, a, before)
}

// afterEnd fills the outputs with 1 once stage has ended (seen by w).
func afterEnd(w *endWatcher, stage string) stageFunc {
	return func(ctx context.Context, run *fakeRun) error {
		select {
		case <-w.ended[stage]:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
		return run.fill(1)
	}
}

// Failures are told apart by their gRPC code and the process's exit state,
// never by their text.
func TestFailureClassification(t *testing.T) {
	before := memfds(t)
	s := newFakeSys(t)
	s.kind("badparams", "/bin/p", nil, []string{"out"}, concurrent(), func(ctx context.Context, run *fakeRun) error {
		return status.Error(codes.InvalidArgument, "param \"n\": must be positive")
	})
	s.kind("crash", "/bin/c", nil, []string{"out"}, concurrent(), func(ctx context.Context, run *fakeRun) error {
		return run.crash("SIGSEGV at 0x0 in erode()")
	})
	// A transport error text that mentions EOF from a process that stays
	// alive: not a crash (the old text matching called it one).
	s.kind("eofword", "/bin/e", nil, []string{"out"}, concurrent(), func(ctx context.Context, run *fakeRun) error {
		return status.Error(codes.Aborted, "unexpected EOF in the input file; connection to the tile server refused")
	})
	// gRPC's own Internal with the process dead is a crash.
	s.kind("rst", "/bin/r", nil, []string{"out"}, concurrent(), func(ctx context.Context, run *fakeRun) error {
		run.closeFDs()
		run.proc.end("exit status 3", false)
		return status.Error(codes.Internal, "stream terminated by RST_STREAM with error code: INTERNAL_ERROR")
	})
	s.kind("sdkbug", "/bin/s", nil, []string{"out"}, concurrent(), func(ctx context.Context, run *fakeRun) error {
		return status.Error(codes.Internal, "pipehost SDK error: KeyError: 'out'")
	})
	obs := &endWatcher{ended: map[string]chan struct{}{"c": make(chan struct{})}}
	s.kind("gate", "/bin/g", nil, []string{"out"}, concurrent(), afterEnd(obs, "c"))
	s.kind("after", "/bin/c", []string{"in"}, nil, concurrent(), sink)
	p := s.pipeline(`
[stages.p]
kind = "badparams"
[stages.c]
kind = "crash"
[stages.e]
kind = "eofword"
[stages.r]
kind = "rst"
[stages.s]
kind = "sdkbug"
[stages.g]
kind = "gate"
[stages.z]
kind = "after"
inputs.in = "g.out"
`)
	a := arena.New(0)
	res := s.run(context.Background(), p, a, Options{Jobs: 8, KeepGoing: true, Observer: obs})
	for _, tc := range []struct {
		stage string
		code  codes.Code
		died  bool
		text  string
	}{
		{"p", codes.InvalidArgument, false, "param \"n\": must be positive"},
		{"c", codes.Unknown, true, "the plugin process died during the stage\n    plugin process ended: signal: segmentation fault (core dumped)\n    last stderr lines:\n      SIGSEGV at 0x0 in erode()"},
		{"e", codes.Aborted, false, "unexpected EOF in the input file"},
		{"r", codes.Unknown, true, "plugin process ended: exit status 3"},
		{"s", codes.Internal, false, "pipehost SDK error"},
	} {
		r := result(t, res, tc.stage)
		if r.Status != StatusFailed {
			t.Errorf("stage %s: %s, want failed", tc.stage, r.Status)
			continue
		}
		if got := status.Code(r.Err); got != tc.code {
			t.Errorf("stage %s: code %v, want %v (%v)", tc.stage, got, tc.code, r.Err)
		}
		if got := errors.Is(r.Err, ErrProcessDied); got != tc.died {
			t.Errorf("stage %s: crash %v, want %v (%v)", tc.stage, got, tc.died, r.Err)
		}
		if !strings.Contains(r.Err.Error(), tc.text) {
			t.Errorf("stage %s's report %q does not say %q", tc.stage, r.Err, tc.text)
		}
		var se *StatusError
		if errors.As(r.Err, &se) != !tc.died {
			t.Errorf("stage %s: StatusError in the chain: %v", tc.stage, !tc.died)
		}
	}
	// The crashed binary is relaunched for its next stage.
	if r := result(t, res, "z"); r.Status != StatusOK || r.Pid == result(t, res, "c").Pid {
		t.Errorf("stage z after the crash: %s on pid %d (%v)", r.Status, r.Pid, r.Err)
	}
	checkReleased(t, s, a, before)
}

// Without a launcher a dead process is not replaced: its next stage fails
// saying so.
func TestNoRelaunchWithoutLauncher(t *testing.T) {
	s := newFakeSys(t)
	obs := &endWatcher{ended: map[string]chan struct{}{"c": make(chan struct{})}}
	s.kind("crash", "/bin/c", nil, []string{"out"}, concurrent(), func(ctx context.Context, run *fakeRun) error {
		return run.crash("boom")
	})
	s.kind("gate", "/bin/g", nil, []string{"out"}, concurrent(), afterEnd(obs, "c"))
	s.kind("after", "/bin/c", []string{"in"}, nil, concurrent(), sink)
	p := s.pipeline("[stages.c]\nkind = \"crash\"\n[stages.g]\nkind = \"gate\"\n[stages.z]\nkind = \"after\"\ninputs.in = \"g.out\"\n")
	a := arena.New(0)
	defer a.Close()
	res := NewWith(p, s, a, Options{Jobs: 2, KeepGoing: true, Observer: obs}).Run(context.Background())
	if r := result(t, res, "z"); r.Status != StatusFailed || !strings.Contains(r.Err.Error(), "is no longer running (signal: segmentation fault (core dumped))") {
		t.Errorf("stage z: %s (%v)", r.Status, r.Err)
	}
	if s.launched() != 0 {
		t.Errorf("%d launches without a launcher", s.launched())
	}
}

// A dynamic blob output is adopted from the process, sealed and read by its
// consumer; one over the memory budget is refused and nothing is left.
func TestDynamicBlobOutput(t *testing.T) {
	data := bytes.Repeat([]byte("pipehost"), 200) // 1600 bytes
	for _, budget := range []int64{0, 1024} {
		t.Run(map[int64]string{0: "fits", 1024: "over-budget"}[budget], func(t *testing.T) {
			before := memfds(t)
			s := newFakeSys(t)
			s.kind("blobsrc", "/bin/a", nil, []string{"blob:out"}, concurrent(), func(ctx context.Context, run *fakeRun) error {
				return run.blob("out", data)
			})
			s.kind("blobsink", "/bin/b", []string{"blob:in"}, nil, concurrent(), sink)
			p := s.pipeline("[stages.a]\nkind = \"blobsrc\"\n[stages.b]\nkind = \"blobsink\"\ninputs.in = \"a.out\"\n")
			a := arena.New(budget)
			res := s.run(context.Background(), p, a, Options{Jobs: 2})
			ra := result(t, res, "a")
			if budget == 0 {
				if err := res.Err(); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(s.seen["b"], data) {
					t.Errorf("the consumer read %d bytes, not the blob", len(s.seen["b"]))
				}
				if ra.BytesOut != int64(len(data)) {
					t.Errorf("stage a: %d bytes out, want %d", ra.BytesOut, len(data))
				}
			} else {
				if ra.Status != StatusFailed || !errors.Is(ra.Err, arena.ErrOverBudget) || !strings.Contains(ra.Err.Error(), "dynamic output \"out\"") {
					t.Fatalf("stage a: %s, %v; want refused over the budget", ra.Status, ra.Err)
				}
				if r := result(t, res, "b"); r.Status != StatusSkipped {
					t.Errorf("stage b: %s, want skipped", r.Status)
				}
			}
			checkReleased(t, s, a, before)
		})
	}
}

// Early cutoff: a refreshed producer makes the same bytes again. Its large
// output is digested in the background while its consumer already runs.
// The digest is held (digestGate) until the consumer has started, or until
// it has finished, so each path is taken for certain: a consumer still
// running is stopped and served from the cache; one that finished first is
// found identical to the entry. Either way it is a hit and its own
// consumer reads the cached bytes.
func TestEarlyCutoffServesTheConsumer(t *testing.T) {
	for _, tc := range []struct {
		name, note string
		// hold returns the gate for the second run, and the body of stage
		// b in it.
		hold func() (func(stage string), stageFunc)
	}{
		{"stopped", "stopped and served from the cache", func() (func(string), stageFunc) {
			started := make(chan struct{})
			return func(stage string) {
					if stage == "a" {
						waitOrGiveUp(started)
					}
				}, func(ctx context.Context, run *fakeRun) error {
					close(started)
					<-ctx.Done() // only the cutoff ends it
					return status.FromContextError(ctx.Err()).Err()
				}
		}},
		{"finished first", "only after it had finished", func() (func(string), stageFunc) {
			finished := make(chan struct{})
			var once sync.Once
			return func(stage string) {
				switch stage {
				case "a":
					waitOrGiveUp(finished)
				case "b": // b's own output is digested: b has returned
					once.Do(func() { close(finished) })
				}
			}, plusOne
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := memfds(t)
			c, err := cache.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s := newFakeSys(t)
			var second atomic.Bool
			gate, body := tc.hold()
			s.kind("src", "/bin/a", nil, []string{"out"}, concurrent(), source(3))
			s.kind("inc", "/bin/b", []string{"in"}, []string{"out"}, concurrent(), func(ctx context.Context, run *fakeRun) error {
				if second.Load() {
					return body(ctx, run)
				}
				return plusOne(ctx, run)
			})
			s.kind("sink", "/bin/b", []string{"in"}, nil, concurrent(), sink)
			// 8 MiB outputs: over the size digested before consumers start.
			p := s.pipelineOn(2048, 1024, `
[stages.a]
kind = "src"
[stages.b]
kind = "inc"
inputs.in = "a.out"
[stages.c]
kind = "sink"
inputs.in = "b.out"
cache = false
`)
			a1 := arena.New(0)
			if err := s.run(context.Background(), p, a1, Options{Jobs: 2, Cache: c}).Err(); err != nil {
				t.Fatal(err)
			}
			a1.Close()
			second.Store(true)
			s.seen = map[string][]byte{}
			digestGate = gate
			defer func() { digestGate = nil }()
			a2 := arena.New(0)
			res := s.run(context.Background(), p, a2, Options{Jobs: 2, Cache: c, Refresh: map[string]bool{"a": true}})
			if err := res.Err(); err != nil {
				t.Fatal(err)
			}
			if r := result(t, res, "a"); r.Cache != CacheMiss || r.MissReason != "refresh requested" || s.runs("a") != 2 {
				t.Errorf("stage a: %s (%q), ran %d time(s); want refreshed", r.Cache, r.MissReason, s.runs("a"))
			}
			rb := result(t, res, "b")
			if rb.Status != StatusOK || rb.Cache != CacheHit {
				t.Fatalf("stage b: %s, cache %s (%v); want served from the cache", rb.Status, rb.Cache, rb.Err)
			}
			if s.runs("b") != 2 || !strings.Contains(rb.Note, tc.note) {
				t.Errorf("stage b ran %d time(s), note %q; want 2 and a note saying %q", s.runs("b"), rb.Note, tc.note)
			}
			if got := s.seen["c"]; len(got) != 2048*1024*4 || got[0] != 4 || got[len(got)-1] != 4 {
				t.Errorf("stage c did not read b's cached bytes")
			}
			checkReleased(t, s, a2, before)
		})
	}
}

// waitOrGiveUp waits for ch, but not forever: a gate that is never opened
// must fail the test, not hang it.
func waitOrGiveUp(ch <-chan struct{}) {
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
	}
}

// With DeferStores, Run returns before the last stores are written, and
// they still complete: every stage's entry is in the cache once WaitStores
// returns (the run's context is not cancelled under them).
func TestDeferredStoresComplete(t *testing.T) {
	c, err := cache.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := newFakeSys(t)
	s.kind("src", "/bin/a", nil, []string{"out"}, concurrent(), source(3))
	s.kind("inc", "/bin/a", []string{"in"}, []string{"out"}, concurrent(), plusOne)
	p := s.pipeline(`
[stages.a]
kind = "src"
[stages.b]
kind = "inc"
inputs.in = "a.out"
[stages.c]
kind = "inc"
inputs.in = "b.out"
`)
	a := arena.New(0)
	defer a.Close()
	res := s.run(context.Background(), p, a, Options{Jobs: 2, Cache: c, DeferStores: true})
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	res.WaitStores()
	for _, name := range []string{"a", "b", "c"} {
		r := result(t, res, name)
		if m, err := c.Lookup(r.Key); err != nil || m == nil {
			t.Errorf("stage %s: no cache entry after WaitStores (%v)", name, err)
		}
	}
	if live, _ := a.Live(); live != 0 {
		t.Errorf("%d live segment(s) after the stores", live)
	}
}

// In a chain, a stage's inputs are freed before its consumers wake: once a
// consumer is admitted, its own consumer preallocates its outputs, and the
// ledger must not hold the inputs then too. The hook stretches the time
// between the wake-up and the producer's bookkeeping, so holding them too
// long shows every time, not once in many runs.
func TestChainHoldsThreeGridsAtMost(t *testing.T) {
	testHookPublished = func(*plan.Node) { time.Sleep(20 * time.Millisecond) }
	defer func() { testHookPublished = nil }()
	s := newFakeSys(t)
	s.kind("src", "/bin/a", nil, []string{"out"}, concurrent(), source(1))
	s.kind("inc", "/bin/a", []string{"in"}, []string{"out"}, concurrent(), plusOne)
	s.kind("sink", "/bin/a", []string{"in"}, nil, concurrent(), sink)
	cfg := "[stages.s0]\nkind = \"src\"\n"
	for i := 1; i <= 4; i++ {
		cfg += fmt.Sprintf("[stages.s%d]\nkind = \"inc\"\ninputs.in = \"s%d.out\"\n", i, i-1)
	}
	cfg += "[stages.end]\nkind = \"sink\"\ninputs.in = \"s4.out\"\n"
	a := arena.New(0)
	res := s.run(context.Background(), s.pipeline(cfg), a, Options{Jobs: 1})
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	if got := s.seen["end"]; len(got) != outBytes || got[0] != 5 {
		t.Fatalf("sink read %d bytes starting %v, want %d bytes of 5", len(got), got[:min(1, len(got))], outBytes)
	}
	if peak := a.Peak(); peak > 3*outBytes {
		t.Errorf("the ledger held %d grids at once in a chain, more than 3: a stage's inputs outlived its consumer's start", peak/outBytes)
	}
}
