// Command genvectors writes testdata/handles.json: handle validation cases
// (docs/protocol.md, "Validation") with the expected accept/reject decision
// and, for rejects, the reason class (the first rule that fails). Every
// receiver — shm.Validate and its C++ and Rust counterparts — is checked
// against the file.
//
// The decisions come from this program's own reading of the rules, with
// arbitrary-precision arithmetic (math/big) instead of overflow checks, not
// from package shm, so shm's test compares two independent implementations.
//
//	go run ./shm/internal/genvectors [-out testdata/handles.json]
package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"math/big"
	"os"
)

// Enum numbers of proto/pipehost/v1/stage.proto.
const (
	fmtUnspecified = 0
	fmtRaw         = 1
	fmtArrow       = 2

	kindGrid  = 1
	kindTable = 2
	kindBlob  = 3

	f32 = 1
	f64 = 2
	i8  = 3
	i16 = 4
	i32 = 5
	i64 = 6
	u8  = 7
	u16 = 8
	u32 = 9
	u64 = 10
)

const maxU64 = ^uint64(0)

// Reason classes, in the order the rules are checked.
var reasons = []struct{ name, rule string }{
	{"segment_size", "rule 1: segment_size differs from the segment's real size"},
	{"unaligned_offset", "rule 2: offset is not a multiple of 64"},
	{"out_of_bounds", "rule 3: offset + nbytes exceeds segment_size (or overflows 64 bits)"},
	{"digest_length", "rule 4: digest is neither empty nor 32 bytes"},
	{"unknown_format", "rule 5: format is neither FORMAT_RAW (1) nor FORMAT_ARROW_IPC (2)"},
	{"unknown_dtype", "rule 6.1: a raw buffer's dtype is not one of DTYPE_F32 (1) .. DTYPE_U64 (10)"},
	{"rank_mismatch", "rule 6.2: shape and strides differ in length"},
	{"zero_stride", "rule 6.3: a stride is 0 (strides are checked in order, each for 0 then for its multiple)"},
	{"stride_not_multiple", "rule 6.3: a stride is not a multiple of the element size"},
	{"overflow", "rule 6.4: computing the extent overflows 64 bits"},
	{"extent_exceeds_nbytes", "rule 6.4: the extent e + sum((shape[i]-1)*strides[i]) exceeds nbytes"},
	{"arrow_shape", "rule 7: an Arrow IPC buffer has a shape or strides"},
}

type handle struct {
	SegmentID   uint64
	SegmentSize uint64
	Offset      uint64
	Nbytes      uint64
	DType       int
	Shape       []uint64
	Strides     []uint64
	Kind        int
	Level       int
	Format      int
	Digest      []byte
}

type testCase struct {
	name string
	real uint64
	h    handle
}

func elemSize(dt int) uint64 {
	switch dt {
	case i8, u8:
		return 1
	case i16, u16:
		return 2
	case f32, i32, u32:
		return 4
	case f64, i64, u64:
		return 8
	}
	return 0
}

func b(v uint64) *big.Int { return new(big.Int).SetUint64(v) }

var limit = new(big.Int).Lsh(big.NewInt(1), 64) // values must stay below 2^64

// decide applies the rules of docs/protocol.md in order and returns "" for
// an accepted handle, else the reason class of the first failing rule.
func decide(h handle, real uint64) string {
	if h.SegmentSize != real {
		return "segment_size"
	}
	if h.Offset%64 != 0 {
		return "unaligned_offset"
	}
	if end := new(big.Int).Add(b(h.Offset), b(h.Nbytes)); end.Cmp(b(real)) > 0 {
		return "out_of_bounds"
	}
	if len(h.Digest) != 0 && len(h.Digest) != 32 {
		return "digest_length"
	}
	switch h.Format {
	case fmtRaw:
		e := elemSize(h.DType)
		if e == 0 {
			return "unknown_dtype"
		}
		if len(h.Shape) != len(h.Strides) {
			return "rank_mismatch"
		}
		for _, s := range h.Strides {
			if s == 0 {
				return "zero_stride"
			}
			if s%e != 0 {
				return "stride_not_multiple"
			}
		}
		for _, d := range h.Shape {
			if d == 0 {
				return "" // empty: extent 0
			}
		}
		// The extent accumulates term by term; any partial value of 2^64 or
		// more is an overflow, as in 64-bit arithmetic with checks.
		extent := b(e)
		for i, d := range h.Shape {
			term := new(big.Int).Mul(b(d-1), b(h.Strides[i]))
			if term.Cmp(limit) >= 0 {
				return "overflow"
			}
			extent.Add(extent, term)
			if extent.Cmp(limit) >= 0 {
				return "overflow"
			}
		}
		if extent.Cmp(b(h.Nbytes)) > 0 {
			return "extent_exceeds_nbytes"
		}
		return ""
	case fmtArrow:
		if len(h.Shape) != 0 || len(h.Strides) != 0 {
			return "arrow_shape"
		}
		return ""
	}
	return "unknown_format"
}

