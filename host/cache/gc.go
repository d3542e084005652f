package cache

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// EntryInfo summarises one entry for `pipehost cache ls`.
type EntryInfo struct {
	Key      string
	Stage    string
	Kind     string
	Bytes    int64
	LastUsed time.Time
}

// List returns every entry, most recently used first.
func (c *Cache) List() ([]EntryInfo, error) {
	all, err := c.entries.all()
	if err != nil {
		return nil, err
	}
	out := make([]EntryInfo, len(all))
	for i, u := range all {
		out[i] = EntryInfo{Key: u.m.Key, Stage: u.m.Stage, Kind: u.m.Kind, LastUsed: u.used}
		for _, o := range u.m.Outputs {
			out[i].Bytes += o.Digest.Size
		}
	}
	return out, nil
}

// Manifests returns the manifest of every entry, most recently used first.
func (c *Cache) Manifests() ([]*Manifest, error) {
	all, err := c.entries.all()
	ms := make([]*Manifest, len(all))
	for i, u := range all {
		ms[i] = u.m
	}
	return ms, err
}

// Usage is the bytes held by the content store.
func (c *Cache) Usage() int64 {
	var total int64
	filepath.WalkDir(filepath.Join(c.dir, "cas"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}

// GCResult says what a collection removed.
type GCResult struct {
	Entries int
	Blobs   int
	Bytes   int64
}

// GC evicts least-recently-used entries until the content store holds at
// most maxBytes, then removes blobs no entry references and stale
// temporary files, and rewrites the entry log without the records that no
// longer count. maxBytes < 0 keeps every entry (only unreferenced blobs go).
// It needs the cache to itself: while another process has it open, GC
// returns ErrBusy and changes nothing.
func (c *Cache) GC(maxBytes int64) (GCResult, error) {
	var res GCResult
	err := c.entries.exclusive(func() error {
		res = GCResult{}
		// Most recently used first: evict from the end while over the limit.
		all, err := c.entries.allLocked()
		if err != nil {
			return err
		}
		sorted := make([]*Manifest, len(all))
		for i, u := range all {
			sorted[i] = u.m
		}
		total := c.Usage()
		keep := len(sorted)
		if maxBytes >= 0 {
			for keep > 0 && total > maxBytes {
				keep--
				res.Entries++
				// Bytes only come back once no kept entry shares the blobs.
				total = c.referencedBytes(sorted[:keep])
			}
		}
		kept := map[string]bool{}
		refs := map[string]bool{} // blob hashes of kept entries
		for _, m := range sorted[:keep] {
			kept[m.Key] = true
			for _, o := range m.Outputs {
				refs[o.Digest.Hash] = true
			}
		}
		if err := c.entries.rewrite(func(key string) bool { return kept[key] }); err != nil {
			return fmt.Errorf("rewriting the cache entry log: %w", err)
		}
		filepath.WalkDir(filepath.Join(c.dir, "cas"), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || refs[d.Name()] {
				return nil
			}
			if info, err := d.Info(); err == nil {
				res.Bytes += info.Size()
			}
			if os.Remove(p) == nil {
				res.Blobs++
			}
			return nil
		})
		// Temporary files older than a day belong to runs that died mid-write.
		tmps, _ := os.ReadDir(filepath.Join(c.dir, "tmp"))
		for _, t := range tmps {
			if info, err := t.Info(); err == nil && time.Since(info.ModTime()) > 24*time.Hour {
				os.Remove(filepath.Join(c.dir, "tmp", t.Name()))
			}
		}
		return nil
	})
	return res, err
}

func (c *Cache) referencedBytes(ms []*Manifest) int64 {
	seen := map[string]bool{}
	var total int64
	for _, m := range ms {
		if m == nil {
			continue
		}
		for _, o := range m.Outputs {
			if !seen[o.Digest.Hash] {
				seen[o.Digest.Hash] = true
				total += o.Digest.Size
			}
		}
	}
	return total
}

// Clear removes every entry and blob. Like GC it needs the cache to
// itself, and returns ErrBusy while another process has it open.
func (c *Cache) Clear() error {
	return c.entries.exclusive(func() error {
		for _, d := range []string{"cas", "stages"} {
			if err := os.RemoveAll(filepath.Join(c.dir, d)); err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Join(c.dir, d), 0o755); err != nil {
				return err
			}
		}
		c.parts.forget()
		if err := c.entries.rewrite(func(string) bool { return false }); err != nil {
			return err
		}
		// The lock files stay: other runs may take locks in them as soon as
		// this one lets go. Anything else under locks/ is from an older
		// layout (a file per key).
		ents, _ := os.ReadDir(filepath.Join(c.dir, "locks"))
		for _, e := range ents {
			p := filepath.Join(c.dir, "locks", e.Name())
			if p != c.locks.path && p != c.entries.lockPath {
				if err := os.RemoveAll(p); err != nil {
					return err
				}
			}
		}
		return nil
	})
}
