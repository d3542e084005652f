package shm

import (
	"errors"
	"fmt"
	"math/bits"
	"reflect"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// Align is the byte alignment of every buffer inside a segment. Mappings are
// page aligned, so an offset that is a multiple of Align keeps buffers ready
// for SIMD loads and Arrow's alignment rules.
const Align = 64

// DigestSize is the length of Handle.digest (SHA-256) when present.
const DigestSize = 32

// ErrInvalidHandle is wrapped by every Validate error.
var ErrInvalidHandle = errors.New("invalid handle")

// DTypeSize is the size in bytes of one element of dt, or 0 for an unknown
// or unspecified dtype.
func DTypeSize(dt pb.DType) int {
	switch dt {
	case pb.DType_DTYPE_I8, pb.DType_DTYPE_U8:
		return 1
	case pb.DType_DTYPE_I16, pb.DType_DTYPE_U16:
		return 2
	case pb.DType_DTYPE_F32, pb.DType_DTYPE_I32, pb.DType_DTYPE_U32:
		return 4
	case pb.DType_DTYPE_F64, pb.DType_DTYPE_I64, pb.DType_DTYPE_U64:
		return 8
	}
	return 0
}

// DTypeFor is the dtype whose elements a []T holds.
func DTypeFor[T Elem]() pb.DType {
	switch reflect.TypeFor[T]().Kind() {
	case reflect.Int8:
		return pb.DType_DTYPE_I8
	case reflect.Int16:
		return pb.DType_DTYPE_I16
	case reflect.Int32:
		return pb.DType_DTYPE_I32
	case reflect.Int64:
		return pb.DType_DTYPE_I64
	case reflect.Uint8:
		return pb.DType_DTYPE_U8
	case reflect.Uint16:
		return pb.DType_DTYPE_U16
	case reflect.Uint32:
		return pb.DType_DTYPE_U32
	case reflect.Uint64:
		return pb.DType_DTYPE_U64
	case reflect.Float32:
		return pb.DType_DTYPE_F32
	case reflect.Float64:
		return pb.DType_DTYPE_F64
	}
	return pb.DType_DTYPE_UNSPECIFIED
}

// GridHandle describes a dense row-major height×width grid of dt elements at
// byte offset off of segment segID (segSize bytes long).
func GridHandle(segID, segSize, off uint64, dt pb.DType, height, width uint64, level uint32) *pb.Handle {
	es := uint64(DTypeSize(dt))
	return &pb.Handle{
		SegmentId:   segID,
		SegmentSize: segSize,
		Offset:      off,
		Nbytes:      height * width * es,
		Dtype:       dt,
		Shape:       []uint64{height, width},
		Strides:     []uint64{width * es, es},
		Kind:        pb.PortKind_PORT_KIND_GRID,
		Level:       level,
		Format:      pb.Format_FORMAT_RAW,
	}
}

// AdoptedHandle is the handle a plugin returns for a dynamic output of kind
// (a table or a blob) whose segment of size bytes it sent by ADOPT
// (docs/protocol.md, "Dynamic outputs"): the whole segment from offset 0,
// segment_id 0 (the host assigns one); a table is Arrow IPC, a blob raw u8
// bytes of shape [size].
func AdoptedHandle(kind pb.PortKind, size uint64) *pb.Handle {
	h := &pb.Handle{SegmentSize: size, Nbytes: size, Kind: kind}
	if kind == pb.PortKind_PORT_KIND_TABLE {
		h.Format = pb.Format_FORMAT_ARROW_IPC
		return h
	}
	h.Kind = pb.PortKind_PORT_KIND_BLOB
	h.Format = pb.Format_FORMAT_RAW
	h.Dtype, h.Shape, h.Strides = pb.DType_DTYPE_U8, []uint64{size}, []uint64{1}
	return h
}

// Validate checks a handle against the real size of its segment before any
// memory is touched. The rules (docs/protocol.md):
//
//   - segment_size equals the segment's real size;
//   - offset is a multiple of Align, and offset+nbytes ≤ segment_size;
//   - digest, when present, is DigestSize bytes;
//   - FORMAT_RAW: a known dtype; shape and strides of equal length; every
//     stride non-zero and a multiple of the element size (strides are in
//     bytes); the extent the shape and strides reach, Σ(shape[i]-1)·strides[i]
//     plus one element, is ≤ nbytes (0 if any dimension is 0; one element for
//     an empty shape);
//   - FORMAT_ARROW_IPC: no shape and no strides;
//   - any other format is rejected.
//
// All arithmetic is overflow-checked.
func Validate(h *pb.Handle, segmentSize uint64) error {
	if h == nil {
		return fmt.Errorf("%w: missing handle", ErrInvalidHandle)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w for segment %d: %s", ErrInvalidHandle, h.GetSegmentId(), fmt.Sprintf(format, args...))
	}
	if h.GetSegmentSize() != segmentSize {
		return bad("segment_size %d does not match the segment's real size %d", h.GetSegmentSize(), segmentSize)
	}
	off, n := h.GetOffset(), h.GetNbytes()
	if off%Align != 0 {
		return bad("offset %d is not %d-byte aligned", off, Align)
	}
	end, carry := bits.Add64(off, n, 0)
	if carry != 0 || end > segmentSize {
		return bad("offset %d + nbytes %d runs past the segment's %d bytes", off, n, segmentSize)
	}
	if d := len(h.GetDigest()); d != 0 && d != DigestSize {
		return bad("digest is %d bytes, want %d (SHA-256)", d, DigestSize)
	}
	shape, strides := h.GetShape(), h.GetStrides()
	switch h.GetFormat() {
	case pb.Format_FORMAT_RAW:
		es := uint64(DTypeSize(h.GetDtype()))
		if es == 0 {
			return bad("raw buffer has unknown dtype %v", h.GetDtype())
		}
		if len(shape) != len(strides) {
			return bad("shape has %d dimensions but strides has %d", len(shape), len(strides))
		}
		extent, err := rawExtent(shape, strides, es)
		if err != nil {
			return bad("%v", err)
		}
		if extent > n {
			return bad("shape %v with strides %v reaches %d bytes but nbytes is %d", shape, strides, extent, n)
		}
	case pb.Format_FORMAT_ARROW_IPC:
		if len(shape) != 0 || len(strides) != 0 {
			return bad("an Arrow IPC buffer has no shape or strides (got shape %v, strides %v)", shape, strides)
		}
	default:
		return bad("unknown format %v", h.GetFormat())
	}
	return nil
}

// rawExtent is the number of bytes from the first element to the end of the
// last one, or an error when a stride is invalid or the sum overflows.
func rawExtent(shape, strides []uint64, es uint64) (uint64, error) {
	for i, st := range strides {
		if st == 0 {
			return 0, fmt.Errorf("stride %d is 0 (strides must be positive)", i)
		}
		if st%es != 0 {
			return 0, fmt.Errorf("stride %d is %d bytes, not a multiple of the %d-byte element", i, st, es)
		}
	}
	for _, d := range shape {
		if d == 0 {
			return 0, nil
		}
	}
	extent := es
	for i, d := range shape {
		hi, lo := bits.Mul64(d-1, strides[i])
		if hi != 0 {
			return 0, fmt.Errorf("dimension %d (%d × stride %d) overflows", i, d, strides[i])
		}
		var carry uint64
		extent, carry = bits.Add64(extent, lo, 0)
		if carry != 0 {
			return 0, fmt.Errorf("shape %v with strides %v overflows", shape, strides)
		}
	}
	return extent, nil
}

// IsDense reports whether a FORMAT_RAW handle is C-contiguous: the last
// stride is the element size, each other stride is the next one times the
// next dimension, and nbytes covers all elements exactly. Call it after
// Validate; it returns false for anything Validate would reject.
func IsDense(h *pb.Handle) bool {
	if h.GetFormat() != pb.Format_FORMAT_RAW {
		return false
	}
	es := uint64(DTypeSize(h.GetDtype()))
	shape, strides := h.GetShape(), h.GetStrides()
	if es == 0 || len(shape) != len(strides) {
		return false
	}
	want := es
	for i := len(shape) - 1; i >= 0; i-- {
		if strides[i] != want {
			return false
		}
		hi, lo := bits.Mul64(want, shape[i])
		if hi != 0 {
			return false
		}
		want = lo
	}
	return h.GetNbytes() == want
}
