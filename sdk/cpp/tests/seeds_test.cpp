#include <cstring>

#include <pipehost/seed.hpp>

#include "testdata.hpp"

namespace seed = pipehost::seed;
using testdata::u64;

class Seeds : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { v_ = new nlohmann::json(testdata::load("seeds.json")); }
  static void TearDownTestSuite() { delete v_; }
  static const nlohmann::json& v() { return *v_; }
  static nlohmann::json* v_;
};
nlohmann::json* Seeds::v_ = nullptr;

TEST_F(Seeds, SchemaAndCounts) {
  EXPECT_EQ(v()["schema"], "pipehost.seeds/1");
  for (const char* k : {"splitmix64", "fnv1a64", "stage_seeds", "streams", "forks", "children"}) {
    EXPECT_GT(v()[k].size(), 0u) << k;
  }
}

TEST_F(Seeds, SplitMix64) {
  for (const auto& c : v()["splitmix64"]) {
    seed::SplitMix64 g(u64(c["seed"]));
    for (const auto& want : c["outputs"]) EXPECT_EQ(g.next(), u64(want)) << c["seed"];
  }
}

TEST_F(Seeds, Fnv1a64HashesTheBytes) {
  for (const auto& c : v()["fnv1a64"]) {
    const std::string name = testdata::unhex(c["name_hex"]);
    EXPECT_EQ(name, c["name"].get<std::string>());
    EXPECT_EQ(seed::fnv1a64(name), u64(c["hash"])) << c["name_hex"];
  }
}

TEST_F(Seeds, StageSeeds) {
  for (const auto& c : v()["stage_seeds"]) {
    const std::string stage = testdata::unhex(c["stage_hex"]);
    const uint64_t run = u64(c["run_seed"]);
    EXPECT_EQ(seed::stage_seed(run, stage), u64(c["stage_seed"])) << c["stage_hex"];
    auto s = seed::Stream::for_stage(run, stage);
    EXPECT_EQ(s.seed(), u64(c["stage_seed"]));
    for (const auto& want : c["first_outputs"]) EXPECT_EQ(s.uint64(), u64(want));
    // ForStage(r, name) == New(r).Child(name).
    EXPECT_EQ(seed::Stream(run).child(stage).seed(), u64(c["stage_seed"]));
  }
}

TEST_F(Seeds, Streams) {
  for (const auto& c : v()["streams"]) {
    const uint64_t sd = u64(c["seed"]);
    seed::Stream s(sd);
    for (const auto& want : c["uint64"]) EXPECT_EQ(s.uint64(), u64(want));
    seed::Stream f(sd);
    for (const auto& want : c["float64"]) {
      const double got = f.float64();
      uint64_t bits;
      std::memcpy(&bits, &got, sizeof bits);
      EXPECT_EQ(bits, u64(want["bits"])) << got;
      EXPECT_GE(got, 0.0);
      EXPECT_LT(got, 1.0);
    }
    for (const auto& un : c["uint64n"]) {
      seed::Stream r(sd);
      const uint64_t n = u64(un["n"]);
      for (const auto& want : un["values"]) EXPECT_EQ(r.uint64n(n), u64(want)) << "n=" << n;
    }
  }
}

TEST_F(Seeds, ForksReadOnlyTheKey) {
  for (const auto& c : v()["forks"]) {
    seed::Stream parent(u64(c["seed"]));
    parent.uint64();  // drawing does not change forks
    auto f = parent.fork(u64(c["index"]));
    EXPECT_EQ(f.seed(), u64(c["derived_seed"]));
    for (const auto& want : c["first_outputs"]) EXPECT_EQ(f.uint64(), u64(want));
  }
}

TEST_F(Seeds, Children) {
  for (const auto& c : v()["children"]) {
    const std::string label = testdata::unhex(c["label_hex"]);
    auto ch = seed::Stream(u64(c["seed"])).child(label);
    EXPECT_EQ(ch.seed(), u64(c["derived_seed"]));
    for (const auto& want : c["first_outputs"]) EXPECT_EQ(ch.uint64(), u64(want));
  }
}

TEST(SeedsErrors, ZeroBoundsThrow) {
  seed::Stream s(1);
  EXPECT_THROW(s.uint64n(0), std::invalid_argument);
  EXPECT_THROW(s.intn(0), std::invalid_argument);
  EXPECT_THROW(s.intn(-3), std::invalid_argument);
  EXPECT_LT(s.intn(7), 7);
}

TEST(SeedsConstexpr, UsableAtCompileTime) {
  static_assert(seed::mix64(0) == 0, "mix64(0)");
  static_assert(seed::fnv1a64("") == 0xCBF29CE484222325ULL, "fnv offset");
  constexpr uint64_t first = seed::SplitMix64(0).next();
  static_assert(first == 0xe220a8397b1dcdafULL, "docs/seeds.md: seed 0");
  SUCCEED();
}
