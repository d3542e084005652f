#include "slope.hpp"

#include <cmath>
#include <string>

namespace slope {

namespace {

const pipehost::Param<double> kExaggeration{"exaggeration", 1.0, "multiplies heights before the slope is taken (> 0)"};

// run takes central differences over true distances on the surface (metres
// between cell centres, so a sphere's cells narrowing toward the poles
// count), one-sided at a clamped edge.
void run(pipehost::Context& ctx) {
  const double k = ctx[kExaggeration];
  if (!(k > 0) || !std::isfinite(k)) {
    throw pipehost::Error("param exaggeration = " + std::to_string(k) + ": want a finite number > 0");
  }
  const auto z = ctx.input_grid<float>("elevation");  // GridView<const float>: read-only, zero-copy
  auto out = ctx.output_grid<float>("slope");         // GridView<float>: writable, zero-copy
  const pipehost::Topology& topo = ctx.topology();
  const pipehost::Grid& grid = topo.grid();
  const double kDegrees = 180.0 / std::acos(-1.0);
  auto span = ctx.timed("slope");
  // gradient is dz/ds between the neighbours a and b of cell i (either may
  // be i itself at a clamped edge).
  const auto gradient = [&](int64_t i, int64_t a, int64_t b) {
    if (a < 0) a = i;
    if (b < 0) b = i;
    if (a == b) return 0.0;
    return (double(z[static_cast<size_t>(a)]) - double(z[static_cast<size_t>(b)])) * k / topo.distance(a, b);
  };
  for (size_t y = 0; y < z.height(); ++y) {
    if (y % 64 == 0) {
      ctx.throw_if_cancelled();
      ctx.progress(double(y) / double(z.height()), "slope");
    }
    for (size_t x = 0; x < z.width(); ++x) {
      const int64_t i = grid.index(int64_t(x), int64_t(y));
      const double gx = gradient(i, grid.step(i, 1, 0), grid.step(i, -1, 0));
      const double gy = gradient(i, grid.step(i, 0, 1), grid.step(i, 0, -1));
      out[static_cast<size_t>(i)] = static_cast<float>(std::atan(std::hypot(gx, gy)) * kDegrees);
    }
  }
  double steepest = 0;
  for (float v : out) steepest = std::fmax(steepest, v);
  ctx.metric("steepest_degrees", steepest);
}

}  // namespace

pipehost::Stage stage() {
  return pipehost::Stage{"terrain.slope", "1.0.0"}
      .doc("Slope of an elevation grid in degrees, from distances on the run's surface.")
      .input(pipehost::grid_port("elevation", pipehost::DType::F32).with_doc("metres"))
      .output(pipehost::grid_port("slope", pipehost::DType::F32).with_doc("degrees, 0..90"))
      .param(kExaggeration)
      .concurrent()  // several runs may share this process
      .run(run);
}

}  // namespace slope
