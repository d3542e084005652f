// Package remote speaks the Remote Execution API (REAPI v2) to a shared
// cache or build farm: bazel-remote, Buildbarn, BuildBuddy, NativeLink and
// the like. Blobs are named by the same SHA-256 + size digests as the local
// stage cache (host/cache), so one digest means the same bytes in both.
//
// Uploads stream from a file or memfd with pread, and downloads land in a
// new memfd written with pwrite and then write-sealed: no blob is ever held
// whole in Go memory. Every downloaded blob is hashed as it arrives and
// rejected (ErrDigestMismatch) when its bytes do not match its digest.
package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// ErrUnavailable marks a server that cannot be reached or did not answer in
// time. A cache caller goes on without the remote cache when it sees it.
var ErrUnavailable = errors.New("remote server unavailable")

// ErrDigestMismatch marks downloaded bytes that do not hash to the digest
// they were requested by; the blob must not be used.
var ErrDigestMismatch = errors.New("remote blob does not match its digest")

// ErrUnsupported marks a server lacking something pipehost needs (SHA-256
// digests, an action cache, remote execution).
var ErrUnsupported = errors.New("remote server lacks a required capability")

// Options configure a Client. Zero values take the defaults.
type Options struct {
	// Instance is the REAPI instance name ("" for most servers).
	Instance string
	// ConnectTimeout bounds the first contact (GetCapabilities); 5 s.
	ConnectTimeout time.Duration
	// CallTimeout bounds each unary call (FindMissingBlobs, action cache,
	// batch uploads); 30 s.
	CallTimeout time.Duration
	// StallTimeout fails a ByteStream transfer or an Execute stream that
	// makes no progress for this long; 30 s for transfers. Execute streams
	// wait for the action itself, so they use ExecuteTimeout instead.
	StallTimeout time.Duration
	// ExecuteTimeout bounds a whole remote execution; 1 h.
	ExecuteTimeout time.Duration
	// ChunkSize is the ByteStream message size; 1 MiB.
	ChunkSize int
}

func (o *Options) defaults() {
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 5 * time.Second
	}
	if o.CallTimeout == 0 {
		o.CallTimeout = 30 * time.Second
	}
	if o.StallTimeout == 0 {
		o.StallTimeout = 30 * time.Second
	}
	if o.ExecuteTimeout == 0 {
		o.ExecuteTimeout = time.Hour
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = 1 << 20
	}
}

// Client is a connection to one REAPI endpoint. Safe for concurrent use.
type Client struct {
	target string
	opts   Options
	conn   *grpc.ClientConn
	cas    repb.ContentAddressableStorageClient
	ac     repb.ActionCacheClient
	exec   repb.ExecutionClient
	bs     bspb.ByteStreamClient

	// maxBatch is the largest total a BatchUpdateBlobs request may carry.
	maxBatch int64
	// canUpdateAC: the server lets clients write action results.
	canUpdateAC bool
	// canExecute: the server announced an execution service for SHA-256.
	canExecute bool
	// corrupt holds the digests whose download did not match (Digest →
	// true): Upload sends them again though the server says it has them.
	corrupt sync.Map
}

// Dial connects to target ("grpc://HOST:PORT" or "HOST:PORT") and checks its
// capabilities: it must accept SHA-256 digests. The error wraps
// ErrUnavailable when the server is down or too slow to answer.
func Dial(ctx context.Context, target string, opts Options) (*Client, error) {
	opts.defaults()
	addr, err := parseTarget(target)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return nil, fmt.Errorf("remote %s: %w", target, err)
	}
	c := &Client{
		target: target, opts: opts, conn: conn,
		cas:  repb.NewContentAddressableStorageClient(conn),
		ac:   repb.NewActionCacheClient(conn),
		exec: repb.NewExecutionClient(conn),
		bs:   bspb.NewByteStreamClient(conn),
	}
	cctx, cancel := context.WithTimeout(ctx, opts.ConnectTimeout)
	defer cancel()
	caps, err := repb.NewCapabilitiesClient(conn).GetCapabilities(cctx,
		&repb.GetCapabilitiesRequest{InstanceName: opts.Instance}, grpc.WaitForReady(true))
	if err != nil {
		conn.Close()
		return nil, c.wrap("GetCapabilities", err)
	}
	if err := c.useCapabilities(caps); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

