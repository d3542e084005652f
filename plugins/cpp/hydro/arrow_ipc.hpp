// A small writer of Arrow IPC files (the "Feather v2" file format: magic,
// schema message, one record batch, footer) for flat tables of int32,
// float64, utf8 and binary columns. Written from the Arrow columnar format
// specification so the plugin needs no Arrow C++ library; arrow-go, pyarrow
// and GeoPandas read its output (tested in host/runner's planet tests).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace arrowipc {

// Builder of one flatbuffer, laid out front to back: a parent is written
// first with placeholder offsets, its children after it (flatbuffer offsets
// point forward), then the offsets are patched.
class FlatBuffer {
 public:
  std::vector<uint8_t> b;
  size_t pos() const { return b.size(); }
  void pad_to(size_t a) {
    while (b.size() % a) b.push_back(0);
  }
  template <class T>
  void put(T v) {
    uint8_t tmp[sizeof(T)];
    std::memcpy(tmp, &v, sizeof(T));  // little-endian host (x86-64, arm64)
    b.insert(b.end(), tmp, tmp + sizeof(T));
  }
  template <class T>
  void patch(size_t at, T v) {
    std::memcpy(b.data() + at, &v, sizeof(T));
  }
};

// Child writes an object at the end of the buffer and returns where the
// offset to it must point.
using Child = std::function<size_t(FlatBuffer&)>;

struct TableField {
  int id;
  std::vector<uint8_t> scalar;  // inline value (1, 2, 4 or 8 bytes), or
  Child child;                  // an offset to a child object
};

template <class T>
TableField scalar(int id, T v) {
  TableField f{id, std::vector<uint8_t>(sizeof(T)), nullptr};
  std::memcpy(f.scalar.data(), &v, sizeof(T));
  return f;
}
inline TableField offset(int id, Child c) { return TableField{id, {}, std::move(c)}; }

// table writes a vtable, then the table; returns the table's position.
inline size_t write_table(FlatBuffer& fb, std::vector<TableField> fields) {
  int nslots = 0;
  for (auto& f : fields) nslots = std::max(nslots, f.id + 1);
  // Inline layout: soffset first, then fields by decreasing size so each is
  // naturally aligned relative to an 8-aligned table start.
  std::vector<size_t> order(fields.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  auto size_of = [&](size_t i) { return fields[i].child ? size_t(4) : fields[i].scalar.size(); };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t c) { return size_of(a) > size_of(c); });
  std::vector<uint16_t> slot(nslots, 0);
  std::vector<size_t> at(fields.size());
  size_t cur = 4;
  for (size_t i : order) {
    size_t s = size_of(i);
    cur = (cur + s - 1) / s * s;
    at[i] = cur;
    slot[fields[i].id] = uint16_t(cur);
    cur += s;
  }
  size_t table_size = (cur + 3) / 4 * 4;
  fb.pad_to(2);
  size_t vt = fb.pos();
  fb.put<uint16_t>(uint16_t(4 + 2 * nslots));
  fb.put<uint16_t>(uint16_t(table_size));
  for (auto s : slot) fb.put<uint16_t>(s);
  fb.pad_to(8);
  size_t tp = fb.pos();
  fb.b.resize(tp + table_size, 0);
  fb.patch<int32_t>(tp, int32_t(tp - vt));  // vtable = table - soffset
  for (size_t i = 0; i < fields.size(); ++i) {
    if (!fields[i].child) std::memcpy(fb.b.data() + tp + at[i], fields[i].scalar.data(), fields[i].scalar.size());
  }
  for (size_t i = 0; i < fields.size(); ++i) {
    if (fields[i].child) {
      size_t c = fields[i].child(fb);
      fb.patch<uint32_t>(tp + at[i], uint32_t(c - (tp + at[i])));
    }
  }
  return tp;
}

inline Child table(std::vector<TableField> fields) {
  return [fields](FlatBuffer& fb) { return write_table(fb, fields); };
}

