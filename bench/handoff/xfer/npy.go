package xfer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"

	"github.com/pipehost/pipehost/internal/clock"
)

// npyMagic starts every .npy file: \x93NUMPY, then format version 1.0.
const npyMagic = "\x93NUMPY\x01\x00"

// NPYAlign is the alignment of the data in the files NPYHeader describes.
const NPYAlign = 64

// NPYHeader is the .npy v1.0 header of a little-endian float32 array of
// the given shape in C order, padded with spaces and ended by a newline so
// that the data after it starts at a multiple of NPYAlign.
func NPYHeader(height, width uint64) []byte {
	dict := fmt.Sprintf("{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", height, width)
	// magic+version (8), header length (2), dict, padding, '\n'.
	total := 10 + len(dict) + 1
	total = (total + NPYAlign - 1) / NPYAlign * NPYAlign
	h := make([]byte, 0, total)
	h = append(h, npyMagic...)
	h = binary.LittleEndian.AppendUint16(h, uint16(total-10))
	h = append(h, dict...)
	h = append(h, bytes.Repeat([]byte{' '}, total-len(h)-1)...)
	return append(h, '\n')
}

var npyDict = regexp.MustCompile(`^\{'descr': '<f4', 'fortran_order': False, 'shape': \((\d+), (\d+)\), \} *\n$`)

// ReadNPYHeader reads the header of an .npy file written with NPYHeader
// and returns the array's shape and the size of the header (the data's
// offset). Anything else (another dtype, Fortran order, another rank, a
// version other than 1.0) is an error: the benchmark reads only its own
// files.
func ReadNPYHeader(r io.Reader) (height, width uint64, headerSize int, err error) {
	pre := make([]byte, 10)
	if _, err := io.ReadFull(r, pre); err != nil {
		return 0, 0, 0, fmt.Errorf("npy header: %w", err)
	}
	if string(pre[:8]) != npyMagic {
		return 0, 0, 0, errors.New("npy header: not an .npy v1.0 file")
	}
	n := int(binary.LittleEndian.Uint16(pre[8:]))
	dict := make([]byte, n)
	if _, err := io.ReadFull(r, dict); err != nil {
		return 0, 0, 0, fmt.Errorf("npy header: %w", err)
	}
	m := npyDict.FindSubmatch(dict)
	if m == nil {
		return 0, 0, 0, fmt.Errorf("npy header: not a C-order little-endian float32 2-D array: %q", dict)
	}
	height, err1 := strconv.ParseUint(string(m[1]), 10, 64)
	width, err2 := strconv.ParseUint(string(m[2]), 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, 0, fmt.Errorf("npy header: shape: %w", err)
	}
	return height, width, 10 + n, nil
}

// WriteNPY writes grid as an .npy file the plain way: the header, then the
// bytes straight from the slice (no fsync: the file is read back at once).
func WriteNPY(path string, grid []float32, height, width uint64) error {
	if uint64(len(grid)) != height*width {
		return fmt.Errorf("writing %s: %d elements do not make a %d×%d grid", path, len(grid), height, width)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("writing the grid: %w", err)
	}
	_, err = f.Write(NPYHeader(height, width))
	if err == nil {
		_, err = f.Write(Bytes(grid))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing the grid to %s: %w", path, err)
	}
	return nil
}

// ReadNPY reads an .npy file written by WriteNPY into a fresh Go slice,
// chunk bytes per read call. first is the clock reading (clock.Now) when
// the first chunk of data was in memory.
func ReadNPY(path string, chunk int) (grid []float32, first int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("reading the grid: %w", err)
	}
	defer f.Close()
	h, w, _, err := ReadNPYHeader(f)
	if err != nil {
		return nil, 0, fmt.Errorf("reading the grid from %s: %w", path, err)
	}
	grid = make([]float32, h*w)
	b := Bytes(grid)
	chunk = max(chunk, 4096)
	for off := 0; off < len(b); {
		n, err := io.ReadFull(f, b[off:min(off+chunk, len(b))])
		if err != nil {
			return nil, 0, fmt.Errorf("reading the grid from %s at data byte %d of %d: %w", path, off, len(b), err)
		}
		if off == 0 {
			first = clock.Now()
		}
		off += n
	}
	return grid, first, nil
}
