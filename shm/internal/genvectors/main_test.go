package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// The committed file is what the generator writes now.
func TestHandlesJSONIsUpToDate(t *testing.T) {
	want, err := Build()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join("..", "..", "..", "testdata", "handles.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("testdata/handles.json is stale: run go run ./shm/internal/genvectors")
	}
}

// The generator's own rules agree with hand-picked decisions.
func TestDecideSpotChecks(t *testing.T) {
	base := grid(4096, 64, f32, 8, 8)
	for _, c := range []struct {
		h    handle
		real uint64
		want string
	}{
		{base, 4096, ""},
		{base, 4097, "segment_size"},
		{with(base, func(h *handle) { h.Offset = 3904 }), 4096, "out_of_bounds"},
		{raw(maxU64, 0, maxU64, u8, []uint64{2}, []uint64{maxU64 - 1}), maxU64, ""},
		{raw(maxU64, 0, maxU64, u8, []uint64{2}, []uint64{maxU64}), maxU64, "overflow"},
		{raw(64, 0, 0, f64, []uint64{0, 5}, []uint64{1 << 63, 8}), 64, ""},
	} {
		if got := decide(c.h, c.real); got != c.want {
			t.Errorf("decide(%+v, %d) = %q, want %q", c.h, c.real, got, c.want)
		}
	}
}
