#include "run.hpp"

#include <fcntl.h>
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>

#include "context_impl.hpp"
#include "data.hpp"
#include "trace_marker.hpp"

namespace pipehost::detail {

namespace pb = pipehost::v1;

namespace {

// --- Peak memory -------------------------------------------------------------------------

void reset_peak_rss() {
  const int fd = ::open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  const ssize_t n = ::write(fd, "5", 1);
  (void)n;
  ::close(fd);
}

// status_bytes reads a "Vm...: N kB" line of /proc/self/status; 0 if absent.
uint64_t status_bytes(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(f, line)) {
    if (line.compare(0, n, key) == 0) {
      std::istringstream in(line.substr(n));
      uint64_t kb = 0;
      in >> kb;
      return kb * 1024;
    }
  }
  return 0;
}

// rss_bytes is the current VmRSS from /proc/self/statm: a few µs, against
// tens for /proc/self/status.
uint64_t rss_bytes() {
  const int fd = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return status_bytes("VmRSS:");
  char buf[128];
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  unsigned long long size = 0, resident = 0;
  if (n <= 0) return status_bytes("VmRSS:");
  buf[n] = '\0';
  if (std::sscanf(buf, "%llu %llu", &size, &resident) != 2) return status_bytes("VmRSS:");
  return resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

// release_memory hands freed heap back to the system after a stage that
// grew the process a lot, so the next stage's peak is its own.
void release_memory(uint64_t before, uint64_t peak) {
  if (peak > before + (uint64_t{64} << 20)) ::malloc_trim(0);
}

// Usage is getrusage's CPU time and ru_maxrss (KiB).
struct Usage {
  uint64_t cpu_ns = 0;
  int64_t maxrss_kb = 0;
};

Usage usage() {
  struct rusage ru;
  if (::getrusage(RUSAGE_SELF, &ru) != 0) return {};
  auto ns = [](const struct timeval& tv) {
    return static_cast<uint64_t>(tv.tv_sec) * 1000000000ULL + static_cast<uint64_t>(tv.tv_usec) * 1000ULL;
  };
  return {ns(ru.ru_utime) + ns(ru.ru_stime), static_cast<int64_t>(ru.ru_maxrss)};
}

// peak_since is VmHWM at the end of a span that began with usage `start`
// and then an RSS reading `rss`. ru_maxrss is max(VmHWM, the peak at exec
// and at each thread's exit), which the reset does not touch; it is exact
// when it grew during the span or was within rss at its start. Otherwise
// /proc/self/status is read. The Go SDK applies the same rule.
uint64_t peak_since(const Usage& start, uint64_t rss, const Usage& end) {
  if (end.maxrss_kb > start.maxrss_kb || static_cast<uint64_t>(start.maxrss_kb) * 1024 <= rss) {
    return static_cast<uint64_t>(end.maxrss_kb) * 1024;
  }
  return status_bytes("VmHWM:");
}

// Runs active in this process: the first resets the peak RSS so VmHWM
// afterwards is that stage's peak; overlapping runs share it.
std::mutex g_active_mu;
int g_active = 0;

// enter marks a Run active and reports whether another was already active.
bool enter() {
  std::lock_guard<std::mutex> lock(g_active_mu);
  if (++g_active == 1) {
    reset_peak_rss();
    return false;
  }
  return true;
}
bool leave() {
  std::lock_guard<std::mutex> lock(g_active_mu);
  return --g_active > 0;
}

}  // namespace

RunStatus run_stage(const StageDef& def, const pb::RunRequest& req, FdChannel* ch, Mailbox* mb,
                    const std::function<void(const pb::RunEvent&)>& send, std::function<bool()> cancelled) {
  const std::string who = "stage " + req.stage() + " (" + req.kind() + "): ";

  ContextImpl impl;
  impl.req = &req;
  impl.def = &def;
  impl.run_id = req.run_id();
  impl.stage = req.stage();
  impl.kind = req.kind();
  for (const auto& l : req.levels()) {
    impl.levels.push_back(
        Level{static_cast<int>(l.level()), static_cast<int64_t>(l.width()), static_cast<int64_t>(l.height())});
  }
  try {
    impl.params = decode_params(def, req.params());
  } catch (const Error& e) {
    return {RunStatus::InvalidArgument, who + e.what()};
  }
  impl.send = send;
  impl.cancelled = std::move(cancelled);

  // Declared after impl's users so it is destroyed first: every mapping
  // and fd of the Run is released before the call completes.
  RunData data(ch, mb);
  impl.data = &data;
  try {
    data.bind(req);
  } catch (const Error& e) {
    return {RunStatus::InvalidArgument, who + e.what()};
  }

  Context ctx(&impl);
  bool shared = enter();
  // The stage's slice, on the thread that runs it, around its subtasks.
  if (!req.trace_marker().empty() && trace::open(req.trace_marker())) {
    impl.markers = true;
    impl.marker_base = trace::next_base();
    trace::begin(impl.stage);
  }
  const Usage u0 = usage();
  const uint64_t rss_before = rss_bytes();  // after u0: peak_since relies on the order
  const int64_t start = now_ns();
  std::string run_err;
  try {
    def.run(ctx);
  } catch (const std::exception& e) {
    run_err = e.what();
    if (run_err.empty()) run_err = "the stage threw an exception without a message";
  } catch (...) {
    run_err = "the stage threw a non-standard exception";
  }
  const int64_t end = now_ns();
  if (impl.markers) trace::end();
  const Usage u1 = usage();
  const uint64_t peak = peak_since(u0, rss_before, u1);
  release_memory(rss_before, peak);
  shared = leave() || shared;
  if (!run_err.empty()) return {RunStatus::Aborted, run_err};

  std::vector<pb::Binding> dyn;
  try {
    dyn = data.finish();
  } catch (const Error& e) {
    return {RunStatus::FailedPrecondition, who + e.what()};
  }
  pb::RunEvent ev;
  auto* res = ev.mutable_result();
  for (auto& b : dyn) *res->add_dynamic_outputs() = std::move(b);
  {
    std::lock_guard<std::mutex> lock(impl.metrics_mu);
    for (const auto& [k, v] : impl.metrics) (*res->mutable_metrics())[k] = v;
  }
  auto* st = res->mutable_stats();
  st->set_peak_rss_bytes(peak);
  st->set_peak_shared(shared);
  st->set_start_ns(start);
  st->set_end_ns(end);
  st->set_cpu_ns(u1.cpu_ns - u0.cpu_ns);
  impl.send(ev);
  return {};
}

Stages::Stages(std::vector<Stage> stages, FdChannel* ch, Mailbox* mb) : stages_(std::move(stages)), ch_(ch), mb_(mb) {
  for (const Stage& s : stages_) by_kind_[s.def().kind] = &s.def();
}

RunStatus Stages::run(const pb::RunRequest& req, const std::function<void(const pb::RunEvent&)>& send,
                      std::function<bool()> cancelled) const {
  RunStatus st;
  auto it = by_kind_.find(req.kind());
  if (it == by_kind_.end()) {
    st = {RunStatus::NotFound, "this plugin has no stage kind \"" + req.kind() + "\""};
  } else {
    try {
      st = run_stage(*it->second, req, ch_, mb_, send, std::move(cancelled));
    } catch (const std::exception& e) {
      // Failures of the stage itself are caught inside; this is the SDK's.
      st = {RunStatus::Internal, "pipehost SDK error: " + std::string(e.what())};
    }
  }
  if (!st.ok() && mb_ != nullptr) {
    // A run that failed before it took its fds (an unknown kind, a refused
    // param or binding) leaves them filed; nobody else will take them.
    std::vector<uint64_t> tokens;
    for (const auto& b : req.inputs()) tokens.push_back(b.fd_token());
    for (const auto& b : req.outputs()) tokens.push_back(b.fd_token());
    mb_->discard(tokens);
  }
  return st;
}

}  // namespace pipehost::detail