func parseTarget(target string) (string, error) {
	addr := target
	for _, p := range []string{"grpc://", "dns:///"} {
		addr = strings.TrimPrefix(addr, p)
	}
	if strings.Contains(addr, "://") {
		return "", fmt.Errorf("remote %s: only grpc:// (plaintext gRPC) endpoints are supported", target)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", fmt.Errorf("remote %s: want grpc://HOST:PORT: %v", target, err)
	}
	return addr, nil
}

func (c *Client) useCapabilities(caps *repb.ServerCapabilities) error {
	cc := caps.GetCacheCapabilities()
	sha := false
	for _, f := range cc.GetDigestFunctions() {
		if f == repb.DigestFunction_SHA256 {
			sha = true
		}
	}
	ec := caps.GetExecutionCapabilities()
	if ec.GetExecEnabled() && (ec.GetDigestFunction() == repb.DigestFunction_SHA256 || hasSHA256(ec.GetDigestFunctions())) {
		c.canExecute = true
		if cc == nil {
			sha = true // an executor that announces no cache of its own
		}
	}
	if !sha {
		return fmt.Errorf("remote %s: %w: SHA-256 digests are not among %v", c.target, ErrUnsupported, cc.GetDigestFunctions())
	}
	c.maxBatch = cc.GetMaxBatchTotalSizeBytes()
	if c.maxBatch <= 0 || c.maxBatch > 4<<20 {
		// 0 means "no limit"; gRPC's default message limit (4 MiB) still holds.
		c.maxBatch = 4 << 20
	}
	// Leave room for the request's own framing.
	c.maxBatch -= 64 << 10
	c.canUpdateAC = cc.GetActionCacheUpdateCapabilities().GetUpdateEnabled()
	return nil
}

func hasSHA256(fs []repb.DigestFunction_Value) bool {
	for _, f := range fs {
		if f == repb.DigestFunction_SHA256 {
			return true
		}
	}
	return false
}

// Target is the endpoint given to Dial.
func (c *Client) Target() string { return c.target }

// CanExecute reports whether the server runs actions (an Execution service
// for SHA-256 digests).
func (c *Client) CanExecute() bool { return c.canExecute }

// CanUpdateActionCache reports whether the server accepts action results
// from clients.
func (c *Client) CanUpdateActionCache() bool { return c.canUpdateAC }

// Close ends the connection.
func (c *Client) Close() error { return c.conn.Close() }

// wrap names the server and the call in an error, and marks a server that
// is down or slow with ErrUnavailable.
func (c *Client) wrap(call string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrDigestMismatch) || errors.Is(err, ErrUnavailable) {
		return err
	}
	st, _ := status.FromError(err)
	switch {
	case errors.Is(err, context.DeadlineExceeded), st.Code() == codes.DeadlineExceeded:
		return fmt.Errorf("remote %s: %s: %w: no answer in time", c.target, call, ErrUnavailable)
	case st.Code() == codes.Unavailable:
		return fmt.Errorf("remote %s: %s: %w: %s", c.target, call, ErrUnavailable, st.Message())
	case st.Code() == codes.Unimplemented:
		return fmt.Errorf("remote %s: %s: %w: %s", c.target, call, ErrUnsupported, st.Message())
	}
	return fmt.Errorf("remote %s: %s: %s", c.target, call, describe(err))
}

func describe(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Code().String() + ": " + st.Message()
	}
	return err.Error()
}

func (c *Client) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.opts.CallTimeout)
}

// Digest conversions.

func toPB(d Digest) *repb.Digest { return &repb.Digest{Hash: d.Hash, SizeBytes: d.Size} }

func fromPB(d *repb.Digest) Digest { return Digest{Hash: d.GetHash(), Size: d.GetSizeBytes()} }

