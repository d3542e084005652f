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
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

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

// FreePort is a TCP port on 127.0.0.1 nothing listens on just now.
func FreePort(t testing.TB) string { return freePort(t) }

// BazelRemote starts a private bazel-remote for one test (so the test may
// stop or freeze it) and returns its endpoint and process. It is killed at
// the end of the test.
func BazelRemote(t testing.TB) (string, *os.Process) {
	t.Helper()
	return BazelRemoteAt(t, t.TempDir(), freePort(t))
}

// BazelRemoteAt is BazelRemote on a given storage directory and gRPC port,
// so a test can restart a server on the blobs a killed one left.
func BazelRemoteAt(t testing.TB, dir, grpcPort string) (string, *os.Process) {
	t.Helper()
	Servers(t) // skips (or fails) like the shared servers when they cannot be built
	bin := filepath.Join(testbin.ModuleRoot(), ".tools/remote/bin/bazel-remote")
	if b := os.Getenv("PIPEHOST_REMOTE_BIN"); b != "" {
		bin = filepath.Join(b, "bazel-remote")
	}
	httpPort := freePort(t)
	cmd := exec.Command(bin, "--dir", dir, "--max_size", "1",
		"--grpc_address", "127.0.0.1:"+grpcPort, "--http_address", "127.0.0.1:"+httpPort)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT) // in case the test froze it
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+grpcPort, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bazel-remote on 127.0.0.1:%s did not come up:\n%s", grpcPort, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "grpc://127.0.0.1:" + grpcPort, cmd.Process
}

func freePort(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}
