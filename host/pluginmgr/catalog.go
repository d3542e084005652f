package pluginmgr

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/pipehost/pipehost/internal/atomicfile"
	"github.com/pipehost/pipehost/internal/wire"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// Catalog remembers what each plugin binary offers, so a run launches only
// the plugins its stages use. It keeps two things in a directory:
//
//	digests.json       path → (size, mtime, ctime, inode, device, SHA-256):
//	                   a binary is hashed again only when its stat changes
//	desc/<sha256>.json the Describe reply of the binary with that digest
//
// Descriptors are keyed by content, so a rebuilt binary is described again
// and two copies of one binary share an entry. Every write is atomic
// (temporary file, then rename); a corrupt or foreign file is ignored,
// reported and rewritten. Concurrent runs may share a catalog: the worst a
// lost update costs is one more hash or launch.
type Catalog struct {
	dir  string
	warn func(string)

	mu        sync.Mutex
	memo      map[string]statRecord
	memoDirty bool
	warned    map[string]bool

	hashed atomic.Int64
}

// statRecord is what identifies one state of a file, like git's index
// entries, plus the digest of that state.
type statRecord struct {
	Size    int64  `json:"size"`
	MtimeNs int64  `json:"mtime_ns"`
	CtimeNs int64  `json:"ctime_ns"`
	Ino     uint64 `json:"ino"`
	Dev     uint64 `json:"dev"`
	SHA256  string `json:"sha256"`
}

const (
	memoFormat = "pipehost-plugin-digests/1"
	descFormat = "pipehost-plugin-descriptors/1"
)

// racyWindow: a file changed this close to (or after) the moment it was
// hashed may have been changed again within the same timestamp tick, with
// an unchanged stat; its digest is not remembered, so the next run hashes
// it again (git's "racily clean" entries). 2 s covers the coarsest common
// timestamp granularity (FAT, some network file systems).
var racyWindow = 2 * time.Second

type memoFile struct {
	Format  string                `json:"format"`
	Entries map[string]statRecord `json:"entries"`
}

type descFile struct {
	Format           string          `json:"format"`
	BinarySHA256     string          `json:"binary_sha256"`
	ProtocolRevision uint32          `json:"protocol_revision"`
	DescribeSHA256   string          `json:"describe_sha256"`
	Describe         json.RawMessage `json:"describe"`
}

// OpenCatalog reads the catalog in dir (created on first write). warn
// receives one line per problem (a corrupt file, a directory that cannot be
// written); nil drops them. Nothing here is fatal: a catalog that cannot be
// read or written only means plugins are hashed and launched to be
// described, as without one.
func OpenCatalog(dir string, warn func(string)) *Catalog {
	if warn == nil {
		warn = func(string) {}
	}
	c := &Catalog{dir: dir, warn: warn, memo: map[string]statRecord{}, warned: map[string]bool{}}
	path := filepath.Join(dir, "digests.json")
	b, err := os.ReadFile(path)
	switch {
	case absent(err):
	case err != nil:
		c.warnOnce(path, fmt.Sprintf("plugin catalog: reading %s: %v", path, err))
	default:
		var m memoFile
		if err := json.Unmarshal(b, &m); err != nil || m.Format != memoFormat {
			why := "not a " + memoFormat + " file"
			if err != nil {
				why = err.Error()
			}
			c.warnOnce(path, fmt.Sprintf("plugin catalog: ignoring %s (%s); every plugin is hashed again and the file rewritten", path, why))
			c.memoDirty = true
		} else {
			for k, v := range m.Entries {
				c.memo[k] = v
			}
		}
	}
	return c
}

// Dir is the catalog's directory.
func (c *Catalog) Dir() string { return c.dir }

// Hashed counts the binaries hashed so far (memo misses).
func (c *Catalog) Hashed() int { return int(c.hashed.Load()) }

// warnOnce reports msg unless a message of the same key was reported.
func (c *Catalog) warnOnce(key, msg string) {
	c.mu.Lock()
	seen := c.warned[key]
	c.warned[key] = true
	c.mu.Unlock()
	if !seen {
		c.warn(msg)
	}
}

func statOf(path string) (statRecord, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return statRecord{}, err
	}
	return statRecord{
		Size: st.Size, MtimeNs: st.Mtim.Nano(), CtimeNs: st.Ctim.Nano(),
		Ino: st.Ino, Dev: st.Dev,
	}, nil
}

func (r statRecord) sameFile(o statRecord) bool {
	return r.Size == o.Size && r.MtimeNs == o.MtimeNs && r.CtimeNs == o.CtimeNs && r.Ino == o.Ino && r.Dev == o.Dev
}

// Digest returns the SHA-256 (hex) of the file at path, from the memo when
// its stat is unchanged, else by reading it.
func (c *Catalog) Digest(path string) (string, error) {
	d, _, err := c.digestStat(path)
	return d, err
}

