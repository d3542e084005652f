package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The manifests of every entry live in one append-only file, entries.log,
// instead of a file per entry: a miss then costs one write(2) to a file that
// is already open, not a file created, written and renamed. Creating files is
// what a cold run of many small stages spent its time on (an inode and two
// directory entries each, and on ext4 a pass over recently freed inodes).
//
// Each record is "\n", the CRC-32C of its JSON in 8 hex digits, a space and
// the JSON, written with one write(2) on an O_APPEND descriptor, so records
// from concurrent processes never interleave. The newline comes first so that
// a record cut short by a crash never swallows the one after it: readers skip
// any record whose checksum fails, and a cut record is simply not an entry.
//
// Every process holds a shared flock on locks/log while its Cache is open;
// rewriting the log (gc, clear, compaction) takes it exclusively, so nobody
// ever appends to a file that has been replaced, and gc never removes a blob
// whose manifest another process is about to append.
const logName = "entries.log"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrBusy is returned by the operations that rewrite the cache (gc, clear)
// while another process has it open.
var ErrBusy = errors.New("the cache is in use by another pipehost process")

// logRecord is one line of the log. Op is "put" (Manifest is the entry),
// "use" (the entry was served: At is its new last use) or "del".
type logRecord struct {
	Op       string          `json:"op"`
	Key      string          `json:"key"`
	At       int64           `json:"at"`
	Manifest json.RawMessage `json:"manifest,omitempty"`
}

// logEntry is where an entry's latest put record lies in the log.
type logEntry struct {
	off  int64 // the record's JSON
	n    int
	used int64 // unix ns of its last put or use
}

type entryLog struct {
	path     string
	lockPath string

	mu    sync.Mutex
	lock  *os.File // the shared flock, held from open to close
	f     *os.File // the log, O_APPEND
	ino   uint64
	off   int64 // bytes indexed so far; a record starts here
	index map[string]*logEntry
	dead  int64       // bytes of records a later one superseded
	uses  []logRecord // last uses not yet written
	buf   []byte
}

// open takes the shared lock, opens the log and indexes it. Manifests of
// the older layout (a file per entry under entries/) are moved into the log
// the first time a process gets the cache to itself.
func (l *entryLog) open(dir string) error {
	l.path = filepath.Join(dir, logName)
	l.lockPath = filepath.Join(dir, "locks", "log")
	lk, err := os.OpenFile(l.lockPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("cache lock file: %w", err)
	}
	l.lock = lk
	legacy := filepath.Join(dir, "entries")
	if _, err := os.Stat(legacy); err == nil && flock(lk, unix.LOCK_EX|unix.LOCK_NB) == nil {
		err := l.reopen()
		if err == nil {
			err = l.migrate(legacy)
		}
		if err != nil {
			return l.abandon(err)
		}
	}
	if err := flock(lk, unix.LOCK_SH); err != nil {
		return l.abandon(fmt.Errorf("locking the cache: %w", err))
	}
	if err := l.reopen(); err != nil {
		return l.abandon(err)
	}
	return nil
}

// abandon closes what a failed open opened (the lock goes with its file).
func (l *entryLog) abandon(err error) error {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	l.lock.Close()
	l.lock = nil
	return err
}

func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			return err
		}
	}
}

// reopen opens the file now at l.path and indexes it from the start.
func (l *entryLog) reopen() error {
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("cache entry log: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return fmt.Errorf("cache entry log: %w", err)
	}
	if l.f != nil {
		l.f.Close()
	}
	l.f, l.ino, l.off, l.dead = f, st.Ino, 0, 0
	l.index = map[string]*logEntry{}
	return l.catchUp()
}

