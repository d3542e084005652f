// minimal-cpp: the smallest C++ plugin, for launch-time and per-stage
// overhead measurements. minimal-cpp.noop does nothing; minimal-cpp.fill
// writes its output grid once.
#include <pipehost/pipehost.hpp>

int main() {
  pipehost::serve({
      pipehost::Stage{"minimal-cpp.noop", "1"}
          .doc("Does nothing.")
          .concurrent()
          .run([](pipehost::Context&) {}),
      pipehost::Stage{"minimal-cpp.fill", "1"}
          .doc("Fills its output grid with value.")
          .output(pipehost::grid_port("out", pipehost::DType::F32))
          .param(pipehost::Param<double>{"value", 1.0, "the value of every cell"})
          .concurrent()
          .run([](pipehost::Context& ctx) {
            const float v = static_cast<float>(ctx.param<double>("value"));
            for (float& x : ctx.output_grid<float>("out")) x = v;
          }),
  });
}
