package runner

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/pluginmgr"
	"github.com/pipehost/pipehost/internal/atomicfile"
)

// LockFileName is the plugin lock file kept beside a pipeline config.
const LockFileName = "pipehost.lock"

// Lock records the SHA-256 of every plugin binary a pipeline uses, by the
// binary's file name, so a run never executes a binary nobody approved: a
// plugin whose bytes changed is refused until the lock is updated
// (`pipehost lock`, or `run --update-lock`).
type Lock struct {
	Path    string
	Plugins map[string]LockedPlugin
}

// LockedPlugin is one approved plugin binary.
type LockedPlugin struct {
	SHA256 string   `toml:"sha256"`
	Kinds  []string `toml:"kinds"`
}

// LockPath is the lock file of a pipeline config.
func LockPath(configPath string) string {
	return filepath.Join(filepath.Dir(configPath), LockFileName)
}

// ReadLock reads a lock file; nil, nil when there is none.
func ReadLock(path string) (*Lock, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	var doc struct {
		Plugins map[string]LockedPlugin `toml:"plugins"`
	}
	if err := toml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w (remove it and run `pipehost lock` to write it again)", path, err)
	}
	for name, p := range doc.Plugins {
		if len(p.SHA256) != 64 {
			return nil, fmt.Errorf("%s: plugin %q has no valid sha256", path, name)
		}
	}
	if doc.Plugins == nil {
		doc.Plugins = map[string]LockedPlugin{}
	}
	return &Lock{Path: path, Plugins: doc.Plugins}, nil
}

// Write writes the lock file atomically, plugins sorted by name.
func (l *Lock) Write() error {
	var b bytes.Buffer
	b.WriteString("# The SHA-256 of every plugin binary this pipeline uses. Written by `pipehost lock`;\n")
	b.WriteString("# keep it beside the pipeline config (and in version control). A run refuses a plugin\n")
	b.WriteString("# whose bytes differ until the lock is updated (`pipehost lock` or `run --update-lock`).\n")
	names := make([]string, 0, len(l.Plugins))
	for n := range l.Plugins {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := l.Plugins[n]
		kinds := slices.Clone(p.Kinds)
		sort.Strings(kinds)
		q := make([]string, len(kinds))
		for i, k := range kinds {
			q[i] = fmt.Sprintf("%q", k)
		}
		fmt.Fprintf(&b, "\n[plugins.%q]\nsha256 = %q\nkinds = [%s]\n", n, p.SHA256, strings.Join(q, ", "))
	}
	return atomicfile.Write(l.Path, b.Bytes())
}

// LockMismatchError says a plugin binary differs from the one approved.
type LockMismatchError struct {
	Lock, Plugin, Path, Want, Got string
}

func (e *LockMismatchError) Error() string {
	return fmt.Sprintf("plugin %s (%s) is not the binary %s approved: its SHA-256 is %s, the lock says %s; "+
		"if the new binary is trusted, run `pipehost lock` or pass --update-lock", e.Plugin, e.Path, e.Lock, e.Got, e.Want)
}

// filterLocked checks every installed binary the lock names against its
// digest, before anything is launched, and keeps only those: a binary the
// lock does not name is never run. It returns the kept paths and the names
// left out.
func filterLocked(lock *Lock, paths []string, digest func(string) (string, error)) ([]string, []string, error) {
	var kept, unlocked []string
	for _, p := range paths {
		name := filepath.Base(p)
		want, ok := lock.Plugins[name]
		if !ok {
			unlocked = append(unlocked, name)
			continue
		}
		got, err := digest(p)
		if err != nil {
			return nil, nil, fmt.Errorf("plugin %s: %w", p, err)
		}
		if got != want.SHA256 {
			return nil, nil, &LockMismatchError{Lock: lock.Path, Plugin: name, Path: p, Want: want.SHA256, Got: got}
		}
		kept = append(kept, p)
	}
	return kept, unlocked, nil
}

// lockOf is the lock for the plugins a plan uses.
func lockOf(path string, p *plan.Plan, reg *pluginmgr.Registry) *Lock {
	l := &Lock{Path: path, Plugins: map[string]LockedPlugin{}}
	for _, n := range p.Nodes {
		e, _ := reg.Entry(n.Kind)
		name := filepath.Base(e.Plugin.Path)
		lp := l.Plugins[name]
		lp.SHA256 = e.Plugin.Digest()
		if !slices.Contains(lp.Kinds, n.Kind) {
			lp.Kinds = append(lp.Kinds, n.Kind)
		}
		l.Plugins[name] = lp
	}
	return l
}

// sameLock reports whether two locks approve the same binaries for the
// same kinds.
func sameLock(a, b *Lock) bool {
	if a == nil || b == nil || len(a.Plugins) != len(b.Plugins) {
		return false
	}
	for n, p := range a.Plugins {
		q, ok := b.Plugins[n]
		if !ok || p.SHA256 != q.SHA256 {
			return false
		}
		x, y := slices.Clone(p.Kinds), slices.Clone(q.Kinds)
		sort.Strings(x)
		sort.Strings(y)
		if !slices.Equal(x, y) {
			return false
		}
	}
	return true
}
