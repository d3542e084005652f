// The stage test harness (pipehost/testing.hpp): stages run in-process on
// real sealed memfds, and what they report comes back.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstring>

#include <gtest/gtest.h>

#include "pipehost/pipehost.hpp"
#include "pipehost/testing.hpp"

using namespace pipehost;

namespace {

const Param<double> kStrength{"strength", 0.5, "blend toward the 3x3 mean"};

// smooth blends each cell toward the wrap-aware mean of its 3x3
// neighbourhood, reporting through every channel the harness collects.
Stage smooth_stage() {
  return Stage{"test.smooth", "1.0.0"}
      .input(grid_port("in", DType::F32))
      .output(grid_port("out", DType::F32))
      .param(kStrength)
      .run([](Context& ctx) {
        const double s = ctx[kStrength];
        if (!(s >= 0 && s <= 1)) throw Error("param strength: must be in [0, 1], got " + std::to_string(s));
        const auto in = ctx.input_grid<float>("in");
        auto out = ctx.output_grid<float>("out");
        const Grid& g = ctx.topology().grid();
        auto span = ctx.timed("smooth");
        for (size_t i = 0; i < in.size(); ++i) {
          double sum = in[i];
          for (int64_t n : g.neighbors8(static_cast<int64_t>(i))) sum += n >= 0 ? in[static_cast<size_t>(n)] : in[i];
          out[i] = static_cast<float>((1 - s) * in[i] + s * (sum / 9));
        }
        ctx.progress(1, "smoothed");
        ctx.info("smoothed " + std::to_string(in.size()) + " cells");
        ctx.metric("cells", double(in.size()));
      });
}

std::vector<float> ramp(size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>((i * 7919) % 101);
  return v;
}

}  // namespace

TEST(TestRun, GridInOutSealedAndCollected) {
  TestRun t(smooth_stage());
  t.grid("torus", 8, 4).param("strength", 1.0);
  const std::vector<float> cells = ramp(32);
  const TestResult r = t.input("in", cells).run();
  ASSERT_TRUE(r.ok()) << r.error;
  const GridView<const float> out = r.grid<float>("out");
  ASSERT_EQ(out.width(), 8u);
  ASSERT_EQ(out.height(), 4u);
  // Cell (0,0) on a torus: its neighbours wrap to the far row and column.
  double sum = 0;
  for (int dy = -1; dy <= 1; ++dy) {
    for (int dx = -1; dx <= 1; ++dx) sum += cells[((dy + 4) % 4) * 8 + (dx + 8) % 8];
  }
  EXPECT_FLOAT_EQ(out(0, 0), static_cast<float>(sum / 9));
  // The output is sealed as the host seals it; the bytes are the consumer's.
  const int seals = r.output("out").seals();
  EXPECT_TRUE(seals & F_SEAL_WRITE);
  EXPECT_TRUE(seals & F_SEAL_SEAL);
  EXPECT_FALSE(r.output("out").dynamic());
  ASSERT_EQ(r.spans.size(), 1u);
  EXPECT_EQ(r.spans[0].name, "smooth");
  EXPECT_LE(r.spans[0].start_ns, r.spans[0].end_ns);
  EXPECT_TRUE(r.logged("smoothed 32 cells"));
  ASSERT_FALSE(r.progress.empty());
  EXPECT_EQ(r.progress.back().fraction, 1.0);
  EXPECT_EQ(r.metrics.at("cells"), 32);
  EXPECT_GT(r.end_ns, 0);
}

TEST(TestRun, StrengthZeroIsIdentityAndInputsStaySealed) {
  const std::vector<float> cells = ramp(64 * 64);
  const TestResult r = TestRun(smooth_stage()).param("strength", 0).input("in", cells).run();
  ASSERT_TRUE(r.ok()) << r.error;
  const auto out = r.grid<float>("out");
  ASSERT_EQ(out.size(), cells.size()) << "the default grid is the host's: a 64x64 plane";
  for (size_t i = 0; i < cells.size(); ++i) ASSERT_EQ(out[i], cells[i]) << i;
}

