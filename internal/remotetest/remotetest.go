// Package remotetest gives tests the real Remote Execution API servers of
// scripts/remote-servers.sh: a bazel-remote cache and a local Buildbarn
// cluster. When the environment names running servers (scripts/test.sh
// starts them once for the whole suite) those are used; otherwise Main
// builds (scripts/build-remote-servers.sh, once per machine) and starts a
// private set for the package, and stops it by pid afterwards.
package remotetest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pipehost/pipehost/internal/testbin"
)

// Env names the servers.
type Env struct {
	// Cache is bazel-remote's gRPC endpoint (grpc://127.0.0.1:P).
	Cache string
	// Executor is Buildbarn's front end: CAS, action cache, ByteStream and
	// Execute (grpc://127.0.0.1:P).
	Executor string
	// Platform is the exact platform the Buildbarn worker announces.
	Platform map[string]string
	// BazelRemoteDir is bazel-remote's storage directory (uncompressed
	// blobs), when known.
	BazelRemoteDir string
}

var (
	env  *Env
	skip string
)

// Main runs a package's tests with servers available to Servers.
func Main(m *testing.M) {
	stop := setup()
	code := m.Run()
	stop()
	testbin.Cleanup()
	os.Exit(code)
}

func setup() func() {
	if e := fromEnviron(os.Getenv); e != nil {
		env = e
		return func() {}
	}
	root := testbin.ModuleRoot()
	build := exec.Command(filepath.Join(root, "scripts/build-remote-servers.sh"))
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		skip = fmt.Sprintf("the REAPI servers could not be built (scripts/build-remote-servers.sh: %v)", err)
		return func() {}
	}
	state, err := os.MkdirTemp("", "pipehost-remote-")
	if err != nil {
		skip = err.Error()
		return func() {}
	}
	os.Remove(state) // the script makes it, and refuses a directory it did not make
	script := filepath.Join(root, "scripts/remote-servers.sh")
	stop := func() {
		cmd := exec.Command(script, "stop", state)
		cmd.Stderr = os.Stderr
		_ = cmd.Run()
	}
	var out bytes.Buffer
	start := exec.Command(script, "start", state)
	start.Stdout, start.Stderr = &out, os.Stderr
	if err := start.Run(); err != nil {
		stop()
		// Built but not startable is a failure, not a reason to skip.
		fmt.Fprintf(os.Stderr, "remotetest: %s start: %v\n", script, err)
		os.Exit(1)
	}
	vars := map[string]string{}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			vars[k] = v
		}
	}
	env = fromEnviron(func(k string) string { return vars[k] })
	if env == nil {
		stop()
		fmt.Fprintf(os.Stderr, "remotetest: %s start printed no endpoints:\n%s", script, out.String())
		os.Exit(1)
	}
	return stop
}

func fromEnviron(get func(string) string) *Env {
	e := &Env{Cache: get("PIPEHOST_TEST_REMOTE_CACHE"), Executor: get("PIPEHOST_TEST_REMOTE_EXECUTOR"), Platform: map[string]string{},
		BazelRemoteDir: get("PIPEHOST_TEST_BAZEL_REMOTE_DIR")}
	if e.Cache == "" || e.Executor == "" {
		return nil
	}
	for _, kv := range strings.Split(get("PIPEHOST_TEST_REMOTE_PLATFORM"), ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			e.Platform[k] = v
		}
	}
	return e
}

// Servers returns the servers, or skips the test when they could not be
// built here. With PIPEHOST_REQUIRE_REMOTE=1 (make test) that is a failure.
func Servers(t testing.TB) *Env {
	t.Helper()
	if env == nil {
		if skip == "" {
			skip = "remotetest.Main did not run in this package's TestMain"
		}
		if os.Getenv("PIPEHOST_REQUIRE_REMOTE") == "1" {
			t.Fatal(skip)
		}
		t.Skip(skip)
	}
	return env
}
