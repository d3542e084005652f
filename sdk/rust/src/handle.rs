//! Handle validation (docs/protocol.md, "Handles"): every buffer a Run names
//! is checked against the real size of its segment before any byte of it is
//! touched. The accept/reject decisions are the Go host's (`shm.Validate`),
//! pinned by testdata/handles.json.

use std::fmt;

use crate::pb;

/// Byte alignment of every buffer inside a segment.
pub const ALIGN: u64 = 64;
/// Length of `Handle.digest` when present (SHA-256).
pub const DIGEST_SIZE: usize = 32;

/// The size in bytes of one element of a dtype (`pb::DType as i32`), or
/// `None` for an unknown or unspecified dtype.
pub fn dtype_size(dtype: i32) -> Option<u64> {
    crate::DType::from_proto(dtype).map(|d| d.size() as u64)
}

/// Which rule a rejected handle broke: the reason classes of
/// testdata/handles.json, in the order the rules are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No handle at all.
    Missing,
    /// Rule 1: `segment_size` is not the segment's real size.
    SegmentSize,
    /// Rule 2: `offset` is not a multiple of 64.
    UnalignedOffset,
    /// Rule 3: `offset + nbytes` runs past the segment (or overflows).
    OutOfBounds,
    /// Rule 4: `digest` is neither empty nor 32 bytes.
    DigestLength,
    /// Rule 5: `format` is neither raw nor Arrow IPC.
    UnknownFormat,
    /// Rule 6.1: a raw buffer's dtype is unknown.
    UnknownDType,
    /// Rule 6.2: `shape` and `strides` differ in length.
    RankMismatch,
    /// Rule 6.3: a stride is 0.
    ZeroStride,
    /// Rule 6.3: a stride is not a multiple of the element size.
    StrideNotMultiple,
    /// Rule 6.4: computing the extent overflows 64 bits.
    Overflow,
    /// Rule 6.4: the extent exceeds `nbytes`.
    ExtentExceedsNbytes,
    /// Rule 7: an Arrow IPC buffer has a shape or strides.
    ArrowShape,
}

impl Reason {
    /// The class name used in testdata/handles.json.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::SegmentSize => "segment_size",
            Reason::UnalignedOffset => "unaligned_offset",
            Reason::OutOfBounds => "out_of_bounds",
            Reason::DigestLength => "digest_length",
            Reason::UnknownFormat => "unknown_format",
            Reason::UnknownDType => "unknown_dtype",
            Reason::RankMismatch => "rank_mismatch",
            Reason::ZeroStride => "zero_stride",
            Reason::StrideNotMultiple => "stride_not_multiple",
            Reason::Overflow => "overflow",
            Reason::ExtentExceedsNbytes => "extent_exceeds_nbytes",
            Reason::ArrowShape => "arrow_shape",
        }
    }
}

/// A rejected handle: the rule it broke and a sentence naming the segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidHandle {
    pub reason: Reason,
    pub message: String,
}

impl fmt::Display for InvalidHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InvalidHandle {}

/// Checks a handle against the real size of its segment. All arithmetic is
/// on u64 and overflow is an error, never a wrap-around.
pub fn validate(h: Option<&pb::Handle>, segment_size: u64) -> Result<(), InvalidHandle> {
    let Some(h) = h else {
        return Err(InvalidHandle {
            reason: Reason::Missing,
            message: "invalid handle: missing handle".into(),
        });
    };
    let bad = |reason: Reason, what: String| InvalidHandle {
        reason,
        message: format!("invalid handle for segment {}: {what}", h.segment_id),
    };
    if h.segment_size != segment_size {
        return Err(bad(
            Reason::SegmentSize,
            format!(
                "segment_size {} does not match the segment's real size {segment_size}",
                h.segment_size
            ),
        ));
    }
    let (off, n) = (h.offset, h.nbytes);
    if off % ALIGN != 0 {
        return Err(bad(
            Reason::UnalignedOffset,
            format!("offset {off} is not {ALIGN}-byte aligned"),
        ));
    }
    match off.checked_add(n) {
        Some(end) if end <= segment_size => {}
        _ => {
            return Err(bad(
                Reason::OutOfBounds,
                format!("offset {off} + nbytes {n} runs past the segment's {segment_size} bytes"),
            ))
        }
    }
    let d = h.digest.len();
    if d != 0 && d != DIGEST_SIZE {
        return Err(bad(
            Reason::DigestLength,
            format!("digest is {d} bytes, want {DIGEST_SIZE} (SHA-256)"),
        ));
    }
    match pb::Format::try_from(h.format) {
        Ok(pb::Format::Raw) => {
            let Some(es) = dtype_size(h.dtype) else {
                return Err(bad(
                    Reason::UnknownDType,
                    format!("raw buffer has unknown dtype {}", h.dtype),
                ));
            };
            if h.shape.len() != h.strides.len() {
                return Err(bad(
                    Reason::RankMismatch,
                    format!(
                        "shape has {} dimensions but strides has {}",
                        h.shape.len(),
                        h.strides.len()
                    ),
                ));
            }
            let extent = raw_extent(&h.shape, &h.strides, es).map_err(|(r, m)| bad(r, m))?;
            if extent > n {
                return Err(bad(
                    Reason::ExtentExceedsNbytes,
                    format!(
                        "shape {:?} with strides {:?} reaches {extent} bytes but nbytes is {n}",
                        h.shape, h.strides
                    ),
                ));
            }
        }
        Ok(pb::Format::ArrowIpc) => {
            if !h.shape.is_empty() || !h.strides.is_empty() {
                return Err(bad(
                    Reason::ArrowShape,
                    format!(
                        "an Arrow IPC buffer has no shape or strides (got shape {:?}, strides {:?})",
                        h.shape, h.strides
                    ),
                ));
            }
        }
        _ => {
            return Err(bad(
                Reason::UnknownFormat,
                format!("unknown format {}", h.format),
            ))
        }
    }
    Ok(())
}