// catchUp indexes what was appended since the last call, by any process.
// A record without a valid checksum at the very end may be one still being
// written: it is left for the next call. Anywhere else it was cut short by
// a crash and is skipped.
func (l *entryLog) catchUp() error {
	var st unix.Stat_t
	if err := unix.Fstat(int(l.f.Fd()), &st); err != nil {
		return fmt.Errorf("cache entry log: %w", err)
	}
	chunk := int64(1 << 20)
	for l.off < st.Size {
		n := min(st.Size-l.off, chunk)
		if int64(cap(l.buf)) < n {
			l.buf = make([]byte, n)
		}
		buf := l.buf[:n]
		if _, err := l.f.ReadAt(buf, l.off); err != nil && err != io.EOF {
			return fmt.Errorf("reading the cache entry log: %w", err)
		}
		more := l.off+n < st.Size // the chunk ends before the file
		consumed := l.applyRecords(buf, l.off, !more)
		if consumed == 0 {
			if !more {
				return nil
			}
			chunk *= 2 // one record longer than the chunk
			continue
		}
		l.off += int64(consumed)
	}
	return nil
}

// applyRecords indexes the records in buf, read at base: each starts at a
// newline (bytes before the first are no record). The last one counts only
// if atEnd says nothing follows buf; one that does not check out there may
// still be being written. It returns how many bytes were consumed: what is
// left starts a record to read again later.
func (l *entryLog) applyRecords(buf []byte, base int64, atEnd bool) int {
	pos := bytes.IndexByte(buf, '\n')
	if pos < 0 {
		return 0
	}
	consumed := pos
	for {
		next := bytes.IndexByte(buf[pos+1:], '\n')
		if next < 0 {
			if atEnd && l.apply(buf[pos+1:], base+int64(pos)+1) {
				consumed = len(buf)
			}
			return consumed
		}
		end := pos + 1 + next
		if !l.apply(buf[pos+1:end], base+int64(pos)+1) {
			l.dead += int64(end - pos) // cut short by a crash
		}
		consumed, pos = end, end
	}
}

// apply indexes one record (the bytes after its newline) found at off,
// and reports whether it was whole.
func (l *entryLog) apply(rec []byte, off int64) bool {
	if len(rec) < 10 || rec[8] != ' ' {
		return false
	}
	sum, err := strconv.ParseUint(string(rec[:8]), 16, 32)
	if err != nil || uint32(sum) != crc32.Checksum(rec[9:], castagnoli) {
		return false
	}
	var r logRecord
	if !parseHead(rec[9:], &r) {
		if json.Unmarshal(rec[9:], &r) != nil {
			return false
		}
	}
	prev := l.index[r.Key]
	switch r.Op {
	case "put":
		if prev != nil {
			l.dead += int64(prev.n) + 10
		}
		l.index[r.Key] = &logEntry{off: off + 9, n: len(rec) - 9, used: r.At}
	case "use":
		if prev != nil && r.At > prev.used {
			prev.used = r.At
		}
		l.dead += int64(len(rec)) + 1
	case "del":
		if prev != nil {
			delete(l.index, r.Key)
			l.dead += int64(prev.n) + 10
		}
		l.dead += int64(len(rec)) + 1
	}
	return true
}

// parseHead reads op, key and at from a record as this package writes it
// ({"op":"…","key":"…","at":N…), without decoding the manifest: indexing a
// large log then costs a checksum per record, not a JSON decode.
func parseHead(b []byte, r *logRecord) bool {
	const op, key, at = `{"op":"`, `","key":"`, `","at":`
	if !bytes.HasPrefix(b, []byte(op)) {
		return false
	}
	b = b[len(op):]
	i := bytes.IndexByte(b, '"')
	if i < 0 || !bytes.HasPrefix(b[i:], []byte(key)) {
		return false
	}
	r.Op = string(b[:i])
	b = b[i+len(key):]
	i = bytes.IndexByte(b, '"')
	if i < 0 || !bytes.HasPrefix(b[i:], []byte(at)) {
		return false
	}
	r.Key = string(b[:i])
	b = b[i+len(at):]
	i = bytes.IndexAny(b, ",}")
	if i < 0 {
		return false
	}
	v, err := strconv.ParseInt(string(b[:i]), 10, 64)
	r.At = v
	return err == nil
}

