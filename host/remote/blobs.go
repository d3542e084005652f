package remote

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/shm"
)

// Digest is the local cache's digest (SHA-256 hex and size): the REAPI
// digest of the same bytes.
type Digest = cache.Digest

// Blob is bytes to upload: their digest and where to read them. Src is read
// with ReadAt (pread for files and segments), one chunk at a time.
type Blob struct {
	Digest Digest
	Src    io.ReaderAt
}

// BytesBlob makes a Blob of small bytes held in memory (protos, manifests).
func BytesBlob(b []byte) Blob { return Blob{Digest: cache.DigestOf(b), Src: bytes.NewReader(b)} }

// SegmentReader reads a segment with pread on its fd, keeping the segment
// from being closed during each read.
func SegmentReader(seg *shm.Segment) io.ReaderAt { return segReader{seg} }

type segReader struct{ seg *shm.Segment }

func (r segReader) ReadAt(p []byte, off int64) (int, error) {
	var n int
	err := r.seg.Use(func(fd int) error {
		for n < len(p) {
			k, err := unix.Pread(fd, p[n:], off+int64(n))
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			if k == 0 {
				return io.EOF
			}
			n += k
		}
		return nil
	})
	return n, err
}

// Upload puts the blobs the server does not hold yet: small ones grouped in
// BatchUpdateBlobs requests, large ones through ByteStream Write, streamed
// from Src chunk by chunk. It returns how many bytes it sent.
func (c *Client) Upload(ctx context.Context, blobs []Blob) (int64, error) {
	byDigest := map[Digest]Blob{}
	var digests []Digest
	for _, b := range blobs {
		if b.Digest.Size == 0 {
			continue // the empty blob is always present
		}
		if _, ok := byDigest[b.Digest]; !ok {
			byDigest[b.Digest] = b
			digests = append(digests, b.Digest)
		}
	}
	missing, err := c.FindMissing(ctx, digests)
	if err != nil {
		return 0, err
	}
	// Blobs this client downloaded corrupt are present for the server but
	// wrong: send them again so the good bytes replace them.
	for _, d := range digests {
		if _, bad := c.corrupt.Load(d); bad && !slices.Contains(missing, d) {
			missing = append(missing, d)
		}
	}
	var sent int64
	var batch []Blob
	var batchBytes int64
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := c.batchUpload(ctx, batch)
		if err == nil {
			for _, b := range batch {
				c.corrupt.Delete(b.Digest)
			}
		}
		batch, batchBytes = nil, 0
		return err
	}
	for _, d := range missing {
		b, ok := byDigest[d]
		if !ok {
			return sent, fmt.Errorf("remote %s: FindMissingBlobs named %s, which was not asked about", c.target, d)
		}
		if d.Size > c.maxBatch/4 {
			if err := c.write(ctx, b); err != nil {
				return sent, err
			}
			c.corrupt.Delete(d)
			sent += d.Size
			continue
		}
		if batchBytes+d.Size > c.maxBatch {
			if err := flush(); err != nil {
				return sent, err
			}
		}
		batch = append(batch, b)
		batchBytes += d.Size
		sent += d.Size
	}
	if err := flush(); err != nil {
		return sent, err
	}
	return sent, nil
}

func (c *Client) batchUpload(ctx context.Context, blobs []Blob) error {
	req := &repb.BatchUpdateBlobsRequest{InstanceName: c.opts.Instance, DigestFunction: repb.DigestFunction_SHA256}
	for _, b := range blobs {
		data := make([]byte, b.Digest.Size)
		if _, err := b.Src.ReadAt(data, 0); err != nil && !(errors.Is(err, io.EOF) && len(data) == 0) {
			return fmt.Errorf("reading blob %s for upload: %w", b.Digest.Hash[:12], err)
		}
		req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: toPB(b.Digest), Data: data})
	}
	cctx, cancel := c.callCtx(ctx)
	defer cancel()
	resp, err := c.cas.BatchUpdateBlobs(cctx, req)
	if err != nil {
		return c.wrap("BatchUpdateBlobs", err)
	}
	for _, r := range resp.GetResponses() {
		if st := status.FromProto(r.GetStatus()); st.Code() != codes.OK {
			return fmt.Errorf("remote %s: BatchUpdateBlobs: blob %s: %s: %s", c.target, r.GetDigest().GetHash(), st.Code(), st.Message())
		}
	}
	return nil
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func (c *Client) resource(parts ...string) string {
	if c.opts.Instance != "" {
		parts = append([]string{c.opts.Instance}, parts...)
	}
	return path.Join(parts...)
}

// watch cancels a transfer that makes no progress for StallTimeout: it
// returns the transfer's context, a function to call on progress and one to
// call when done.
func (c *Client) watch(ctx context.Context) (context.Context, func(), func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	errStall := fmt.Errorf("%w: no progress for %s", ErrUnavailable, c.opts.StallTimeout)
	t := time.AfterFunc(c.opts.StallTimeout, func() { cancel(errStall) })
	return ctx, func() { t.Reset(c.opts.StallTimeout) }, func() { t.Stop(); cancel(nil) }
}