// FindMissing returns the digests the server does not hold.
func (c *Client) FindMissing(ctx context.Context, digests []Digest) ([]Digest, error) {
	if len(digests) == 0 {
		return nil, nil
	}
	req := &repb.FindMissingBlobsRequest{InstanceName: c.opts.Instance, DigestFunction: repb.DigestFunction_SHA256}
	seen := map[Digest]bool{}
	for _, d := range digests {
		if !seen[d] {
			seen[d] = true
			req.BlobDigests = append(req.BlobDigests, toPB(d))
		}
	}
	cctx, cancel := c.callCtx(ctx)
	defer cancel()
	resp, err := c.cas.FindMissingBlobs(cctx, req)
	if err != nil {
		return nil, c.wrap("FindMissingBlobs", err)
	}
	missing := make([]Digest, 0, len(resp.GetMissingBlobDigests()))
	for _, d := range resp.GetMissingBlobDigests() {
		missing = append(missing, fromPB(d))
	}
	return missing, nil
}

// GetActionResult returns the cached result of an action, or nil when the
// action cache has none.
func (c *Client) GetActionResult(ctx context.Context, action Digest, inline ...string) (*repb.ActionResult, error) {
	cctx, cancel := c.callCtx(ctx)
	defer cancel()
	ar, err := c.ac.GetActionResult(cctx, &repb.GetActionResultRequest{
		InstanceName: c.opts.Instance, ActionDigest: toPB(action),
		InlineOutputFiles: inline, DigestFunction: repb.DigestFunction_SHA256,
	})
	if status.Code(err) == codes.NotFound {
		return nil, nil
	}
	if err != nil {
		return nil, c.wrap("GetActionResult", err)
	}
	return ar, nil
}

// UpdateActionResult stores the result of an action. Every blob it names
// must be uploaded first: servers may check (bazel-remote does), and a
// result pointing at missing blobs would be a broken cache entry.
func (c *Client) UpdateActionResult(ctx context.Context, action Digest, ar *repb.ActionResult) error {
	cctx, cancel := c.callCtx(ctx)
	defer cancel()
	_, err := c.ac.UpdateActionResult(cctx, &repb.UpdateActionResultRequest{
		InstanceName: c.opts.Instance, ActionDigest: toPB(action), ActionResult: ar,
		DigestFunction: repb.DigestFunction_SHA256,
	})
	return c.wrap("UpdateActionResult", err)
}

// ExecuteError is a remote action that ran (or was attempted) and failed.
type ExecuteError struct {
	Target string
	Action Digest
	Status *status.Status
	// Result holds the exit code and output digests when the command ran.
	Result *repb.ActionResult
	// Message is the server's free-form explanation, if any.
	Message string
}

func (e *ExecuteError) Error() string {
	msg := fmt.Sprintf("remote %s: action %s", e.Target, e.Action.Hash[:12])
	if e.Status != nil && e.Status.Code() != codes.OK {
		msg += ": " + e.Status.Code().String() + ": " + e.Status.Message()
	} else if e.Result != nil {
		msg += fmt.Sprintf(": the command exited with status %d", e.Result.GetExitCode())
	}
	if e.Message != "" {
		msg += " (" + e.Message + ")"
	}
	return msg
}

// Retryable reports whether err is an Execute that failed for the
// executor's own reasons, before the command could run or finish: a worker
// that failed to fetch an input, inputs the server no longer has
// (FAILED_PRECONDITION: preparing the action again uploads them), a worker
// that went away. A command that ran and exited non-zero, or ran out of its
// time, is the stage's own failure and is not retried.
func Retryable(err error) bool {
	var xe *ExecuteError
	if !errors.As(err, &xe) || xe.Status == nil {
		return false
	}
	if xe.Result != nil && xe.Result.GetExitCode() != 0 {
		return false
	}
	switch xe.Status.Code() {
	case codes.Internal, codes.Unavailable, codes.Unknown, codes.Aborted, codes.FailedPrecondition:
		return true
	}
	return false
}

// Attempts bounds how often RunAction sends an action when the executor,
// not the command, failed.
const Attempts = 3

// ActionRun is what RunAction did: the action, its last attempt's result,
// how long the first upload and the last execution took.
type ActionRun struct {
	Action       Digest
	Result       *repb.ActionResult
	Upload, Exec time.Duration
}

