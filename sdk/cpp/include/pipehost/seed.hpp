// Seeds and random streams, exactly as docs/seeds.md (pinned by
// testdata/seeds.json): SplitMix64, FNV-1a, Derive, stage seeds, streams
// with Fork and Child. The same seed gives the same bits in every SDK.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string_view>

namespace pipehost::seed {

inline constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;

// mix64 is SplitMix64's output function.
constexpr uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// SplitMix64 is Vigna's generator; the seed is the initial state.
class SplitMix64 {
 public:
  constexpr explicit SplitMix64(uint64_t seed) : state_(seed) {}
  constexpr uint64_t next() {
    state_ += kGamma;
    return mix64(state_);
  }
  constexpr uint64_t state() const { return state_; }

 private:
  uint64_t state_;
};

// fnv1a64 hashes a name's bytes as given (no normalisation, no terminator).
constexpr uint64_t fnv1a64(std::string_view name) {
  uint64_t h = 0xCBF29CE484222325ULL;
  for (char c : name) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001B3ULL;
  }
  return h;
}

// derive makes a sub-seed: mix64((mix64(key + gamma) ^ word) + gamma).
constexpr uint64_t derive(uint64_t key, uint64_t word) {
  return mix64((mix64(key + kGamma) ^ word) + kGamma);
}

// stage_seed is the seed of stage instance `name` in a run with run_seed.
constexpr uint64_t stage_seed(uint64_t run_seed, std::string_view name) {
  return derive(run_seed, fnv1a64(name));
}

// Stream is a (key, state) pair: draws advance the state; fork and child
// read only the key, so sub-streams do not depend on how much was drawn.
class Stream {
 public:
  constexpr explicit Stream(uint64_t seed) : key_(seed), state_(seed) {}
  static constexpr Stream for_stage(uint64_t run_seed, std::string_view name) {
    return Stream(stage_seed(run_seed, name));
  }

  // seed is the key the stream was made with.
  constexpr uint64_t seed() const { return key_; }

  constexpr uint64_t uint64() {
    state_ += kGamma;
    return mix64(state_);
  }
  // float64 is a multiple of 2^-53 in [0, 1).
  constexpr double float64() { return static_cast<double>(uint64() >> 11) * 0x1p-53; }
  // uint64n is uniform in [0, n) by rejection; n must be at least 1.
  uint64_t uint64n(uint64_t n) {
    if (n == 0) throw std::invalid_argument("pipehost::seed::Stream::uint64n: n is 0");
    const uint64_t floor = (0 - n) % n;  // 2^64 mod n
    for (;;) {
      const uint64_t x = uint64();
      if (x >= floor) return x % n;
    }
  }
  int64_t intn(int64_t n) {
    if (n <= 0) throw std::invalid_argument("pipehost::seed::Stream::intn: n <= 0");
    return static_cast<int64_t>(uint64n(static_cast<uint64_t>(n)));
  }
  constexpr Stream fork(uint64_t index) const { return Stream(derive(key_, index)); }
  constexpr Stream child(std::string_view label) const { return fork(fnv1a64(label)); }

 private:
  uint64_t key_;
  uint64_t state_;
};

}  // namespace pipehost::seed
