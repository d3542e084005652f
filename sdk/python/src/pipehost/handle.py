"""Handle validation (docs/protocol.md, "Handles"): every buffer a Run names
is checked against the real size of its segment before any byte of it is
touched. The accept/reject decisions are the Go host's (``shm.Validate``),
pinned by testdata/handles.json.

Arithmetic is on unbounded Python integers checked against 2^64, so an
overflow is an error, never a wrap-around.
"""

from __future__ import annotations

import numpy as np  # under the host a placeholder until the first Run (pipehost._lazy)

from ._proto.pipehost.v1 import stage_pb2 as pb

#: Byte alignment of every buffer inside a segment.
ALIGN = 64
#: Length of ``Handle.digest`` when present (SHA-256).
DIGEST_SIZE = 32
_U64 = 1 << 64

#: DType wire value → (name, numpy little-endian dtype string, element size).
#: Strings, not ``np.dtype`` objects: a plugin describes itself without numpy.
DTYPE_INFO = {
    pb.DTYPE_F32: ("f32", "<f4", 4),
    pb.DTYPE_F64: ("f64", "<f8", 8),
    pb.DTYPE_I8: ("i8", "i1", 1),
    pb.DTYPE_I16: ("i16", "<i2", 2),
    pb.DTYPE_I32: ("i32", "<i4", 4),
    pb.DTYPE_I64: ("i64", "<i8", 8),
    pb.DTYPE_U8: ("u8", "u1", 1),
    pb.DTYPE_U16: ("u16", "<u2", 2),
    pb.DTYPE_U32: ("u32", "<u4", 4),
    pb.DTYPE_U64: ("u64", "<u8", 8),
}
#: DType name ("f32", ...) → wire value.
DTYPE_BY_NAME = {name: v for v, (name, _, _) in DTYPE_INFO.items()}
_NUMPY_DTYPES: dict = {}


def numpy_dtype(dtype: int):
    """The numpy dtype of a wire dtype (KeyError for an unknown one)."""
    d = _NUMPY_DTYPES.get(dtype)
    if d is None:
        d = _NUMPY_DTYPES[dtype] = np.dtype(DTYPE_INFO[dtype][1])
    return d


def dtype_size(dtype: int) -> int | None:
    """Element size of a wire dtype, or None for an unknown one."""
    d = DTYPE_INFO.get(dtype)
    return d[2] if d else None


def dtype_name(dtype: int) -> str:
    d = DTYPE_INFO.get(dtype)
    return d[0] if d else f"unknown dtype {dtype}"


class InvalidHandle(ValueError):
    """A rejected handle: the rule it broke (``reason``, the class names of
    testdata/handles.json) and a sentence naming the segment."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def validate(h, segment_size: int) -> None:
    """Checks a handle (``pb.Handle`` or None) against the real size of its
    segment; raises :class:`InvalidHandle`."""
    if h is None:
        raise InvalidHandle("missing", "invalid handle: missing handle")

    def bad(reason, what):
        return InvalidHandle(reason, f"invalid handle for segment {h.segment_id}: {what}")

    if h.segment_size != segment_size:
        raise bad("segment_size",
                  f"segment_size {h.segment_size} does not match the segment's real size {segment_size}")
    off, n = h.offset, h.nbytes
    if off % ALIGN:
        raise bad("unaligned_offset", f"offset {off} is not {ALIGN}-byte aligned")
    if off + n >= _U64 or off + n > segment_size:
        raise bad("out_of_bounds", f"offset {off} + nbytes {n} runs past the segment's {segment_size} bytes")
    d = len(h.digest)
    if d not in (0, DIGEST_SIZE):
        raise bad("digest_length", f"digest is {d} bytes, want {DIGEST_SIZE} (SHA-256)")
    if h.format == pb.FORMAT_RAW:
        es = dtype_size(h.dtype)
        if es is None:
            raise bad("unknown_dtype", f"raw buffer has unknown dtype {h.dtype}")
        shape, strides = list(h.shape), list(h.strides)
        if len(shape) != len(strides):
            raise bad("rank_mismatch", f"shape has {len(shape)} dimensions but strides has {len(strides)}")
        for i, st in enumerate(strides):
            if st == 0:
                raise bad("zero_stride", f"stride {i} is 0 (strides must be positive)")
            if st % es:
                raise bad("stride_not_multiple", f"stride {i} is {st} bytes, not a multiple of the {es}-byte element")
        if 0 in shape:
            return
        extent = es
        for i, (dim, st) in enumerate(zip(shape, strides)):
            span = (dim - 1) * st
            if span >= _U64:
                raise bad("overflow", f"dimension {i} ({dim} × stride {st}) overflows")
            extent += span
            if extent >= _U64:
                raise bad("overflow", f"shape {shape} with strides {strides} overflows")
        if extent > n:
            raise bad("extent_exceeds_nbytes", f"shape {shape} with strides {strides} reaches {extent} bytes but nbytes is {n}")
    elif h.format == pb.FORMAT_ARROW_IPC:
        if len(h.shape) or len(h.strides):
            raise bad("arrow_shape", "an Arrow IPC buffer has no shape or strides "
                      f"(got shape {list(h.shape)}, strides {list(h.strides)})")
    else:
        raise bad("unknown_format", f"unknown format {h.format}")


def is_dense(h) -> bool:
    """Whether a raw handle is dense (C-contiguous)."""
    if h.format != pb.FORMAT_RAW or len(h.shape) != len(h.strides):
        return False
    want = dtype_size(h.dtype)
    if want is None:
        return False
    for i in range(len(h.shape) - 1, -1, -1):
        if h.strides[i] != want:
            return False
        want *= h.shape[i]
        if want >= _U64:
            return False
    return h.nbytes == want


def grid_handle(segment_id: int, segment_size: int, offset: int, dtype: int,
                height: int, width: int, level: int = 0):
    """A dense row-major ``height × width`` grid handle of wire ``dtype``."""
    es = dtype_size(dtype)
    return pb.Handle(segment_id=segment_id, segment_size=segment_size, offset=offset,
                     nbytes=height * width * es, dtype=dtype, shape=[height, width],
                     strides=[width * es, es], kind=pb.PORT_KIND_GRID, level=level,
                     format=pb.FORMAT_RAW)


def adopted_handle(kind: int, size: int):
    """The handle of a dynamic output of ``kind`` (table or blob) whose
    segment of ``size`` bytes goes to the host by ADOPT: the whole segment,
    ``segment_id`` 0 (the host assigns one); a table is Arrow IPC, a blob raw
    u8 bytes of shape [size]. testdata/adopted.json pins it."""
    h = pb.Handle(segment_size=size, nbytes=size)
    if kind == pb.PORT_KIND_TABLE:
        h.kind, h.format = pb.PORT_KIND_TABLE, pb.FORMAT_ARROW_IPC
    else:
        h.kind, h.format, h.dtype = pb.PORT_KIND_BLOB, pb.FORMAT_RAW, pb.DTYPE_U8
        h.shape.append(size)
        h.strides.append(1)
    return h