/// Bytes from the first element to the end of the last one.
fn raw_extent(shape: &[u64], strides: &[u64], es: u64) -> Result<u64, (Reason, String)> {
    for (i, &st) in strides.iter().enumerate() {
        if st == 0 {
            return Err((
                Reason::ZeroStride,
                format!("stride {i} is 0 (strides must be positive)"),
            ));
        }
        if st % es != 0 {
            return Err((
                Reason::StrideNotMultiple,
                format!("stride {i} is {st} bytes, not a multiple of the {es}-byte element"),
            ));
        }
    }
    if shape.contains(&0) {
        return Ok(0);
    }
    let mut extent = es;
    for (i, (&d, &st)) in shape.iter().zip(strides).enumerate() {
        let span = (d - 1).checked_mul(st).ok_or_else(|| {
            (
                Reason::Overflow,
                format!("dimension {i} ({d} × stride {st}) overflows"),
            )
        })?;
        extent = extent.checked_add(span).ok_or_else(|| {
            (
                Reason::Overflow,
                format!("shape {shape:?} with strides {strides:?} overflows"),
            )
        })?;
    }
    Ok(extent)
}

/// Whether a raw handle is dense (C-contiguous): the last stride is the
/// element size, each other stride the next one times the next dimension, and
/// `nbytes` covers all elements exactly. False for anything `validate` rejects.
pub fn is_dense(h: &pb::Handle) -> bool {
    if h.format != pb::Format::Raw as i32 || h.shape.len() != h.strides.len() {
        return false;
    }
    let Some(mut want) = dtype_size(h.dtype) else {
        return false;
    };
    for i in (0..h.shape.len()).rev() {
        if h.strides[i] != want {
            return false;
        }
        match want.checked_mul(h.shape[i]) {
            Some(w) => want = w,
            None => return false,
        }
    }
    h.nbytes == want
}

/// The handle of a dynamic output of `kind` (table or blob) whose segment of
/// `size` bytes goes to the host by ADOPT: the whole segment, `segment_id` 0
/// (the host assigns one); a table is Arrow IPC, a blob raw u8 bytes of
/// shape `[size]`. testdata/adopted.json pins it.
pub fn adopted_handle(kind: pb::PortKind, size: u64) -> pb::Handle {
    let mut h = pb::Handle {
        segment_size: size,
        nbytes: size,
        ..Default::default()
    };
    if kind == pb::PortKind::Table {
        h.kind = pb::PortKind::Table as i32;
        h.format = pb::Format::ArrowIpc as i32;
    } else {
        h.kind = pb::PortKind::Blob as i32;
        h.format = pb::Format::Raw as i32;
        h.dtype = pb::DType::DtypeU8 as i32;
        h.shape = vec![size];
        h.strides = vec![1];
    }
    h
}

/// A dense row-major `height × width` grid handle of `dtype` at byte `offset`.
pub fn grid_handle(
    segment_id: u64,
    segment_size: u64,
    offset: u64,
    dtype: crate::DType,
    height: u64,
    width: u64,
    level: u32,
) -> pb::Handle {
    let es = dtype.size() as u64;
    pb::Handle {
        segment_id,
        segment_size,
        offset,
        nbytes: height * width * es,
        dtype: dtype.to_proto() as i32,
        shape: vec![height, width],
        strides: vec![width * es, es],
        kind: pb::PortKind::Grid as i32,
        level,
        format: pb::Format::Raw as i32,
        digest: Vec::new(),
    }
}
