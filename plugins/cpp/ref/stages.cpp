// The reference stages' declarations, shared by the plugin (main.cpp) and
// the SDK's tests, which run them in-process with the stage test harness.
#include "ref.hpp"

namespace {

const pipehost::Param<int64_t> kOctaves{"octaves", 4, "octaves of value noise (1..8)"};
const pipehost::Param<int64_t> kCell{"cell", 16, "lattice spacing of octave 0 in cells (a power of two)"};
const pipehost::Param<int64_t> kRadius{"radius", 1, "box radius in cells (0..16)"};

// every_rows reports progress and honours cancellation between rows.
auto every_rows(pipehost::Context& ctx, size_t height, const char* what) {
  return [&ctx, height, what](size_t y) {
    if (y % 64 == 0) {
      ctx.throw_if_cancelled();
      ctx.progress(static_cast<double>(y) / static_cast<double>(height), what);
    }
  };
}

void run_noise(pipehost::Context& ctx) {
  auto out = ctx.output_grid<float>("out");
  const int64_t octaves = ctx[kOctaves], cell = ctx[kCell];
  ref::check_noise_params(octaves, cell, out.width(), out.height());
  auto span = ctx.timed("noise");
  ref::noise(out, ctx.seed(), static_cast<int>(octaves), cell, every_rows(ctx, out.height(), "noise"));
}

void run_blur(pipehost::Context& ctx) {
  const int64_t radius = ctx[kRadius];
  if (radius < 0 || radius > 16) {
    throw pipehost::Error("param radius = " + std::to_string(radius) + ": want 0..16");
  }
  auto in = ctx.input_grid<float>("in");
  auto out = ctx.output_grid<float>("out");
  const pipehost::Grid& grid = ctx.topology().grid();
  if (in.width() != static_cast<size_t>(grid.width()) || in.height() != static_cast<size_t>(grid.height()) ||
      out.width() != in.width() || out.height() != in.height()) {
    throw pipehost::Error("ref.blur: input, output and native grid sizes differ");
  }
  auto span = ctx.timed("blur");
  ref::blur(in, out, grid, static_cast<int>(radius), every_rows(ctx, in.height(), "blur"));
}

}  // namespace

namespace ref {

std::vector<pipehost::Stage> stages() {
  return {
      pipehost::Stage{"ref.noise-cpp", "1.0.0"}
          .doc("Integer value noise, bit-identical across SDKs.")
          .output(pipehost::grid_port("out", pipehost::DType::F32))
          .param(kOctaves)
          .param(kCell)
          .concurrent()
          .run(run_noise),
      pipehost::Stage{"ref.blur-cpp", "1.0.0"}
          .doc("Box blur that respects the topology's wrap rules.")
          .input(pipehost::grid_port("in", pipehost::DType::F32))
          .output(pipehost::grid_port("out", pipehost::DType::F32))
          .param(kRadius)
          .concurrent()
          .run(run_blur),
  };
}

}  // namespace ref
