package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// Layout under the cache root:
//
//	v1/entries.log             the manifest of every stage run, one record each, appended last
//	v1/cas/cd/<sha256>         output bytes, content-addressed
//	v1/locks/keys              one byte per key range-locked while a run computes that key
//	v1/locks/log               flock: shared while a Cache is open, exclusive to rewrite the log
//	v1/stages/<run>.jsonl      the key parts of each stage's last run (miss reasons), appended
//	v1/plugins/                the plugin catalog: binary digests and descriptors (host/pluginmgr)
const layout = "v1"

// ErrCorrupt marks a cache entry whose bytes do not match its digest.
var ErrCorrupt = errors.New("cache entry is corrupt")

// DefaultDir is $XDG_CACHE_HOME/pipehost, else ~/.cache/pipehost.
func DefaultDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "pipehost")
	}
	return filepath.Join(os.TempDir(), "pipehost-cache")
}

// Cache is an on-disk stage-output cache. Several pipehost processes may
// share one: entries appear atomically and a per-key file lock lets one
// compute while the others wait for its result.
type Cache struct {
	root string
	dir  string

	locks   keyLocks
	parts   partsLog
	entries entryLog
}

// Open prepares the cache at root. An error means the cache cannot be used
// (e.g. the directory is not writable); callers run without it.
func Open(root string) (*Cache, error) {
	c := &Cache{root: root, dir: filepath.Join(root, layout)}
	c.locks.path = filepath.Join(c.dir, "locks", "keys")
	c.parts.dir = filepath.Join(c.dir, "stages")
	for _, d := range []string{"cas", "locks", "stages", "tmp"} {
		if err := os.MkdirAll(filepath.Join(c.dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("cache directory %s: %w", root, err)
		}
	}
	// A directory can exist and still refuse writes (read-only mounts).
	probe, err := os.CreateTemp(filepath.Join(c.dir, "tmp"), "probe-")
	if err != nil {
		return nil, fmt.Errorf("cache directory %s is not writable: %w", root, err)
	}
	probe.Close()
	os.Remove(probe.Name())
	if err := c.entries.open(c.dir); err != nil {
		return nil, fmt.Errorf("cache directory %s: %w", root, err)
	}
	return c, nil
}

// Root is the directory given to Open.
func (c *Cache) Root() string { return c.root }

// OutputRecord is one cached output.
type OutputRecord struct {
	Port   string          `json:"port"`
	Digest Digest          `json:"digest"`
	Handle json.RawMessage `json:"handle"`
}

// Manifest describes one cached stage run.
type Manifest struct {
	Key     string         `json:"key"`
	Stage   string         `json:"stage"`
	Kind    string         `json:"kind"`
	Created time.Time      `json:"created"`
	Parts   Parts          `json:"parts"`
	Outputs []OutputRecord `json:"outputs"`
}

// HandleOf decodes an output record's handle.
func (o OutputRecord) HandleOf() (*pb.Handle, error) {
	h := &pb.Handle{}
	if err := protojson.Unmarshal(o.Handle, h); err != nil {
		return nil, fmt.Errorf("%w: handle of %q: %v", ErrCorrupt, o.Port, err)
	}
	return h, nil
}

// EncodeHandle is the inverse of HandleOf.
func EncodeHandle(h *pb.Handle) json.RawMessage {
	b, _ := protojson.Marshal(h)
	return b
}

func shard(dir, name, ext string) string {
	return filepath.Join(dir, name[:2], name+ext)
}

// BlobPath is where the bytes of d live.
func (c *Cache) BlobPath(d Digest) string { return shard(filepath.Join(c.dir, "cas"), d.Hash, "") }

// Lookup returns the entry for key, or nil. It checks that every output's
// bytes exist with the right size (a cheap check: full digests are
// verified when bytes are read) and marks the entry used for LRU eviction.
// A broken entry is removed and reported through the error.
func (c *Cache) Lookup(key string) (*Manifest, error) {
	m, err := c.entries.get(key)
	if errors.Is(err, ErrCorrupt) {
		c.Invalidate(key)
		return nil, fmt.Errorf("%w: entry %s has an unreadable manifest; removed", ErrCorrupt, key[:12])
	}
	if err != nil || m == nil {
		return nil, err
	}
	if m.Key != key {
		c.Invalidate(key)
		return nil, fmt.Errorf("%w: entry %s has an unreadable manifest; removed", ErrCorrupt, key[:12])
	}
	for _, o := range m.Outputs {
		st, err := os.Stat(c.BlobPath(o.Digest))
		if err != nil || st.Size() != o.Digest.Size {
			c.Invalidate(key)
			return nil, fmt.Errorf("%w: entry %s: output %q is missing or truncated; removed", ErrCorrupt, key[:12], o.Port)
		}
	}
	return m, nil
}

// RemoveBlob deletes stored bytes found corrupt; content addressing would
// otherwise keep the bad copy when the same digest is stored again.
func (c *Cache) RemoveBlob(d Digest) { _ = os.Remove(c.BlobPath(d)) }

// Invalidate removes an entry (its blobs go at the next gc if unreferenced).
func (c *Cache) Invalidate(key string) { c.entries.del(key) }

// Store writes an entry: each output's bytes (copied in the kernel from its
// segment) into the content store, each under a temporary name and renamed,
// then the manifest, appended to the entry log in one checksummed record.
// A crash at any point leaves no partial entry: a blob without a manifest is
// no entry (gc removes it), a manifest cut short fails its checksum.
func (c *Cache) Store(m *Manifest, segs map[string]*shm.Segment) error {
	if err := c.StoreBlobs(m, segs); err != nil {
		return err
	}
	return c.entries.put(m)
}

// StoreBlobs is the first half of Store: each output's bytes into the
// content store. PutManifests then makes the entries, several at once.
func (c *Cache) StoreBlobs(m *Manifest, segs map[string]*shm.Segment) error {
	for _, o := range m.Outputs {
		seg := segs[o.Port]
		if seg == nil {
			return fmt.Errorf("cache store %s: no segment for output %q", m.Stage, o.Port)
		}
		if err := c.putBlob(o.Digest, seg); err != nil {
			return fmt.Errorf("cache store %s output %q: %w", m.Stage, o.Port, err)
		}
	}
	return nil
}

// PutManifests is the second half of Store for several entries whose bytes
// StoreBlobs has stored: their records go to the entry log in one write.
func (c *Cache) PutManifests(ms []*Manifest) error { return c.entries.put(ms...) }

func (c *Cache) putBlob(d Digest, seg *shm.Segment) error {
	dst := c.BlobPath(d)
	if st, err := os.Stat(dst); err == nil && st.Size() == d.Size {
		return nil // content-addressed: already there
	}
	tmp, err := os.CreateTemp(filepath.Join(c.dir, "tmp"), "blob-")
	if err != nil {
		return err
	}
	err = seg.Use(func(fd int) error { return kernelCopy(int(tmp.Fd()), fd, d.Size) })
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), dst)
		if errors.Is(err, os.ErrNotExist) {
			// The shard directory is made on first use only.
			if err = os.MkdirAll(filepath.Dir(dst), 0o755); err == nil {
				err = os.Rename(tmp.Name(), dst)
			}
		}
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// Materialize loads cached bytes into a new write-sealed segment through an
// in-kernel copy, then verifies the digest over the sealed mapping (a read,
// not a copy). The segment can be handed to any stage: the cache file
// itself is never exposed, so no stage can write into the cache.
func (c *Cache) Materialize(d Digest, name string) (*shm.Segment, error) {
	f, err := os.Open(c.BlobPath(d))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	defer f.Close()
	seg, err := shm.Create(name, d.Size)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*shm.Segment, error) { seg.Close(); return nil, err }
	if err := seg.Use(func(fd int) error { return kernelCopy(fd, int(f.Fd()), d.Size) }); err != nil {
		return fail(fmt.Errorf("%w: %v", ErrCorrupt, err))
	}
	if err := seg.SealWrite(); err != nil {
		return fail(err)
	}
	got, err := SegmentDigest(seg)
	if err != nil {
		return fail(err)
	}
	if got != d {
		return fail(fmt.Errorf("%w: bytes hash to %s, expected %s", ErrCorrupt, got.Hash[:12], d.Hash[:12]))
	}
	return seg, nil
}