inline Child string(std::string s) {
  return [s](FlatBuffer& fb) {
    fb.pad_to(4);
    size_t p = fb.pos();
    fb.put<uint32_t>(uint32_t(s.size()));
    fb.b.insert(fb.b.end(), s.begin(), s.end());
    fb.b.push_back(0);
    return p;
  };
}

inline Child table_vector(std::vector<Child> items) {
  return [items](FlatBuffer& fb) {
    fb.pad_to(4);
    size_t p = fb.pos();
    fb.put<uint32_t>(uint32_t(items.size()));
    size_t slots = fb.pos();
    fb.b.resize(slots + 4 * items.size(), 0);
    for (size_t i = 0; i < items.size(); ++i) {
      size_t c = items[i](fb);
      fb.patch<uint32_t>(slots + 4 * i, uint32_t(c - (slots + 4 * i)));
    }
    return p;
  };
}

// A vector of 8-aligned structs given as raw bytes (count elements).
inline Child struct_vector(std::vector<uint8_t> bytes, uint32_t count) {
  return [bytes, count](FlatBuffer& fb) {
    while (fb.pos() % 8 != 4) fb.b.push_back(0);  // elements start 8-aligned
    size_t p = fb.pos();
    fb.put<uint32_t>(count);
    fb.b.insert(fb.b.end(), bytes.begin(), bytes.end());
    return p;
  };
}

inline std::vector<uint8_t> finish(Child root) {
  FlatBuffer fb;
  fb.put<uint32_t>(0);
  size_t r = root(fb);
  fb.patch<uint32_t>(0, uint32_t(r));
  fb.pad_to(8);
  return fb.b;
}

enum class Type { Int32, Float64, Utf8, Binary };

// Column holds one column's values; for Utf8/Binary, offsets and bytes.
struct Column {
  std::string name;
  Type type;
  std::vector<uint8_t> data;      // fixed-width values, or the string bytes
  std::vector<int32_t> offsets{0};  // Utf8/Binary only
  int64_t length = 0;

  Column(std::string n, Type t) : name(std::move(n)), type(t) {}
  void push_int32(int32_t v) { append(&v, 4), ++length; }
  void push_float64(double v) { append(&v, 8), ++length; }
  void push_bytes(const void* p, size_t n) {
    append(p, n);
    offsets.push_back(int32_t(data.size()));
    ++length;
  }
  void append(const void* p, size_t n) {
    auto c = static_cast<const uint8_t*>(p);
    data.insert(data.end(), c, c + n);
  }
};

namespace detail {
constexpr int16_t kV5 = 4;  // MetadataVersion.V5

inline Child field(const Column& c) {
  std::vector<TableField> f{offset(0, string(c.name)), scalar<uint8_t>(1, 0)};
  switch (c.type) {
    case Type::Int32:
      f.push_back(scalar<uint8_t>(2, 2));  // Type.Int
      f.push_back(offset(3, table({scalar<int32_t>(0, 32), scalar<uint8_t>(1, 1)})));
      break;
    case Type::Float64:
      f.push_back(scalar<uint8_t>(2, 3));  // Type.FloatingPoint
      f.push_back(offset(3, table({scalar<int16_t>(0, 2)})));  // DOUBLE
      break;
    case Type::Utf8:
      f.push_back(scalar<uint8_t>(2, 5));
      f.push_back(offset(3, table({})));
      break;
    case Type::Binary:
      f.push_back(scalar<uint8_t>(2, 4));
      f.push_back(offset(3, table({})));
      break;
  }
  f.push_back(offset(5, table_vector({})));  // children: present, empty
  return table(f);
}

inline Child schema(const std::vector<Column>& cols) {
  std::vector<Child> fields;
  for (auto& c : cols) fields.push_back(field(c));
  return table({scalar<int16_t>(0, 0), offset(1, table_vector(fields))});
}

inline void put_i64(std::vector<uint8_t>& v, int64_t x) {
  uint8_t t[8];
  std::memcpy(t, &x, 8);
  v.insert(v.end(), t, t + 8);
}

// message frames a Message flatbuffer: continuation, length, bytes.
inline std::vector<uint8_t> message(uint8_t header_type, Child header, int64_t body_length) {
  auto fb = finish(table({scalar<int16_t>(0, kV5), scalar<uint8_t>(1, header_type), offset(2, std::move(header)),
                          scalar<int64_t>(3, body_length)}));
  std::vector<uint8_t> out;
  uint32_t cont = 0xFFFFFFFFu;
  int32_t len = int32_t(fb.size());
  out.insert(out.end(), reinterpret_cast<uint8_t*>(&cont), reinterpret_cast<uint8_t*>(&cont) + 4);
  out.insert(out.end(), reinterpret_cast<uint8_t*>(&len), reinterpret_cast<uint8_t*>(&len) + 4);
  out.insert(out.end(), fb.begin(), fb.end());
  return out;
}
}  // namespace detail

