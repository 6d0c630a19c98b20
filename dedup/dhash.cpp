#include "dedup/dhash.h"

#include <bit>
#include <stdexcept>
#include <string>
#include <vector>

#include "image/decode.h"

namespace lookalike::dedup {

namespace {

constexpr int kCols = 9;
constexpr int kRows = 8;

// Luma sums per output cell, each source pixel credited to the cell its centre falls in: a box
// filter, so no source pixel is skipped however large the image (a point sample of 72 pixels
// would be at the mercy of noise and JPEG ringing).
std::vector<double> box_luma(const image::RgbImage& rgb) {
  std::vector<double> sum(kCols * kRows, 0.0);
  std::vector<double> count(kCols * kRows, 0.0);
  const auto* p = rgb.pixels.data();
  for (int y = 0; y < rgb.height; ++y) {
    const int row = static_cast<int>((static_cast<std::int64_t>(y) * kRows) / rgb.height);
    for (int x = 0; x < rgb.width; ++x, p += 3) {
      const int col = static_cast<int>((static_cast<std::int64_t>(x) * kCols) / rgb.width);
      sum[row * kCols + col] += 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
      count[row * kCols + col] += 1.0;
    }
  }
  for (std::size_t i = 0; i < sum.size(); ++i) sum[i] /= count[i];
  return sum;
}

}  // namespace

std::uint64_t dhash(const image::RgbImage& rgb) {
  if (rgb.width < kCols || rgb.height < kRows) {
    throw std::invalid_argument("dhash: image is " + std::to_string(rgb.width) + " x " +
                                std::to_string(rgb.height) + ", under 9 x 8");
  }
  if (rgb.pixels.size() != static_cast<std::size_t>(rgb.width) * rgb.height * 3) {
    throw std::invalid_argument("dhash: pixel buffer does not hold width * height * 3 bytes");
  }
  const auto luma = box_luma(rgb);
  std::uint64_t bits = 0;
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c + 1 < kCols; ++c) {
      bits = (bits << 1) | (luma[r * kCols + c] > luma[r * kCols + c + 1] ? 1u : 0u);
    }
  }
  return bits;
}

std::uint64_t dhash_file(const std::filesystem::path& path) {
  image::DecodeOptions options;
  options.min_shorter_side = 32;  // decode_file keeps the shorter side >= 2 x this
  const auto decoded = image::decode_file(path, options);
  if (decoded.rgb.width < kCols || decoded.rgb.height < kRows) {
    throw image::DecodeError(path.string(), "image is " + std::to_string(decoded.rgb.width) +
                                                " x " + std::to_string(decoded.rgb.height) +
                                                ", too small for a 9 x 8 difference hash");
  }
  return dhash(decoded.rgb);
}

int hamming(std::uint64_t a, std::uint64_t b) { return std::popcount(a ^ b); }

}  // namespace lookalike::dedup
