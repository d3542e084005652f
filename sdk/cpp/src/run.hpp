// Internal: one Run of a stage, from request to Result, shared by the gRPC
// service (serve.cpp), runs on the fd channel (chanrun.cpp) and the
// in-process test harness (testing.cpp) so all take exactly the same path:
// params decoded and checked, fds bound and validated, outputs unmapped and
// dynamic outputs adopted before the Result.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "pipehost/stage.hpp"
#include "pipehost/v1/stage.pb.h"
#include "shm.hpp"

namespace pipehost::detail {

// RunStatus carries a gRPC status code (numbered as grpc::StatusCode) so
// the host can tell a refused request from a failed stage.
struct RunStatus {
  enum Code : int {
    Ok = 0,
    Cancelled = 1,
    InvalidArgument = 3,
    NotFound = 5,
    FailedPrecondition = 9,
    Aborted = 10,
    Internal = 13,
  };
  Code code = Ok;
  std::string message;
  bool ok() const { return code == Ok; }
};

// run_stage runs def for req. Events (progress, logs, spans and, on
// success, the Result) go to send, from any thread; cancelled is polled by
// the stage. ch and mb are the plugin's end of the fd channel.
RunStatus run_stage(const StageDef& def, const pipehost::v1::RunRequest& req, FdChannel* ch, Mailbox* mb,
                    const std::function<void(const pipehost::v1::RunEvent&)>& send,
                    std::function<bool()> cancelled);

// Stages is a plugin's stage kinds: it takes a request to its kind, for the
// gRPC Run call and for runs on the fd channel alike.
class Stages {
 public:
  Stages(std::vector<Stage> stages, FdChannel* ch, Mailbox* mb);

  const std::vector<Stage>& all() const { return stages_; }
  // run runs req's stage kind as run_stage does: NotFound for a kind this
  // plugin lacks, Internal for a fault of the SDK. Every fd the request
  // names and the run did not take is closed.
  RunStatus run(const pipehost::v1::RunRequest& req, const std::function<void(const pipehost::v1::RunEvent&)>& send,
                std::function<bool()> cancelled) const;

 private:
  std::vector<Stage> stages_;
  std::map<std::string, const StageDef*> by_kind_;
  FdChannel* ch_;
  Mailbox* mb_;
};

}  // namespace pipehost::detail
