package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/shm"
)

// Cache is the remote stage cache as a run uses it, on top of a Client:
// lookups by stage key, lazy fetches of output bytes, and uploads in the
// background. A server that is down or slow must never fail or stall a
// run: the first ErrUnavailable switches the cache off for the rest of the
// run and is reported once through Warn; every later call is a miss or a
// no-op.
type Cache struct {
	c    *Client
	warn func(string)

	off      atomic.Bool
	warnOnce sync.Once
	pending  sync.WaitGroup
	mu       sync.Mutex
	errs     []error
}

// NewCache wraps a connected client. warn receives the one warning a run
// prints when the server becomes unusable (nil: none).
func NewCache(c *Client, warn func(string)) *Cache {
	if warn == nil {
		warn = func(string) {}
	}
	return &Cache{c: c, warn: warn}
}

// Enabled reports whether the cache is still in use.
func (rc *Cache) Enabled() bool { return !rc.off.Load() }

// degrade switches the cache off on ErrUnavailable and says so once.
func (rc *Cache) degrade(err error) {
	if errors.Is(err, ErrUnavailable) {
		rc.off.Store(true)
		rc.warnOnce.Do(func() {
			rc.warn(fmt.Sprintf("remote cache %s is not answering; this run goes on with the local cache only (%v)", rc.c.Target(), err))
		})
	}
}

// Close ends the connection (after Wait, if uploads were started).
func (rc *Cache) Close() error { return rc.c.Close() }

// Target is the server's address as given.
func (rc *Cache) Target() string { return rc.c.Target() }

// Lookup returns the output records stored under key, or nil on a miss.
// A corrupt entry is a miss too (and is returned as the error, wrapping
// ErrCorrupt, for the run log); an unreachable server is a miss, silently
// after the first warning.
func (rc *Cache) Lookup(ctx context.Context, key string) ([]cache.OutputRecord, error) {
	if rc.off.Load() {
		return nil, nil
	}
	recs, err := rc.c.LookupKey(ctx, key)
	if err != nil {
		rc.degrade(err)
		if errors.Is(err, ErrUnavailable) {
			return nil, nil
		}
		return nil, err
	}
	return recs, nil
}

// Fetch downloads one output into a new write-sealed segment. The error
// wraps ErrDigestMismatch for bytes that do not match (the caller
// recomputes the stage), ErrNotFound for an evicted blob, and
// ErrUnavailable when the server went away (the cache is then off).
func (rc *Cache) Fetch(ctx context.Context, d Digest, name string) (*shm.Segment, error) {
	if rc.off.Load() {
		return nil, fmt.Errorf("remote cache %s: %w: switched off earlier in this run", rc.c.Target(), ErrUnavailable)
	}
	seg, err := rc.c.Download(ctx, d, name)
	if err != nil {
		rc.degrade(err)
		return nil, err
	}
	return seg, nil
}

// StoreAsync uploads a stage's outputs and records them under key in the
// background; open gives each port's bytes and release is called once the
// upload no longer needs them (the caller keeps the segments alive until
// then). Errors other than an unreachable server are collected for Wait.
func (rc *Cache) StoreAsync(ctx context.Context, key string, recs []cache.OutputRecord, open func(port string) (io.ReaderAt, error), release func()) {
	if rc.off.Load() {
		if release != nil {
			release()
		}
		return
	}
	rc.pending.Add(1)
	go func() {
		defer rc.pending.Done()
		if release != nil {
			defer release()
		}
		if err := rc.Store(ctx, key, recs, open); err != nil {
			rc.mu.Lock()
			rc.errs = append(rc.errs, err)
			rc.mu.Unlock()
		}
	}()
}

// Store uploads a stage's outputs and records them under key, on the
// caller's goroutine. An unreachable server is not an error (it switches
// the cache off with its one warning); other failures are returned.
func (rc *Cache) Store(ctx context.Context, key string, recs []cache.OutputRecord, open func(port string) (io.ReaderAt, error)) error {
	if rc.off.Load() {
		return nil
	}
	err := rc.c.StoreKey(ctx, key, recs, open)
	if err != nil {
		rc.degrade(err)
		if errors.Is(err, ErrUnavailable) {
			return nil
		}
	}
	return err
}

// Wait blocks until every background upload has ended and returns the
// errors they met (an unreachable server is not one: it was warned about).
func (rc *Cache) Wait() []error {
	rc.pending.Wait()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]error(nil), rc.errs...)
}
