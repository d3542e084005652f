// The reference kernels (plugins/cpp/ref) on their own, and the stages
// around them through the stage test harness; their bit-identity with the Go
// stages is checked through the host (host/runner).
#include <algorithm>
#include <vector>

#include <gtest/gtest.h>

#include "pipehost/testing.hpp"
#include "ref.hpp"

using pipehost::GridView;

TEST(RefKernels, NoiseIsDeterministicAndInRange) {
  std::vector<float> a(64 * 32), b(64 * 32), c(64 * 32);
  ref::noise(GridView<float>(a.data(), 64, 32), 42, 4, 16);
  ref::noise(GridView<float>(b.data(), 64, 32), 42, 4, 16);
  ref::noise(GridView<float>(c.data(), 64, 32), 43, 4, 16);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (float v : a) {
    EXPECT_GE(v, 0.0f);
    EXPECT_LT(v, 2.0f);
    // acc is an integer below 2^17 divided by 2^16: a multiple of 2^-16.
    EXPECT_EQ(v * 65536.0f, static_cast<float>(static_cast<uint32_t>(v * 65536.0f)));
  }
}

TEST(RefKernels, NoiseOctaveZeroHitsTheLatticeAtCellCorners) {
  std::vector<float> out(32 * 16);
  const uint64_t seed = 99;
  ref::noise(GridView<float>(out.data(), 32, 16), seed, 1, 16);
  const uint64_t key = pipehost::seed::derive(seed, 0);
  // At (x, y) = (16 i, 16 j) the weights are 0: the value is lattice(i, j).
  for (uint64_t j = 0; j < 1; ++j) {
    for (uint64_t i = 0; i < 2; ++i) {
      const uint64_t lat = pipehost::seed::derive(key, (j << 32) | i) >> 48;
      EXPECT_EQ(out[(16 * j) * 32 + 16 * i], static_cast<float>(lat) / 65536.0f);
    }
  }
}

TEST(RefKernels, NoiseParamErrorsNameTheParam) {
  EXPECT_NO_THROW(ref::check_noise_params(4, 16, 64, 32));
  for (auto [oct, cell, w, h, want] : std::vector<std::tuple<int64_t, int64_t, size_t, size_t, const char*>>{
           {0, 16, 64, 32, "octaves"}, {9, 256, 256, 256, "octaves"}, {4, 12, 48, 48, "cell"},
           {4, 4, 64, 32, "cell"},     {4, 16, 40, 32, "cell"},       {1, 0, 8, 8, "cell"}}) {
    try {
      ref::check_noise_params(oct, cell, w, h);
      FAIL() << oct << " " << cell;
    } catch (const pipehost::Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("param ") + want), std::string::npos) << e.what();
    }
  }
}

TEST(RefKernels, BlurRadiusZeroIsIdentityAndConstantsStay) {
  const auto torus = pipehost::Topology::load("torus", 16, 8);
  std::vector<float> in(16 * 8), out(16 * 8);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i) * 0.25f;
  ref::blur(GridView<const float>(in.data(), 16, 8), GridView<float>(out.data(), 16, 8), torus.grid(), 0);
  EXPECT_EQ(in, out);
  std::fill(in.begin(), in.end(), 3.0f);
  const auto sphere = pipehost::Topology::load("sphere", 16, 8);
  ref::blur(GridView<const float>(in.data(), 16, 8), GridView<float>(out.data(), 16, 8), sphere.grid(), 5);
  for (float v : out) EXPECT_EQ(v, 3.0f);
}

TEST(RefKernels, BlurWrapsOnATorus) {
  // A single spike at (0, 0) spreads to the far corner on a torus, not on a plane.
  std::vector<float> in(8 * 8, 0.0f), out(8 * 8);
  in[0] = 9.0f;
  const auto torus = pipehost::Topology::load("torus", 8, 8);
  ref::blur(GridView<const float>(in.data(), 8, 8), GridView<float>(out.data(), 8, 8), torus.grid(), 1);
  EXPECT_EQ(out[7 * 8 + 7], 1.0f);
  const auto plane = pipehost::Topology::load("plane", 8, 8);
  ref::blur(GridView<const float>(in.data(), 8, 8), GridView<float>(out.data(), 8, 8), plane.grid(), 1);
  EXPECT_EQ(out[7 * 8 + 7], 0.0f);
  EXPECT_EQ(out[0], 4.0f) << "clamped: the corner cell counts four times";
}

namespace {
pipehost::Stage ref_stage(const std::string& kind) {
  for (const auto& s : ref::stages()) {
    if (s.def().kind == kind) return s;
  }
  throw std::runtime_error("no stage " + kind);
}
}  // namespace

TEST(RefStages, NoiseStageIsTheKernelWithTheHostsSeed) {
  const auto r = pipehost::TestRun(ref_stage("ref.noise-cpp"))
                     .seed(7)
                     .stage_name("terrain")
                     .grid("torus", 64, 32)
                     .param("octaves", 3)
                     .run();
  ASSERT_TRUE(r.ok()) << r.error;
  std::vector<float> want(64 * 32);
  ref::noise(GridView<float>(want.data(), 64, 32), pipehost::seed::stage_seed(7, "terrain"), 3, 16);
  const auto out = r.grid<float>("out");
  ASSERT_EQ(out.size(), want.size());
  EXPECT_TRUE(std::equal(out.begin(), out.end(), want.begin()));
  ASSERT_NE(r.span("noise"), nullptr);
  EXPECT_FALSE(r.progress.empty());
}

TEST(RefStages, BlurStageRefusesABadRadiusAndBlursOtherwise) {
  std::vector<float> in(16 * 8, 0.0f);
  in[0] = 9.0f;
  pipehost::TestRun t(ref_stage("ref.blur-cpp"));
  t.grid("torus", 16, 8).input("in", in);
  auto bad = t.param("radius", 17).run();
  EXPECT_EQ(bad.status, "ABORTED");
  EXPECT_NE(bad.error.find("param radius = 17"), std::string::npos) << bad.error;
  const auto r = t.param("radius", 1).run();
  ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(r.grid<float>("out")(15, 7), 1.0f) << "the spike wraps to the far corner on a torus";
}
