// Package pluginmgr finds plugin executables, launches them through
// go-plugin with a private socket directory and an fd channel each, asks
// them what stages they offer, and stops every one of them on every exit
// path.
package pluginmgr

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// EnvPluginPath lists extra plugin directories, separated by ':'.
const EnvPluginPath = "PIPEHOST_PLUGIN_PATH"

// SearchDirs returns the plugin directories in search order: the explicit
// ones (--plugin-dir), then $PIPEHOST_PLUGIN_PATH, then plugins/ beside the
// pipehost binary. Missing default directories are skipped; a missing
// explicit one is an error.
func SearchDirs(explicit []string) ([]string, error) {
	var dirs []string
	for _, d := range explicit {
		st, err := os.Stat(d)
		if err != nil {
			return nil, fmt.Errorf("plugin directory %s: %w", d, err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("plugin directory %s: not a directory", d)
		}
		dirs = append(dirs, d)
	}
	for _, d := range filepath.SplitList(os.Getenv(EnvPluginPath)) {
		if d != "" {
			dirs = append(dirs, d)
		}
	}
	if exe, err := os.Executable(); err == nil {
		if real, err := filepath.EvalSymlinks(exe); err == nil {
			exe = real
		}
		dirs = append(dirs, filepath.Join(filepath.Dir(exe), "plugins"))
	}
	return dirs, nil
}

// Discover lists the executable regular files in dirs (not recursive),
// sorted within each directory; the same file reached twice is listed once.
func Discover(dirs []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, d := range dirs {
		entries, err := os.ReadDir(d)
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			return nil, fmt.Errorf("reading plugin directory %s: %w", d, err)
		}
		var found []string
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				continue
			}
			p := filepath.Join(d, e.Name())
			st, err := os.Stat(p)
			if err != nil || !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
				continue
			}
			abs, err := filepath.Abs(p)
			if err != nil {
				continue
			}
			if real, err := filepath.EvalSymlinks(abs); err == nil {
				abs = real
			}
			if !seen[abs] {
				seen[abs] = true
				found = append(found, abs)
			}
		}
		sort.Strings(found)
		out = append(out, found...)
	}
	return out, nil
}