// dense is the C-contiguity check, for accepted raw handles.
func dense(h handle) bool {
	if h.Format != fmtRaw {
		return false
	}
	want := b(elemSize(h.DType))
	for i := len(h.Shape) - 1; i >= 0; i-- {
		if b(h.Strides[i]).Cmp(want) != 0 {
			return false
		}
		want = new(big.Int).Mul(want, b(h.Shape[i]))
	}
	return want.Cmp(b(h.Nbytes)) == 0
}

// grid is a dense row-major height×width grid of dt at off in a segment of
// size bytes, as the host allocates them.
func grid(size, off uint64, dt int, height, width uint64) handle {
	e := elemSize(dt)
	return handle{SegmentID: 7, SegmentSize: size, Offset: off, Nbytes: height * width * e, DType: dt,
		Shape: []uint64{height, width}, Strides: []uint64{width * e, e}, Kind: kindGrid, Format: fmtRaw}
}

func raw(size, off, n uint64, dt int, shape, strides []uint64) handle {
	return handle{SegmentID: 9, SegmentSize: size, Offset: off, Nbytes: n, DType: dt,
		Shape: shape, Strides: strides, Kind: kindBlob, Format: fmtRaw}
}

func arrow(size, off, n uint64) handle {
	return handle{SegmentID: 11, SegmentSize: size, Offset: off, Nbytes: n, Kind: kindTable, Format: fmtArrow}
}

func with(h handle, f func(*handle)) handle {
	h.Shape = append([]uint64(nil), h.Shape...)
	h.Strides = append([]uint64(nil), h.Strides...)
	f(&h)
	return h
}

func digest(n int) []byte {
	d := make([]byte, n)
	for i := range d {
		d[i] = byte(0xa0 + i)
	}
	return d
}

