package pluginmgr_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pipehost/pipehost/host/pluginmgr"
	"github.com/pipehost/pipehost/internal/testbin"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// launchProbe starts the Go probe plugin, stopped at cleanup.
func launchProbe(t *testing.T) *pluginmgr.Plugin {
	t.Helper()
	return launchAt(t, testbin.Copy(t, testbin.Build(t, "testplugins/go"), "probe")+"/probe")
}

// launchAt starts the plugin at path under a manager of its own, stopped at
// cleanup.
func launchAt(t *testing.T, path string) *pluginmgr.Plugin {
	t.Helper()
	m, err := pluginmgr.New(pluginmgr.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	p, err := m.Launch(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// cancelledThenNext runs slow, which must outlast a 300 ms deadline: it
// must end DeadlineExceeded soon after it, and the plugin, having cancelled
// it, must then run next to its result.
func cancelledThenNext(t *testing.T, p *pluginmgr.Plugin, slow, next *pb.RunRequest) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	r, err := p.RunOnChannel(ctx, slow)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := drain(t, r); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("ended with %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the host waited %v past its deadline", d)
	}
	r, err = p.RunOnChannel(context.Background(), next)
	if err != nil {
		t.Fatal(err)
	}
	if evs, err := drain(t, r); err != nil || len(evs) != 1 || evs[0].GetResult() == nil {
		t.Fatalf("next run: %v %v", evs, err)
	}
}

// drain reads a run to its end: its events, and the error that ended it
// (nil for a successful END).
func drain(t *testing.T, r pluginmgr.RunEvents) ([]*pb.RunEvent, error) {
	t.Helper()
	var evs []*pb.RunEvent
	for {
		ev, err := r.Recv()
		if errors.Is(err, io.EOF) {
			return evs, nil
		}
		if err != nil {
			return evs, err
		}
		evs = append(evs, ev)
	}
}

func TestChannelRunCarriesEventsResultAndEnd(t *testing.T) {
	p := launchProbe(t)
	if !p.ChannelRuns {
		t.Fatal("the Go SDK does not offer runs on the fd channel")
	}
	// An event of several frames (a 100 KB log line), then the result.
	r, err := p.RunOnChannel(context.Background(), &pb.RunRequest{Stage: "s", Kind: "probe.say",
		Params: map[string]*pb.Value{"bytes": {Kind: &pb.Value_IntValue{IntValue: 100_000}}}})
	if err != nil {
		t.Fatal(err)
	}
	evs, err := drain(t, r)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[1].GetResult() == nil {
		t.Fatalf("events %v, want a log line then the result", evs)
	}
	if line := evs[0].GetLog().GetMessage(); len(line) != 100_006 || !strings.HasSuffix(line, "x100000") {
		t.Errorf("log line of %d bytes ending %q", len(line), line[max(0, len(line)-10):])
	}
	// Spans and progress come in the order the stage sent them.
	r, err = p.RunOnChannel(context.Background(), &pb.RunRequest{Stage: "s", Kind: "probe.spans"})
	if err != nil {
		t.Fatal(err)
	}
	evs, err = drain(t, r)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, ev := range evs {
		switch {
		case ev.GetSpan() != nil:
			kinds = append(kinds, "span:"+ev.GetSpan().GetName())
		case ev.GetProgress() != nil:
			kinds = append(kinds, "progress")
		case ev.GetLog() != nil:
			kinds = append(kinds, "log")
		case ev.GetResult() != nil:
			kinds = append(kinds, "result")
		}
	}
	if got, want := strings.Join(kinds, " "), "span:inner span:outer progress log span:tail result"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
}

func TestChannelRunFailuresKeepTheirStatus(t *testing.T) {
	p := launchProbe(t)
	for _, c := range []struct {
		req  *pb.RunRequest
		code codes.Code
		want string
	}{
		{&pb.RunRequest{Stage: "s", Kind: "probe.nosuch"}, codes.NotFound, `no stage kind "probe.nosuch"`},
		{&pb.RunRequest{Stage: "s", Kind: "probe.say", Params: map[string]*pb.Value{"bytes": {Kind: &pb.Value_StringValue{StringValue: "many"}}}},
			codes.InvalidArgument, "bytes"},
	} {
		r, err := p.RunOnChannel(context.Background(), c.req)
		if err != nil {
			t.Fatal(err)
		}
		_, err = drain(t, r)
		if status.Code(err) != c.code || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %v saying %q", c.req.Kind, err, c.code, c.want)
		}
	}
}

