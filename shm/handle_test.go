package shm

import (
	"encoding/binary"
	"errors"
	"math"
	"math/big"
	"strings"
	"testing"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"google.golang.org/protobuf/proto"
)

func TestDTypeSize(t *testing.T) {
	want := map[pb.DType]int{
		pb.DType_DTYPE_UNSPECIFIED: 0,
		pb.DType_DTYPE_F32:         4, pb.DType_DTYPE_F64: 8,
		pb.DType_DTYPE_I8: 1, pb.DType_DTYPE_I16: 2, pb.DType_DTYPE_I32: 4, pb.DType_DTYPE_I64: 8,
		pb.DType_DTYPE_U8: 1, pb.DType_DTYPE_U16: 2, pb.DType_DTYPE_U32: 4, pb.DType_DTYPE_U64: 8,
		pb.DType(99): 0,
	}
	for dt, n := range want {
		if got := DTypeSize(dt); got != n {
			t.Errorf("DTypeSize(%v) = %d, want %d", dt, got, n)
		}
	}
	// Every dtype the proto defines has a size and a Go element type.
	for v, name := range pb.DType_name {
		dt := pb.DType(v)
		if dt == pb.DType_DTYPE_UNSPECIFIED {
			continue
		}
		if DTypeSize(dt) == 0 {
			t.Errorf("%s has no size", name)
		}
	}
}

func TestDTypeFor(t *testing.T) {
	type meters float32
	check := func(got, want pb.DType) {
		t.Helper()
		if got != want {
			t.Errorf("got %v, want %v", got, want)
		}
	}
	check(DTypeFor[float32](), pb.DType_DTYPE_F32)
	check(DTypeFor[float64](), pb.DType_DTYPE_F64)
	check(DTypeFor[int8](), pb.DType_DTYPE_I8)
	check(DTypeFor[int16](), pb.DType_DTYPE_I16)
	check(DTypeFor[int32](), pb.DType_DTYPE_I32)
	check(DTypeFor[int64](), pb.DType_DTYPE_I64)
	check(DTypeFor[uint8](), pb.DType_DTYPE_U8)
	check(DTypeFor[uint16](), pb.DType_DTYPE_U16)
	check(DTypeFor[uint32](), pb.DType_DTYPE_U32)
	check(DTypeFor[uint64](), pb.DType_DTYPE_U64)
	check(DTypeFor[meters](), pb.DType_DTYPE_F32)
}

func TestGridHandle(t *testing.T) {
	h := GridHandle(7, 1<<20, 128, pb.DType_DTYPE_F32, 300, 400, 2)
	if err := Validate(h, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !IsDense(h) {
		t.Fatal("grid handle is not dense")
	}
	if h.GetNbytes() != 300*400*4 || h.GetStrides()[0] != 1600 || h.GetStrides()[1] != 4 ||
		h.GetKind() != pb.PortKind_PORT_KIND_GRID || h.GetLevel() != 2 || h.GetFormat() != pb.Format_FORMAT_RAW {
		t.Fatalf("unexpected handle %v", h)
	}
	if err := Validate(h, 300*400*4); err == nil {
		t.Fatal("handle validated against the wrong segment size")
	}
}

func TestValidateRejects(t *testing.T) {
	base := func() *pb.Handle { return GridHandle(7, 4096, 64, pb.DType_DTYPE_F64, 8, 8, 0) }
	cases := []struct {
		name string
		mod  func(h *pb.Handle)
		size uint64
		want string
	}{
		{"wrong segment size", func(h *pb.Handle) { h.SegmentSize = 8192 }, 4096, "does not match the segment's real size 4096"},
		{"unaligned offset", func(h *pb.Handle) { h.Offset = 65 }, 4096, "handle for segment 7: offset 65 is not 64-byte aligned"},
		{"past the end", func(h *pb.Handle) { h.Offset = 3648 }, 4096, "runs past the segment's 4096 bytes"},
		{"offset overflow", func(h *pb.Handle) { h.Offset = math.MaxUint64 - 63; h.Nbytes = 128 }, 4096, "runs past"},
		{"no dtype", func(h *pb.Handle) { h.Dtype = pb.DType_DTYPE_UNSPECIFIED }, 4096, "unknown dtype"},
		{"unknown dtype", func(h *pb.Handle) { h.Dtype = 42 }, 4096, "unknown dtype"},
		{"rank mismatch", func(h *pb.Handle) { h.Strides = h.Strides[:1] }, 4096, "shape has 2 dimensions but strides has 1"},
		{"zero stride", func(h *pb.Handle) { h.Strides[0] = 0 }, 4096, "stride 0 is 0"},
		{"stride not in elements", func(h *pb.Handle) { h.Strides[1] = 4 }, 4096, "not a multiple of the 8-byte element"},
		{"extent beyond nbytes", func(h *pb.Handle) { h.Shape[0] = 9 }, 4096, "reaches 576 bytes but nbytes is 512"},
		{"stride overflow", func(h *pb.Handle) { h.Strides[0] = 1 << 62 }, 4096, "overflows"},
		{"sum overflow", func(h *pb.Handle) {
			h.Shape = []uint64{3, 3}
			h.Strides = []uint64{1 << 62, 1 << 62}
		}, 4096, "overflows"},
		{"arrow with shape", func(h *pb.Handle) { h.Format = pb.Format_FORMAT_ARROW_IPC }, 4096, "no shape or strides"},
		{"no format", func(h *pb.Handle) { h.Format = pb.Format_FORMAT_UNSPECIFIED }, 4096, "unknown format"},
		{"short digest", func(h *pb.Handle) { h.Digest = []byte{1, 2, 3} }, 4096, "digest is 3 bytes"},
	}
	for _, c := range cases {
		h := base()
		c.mod(h)
		err := Validate(h, c.size)
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !errors.Is(err, ErrInvalidHandle) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q, want it to contain %q", c.name, err, c.want)
		}
	}
	if err := Validate(nil, 0); err == nil {
		t.Error("nil handle accepted")
	}
}