func cases() []testCase {
	base := grid(4096, 64, f32, 8, 8) // 256 bytes at 64: strides [32 4]
	var cs []testCase
	add := func(name string, real uint64, h handle) { cs = append(cs, testCase{name, real, h}) }

	// Accepted.
	add("dense f32 grid", 4096, base)
	add("u8 grid filling the segment", 4096, grid(4096, 0, u8, 64, 64))
	add("grid ending exactly at the segment end", 4096, grid(4096, 4032, u16, 4, 8))
	add("empty grid in an empty segment", 0, grid(0, 0, f32, 0, 100))
	add("zero-length dimension makes any positive strides fine", 64, raw(64, 0, 0, f64, []uint64{0, 5}, []uint64{1 << 63, 8}))
	add("scalar (no dimensions)", 64, raw(64, 0, 8, f64, nil, nil))
	add("scalar with room to spare", 128, raw(128, 64, 64, u8, nil, nil))
	add("padded rows", 4096, raw(4096, 0, 3*64, f32, []uint64{3, 10}, []uint64{64, 4}))
	add("extent exactly nbytes", 4096, raw(4096, 0, 4+2*64+9*4, f32, []uint64{3, 10}, []uint64{64, 4}))
	add("nbytes larger than the extent", 4096, with(base, func(h *handle) { h.Nbytes = 512 }))
	add("column-major", 4096, raw(4096, 0, 24, i32, []uint64{2, 3}, []uint64{4, 8}))
	add("overlapping rows (equal strides)", 64, raw(64, 0, 64, f32, []uint64{4, 4}, []uint64{4, 4}))
	add("3-D dense u16", 4096, raw(4096, 128, 48, u16, []uint64{2, 3, 4}, []uint64{24, 8, 2}))
	for dt := f32; dt <= u64; dt++ {
		e := elemSize(dt)
		add(fmt.Sprintf("1-D dense of dtype %d", dt), 1024, raw(1024, 64, 16*e, dt, []uint64{16}, []uint64{e}))
	}
	add("digest of 32 bytes", 4096, with(base, func(h *handle) { h.Digest = digest(32) }))
	add("grid at a pyramid level", 4096, with(grid(4096, 0, f64, 4, 4), func(h *handle) { h.Level = 2 }))
	add("Arrow IPC table", 1000, with(arrow(1000, 0, 1000), func(h *handle) { h.Digest = digest(32) }))
	add("Arrow IPC with a dtype set (ignored)", 1000, with(arrow(1000, 0, 1000), func(h *handle) { h.DType = f32 }))
	add("empty Arrow IPC buffer in an empty segment", 0, arrow(0, 0, 0))
	add("Arrow IPC buffer at an aligned offset", 4096, arrow(4096, 1024, 3072))
	add("1 TiB segment (no 32-bit truncation)", 1<<40,
		raw(1<<40, 1<<39, 1<<38, f32, []uint64{1 << 18, 1 << 18}, []uint64{1 << 20, 4}))
	add("empty buffer at the end of a segment of 2^64-64 bytes", maxU64-63, arrow(maxU64-63, maxU64-63, 0))
	add("extent of exactly 2^64-1 bytes", maxU64, raw(maxU64, 0, maxU64, u8, []uint64{2}, []uint64{maxU64 - 1}))

	// Rejected, one rule at a time.
	add("segment_size larger than the real size", 4096, with(base, func(h *handle) { h.SegmentSize = 8192 }))
	add("segment_size smaller than the real size", 8192, base)
	add("segment_size of an empty segment", 0, with(base, func(h *handle) { h.SegmentSize = 0 }))
	add("offset 65", 4096, with(base, func(h *handle) { h.Offset = 65 }))
	add("offset 32", 4096, with(base, func(h *handle) { h.Offset = 32 }))
	add("offset 2^63+1", 4096, with(base, func(h *handle) { h.Offset = 1<<63 + 1 }))
	add("one byte past the end", 4096, with(base, func(h *handle) { h.Offset = 3840; h.Nbytes = 257 }))
	add("grid past the end", 4096, with(base, func(h *handle) { h.Offset = 3904 }))
	add("empty buffer starting past the end", 4096, arrow(4096, 4160, 0))
	add("offset + nbytes overflows", 4096, with(base, func(h *handle) { h.Offset = maxU64 - 63; h.Nbytes = 128 }))
	add("nbytes of 2^64-1", 4096, with(base, func(h *handle) { h.Offset = 0; h.Nbytes = maxU64 }))
	add("digest of 3 bytes", 4096, with(base, func(h *handle) { h.Digest = digest(3) }))
	add("digest of 31 bytes", 4096, with(base, func(h *handle) { h.Digest = digest(31) }))
	add("digest of 33 bytes", 4096, with(base, func(h *handle) { h.Digest = digest(33) }))
	add("digest of 64 bytes (SHA-512 size)", 1000, with(arrow(1000, 0, 1000), func(h *handle) { h.Digest = digest(64) }))
	add("format unspecified", 4096, with(base, func(h *handle) { h.Format = fmtUnspecified }))
	add("format 3", 4096, with(base, func(h *handle) { h.Format = 3 }))
	add("format 99", 1000, with(arrow(1000, 0, 1000), func(h *handle) { h.Format = 99 }))
	add("dtype unspecified", 4096, with(base, func(h *handle) { h.DType = 0 }))
	add("dtype 11", 4096, with(base, func(h *handle) { h.DType = 11 }))
	add("dtype 42", 4096, with(base, func(h *handle) { h.DType = 42 }))
	add("scalar without dtype", 64, raw(64, 0, 8, 0, nil, nil))
	add("fewer strides than dimensions", 4096, with(base, func(h *handle) { h.Strides = h.Strides[:1] }))
	add("more strides than dimensions", 4096, with(base, func(h *handle) { h.Strides = append(h.Strides, 4) }))
	add("strides for a scalar", 64, raw(64, 0, 8, f64, nil, []uint64{8}))
	add("outer stride 0", 4096, with(base, func(h *handle) { h.Strides[0] = 0 }))
	add("inner stride 0", 4096, with(base, func(h *handle) { h.Strides[1] = 0 }))
	add("stride 0 in an empty buffer", 0, raw(0, 0, 0, f32, []uint64{0, 4}, []uint64{16, 0}))
	add("f64 stride of 4 bytes", 4096, raw(4096, 0, 512, f64, []uint64{8, 8}, []uint64{64, 4}))
	add("f32 row stride of 6 bytes", 4096, raw(4096, 0, 512, f32, []uint64{2, 2}, []uint64{6, 4}))
	add("u16 odd stride", 4096, raw(4096, 0, 512, u16, []uint64{3}, []uint64{3}))
	add("stride times dimension overflows", 4096, with(grid(4096, 64, f64, 8, 8), func(h *handle) { h.Shape[0] = 9; h.Strides[0] = 1 << 62 }))
	add("sum of terms overflows", 4096, raw(4096, 0, 4096, f64, []uint64{3, 3}, []uint64{1 << 62, 1 << 62}))
	add("extent of 2^64 bytes", maxU64, raw(maxU64, 0, maxU64, u8, []uint64{2}, []uint64{maxU64}))
	add("one row too many", 4096, with(base, func(h *handle) { h.Shape[0] = 9 }))
	add("one byte short", 4096, with(base, func(h *handle) { h.Nbytes = 255 }))
	add("scalar larger than nbytes", 64, raw(64, 0, 4, f64, nil, nil))
	add("padded rows one byte short", 4096, raw(4096, 0, 4+2*64+9*4-1, f32, []uint64{3, 10}, []uint64{64, 4}))
	add("nbytes 0 for a non-empty grid", 4096, with(base, func(h *handle) { h.Nbytes = 0 }))
	add("Arrow IPC with a shape", 1000, with(arrow(1000, 0, 1000), func(h *handle) { h.Shape = []uint64{1000} }))
	add("Arrow IPC with strides only", 1000, with(arrow(1000, 0, 1000), func(h *handle) { h.Strides = []uint64{1} }))
	add("Arrow IPC flagged as raw grid layout", 4096, with(base, func(h *handle) { h.Format = fmtArrow }))

	// Several rules fail: the first one in the documented order wins.
	add("order: segment_size before offset", 4096, with(base, func(h *handle) { h.SegmentSize = 1; h.Offset = 3 }))
	add("order: offset before bounds", 4096, with(base, func(h *handle) { h.Offset = 5000 }))
	add("order: bounds before digest", 4096, with(base, func(h *handle) { h.Nbytes = 8192; h.Digest = digest(5) }))
	add("order: digest before format", 4096, with(base, func(h *handle) { h.Digest = digest(5); h.Format = 7 }))
	add("order: dtype before rank", 4096, with(base, func(h *handle) { h.DType = 0; h.Strides = nil }))
	add("order: rank before strides", 4096, with(base, func(h *handle) { h.Strides = []uint64{0} }))
	add("order: strides in order (not-multiple in dimension 0 first)", 4096, raw(4096, 0, 64, f32, []uint64{2, 2}, []uint64{6, 0}))
	add("order: strides in order (zero in dimension 0 first)", 4096, raw(4096, 0, 64, f32, []uint64{2, 2}, []uint64{0, 6}))
	add("order: strides before extent", 4096, with(base, func(h *handle) { h.Shape[0] = 1000; h.Strides[1] = 3 }))
	add("order: overflow before extent", 64, raw(64, 0, 8, f64, []uint64{2, 2}, []uint64{1 << 63, 1 << 63}))
	return cs
}