// write_file returns a complete Arrow IPC file holding cols as one batch.
inline std::vector<uint8_t> write_file(const std::vector<Column>& cols) {
  using namespace detail;
  int64_t rows = cols.empty() ? 0 : cols[0].length;
  std::vector<uint8_t> file{'A', 'R', 'R', 'O', 'W', '1', 0, 0};
  auto sm = message(1, schema(cols), 0);
  file.insert(file.end(), sm.begin(), sm.end());

  // Body: per column a validity buffer (empty: no nulls), then offsets
  // and/or values, each 8-aligned.
  std::vector<uint8_t> body, nodes, bufs;
  auto add_buffer = [&](const void* p, size_t n) {
    put_i64(bufs, int64_t(body.size()));
    put_i64(bufs, int64_t(n));
    auto c = static_cast<const uint8_t*>(p);
    body.insert(body.end(), c, c + n);
    while (body.size() % 8) body.push_back(0);
  };
  for (auto& c : cols) {
    put_i64(nodes, c.length);
    put_i64(nodes, 0);
    add_buffer(nullptr, 0);
    if (c.type == Type::Utf8 || c.type == Type::Binary) add_buffer(c.offsets.data(), c.offsets.size() * 4);
    add_buffer(c.data.data(), c.data.size());
  }
  size_t nbufs = bufs.size() / 16;
  auto rb = message(3,
                    table({scalar<int64_t>(0, rows), offset(1, struct_vector(nodes, uint32_t(cols.size()))),
                           offset(2, struct_vector(bufs, uint32_t(nbufs)))}),
                    int64_t(body.size()));
  int64_t block_offset = int64_t(file.size());
  int32_t meta_len = int32_t(rb.size());
  file.insert(file.end(), rb.begin(), rb.end());
  file.insert(file.end(), body.begin(), body.end());

  std::vector<uint8_t> block;
  put_i64(block, block_offset);
  block.insert(block.end(), reinterpret_cast<uint8_t*>(&meta_len), reinterpret_cast<uint8_t*>(&meta_len) + 4);
  block.insert(block.end(), 4, 0);
  put_i64(block, int64_t(body.size()));
  auto footer = finish(table({scalar<int16_t>(0, kV5), offset(1, schema(cols)), offset(2, struct_vector({}, 0)),
                              offset(3, struct_vector(block, 1))}));
  file.insert(file.end(), footer.begin(), footer.end());
  int32_t flen = int32_t(footer.size());
  file.insert(file.end(), reinterpret_cast<uint8_t*>(&flen), reinterpret_cast<uint8_t*>(&flen) + 4);
  const char magic[6] = {'A', 'R', 'R', 'O', 'W', '1'};
  file.insert(file.end(), magic, magic + 6);
  return file;
}

}  // namespace arrowipc
