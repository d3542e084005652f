// Internal: one Run of a stage, from request to Result, shared by the gRPC
// service (serve.cpp) and the in-process test harness (testing.cpp) so both
// take exactly the same path: params decoded and checked, fds bound and
// validated, outputs unmapped and dynamic outputs adopted before the Result.
#pragma once

#include <functional>
#include <string>

#include "pipehost/stage.hpp"
#include "pipehost/v1/stage.pb.h"
#include "shm.hpp"

namespace pipehost::detail {

// RunStatus carries a gRPC status code (numbered as grpc::StatusCode) so
// the host can tell a refused request from a failed stage.
struct RunStatus {
  enum Code : int { Ok = 0, InvalidArgument = 3, NotFound = 5, FailedPrecondition = 9, Aborted = 10 };
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

}  // namespace pipehost::detail