type handleJSON struct {
	SegmentID   string   `json:"segment_id"`
	SegmentSize string   `json:"segment_size"`
	Offset      string   `json:"offset"`
	Nbytes      string   `json:"nbytes"`
	DType       int      `json:"dtype"`
	Shape       []string `json:"shape"`
	Strides     []string `json:"strides"`
	Kind        int      `json:"kind"`
	Level       int      `json:"level"`
	Format      int      `json:"format"`
	Digest      string   `json:"digest"`
}

type caseJSON struct {
	Name     string     `json:"name"`
	RealSize string     `json:"real_size"`
	Handle   handleJSON `json:"handle"`
	Accept   bool       `json:"accept"`
	Reason   string     `json:"reason,omitempty"`
	Dense    *bool      `json:"dense,omitempty"`
}

func u64s(v uint64) string { return fmt.Sprintf("0x%016x", v) }

func list(vs []uint64) []string {
	out := []string{}
	for _, v := range vs {
		out = append(out, u64s(v))
	}
	return out
}

// Build returns the file's bytes.
func Build() ([]byte, error) {
	var buf bytes.Buffer
	head := func(key string, v any, last bool) error {
		j, err := json.Marshal(v)
		if err != nil {
			return err
		}
		fmt.Fprintf(&buf, "  %q: %s", key, j)
		if !last {
			buf.WriteString(",")
		}
		buf.WriteString("\n")
		return nil
	}
	buf.WriteString("{\n")
	_ = head("schema", "pipehost.handles/1", false)
	_ = head("about", "Handle validation cases for shm.Validate and its C++ and Rust counterparts; generated by go run ./shm/internal/genvectors.", false)
	_ = head("docs", "docs/protocol.md#validation", false)
	_ = head("encoding", "Every uint64 is a string: 0x and 16 lowercase hex digits. dtype, kind and format are the proto enum numbers (unknown numbers on purpose). digest is hex; only its length matters. real_size is the segment's size as fstat reports it. accept is the decision; a reject names the reason class of the first failing rule, in the order of the reasons table; an accepted case says whether the handle is dense (C-contiguous).", false)
	buf.WriteString("  \"reasons\": {\n")
	for i, r := range reasons {
		fmt.Fprintf(&buf, "    %q: %q", r.name, r.rule)
		if i < len(reasons)-1 {
			buf.WriteString(",")
		}
		buf.WriteString("\n")
	}
	buf.WriteString("  },\n  \"cases\": [\n")
	cs := cases()
	seen := map[string]bool{}
	for i, c := range cs {
		if seen[c.name] {
			return nil, fmt.Errorf("case %q twice", c.name)
		}
		seen[c.name] = true
		h := c.h
		cj := caseJSON{
			Name:     c.name,
			RealSize: u64s(c.real),
			Handle: handleJSON{
				SegmentID: u64s(h.SegmentID), SegmentSize: u64s(h.SegmentSize), Offset: u64s(h.Offset),
				Nbytes: u64s(h.Nbytes), DType: h.DType, Shape: list(h.Shape), Strides: list(h.Strides),
				Kind: h.Kind, Level: h.Level, Format: h.Format, Digest: hex.EncodeToString(h.Digest),
			},
		}
		cj.Reason = decide(h, c.real)
		cj.Accept = cj.Reason == ""
		if cj.Accept {
			d := dense(h)
			cj.Dense = &d
		}
		j, err := json.Marshal(cj)
		if err != nil {
			return nil, err
		}
		buf.WriteString("    ")
		buf.Write(j)
		if i < len(cs)-1 {
			buf.WriteString(",")
		}
		buf.WriteString("\n")
	}
	buf.WriteString("  ]\n}\n")
	// Every reason class has at least one case.
	used := map[string]bool{}
	for _, c := range cs {
		used[decide(c.h, c.real)] = true
	}
	for _, r := range reasons {
		if !used[r.name] {
			return nil, fmt.Errorf("no case for reason %s", r.name)
		}
	}
	return buf.Bytes(), nil
}

func main() {
	out := flag.String("out", "testdata/handles.json", "file to write")
	flag.Parse()
	b, err := Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, "genvectors:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "genvectors:", err)
		os.Exit(1)
	}
}
