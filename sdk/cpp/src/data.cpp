#include "data.hpp"

#include <errno.h>
#include <string.h>
#include <unistd.h>

namespace pipehost::detail {

HandleDesc handle_desc(const pipehost::v1::Handle& h) {
  HandleDesc d;
  d.segment_id = h.segment_id();
  d.segment_size = h.segment_size();
  d.offset = h.offset();
  d.nbytes = h.nbytes();
  d.dtype = static_cast<uint32_t>(h.dtype());
  d.shape.assign(h.shape().begin(), h.shape().end());
  d.strides.assign(h.strides().begin(), h.strides().end());
  d.kind = static_cast<uint32_t>(h.kind());
  d.level = h.level();
  d.format = static_cast<uint32_t>(h.format());
  d.digest_size = h.digest().size();
  return d;
}

uint8_t* Buffer::bytes() {
  if (!map.mapped() && seg && seg->size() > 0) {
    try {
      map = input ? Mapping::map_ro(*seg) : Mapping::map_rw(*seg);
    } catch (const Error& e) {
      throw Error((input ? "input \"" : "output \"") + port + "\": " + e.what());
    }
  }
  if (!map.mapped()) return nullptr;
  return map.data() + handle.offset;
}

void StreamSegment::write(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(seg_.fd(), p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error("output stream \"" + seg_.name() + "\": write: " + strerror(errno));
    p += n;
    size -= static_cast<size_t>(n);
    written_ += static_cast<uint64_t>(n);
  }
}

Segment& StreamSegment::finish() {
  seg_.seal_size();
  return seg_;
}

Buffer RunData::open(const pipehost::v1::Binding& b, bool input, std::chrono::steady_clock::time_point deadline) {
  const std::string port = "port \"" + b.port() + "\": ";
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  if (left.count() < 0) left = std::chrono::milliseconds(0);
  Message msg;
  UniqueFd fd;
  try {
    std::tie(msg, fd) = mb_->take(b.fd_token(), left);
  } catch (const Error& e) {
    throw Error(port + e.what());
  }
  if (msg.type != MsgType::Segment) throw Error(port + "the fd channel delivered an ADOPT message for a host token");
  Buffer buf;
  buf.port = b.port();
  buf.input = input;
  try {
    buf.seg.emplace(Segment::open(std::move(fd)));
  } catch (const Error& e) {
    throw Error(port + e.what());
  }
  if (msg.size != buf.seg->size()) {
    throw Error(port + "the fd channel announced " + std::to_string(msg.size) + " bytes but the segment has " +
                std::to_string(buf.seg->size()));
  }
  if (!b.has_handle()) throw Error(port + "invalid handle: missing handle");
  buf.handle = handle_desc(b.handle());
  const HandleCheck check = validate_handle(buf.handle, buf.seg->size());
  if (!check.ok()) throw Error(port + check.message);
  if (input && buf.seg->size() > 0) {
    try {
      // Inputs are sealed by the host; map_ro refuses anything else.
      buf.map = Mapping::map_ro(*buf.seg);
    } catch (const Error& e) {
      throw Error("input \"" + b.port() + "\": " + e.what());
    }
  } else if (input && !buf.seg->write_sealed()) {
    throw Error("input \"" + b.port() + "\": segment is not write-sealed");
  }
  return buf;
}

void RunData::bind(const pipehost::v1::RunRequest& req, std::chrono::milliseconds wait) {
  if (req.inputs_size() + req.outputs_size() == 0) return;
  if (mb_ == nullptr) throw Error("the run has buffers but this plugin has no fd channel");
  const auto deadline = std::chrono::steady_clock::now() + wait;
  std::lock_guard<std::mutex> lock(mu);
  for (const auto& b : req.inputs()) inputs[b.port()] = open(b, true, deadline);
  for (const auto& b : req.outputs()) outputs[b.port()] = open(b, false, deadline);
}

pipehost::v1::Handle adopted_handle(PortKind kind, uint64_t size) {
  pipehost::v1::Handle h;
  h.set_segment_size(size);
  h.set_nbytes(size);
  if (kind == PortKind::Table) {
    h.set_kind(pipehost::v1::PORT_KIND_TABLE);
    h.set_format(pipehost::v1::FORMAT_ARROW_IPC);
  } else {
    h.set_kind(pipehost::v1::PORT_KIND_BLOB);
    h.set_format(pipehost::v1::FORMAT_RAW);
    h.set_dtype(pipehost::v1::DTYPE_U8);
    h.add_shape(size);
    h.add_strides(1);
  }
  return h;
}

std::vector<pipehost::v1::Binding> RunData::finish() {
  std::lock_guard<std::mutex> lock(mu);
  for (auto& [name, b] : outputs) {
    try {
      b.map.unmap();
    } catch (const Error& e) {
      throw Error("output \"" + name + "\": " + e.what());
    }
  }
  std::vector<pipehost::v1::Binding> out;
  for (DynOutput& d : dynamic) {
    const std::string what = "dynamic output \"" + d.port + "\": ";
    try {
      d.map.unmap();
      Segment* seg = nullptr;
      if (d.stream) {
        seg = &d.stream->finish();
      } else {
        seg = &*d.seg;
      }
      const uint64_t tok = next_plugin_token();
      const uint64_t size = seg->size();
      Message m;
      m.type = MsgType::Adopt;
      m.token = tok;
      m.size = size;
      ch_->send(m, seg->fd());
      pipehost::v1::Binding b;
      b.set_port(d.port);
      b.set_fd_token(tok);
      *b.mutable_handle() = adopted_handle(d.kind, size);
      out.push_back(std::move(b));
    } catch (const Error& e) {
      throw Error(what + e.what());
    }
  }
  return out;
}

}  // namespace pipehost::detail
