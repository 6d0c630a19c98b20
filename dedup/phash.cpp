#include "dedup/phash.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <numbers>
#include <stdexcept>
#include <vector>

namespace lookalike::dedup {

namespace {

constexpr int kGrid = 32;  // the average the DCT runs on
constexpr int kBlock = 8;  // low frequencies kept, after the DC row and column

// Per output cell, the source pixels it covers and how much of each (area weights): a box
// filter with fractional edges, so a 100-pixel side averaged to 32 cells weighs every pixel
// as much as its area says (whole-pixel binning would give cells of 3 and 4 pixels).
struct Span {
  int first = 0;
  std::vector<double> weights;  // for pixels first, first + 1, ...
};

std::array<Span, kGrid> spans(double from, double to) {
  std::array<Span, kGrid> out;
  const double step = (to - from) / kGrid;
  for (int c = 0; c < kGrid; ++c) {
    const double a = from + c * step, b = a + step;
    auto& s = out[c];
    s.first = static_cast<int>(std::floor(a));
    for (int i = s.first; i < b; ++i) {
      const double w = std::min<double>(b, i + 1) - std::max<double>(a, i);
      s.weights.push_back(std::max(0.0, w) / step);
    }
  }
  return out;
}

// Luma of the rectangle [x0, x1) x [y0, y1) (source pixels, fractional) averaged to 32 x 32.
std::array<double, kGrid * kGrid> average(const image::RgbImage& rgb, double x0, double x1,
                                          double y0, double y1) {
  const auto cols = spans(x0, x1);
  const auto rows = spans(y0, y1);
  const int y_first = rows.front().first;
  const int y_last = rows.back().first + static_cast<int>(rows.back().weights.size());
  // Each source row in range reduced to 32 column averages first (separable filter).
  std::vector<double> across(static_cast<std::size_t>(y_last - y_first) * kGrid, 0.0);
  for (int y = y_first; y < y_last; ++y) {
    const auto* row = rgb.pixels.data() + static_cast<std::size_t>(y) * rgb.width * 3;
    for (int c = 0; c < kGrid; ++c) {
      double sum = 0;
      for (std::size_t k = 0; k < cols[c].weights.size(); ++k) {
        const auto* p = row + static_cast<std::size_t>(cols[c].first + k) * 3;
        sum += cols[c].weights[k] * (0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]);
      }
      across[static_cast<std::size_t>(y - y_first) * kGrid + c] = sum;
    }
  }
  std::array<double, kGrid * kGrid> out{};
  for (int r = 0; r < kGrid; ++r) {
    for (std::size_t k = 0; k < rows[r].weights.size(); ++k) {
      const auto* a = &across[static_cast<std::size_t>(rows[r].first + k - y_first) * kGrid];
      for (int c = 0; c < kGrid; ++c) out[r * kGrid + c] += rows[r].weights[k] * a[c];
    }
  }
  return out;
}

// DCT-II basis, rows 0..kBlock (row 0, the DC, is computed but never used).
const std::array<double, (kBlock + 1) * kGrid>& basis() {
  static const auto table = [] {
    std::array<double, (kBlock + 1) * kGrid> t{};
    for (int u = 0; u <= kBlock; ++u) {
      for (int x = 0; x < kGrid; ++x) {
        t[u * kGrid + x] = std::cos(std::numbers::pi * (2 * x + 1) * u / (2.0 * kGrid));
      }
    }
    return t;
  }();
  return table;
}

std::uint64_t dct_hash(const std::array<double, kGrid * kGrid>& g) {
  const auto& d = basis();
  // rows[u][x] = sum_y d[u][y] g[y][x], then coeff[u][v] = sum_x rows[u][x] d[v][x].
  std::array<double, kBlock * kGrid> rows{};
  for (int u = 1; u <= kBlock; ++u) {
    for (int y = 0; y < kGrid; ++y) {
      for (int x = 0; x < kGrid; ++x)
        rows[(u - 1) * kGrid + x] += d[u * kGrid + y] * g[y * kGrid + x];
    }
  }
  std::array<double, kBlock * kBlock> coeff{};
  for (int u = 0; u < kBlock; ++u) {
    for (int v = 1; v <= kBlock; ++v) {
      double s = 0;
      for (int x = 0; x < kGrid; ++x) s += rows[u * kGrid + x] * d[v * kGrid + x];
      coeff[u * kBlock + (v - 1)] = s;
    }
  }
  auto sorted = coeff;
  std::sort(sorted.begin(), sorted.end());
  const double median = (sorted[31] + sorted[32]) / 2;
  std::uint64_t bits = 0;
  for (double c : coeff) bits = (bits << 1) | (c > median ? 1u : 0u);
  return bits;
}

}  // namespace

int distance(const PictureHash& a, const PictureHash& b) {
  return std::min({std::popcount(a.full ^ b.full), std::popcount(a.center95 ^ b.full),
                   std::popcount(a.full ^ b.center95), std::popcount(a.center90 ^ b.full),
                   std::popcount(a.full ^ b.center90)});
}

PictureHash picture_hash(const image::RgbImage& rgb) {
  if (rgb.width < kGrid || rgb.height < kGrid) {
    throw std::invalid_argument("perceptual hash: image is " + std::to_string(rgb.width) + " x " +
                                std::to_string(rgb.height) + ", under 32 x 32");
  }
  if (rgb.pixels.size() != static_cast<std::size_t>(rgb.width) * rgb.height * 3) {
    throw std::invalid_argument(
        "perceptual hash: pixel buffer does not hold width * height * 3 bytes");
  }
  const double w = rgb.width, h = rgb.height;
  auto central = [&](double keep) {
    const double mx = w * (1 - keep) / 2, my = h * (1 - keep) / 2;
    return dct_hash(average(rgb, mx, w - mx, my, h - my));
  };
  return {dct_hash(average(rgb, 0, w, 0, h)), central(0.95), central(0.90)};
}

image::DecodeOptions picture_hash_decode_options(const image::DecodeOptions& base) {
  auto o = base;
  o.min_shorter_side = kGrid;  // decode keeps the shorter side >= 2 x this
  o.rows_for = nullptr;
  return o;
}

namespace {
PictureHash checked(const image::Decoded& d, const std::string& name) {
  if (d.rgb.width < kGrid || d.rgb.height < kGrid) {
    throw image::DecodeError(name, "image is " + std::to_string(d.rgb.width) + " x " +
                                       std::to_string(d.rgb.height) +
                                       ", too small for a 32 x 32 perceptual hash");
  }
  return picture_hash(d.rgb);
}
}  // namespace

PictureHash picture_hash_bytes(std::span<const std::uint8_t> bytes, const std::string& name,
                               const image::DecodeOptions& base) {
  return checked(image::decode_buffer(bytes, name, picture_hash_decode_options(base)), name);
}

PictureHash picture_hash_file(const std::filesystem::path& path, const image::DecodeOptions& base) {
  return checked(image::decode_file(path, picture_hash_decode_options(base)), path.string());
}

}  // namespace lookalike::dedup