TEST(TestRun, ParamsAreCheckedLikeTheHostsAndStageErrorsReported) {
  const std::vector<float> cells = ramp(64 * 64);
  // A string for a float param: refused before the stage runs.
  TestResult r = TestRun(smooth_stage()).param("strength", "high").input("in", cells).run();
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status, "INVALID_ARGUMENT");
  EXPECT_NE(r.error.find("param \"strength\": expected a number"), std::string::npos) << r.error;
  // A value the stage itself refuses: its exception is the error.
  r = TestRun(smooth_stage()).param("strength", 2.5).input("in", cells).run();
  EXPECT_EQ(r.status, "ABORTED");
  EXPECT_NE(r.error.find("must be in [0, 1], got 2.5"), std::string::npos) << r.error;
  EXPECT_THROW(r.output("out"), Error) << "a failed stage has no outputs";
  // Setup mistakes are the test's, thrown at once.
  EXPECT_THROW(TestRun(smooth_stage()).param("nope", 1), Error);
  EXPECT_THROW(TestRun(smooth_stage()).input("in", std::vector<float>(10)), Error);
  EXPECT_THROW(TestRun(smooth_stage()).input("in", std::vector<double>(64 * 64)), Error);
  EXPECT_THROW(TestRun(smooth_stage()).input("out", cells), Error);
  try {
    TestRun(smooth_stage()).run();
    FAIL() << "a required input left out was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("input \"in\" is required"), std::string::npos) << e.what();
  }
}

TEST(TestRun, SeedTopologyAndPyramidAreTheHosts) {
  uint64_t seen_seed = 0;
  std::string seen_kind;
  int64_t seen_w1 = 0;
  double seen_radius = 0;
  const Stage s = Stage{"test.probe", "1"}
                      .output(grid_port("coarse", DType::U64, 1))
                      .run([&](Context& ctx) {
                        seen_seed = ctx.seed();
                        seen_kind = ctx.topology().kind_name();
                        seen_radius = ctx.topology().radius();
                        seen_w1 = ctx.topology(1).width();
                        auto out = ctx.output_grid<uint64_t>("coarse");
                        auto rng = ctx.rng();
                        for (auto& v : out) v = rng.uint64();
                      });
  const TestResult r = TestRun(s).seed(42).stage_name("probe").grid("sphere", 64, 32, 2).run();
  ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(seen_seed, seed::stage_seed(42, "probe"));
  EXPECT_EQ(r.seed, seen_seed);
  EXPECT_EQ(seen_kind, "sphere");
  EXPECT_EQ(seen_radius, Topology::load("sphere", 64, 32).radius());
  const auto levels = pipehost::levels("sphere", 64, 32, 1);
  EXPECT_EQ(seen_w1, levels[1].width);
  const auto out = r.grid<uint64_t>("coarse");
  EXPECT_EQ(out.width(), static_cast<size_t>(levels[1].width));
  EXPECT_EQ(out.level(), 1u);
  seed::Stream want(seed::stage_seed(42, "probe"));
  EXPECT_EQ(out[0], want.uint64());
  // Another instance name is another seed.
  EXPECT_NE(TestRun(s).seed(42).stage_name("other").grid("sphere", 64, 32, 2).run().seed, r.seed);
  EXPECT_THROW(TestRun(s).grid("sphere", 64, 32, 1).run(), Error) << "level 1 is not in a one-level pyramid";
}

