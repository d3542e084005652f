// Element types, port kinds, formats and log levels, with the numbering of
// proto/pipehost/v1/stage.proto.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace pipehost {

enum class DType : uint32_t {
  Unspecified = 0,
  F32 = 1,
  F64 = 2,
  I8 = 3,
  I16 = 4,
  I32 = 5,
  I64 = 6,
  U8 = 7,
  U16 = 8,
  U32 = 9,
  U64 = 10,
};

enum class PortKind : uint32_t { Unspecified = 0, Grid = 1, Table = 2, Blob = 3 };

enum class Format : uint32_t { Unspecified = 0, Raw = 1, ArrowIpc = 2 };

enum class LogLevel : uint32_t { Trace = 1, Debug = 2, Info = 3, Warn = 4, Error = 5 };

// dtype_size is the element size in bytes, 0 for an unknown dtype number.
constexpr size_t dtype_size(uint32_t dtype) {
  switch (dtype) {
    case 3: case 7: return 1;                 // i8 u8
    case 4: case 8: return 2;                 // i16 u16
    case 1: case 5: case 9: return 4;         // f32 i32 u32
    case 2: case 6: case 10: return 8;        // f64 i64 u64
    default: return 0;
  }
}
constexpr size_t dtype_size(DType dt) { return dtype_size(static_cast<uint32_t>(dt)); }

// dtype_name is "f32", "u8", ...; "unspecified" or "unknown" otherwise.
const char* dtype_name(DType dt);

// dtype_of<T>::value is the DType whose elements a T array holds.
template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::F32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::F64; };
template <> struct dtype_of<int8_t> { static constexpr DType value = DType::I8; };
template <> struct dtype_of<int16_t> { static constexpr DType value = DType::I16; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::I32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::I64; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::U8; };
template <> struct dtype_of<uint16_t> { static constexpr DType value = DType::U16; };
template <> struct dtype_of<uint32_t> { static constexpr DType value = DType::U32; };
template <> struct dtype_of<uint64_t> { static constexpr DType value = DType::U64; };
template <class T> struct dtype_of<const T> : dtype_of<T> {};
template <class T> inline constexpr DType dtype_of_v = dtype_of<T>::value;

}  // namespace pipehost
