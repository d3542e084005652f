package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// The committed files are what the generator writes now: a change to the
// Go rules, the fd channel, adopted handles or the handshake that is not
// regenerated (and so not checked in the other SDKs) fails here.
func TestVectorsAreUpToDate(t *testing.T) {
	files, err := Build()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range Files {
		got, err := os.ReadFile(filepath.Join("..", "..", "..", "testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, files[name]) {
			t.Errorf("testdata/%s is stale: run go run ./sdk/internal/genvectors", name)
		}
	}
	if len(files) != len(Files) {
		t.Errorf("Build made %d files, Files lists %d", len(files), len(Files))
	}
}