func TestValidateAccepts(t *testing.T) {
	cases := []struct {
		name string
		h    *pb.Handle
		size uint64
	}{
		{"grid", GridHandle(1, 4096, 0, pb.DType_DTYPE_U8, 64, 64, 0), 4096},
		{"grid at the end", GridHandle(1, 4096, 4096-64, pb.DType_DTYPE_U16, 4, 8, 0), 4096},
		{"empty grid in empty segment", GridHandle(1, 0, 0, pb.DType_DTYPE_F32, 0, 100, 0), 0},
		{"scalar", &pb.Handle{SegmentSize: 64, Nbytes: 8, Dtype: pb.DType_DTYPE_F64, Format: pb.Format_FORMAT_RAW}, 64},
		{"padded rows", &pb.Handle{SegmentSize: 4096, Nbytes: 3 * 64, Dtype: pb.DType_DTYPE_F32,
			Shape: []uint64{3, 10}, Strides: []uint64{64, 4}, Format: pb.Format_FORMAT_RAW}, 4096},
		{"column-major", &pb.Handle{SegmentSize: 4096, Nbytes: 6 * 4, Dtype: pb.DType_DTYPE_I32,
			Shape: []uint64{2, 3}, Strides: []uint64{4, 8}, Format: pb.Format_FORMAT_RAW}, 4096},
		{"arrow", &pb.Handle{SegmentSize: 1000, Nbytes: 1000, Format: pb.Format_FORMAT_ARROW_IPC,
			Kind: pb.PortKind_PORT_KIND_TABLE, Digest: make([]byte, 32)}, 1000},
	}
	for _, c := range cases {
		if err := Validate(c.h, c.size); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

func TestIsDense(t *testing.T) {
	dense := GridHandle(1, 1<<20, 0, pb.DType_DTYPE_F32, 10, 20, 0)
	if !IsDense(dense) {
		t.Fatal("grid not dense")
	}
	mods := map[string]func(h *pb.Handle){
		"padded rows":   func(h *pb.Handle) { h.Strides[0] = 96; h.Nbytes = 960 },
		"transposed":    func(h *pb.Handle) { h.Strides = []uint64{4, 40} },
		"nbytes larger": func(h *pb.Handle) { h.Nbytes += 4 },
		"arrow":         func(h *pb.Handle) { h.Format = pb.Format_FORMAT_ARROW_IPC },
		"no dtype":      func(h *pb.Handle) { h.Dtype = 0 },
		"rank mismatch": func(h *pb.Handle) { h.Strides = h.Strides[1:] },
	}
	for name, mod := range mods {
		h := proto.Clone(dense).(*pb.Handle)
		mod(h)
		if IsDense(h) {
			t.Errorf("%s: reported dense", name)
		}
	}
	h3 := &pb.Handle{Dtype: pb.DType_DTYPE_U16, Format: pb.Format_FORMAT_RAW, Nbytes: 2 * 3 * 4 * 2,
		Shape: []uint64{2, 3, 4}, Strides: []uint64{24, 8, 2}}
	if !IsDense(h3) {
		t.Error("3-D dense not recognised")
	}
}

// handleFromFuzz builds a handle from fuzz input; dims packs (shape, stride)
// pairs as little-endian uint64s.
func handleFromFuzz(segID, segSize, off, n uint64, dtype, format int32, dims []byte, digestLen uint8) *pb.Handle {
	h := &pb.Handle{SegmentId: segID, SegmentSize: segSize, Offset: off, Nbytes: n,
		Dtype: pb.DType(dtype), Format: pb.Format(format), Digest: make([]byte, digestLen%40)}
	for len(dims) >= 16 && len(h.Shape) < 8 {
		h.Shape = append(h.Shape, binary.LittleEndian.Uint64(dims))
		h.Strides = append(h.Strides, binary.LittleEndian.Uint64(dims[8:]))
		dims = dims[16:]
	}
	if len(dims) >= 8 {
		// An odd trailing word makes the ranks differ.
		h.Shape = append(h.Shape, binary.LittleEndian.Uint64(dims))
	}
	return h
}

func packDims(v ...uint64) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint64(b, x)
	}
	return b
}

