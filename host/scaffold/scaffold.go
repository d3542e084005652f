// Package scaffold writes a new stage project: `pipehost new stage KIND
// --lang go|rust|cpp|python`. Each language's project is a folder of
// templates embedded from templates/<lang>/; every file is copied keeping
// its relative path, and files whose name ends in .tmpl are rendered with
// text/template (Data below) and lose the suffix. Names may hold template
// actions too, e.g. {{.Ident}}.py.tmpl. A rendered file that starts with
// "#!" is made executable.
package scaffold

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"
)

//go:embed all:templates
var templates embed.FS

// Data is what templates see.
type Data struct {
	// Kind is the stage kind, e.g. "terrain.smooth".
	Kind string
	// Ident is Kind made identifier-safe: "terrain_smooth".
	Ident string
	// Pascal is Kind in PascalCase: "TerrainSmooth".
	Pascal string
	// Dir is the project directory's name, by default Kind with dots and
	// underscores as dashes: "terrain-smooth".
	Dir string
	// Repo is the absolute path of the pipehost checkout, for local-path
	// dependencies on its SDKs.
	Repo string
	// Version is the pipehost version string.
	Version string
	// Plugins is the checkout's built plugins, Repo/bin/plugins.
	Plugins string
}

// kindRE: lowercase words joined by '.', '-' or '_', at least one dot
// (kinds are dotted and globally unique: "terrain.smooth").
var kindRE = regexp.MustCompile(`^[a-z][a-z0-9]*([_-][a-z0-9]+)*(\.[a-z][a-z0-9]*([_-][a-z0-9]+)*)+$`)

// NewData checks kind and fills in the names derived from it. repo must be
// an absolute path.
func NewData(kind, repo, version string) (Data, error) {
	if !kindRE.MatchString(kind) {
		return Data{}, fmt.Errorf("bad stage kind %q: use lowercase dotted words, e.g. terrain.smooth "+
			"(letters, digits, '-' and '_' inside a word, at least one '.')", kind)
	}
	if !filepath.IsAbs(repo) {
		return Data{}, fmt.Errorf("the pipehost checkout path %q is not absolute", repo)
	}
	words := strings.FieldsFunc(kind, func(r rune) bool { return r == '.' || r == '-' || r == '_' })
	var pascal strings.Builder
	for _, w := range words {
		pascal.WriteString(strings.ToUpper(w[:1]) + w[1:])
	}
	return Data{
		Kind:    kind,
		Ident:   strings.Join(words, "_"),
		Pascal:  pascal.String(),
		Dir:     strings.Join(words, "-"),
		Repo:    repo,
		Version: version,
		Plugins: filepath.Join(repo, "bin", "plugins"),
	}, nil
}

// Langs lists the languages with templates in this build, sorted.
func Langs() []string {
	entries, _ := templates.ReadDir("templates")
	var langs []string
	for _, e := range entries {
		if e.IsDir() {
			langs = append(langs, e.Name())
		}
	}
	sort.Strings(langs)
	return langs
}

// File is one file of a generated project.
type File struct {
	Path string // slash-separated, relative to the project
	Data []byte
	Mode fs.FileMode
}

// Render renders lang's templates with d, in memory.
func Render(lang string, d Data) ([]File, error) {
	root := "templates/" + lang
	if _, err := fs.Stat(templates, root); err != nil {
		return nil, fmt.Errorf("unknown language %q: choose one of %s", lang, strings.Join(Langs(), ", "))
	}
	var files []File
	err := fs.WalkDir(templates, root, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		rel := strings.TrimPrefix(p, root+"/")
		raw, err := templates.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.HasSuffix(rel, ".tmpl") {
			rel = strings.TrimSuffix(rel, ".tmpl")
			if raw, err = execute(p, string(raw), d); err != nil {
				return err
			}
		}
		if strings.Contains(rel, "{{") {
			name, err := execute(p+" (its name)", rel, d)
			if err != nil {
				return err
			}
			rel = string(name)
		}
		if rel == "" || path.IsAbs(rel) || strings.HasPrefix(path.Clean(rel), "..") {
			return fmt.Errorf("template %s renders to the path %q, outside the project", p, rel)
		}
		mode := fs.FileMode(0o644)
		if bytes.HasPrefix(raw, []byte("#!")) {
			mode = 0o755
		}
		files = append(files, File{Path: path.Clean(rel), Data: raw, Mode: mode})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no templates for language %q in this build", lang)
	}
	return files, nil
}

func execute(name, text string, d Data) ([]byte, error) {
	t, err := template.New(name).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, d); err != nil {
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	return b.Bytes(), nil
}

// Write renders lang's project with d into dir, which must not exist or be
// empty. The project is written beside dir under a temporary name and
// renamed into place at the end, so a failure leaves nothing behind.
func Write(lang string, d Data, dir string) error {
	files, err := Render(lang, d)
	if err != nil {
		return err
	}
	dir = filepath.Clean(dir)
	empty := false
	if entries, err := os.ReadDir(dir); err == nil {
		if len(entries) > 0 {
			return fmt.Errorf("%s already exists and is not empty: choose another --dir, or remove it", dir)
		}
		empty = true
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", dir, err)
	}
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".new-*")
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	for _, f := range files {
		dst := filepath.Join(tmp, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(dst, f.Data, f.Mode); err != nil {
			return err
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if empty {
		if err := os.Remove(dir); err != nil {
			return fmt.Errorf("%s: %w", dir, err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("moving the project into %s: %w", dir, err)
	}
	done = true
	return nil
}

// FindRepo returns the pipehost checkout a pipehost binary at exe belongs
// to: the directory above its bin/, if it holds the SDKs.
func FindRepo(exe string) (string, error) {
	if real, err := filepath.EvalSymlinks(exe); err == nil {
		exe = real
	}
	exe, err := filepath.Abs(exe)
	if err != nil {
		return "", err
	}
	repo := filepath.Dir(filepath.Dir(exe))
	if err := CheckRepo(repo); err != nil {
		return "", fmt.Errorf("%s is not inside a pipehost checkout's bin/ (%v): pass --repo with the checkout's path", exe, err)
	}
	return repo, nil
}

// CheckRepo checks that repo is a pipehost checkout: its go.mod is the
// pipehost module and the SDKs are there.
func CheckRepo(repo string) error {
	mod, err := os.ReadFile(filepath.Join(repo, "go.mod"))
	if err != nil {
		return fmt.Errorf("no go.mod in %s", repo)
	}
	if !bytes.HasPrefix(mod, []byte("module github.com/pipehost/pipehost\n")) {
		return fmt.Errorf("%s/go.mod is not the pipehost module", repo)
	}
	if st, err := os.Stat(filepath.Join(repo, "sdk")); err != nil || !st.IsDir() {
		return fmt.Errorf("no sdk/ in %s", repo)
	}
	return nil
}