TEST(TestRun, DynamicOutputsComeBackSealed) {
  const char text[] = "adopted bytes";
  const Stage s = Stage{"test.dyn", "1"}
                      .output(blob_port("made"))
                      .output(blob_port("streamed"))
                      .output(blob_port("adopted"))
                      .run([&](Context& ctx) {
                        auto b = ctx.dynamic_output("made", 4);
                        std::memcpy(b.data(), "abcd", 4);
                        OutputStream& w = ctx.output_stream("streamed");
                        w.write("hello, ");
                        w.write("world");
                        const int fd = ::memfd_create("own", MFD_CLOEXEC | MFD_ALLOW_SEALING);
                        if (fd < 0) throw Error("memfd_create failed");
                        if (::write(fd, text, sizeof text) != static_cast<ssize_t>(sizeof text)) {
                          ::close(fd);
                          throw Error("write failed");
                        }
                        ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
                        ctx.adopt_output("adopted", fd);
                      });
  const TestResult r = TestRun(s).run();
  ASSERT_TRUE(r.ok()) << r.error;
  const auto str = [](View<const uint8_t> v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size()); };
  EXPECT_EQ(str(r.output("made").bytes()), "abcd");
  EXPECT_EQ(str(r.output("streamed").bytes()), "hello, world");
  EXPECT_EQ(str(r.output("adopted").bytes()), std::string(text, sizeof text));
  for (const auto& [name, o] : r.outputs) {
    EXPECT_TRUE(o.dynamic()) << name;
    EXPECT_EQ(o.kind(), PortKind::Blob) << name;
    EXPECT_TRUE(o.seals() & F_SEAL_WRITE) << name;
  }
}

TEST(TestRun, AdoptRefusesAnUnsealedSizeAndASecondProduction) {
  const Stage s = Stage{"test.adopt", "1"}.output(blob_port("b")).run([](Context& ctx) {
    const int fd = ::memfd_create("loose", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    ctx.adopt_output("b", fd);
  });
  const TestResult r = TestRun(s).run();
  EXPECT_EQ(r.status, "ABORTED");
  EXPECT_NE(r.error.find("size is not sealed"), std::string::npos) << r.error;
  const Stage twice = Stage{"test.twice", "1"}.output(blob_port("b")).run([](Context& ctx) {
    ctx.dynamic_output("b", 1);
    ctx.dynamic_output("b", 1);
  });
  const TestResult r2 = TestRun(twice).run();
  EXPECT_NE(r2.error.find("already produced"), std::string::npos) << r2.error;
}

TEST(TestRun, AKeptWritableMappingFailsTheRunAsTheHostWould) {
  void* leaked = nullptr;
  size_t leaked_len = 0;
  const Stage s = Stage{"test.keepmap", "1"}.output(grid_port("out", DType::F32)).run([&](Context& ctx) {
    auto out = ctx.output_grid<float>("out");
    for (float& v : out) v = 1;
    leaked_len = out.size() * sizeof(float);
    // mremap with old size 0 duplicates the shared mapping; the SDK unmaps
    // only its own.
    leaked = ::mremap(out.data(), 0, leaked_len, MREMAP_MAYMOVE);
    if (leaked == MAP_FAILED) throw Error("mremap failed");
  });
  const TestResult r = TestRun(s).grid("plane", 32, 32).run();
  EXPECT_EQ(r.status, "FAILED_PRECONDITION");
  EXPECT_NE(r.error.find("kept a writable mapping of its output \"out\""), std::string::npos) << r.error;
  EXPECT_TRUE(r.outputs.empty());
  ASSERT_NE(leaked, nullptr);
  ::munmap(leaked, leaked_len);
}

TEST(TestRun, CancellationReachesTheStage) {
  int checks = 0;
  const Stage s = Stage{"test.cancel", "1"}.run([&](Context& ctx) {
    for (;;) {
      ++checks;
      ctx.throw_if_cancelled();
    }
  });
  const TestResult r = TestRun(s).cancel_when([&] { return checks >= 3; }).run();
  EXPECT_EQ(r.status, "ABORTED");
  EXPECT_NE(r.error.find("cancelled"), std::string::npos) << r.error;
  EXPECT_EQ(checks, 3);
}

TEST(TestRun, NothingLeaksAcrossManyRuns) {
  const auto count_fds = [] {
    int n = 0;
    for (int fd = 0; fd < 4096; ++fd) n += ::fcntl(fd, F_GETFD) != -1;
    return n;
  };
  const std::vector<float> cells = ramp(64 * 64);
  { const TestResult warm = TestRun(smooth_stage()).input("in", cells).run(); }
  const int before = count_fds();
  for (int i = 0; i < 20; ++i) {
    const TestResult r = TestRun(smooth_stage()).input("in", cells).run();
    ASSERT_TRUE(r.ok()) << r.error;
  }
  EXPECT_EQ(count_fds(), before) << "segments or channel fds leaked";
}
