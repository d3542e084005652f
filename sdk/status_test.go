package sdk

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The code a failed stage ends its Run with: the host tells a stage's own
// failure from a broken connection or an SDK fault by it.
func TestStageStatusCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{errors.New("the erosion diverged"), codes.Aborted, "the erosion diverged"},
		{fmt.Errorf("stage panicked: %v", "nil map"), codes.Aborted, "stage panicked: nil map"},
		{status.Error(codes.InvalidArgument, "radius and width do not go together"), codes.InvalidArgument, "radius and width do not go together"},
		{fmt.Errorf("tile 3: %w", status.Error(codes.FailedPrecondition, "no input")), codes.FailedPrecondition, "tile 3: rpc error: code = FailedPrecondition desc = no input"},
		{fmt.Errorf("waiting: %w", context.Canceled), codes.Canceled, "waiting: context canceled"},
		{context.DeadlineExceeded, codes.DeadlineExceeded, "context deadline exceeded"},
		{status.Error(codes.Unknown, "what"), codes.Aborted, "what"},
	} {
		s := status.Convert(stageStatus(tc.err))
		if s.Code() != tc.code || s.Message() != tc.msg {
			t.Errorf("stageStatus(%v) = %v %q, want %v %q", tc.err, s.Code(), s.Message(), tc.code, tc.msg)
		}
	}
}
