// Internal: the state behind a Context for one Run.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "data.hpp"
#include "pipehost/context.hpp"
#include "pipehost/v1/stage.pb.h"

namespace grpc {
class ServerContext;
}

namespace pipehost::detail {

struct ContextImpl {
  const pipehost::v1::RunRequest* req = nullptr;
  const StageDef* def = nullptr;
  RunData* data = nullptr;
  // send forwards one event to the host; safe from any thread.
  std::function<void(const pipehost::v1::RunEvent&)> send;
  // cancelled reports whether the host cancelled the Run.
  std::function<bool()> cancelled;

  std::map<std::string, ParamValue> params;
  std::vector<Level> levels;
  std::string run_id, stage, kind;

  std::once_flag topo_once;
  std::optional<Topology> topo;
  std::string topo_error;

  std::mutex span_mu;
  std::atomic<uint64_t> span_next{0};
  std::vector<uint64_t> stack;
  // markers: the host asked for trace markers and the file is open;
  // marker_base makes async-slice cookies unique in the process.
  bool markers = false;
  uint64_t marker_base = 0;

  std::mutex progress_mu;
  std::chrono::steady_clock::time_point last_progress{};
  bool progress_sent = false;

  std::mutex metrics_mu;
  std::map<std::string, double> metrics;

  void send_span(uint64_t id, uint64_t parent, const std::string& name, int64_t start, int64_t end);
};

// decode_params checks every declared param against the request (defaults
// filled in for missing ones) and returns them by name. Throws Error.
std::map<std::string, ParamValue> decode_params(const StageDef& def,
                                                const google::protobuf::Map<std::string, pipehost::v1::Value>& in);

}  // namespace pipehost::detail