func TestChannelRunIsCancelledAndThePluginGoesOn(t *testing.T) {
	p := launchProbe(t)
	wait := map[string]*pb.Value{"wait": {Kind: &pb.Value_BoolValue{BoolValue: true}}}
	cancelledThenNext(t, p, &pb.RunRequest{Stage: "s", Kind: "probe.say", Params: wait}, &pb.RunRequest{Stage: "t", Kind: "probe.noop"})
}

func TestChannelRunFailsWhenThePluginDies(t *testing.T) {
	p := launchProbe(t)
	wait := map[string]*pb.Value{"wait": {Kind: &pb.Value_BoolValue{BoolValue: true}}}
	r, err := p.RunOnChannel(context.Background(), &pb.RunRequest{Stage: "s", Kind: "probe.say", Params: wait})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := r.Recv(); err != nil || ev.GetLog() == nil {
		t.Fatalf("first event %v %v", ev, err)
	}
	p.Stop()
	_, err = drain(t, r)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "fd channel ended") {
		t.Fatalf("ended with %v, want Unavailable", err)
	}
}

func TestRunOverGRPCTurnsChannelRunsOff(t *testing.T) {
	t.Setenv(pluginmgr.EnvRunOverGRPC, "1")
	if p := launchProbe(t); p.ChannelRuns {
		t.Errorf("%s set, and the plugin still runs on the channel", pluginmgr.EnvRunOverGRPC)
	}
}

// launchNative starts a test plugin of the C++ or Rust SDK (rel under
// bin/, built by make build-cpp or build-rust), stopped at cleanup.
func launchNative(t *testing.T, lang, rel string) *pluginmgr.Plugin {
	t.Helper()
	return launchAt(t, nativeBinary(t, lang, rel))
}

// The Rust SDK takes runs on the fd channel: a run ends with its result, a
// missing kind with NotFound, and a run the host gives up on is cancelled
// in the plugin, which takes the next one.
func TestChannelRunsOfARustPlugin(t *testing.T) {
	p := launchNative(t, "rust", "testplugins/misbehave-rust")
	if !p.ChannelRuns {
		t.Fatal("the Rust SDK does not offer runs on the fd channel")
	}
	r, err := p.RunOnChannel(context.Background(), &pb.RunRequest{Stage: "s", Kind: "probe-rust.noop"})
	if err != nil {
		t.Fatal(err)
	}
	evs, err := drain(t, r)
	if err != nil || len(evs) != 1 || evs[0].GetResult().GetStats().GetEndNs() == 0 {
		t.Fatalf("events %v, error %v; want one result with stats", evs, err)
	}
	r, err = p.RunOnChannel(context.Background(), &pb.RunRequest{Stage: "s", Kind: "probe-rust.nosuch"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := drain(t, r); status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), `no stage kind "probe-rust.nosuch"`) {
		t.Errorf("a missing kind ended with %v, want NotFound", err)
	}
	cancelledThenNext(t, p, &pb.RunRequest{Stage: "s", Kind: "probe-rust.wait"}, &pb.RunRequest{Stage: "t", Kind: "probe-rust.noop"})
	if p.Exited() {
		t.Fatalf("the plugin exited: %s", strings.Join(p.Stderr.Lines(), "\n"))
	}
}

