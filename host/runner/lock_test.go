package runner_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pipehost/pipehost/host/runner"
	"github.com/pipehost/pipehost/internal/testbin"
)

// The lock file pins the plugin binaries a pipeline uses: a binary whose
// bytes change is refused before it is launched, naming the lock file and
// both digests, until `pipehost lock` (UpdateLock) approves it.
func TestPluginLock(t *testing.T) {
	tmp := isolate(t)
	dir := testbin.Copy(t, testbin.Build(t, "testplugins/go"), "source", "transform", "sink", "probe")
	cfg := writeConfig(t, "p.toml", strings.ReplaceAll(cachedPipeline, "%TRACE%", ""))
	open := func(update bool) (*runner.Session, error) {
		return runner.Open(context.Background(), runner.Options{ConfigPath: cfg, PluginDirs: []string{dir},
			PluginCacheDir: filepath.Join(tmp, "cache"), UpdateLock: update})
	}
	// No lock file: nothing is enforced and none is written implicitly.
	sess, err := open(false)
	if err != nil {
		t.Fatal(err)
	}
	sess.Close()
	lockPath := runner.LockPath(cfg)
	if _, err := os.Stat(lockPath); !os.IsNotExist(err) {
		t.Fatalf("a run wrote %s by itself", lockPath)
	}
	// `pipehost lock`: the three plugins the plan uses, not probe.
	sess, err = open(true)
	if err != nil {
		t.Fatal(err)
	}
	sess.Close()
	lock, err := runner.ReadLock(lockPath)
	if err != nil || lock == nil {
		t.Fatalf("lock: %v, %v", lock, err)
	}
	var names []string
	for n, p := range lock.Plugins {
		names = append(names, n)
		if len(p.SHA256) != 64 || len(p.Kinds) == 0 {
			t.Errorf("lock entry %s: %+v", n, p)
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"sink", "source", "transform"}) {
		t.Errorf("locked plugins %v", names)
	}
	sess, err = open(false)
	if err != nil {
		t.Fatalf("a run with a matching lock: %v", err)
	}
	sess.Close()

	// Replace transform's bytes: refused before anything is launched.
	old := lock.Plugins["transform"].SHA256
	f, err := os.OpenFile(filepath.Join(dir, "transform"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("tampered"))
	f.Close()
	_, err = open(false)
	var mismatch *runner.LockMismatchError
	if !errors.As(err, &mismatch) {
		t.Fatalf("a changed plugin was not refused: %v", err)
	}
	wantAll(t, err.Error(), lockPath, "plugin transform", old, mismatch.Got, "pipehost lock", "--update-lock")
	if mismatch.Got == old {
		t.Error("the error names the same digest twice")
	}
	assertNothingLeft(t, dir, tmp)
	// --update-lock approves it.
	sess, err = open(true)
	if err != nil {
		t.Fatal(err)
	}
	sess.Close()
	if l, _ := runner.ReadLock(lockPath); l.Plugins["transform"].SHA256 != mismatch.Got {
		t.Errorf("the lock was not updated: %+v", l.Plugins["transform"])
	}

	// A kind served only by a plugin the lock does not approve: that binary
	// is never run, and the error says why the kind is unknown.
	cfg2 := filepath.Join(filepath.Dir(cfg), "q.toml")
	os.WriteFile(cfg2, []byte(grid+"[stages.e]\nkind = \"probe.env\"\nparams = { path = \"x\" }\n"), 0o644)
	_, err = runner.Open(context.Background(), runner.Options{ConfigPath: cfg2, PluginDirs: []string{dir},
		PluginCacheDir: filepath.Join(tmp, "cache")})
	if err == nil {
		t.Fatal("a plugin missing from the lock was used")
	}
	wantAll(t, err.Error(), "probe.env", "not considered", "probe", "pipehost lock")
	assertNothingLeft(t, dir, tmp)
}

// Plugins see only a scrubbed environment: PATH, HOME, LANG, TMPDIR, what
// pipehost sets, and the variables the config's plugins.env names.
func TestPluginEnvironmentIsScrubbed(t *testing.T) {
	t.Setenv("PIPEHOST_TEST_SECRET", "hunter2")
	t.Setenv("PIPEHOST_TEST_ALLOWED", "yes")
	out := filepath.Join(t.TempDir(), "env.txt")
	_, res := run(t, grid+`
[plugins]
env = ["PIPEHOST_TEST_ALLOWED", "PIPEHOST_TEST_UNSET"]
[stages.e]
kind = "probe.env"
params = { path = "`+out+`" }
`, runner.Options{})
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Split(strings.TrimSpace(string(b)), "\n")
	if !slices.Contains(env, "PIPEHOST_TEST_ALLOWED=yes") {
		t.Errorf("an allowed variable is missing: %v", env)
	}
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "PATH", "HOME", "LANG", "TMPDIR", "PIPEHOST_TEST_ALLOWED", "PIPEHOST_FD_CHANNEL", "PIPEHOST_PLUGIN_COOKIE", "PLUGIN_UNIX_SOCKET_DIR", "GORACE":
		default:
			if !strings.HasPrefix(name, "PLUGIN_") {
				t.Errorf("plugin saw %s", kv)
			}
		}
	}
}
