package remote_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/remote"
	"github.com/pipehost/pipehost/internal/remotetest"
)

type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) add(s string) { w.mu.Lock(); w.msgs = append(w.msgs, s); w.mu.Unlock() }
func (w *warnings) list() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.msgs...)
}

func storeOutputs(t *testing.T, rc *remote.Cache, key string, outs map[string][]byte) []cache.OutputRecord {
	t.Helper()
	var recs []cache.OutputRecord
	for port, b := range outs {
		recs = append(recs, cache.OutputRecord{Port: port, Digest: cache.DigestOf(b), Handle: cache.EncodeHandle(gridHandle(uint64(len(b))))})
	}
	released := false
	rc.StoreAsync(context.Background(), key, recs, func(port string) (io.ReaderAt, error) {
		return bytes.NewReader(outs[port]), nil
	}, func() { released = true })
	if errs := rc.Wait(); len(errs) > 0 {
		t.Fatalf("background upload: %v", errs)
	}
	if rc.Enabled() && !released {
		t.Error("the upload did not release its sources")
	}
	return recs
}

// TestCacheServerGoesAway: a run that loses its cache server mid-way goes on
// with misses, warned once.
func TestCacheServerGoesAway(t *testing.T) {
	target, proc := remotetest.BazelRemote(t)
	c, err := remote.Dial(context.Background(), target, remote.Options{CallTimeout: 2 * time.Second, StallTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var w warnings
	rc := remote.NewCache(c, w.add)
	ctx := context.Background()
	seed := uint64(time.Now().UnixNano())
	key := cache.DigestOf(pattern(32, seed)).Hash
	outs := map[string][]byte{"out": pattern(3<<20, seed+1)}
	recs := storeOutputs(t, rc, key, outs)
	got, err := rc.Lookup(ctx, key)
	if err != nil || len(got) != 1 || got[0].Digest != recs[0].Digest {
		t.Fatalf("lookup after store: %v, %v", got, err)
	}

	proc.Kill()
	proc.Wait()
	got, err = rc.Lookup(ctx, key)
	if err != nil || got != nil {
		t.Fatalf("lookup with the server gone: %v, %v; want a quiet miss", got, err)
	}
	if rc.Enabled() {
		t.Fatal("the cache is still on after the server went away")
	}
	if _, err := rc.Fetch(ctx, recs[0].Digest, "x"); !errors.Is(err, remote.ErrUnavailable) {
		t.Errorf("fetch with the server gone: %v", err)
	}
	storeOutputs(t, rc, cache.DigestOf(pattern(32, seed+2)).Hash, outs)
	if ws := w.list(); len(ws) != 1 || !strings.Contains(ws[0], target) {
		t.Errorf("warnings %q, want one naming %s", ws, target)
	}
}

// TestCacheServerHangs: a frozen server (SIGSTOP) is given up on after the
// call timeout, not waited for.
func TestCacheServerHangs(t *testing.T) {
	target, proc := remotetest.BazelRemote(t)
	c, err := remote.Dial(context.Background(), target, remote.Options{CallTimeout: time.Second, StallTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var w warnings
	rc := remote.NewCache(c, w.add)
	if err := proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer proc.Signal(syscall.SIGCONT)
	waitStopped(t, proc.Pid)
	start := time.Now()
	got, err := rc.Lookup(context.Background(), cache.DigestOf([]byte("k")).Hash)
	if err != nil || got != nil {
		t.Fatalf("lookup on a frozen server: %v, %v", got, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the lookup took %s with a 1 s call timeout", d)
	}
	if rc.Enabled() || len(w.list()) != 1 {
		t.Errorf("enabled %v, warnings %q", rc.Enabled(), w.list())
	}
}

// TestCacheCorruptEntryIsAMiss: an action result whose records disagree
// with its files is reported and not used.
func TestCacheCorruptEntryIsAMiss(t *testing.T) {
	env := remotetest.Servers(t)
	c := dial(t, env.Cache)
	rc := remote.NewCache(c, nil)
	ctx := context.Background()
	seed := uint64(time.Now().UnixNano())
	key := cache.DigestOf(pattern(32, seed)).Hash
	outs := map[string][]byte{"out": pattern(4096, seed+1)}
	storeOutputs(t, rc, key, outs)
	// Rewrite the entry with the output file pointing at other bytes.
	action, _, _ := remote.KeyAction(key)
	ar, err := c.GetActionResult(ctx, action)
	if err != nil || ar == nil {
		t.Fatal(ar, err)
	}
	other := remote.BytesBlob(pattern(4096, seed+2))
	if _, err := c.Upload(ctx, []remote.Blob{other}); err != nil {
		t.Fatal(err)
	}
	for _, f := range ar.OutputFiles {
		if f.Path == remote.OutputDir+"out" {
			f.Digest.Hash, f.Digest.SizeBytes = other.Digest.Hash, other.Digest.Size
		}
		f.Contents = nil
	}
	if err := c.UpdateActionResult(ctx, action, ar); err != nil {
		t.Fatal(err)
	}
	got, err := rc.Lookup(ctx, key)
	if got != nil || !errors.Is(err, remote.ErrCorrupt) {
		t.Fatalf("lookup of a corrupt entry: %v, %v", got, err)
	}
	if !rc.Enabled() {
		t.Error("a corrupt entry switched the cache off")
	}
}

// waitStopped waits until every thread of pid is stopped: kill(SIGSTOP)
// returns before a thread running on another CPU has stopped, and such a
// thread could still answer one more call.
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		stopped := len(tasks) > 0
		for _, task := range tasks {
			b, err := os.ReadFile(task)
			if err != nil {
				continue // the thread ended
			}
			// pid (comm) state ...: the state follows the last ')'.
			if i := bytes.LastIndexByte(b, ')'); i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
				stopped = false
			}
		}
		if stopped {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d did not stop", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
