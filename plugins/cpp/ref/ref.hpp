// The reference kernels of docs/reference-stage.md, bit-identical with the
// Go and Rust versions. Free of plugin plumbing so tests can call them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <pipehost/pipehost.hpp>

namespace ref {

// stages declares ref.noise-cpp and ref.blur-cpp.
std::vector<pipehost::Stage> stages();

// check_noise_params throws pipehost::Error naming the bad param.
void check_noise_params(int64_t octaves, int64_t cell, size_t width, size_t height);

// noise fills out with integer value noise for the stage seed. on_row is
// called after each row (progress, cancellation).
void noise(pipehost::GridView<float> out, uint64_t seed, int octaves, int64_t cell,
           const std::function<void(size_t row)>& on_row = {});

// blur is the topology-aware box blur of in into out (same size as grid).
void blur(pipehost::GridView<const float> in, pipehost::GridView<float> out, const pipehost::Grid& grid, int radius,
          const std::function<void(size_t row)>& on_row = {});

}  // namespace ref
