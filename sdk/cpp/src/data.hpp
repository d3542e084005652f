// Internal: a Run's buffers — inputs mapped read-only, outputs mapped
// writable on first use, dynamic outputs created here — and their release.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "pipehost/context.hpp"
#include "pipehost/handle.hpp"
#include "pipehost/v1/stage.pb.h"
#include "shm.hpp"

namespace pipehost::detail {

// How long a Run waits for an fd the host announced: the host sends it
// before the Run call, so only a broken host makes this expire.
inline constexpr std::chrono::milliseconds kFdWait{10000};

HandleDesc handle_desc(const pipehost::v1::Handle& h);

// adopted_handle is the handle of a dynamic output of kind (table or blob)
// whose segment of size bytes goes to the host by ADOPT: the whole segment,
// segment_id 0 (the host assigns one); a table is Arrow IPC, a blob raw u8
// bytes of shape [size]. testdata/adopted.json pins it.
pipehost::v1::Handle adopted_handle(PortKind kind, uint64_t size);

struct Buffer {
  std::string port;
  HandleDesc handle;
  std::optional<Segment> seg;
  Mapping map;
  bool input = false;

  // bytes is the buffer's first byte, mapping an output on first use.
  uint8_t* bytes();
};

// StreamSegment is a growable memfd written with write(2); finish seals
// its size.
class StreamSegment : public OutputStream {
 public:
  explicit StreamSegment(const std::string& name) : seg_(Segment::create_growable(name)) {}
  using OutputStream::write;
  void write(const void* data, size_t size) override;
  uint64_t size() const override { return written_; }
  Segment& finish();

 private:
  Segment seg_;
  uint64_t written_ = 0;
};

struct DynOutput {
  std::string port;
  PortKind kind = PortKind::Blob;
  std::optional<Segment> seg;
  Mapping map;
  std::unique_ptr<StreamSegment> stream;
};

class RunData {
 public:
  RunData(FdChannel* ch, Mailbox* mb) : ch_(ch), mb_(mb) {}
  RunData(const RunData&) = delete;
  RunData& operator=(const RunData&) = delete;
  // The destructor unmaps and closes everything the Run held.
  ~RunData() = default;

  // bind takes every fd the request names, validates its handle and maps
  // inputs. Throws Error naming the port.
  void bind(const pipehost::v1::RunRequest& req, std::chrono::milliseconds wait = kFdWait);
  // finish unmaps every writable view and hands dynamic outputs to the host
  // (ADOPT before the Result). Throws Error.
  std::vector<pipehost::v1::Binding> finish();

  bool has_channel() const { return ch_ != nullptr; }

  std::mutex mu;
  std::map<std::string, Buffer> inputs;
  std::map<std::string, Buffer> outputs;
  std::vector<DynOutput> dynamic;

 private:
  Buffer open(const pipehost::v1::Binding& b, bool input, std::chrono::steady_clock::time_point deadline);

  FdChannel* ch_;
  Mailbox* mb_;
};

}  // namespace pipehost::detail
