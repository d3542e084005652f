#include "ref.hpp"

#include <vector>

namespace ref {

namespace {

// weight is the 16-bit fixed-point interpolation weight of offset f in a
// lattice cell of 2^k.
uint64_t weight(uint64_t f, unsigned k) { return k > 16 ? f >> (k - 16) : f << (16 - k); }

unsigned log2_exact(uint64_t s) { return static_cast<unsigned>(__builtin_ctzll(s)); }

struct Octave {
  unsigned k = 0;
  uint64_t nx = 0, ny = 0;
  std::vector<uint16_t> lattice;  // values are < 2^16
};

}  // namespace

void check_noise_params(int64_t octaves, int64_t cell, size_t width, size_t height) {
  if (octaves < 1 || octaves > 8) {
    throw pipehost::Error("param octaves = " + std::to_string(octaves) + ": want 1..8");
  }
  const int64_t min_cell = int64_t{1} << (octaves - 1);
  if (cell < 1 || (cell & (cell - 1)) != 0 || cell < min_cell) {
    throw pipehost::Error("param cell = " + std::to_string(cell) + ": want a power of two ≥ " +
                          std::to_string(min_cell));
  }
  if (width % static_cast<uint64_t>(cell) != 0 || height % static_cast<uint64_t>(cell) != 0) {
    throw pipehost::Error("param cell = " + std::to_string(cell) + ": the " + std::to_string(width) + "x" +
                          std::to_string(height) + " grid is not a multiple of it");
  }
}

void noise(pipehost::GridView<float> out, uint64_t seed, int octaves, int64_t cell,
           const std::function<void(size_t)>& on_row) {
  const uint64_t W = out.width(), H = out.height();
  std::vector<Octave> octs(static_cast<size_t>(octaves));
  for (int o = 0; o < octaves; ++o) {
    const uint64_t s = static_cast<uint64_t>(cell) >> o;
    Octave& oc = octs[static_cast<size_t>(o)];
    oc.k = log2_exact(s);
    oc.nx = W / s;
    oc.ny = H / s;
    const uint64_t key = pipehost::seed::derive(seed, static_cast<uint64_t>(o));
    oc.lattice.resize(oc.nx * oc.ny);
    for (uint64_t j = 0; j < oc.ny; ++j) {
      for (uint64_t i = 0; i < oc.nx; ++i) {
        oc.lattice[j * oc.nx + i] = static_cast<uint16_t>(pipehost::seed::derive(key, (j << 32) | i) >> 48);
      }
    }
  }
  for (uint64_t y = 0; y < H; ++y) {
    float* row = out.row(y).data();
    for (uint64_t x = 0; x < W; ++x) {
      uint64_t acc = 0;
      for (size_t o = 0; o < octs.size(); ++o) {
        const Octave& oc = octs[o];
        const uint64_t s = uint64_t{1} << oc.k;
        const uint64_t i0 = x >> oc.k, fx = x & (s - 1), i1 = (i0 + 1) % oc.nx;
        const uint64_t j0 = y >> oc.k, fy = y & (s - 1), j1 = (j0 + 1) % oc.ny;
        const uint64_t wx = weight(fx, oc.k), wy = weight(fy, oc.k);
        const uint16_t* l = oc.lattice.data();
        const uint64_t top = uint64_t{l[j0 * oc.nx + i0]} * (65536 - wx) + uint64_t{l[j0 * oc.nx + i1]} * wx;
        const uint64_t bottom = uint64_t{l[j1 * oc.nx + i0]} * (65536 - wx) + uint64_t{l[j1 * oc.nx + i1]} * wx;
        const uint64_t val = (top * (65536 - wy) + bottom * wy) >> 32;
        acc += val >> o;
      }
      // Exact: acc < 2^17 converts without rounding, and /65536 is a power of two.
      row[x] = static_cast<float>(acc) / 65536.0f;
    }
    if (on_row) on_row(y);
  }
}

void blur(pipehost::GridView<const float> in, pipehost::GridView<float> out, const pipehost::Grid& grid, int radius,
          const std::function<void(size_t)>& on_row) {
  const int64_t W = static_cast<int64_t>(in.width()), H = static_cast<int64_t>(in.height());
  const double n = static_cast<double>((2 * radius + 1) * (2 * radius + 1));
  const float* src = in.data();
  for (int64_t y = 0; y < H; ++y) {
    float* row = out.row(static_cast<size_t>(y)).data();
    for (int64_t x = 0; x < W; ++x) {
      double sum = 0.0;
      for (int64_t dy = -radius; dy <= radius; ++dy) {
        for (int64_t dx = -radius; dx <= radius; ++dx) {
          const pipehost::Cell c = grid.resolve_clamped(x + dx, y + dy);
          sum += static_cast<double>(src[c.y * W + c.x]);
        }
      }
      row[x] = static_cast<float>(sum / n);
    }
    if (on_row) on_row(static_cast<size_t>(y));
  }
}

}  // namespace ref
