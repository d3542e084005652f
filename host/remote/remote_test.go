package remote_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/remote"
	"github.com/pipehost/pipehost/internal/remotetest"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

func TestMain(m *testing.M) { remotetest.Main(m) }

func dial(t *testing.T, target string) *remote.Client {
	t.Helper()
	c, err := remote.Dial(context.Background(), target, remote.Options{})
	if err != nil {
		t.Fatalf("dial %s: %v", target, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// pattern makes n deterministic bytes that differ per seed.
func pattern(n int, seed uint64) []byte {
	b := make([]byte, n)
	var blk [32]byte
	for i := 0; i < n; i += 32 {
		var s [16]byte
		binary.LittleEndian.PutUint64(s[:], seed)
		binary.LittleEndian.PutUint64(s[8:], uint64(i))
		blk = sha256.Sum256(s[:])
		copy(b[i:], blk[:])
	}
	return b
}

// segmentOf puts b in a sealed memfd.
func segmentOf(t *testing.T, b []byte) *shm.Segment {
	t.Helper()
	seg, err := shm.Create("test", int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { seg.Close() })
	if len(b) > 0 {
		m, err := seg.MapRW()
		if err != nil {
			t.Fatal(err)
		}
		copy(m.Bytes(), b)
		m.Unmap()
	}
	if err := seg.SealWrite(); err != nil {
		t.Fatal(err)
	}
	return seg
}

func segmentBytes(t *testing.T, seg *shm.Segment) []byte {
	t.Helper()
	if seg.Size() == 0 {
		return nil
	}
	m, err := seg.MapRO()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmap()
	return bytes.Clone(m.Bytes())
}

func TestCapabilities(t *testing.T) {
	env := remotetest.Servers(t)
	c := dial(t, env.Cache)
	if !c.CanUpdateActionCache() {
		t.Errorf("bazel-remote at %s should accept action results", env.Cache)
	}
	x := dial(t, env.Executor)
	if !x.CanExecute() {
		t.Errorf("Buildbarn at %s should announce remote execution", env.Executor)
	}
}

func TestDialDownServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	start := time.Now()
	_, err = remote.Dial(context.Background(), "grpc://"+addr, remote.Options{ConnectTimeout: time.Second})
	if !errors.Is(err, remote.ErrUnavailable) {
		t.Fatalf("dial of a closed port: got %v, want ErrUnavailable", err)
	}
	if !strings.Contains(err.Error(), addr) {
		t.Errorf("error %q does not name %s", err, addr)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("giving up took %s, the connect timeout is 1s", d)
	}
}

func TestDialSilentServer(t *testing.T) {
	// Accepts connections and never answers: a hung server.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{})
	var conns []net.Conn
	go func() {
		defer close(accepted)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	defer func() {
		l.Close()
		<-accepted // the accept loop has ended: conns is ours
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	_, err = remote.Dial(context.Background(), "grpc://"+l.Addr().String(), remote.Options{ConnectTimeout: 500 * time.Millisecond})
	if !errors.Is(err, remote.ErrUnavailable) {
		t.Fatalf("dial of a silent server: got %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("giving up took %s", d)
	}
}

func TestBadTarget(t *testing.T) {
	for _, target := range []string{"http://127.0.0.1:1", "grpcs://x:1", "127.0.0.1"} {
		if _, err := remote.Dial(context.Background(), target, remote.Options{}); err == nil || errors.Is(err, remote.ErrUnavailable) {
			t.Errorf("Dial(%q): got %v, want a usage error", target, err)
		}
	}
}

// TestRoundTrip uploads blobs of every path (batch, ByteStream, empty, from
// a memfd and from a file) to both servers and reads them back into sealed
// segments.
func TestRoundTrip(t *testing.T) {
	env := remotetest.Servers(t)
	for _, target := range []string{env.Cache, env.Executor} {
		t.Run(target, func(t *testing.T) {
			c := dial(t, target)
			ctx := context.Background()
			seed := uint64(time.Now().UnixNano())
			small, medium, large := pattern(100, seed), pattern(3<<20+7, seed+1), pattern(9<<20+13, seed+2)
			file := filepath.Join(t.TempDir(), "large")
			if err := os.WriteFile(file, large, 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			blobs := []remote.Blob{
				remote.BytesBlob(small),
				{Digest: cache.DigestOf(medium), Src: remote.SegmentReader(segmentOf(t, medium))},
				{Digest: cache.DigestOf(large), Src: f},
				remote.BytesBlob(nil),
			}
			var all []remote.Digest
			for _, b := range blobs {
				all = append(all, b.Digest)
			}
			sent, err := c.Upload(ctx, blobs)
			if err != nil {
				t.Fatal(err)
			}
			if want := int64(len(small) + len(medium) + len(large)); sent != want {
				t.Errorf("sent %d bytes, want %d", sent, want)
			}
			if missing, err := c.FindMissing(ctx, all[:3]); err != nil || len(missing) != 0 {
				t.Fatalf("after upload: missing %v, err %v", missing, err)
			}
			if sent, err := c.Upload(ctx, blobs); err != nil || sent != 0 {
				t.Errorf("second upload sent %d bytes (err %v), want 0: the server has them", sent, err)
			}
			for i, want := range [][]byte{small, medium, large, nil} {
				seg, err := c.Download(ctx, all[i], "dl")
				if err != nil {
					t.Fatalf("download %d: %v", i, err)
				}
				if !seg.Sealed() {
					t.Errorf("download %d: segment is not write-sealed", i)
				}
				if got := segmentBytes(t, seg); !bytes.Equal(got, want) {
					t.Errorf("download %d: %d bytes differ from the %d uploaded", i, len(got), len(want))
				}
				seg.Close()
			}
			absent := cache.DigestOf(pattern(1000, seed+3))
			if _, err := c.Download(ctx, absent, "dl"); !errors.Is(err, remote.ErrNotFound) {
				t.Errorf("download of a blob never uploaded: got %v, want ErrNotFound", err)
			}
		})
	}
}

// TestCorruptBlobRejected alters a blob in bazel-remote's own storage and
// checks the download fails with a digest mismatch, leaving no segment.
func TestCorruptBlobRejected(t *testing.T) {
	env := remotetest.Servers(t)
	dir := env.BazelRemoteDir
	if dir == "" {
		t.Fatal("the bazel-remote storage directory is not known")
	}
	c := dial(t, env.Cache)
	ctx := context.Background()
	data := pattern(2<<20, uint64(time.Now().UnixNano()))
	d := cache.DigestOf(data)
	if _, err := c.Upload(ctx, []remote.Blob{remote.BytesBlob(data)}); err != nil {
		t.Fatal(err)
	}
	var stored string
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && strings.Contains(filepath.Base(p), d.Hash) && strings.Contains(p, "cas") {
			stored = p
		}
		return nil
	})
	if stored == "" {
		t.Fatalf("blob %s not found under %s", d.Hash[:12], dir)
	}
	fh, err := os.OpenFile(stored, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := fh.Stat()
	var one [1]byte
	off := st.Size() - 1000 // inside the data, past any header
	fh.ReadAt(one[:], off)
	one[0] ^= 0xff
	fh.WriteAt(one[:], off)
	fh.Close()

	seg, err := c.Download(ctx, d, "dl")
	if seg != nil {
		seg.Close()
	}
	var mm *remote.DigestMismatchError
	if !errors.Is(err, remote.ErrDigestMismatch) || !errors.As(err, &mm) {
		t.Fatalf("download of a corrupted blob: got %v, want a digest mismatch", err)
	}
	if mm.Want != d || mm.Got.Hash == d.Hash {
		t.Errorf("mismatch error %+v", mm)
	}
	if _, err := c.ReadBytes(ctx, d); !errors.Is(err, remote.ErrDigestMismatch) {
		t.Errorf("ReadBytes of a corrupted blob: got %v", err)
	}
}

func gridHandle(size uint64) *pb.Handle {
	return shm.GridHandle(1, size, 0, pb.DType_DTYPE_F32, 1, size/4, 0)
}

// TestStageCacheEntry stores a stage's outputs under a cache key and looks
// them up again, as a second host would.
func TestStageCacheEntry(t *testing.T) {
	env := remotetest.Servers(t)
	for _, target := range []string{env.Cache, env.Executor} {
		t.Run(target, func(t *testing.T) {
			ctx := context.Background()
			seed := uint64(time.Now().UnixNano())
			outs := map[string][]byte{"height": pattern(6<<20, seed), "mask": pattern(4096, seed+1)}
			var recs []cache.OutputRecord
			for port, b := range outs {
				recs = append(recs, cache.OutputRecord{Port: port, Digest: cache.DigestOf(b), Handle: cache.EncodeHandle(gridHandle(uint64(len(b))))})
			}
			key := cache.DigestOf(pattern(64, seed+2)).Hash
			writer := dial(t, target)
			if got, err := writer.LookupKey(ctx, key); err != nil || got != nil {
				t.Fatalf("lookup before store: %v, %v; want a miss", got, err)
			}
			err := writer.StoreKey(ctx, key, recs, func(port string) (io.ReaderAt, error) {
				return remote.SegmentReader(segmentOf(t, outs[port])), nil
			})
			if err != nil {
				t.Fatal(err)
			}
			// A second client, as on another host.
			reader := dial(t, target)
			got, err := reader.LookupKey(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(recs) {
				t.Fatalf("lookup: %d records, want %d", len(got), len(recs))
			}
			for _, r := range got {
				if r.Digest != cache.DigestOf(outs[r.Port]) {
					t.Errorf("output %q: digest %s", r.Port, r.Digest)
				}
				h, err := r.HandleOf()
				if err != nil || h.GetNbytes() != uint64(len(outs[r.Port])) {
					t.Errorf("output %q: handle %v (%v)", r.Port, h, err)
				}
				seg, err := reader.Download(ctx, r.Digest, r.Port)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(segmentBytes(t, seg), outs[r.Port]) {
					t.Errorf("output %q: downloaded bytes differ", r.Port)
				}
				seg.Close()
			}
		})
	}
}

type failingReader struct {
	r     io.ReaderAt
	after int64
}

func (f failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.after {
		return 0, errors.New("disk went away")
	}
	return f.r.ReadAt(p, off)
}

// TestInterruptedStoreLeavesNoEntry cuts an upload short: no action result
// may point at the missing bytes.
func TestInterruptedStoreLeavesNoEntry(t *testing.T) {
	env := remotetest.Servers(t)
	c := dial(t, env.Cache)
	ctx := context.Background()
	seed := uint64(time.Now().UnixNano())
	data := pattern(5<<20, seed)
	key := cache.DigestOf(pattern(64, seed+1)).Hash
	recs := []cache.OutputRecord{{Port: "out", Digest: cache.DigestOf(data), Handle: cache.EncodeHandle(gridHandle(uint64(len(data))))}}
	err := c.StoreKey(ctx, key, recs, func(string) (io.ReaderAt, error) {
		return failingReader{r: bytes.NewReader(data), after: 3 << 20}, nil
	})
	if err == nil || !strings.Contains(err.Error(), "disk went away") {
		t.Fatalf("store with a failing source: got %v", err)
	}
	if got, err := c.LookupKey(ctx, key); err != nil || got != nil {
		t.Fatalf("after an interrupted store: lookup gave %v, %v; want a miss", got, err)
	}
	if missing, _ := c.FindMissing(ctx, []remote.Digest{recs[0].Digest}); len(missing) != 1 {
		t.Errorf("the partial blob is in the CAS")
	}
}

// TestExecute runs a command on the Buildbarn worker and reads its output.
func TestExecute(t *testing.T) {
	env := remotetest.Servers(t)
	c := dial(t, env.Executor)
	ctx := context.Background()
	data := pattern(1<<20+3, uint64(time.Now().UnixNano()))
	in := remote.BytesBlob(data)
	action, err := c.PrepareAction(ctx, remote.ActionSpec{
		Args:        []string{"/bin/sh", "-c", "mkdir -p out && cp data/in out/copy && echo copied >&2"},
		Env:         map[string]string{"PATH": "/usr/bin:/bin"},
		Inputs:      []remote.File{{Path: "data/in", Blob: in}},
		OutputPaths: []string{"out/copy"},
		Platform:    env.Platform,
		Timeout:     time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	ar, err := c.Execute(ctx, action, false)
	if err != nil {
		t.Fatal(err)
	}
	d, ok := remote.OutputFile(ar, "out/copy")
	if !ok || d != in.Digest {
		t.Fatalf("output out/copy: %v (present %v), want %v; result %v", d, ok, in.Digest, ar)
	}
	stderr, err := c.ReadBytes(ctx, remote.Digest{Hash: ar.GetStderrDigest().GetHash(), Size: ar.GetStderrDigest().GetSizeBytes()})
	if err != nil || string(stderr) != "copied\n" {
		t.Errorf("stderr %q (%v)", stderr, err)
	}

	// A failing command: the result comes back with an ExecuteError.
	action, err = c.PrepareAction(ctx, remote.ActionSpec{
		Args: []string{"/bin/sh", "-c", "exit 3"}, Platform: env.Platform, DoNotCache: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ar, err = c.Execute(ctx, action, false)
	var xe *remote.ExecuteError
	if !errors.As(err, &xe) || ar.GetExitCode() != 3 || !strings.Contains(err.Error(), "status 3") {
		t.Fatalf("failing command: result %v, error %v", ar, err)
	}

	// A platform no worker has is refused rather than queued forever.
	action, err = c.PrepareAction(ctx, remote.ActionSpec{
		Args: []string{"/bin/true"}, Platform: map[string]string{"OSFamily": "plan9"}, DoNotCache: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Execute(ctx, action, false); err == nil {
		t.Fatal("an action for a platform without workers ran")
	}
}
