package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func key(i int) string {
	sum := sha256.Sum256([]byte{byte(i)})
	return hex.EncodeToString(sum[:])
}

// One holder of a key at a time among goroutines of one Cache, among two
// Caches on one directory (two open file descriptions, as two processes
// have), and different keys never wait for each other.
func TestKeyLocksExclude(t *testing.T) {
	dir := t.TempDir()
	a, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		c := a
		if i%2 == 1 {
			c = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock, err := c.Lock(context.Background(), key(1))
			if err != nil {
				t.Error(err)
				return
			}
			if n := inside.Add(1); n > most.Load() {
				most.Store(n)
			}
			time.Sleep(2 * time.Millisecond)
			inside.Add(-1)
			unlock()
			unlock() // twice is harmless
		}()
	}
	wg.Wait()
	if most.Load() != 1 {
		t.Fatalf("%d holders of one key at once", most.Load())
	}
	// Other keys are free while one is held, in both Caches.
	unlock, _ := a.Lock(context.Background(), key(1))
	defer unlock()
	for _, c := range []*Cache{a, b} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		u, err := c.Lock(ctx, key(2))
		cancel()
		if err != nil {
			t.Fatalf("another key waited: %v", err)
		}
		u()
	}
	// A waiter gives up with its context's cause, and leaves nothing held.
	for _, c := range []*Cache{a, b} {
		ctx, cancel := context.WithTimeoutCause(context.Background(), 30*time.Millisecond, errors.New("gave up"))
		_, err := c.Lock(ctx, key(1))
		cancel()
		if err == nil || err.Error() != "gave up" {
			t.Fatalf("waiting on a held key (second cache %v): %v", c == b, err)
		}
	}
	unlock()
	u, err := b.Lock(context.Background(), key(1))
	if err != nil {
		t.Fatal(err)
	}
	u()
	// Keys that share a byte wait for each other and never release each
	// other's lock.
	k1, k2 := key(3), key(3)[:16]+key(4)[16:]
	u1, _ := a.Lock(context.Background(), k1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	if _, err := a.Lock(ctx, k2); err == nil {
		t.Fatal("a key on a held byte was taken")
	}
	cancel()
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Millisecond)
	if _, err := b.Lock(ctx, k1); err == nil {
		t.Fatal("the held key was taken by the other cache")
	}
	cancel()
	u1()
}

// The lock holds across processes: a child holding a key makes this
// process wait until it lets go.
func TestKeyLocksAcrossProcesses(t *testing.T) {
	if dir := os.Getenv("PIPEHOST_CACHE_LOCK_CHILD"); dir != "" {
		c, err := Open(dir)
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		unlock, err := c.Lock(context.Background(), key(7))
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("held")
		time.Sleep(300 * time.Millisecond)
		unlock()
		os.Exit(0)
	}
	dir := t.TempDir()
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestKeyLocksAcrossProcesses$")
	cmd.Env = append(os.Environ(), "PIPEHOST_CACHE_LOCK_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	buf := make([]byte, 5)
	if _, err := out.Read(buf); err != nil || !strings.HasPrefix(string(buf), "held") {
		t.Fatalf("child: %q %v", buf, err)
	}
	start := time.Now()
	unlock, err := c.Lock(context.Background(), key(7))
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	if waited := time.Since(start); waited < 150*time.Millisecond {
		t.Fatalf("took the key after %v while the child held it", waited)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	// One lock file for the keys, not one per key (and the entry log's).
	if ents, _ := os.ReadDir(filepath.Join(dir, layout, "locks")); len(ents) != 2 {
		t.Fatalf("locks/ holds %d entries", len(ents))
	}
}

// Parts are remembered per run ID across Caches (processes), the latest per
// stage wins, a torn last line is skipped, and the file is compacted once
// per process rather than growing with every run.
func TestPartsLog(t *testing.T) {
	dir := t.TempDir()
	a, _ := Open(dir)
	if a.LastParts("run", "s") != nil {
		t.Fatal("parts before any run")
	}
	for i := 0; i < 3; i++ {
		if err := a.SaveParts("run", fmt.Sprintf("s%d", i), Parts{Kind: "k", Seed: uint64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	a.SaveParts("run", "s1", Parts{Kind: "k", Seed: 10})
	a.SaveParts("other", "s1", Parts{Kind: "o"})
	if p := a.LastParts("run", "s1"); p == nil || p.Seed != 10 {
		t.Fatalf("same process: %+v", p)
	}
	path := a.parts.path("run")
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"stage":"s2","parts":{"kind":"k","se`)
	f.Close()
	b, _ := Open(dir)
	for i, want := range []uint64{0, 10, 2} {
		if p := b.LastParts("run", fmt.Sprintf("s%d", i)); p == nil || p.Seed != want || p.Kind != "k" {
			t.Fatalf("s%d from another process: %+v", i, p)
		}
	}
	if p := b.LastParts("other", "s1"); p == nil || p.Kind != "o" {
		t.Fatalf("other run: %+v", p)
	}
	b.SaveParts("run", "s0", Parts{Kind: "k", Seed: 20})
	body, _ := os.ReadFile(path)
	if n := strings.Count(string(body), "\n"); n != 3 || strings.Contains(string(body), `"se`+"\n") {
		t.Fatalf("after compaction:\n%s", body)
	}
}