// The C++ SDK takes runs on the fd channel: events in order, a dynamic
// output's ADOPT before the Result that names it, the failures' codes, and
// a cancelled run that leaves the plugin taking the next one.
func TestCppChannelRuns(t *testing.T) {
	p := launchNative(t, "cpp", "testplugins/minimal-cpp")
	if !p.ChannelRuns {
		t.Fatal("the C++ SDK does not offer runs on the fd channel")
	}
	r, err := p.RunOnChannel(context.Background(), &pb.RunRequest{RunId: "r", Stage: "s", Kind: "minimal-cpp.stdout"})
	if err != nil {
		t.Fatal(err)
	}
	evs, err := drain(t, r)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, ev := range evs {
		switch {
		case ev.GetSpan() != nil:
			kinds = append(kinds, "span:"+ev.GetSpan().GetName())
		case ev.GetLog() != nil:
			kinds = append(kinds, "log")
		case ev.GetResult() != nil:
			kinds = append(kinds, "result")
		}
	}
	if got, want := strings.Join(kinds, " "), "log span:inner span:outer result"; got != want {
		t.Fatalf("events %q, want %q", got, want)
	}
	dyn := evs[len(evs)-1].GetResult().GetDynamicOutputs()
	if len(dyn) != 1 || dyn[0].GetPort() != "text" {
		t.Fatalf("dynamic outputs %v, want the blob \"text\"", dyn)
	}
	// The ADOPT came first on the same socket: its fd is there already.
	m, fd, ok := p.Mailbox.TryTake(dyn[0].GetFdToken())
	if !ok {
		t.Fatal("the Result came before the ADOPT of its dynamic output")
	}
	unix.Close(fd)
	if m.Size != dyn[0].GetHandle().GetSegmentSize() {
		t.Errorf("ADOPT of %d bytes, the handle says %d", m.Size, dyn[0].GetHandle().GetSegmentSize())
	}

	for _, c := range []struct {
		req  *pb.RunRequest
		code codes.Code
		want string
	}{
		{&pb.RunRequest{Stage: "s", Kind: "minimal-cpp.nosuch"}, codes.NotFound, `no stage kind "minimal-cpp.nosuch"`},
		{&pb.RunRequest{Stage: "s", Kind: "minimal-cpp.sleep", Params: map[string]*pb.Value{"ms": {Kind: &pb.Value_StringValue{StringValue: "long"}}}},
			codes.InvalidArgument, "ms"},
	} {
		r, err := p.RunOnChannel(context.Background(), c.req)
		if err != nil {
			t.Fatal(err)
		}
		_, err = drain(t, r)
		if status.Code(err) != c.code || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %v saying %q", c.req.Kind, err, c.code, c.want)
		}
	}

	cancelledThenNext(t, p, &pb.RunRequest{Stage: "s", Kind: "minimal-cpp.sleep",
		Params: map[string]*pb.Value{"ms": {Kind: &pb.Value_IntValue{IntValue: 60_000}}}},
		&pb.RunRequest{Stage: "t", Kind: "minimal-cpp.noop"})
}

// With PIPEHOST_RUN_OVER_GRPC set the host runs the native SDKs' stages over
// their gRPC Run call, which still works.
func TestNativeRunsOverGRPCWhenAsked(t *testing.T) {
	t.Setenv(pluginmgr.EnvRunOverGRPC, "1")
	for _, c := range []struct{ lang, plugin, kind string }{
		{"cpp", "testplugins/minimal-cpp", "minimal-cpp.noop"},
		{"rust", "testplugins/misbehave-rust", "probe-rust.noop"},
	} {
		t.Run(c.lang, func(t *testing.T) {
			p := launchNative(t, c.lang, c.plugin)
			if p.ChannelRuns {
				t.Fatalf("%s set, and the plugin still runs on the channel", pluginmgr.EnvRunOverGRPC)
			}
			s, err := p.Run(context.Background(), &pb.RunRequest{RunId: "r", Stage: "s", Kind: c.kind})
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := s.(*pluginmgr.ChannelRun); ok {
				t.Fatal("the run went on the fd channel")
			}
			evs, err := drain(t, s)
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) != 1 || evs[0].GetResult() == nil {
				t.Fatalf("events %v, want the result", evs)
			}
		})
	}
}
