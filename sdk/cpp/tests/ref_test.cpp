// The reference kernels (plugins/cpp/ref) on their own; their bit-identity
// with the Go stages is checked through the host (host/runner).
#include <vector>

#include <gtest/gtest.h>

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
