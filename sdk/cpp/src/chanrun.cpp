#include "chanrun.hpp"

#include "pipehost/error.hpp"
#include "pipehost/log.hpp"
#include "pipehost/v1/stage.pb.h"

namespace pipehost::detail {

namespace pb = pipehost::v1;

ChannelRuns::~ChannelRuns() {
  cancel_all();
  std::vector<std::thread> ended;
  {
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait(lock, [this] { return runs_.empty(); });
    ended.swap(ended_);
  }
  for (std::thread& t : ended) t.join();
}

std::string ChannelRuns::route(const Message& m, std::string&& payload) {
  const std::string name = msg_type_name(static_cast<uint16_t>(m.type));
  if (m.type == MsgType::Cancel) {
    // A CANCEL for a run that has ended (or never was) is ignored.
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = runs_.find(m.token); it != runs_.end()) it->second.cancelled->store(true);
    return "";
  }
  if (m.type != MsgType::Run) return "a plugin never receives " + name + " messages";
  reap();
  std::lock_guard<std::mutex> lock(mu_);
  if (runs_.count(m.token) != 0) return "RUN for token " + hex(m.token) + ", which is already running";
  // Filed before the thread starts, under the lock the thread needs to
  // file its end: a CANCEL right behind the RUN finds it.
  Run& r = runs_[m.token];
  r.cancelled = std::make_shared<std::atomic<bool>>(false);
  try {
    r.thread = std::thread([this, token = m.token, payload = std::move(payload), cancelled = r.cancelled] {
      run(token, payload, cancelled);
    });
  } catch (const std::system_error& e) {
    runs_.erase(m.token);
    return std::string("cannot start a thread for the run: ") + e.what();
  }
  return "";
}

void ChannelRuns::run(uint64_t token, const std::string& payload, const std::shared_ptr<std::atomic<bool>>& cancelled) {
  std::atomic<bool> lost{false};
  const auto report = [&](const std::string& what, const std::string& why) {
    // The host is gone: the end of the fd channel ends this process.
    if (!lost.exchange(true)) log_error("fd channel: run " + hex(token) + ": " + what + ": " + why);
    cancelled->store(true);
  };
  // The Result is held back and leaves with the END, in one sendmmsg: the
  // host waits for the END anyway, and wakes once instead of twice.
  std::string result;
  bool has_result = false;
  const auto send = [&](const pb::RunEvent& ev) {
    if (lost) return;
    std::string b;
    if (!ev.SerializeToString(&b)) {
      report("sending an event", "the event does not encode");
      return;
    }
    if (ev.has_result()) {
      result = std::move(b);
      has_result = true;
      return;
    }
    try {
      ch_.send_payload(MsgType::Event, token, b);
    } catch (const Error& e) {
      report("sending an event", e.what());
    }
  };
  RunStatus st;
  pb::RunRequest req;
  if (!req.ParseFromString(payload)) {
    st = {RunStatus::InvalidArgument, "RUN message for token " + hex(token) + ": the payload is not a RunRequest"};
  } else {
    st = stages_.run(req, send, [cancelled] { return cancelled->load(); });
  }
  // The stage saw the CANCEL as its context ending, whatever it made of it.
  if (!st.ok() && cancelled->load()) st.code = RunStatus::Cancelled;
  pb::RunEnd end;
  end.set_code(st.code);
  end.set_message(st.message);
  const std::string end_bytes = end.SerializeAsString();
  {
    // Forgotten before the END goes out: once the host has it, a CANCEL
    // for the token is one for a run that ended.
    std::lock_guard<std::mutex> lock(mu_);
    auto it = runs_.find(token);
    ended_.push_back(std::move(it->second.thread));
    runs_.erase(it);
  }
  idle_.notify_all();
  if (lost) return;
  std::vector<Outgoing> batch;
  if (has_result && st.ok()) batch.push_back(Outgoing{Message{MsgType::Event, token, 0, 0}, -1, result});
  batch.push_back(Outgoing{Message{MsgType::End, token, 0, 0}, -1, end_bytes});
  try {
    ch_.send_batch(batch);
  } catch (const Error& e) {
    report("ending the run", e.what());
  }
}

void ChannelRuns::reap() {
  std::vector<std::thread> ended;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ended.swap(ended_);
  }
  // Each has filed its end and at most sends it: the joins are short.
  for (std::thread& t : ended) t.join();
}

void ChannelRuns::cancel_all() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [token, r] : runs_) r.cancelled->store(true);
}

size_t ChannelRuns::in_flight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return runs_.size();
}

}  // namespace pipehost::detail
