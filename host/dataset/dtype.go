package dataset

import (
	"encoding/binary"
	"fmt"
	"math"
)

// DType is the element type of a grid. Values are stored little-endian.
type DType uint8

// The element types a grid may have. Which of them a format can hold is listed with each
// writer; a grid of another type is rejected before anything is written.
const (
	Float32 DType = iota + 1
	Float64
	Int8
	Int16
	Int32
	Int64
	Uint8
	Uint16
	Uint32
	Uint64
)

var dtypeInfo = map[DType]struct {
	name  string
	size  int
	float bool
	sign  bool
}{
	Float32: {"float32", 4, true, true},
	Float64: {"float64", 8, true, true},
	Int8:    {"int8", 1, false, true},
	Int16:   {"int16", 2, false, true},
	Int32:   {"int32", 4, false, true},
	Int64:   {"int64", 8, false, true},
	Uint8:   {"uint8", 1, false, false},
	Uint16:  {"uint16", 2, false, false},
	Uint32:  {"uint32", 4, false, false},
	Uint64:  {"uint64", 8, false, false},
}

// String returns the NumPy-style name ("float32", "uint16", ...).
func (d DType) String() string {
	if i, ok := dtypeInfo[d]; ok {
		return i.name
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// Size is the element size in bytes, 0 for an unknown type.
func (d DType) Size() int { return dtypeInfo[d].size }

// IsFloat reports whether d is a floating-point type.
func (d DType) IsFloat() bool { return dtypeInfo[d].float }

// IsSigned reports whether d can hold negative values.
func (d DType) IsSigned() bool { return dtypeInfo[d].sign }

func (d DType) valid() bool { _, ok := dtypeInfo[d]; return ok }

// ParseDType accepts the NumPy-style names returned by String.
func ParseDType(s string) (DType, error) {
	for d, i := range dtypeInfo {
		if i.name == s {
			return d, nil
		}
	}
	return 0, fmt.Errorf("unknown dtype %q", s)
}

// Grid is a dense 2-D array in row-major order: Height rows of Width little-endian elements.
// Data is only read, never copied whole, so it may be a read-only memory mapping.
type Grid struct {
	Data   []byte
	Width  int
	Height int
	DType  DType
}

func (g Grid) check(what string) error {
	if !g.DType.valid() {
		return fmt.Errorf("%s: unknown dtype %d", what, g.DType)
	}
	if g.Width <= 0 || g.Height <= 0 {
		return fmt.Errorf("%s: grid is %d×%d, both sides must be positive", what, g.Width, g.Height)
	}
	want := uint64(g.Width) * uint64(g.Height) * uint64(g.DType.Size())
	if uint64(len(g.Data)) != want {
		return fmt.Errorf("%s: %d×%d %s grid needs %d bytes, got %d", what, g.Width, g.Height, g.DType, want, len(g.Data))
	}
	return nil
}

// row returns the bytes of row y.
func (g Grid) row(y int) []byte {
	n := g.Width * g.DType.Size()
	return g.Data[y*n : (y+1)*n]
}

// decodeRow converts a row of little-endian elements to float64. Every supported type up to
// 32 bits converts exactly; 64-bit integers may round, which only previews accept.
func decodeRow(dt DType, src []byte, dst []float64) {
	switch dt {
	case Float32:
		for i := range dst {
			dst[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:])))
		}
	case Float64:
		for i := range dst {
			dst[i] = math.Float64frombits(binary.LittleEndian.Uint64(src[8*i:]))
		}
	case Int8:
		for i := range dst {
			dst[i] = float64(int8(src[i]))
		}
	case Uint8:
		for i := range dst {
			dst[i] = float64(src[i])
		}
	case Int16:
		for i := range dst {
			dst[i] = float64(int16(binary.LittleEndian.Uint16(src[2*i:])))
		}
	case Uint16:
		for i := range dst {
			dst[i] = float64(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case Int32:
		for i := range dst {
			dst[i] = float64(int32(binary.LittleEndian.Uint32(src[4*i:])))
		}
	case Uint32:
		for i := range dst {
			dst[i] = float64(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case Int64:
		for i := range dst {
			dst[i] = float64(int64(binary.LittleEndian.Uint64(src[8*i:])))
		}
	case Uint64:
		for i := range dst {
			dst[i] = float64(binary.LittleEndian.Uint64(src[8*i:]))
		}
	}
}

// encodeRow is the inverse of decodeRow for the types up to 32 bits and the floats. Integer
// values are rounded half away from zero and clamped to the type's range.
func encodeRow(dt DType, src []float64, dst []byte) {
	switch dt {
	case Float32:
		for i, v := range src {
			binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(float32(v)))
		}
	case Float64:
		for i, v := range src {
			binary.LittleEndian.PutUint64(dst[8*i:], math.Float64bits(v))
		}
	case Int8:
		for i, v := range src {
			dst[i] = byte(int8(clampRound(v, math.MinInt8, math.MaxInt8)))
		}
	case Uint8:
		for i, v := range src {
			dst[i] = byte(clampRound(v, 0, math.MaxUint8))
		}
	case Int16:
		for i, v := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], uint16(int16(clampRound(v, math.MinInt16, math.MaxInt16))))
		}
	case Uint16:
		for i, v := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], uint16(clampRound(v, 0, math.MaxUint16)))
		}
	case Int32:
		for i, v := range src {
			binary.LittleEndian.PutUint32(dst[4*i:], uint32(int32(clampRound(v, math.MinInt32, math.MaxInt32))))
		}
	case Uint32:
		for i, v := range src {
			binary.LittleEndian.PutUint32(dst[4*i:], uint32(clampRound(v, 0, math.MaxUint32)))
		}
	default:
		panic("encodeRow: unsupported dtype " + dt.String())
	}
}

func clampRound(v, lo, hi float64) int64 {
	if math.IsNaN(v) {
		return 0
	}
	return int64(math.Max(lo, math.Min(hi, math.Round(v))))
}

// representable reports whether v can be stored in dt without change.
func representable(dt DType, v float64) bool {
	switch dt {
	case Float64:
		return true
	case Float32:
		return math.IsNaN(v) || math.IsInf(v, 0) || float64(float32(v)) == v
	case Int8:
		return v == math.Trunc(v) && v >= math.MinInt8 && v <= math.MaxInt8
	case Uint8:
		return v == math.Trunc(v) && v >= 0 && v <= math.MaxUint8
	case Int16:
		return v == math.Trunc(v) && v >= math.MinInt16 && v <= math.MaxInt16
	case Uint16:
		return v == math.Trunc(v) && v >= 0 && v <= math.MaxUint16
	case Int32:
		return v == math.Trunc(v) && v >= math.MinInt32 && v <= math.MaxInt32
	case Uint32:
		return v == math.Trunc(v) && v >= 0 && v <= math.MaxUint32
	}
	return false
}
