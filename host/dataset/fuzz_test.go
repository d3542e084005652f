package dataset

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"regexp"
	"strconv"
	"testing"
)

var npyDict = regexp.MustCompile(`^\{'descr': '([<|][a-z][0-9])', 'fortran_order': False, 'shape': \((\d+), (\d+)\), \} *\n$`)

// FuzzNPYHeader: for any shape and dtype the header is NPY 1.0, its length
// field is right, the data starts at a multiple of 64 and the dict reads
// back as the same dtype and shape.
func FuzzNPYHeader(f *testing.F) {
	f.Add(uint32(256), uint32(128), uint8(0))
	f.Add(uint32(1), uint32(1<<31), uint8(9))
	f.Fuzz(func(t *testing.T, w, h uint32, dt uint8) {
		if w == 0 || h == 0 {
			return
		}
		d := NPZDTypes[int(dt)%len(NPZDTypes)]
		hdr := npyHeader(Grid{Width: int(w), Height: int(h), DType: d})
		if len(hdr)%64 != 0 || !bytes.HasPrefix(hdr, []byte("\x93NUMPY\x01\x00")) {
			t.Fatalf("header %q: length %d or magic wrong", hdr, len(hdr))
		}
		if n := int(binary.LittleEndian.Uint16(hdr[8:])); n != len(hdr)-10 {
			t.Fatalf("length field %d, dict is %d bytes", n, len(hdr)-10)
		}
		m := npyDict.FindSubmatch(hdr[10:])
		if m == nil {
			t.Fatalf("dict %q does not parse", hdr[10:])
		}
		if string(m[1]) != npyDescr[d] || string(m[2]) != strconv.FormatUint(uint64(h), 10) || string(m[3]) != strconv.FormatUint(uint64(w), 10) {
			t.Fatalf("dict %q for %v %d×%d", m[0], d, w, h)
		}
	})
}

// FuzzTIFFIFDs: a chain of IFDs built from arbitrary fields reads back,
// through an independent IFD walker, as the same tags, types, counts and
// value bytes, in classic TIFF and BigTIFF.
func FuzzTIFFIFDs(f *testing.F) {
	f.Add(false, uint32(8), []byte{1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add(true, uint32(16), bytes.Repeat([]byte{0xab}, 40))
	f.Fuzz(func(t *testing.T, big bool, start uint32, seed []byte) {
		// Cut seed into fields: one byte of tag, one of length, then data.
		var ifds [][]field
		var cur []field
		used := map[uint16]bool{}
		for len(seed) >= 2 && len(ifds) < 4 {
			tag, n := uint16(seed[0])+256, int(seed[1]%24)
			seed = seed[2:]
			if n > len(seed) {
				n = len(seed)
			}
			if used[tag] {
				ifds = append(ifds, cur)
				cur, used = nil, map[uint16]bool{}
			}
			used[tag] = true
			cur = append(cur, field{tag: tag, typ: 7, count: uint64(n), data: append([]byte(nil), seed[:n]...)})
			seed = seed[n:]
		}
		if len(cur) > 0 {
			ifds = append(ifds, cur)
		}
		if len(ifds) == 0 {
			return
		}
		// An IFD sits after the header, on a word boundary (offset 0 means
		// "no IFD").
		first := 16 + 2*uint64(start%(1<<16))
		out, offsets := encodeIFDs(big, first, ifds)
		file := append(make([]byte, first), out...)
		got, err := walkIFDs(file, big, first)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(ifds) {
			t.Fatalf("%d IFDs read back, %d written", len(got), len(ifds))
		}
		for i, want := range ifds {
			if got[i].offset != offsets[i] {
				t.Fatalf("IFD %d at %d, encodeIFDs said %d", i, got[i].offset, offsets[i])
			}
			byTag := map[uint16]field{}
			for _, fl := range got[i].fields {
				byTag[fl.tag] = fl
			}
			if len(byTag) != len(want) {
				t.Fatalf("IFD %d: %d fields, want %d", i, len(byTag), len(want))
			}
			for _, w := range want {
				g, ok := byTag[w.tag]
				if !ok || g.typ != w.typ || g.count != w.count || !bytes.Equal(g.data, w.data) {
					t.Fatalf("IFD %d tag %d: got %+v, want %+v", i, w.tag, g, w)
				}
			}
		}
	})
}

type walkedIFD struct {
	offset uint64
	fields []field
}

// walkIFDs follows the IFD chain from first, reading each entry as a TIFF
// reader does (values inline when they fit, else at the stored offset);
// type 7 (UNDEFINED) has one byte per count.
func walkIFDs(b []byte, big bool, first uint64) ([]walkedIFD, error) {
	word := func(at uint64, n int) (uint64, error) {
		if at+uint64(n) > uint64(len(b)) {
			return 0, fmt.Errorf("read of %d bytes at %d past the end (%d)", n, at, len(b))
		}
		switch n {
		case 2:
			return uint64(binary.LittleEndian.Uint16(b[at:])), nil
		case 4:
			return uint64(binary.LittleEndian.Uint32(b[at:])), nil
		}
		return binary.LittleEndian.Uint64(b[at:]), nil
	}
	countSize, entry, inline := 2, uint64(12), 4
	if big {
		countSize, entry, inline = 8, 20, 8
	}
	var out []walkedIFD
	for at := first; at != 0; {
		if len(out) > 16 {
			return nil, fmt.Errorf("IFD chain loops")
		}
		n, err := word(at, countSize)
		if err != nil {
			return nil, err
		}
		ifd := walkedIFD{offset: at}
		for i := uint64(0); i < n; i++ {
			e := at + uint64(countSize) + i*entry
			tag, err1 := word(e, 2)
			typ, err2 := word(e+2, 2)
			count, err3 := word(e+4, inline)
			if err := firstErr(err1, err2, err3); err != nil {
				return nil, err
			}
			v := e + 4 + uint64(inline)
			if count > uint64(inline) {
				if v, err = word(v, inline); err != nil {
					return nil, err
				}
			}
			if v+count > uint64(len(b)) {
				return nil, fmt.Errorf("tag %d: %d bytes at %d past the end", tag, count, v)
			}
			ifd.fields = append(ifd.fields, field{tag: uint16(tag), typ: uint16(typ), count: count, data: append([]byte{}, b[v:v+count]...)})
		}
		next, err := word(at+uint64(countSize)+n*entry, inline)
		if err != nil {
			return nil, err
		}
		out = append(out, ifd)
		at = next
	}
	return out, nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
