package runner_test

import (
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/runner"
)

// Real plugin processes: a stage that fails in its own code (a panic the
// SDK recovers) arrives with the SDK's Aborted code and its process alive;
// a process that dies mid-stage (exit, SIGSEGV) is classified by its exit
// state, whatever gRPC's transport error said.
func TestFailureCodesFromRealPlugins(t *testing.T) {
	cases := []struct {
		kind string
		code codes.Code
		died bool
	}{
		{"bad-go.panic", codes.Aborted, false},
		{"bad-go.exit", codes.Unknown, true},
		{"bad-go.segv", codes.Unknown, true},
	}
	for _, tc := range cases {
		t.Run(tc.kind, func(t *testing.T) {
			_, res := run(t, grid+`
[stages.bad]
kind = "`+tc.kind+`"
`, runner.Options{Engine: engine.Options{KeepGoing: true}})
			var r *engine.StageResult
			for _, s := range res.Stages {
				if s.Name == "bad" {
					r = s
				}
			}
			if r == nil || r.Status != engine.StatusFailed {
				t.Fatalf("stage bad: %+v, want failed", r)
			}
			if got := status.Code(r.Err); got != tc.code {
				t.Errorf("code %v, want %v (%v)", got, tc.code, r.Err)
			}
			if got := errors.Is(r.Err, engine.ErrProcessDied); got != tc.died {
				t.Errorf("process died: %v, want %v (%v)", got, tc.died, r.Err)
			}
		})
	}
}
