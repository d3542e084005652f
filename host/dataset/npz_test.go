package dataset

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNPYHeaderPadding(t *testing.T) {
	for _, g := range []Grid{
		{Width: 1, Height: 1, DType: Uint8},
		{Width: 123456, Height: 7, DType: Float64},
		{Width: 1 << 30, Height: 1 << 20, DType: Int16},
	} {
		h := npyHeader(g)
		if len(h)%64 != 0 || h[len(h)-1] != '\n' || !bytes.HasPrefix(h, []byte("\x93NUMPY\x01\x00")) {
			t.Fatalf("%v: header %q (len %d)", g, h, len(h))
		}
		if n := int(h[8]) | int(h[9])<<8; n != len(h)-10 {
			t.Fatalf("header length field %d, header is %d", n, len(h)-10)
		}
	}
}

func TestNPZReadBackByNumPy(t *testing.T) {
	dir := t.TempDir()
	w, err := NewWriter(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	members := []NPZMember{
		{"height", makeGrid(Float32, 301, 199, func(x, y int) float64 {
			if x == y {
				return math.NaN()
			}
			return terrain(x, y)
		})},
		{"one", makeGrid(Float64, 1, 1, func(int, int) float64 { return math.Pi })},
		{"biome", makeGrid(Uint8, 17, 5, func(x, y int) float64 { return float64(x * y) })},
		{"i8", makeGrid(Int8, 3, 2, func(x, y int) float64 { return float64(-x - y) })},
		{"i16", makeGrid(Int16, 9, 9, func(x, y int) float64 { return float64(x*1000 - 4000*y) })},
		{"i32", makeGrid(Int32, 4, 7, func(x, y int) float64 { return float64(-x * 1e6) })},
		{"i64", makeGrid(Int64, 5, 3, func(x, y int) float64 { return float64(-x*y) * 1e12 })},
		{"u16", makeGrid(Uint16, 2, 2, func(x, y int) float64 { return float64(65535 - x) })},
		{"u32", makeGrid(Uint32, 6, 1, func(x, y int) float64 { return float64(4e9 + x) })},
		{"u64", makeGrid(Uint64, 1, 6, func(x, y int) float64 { return float64(y) * 1e15 })},
	}
	var rawMembers []map[string]any
	for _, m := range members {
		raw := filepath.Join(dir, m.Name+".raw")
		if err := os.WriteFile(raw, m.Grid.Data, 0o644); err != nil {
			t.Fatal(err)
		}
		rawMembers = append(rawMembers, map[string]any{
			"name": m.Name, "raw": raw, "dtype": m.Grid.DType.String(), "shape": []int{m.Grid.Height, m.Grid.Width},
		})
	}
	var cases []map[string]any
	for _, compress := range []bool{false, true} {
		name := "stored.npz"
		if compress {
			name = "deflated.npz"
		}
		a, err := w.WriteNPZ(name, members, NPZOptions{Compress: compress})
		if err != nil {
			t.Fatal(err)
		}
		if a.Format != "npz" || a.Path != name {
			t.Fatalf("artifact %+v", a)
		}
		cases = append(cases, map[string]any{"path": filepath.Join(dir, name), "compressed": compress, "members": rawMembers})
	}
	// The same members after an odd-length first name shift every later offset.
	a, err := w.WriteNPZ("shifted.npz", append([]NPZMember{{"x", members[2].Grid}}, members...), NPZOptions{})
	if err != nil {
		t.Fatal(err)
	}
	shifted := append([]map[string]any{{"name": "x", "raw": rawMembers[2]["raw"], "dtype": "uint8", "shape": []int{5, 17}}}, rawMembers...)
	cases = append(cases, map[string]any{"path": filepath.Join(dir, a.Path), "compressed": false, "members": shifted})

	spec := filepath.Join(dir, "cases.json")
	writeJSON(t, spec, cases)
	out := runPy(t, "check_npz.py", spec)
	if strings.Count(out, ": ok") != len(cases) {
		t.Fatalf("checker output:\n%s", out)
	}
}
