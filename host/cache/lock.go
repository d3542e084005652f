package cache

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// keyLocks gives one computation of a key at a time, across the goroutines
// of this process and across every process sharing the cache. Between
// processes it is a one-byte open-file-description lock per key on a single
// file (at an offset taken from the key), so taking a lock costs one fcntl,
// not a file created per key. OFD locks belong to the open file, which all
// goroutines here share, so within the process a map of held offsets does
// the excluding (keyed by offset, not key: two keys on one byte must not
// release each other's lock).
type keyLocks struct {
	path   string
	file   *os.File // opened by the first Lock, closed by Close
	closed bool

	mu   sync.Mutex
	held map[int64]chan struct{} // by offset: a byte has one holder here

}

// open returns the lock file, opening it on first use: a Cache only read
// (listed, looked up) holds no descriptor.
func (l *keyLocks) open() (*os.File, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("the cache is closed")
	}
	if l.file == nil {
		f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("cache lock file: %w", err)
		}
		l.file = f
	}
	return l.file, nil
}

// offset is where key's byte lies in the lock file: its first 62 bits (a
// lock offset is a signed 64-bit number). Two keys sharing them would only
// wait for each other.
func offset(key string) int64 {
	b, err := hex.DecodeString(key[:16])
	if err != nil || len(key) < 16 {
		return 0
	}
	var v uint64
	for _, x := range b {
		v = v<<8 | uint64(x)
	}
	return int64(v >> 2)
}

// Lock takes the per-key lock, waiting while another process (or run) holds
// it. The returned function releases it.
func (c *Cache) Lock(ctx context.Context, key string) (func(), error) {
	if len(key) < 16 {
		return nil, fmt.Errorf("locking cache key %q: not a key", key)
	}
	l := &c.locks
	f, err := l.open()
	if err != nil {
		return nil, fmt.Errorf("locking cache key %s: %w", key[:12], err)
	}
	off := offset(key)
	// Within this process first.
	mine := make(chan struct{})
	for {
		l.mu.Lock()
		if l.held == nil {
			l.held = map[int64]chan struct{}{}
		}
		other, busy := l.held[off]
		if !busy {
			l.held[off] = mine
			l.mu.Unlock()
			break
		}
		l.mu.Unlock()
		select {
		case <-other:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
	releaseHere := func() {
		l.mu.Lock()
		delete(l.held, off)
		l.mu.Unlock()
		close(mine)
	}
	// Then across processes.
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: off, Len: 1}
	for {
		err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) {
			releaseHere()
			return nil, fmt.Errorf("locking cache key %s: %w", key[:12], err)
		}
		select {
		case <-ctx.Done():
			releaseHere()
			return nil, context.Cause(ctx)
		case <-time.After(10 * time.Millisecond):
		}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			un := lk
			un.Type = unix.F_UNLCK
			_ = unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &un)
			releaseHere()
		})
	}, nil
}

// Close writes what is pending, closes the cache's files and releases its
// locks, including key locks still held; the Cache must not be used
// afterwards.
func (c *Cache) Close() error {
	c.parts.forget()
	c.entries.close()
	l := &c.locks
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.file == nil {
		return nil
	}
	err := l.file.Close()
	l.file = nil
	return err
}
