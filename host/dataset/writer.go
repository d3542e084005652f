// Package dataset writes a run's grids and tables in formats that GIS and data tools read as
// they are: Cloud Optimized GeoTIFF, NPZ, GeoParquet 1.1, Arrow IPC and PNG previews.
//
// Grids arrive as raw little-endian row-major bytes, typically read-only mappings of sealed
// segments; writers stream them tile by tile or row by row and never hold a second full copy.
// Every artifact is written under a temporary name in its final directory and renamed when
// complete, so a failed write leaves nothing under the final name.
package dataset

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Artifact describes one written file, for the run's metadata.json.
type Artifact struct {
	// Path is relative to the Writer's directory, with forward slashes.
	Path string `json:"path"`
	// Format is one of "cog", "npz", "geoparquet", "arrow-ipc", "png".
	Format string `json:"format"`
	// SHA256 is the hex digest of the file's bytes as renamed into place.
	SHA256 string `json:"sha256"`
	// Size is the file size in bytes.
	Size int64 `json:"size"`
	// Key, when set, digests everything the file's bytes were made from;
	// an artifact with the same key need not be written again.
	Key string `json:"key,omitempty"`
}

// Writer writes artifacts into one output directory. Artifact names are paths relative to it;
// a name that would resolve outside it (absolute, "..", or through a symlink that leaves the
// directory) is rejected. A Writer may be used from several goroutines.
type Writer struct {
	dir  string
	root *os.Root
	// NoSync skips the fsync before each rename. The rename stays atomic; only durability
	// across a power loss is given up.
	NoSync bool
}

// NewWriter opens dir, which must exist, as the output directory.
func NewWriter(dir string) (*Writer, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("dataset: output directory %s: %w", dir, err)
	}
	root, err := os.OpenRoot(abs)
	if err != nil {
		return nil, fmt.Errorf("dataset: output directory %s: %w", dir, err)
	}
	return &Writer{dir: abs, root: root}, nil
}

// Dir returns the absolute output directory.
func (w *Writer) Dir() string { return w.dir }

// Close releases the directory handle.
func (w *Writer) Close() error { return w.root.Close() }

// checkName rejects names that are not plain relative paths below the output directory.
// Symlinks that lead out of it are caught later by os.Root on every access.
func (w *Writer) checkName(name string) error {
	if name == "" {
		return errors.New("dataset: empty artifact name")
	}
	if strings.ContainsRune(name, 0) || strings.HasSuffix(name, "/") || !filepath.IsLocal(name) {
		return fmt.Errorf("dataset: artifact name %q is not a relative path inside the output directory %s", name, w.dir)
	}
	if strings.HasPrefix(filepath.Base(name), ".") {
		return fmt.Errorf("dataset: artifact name %q: hidden names are reserved for temporary files", name)
	}
	return nil
}

// pending is an artifact being written under a temporary name.
type pending struct {
	w      *Writer
	name   string // final name, relative to the directory
	tmp    string // temporary name, same directory
	f      *os.File
	closed bool
}

// create validates name and opens a fresh temporary file beside where it will live.
func (w *Writer) create(name string) (*pending, error) {
	if err := w.checkName(name); err != nil {
		return nil, err
	}
	name = filepath.Clean(name)
	if d := filepath.Dir(name); d != "." {
		if err := w.root.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("dataset: %s: creating its directory: %w", w.display(name), err)
		}
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(filepath.Dir(name), "."+filepath.Base(name)+".tmp-"+hex.EncodeToString(rnd[:]))
	f, err := w.root.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("dataset: %s: %w", w.display(name), err)
	}
	return &pending{w: w, name: name, tmp: tmp, f: f}, nil
}

// scratch opens an unlinked temporary file beside the artifact, for data that must be
// reordered before it reaches the artifact. It disappears when closed, or if the process dies.
func (p *pending) scratch() (*os.File, error) {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	name := filepath.Join(filepath.Dir(p.name), "."+filepath.Base(p.name)+".scratch-"+hex.EncodeToString(rnd[:]))
	f, err := p.w.root.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("scratch file: %w", err)
	}
	if err := p.w.root.Remove(name); err != nil {
		f.Close()
		return nil, fmt.Errorf("scratch file: %w", err)
	}
	return f, nil
}

// abort removes the temporary file. It is safe to call after commit.
func (p *pending) abort() {
	if p.closed {
		return
	}
	p.closed = true
	p.f.Close()
	p.w.root.Remove(p.tmp)
}

// commit syncs, digests and renames the file into place.
func (p *pending) commit(format string) (Artifact, error) {
	if p.closed {
		return Artifact{}, fmt.Errorf("dataset: %s: already closed", p.w.display(p.name))
	}
	fail := func(what string, err error) (Artifact, error) {
		p.abort()
		return Artifact{}, fmt.Errorf("dataset: %s: %s: %w", p.w.display(p.name), what, err)
	}
	if !p.w.NoSync {
		if err := p.f.Sync(); err != nil {
			return fail("sync", err)
		}
	}
	// The digest is taken from the file as written, not from what we meant to write; the
	// bytes are still in the page cache, so this costs little more than hashing inline.
	h := sha256.New()
	size, err := io.Copy(h, io.NewSectionReader(p.f, 0, 1<<62))
	if err != nil {
		return fail("digest", err)
	}
	if err := p.f.Close(); err != nil {
		p.closed = true
		p.w.root.Remove(p.tmp)
		return Artifact{}, fmt.Errorf("dataset: %s: close: %w", p.w.display(p.name), err)
	}
	p.closed = true
	if err := p.w.root.Rename(p.tmp, p.name); err != nil {
		p.w.root.Remove(p.tmp)
		return Artifact{}, fmt.Errorf("dataset: %s: rename into place: %w", p.w.display(p.name), err)
	}
	return Artifact{
		Path:   filepath.ToSlash(p.name),
		Format: format,
		SHA256: hex.EncodeToString(h.Sum(nil)),
		Size:   size,
	}, nil
}

// Holds reports whether the directory still has a as it was written: a
// regular file at a.Path, inside the directory, of a.Size bytes that hash to
// a.SHA256.
func (w *Writer) Holds(a Artifact) bool {
	if w.checkName(a.Path) != nil {
		return false
	}
	f, err := w.root.Open(filepath.FromSlash(a.Path))
	if err != nil {
		return false
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() || st.Size() != a.Size {
		return false
	}
	h := sha256.New()
	if n, err := io.Copy(h, f); err != nil || n != a.Size {
		return false
	}
	return hex.EncodeToString(h.Sum(nil)) == a.SHA256
}

func (w *Writer) display(name string) string {
	return path.Join(filepath.ToSlash(w.dir), filepath.ToSlash(name))
}