// digestWindow is how much of a segment SegmentDigest maps at a time: the
// host then never holds more than this of a grid's pages, however large.
// 8 MiB keeps the host's resident set near its base (about 28 MiB) while the
// map and unmap per window stay well under 1% of hashing it.
const digestWindow = 8 << 20

// SegmentDigest hashes a sealed segment through read-only mappings of one
// window at a time (no copy, and the host's resident set stays bounded).
func SegmentDigest(seg *shm.Segment) (Digest, error) {
	if !seg.Sealed() {
		return Digest{}, fmt.Errorf("digest of segment %q: %w", seg.Name(), shm.ErrNotSealed)
	}
	size := seg.Size()
	if size <= smallDigest {
		return smallSegmentDigest(seg)
	}
	h := sha256.New()
	err := seg.Use(func(fd int) error {
		for off := int64(0); off < size; off += digestWindow {
			n := min(digestWindow, size-off)
			b, err := unix.Mmap(fd, off, int(n), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
			if err != nil {
				return fmt.Errorf("digest of segment %q: mapping bytes %d–%d: %w", seg.Name(), off, off+n, err)
			}
			h.Write(b)
			if err := unix.Munmap(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Digest{}, err
	}
	return Digest{Hash: hex.EncodeToString(h.Sum(nil)), Size: size}, nil
}

// smallDigest is the size up to which SegmentDigest reads a segment with
// pread instead of mapping it: copying 64 KiB costs less than a mapping's
// set-up and teardown, whose unmap interrupts every CPU running a host
// thread to flush its TLB. Small outputs are hashed before their consumers
// start, so this is on every stage's path.
const smallDigest = 64 << 10

var smallBufs = sync.Pool{New: func() any { b := make([]byte, smallDigest); return &b }}

func smallSegmentDigest(seg *shm.Segment) (Digest, error) {
	size := seg.Size()
	bp := smallBufs.Get().(*[]byte)
	defer smallBufs.Put(bp)
	buf := (*bp)[:size]
	err := seg.Use(func(fd int) error {
		for off := 0; off < len(buf); {
			n, err := unix.Pread(fd, buf[off:], int64(off))
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return fmt.Errorf("digest of segment %q: reading bytes %d–%d: %w", seg.Name(), off, size, err)
			}
			if n == 0 {
				return fmt.Errorf("digest of segment %q: %w after %d of %d bytes", seg.Name(), io.ErrUnexpectedEOF, off, size)
			}
			off += n
		}
		return nil
	})
	if err != nil {
		return Digest{}, err
	}
	sum := sha256.Sum256(buf)
	return Digest{Hash: hex.EncodeToString(sum[:]), Size: size}, nil
}

// kernelCopy copies n bytes from src to dst (both at offset 0, dst at its
// current size 0) without passing them through user space:
// copy_file_range where the file systems allow it, sendfile otherwise.
func kernelCopy(dst, src int, n int64) error {
	var off int64
	useSendfile := false
	for off < n {
		if !useSendfile {
			roff, woff := off, off
			k, err := unix.CopyFileRange(src, &roff, dst, &woff, int(min(n-off, 1<<30)), 0)
			if err == nil && k > 0 {
				off += int64(k)
				continue
			}
			if err == nil || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
				useSendfile = true
				if _, err := unix.Seek(dst, off, 0); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("copy_file_range: %w", err)
		}
		roff := off
		k, err := unix.Sendfile(dst, src, &roff, int(min(n-off, 1<<30)))
		if err != nil {
			return fmt.Errorf("sendfile: %w", err)
		}
		if k == 0 {
			return fmt.Errorf("source ended after %d of %d bytes", off, n)
		}
		off += int64(k)
	}
	return nil
}
