// Helpers shared by the index/store tests and the crash-test writer: seeded vectors and
// scratch directories under the build tree.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace lookalike::testing {

// splitmix64: the same numbers on every platform and standard library, so the crash-test
// parent can recompute exactly what its child wrote.
inline std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// One vector of `dim` floats in [-1, 1), L2-normalised when `normalise`.
inline std::vector<float> seeded_vector(std::uint64_t seed, int dim, bool normalise = true) {
  std::vector<float> v(static_cast<std::size_t>(dim));
  std::uint64_t state = seed * 0x2545F4914F6CDD1Dull + 1;
  double sq = 0;
  for (auto& x : v) {
    x = static_cast<float>(static_cast<double>(splitmix64(state) >> 11) * 0x1.0p-52 - 1.0);
    sq += double{x} * x;
  }
  if (normalise) {
    const auto inv = static_cast<float>(1.0 / std::sqrt(sq));
    for (auto& x : v) x *= inv;
  }
  return v;
}

// n x dim, row-major.
inline std::vector<float> seeded_matrix(std::uint64_t seed, std::int64_t n, int dim,
                                        bool normalise = true) {
  std::vector<float> out;
  out.reserve(static_cast<std::size_t>(n) * dim);
  for (std::int64_t i = 0; i < n; ++i) {
    auto v = seeded_vector(seed * 1000003 + static_cast<std::uint64_t>(i), dim, normalise);
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

// A fresh, empty directory <fixtures>/store/<name>.
inline std::filesystem::path scratch_dir(const std::string& name) {
  auto dir = std::filesystem::path(LOOKALIKE_FIXTURES) / "store" / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace lookalike::testing
