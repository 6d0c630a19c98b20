#include "image/augment.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

namespace lookalike::image {
namespace {

double uniform(std::mt19937_64& rng, double lo, double hi) {
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}

// torchvision.transforms.functional_tensor: _rgb2hsv's grey (ITU-R 601-2 luma).
float grey(float r, float g, float b) { return 0.299f * r + 0.587f * g + 0.114f * b; }

float clamp01(float v) { return std::min(1.0f, std::max(0.0f, v)); }

RgbImage crop(const RgbImage& img, const AugmentDraw& d) {
  RgbImage c;
  c.width = d.width;
  c.height = d.height;
  c.pixels.resize(std::size_t(d.width) * d.height * 3);
  for (int row = 0; row < d.height; ++row) {
    const auto* src = img.pixels.data() + (std::size_t(d.y + row) * img.width + d.x) * 3;
    std::copy(src, src + std::size_t(d.width) * 3,
              c.pixels.data() + std::size_t(row) * d.width * 3);
  }
  return c;
}

}  // namespace

AugmentDraw draw_augmentation(int width, int height, const AugmentSpec& spec,
                              std::mt19937_64& rng) {
  if (width <= 0 || height <= 0) throw std::invalid_argument("augment: empty image");
  if (!(spec.min_area > 0 && spec.min_area <= spec.max_area && spec.max_area <= 1) ||
      !(spec.min_ratio > 0 && spec.min_ratio <= spec.max_ratio) || spec.size <= 0)
    throw std::invalid_argument("augment: spec out of range");
  AugmentDraw d;
  const double area = double(width) * height;
  const double log_lo = std::log(spec.min_ratio), log_hi = std::log(spec.max_ratio);
  bool found = false;
  for (int attempt = 0; attempt < 10 && !found; ++attempt) {
    const double target = area * uniform(rng, spec.min_area, spec.max_area);
    const double ratio = std::exp(uniform(rng, log_lo, log_hi));
    const int w = int(std::lround(std::sqrt(target * ratio)));
    const int h = int(std::lround(std::sqrt(target / ratio)));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      d.width = w;
      d.height = h;
      d.y = std::uniform_int_distribution<int>(0, height - h)(rng);
      d.x = std::uniform_int_distribution<int>(0, width - w)(rng);
      found = true;
    }
  }
  if (!found) {
    const double in_ratio = double(width) / height;
    d.width = width;
    d.height = height;
    if (in_ratio < spec.min_ratio) d.height = int(std::lround(width / spec.min_ratio));
    if (in_ratio > spec.max_ratio) d.width = int(std::lround(height * spec.max_ratio));
    d.width = std::clamp(d.width, 1, width);
    d.height = std::clamp(d.height, 1, height);
    d.y = (height - d.height) / 2;
    d.x = (width - d.width) / 2;
  }
  d.flip = uniform(rng, 0, 1) < spec.flip_probability;
  d.brightness = float(uniform(rng, 1 - spec.brightness, 1 + spec.brightness));
  d.contrast = float(uniform(rng, 1 - spec.contrast, 1 + spec.contrast));
  d.saturation = float(uniform(rng, 1 - spec.saturation, 1 + spec.saturation));
  return d;
}

void augment(const RgbImage& img, const AugmentDraw& d, const AugmentSpec& spec,
             const PreprocessSpec& normalise, float* out) {
  if (img.width <= 0 || img.height <= 0 ||
      img.pixels.size() != std::size_t(img.width) * img.height * 3)
    throw std::invalid_argument("augment: empty or malformed image");
  if (d.x < 0 || d.y < 0 || d.width <= 0 || d.height <= 0 || d.x + d.width > img.width ||
      d.y + d.height > img.height)
    throw std::invalid_argument("augment: crop outside the image");
  const int n = spec.size;
  const RgbImage r = resize(crop(img, d), n, n, spec.interpolation);
  const std::size_t plane = std::size_t(n) * n;
  std::vector<float> rgb(plane * 3);  // HWC in [0, 1], flipped and brightened
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) {
      const int sx = d.flip ? n - 1 - x : x;
      const auto* p = r.pixels.data() + (std::size_t(y) * n + sx) * 3;
      float* q = rgb.data() + (std::size_t(y) * n + x) * 3;
      for (int c = 0; c < 3; ++c) q[c] = clamp01(p[c] / 255.0f * d.brightness);
    }
  double grey_sum = 0;
  for (std::size_t i = 0; i < plane; ++i)
    grey_sum += grey(rgb[i * 3], rgb[i * 3 + 1], rgb[i * 3 + 2]);
  const float grey_mean = float(grey_sum / double(plane));
  for (std::size_t i = 0; i < plane; ++i) {
    float* q = rgb.data() + i * 3;
    for (int c = 0; c < 3; ++c) q[c] = clamp01(d.contrast * q[c] + (1 - d.contrast) * grey_mean);
    const float g = grey(q[0], q[1], q[2]);
    for (int c = 0; c < 3; ++c) {
      const float v = clamp01(d.saturation * q[c] + (1 - d.saturation) * g);
      out[c * plane + i] = (v - normalise.mean[c]) / normalise.std[c];
    }
  }
}

}  // namespace lookalike::image
