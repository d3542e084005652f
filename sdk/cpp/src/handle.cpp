#include "pipehost/handle.hpp"

#include <sstream>

namespace pipehost {

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::F32: return "f32";
    case DType::F64: return "f64";
    case DType::I8: return "i8";
    case DType::I16: return "i16";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
    case DType::U16: return "u16";
    case DType::U32: return "u32";
    case DType::U64: return "u64";
    case DType::Unspecified: return "unspecified";
  }
  return "unknown";
}

const char* handle_fault_name(HandleFault f) {
  switch (f) {
    case HandleFault::None: return "";
    case HandleFault::SegmentSize: return "segment_size";
    case HandleFault::UnalignedOffset: return "unaligned_offset";
    case HandleFault::OutOfBounds: return "out_of_bounds";
    case HandleFault::DigestLength: return "digest_length";
    case HandleFault::UnknownFormat: return "unknown_format";
    case HandleFault::UnknownDType: return "unknown_dtype";
    case HandleFault::RankMismatch: return "rank_mismatch";
    case HandleFault::ZeroStride: return "zero_stride";
    case HandleFault::StrideNotMultiple: return "stride_not_multiple";
    case HandleFault::Overflow: return "overflow";
    case HandleFault::ExtentExceedsNbytes: return "extent_exceeds_nbytes";
    case HandleFault::ArrowShape: return "arrow_shape";
  }
  return "unknown";
}

namespace {

std::string list(const std::vector<uint64_t>& v) {
  std::ostringstream o;
  o << '[';
  for (size_t i = 0; i < v.size(); ++i) o << (i ? " " : "") << v[i];
  o << ']';
  return o.str();
}

HandleCheck bad(const HandleDesc& h, HandleFault f, const std::string& what) {
  return {f, "invalid handle for segment " + std::to_string(h.segment_id) + ": " + what};
}

}  // namespace

HandleCheck validate_handle(const HandleDesc& h, uint64_t real) {
  if (h.segment_size != real) {
    return bad(h, HandleFault::SegmentSize,
               "segment_size " + std::to_string(h.segment_size) + " does not match the segment's real size " +
                   std::to_string(real));
  }
  const uint64_t off = h.offset, n = h.nbytes;
  if (off % kAlign != 0) {
    return bad(h, HandleFault::UnalignedOffset,
               "offset " + std::to_string(off) + " is not " + std::to_string(kAlign) + "-byte aligned");
  }
  uint64_t end = 0;
  if (__builtin_add_overflow(off, n, &end) || end > real) {
    return bad(h, HandleFault::OutOfBounds,
               "offset " + std::to_string(off) + " + nbytes " + std::to_string(n) + " runs past the segment's " +
                   std::to_string(real) + " bytes");
  }
  if (h.digest_size != 0 && h.digest_size != kDigestSize) {
    return bad(h, HandleFault::DigestLength,
               "digest is " + std::to_string(h.digest_size) + " bytes, want 32 (SHA-256)");
  }
  switch (h.format) {
    case static_cast<uint32_t>(Format::Raw): {
      const uint64_t es = dtype_size(h.dtype);
      if (es == 0) {
        return bad(h, HandleFault::UnknownDType, "raw buffer has unknown dtype " + std::to_string(h.dtype));
      }
      if (h.shape.size() != h.strides.size()) {
        return bad(h, HandleFault::RankMismatch,
                   "shape has " + std::to_string(h.shape.size()) + " dimensions but strides has " +
                       std::to_string(h.strides.size()));
      }
      for (size_t i = 0; i < h.strides.size(); ++i) {
        if (h.strides[i] == 0) {
          return bad(h, HandleFault::ZeroStride,
                     "stride " + std::to_string(i) + " is 0 (strides must be positive)");
        }
        if (h.strides[i] % es != 0) {
          return bad(h, HandleFault::StrideNotMultiple,
                     "stride " + std::to_string(i) + " is " + std::to_string(h.strides[i]) +
                         " bytes, not a multiple of the " + std::to_string(es) + "-byte element");
        }
      }
      for (uint64_t d : h.shape) {
        if (d == 0) return {};  // empty buffer: extent 0
      }
      uint64_t extent = es;
      for (size_t i = 0; i < h.shape.size(); ++i) {
        uint64_t reach = 0;
        if (__builtin_mul_overflow(h.shape[i] - 1, h.strides[i], &reach)) {
          return bad(h, HandleFault::Overflow,
                     "dimension " + std::to_string(i) + " (" + std::to_string(h.shape[i]) + " × stride " +
                         std::to_string(h.strides[i]) + ") overflows");
        }
        if (__builtin_add_overflow(extent, reach, &extent)) {
          return bad(h, HandleFault::Overflow,
                     "shape " + list(h.shape) + " with strides " + list(h.strides) + " overflows");
        }
      }
      if (extent > n) {
        return bad(h, HandleFault::ExtentExceedsNbytes,
                   "shape " + list(h.shape) + " with strides " + list(h.strides) + " reaches " +
                       std::to_string(extent) + " bytes but nbytes is " + std::to_string(n));
      }
      return {};
    }
    case static_cast<uint32_t>(Format::ArrowIpc):
      if (!h.shape.empty() || !h.strides.empty()) {
        return bad(h, HandleFault::ArrowShape,
                   "an Arrow IPC buffer has no shape or strides (got shape " + list(h.shape) + ", strides " +
                       list(h.strides) + ")");
      }
      return {};
    default:
      return bad(h, HandleFault::UnknownFormat, "unknown format " + std::to_string(h.format));
  }
}

bool is_dense(const HandleDesc& h) {
  if (h.format != static_cast<uint32_t>(Format::Raw)) return false;
  const uint64_t es = dtype_size(h.dtype);
  if (es == 0 || h.shape.size() != h.strides.size()) return false;
  uint64_t want = es;
  for (size_t k = h.shape.size(); k-- > 0;) {
    if (h.strides[k] != want) return false;
    if (__builtin_mul_overflow(want, h.shape[k], &want)) return false;
  }
  return h.nbytes == want;
}

}  // namespace pipehost
