package xfer

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pipehost/pipehost/internal/testenv"
)

func TestFillMatchesExpectedSum(t *testing.T) {
	for _, nbytes := range []int64{4 << 10, 12 << 10, 1 << 20, 3<<20 + 4<<10} {
		for _, seed := range []uint64{0, 1, 0x9e3779b97f4a7c15} {
			grid := make([]float32, nbytes/4)
			Fill(grid, seed)
			got, err := Sum(Bytes(grid))
			if err != nil {
				t.Fatal(err)
			}
			if want := ExpectedSum(seed, nbytes); got != want {
				t.Errorf("%d bytes, seed %#x: sum %#x, want %#x", nbytes, seed, got, want)
			}
			// Any element changed anywhere changes the sum.
			grid[len(grid)-1]++
			if again, _ := Sum(Bytes(grid)); again == got {
				t.Errorf("%d bytes, seed %#x: changing the last element left the sum at %#x", nbytes, seed, got)
			}
		}
	}
	if ExpectedSum(1, 1<<20) == ExpectedSum(2, 1<<20) {
		t.Error("two seeds give the same sum: a stale grid would pass")
	}
}

// Fill writes element i as value(seed, i mod Block), through the 8-byte
// path and through the element path a misaligned slice takes.
func TestFillPattern(t *testing.T) {
	buf := make([]float32, 4*Block+1)
	for _, dst := range [][]float32{buf[:4*Block], buf[1:]} {
		Fill(dst, 42)
		for i, v := range dst {
			if v != value(42, i%Block) {
				t.Fatalf("element %d of %d is %v, want %v", i, len(dst), v, value(42, i%Block))
			}
		}
	}
}

func TestShape(t *testing.T) {
	for nbytes, want := range map[int64][2]uint64{
		4 << 10: {32, 32}, 12 << 10: {96, 32}, 1 << 20: {512, 512}, 64 << 20: {4096, 4096},
		1 << 30: {16384, 16384}, 4 << 30: {32768, 32768}, 2 << 20: {1024, 512},
	} {
		h, w := Shape(nbytes)
		if [2]uint64{h, w} != want || int64(h*w*4) != nbytes {
			t.Errorf("Shape(%d) = %d×%d, want %d×%d", nbytes, h, w, want[0], want[1])
		}
	}
	if CheckSize(4<<10) != nil || CheckSize(6<<10) == nil || CheckSize(0) == nil {
		t.Error("CheckSize accepts a size that is not whole 4 KiB blocks, or refuses one that is")
	}
}

func TestNPYRoundTrip(t *testing.T) {
	for _, dims := range [][2]uint64{{1, 1024}, {96, 32}, {512, 512}, {123456, 8}} {
		hdr := NPYHeader(dims[0], dims[1])
		if len(hdr)%NPYAlign != 0 || hdr[len(hdr)-1] != '\n' {
			t.Errorf("%v: header of %d bytes, last byte %q", dims, len(hdr), hdr[len(hdr)-1])
		}
		h, w, n, err := ReadNPYHeader(bytes.NewReader(hdr))
		if err != nil || h != dims[0] || w != dims[1] || n != len(hdr) {
			t.Errorf("%v: read back %d×%d, header %d bytes (%v)", dims, h, w, n, err)
		}
	}
	path := filepath.Join(t.TempDir(), "g.npy")
	grid := make([]float32, 96*32)
	Fill(grid, 7)
	if err := WriteNPY(path, grid, 96, 32); err != nil {
		t.Fatal(err)
	}
	back, first, err := ReadNPY(path, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if first == 0 || !bytes.Equal(Bytes(back), Bytes(grid)) {
		t.Errorf("read back differs from what was written (first-byte time %d)", first)
	}
	if err := WriteNPY(path, grid, 32, 32); err == nil {
		t.Error("WriteNPY accepted a shape that does not match the grid")
	}
	for _, bad := range []string{"\x93NUMPY\x02\x00", "\x93NUMPY\x01\x00\x10\x00{'descr': '<f8'"} {
		if _, _, _, err := ReadNPYHeader(strings.NewReader(bad + strings.Repeat(" ", 64))); err == nil {
			t.Errorf("ReadNPYHeader accepted %q", bad)
		}
	}
}

// TestNPYWithNumPy has NumPy read the file WriteNPY makes and write one that
// ReadNPYHeader must understand.
func TestNPYWithNumPy(t *testing.T) {
	py := testenv.Python(t)
	dir := t.TempDir()
	ours := filepath.Join(dir, "ours.npy")
	grid := make([]float32, 96*32)
	Fill(grid, 3)
	if err := WriteNPY(ours, grid, 96, 32); err != nil {
		t.Fatal(err)
	}
	theirs := filepath.Join(dir, "theirs.npy")
	script := `
import sys, numpy as np
ours, theirs = sys.argv[1], sys.argv[2]
with open(ours, "rb") as f:
    major, minor = np.lib.format.read_magic(f)
    np.lib.format.read_array_header_1_0(f)
    print(major, minor, f.tell())
a = np.load(ours)
print(a.dtype.str, a.shape[0], a.shape[1], repr(float(a[0, 0])), repr(float(a[95, 31])), int(a.view(np.uint64).sum(dtype=np.uint64)))
np.save(theirs, np.arange(7 * 5, dtype="<f4").reshape(7, 5))
`
	out, err := exec.Command(py, "-c", script, ours, theirs).CombinedOutput()
	if err != nil {
		t.Fatalf("numpy: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 {
		t.Fatalf("numpy printed %q", out)
	}
	f := strings.Fields(lines[0])
	if off, _ := strconv.Atoi(f[2]); f[0] != "1" || f[1] != "0" || off%NPYAlign != 0 {
		t.Errorf("numpy sees version %s.%s, data at byte %s; want 1.0 and a multiple of %d", f[0], f[1], f[2], NPYAlign)
	}
	sum, _ := Sum(Bytes(grid))
	want := []string{"<f4", "96", "32", strconv.FormatFloat(float64(grid[0]), 'f', -1, 64),
		strconv.FormatFloat(float64(grid[len(grid)-1]), 'f', -1, 64), strconv.FormatUint(sum, 10)}
	if got := strings.Fields(lines[1]); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("numpy read %v, want %v", got, want)
	}
	fh, err := os.Open(theirs)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if h, w, n, err := ReadNPYHeader(fh); err != nil || h != 7 || w != 5 || n%NPYAlign != 0 {
		t.Errorf("NumPy's file: %d×%d, header %d bytes, %v", h, w, n, err)
	}
}

// BenchmarkSum is the consumer's read of every byte of a resident 64 MiB
// grid, without page faults: the floor under the benchmark's full-read
// times.
func BenchmarkSum(b *testing.B) {
	grid := make([]float32, 16<<20)
	Fill(grid, 1)
	raw := Bytes(grid)
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := Sum(raw); err != nil {
			b.Fatal(err)
		}
	}
}
