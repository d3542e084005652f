// terrain.slope through the stage test harness, on real sealed memfds.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <pipehost/testing.hpp>

#include "slope.hpp"

namespace {
int failures = 0;
void check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    ++failures;
  }
}
}  // namespace

int main() {
  // A ramp rising 1 m per 1 m cell on a plane is 45 degrees everywhere,
  // the clamped edges included (one-sided there).
  std::vector<float> ramp(16 * 8);
  for (size_t i = 0; i < ramp.size(); ++i) ramp[i] = float(i % 16);
  pipehost::TestRun t(slope::stage());
  t.grid("plane", 16, 8).input("elevation", ramp);
  const auto r = t.run();
  check(r.ok(), "the ramp runs: " + r.error);
  if (r.ok()) {
    const auto s = r.grid<float>("slope");
    for (float v : s) check(std::fabs(v - 45.0f) < 1e-4f, "45 degrees, got " + std::to_string(v));
    check(std::fabs(r.metrics.at("steepest_degrees") - 45.0) < 1e-4, "steepest metric");
  }
  // Exaggerated three times: atan(3).
  const auto r3 = t.param("exaggeration", 3.0).run();
  check(r3.ok() && std::fabs(r3.grid<float>("slope")(5, 5) - float(std::atan(3.0) * 180 / std::acos(-1.0))) < 1e-4f,
        "exaggeration 3 gives atan(3)");
  // Flat ground on a sphere is flat, poles and the date line included.
  const auto flat = pipehost::TestRun(slope::stage())
                        .grid("sphere", 32, 16)
                        .input("elevation", std::vector<float>(32 * 16, 100.0f))
                        .run();
  check(flat.ok() && flat.metrics.at("steepest_degrees") == 0, "flat sphere has no slope");
  // A refused param names itself.
  const auto bad = t.param("exaggeration", 0.0).run();
  check(!bad.ok() && bad.error.find("param exaggeration") != std::string::npos, "exaggeration 0 refused: " + bad.error);
  if (failures) return 1;
  std::printf("terrain.slope: all checks passed\n");
  return 0;
}