// write streams one blob with ByteStream Write.
func (c *Client) write(ctx context.Context, b Blob) error {
	ctx, progress, done := c.watch(ctx)
	defer done()
	name := c.resource("uploads", newUUID(), "blobs", b.Digest.Hash, fmt.Sprint(b.Digest.Size))
	stream, err := c.bs.Write(ctx)
	if err != nil {
		return c.wrapCtx(ctx, "ByteStream.Write", err)
	}
	buf := make([]byte, min(int64(c.opts.ChunkSize), b.Digest.Size))
	var off int64
	for off < b.Digest.Size {
		n := int(min(int64(len(buf)), b.Digest.Size-off))
		if _, err := b.Src.ReadAt(buf[:n], off); err != nil {
			stream.CloseSend()
			return fmt.Errorf("reading blob %s at %d for upload: %w", b.Digest.Hash[:12], off, err)
		}
		req := &bspb.WriteRequest{WriteOffset: off, Data: buf[:n], FinishWrite: off+int64(n) == b.Digest.Size}
		if off == 0 {
			req.ResourceName = name
		}
		if err := stream.Send(req); err != nil {
			if errors.Is(err, io.EOF) {
				break // the server ended the stream early: CloseAndRecv says why (or that it had the blob)
			}
			return c.wrapCtx(ctx, "ByteStream.Write", err)
		}
		off += int64(n)
		progress()
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return c.wrapCtx(ctx, "ByteStream.Write", err)
	}
	// A server that already had the blob may stop early and report its size.
	if got := resp.GetCommittedSize(); got != b.Digest.Size && off == b.Digest.Size {
		return fmt.Errorf("remote %s: ByteStream.Write of %s: the server committed %d of %d bytes", c.target, b.Digest.Hash[:12], got, b.Digest.Size)
	}
	return nil
}

// wrapCtx prefers the stall cause to gRPC's "context canceled".
func (c *Client) wrapCtx(ctx context.Context, call string, err error) error {
	if cause := context.Cause(ctx); cause != nil && errors.Is(cause, ErrUnavailable) {
		return fmt.Errorf("remote %s: %s: %w", c.target, call, cause)
	}
	return c.wrap(call, err)
}

// DigestMismatchError says what a downloaded blob hashed to instead.
type DigestMismatchError struct {
	Target string
	Want   Digest
	Got    Digest
}

func (e *DigestMismatchError) Error() string {
	return fmt.Sprintf("remote %s: blob %s: the server sent %d bytes hashing to %s", e.Target, e.Want, e.Got.Size, e.Got.Hash)
}

func (e *DigestMismatchError) Unwrap() error { return ErrDigestMismatch }

// Download reads a blob into a new memfd segment named name, with pwrite as
// the chunks arrive (hashing them on the way), then write-seals it. Bytes
// that do not hash to d give an error wrapping ErrDigestMismatch and no
// segment.
func (c *Client) Download(ctx context.Context, d Digest, name string) (*shm.Segment, error) {
	seg, err := shm.Create(name, d.Size)
	if err != nil {
		return nil, err
	}
	err = c.DownloadTo(ctx, d, seg)
	if err == nil {
		err = seg.SealWrite()
	}
	if err != nil {
		seg.Close()
		return nil, err
	}
	return seg, nil
}

// DownloadTo writes a blob into an existing segment of exactly its size
// (one the caller allocated, e.g. a stage's pre-allocated output) with
// pwrite, checking the SHA-256 as Download does. The caller seals it; after
// an error the segment holds partial bytes and must not be used.
func (c *Client) DownloadTo(ctx context.Context, d Digest, seg *shm.Segment) error {
	if seg.Size() != d.Size {
		return fmt.Errorf("remote %s: blob %s is %d bytes, segment %q has %d", c.target, d.Hash[:12], d.Size, seg.Name(), seg.Size())
	}
	return seg.Use(func(fd int) error {
		return c.read(ctx, d, func(p []byte, off int64) error {
			for len(p) > 0 {
				n, err := unix.Pwrite(fd, p, off)
				if err == unix.EINTR {
					continue
				}
				if err != nil {
					return fmt.Errorf("writing segment %q: %w", seg.Name(), err)
				}
				p, off = p[n:], off+int64(n)
			}
			return nil
		})
	})
}

// ReadBytes reads a small blob into memory, verified like Download.
func (c *Client) ReadBytes(ctx context.Context, d Digest) ([]byte, error) {
	if d.Size > 64<<20 {
		return nil, fmt.Errorf("remote %s: blob %s is %d bytes, too large to read into memory", c.target, d.Hash[:12], d.Size)
	}
	buf := make([]byte, d.Size)
	err := c.read(ctx, d, func(p []byte, off int64) error { copy(buf[off:], p); return nil })
	if err != nil {
		return nil, err
	}
	return buf, nil
}

// read streams a blob through sink, checking its length and SHA-256.
func (c *Client) read(ctx context.Context, d Digest, sink func(p []byte, off int64) error) error {
	h := sha256.New()
	var off int64
	if d.Size > 0 {
		ctx, progress, done := c.watch(ctx)
		defer done()
		stream, err := c.bs.Read(ctx, &bspb.ReadRequest{ResourceName: c.resource("blobs", d.Hash, fmt.Sprint(d.Size))})
		if err != nil {
			return c.wrapCtx(ctx, "ByteStream.Read", err)
		}
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				if status.Code(err) == codes.NotFound {
					return fmt.Errorf("remote %s: blob %s: %w", c.target, d, ErrNotFound)
				}
				return c.wrapCtx(ctx, "ByteStream.Read", err)
			}
			p := resp.GetData()
			if off+int64(len(p)) > d.Size {
				c.corrupt.Store(d, true)
				return &DigestMismatchError{Target: c.target, Want: d, Got: Digest{Hash: "(longer than announced)", Size: off + int64(len(p))}}
			}
			h.Write(p)
			if err := sink(p, off); err != nil {
				return err
			}
			off += int64(len(p))
			progress()
		}
	}
	got := Digest{Hash: hex.EncodeToString(h.Sum(nil)), Size: off}
	if got != d {
		c.corrupt.Store(d, true)
		return &DigestMismatchError{Target: c.target, Want: d, Got: got}
	}
	return nil
}

// ErrNotFound marks a blob the server does not hold (evicted, or never
// uploaded).
var ErrNotFound = errors.New("remote blob not found")
