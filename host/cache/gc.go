package cache

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
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
	var out []EntryInfo
	err := filepath.WalkDir(filepath.Join(c.dir, "entries"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".json") || strings.HasPrefix(d.Name(), ".") {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		var m Manifest
		if json.Unmarshal(b, &m) != nil {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		e := EntryInfo{Key: m.Key, Stage: m.Stage, Kind: m.Kind, LastUsed: info.ModTime()}
		for _, o := range m.Outputs {
			e.Bytes += o.Digest.Size
		}
		out = append(out, e)
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].LastUsed.After(out[j].LastUsed) })
	return out, err
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
// temporary files. maxBytes < 0 keeps every entry (only unreferenced
// blobs go).
func (c *Cache) GC(maxBytes int64) (GCResult, error) {
	var res GCResult
	entries, err := c.List()
	if err != nil {
		return res, err
	}
	// Oldest last in entries; evict from the end while over the limit.
	refs := map[string]int64{} // blob hash → size, for kept entries
	manifests := make([]*Manifest, len(entries))
	for i, e := range entries {
		b, _ := os.ReadFile(c.manifestPath(e.Key))
		var m Manifest
		if json.Unmarshal(b, &m) == nil {
			manifests[i] = &m
		}
	}
	total := c.Usage()
	keep := len(entries)
	if maxBytes >= 0 {
		for keep > 0 && total > maxBytes {
			keep--
			c.Invalidate(entries[keep].Key)
			res.Entries++
			// Bytes only come back once no kept entry shares the blobs.
			total = c.referencedBytes(manifests[:keep])
		}
	}
	for _, m := range manifests[:keep] {
		if m == nil {
			continue
		}
		for _, o := range m.Outputs {
			refs[o.Digest.Hash] = o.Digest.Size
		}
	}
	filepath.WalkDir(filepath.Join(c.dir, "cas"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if _, ok := refs[d.Name()]; !ok {
			if info, err := d.Info(); err == nil {
				res.Bytes += info.Size()
			}
			if os.Remove(p) == nil {
				res.Blobs++
			}
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
	return res, nil
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

// Clear removes every entry and blob.
func (c *Cache) Clear() error {
	for _, d := range []string{"entries", "cas", "stages"} {
		if err := os.RemoveAll(filepath.Join(c.dir, d)); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(c.dir, d), 0o755); err != nil {
			return err
		}
	}
	// The key lock file stays: other runs may hold locks in it. Anything
	// else under locks/ is from an older layout (a file per key).
	ents, _ := os.ReadDir(filepath.Join(c.dir, "locks"))
	for _, e := range ents {
		if filepath.Join(c.dir, "locks", e.Name()) != c.locks.path {
			if err := os.RemoveAll(filepath.Join(c.dir, "locks", e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}