// FuzzValidate checks Validate against an independent big-integer model of
// the rules: whatever it accepts really lies inside the segment.
func FuzzValidate(f *testing.F) {
	f.Add(uint64(7), uint64(4096), uint64(64), uint64(512), int32(2), int32(1), packDims(8, 64, 8, 8), uint8(0), uint64(4096))
	f.Add(uint64(1), uint64(0), uint64(0), uint64(0), int32(1), int32(1), packDims(0, 400, 100, 4), uint8(32), uint64(0))
	f.Add(uint64(2), uint64(1000), uint64(0), uint64(1000), int32(0), int32(2), []byte{}, uint8(32), uint64(1000))
	f.Add(uint64(3), uint64(4096), uint64(65), uint64(8), int32(2), int32(1), []byte{}, uint8(0), uint64(4096))
	f.Add(uint64(4), uint64(1<<40), uint64(0), uint64(1<<40), int32(5), int32(1), packDims(3, 1<<62, 3, 1<<62), uint8(0), uint64(1<<40))
	f.Add(uint64(5), uint64(math.MaxUint64), uint64(math.MaxUint64-63), uint64(64), int32(7), int32(1), packDims(64, 1), uint8(0), uint64(math.MaxUint64))
	f.Add(uint64(6), uint64(4096), uint64(0), uint64(24), int32(5), int32(1), packDims(2, 4, 3, 8), uint8(0), uint64(4096))
	f.Fuzz(func(t *testing.T, segID, segSize, off, n uint64, dtype, format int32, dims []byte, digestLen uint8, real uint64) {
		h := handleFromFuzz(segID, segSize, off, n, dtype, format, dims, digestLen)
		err := Validate(h, real)
		if err != nil {
			if !errors.Is(err, ErrInvalidHandle) {
				t.Fatalf("error does not wrap ErrInvalidHandle: %v", err)
			}
			return
		}
		if h.SegmentSize != real || off%Align != 0 {
			t.Fatalf("accepted size %d/%d offset %d", h.SegmentSize, real, off)
		}
		end := new(big.Int).Add(new(big.Int).SetUint64(off), new(big.Int).SetUint64(n))
		if end.Cmp(new(big.Int).SetUint64(real)) > 0 {
			t.Fatalf("accepted range %d+%d beyond %d", off, n, real)
		}
		switch h.Format {
		case pb.Format_FORMAT_RAW:
			es := DTypeSize(h.Dtype)
			if es == 0 || len(h.Shape) != len(h.Strides) {
				t.Fatalf("accepted dtype %v ranks %d/%d", h.Dtype, len(h.Shape), len(h.Strides))
			}
			extent := big.NewInt(int64(es))
			empty := false
			for i, d := range h.Shape {
				st := h.Strides[i]
				if st == 0 || st%uint64(es) != 0 {
					t.Fatalf("accepted stride %d", st)
				}
				if d == 0 {
					empty = true
				}
				term := new(big.Int).Mul(new(big.Int).Sub(new(big.Int).SetUint64(d), big.NewInt(1)), new(big.Int).SetUint64(st))
				extent.Add(extent, term)
			}
			if !empty && extent.Cmp(new(big.Int).SetUint64(n)) > 0 {
				t.Fatalf("accepted extent %v > nbytes %d", extent, n)
			}
			if IsDense(h) {
				elems := big.NewInt(int64(es))
				for _, d := range h.Shape {
					elems.Mul(elems, new(big.Int).SetUint64(d))
				}
				if elems.Cmp(new(big.Int).SetUint64(n)) != 0 {
					t.Fatalf("dense with %v element bytes but nbytes %d", elems, n)
				}
			}
		case pb.Format_FORMAT_ARROW_IPC:
			if len(h.Shape) != 0 || len(h.Strides) != 0 {
				t.Fatal("accepted arrow handle with shape")
			}
		default:
			t.Fatalf("accepted format %v", h.Format)
		}
	})
}
