package sdk

import (
	"fmt"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// The author API speaks in these types; the wire (package pipehostv1) stays
// inside the SDK, so a stage never imports generated protobuf code. Each
// value equals its wire enum number, which keeps the conversion a cast.

// DType is an element type of a grid.
type DType int32

// Element types.
const (
	F32 = DType(pb.DType_DTYPE_F32)
	F64 = DType(pb.DType_DTYPE_F64)
	I8  = DType(pb.DType_DTYPE_I8)
	I16 = DType(pb.DType_DTYPE_I16)
	I32 = DType(pb.DType_DTYPE_I32)
	I64 = DType(pb.DType_DTYPE_I64)
	U8  = DType(pb.DType_DTYPE_U8)
	U16 = DType(pb.DType_DTYPE_U16)
	U32 = DType(pb.DType_DTYPE_U32)
	U64 = DType(pb.DType_DTYPE_U64)
)

var dtypeNames = map[DType]string{
	F32: "f32", F64: "f64", I8: "i8", I16: "i16", I32: "i32", I64: "i64",
	U8: "u8", U16: "u16", U32: "u32", U64: "u64",
}

// String is the dtype's name as configs and docs write it, e.g. "f32".
func (d DType) String() string {
	if s, ok := dtypeNames[d]; ok {
		return s
	}
	return fmt.Sprintf("dtype(%d)", int32(d))
}

func (d DType) wire() pb.DType { return pb.DType(d) }

// PortKind says what a port carries.
type PortKind int32

// Port kinds.
const (
	// GridKind is a dense 2-D array at one pyramid level.
	GridKind = PortKind(pb.PortKind_PORT_KIND_GRID)
	// TableKind is an Arrow IPC file.
	TableKind = PortKind(pb.PortKind_PORT_KIND_TABLE)
	// BlobKind is opaque bytes.
	BlobKind = PortKind(pb.PortKind_PORT_KIND_BLOB)
)

// String is "grid", "table" or "blob".
func (k PortKind) String() string {
	switch k {
	case GridKind:
		return "grid"
	case TableKind:
		return "table"
	case BlobKind:
		return "blob"
	}
	return fmt.Sprintf("port kind(%d)", int32(k))
}

// Format is how a buffer's bytes are laid out.
type Format int32

// Buffer formats.
const (
	// Raw is plain elements (a grid) or bytes (a blob).
	Raw = Format(pb.Format_FORMAT_RAW)
	// ArrowIPC is an Arrow IPC file (a table).
	ArrowIPC = Format(pb.Format_FORMAT_ARROW_IPC)
)

// String is "raw" or "arrow-ipc".
func (f Format) String() string {
	switch f {
	case Raw:
		return "raw"
	case ArrowIPC:
		return "arrow-ipc"
	}
	return fmt.Sprintf("format(%d)", int32(f))
}

// LogLevel is the level of a log line in the run log.
type LogLevel int32

// Log levels.
const (
	LevelDebug = LogLevel(pb.LogLevel_LOG_LEVEL_DEBUG)
	LevelInfo  = LogLevel(pb.LogLevel_LOG_LEVEL_INFO)
	LevelWarn  = LogLevel(pb.LogLevel_LOG_LEVEL_WARN)
	LevelError = LogLevel(pb.LogLevel_LOG_LEVEL_ERROR)
)

// String is "debug", "info", "warn" or "error".
func (l LogLevel) String() string {
	switch l {
	case LevelDebug:
		return "debug"
	case LevelInfo:
		return "info"
	case LevelWarn:
		return "warn"
	case LevelError:
		return "error"
	}
	return fmt.Sprintf("level(%d)", int32(l))
}

// BufferInfo describes an input's bytes: what InputBytes returns beside
// them. Shape and Strides are in elements' order (rows first) and Strides
// in bytes, like NumPy.
type BufferInfo struct {
	Kind    PortKind
	Format  Format
	DType   DType // grids and raw blobs
	Shape   []int
	Strides []int
	Level   int // grids: the pyramid level
	Nbytes  int
}

func bufferInfo(h *pb.Handle) BufferInfo {
	bi := BufferInfo{
		Kind: PortKind(h.GetKind()), Format: Format(h.GetFormat()), DType: DType(h.GetDtype()),
		Level: int(h.GetLevel()), Nbytes: int(h.GetNbytes()),
	}
	for _, s := range h.GetShape() {
		bi.Shape = append(bi.Shape, int(s))
	}
	for _, s := range h.GetStrides() {
		bi.Strides = append(bi.Strides, int(s))
	}
	return bi
}