// encodeRecord appends a record to buf. The JSON is written by hand in the
// order parseHead reads (json.Marshal would also re-validate the manifest,
// already JSON, byte by byte); keys are hex digests, so need no escaping.
func encodeRecord(buf []byte, r logRecord) ([]byte, error) {
	for i := 0; i < len(r.Key); i++ {
		if c := r.Key[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return buf, fmt.Errorf("cache key %q is not a hex digest", r.Key)
		}
	}
	start := len(buf)
	buf = append(buf, "\n00000000 "...)
	js := len(buf)
	buf = append(buf, `{"op":"`...)
	buf = append(buf, r.Op...)
	buf = append(buf, `","key":"`...)
	buf = append(buf, r.Key...)
	buf = append(buf, `","at":`...)
	buf = strconv.AppendInt(buf, r.At, 10)
	if r.Manifest != nil {
		buf = append(buf, `,"manifest":`...)
		buf = append(buf, r.Manifest...)
	}
	buf = append(buf, '}')
	sum := crc32.Checksum(buf[js:], castagnoli)
	hex := strconv.AppendUint(nil, uint64(sum), 16)
	copy(buf[start+1+8-len(hex):], hex)
	return buf, nil
}

// write appends records with one write(2). When nobody else appended since
// the last catchUp they are indexed from memory, not read back.
func (l *entryLog) write(recs ...logRecord) error {
	var buf []byte
	for _, r := range recs {
		var err error
		if buf, err = encodeRecord(buf, r); err != nil {
			return err
		}
	}
	if _, err := l.f.Write(buf); err != nil {
		return fmt.Errorf("writing the cache entry log: %w", err)
	}
	// O_APPEND leaves the offset at the end of this write.
	if end, err := l.f.Seek(0, io.SeekCurrent); err == nil && end-int64(len(buf)) == l.off {
		l.off += int64(l.applyRecords(buf, l.off, true))
	}
	return nil
}

func (l *entryLog) put(ms ...*Manifest) error {
	now := time.Now().UnixNano()
	recs := make([]logRecord, len(ms))
	for i, m := range ms {
		js, err := json.Marshal(m)
		if err != nil {
			return err
		}
		recs[i] = logRecord{Op: "put", Key: m.Key, At: now, Manifest: js}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.write(recs...)
}

func (l *entryLog) del(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_ = l.write(logRecord{Op: "del", Key: key, At: time.Now().UnixNano()})
	if e := l.index[key]; e != nil { // written, but indexed only at the next catchUp
		delete(l.index, key)
		l.dead += int64(e.n) + 10
	}
}

// get returns the manifest of key, or nil, and marks it used. Last uses are
// written in batches: losing some to a crash only makes eviction less exact.
func (l *entryLog) get(key string) (*Manifest, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.catchUp(); err != nil {
		return nil, err
	}
	e := l.index[key]
	if e == nil {
		return nil, nil
	}
	m, err := l.read(e)
	if err != nil {
		return nil, err
	}
	e.used = time.Now().UnixNano()
	l.uses = append(l.uses, logRecord{Op: "use", Key: key, At: e.used})
	if len(l.uses) >= 256 {
		l.flushUses()
	}
	return m, nil
}

func (l *entryLog) read(e *logEntry) (*Manifest, error) {
	b := make([]byte, e.n)
	if _, err := l.f.ReadAt(b, e.off); err != nil {
		return nil, fmt.Errorf("reading the cache entry log: %w", err)
	}
	var r struct {
		Manifest *Manifest `json:"manifest"`
	}
	if err := json.Unmarshal(b, &r); err != nil || r.Manifest == nil {
		return nil, fmt.Errorf("%w: an unreadable manifest in the entry log", ErrCorrupt)
	}
	return r.Manifest, nil
}

func (l *entryLog) flushUses() {
	if len(l.uses) > 0 {
		_ = l.write(l.uses...)
		l.uses = l.uses[:0]
	}
}

// usedManifest is an entry's manifest and its last use.
type usedManifest struct {
	m    *Manifest
	used time.Time
}

// all returns every entry, most recently used first (ties by key).
func (l *entryLog) all() ([]usedManifest, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.allLocked()
}

// allLocked is all, called with l.mu held (from within exclusive).
func (l *entryLog) allLocked() ([]usedManifest, error) {
	if err := l.catchUp(); err != nil {
		return nil, err
	}
	var out []usedManifest
	for _, e := range l.index {
		if m, err := l.read(e); err == nil {
			out = append(out, usedManifest{m, time.Unix(0, e.used)})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].used.Equal(out[j].used) {
			return out[i].used.After(out[j].used)
		}
		return out[i].m.Key < out[j].m.Key
	})
	return out, nil
}