// digestStat is Digest plus the stat the digest belongs to.
func (c *Catalog) digestStat(path string) (string, statRecord, error) {
	before, err := statOf(path)
	if err != nil {
		return "", statRecord{}, err
	}
	c.mu.Lock()
	rec, ok := c.memo[path]
	c.mu.Unlock()
	if ok && rec.sameFile(before) && rec.SHA256 != "" {
		return rec.SHA256, before, nil
	}
	start := time.Now().UnixNano()
	d, err := hashFile(path)
	if err != nil {
		return "", statRecord{}, err
	}
	c.hashed.Add(1)
	after, err := statOf(path)
	if err != nil {
		return "", statRecord{}, err
	}
	if !after.sameFile(before) {
		return "", statRecord{}, fmt.Errorf("%s changed while it was being hashed", path)
	}
	// Remember only a file that did not change while it was read and was
	// last changed well before: see racyWindow.
	newest := max(after.MtimeNs, after.CtimeNs)
	c.mu.Lock()
	if newest < start-int64(racyWindow) {
		after.SHA256 = d
		c.memo[path] = after
		c.memoDirty = true
	} else if _, had := c.memo[path]; had {
		delete(c.memo, path)
		c.memoDirty = true
	}
	c.mu.Unlock()
	return d, after, nil
}

// Flush writes the digest memo if it changed.
func (c *Catalog) Flush() {
	c.mu.Lock()
	if !c.memoDirty {
		c.mu.Unlock()
		return
	}
	b, err := json.Marshal(memoFile{Format: memoFormat, Entries: c.memo})
	c.memoDirty = false
	c.mu.Unlock()
	if err == nil {
		err = atomicfile.Write(filepath.Join(c.dir, "digests.json"), b)
	}
	if err != nil {
		c.warnOnce("write", fmt.Sprintf("plugin catalog: plugin digests are not remembered: %v", err))
	}
}

func (c *Catalog) descPath(digest string) string {
	return filepath.Join(c.dir, "desc", digest+".json")
}

// Lookup returns the remembered Describe reply of the binary with digest.
// When there is none it says why: "" for simply unknown, else the reason
// the file was ignored (it is also reported through warn when it is
// corrupt or foreign, not merely from another protocol revision).
func (c *Catalog) Lookup(digest string) (*pb.DescribeResponse, string) {
	path := c.descPath(digest)
	b, err := os.ReadFile(path)
	if absent(err) {
		return nil, ""
	}
	if err != nil {
		return nil, c.ignored(path, err.Error(), true)
	}
	var f descFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, c.ignored(path, "corrupt: "+err.Error(), true)
	}
	if f.Format != descFormat {
		return nil, c.ignored(path, fmt.Sprintf("foreign: format %q, want %q", f.Format, descFormat), true)
	}
	if f.BinarySHA256 != digest {
		return nil, c.ignored(path, fmt.Sprintf("foreign: it describes binary %.12s…", f.BinarySHA256), true)
	}
	if f.ProtocolRevision != wire.ProtocolRevision {
		return nil, c.ignored(path, fmt.Sprintf("described under protocol revision %d, this host speaks %d", f.ProtocolRevision, wire.ProtocolRevision), false)
	}
	if sum := sha256.Sum256(f.Describe); hex.EncodeToString(sum[:]) != f.DescribeSHA256 {
		return nil, c.ignored(path, "corrupt: the descriptors do not match their checksum", true)
	}
	resp := &pb.DescribeResponse{}
	if err := protojson.Unmarshal(f.Describe, resp); err != nil {
		return nil, c.ignored(path, "corrupt: "+err.Error(), true)
	}
	if len(resp.GetStages()) == 0 {
		return nil, c.ignored(path, "corrupt: no stages", true)
	}
	return resp, ""
}

// absent: no such file, or a path through a non-directory (the catalog
// directory cannot exist; writing says so).
func absent(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

func (c *Catalog) ignored(path, why string, report bool) string {
	if report {
		c.warnOnce(path, fmt.Sprintf("plugin catalog: ignoring %s (%s); the plugin is described again and the file rewritten", path, why))
	}
	return why
}

// Record remembers the Describe reply of the binary with digest.
func (c *Catalog) Record(digest string, resp *pb.DescribeResponse) error {
	raw, err := protojson.Marshal(resp)
	if err != nil {
		return err
	}
	// protojson's spacing is deliberately unstable; the checksum covers the
	// compact form, which is what the file holds.
	var compact bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return err
	}
	sum := sha256.Sum256(compact.Bytes())
	// Without HTML escaping the file holds the checksummed bytes as they
	// are; escaped, a doc string with < > or & would never match again.
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	err = enc.Encode(descFile{
		Format: descFormat, BinarySHA256: digest, ProtocolRevision: wire.ProtocolRevision,
		DescribeSHA256: hex.EncodeToString(sum[:]), Describe: compact.Bytes(),
	})
	if err != nil {
		return err
	}
	if err := atomicfile.Write(c.descPath(digest), b.Bytes()); err != nil {
		c.warnOnce("write", fmt.Sprintf("plugin catalog: plugin descriptors are not remembered: %v", err))
		return err
	}
	return nil
}

// sameDescriptors reports whether a live Describe reply matches a
// remembered one.
func sameDescriptors(a, b *Plugin) bool {
	if a.SDK != b.SDK || a.SDKVersion != b.SDKVersion || len(a.Stages) != len(b.Stages) {
		return false
	}
	for i := range a.Stages {
		if !proto.Equal(a.Stages[i], b.Stages[i]) {
			return false
		}
	}
	return true
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// HashFile is the SHA-256 (hex) of a plugin binary, read whole (for when
// there is no catalog to remember it).
func HashFile(path string) (string, error) { return hashFile(path) }
