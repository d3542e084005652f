package scaffold

import (
	"bytes"
	"go/format"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNewDataNames(t *testing.T) {
	for _, tc := range []struct{ kind, ident, pascal, dir string }{
		{"terrain.smooth", "terrain_smooth", "TerrainSmooth", "terrain-smooth"},
		{"ref.noise-go", "ref_noise_go", "RefNoiseGo", "ref-noise-go"},
		{"climate.wet_bulb.v2", "climate_wet_bulb_v2", "ClimateWetBulbV2", "climate-wet-bulb-v2"},
	} {
		d, err := NewData(tc.kind, "/src/pipehost", "1.2.3")
		if err != nil {
			t.Fatal(err)
		}
		if d.Kind != tc.kind || d.Ident != tc.ident || d.Pascal != tc.pascal || d.Dir != tc.dir ||
			d.Repo != "/src/pipehost" || d.Plugins != "/src/pipehost/bin/plugins" || d.Version != "1.2.3" {
			t.Errorf("%s: %+v", tc.kind, d)
		}
	}
}

func TestNewDataRefusesBadKinds(t *testing.T) {
	for _, kind := range []string{"", "terrain", "Terrain.smooth", "terrain..smooth", "terrain.", ".smooth",
		"1terrain.smooth", "terrain.2smooth", "terrain/smooth.x", "terrain.smooth-", "terrain smooth.x", "a.b\n"} {
		if _, err := NewData(kind, "/src/pipehost", "1"); err == nil || !strings.Contains(err.Error(), "bad stage kind") {
			t.Errorf("kind %q: error %v", kind, err)
		}
	}
	if _, err := NewData("terrain.smooth", "relative/path", "1"); err == nil {
		t.Error("a relative checkout path was accepted")
	}
}

// TestRenderEveryLanguage renders every language's templates: names lose
// .tmpl and their actions, every project has its pipeline and README, and
// Go sources come out gofmt-clean.
func TestRenderEveryLanguage(t *testing.T) {
	langs := Langs()
	if len(langs) == 0 || !contains(langs, "go") {
		t.Fatalf("languages %v", langs)
	}
	d, err := NewData("terrain.smooth", "/src/pipehost", "1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	for _, lang := range langs {
		files, err := Render(lang, d)
		if err != nil {
			t.Fatalf("%s: %v", lang, err)
		}
		var names []string
		for _, f := range files {
			names = append(names, f.Path)
			if strings.HasSuffix(f.Path, ".tmpl") || strings.Contains(f.Path, "{{") {
				t.Errorf("%s: file %s kept its template name", lang, f.Path)
			}
			if strings.HasSuffix(f.Path, ".go") {
				if src, err := format.Source(f.Data); err != nil || !bytes.Equal(src, f.Data) {
					t.Errorf("%s: %s is not gofmt-clean (%v)", lang, f.Path, err)
				}
			}
		}
		for _, want := range []string{"pipeline.toml", "README.md"} {
			if !contains(names, want) {
				t.Errorf("%s: no %s among %v", lang, want, names)
			}
		}
	}
	files, _ := Render("go", d)
	for _, f := range files {
		switch f.Path {
		case "go.mod":
			if !bytes.Contains(f.Data, []byte("replace github.com/pipehost/pipehost => /src/pipehost\n")) {
				t.Errorf("go.mod:\n%s", f.Data)
			}
		case "pipeline.toml":
			for _, want := range []string{`kind = "terrain.smooth"`, "[stages.terrain_smooth]", `inputs = { in = "terrain.elevation" }`} {
				if !bytes.Contains(f.Data, []byte(want)) {
					t.Errorf("pipeline.toml lacks %q:\n%s", want, f.Data)
				}
			}
		}
	}
}

func TestRenderUnknownLanguage(t *testing.T) {
	d, _ := NewData("terrain.smooth", "/src/pipehost", "1")
	_, err := Render("cobol", d)
	if err == nil || !strings.Contains(err.Error(), `unknown language "cobol": choose one of `) || !strings.Contains(err.Error(), "go") {
		t.Fatalf("error %v", err)
	}
}

func TestWrite(t *testing.T) {
	d, _ := NewData("terrain.smooth", "/src/pipehost", "1")
	parent := t.TempDir()

	// A new directory, and an existing empty one, are filled.
	for _, dir := range []string{filepath.Join(parent, "a", "terrain-smooth"), filepath.Join(parent, "empty")} {
		if strings.HasSuffix(dir, "empty") {
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := Write("go", d, dir); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, "stage.go"))
		if err != nil || !bytes.Contains(b, []byte(`Kind: "terrain.smooth"`)) {
			t.Fatalf("%s/stage.go: %v\n%s", dir, err, b)
		}
		if _, err := os.Stat(filepath.Join(dir, ".gitignore")); err != nil {
			t.Error(err)
		}
	}

	// A non-empty directory is refused and left as it was.
	full := filepath.Join(parent, "full")
	if err := os.Mkdir(full, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(full, "keep.txt"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := Write("go", d, full)
	if err == nil || !strings.Contains(err.Error(), "already exists and is not empty") {
		t.Fatalf("error %v", err)
	}
	if entries, _ := os.ReadDir(full); len(entries) != 1 {
		t.Fatalf("%s now holds %d entries", full, len(entries))
	}

	// An unknown language writes nothing at all.
	if err := Write("cobol", d, filepath.Join(parent, "cobol")); err == nil {
		t.Fatal("cobol was accepted")
	}
	entries, _ := os.ReadDir(parent)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "a,empty,full" {
		t.Fatalf("left in %s: %v (no temporary or half-written directory may remain)", parent, names)
	}
}

func TestFindRepo(t *testing.T) {
	repo := t.TempDir()
	if err := os.MkdirAll(filepath.Join(repo, "sdk"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(repo, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(repo, "bin", "pipehost")
	if _, err := FindRepo(exe); err == nil {
		t.Fatal("a folder without go.mod was taken for a checkout")
	}
	if err := os.WriteFile(filepath.Join(repo, "go.mod"), []byte("module github.com/pipehost/pipehost\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := FindRepo(exe)
	if err != nil || got != repo {
		t.Fatalf("FindRepo = %q, %v; want %q", got, err, repo)
	}
	// Through a symlink elsewhere (e.g. ~/bin/pipehost) it still finds it.
	link := filepath.Join(t.TempDir(), "pipehost")
	if err := os.WriteFile(exe, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(exe, link); err != nil {
		t.Fatal(err)
	}
	if got, err := FindRepo(link); err != nil || got != repo {
		t.Fatalf("through a symlink: %q, %v", got, err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
