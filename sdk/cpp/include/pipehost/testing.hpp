// The stage test harness: run a stage in-process, the way the host runs it,
// and look at what it produced. Link pipehost::testing.
//
//   const auto r = pipehost::TestRun(my_stage())
//                      .grid("torus", 32, 16)
//                      .param("strength", 0.5)
//                      .input<float>("in", cells)
//                      .run();
//   if (!r.ok()) ... r.error ...
//   pipehost::GridView<const float> out = r.grid<float>("out");
//
// Nothing is faked on the data path: every input is a memfd the harness
// fills and seals F_SEAL_WRITE|F_SEAL_SEAL before the stage sees it, every
// grid output a size-sealed memfd it pre-allocates, and fds reach the stage
// over a real fd channel (a SOCK_SEQPACKET socketpair, SCM_RIGHTS), so the
// SDK binds, validates, maps, unmaps and adopts exactly as in a plugin. When
// the stage returns, the harness seals every output as the host does; a
// writable mapping left behind fails the run ("kept a writable mapping").
// Seed, topology and pyramid are derived as the host derives them from the
// run seed, the stage instance name and the grid.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "pipehost/error.hpp"
#include "pipehost/grid.hpp"
#include "pipehost/handle.hpp"
#include "pipehost/stage.hpp"
#include "pipehost/topology.hpp"
#include "pipehost/types.hpp"

namespace pipehost {

namespace detail {
struct TestOutputData;
struct TestRunData;
}  // namespace detail

struct TestLog {
  LogLevel level = LogLevel::Info;
  std::string message;
  int64_t time_ns = 0;
};

struct TestSpan {
  uint64_t id = 0;
  uint64_t parent = 0;  // 0: top level
  std::string name;
  int64_t start_ns = 0;
  int64_t end_ns = 0;
};

struct TestProgress {
  double fraction = 0;
  std::string message;
};

// TestOutput is one output of a finished run: its segment, write-sealed
// and mapped read-only like a consumer's view.
class TestOutput {
 public:
  const std::string& port() const;
  const HandleDesc& handle() const;
  PortKind kind() const { return static_cast<PortKind>(handle().kind); }
  // bytes is the output's buffer (handle offset .. offset + nbytes).
  View<const uint8_t> bytes() const;
  // grid is a dense 2-D grid output as T; throws Error for another dtype.
  template <class T>
  GridView<const T> grid() const {
    const HandleDesc& h = handle();
    check_grid(static_cast<uint32_t>(dtype_of_v<T>));
    return GridView<const T>(reinterpret_cast<const T*>(bytes().data()), static_cast<size_t>(h.shape[1]),
                             static_cast<size_t>(h.shape[0]), h.level);
  }
  // seals is the segment's F_GET_SEALS (F_SEAL_WRITE and F_SEAL_SEAL set).
  int seals() const;
  // dynamic is true for a table or blob the stage created (ADOPT).
  bool dynamic() const;

 private:
  friend struct detail::TestRunData;
  void check_grid(uint32_t dtype) const;
  std::shared_ptr<const detail::TestOutputData> d_;
};

// TestResult is everything a run reported.
struct TestResult {
  // error is empty when the stage succeeded; else the message the host
  // would show (a throw from the stage, a refused param, a kept mapping).
  std::string error;
  // status is the gRPC status code's name the host would get ("OK",
  // "INVALID_ARGUMENT" for a refused request, "ABORTED" for a stage that
  // threw, "FAILED_PRECONDITION" for an output the SDK could not hand back).
  std::string status = "OK";
  std::map<std::string, TestOutput> outputs;
  std::vector<TestLog> logs;
  std::vector<TestSpan> spans;
  std::vector<TestProgress> progress;
  std::map<std::string, double> metrics;
  // The stage's seed and pyramid as it saw them.
  uint64_t seed = 0;
  std::vector<Level> levels;
  int64_t start_ns = 0, end_ns = 0;
  uint64_t peak_rss_bytes = 0;

  bool ok() const { return error.empty(); }
  // output is the output on port; throws Error naming the ports there are.
  const TestOutput& output(const std::string& port) const;
  template <class T>
  GridView<const T> grid(const std::string& port) const {
    return output(port).grid<T>();
  }
  // span is the first span called name, or nullptr.
  const TestSpan* span(const std::string& name) const;
  // logged reports whether some log line contains text.
  bool logged(const std::string& text) const;
};

// TestRun configures one in-process run of a stage. Defaults are the host's
// for a config that sets nothing: run seed 0, a 64x64 plane, one level.
// Mistakes in the setup (an unknown port, a grid of the wrong size or
// dtype, a required input left out) throw Error; what the stage does is
// reported in the TestResult.
class TestRun {
 public:
  explicit TestRun(const Stage& stage);
  explicit TestRun(StageDef def);
  ~TestRun();
  TestRun(TestRun&&) noexcept;
  TestRun& operator=(TestRun&&) noexcept;

  // stage_name is the stage instance name (default "test"); with the run
  // seed it gives the stage's seed.
  TestRun& stage_name(std::string name);
  TestRun& seed(uint64_t run_seed);
  // grid sets the surface and its size; levels is how many pyramid levels
  // (1 = native only). Throws Error for a size the topology refuses.
  TestRun& grid(const std::string& topology, int64_t width, int64_t height, int levels = 1,
                TopologyOptions opts = {});
  TestRun& attempt(unsigned n);
  // cancel_when makes Context::cancelled() ask f (e.g. cancel after n checks).
  TestRun& cancel_when(std::function<bool()> f);

  // param sets a param as a pipeline config would (bool, an integer, a
  // float or a string); the SDK checks it against the declaration.
  template <class T>
  TestRun& param(const std::string& name, const T& value) {
    return set_param(name, detail::to_param_value(value));
  }
  TestRun& param(const std::string& name, const char* value) { return set_param(name, ParamValue(std::string(value))); }

  // input gives a grid input: width*height cells of the port's level, row-major.
  template <class T>
  TestRun& input(const std::string& port, const std::vector<T>& cells) {
    return grid_input(port, static_cast<uint32_t>(dtype_of_v<T>), cells.data(), cells.size() * sizeof(T));
  }
  template <class T>
  TestRun& input(const std::string& port, GridView<const T> g) {
    return grid_input(port, static_cast<uint32_t>(dtype_of_v<T>), g.data(), g.size() * sizeof(T));
  }
  // input_bytes gives a table (an Arrow IPC file) or blob input.
  TestRun& input_bytes(const std::string& port, const void* data, size_t size);

  // level is the size of pyramid level n of the configured grid.
  Level level(unsigned n = 0) const;

  // run runs the stage once and returns what it reported.
  TestResult run();

 private:
  TestRun& set_param(const std::string& name, ParamValue v);
  TestRun& grid_input(const std::string& port, uint32_t dtype, const void* data, size_t size);
  std::unique_ptr<detail::TestRunData> d_;
};

}  // namespace pipehost
