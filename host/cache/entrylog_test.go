package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func open(t *testing.T, dir string) *Cache {
	t.Helper()
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// store writes an entry without outputs for key(i), its stage named si.
func store(t *testing.T, c *Cache, i int) {
	t.Helper()
	m := &Manifest{Key: key(i), Stage: "s" + strconv.Itoa(i), Kind: "k", Created: time.Now().UTC()}
	if err := c.Store(m, nil); err != nil {
		t.Fatal(err)
	}
}

func has(t *testing.T, c *Cache, i int) bool {
	t.Helper()
	m, err := c.Lookup(key(i))
	if err != nil {
		t.Fatalf("lookup %d: %v", i, err)
	}
	if m != nil && (m.Key != key(i) || m.Stage != "s"+strconv.Itoa(i)) {
		t.Fatalf("lookup %d: got %+v", i, m)
	}
	return m != nil
}

func logPath(dir string) string { return filepath.Join(dir, layout, logName) }

// Entries survive the process (a new Cache reads them back), a later put of
// a key wins, and an invalidated entry stays gone.
func TestEntryLogRoundTrip(t *testing.T) {
	dir := t.TempDir()
	a := open(t, dir)
	for i := 0; i < 50; i++ {
		store(t, a, i)
	}
	a.Invalidate(key(7))
	if has(t, a, 7) || !has(t, a, 8) {
		t.Fatal("entry 7 should be gone and 8 there")
	}
	a.Close()
	b := open(t, dir)
	defer b.Close()
	for i := 0; i < 50; i++ {
		if got := has(t, b, i); got != (i != 7) {
			t.Errorf("entry %d present %v after reopening", i, got)
		}
	}
	if ls, err := b.List(); err != nil || len(ls) != 49 {
		t.Errorf("List: %d entries, %v", len(ls), err)
	}
}

// A Cache sees what another one (another open file, as another process
// has) appended after it opened: a run waiting on a key's lock finds the
// entry the other run stored.
func TestEntryLogSeesOtherWriters(t *testing.T) {
	dir := t.TempDir()
	a, b := open(t, dir), open(t, dir)
	defer a.Close()
	defer b.Close()
	if has(t, b, 1) {
		t.Fatal("entry before it was stored")
	}
	store(t, a, 1)
	store(t, b, 2)
	store(t, a, 3)
	for _, c := range []*Cache{a, b} {
		for i := 1; i <= 3; i++ {
			if !has(t, c, i) {
				t.Errorf("entry %d missing", i)
			}
		}
	}
}

// Records cut short by a crash are skipped wherever they are, and never
// take the record after them along: each record starts with its own newline.
func TestEntryLogTornRecords(t *testing.T) {
	dir, whole := logOfOneEntry(t)
	rec := whole[:len(whole)*2/3] // the first two thirds of entry 1's record

	// A torn record, then a good one from another writer, then a torn one at
	// the very end (the crash of the last writer).
	b := open(t, dir)
	appendRaw(t, logPath(dir), rec)
	store(t, b, 2)
	appendRaw(t, logPath(dir), rec)
	b.Close()
	c := open(t, dir)
	defer c.Close()
	if !has(t, c, 1) || !has(t, c, 2) {
		t.Fatal("a torn record hid a whole one")
	}
	// The torn tail does not swallow what comes next either.
	store(t, c, 3)
	d := open(t, dir)
	defer d.Close()
	for i := 1; i <= 3; i++ {
		if !has(t, d, i) {
			t.Errorf("entry %d missing", i)
		}
	}
	// A record whose bytes changed fails its checksum.
	all := mustRead(t, logPath(dir))
	i := strings.Index(string(all), `"stage":"s3"`)
	all[i+len(`"stage":"s`)] = '9'
	if err := os.WriteFile(logPath(dir), all, 0o644); err != nil {
		t.Fatal(err)
	}
	e := open(t, dir)
	defer e.Close()
	if has(t, e, 3) || !has(t, e, 2) {
		t.Error("a record that fails its checksum was read, or hid another")
	}
}

// A record at the end that is still being written (half of its bytes are
// there) is not an entry yet, and is one once the rest arrives.
func TestEntryLogRecordBeingWritten(t *testing.T) {
	dir, rec := logOfOneEntry(t)
	if err := os.WriteFile(logPath(dir), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	b := open(t, dir)
	defer b.Close()
	appendRaw(t, logPath(dir), rec[:len(rec)/2])
	if has(t, b, 1) {
		t.Fatal("half a record read as an entry")
	}
	appendRaw(t, logPath(dir), rec[len(rec)/2:])
	if !has(t, b, 1) {
		t.Fatal("the record, once whole, is not found")
	}
}

// Several processes appending at once lose nothing and interleave whole
// records only.
func TestEntryLogConcurrentProcesses(t *testing.T) {
	if dir := os.Getenv("PIPEHOST_CACHE_LOG_CHILD"); dir != "" {
		base, _ := strconv.Atoi(os.Getenv("PIPEHOST_CACHE_LOG_BASE"))
		c, err := Open(dir)
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		for i := base; i < base+40; i++ {
			m := &Manifest{Key: key(i), Stage: "s" + strconv.Itoa(i), Kind: strings.Repeat("k", 40*i)}
			if err := c.Store(m, nil); err != nil {
				fmt.Println(err)
				os.Exit(1)
			}
		}
		c.Close()
		os.Exit(0)
	}
	dir := t.TempDir()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for p := 0; p < 4; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run", "^TestEntryLogConcurrentProcesses$")
			cmd.Env = append(os.Environ(), "PIPEHOST_CACHE_LOG_CHILD="+dir, "PIPEHOST_CACHE_LOG_BASE="+strconv.Itoa(p*40))
			if out, err := cmd.CombinedOutput(); err != nil {
				errs[p] = fmt.Errorf("child %d: %v\n%s", p, err, out)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	c := open(t, dir)
	defer c.Close()
	ms, err := c.Manifests()
	if err != nil || len(ms) != 160 {
		t.Fatalf("%d entries, %v; want 160", len(ms), err)
	}
	for _, m := range ms {
		i, _ := strconv.Atoi(strings.TrimPrefix(m.Stage, "s"))
		if m.Key != key(i) || len(m.Kind) != 40*i {
			t.Errorf("entry %s came back as %+v", m.Stage, m)
		}
	}
}

// GC and Clear rewrite the log, so they need the cache to themselves: while
// another Cache is open they change nothing and say so; then they run, and
// the log is rewritten without superseded records.
func TestEntryLogRewriteNeedsTheCacheAlone(t *testing.T) {
	dir := t.TempDir()
	a, b := open(t, dir), open(t, dir)
	for i := 0; i < 20; i++ {
		store(t, a, i)
		store(t, a, i)     // superseded
		if !has(t, a, i) { // a use record each
			t.Fatal("missing")
		}
	}
	for i := 0; i < 10; i++ {
		a.Invalidate(key(i))
	}
	if _, err := a.GC(-1); !errors.Is(err, ErrBusy) {
		t.Fatalf("GC with another Cache open: %v, want ErrBusy", err)
	}
	if err := a.Clear(); !errors.Is(err, ErrBusy) {
		t.Fatalf("Clear with another Cache open: %v, want ErrBusy", err)
	}
	if !has(t, b, 15) {
		t.Fatal("a refused GC changed the cache")
	}
	b.Close()
	before := fileSize(t, logPath(dir))
	if _, err := a.GC(-1); err != nil {
		t.Fatal(err)
	}
	after := fileSize(t, logPath(dir))
	if after*3 > before {
		t.Errorf("the log went from %d to %d bytes; want one record per live entry", before, after)
	}
	for i := 0; i < 20; i++ {
		if got := has(t, a, i); got != (i >= 10) {
			t.Errorf("entry %d present %v after GC", i, got)
		}
	}
	// The Cache appends to the new file, and another process reads it.
	store(t, a, 30)
	c := open(t, dir)
	if !has(t, c, 30) || !has(t, c, 12) {
		t.Error("entries written after the rewrite are lost")
	}
	c.Close()
	if err := a.Clear(); err != nil {
		t.Fatal(err)
	}
	if has(t, a, 12) || has(t, a, 30) {
		t.Error("entries after Clear")
	}
	a.Close()
}

// Eviction goes by last use, and uses are remembered across processes.
func TestEntryLogEvictsLeastRecentlyUsed(t *testing.T) {
	dir := t.TempDir()
	a := open(t, dir)
	for i := 0; i < 3; i++ {
		store(t, a, i)
		time.Sleep(2 * time.Millisecond)
	}
	time.Sleep(2 * time.Millisecond)
	has(t, a, 0) // 0 is now the most recently used, 1 the least
	a.Close()
	b := open(t, dir)
	defer b.Close()
	ls, err := b.List()
	if err != nil || len(ls) != 3 {
		t.Fatalf("List: %v %v", ls, err)
	}
	if ls[0].Stage != "s0" || ls[2].Stage != "s1" {
		t.Errorf("by last use: %s %s %s; want s0 first and s1 last", ls[0].Stage, ls[1].Stage, ls[2].Stage)
	}
}

// A log mostly made of superseded records is compacted when the last
// process closes the cache.
func TestEntryLogCompactsOnClose(t *testing.T) {
	dir := t.TempDir()
	a := open(t, dir)
	big := strings.Repeat("x", 4096)
	for n := 0; n < 400; n++ {
		m := &Manifest{Key: key(n % 4), Stage: "s" + strconv.Itoa(n%4), Kind: big}
		if err := a.Store(m, nil); err != nil {
			t.Fatal(err)
		}
	}
	if s := fileSize(t, logPath(dir)); s < 1<<20 {
		t.Fatalf("log of %d bytes; the test needs more than 1 MiB", s)
	}
	a.Close()
	if s := fileSize(t, logPath(dir)); s > 4*5000 {
		t.Errorf("log of %d bytes after close; want about four records", s)
	}
	b := open(t, dir)
	defer b.Close()
	for i := 0; i < 4; i++ {
		if !has(t, b, i) {
			t.Errorf("entry %d lost by compaction", i)
		}
	}
}

// Manifests of the older layout (a file per entry) are moved into the log.
func TestEntryLogMigratesFilePerEntry(t *testing.T) {
	dir := t.TempDir()
	legacy := filepath.Join(dir, layout, "entries", key(5)[:2])
	if err := os.MkdirAll(legacy, 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := json.MarshalIndent(&Manifest{Key: key(5), Stage: "s5", Kind: "k"}, "", "  ")
	if err := os.WriteFile(filepath.Join(legacy, key(5)+".json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	c := open(t, dir)
	defer c.Close()
	if !has(t, c, 5) {
		t.Fatal("the older entry was not carried over")
	}
	if _, err := os.Stat(filepath.Join(dir, layout, "entries")); !os.IsNotExist(err) {
		t.Errorf("entries/ still there: %v", err)
	}
}

// logOfOneEntry makes a cache holding entry 1 and returns its directory and
// the bytes of its log: that one record.
func logOfOneEntry(t *testing.T) (string, []byte) {
	t.Helper()
	dir := t.TempDir()
	a := open(t, dir)
	store(t, a, 1)
	a.Close()
	return dir, mustRead(t, logPath(dir))
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func appendRaw(t *testing.T, p string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// A log that cannot be opened fails Open with a message that names it, and
// leaves no descriptor (nor the shared lock) behind.
func TestEntryLogUnopenable(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, layout, logName), 0o755); err != nil {
		t.Fatal(err)
	}
	fds := func() int { ents, _ := os.ReadDir("/proc/self/fd"); return len(ents) }
	before := fds()
	c, err := Open(dir)
	if err == nil {
		c.Close()
		t.Fatal("Open succeeded with a directory where the entry log goes")
	}
	if !strings.Contains(err.Error(), "cache entry log") {
		t.Errorf("error %q does not name the entry log", err)
	}
	if after := fds(); after != before {
		t.Errorf("%d descriptors before Open, %d after it failed", before, after)
	}
	// The lock is free: once the log is a file again, the cache works and
	// can be rewritten (which needs the lock to itself).
	if err := os.Remove(filepath.Join(dir, layout, logName)); err != nil {
		t.Fatal(err)
	}
	d := open(t, dir)
	defer d.Close()
	if _, err := d.GC(-1); err != nil {
		t.Errorf("GC after the failed Open: %v", err)
	}
}
