// Context is what a stage's run function gets: identity, seed, params, the
// grid and its topology, zero-copy views of inputs and outputs, and
// reporting (progress, logs, timed spans, metrics) to the host.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "pipehost/error.hpp"
#include "pipehost/grid.hpp"
#include "pipehost/handle.hpp"
#include "pipehost/seed.hpp"
#include "pipehost/stage.hpp"
#include "pipehost/topology.hpp"
#include "pipehost/types.hpp"

namespace pipehost {

namespace detail {
struct ContextImpl;
struct RawGrid {
  void* data;
  size_t width;
  size_t height;
  unsigned level;
};
}  // namespace detail

class Context;

// TimedSpan is a timed subtask, sent to the host when it ends: when end() is
// called or the object is destroyed, whichever comes first.
//
//   { auto span = ctx.timed("erode"); ...work... }   // ends here
class TimedSpan {
 public:
  TimedSpan(TimedSpan&& o) noexcept;
  TimedSpan& operator=(TimedSpan&& o) noexcept;
  TimedSpan(const TimedSpan&) = delete;
  TimedSpan& operator=(const TimedSpan&) = delete;
  ~TimedSpan();

  // end ends the span now; later calls do nothing.
  void end();
  // child starts a span whose parent is this one (for work on other threads).
  TimedSpan child(std::string name) const;
  uint64_t id() const { return id_; }

 private:
  friend class Context;
  TimedSpan(detail::ContextImpl* c, uint64_t id, uint64_t parent, std::string name, bool nested);

  detail::ContextImpl* c_ = nullptr;
  uint64_t id_ = 0;
  uint64_t parent_ = 0;
  std::string name_;
  int64_t start_ns_ = 0;
  bool nested_ = false;
};

// OutputStream writes a table or blob output of unknown size straight into a
// shared memory segment; the host gets it when the run function returns.
class OutputStream {
 public:
  virtual ~OutputStream() = default;
  virtual void write(const void* data, size_t size) = 0;
  void write(std::string_view s) { write(s.data(), s.size()); }
  // size is how many bytes were written so far.
  virtual uint64_t size() const = 0;
};

class Context {
 public:
  explicit Context(detail::ContextImpl* impl) : impl_(impl) {}
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const std::string& run_id() const;
  // stage is the stage instance name from the pipeline config.
  const std::string& stage() const;
  const std::string& kind() const;
  // seed is the stage's 64-bit seed (docs/seeds.md), the same in every SDK.
  uint64_t seed() const;
  // rng is a fresh stream of the stage's seed; fork it for parallel work.
  seed::Stream rng() const { return seed::Stream(seed()); }
  // attempt is 0 for the first attempt of this stage in a run.
  unsigned attempt() const;

  // levels is the run's grid pyramid, level 0 (native) first.
  const std::vector<Level>& levels() const;
  // topology is the run's surface at the native level, or at a pyramid level.
  const Topology& topology() const;
  Topology topology(unsigned level) const;

  // Params, type-safe: ctx[kOctaves] or ctx.get(kOctaves) with a Param<T>,
  // or ctx.param<T>("name") checked against the declared type at run time.
  template <class T>
  T get(const Param<T>& p) const {
    return param<T>(p.name());
  }
  template <class T>
  T operator[](const Param<T>& p) const {
    return param<T>(p.name());
  }
  template <class T>
  T param(const std::string& name) const {
    const ParamValue& v = param_value(name, param_type_of<T>::value);
    const std::string why = detail::check_param<T>(v);
    if (!why.empty()) throw Error("param \"" + name + "\": " + why);
    return detail::convert_param<T>(v);
  }

  // has_input reports whether an (optional) input is wired in this run.
  bool has_input(const std::string& name) const;
  // input_grid maps the input grid on port name read-only. The memory is
  // sealed: writing to it (through a cast) kills the process with SIGSEGV.
  template <class T>
  GridView<const T> input_grid(const std::string& name) {
    const detail::RawGrid g = raw_grid(name, dtype_of_v<T>, true);
    return GridView<const T>(static_cast<const T*>(g.data), g.width, g.height, g.level);
  }
  // output_grid maps the output grid on port name writable. The view is
  // valid until the run function returns: never keep it.
  template <class T>
  GridView<T> output_grid(const std::string& name) {
    const detail::RawGrid g = raw_grid(name, dtype_of_v<T>, false);
    return GridView<T>(static_cast<T*>(g.data), g.width, g.height, g.level);
  }
  // input_bytes is the raw bytes of any input (grid, table or blob).
  View<const uint8_t> input_bytes(const std::string& name);
  // input_handle describes an input's buffer.
  const HandleDesc& input_handle(const std::string& name) const;
  // Outputs go back to the host in one of three ways, as in every SDK: a
  // grid is pre-allocated by the host and written through output_grid; a
  // table or blob is created here (dynamic_output, new_blob,
  // output_stream, adopt_output) and handed to the host with ADOPT when the
  // run function returns. Every writable view is unmapped then; keep none.
  //
  // dynamic_output allocates a table or blob output of size bytes,
  // zero-filled, and returns it writable until the run function returns.
  // For a table, write a whole Arrow IPC file (with footer).
  View<uint8_t> dynamic_output(const std::string& name, size_t size);
  // new_blob is dynamic_output for a blob port (Go's NewBlob).
  View<uint8_t> new_blob(const std::string& name, size_t size);
  // output_stream returns a writer for a table (an Arrow IPC file) or blob
  // output of unknown size, valid until the run function returns.
  OutputStream& output_stream(const std::string& name);
  // adopt_output hands fd, a memfd the stage created and filled itself
  // (memfd_create with MFD_ALLOW_SEALING), to the host as the table or blob
  // output name; the SDK owns fd from then on, also when this throws. Its
  // size must be sealed (F_SEAL_SHRINK|F_SEAL_GROW); it may be write-sealed
  // already. No writable mapping of it may be left, here or in any other
  // process, when the run function returns, or the host fails the stage.
  void adopt_output(const std::string& name, int fd);

  // progress reports the fraction (0..1) done; at most one update per 50 ms
  // reaches the host, plus the final one (fraction >= 1).
  void progress(double fraction, std::string_view message = {});
  // log sends a line to the host's run log, attributed to this stage.
  void log(LogLevel level, std::string_view message);
  void debug(std::string_view message) { log(LogLevel::Debug, message); }
  void info(std::string_view message) { log(LogLevel::Info, message); }
  void warn(std::string_view message) { log(LogLevel::Warn, message); }
  void error(std::string_view message) { log(LogLevel::Error, message); }
  // metric records a number for the run log (the last value per name wins).
  void metric(const std::string& name, double value);

  // timed starts a subtask span nested under the innermost span still open
  // in this stage (or at the top); it ends when the returned object does.
  [[nodiscard]] TimedSpan timed(std::string name);
  // span starts a top-level span with an explicit lifetime (use
  // TimedSpan::child for nesting across threads).
  [[nodiscard]] TimedSpan span(std::string name);

  // cancelled reports whether the host cancelled the stage; long stages
  // check it between chunks of work.
  bool cancelled() const;
  // throw_if_cancelled throws Cancelled when cancelled() is true.
  void throw_if_cancelled() const {
    if (cancelled()) throw Cancelled();
  }

 private:
  const ParamValue& param_value(const std::string& name, ParamType want) const;
  detail::RawGrid raw_grid(const std::string& name, DType dtype, bool input);

  detail::ContextImpl* impl_;
};

}  // namespace pipehost