// RunAction prepares an action and executes it. When the executor could not
// run the command (Retryable), it prepares the action again, which uploads
// whatever the server lost since, and sends it again, up to Attempts times,
// 0.25 s and 0.5 s apart; retried, when set, is told of each failure that is
// tried again. The last attempt's result and error are returned.
func (c *Client) RunAction(ctx context.Context, spec ActionSpec, retried func(attempt int, err error)) (ActionRun, error) {
	var run ActionRun
	for attempt := 1; ; attempt++ {
		t0 := time.Now()
		d, err := c.PrepareAction(ctx, spec)
		if err != nil {
			return run, fmt.Errorf("uploading the action: %w", err)
		}
		run.Action = d
		t1 := time.Now()
		if attempt == 1 {
			run.Upload = t1.Sub(t0)
		}
		run.Result, err = c.Execute(ctx, d, false)
		run.Exec = time.Since(t1)
		if err == nil || attempt == Attempts || !Retryable(err) || ctx.Err() != nil {
			return run, err
		}
		if retried != nil {
			retried(attempt, err)
		}
		select {
		case <-time.After(time.Duration(attempt) * 250 * time.Millisecond):
		case <-ctx.Done():
			return run, context.Cause(ctx)
		}
	}
}

// Execute runs an action whose Action, Command and input root are already
// in the CAS, and waits for it. The action cache is not consulted unless
// cached is true (servers such as Buildbarn never consult it on Execute;
// the caller does, with GetActionResult). A broken stream is resumed with
// WaitExecution. A command that exits non-zero returns the result together
// with an *ExecuteError.
func (c *Client) Execute(ctx context.Context, action Digest, cached bool) (*repb.ActionResult, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.ExecuteTimeout)
	defer cancel()
	stream, err := c.exec.Execute(ctx, &repb.ExecuteRequest{
		InstanceName: c.opts.Instance, ActionDigest: toPB(action), SkipCacheLookup: !cached,
		DigestFunction: repb.DigestFunction_SHA256,
	})
	if err != nil {
		return nil, c.wrap("Execute", err)
	}
	var name string
	for attempt := 0; ; attempt++ {
		op, err := lastOperation(stream, &name)
		if err == nil && op.GetDone() {
			return c.finish(action, op)
		}
		// The stream broke or ended before the operation did: resume it by
		// name, a few times. Any other error is the answer.
		if errors.Is(err, io.EOF) {
			err = errors.New("the stream ended before the action completed")
		} else if status.Code(err) != codes.Unavailable {
			return nil, c.wrap("Execute", err)
		}
		if name == "" || attempt >= 3 || ctx.Err() != nil {
			return nil, c.wrap("Execute", err)
		}
		stream, err = c.exec.WaitExecution(ctx, &repb.WaitExecutionRequest{Name: name})
		if err != nil {
			return nil, c.wrap("WaitExecution", err)
		}
	}
}

// lastOperation reads operations until the stream ends or one is done.
func lastOperation(stream grpc.ServerStreamingClient[longrunningpb.Operation], name *string) (*longrunningpb.Operation, error) {
	for {
		op, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		if op.GetName() != "" {
			*name = op.GetName()
		}
		if op.GetDone() {
			return op, nil
		}
	}
}

func (c *Client) finish(action Digest, op *longrunningpb.Operation) (*repb.ActionResult, error) {
	if e := op.GetError(); e != nil {
		return nil, &ExecuteError{Target: c.target, Action: action, Status: status.FromProto(e)}
	}
	resp := &repb.ExecuteResponse{}
	if err := op.GetResponse().UnmarshalTo(resp); err != nil {
		return nil, fmt.Errorf("remote %s: action %s: unreadable ExecuteResponse: %w", c.target, action.Hash[:12], err)
	}
	st := status.FromProto(resp.GetStatus())
	if st.Code() != codes.OK || resp.GetResult() == nil || resp.GetResult().GetExitCode() != 0 {
		return resp.GetResult(), &ExecuteError{Target: c.target, Action: action, Status: st, Result: resp.GetResult(), Message: resp.GetMessage()}
	}
	return resp.GetResult(), nil
}
