// Internal: runs on the fd channel (docs/protocol.md, "Runs on the fd
// channel"). The host sends a RUN with the RunRequest after the fds it
// names; the plugin answers with EVENTs and one END. The stage runs exactly
// as for the gRPC Run call (Stages::run); only the transport differs: one
// socket write and one wake-up each way instead of an HTTP/2 stream, whose
// thread hand-offs cost more than a small stage does.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "run.hpp"
#include "shm.hpp"

namespace pipehost::detail {

class ChannelRuns {
 public:
  ChannelRuns(const Stages& stages, FdChannel& ch) : stages_(stages), ch_(ch) {}
  // The destructor cancels the runs in flight and waits for their threads.
  ~ChannelRuns();
  ChannelRuns(const ChannelRuns&) = delete;
  ChannelRuns& operator=(const ChannelRuns&) = delete;

  // route is the Mailbox's handler for RUN and CANCEL (Mailbox::Route). It
  // runs on the channel's reader, which must keep reading, so a RUN starts
  // a thread of its own.
  std::string route(const Message& m, std::string&& payload);
  // cancel_all cancels every run in flight, as when the channel ends.
  void cancel_all();
  // in_flight is how many runs are still running.
  size_t in_flight() const;

 private:
  struct Run {
    std::shared_ptr<std::atomic<bool>> cancelled;
    std::thread thread;
  };
  void run(uint64_t token, const std::string& payload, const std::shared_ptr<std::atomic<bool>>& cancelled);
  void reap();

  const Stages& stages_;
  FdChannel& ch_;
  mutable std::mutex mu_;
  std::condition_variable idle_;
  std::map<uint64_t, Run> runs_;
  // Threads of runs that have ended, joined by the next RUN or the
  // destructor: a thread cannot join itself.
  std::vector<std::thread> ended_;
};

}  // namespace pipehost::detail
