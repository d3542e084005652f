// Handles: a cross-process description of one buffer inside a segment, and
// the validation every receiver does before touching memory
// (docs/protocol.md, "Validation"; testdata/handles.json pins it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pipehost/types.hpp"

namespace pipehost {

// Align is the byte alignment of every buffer inside a segment.
inline constexpr uint64_t kAlign = 64;
// DigestSize is the length of a handle's SHA-256 digest when present.
inline constexpr uint64_t kDigestSize = 32;

// HandleDesc mirrors pipehost.v1.Handle. Enum fields keep the raw wire number
// so that unknown values can be seen and rejected.
struct HandleDesc {
  uint64_t segment_id = 0;
  uint64_t segment_size = 0;
  uint64_t offset = 0;
  uint64_t nbytes = 0;
  uint32_t dtype = 0;
  std::vector<uint64_t> shape;
  // Strides in bytes, one per dimension, outermost first.
  std::vector<uint64_t> strides;
  uint32_t kind = 0;
  uint32_t level = 0;
  uint32_t format = 0;
  // Only the digest's length matters for validation.
  uint64_t digest_size = 0;
};

// Why a handle was rejected: the first rule that failed, in the order of
// docs/protocol.md. The names are the reason classes of testdata/handles.json.
enum class HandleFault {
  None,
  SegmentSize,          // "segment_size": segment_size differs from the real size
  UnalignedOffset,      // "unaligned_offset": offset not a multiple of 64
  OutOfBounds,          // "out_of_bounds": offset + nbytes past the segment (or overflowing)
  DigestLength,         // "digest_length": digest neither empty nor 32 bytes
  UnknownFormat,        // "unknown_format"
  UnknownDType,         // "unknown_dtype": raw buffer without a known dtype
  RankMismatch,         // "rank_mismatch": shape and strides differ in length
  ZeroStride,           // "zero_stride"
  StrideNotMultiple,    // "stride_not_multiple": stride not a multiple of the element size
  Overflow,             // "overflow": the extent does not fit in 64 bits
  ExtentExceedsNbytes,  // "extent_exceeds_nbytes"
  ArrowShape,           // "arrow_shape": an Arrow IPC buffer with shape or strides
};

// handle_fault_name is the reason class of a fault ("" for None).
const char* handle_fault_name(HandleFault f);

struct HandleCheck {
  HandleFault fault = HandleFault::None;
  // A sentence naming the segment id, empty when the handle is valid.
  std::string message;
  bool ok() const { return fault == HandleFault::None; }
  explicit operator bool() const { return ok(); }
};

// validate_handle checks h against the real size of its segment (fstat).
// All arithmetic is on 64-bit unsigned integers; overflow is an error.
HandleCheck validate_handle(const HandleDesc& h, uint64_t real_segment_size);

// is_dense reports whether a raw handle is C-contiguous: the last stride is
// the element size, each other stride the next one times the next
// dimension, and nbytes covers every element exactly.
bool is_dense(const HandleDesc& h);

}  // namespace pipehost
