// The pipehost C++ SDK. Include this one header:
//
//   #include <pipehost/pipehost.hpp>
//
//   int main() {
//     pipehost::serve({pipehost::Stage{"demo.fill", "1.0.0"}
//         .output(pipehost::grid_port("out", pipehost::DType::F32))
//         .run([](pipehost::Context& ctx) {
//           auto out = ctx.output_grid<float>("out");
//           for (float& v : out) v = 1.0f;
//         })});
//   }
//
// See docs/sdk-cpp.md.
#pragma once

#include "pipehost/context.hpp"
#include "pipehost/error.hpp"
#include "pipehost/grid.hpp"
#include "pipehost/handle.hpp"
#include "pipehost/log.hpp"
#include "pipehost/seed.hpp"
#include "pipehost/stage.hpp"
#include "pipehost/topology.hpp"
#include "pipehost/types.hpp"