// exclusive runs f with the cache to this process alone, or returns
// ErrBusy. The log is re-read first: it may have been rewritten while the
// shared lock was let go.
func (l *entryLog) exclusive(f func() error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushUses()
	// flock converts a lock by dropping it first, so the shared lock is
	// taken again below whatever happens.
	err := flock(l.lock, unix.LOCK_EX|unix.LOCK_NB)
	if err == nil {
		err = l.reopen()
		if err == nil {
			err = f()
		}
	} else if errors.Is(err, unix.EWOULDBLOCK) {
		err = ErrBusy
	}
	if lerr := flock(l.lock, unix.LOCK_SH); lerr != nil && err == nil {
		err = fmt.Errorf("locking the cache: %w", lerr)
	}
	// Another process may have rewritten the log between the two locks.
	var st unix.Stat_t
	if serr := unix.Stat(l.path, &st); serr != nil || st.Ino != l.ino {
		if rerr := l.reopen(); rerr != nil && err == nil {
			err = rerr
		}
	}
	return err
}

// rewrite replaces the log with one put record per entry keep accepts
// (called with the exclusive lock): superseded records, deletions and
// separate last uses are dropped.
func (l *entryLog) rewrite(keep func(key string) bool) error {
	tmp, err := os.CreateTemp(filepath.Dir(l.path), ".entries.log.tmp-")
	if err != nil {
		return err
	}
	fail := func(err error) error { tmp.Close(); os.Remove(tmp.Name()); return err }
	keys := make([]string, 0, len(l.index))
	for k := range l.index {
		if keep == nil || keep(k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var buf []byte
	for _, k := range keys {
		e := l.index[k]
		b := make([]byte, e.n)
		if _, err := l.f.ReadAt(b, e.off); err != nil {
			return fail(err)
		}
		var r logRecord
		if err := json.Unmarshal(b, &r); err != nil {
			continue
		}
		r.At = e.used
		if buf, err = encodeRecord(buf, r); err != nil {
			return fail(err)
		}
		if len(buf) > 1<<20 {
			if _, err := tmp.Write(buf); err != nil {
				return fail(err)
			}
			buf = buf[:0]
		}
	}
	if _, err := tmp.Write(buf); err != nil {
		return fail(err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), l.path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return l.reopen()
}

// migrate moves the manifests of the older layout into the log (called
// with the exclusive lock).
func (l *entryLog) migrate(legacy string) error {
	var recs []logRecord
	_ = filepath.WalkDir(legacy, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(p) != ".json" || d.Name()[0] == '.' {
			return nil
		}
		b, err := os.ReadFile(p)
		var m Manifest
		if err != nil || json.Unmarshal(b, &m) != nil || m.Key == "" {
			return nil
		}
		js, _ := json.Marshal(&m)
		at := time.Now().UnixNano()
		if info, err := d.Info(); err == nil {
			at = info.ModTime().UnixNano()
		}
		recs = append(recs, logRecord{Op: "put", Key: m.Key, At: at, Manifest: js})
		return nil
	})
	for len(recs) > 0 {
		n := min(len(recs), 512)
		if err := l.write(recs[:n]...); err != nil {
			return err
		}
		recs = recs[n:]
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("cache entry log: %w", err)
	}
	return os.RemoveAll(legacy)
}

// close writes pending last uses, compacts a log that is mostly superseded
// records when nobody else has the cache open, and lets go of the lock.
func (l *entryLog) close() {
	if l.lock == nil {
		return
	}
	if l.f != nil && l.dead > 1<<20 && l.dead > l.off/2 {
		_ = l.exclusive(func() error { return l.rewrite(nil) })
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.flushUses()
		l.f.Close()
		l.f = nil
	}
	l.lock.Close() // releases the flock
	l.lock = nil
}
