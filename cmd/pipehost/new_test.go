package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNewStage(t *testing.T) {
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "smooth")
	out, errs, code := cli(t, "new", "stage", "terrain.smooth", "--lang", "go", "--dir", dir, "--repo", repo)
	if code != 0 || !strings.Contains(out, "wrote "+dir) {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil || !strings.Contains(string(mod), "module smooth\n") || !strings.Contains(string(mod), "=> "+repo+"\n") {
		t.Fatalf("go.mod: %v\n%s", err, mod)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"new", "stage", "terrain.smooth", "--lang", "cobol", "--dir", filepath.Join(t.TempDir(), "x"), "--repo", repo},
			`unknown language "cobol": choose one of `},
		{[]string{"new", "stage", "Terrain", "--lang", "go", "--repo", repo}, `bad stage kind "Terrain"`},
		{[]string{"new", "stage", "terrain.smooth", "--lang", "go", "--dir", dir, "--repo", repo}, "already exists and is not empty"},
		{[]string{"new", "stage", "terrain.smooth", "--dir", dir, "--repo", repo}, "--lang is required"},
		{[]string{"new", "terrain.smooth", "--lang", "go", "--repo", repo}, "want `new stage KIND --lang LANG`"},
		{[]string{"new", "stage", "terrain.smooth", "--lang", "go", "--repo", t.TempDir()}, "no go.mod"},
	} {
		_, errs, code := cli(t, tc.args...)
		if code != 2 || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, errs, tc.want)
		}
	}
}
