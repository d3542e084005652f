// hydro.flow (plugins/cpp/hydro) through the stage test harness: its grids
// and its rivers table, a dynamic output, come back sealed.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hydro.hpp"
#include "pipehost/testing.hpp"

TEST(HydroStage, EverythingDrainsToTheBasinAndRiversAreAnArrowTable) {
  // No sea: every cell drains to the lowest one, (0, 0), so its accumulated
  // area is the whole plane's (1 m cells, areas in km²).
  const int W = 16, H = 8;
  std::vector<float> elev(W * H);
  for (int y = 0; y < H; ++y) {
    for (int x = 0; x < W; ++x) elev[y * W + x] = float(1 + x + y);
  }
  const auto r = pipehost::TestRun(hydro::stage())
                     .grid("plane", W, H)
                     .param("river_area", 1e-5)  // 10 cells
                     .input("elevation", elev)
                     .run();
  ASSERT_TRUE(r.ok()) << r.error;
  const auto accum = r.grid<float>("accum");
  const auto filled = r.grid<float>("filled");
  EXPECT_NEAR(accum(0, 0), W * H * 1e-6, 1e-9);
  for (size_t i = 0; i < elev.size(); ++i) {
    ASSERT_LE(accum[i], accum(0, 0)) << i;
    ASSERT_EQ(filled[i], elev[i]) << "a slope without pits is not filled, cell " << i;
  }
  const pipehost::TestOutput& rivers = r.output("rivers");
  EXPECT_TRUE(rivers.dynamic());
  EXPECT_EQ(rivers.kind(), pipehost::PortKind::Table);
  const auto b = rivers.bytes();
  ASSERT_GT(b.size(), 12u);
  EXPECT_EQ(std::memcmp(b.data(), "ARROW1", 6), 0) << "an Arrow IPC file starts with its magic";
  EXPECT_EQ(std::memcmp(b.data() + b.size() - 6, "ARROW1", 6), 0) << "and ends with it";
  EXPECT_GT(r.metrics.at("rivers"), 0);
  for (const char* span : {"priority flood", "directions", "accumulation", "rivers"}) {
    EXPECT_NE(r.span(span), nullptr) << span;
  }
}

TEST(HydroStage, RefusesABadRiverArea) {
  const auto r = pipehost::TestRun(hydro::stage())
                     .grid("plane", 8, 8)
                     .param("river_area", 0.0)
                     .input("elevation", std::vector<float>(64, 1.0f))
                     .run();
  EXPECT_EQ(r.status, "ABORTED");
  EXPECT_NE(r.error.find("param river_area"), std::string::npos) << r.error;
}
