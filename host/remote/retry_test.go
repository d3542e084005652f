package remote_test

import (
	"errors"
	"fmt"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pipehost/pipehost/host/remote"
)

// Only the executor's own failures are tried again: a command that ran and
// failed, or ran out of time, is the stage's answer.
func TestRetryable(t *testing.T) {
	ran := func(code int32) *repb.ActionResult { return &repb.ActionResult{ExitCode: code} }
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"input fetch failed", &remote.ExecuteError{Status: status.New(codes.Internal, `Failed to obtain input file "x": unexpected EOF`)}, true},
		{"inputs missing", &remote.ExecuteError{Status: status.New(codes.FailedPrecondition, "missing blobs")}, true},
		{"worker went away", &remote.ExecuteError{Status: status.New(codes.Unavailable, "worker lost")}, true},
		{"wrapped", fmt.Errorf("stage x: %w", &remote.ExecuteError{Status: status.New(codes.Aborted, "")}), true},
		{"command failed", &remote.ExecuteError{Status: status.New(codes.OK, ""), Result: ran(1)}, false},
		{"command failed, status set", &remote.ExecuteError{Status: status.New(codes.Internal, "x"), Result: ran(2)}, false},
		{"timed out", &remote.ExecuteError{Status: status.New(codes.DeadlineExceeded, "timeout")}, false},
		{"bad action", &remote.ExecuteError{Status: status.New(codes.InvalidArgument, "bad")}, false},
		{"not an execute error", errors.New("connection refused"), false},
	} {
		if got := remote.Retryable(tc.err); got != tc.want {
			t.Errorf("%s: Retryable = %v, want %v", tc.name, got, tc.want)
		}
	}
}
