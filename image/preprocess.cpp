#include "image/preprocess.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

// The resampler follows Pillow's ImagingResample (src/libImaging/Resample.c, Pillow 9.x) step
// by step, because the model's reference pipeline is PIL + torchvision and bit-identical
// inputs are the goal: double-precision filter weights, normalised, then rounded to
// fixed point with PRECISION_BITS; a horizontal pass to an 8-bit intermediate, then a
// vertical pass; each output sample rounded and clipped to 0..255.

namespace lookalike::image {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow: 8 result bits, 2 for overflow of negatives

struct Filter {
  double (*weight)(double);
  double support;
};

double triangle(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

double cubic(double x) {  // Keys' cubic with a = -0.5, as Pillow's BICUBIC
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

Filter filter_for(const std::string& interpolation) {
  if (interpolation == "bilinear") return {triangle, 1.0};
  if (interpolation == "bicubic") return {cubic, 2.0};
  throw std::invalid_argument("interpolation must be \"bilinear\" or \"bicubic\", got \"" +
                              interpolation + "\"");
}

// For output samples [out_first, out_first + entries) along one axis: the first input sample
// and the fixed-point weights of the input samples each reads. Only the crop window's samples
// get taps, so memory does not grow with the resized size (a 4 x 2,000,000 image resizes to
// 256 x 128,000,000, whose full taps would take 2.5 GB).
struct Taps {
  int ksize = 0;
  std::vector<int> first;
  std::vector<int> count;
  std::vector<std::int32_t> weights;  // entries x ksize
  int entries() const { return int(first.size()); }
};

Taps compute_taps(int in_size, std::int64_t out_size, std::int64_t out_first, int entries,
                  const Filter& filter) {
  const double scale = double(in_size) / double(out_size);
  // Downscaling widens the filter (antialiasing); upscaling keeps its natural width.
  const double filter_scale = std::max(scale, 1.0);
  const double support = filter.support * filter_scale;
  Taps t;
  t.ksize = int(std::ceil(support)) * 2 + 1;
  t.first.resize(entries);
  t.count.resize(entries);
  t.weights.assign(std::size_t(entries) * t.ksize, 0);
  std::vector<double> w(t.ksize);
  for (int e = 0; e < entries; ++e) {
    // Pillow: center = (xx + 0.5) * scale in double; exact for any 64-bit output index here.
    const double center = (double(out_first + e) + 0.5) * scale;
    // Truncation toward zero matches Pillow's (int) casts.
    // NOLINTNEXTLINE(bugprone-incorrect-roundings): Pillow's rounding, bit-exact on purpose
    const int lo = std::max(int(center - support + 0.5), 0);
    // NOLINTNEXTLINE(bugprone-incorrect-roundings)
    const int hi = std::min(int(center + support + 0.5), in_size);
    const int n = hi - lo;
    double total = 0.0;
    for (int i = 0; i < n; ++i) {
      w[i] = filter.weight((i + lo - center + 0.5) * (1.0 / filter_scale));
      total += w[i];
    }
    for (int i = 0; i < n; ++i) {
      double k = total != 0.0 ? w[i] / total : w[i];
      k *= (1 << kPrecisionBits);
      t.weights[std::size_t(e) * t.ksize + i] = std::int32_t(k < 0 ? k - 0.5 : k + 0.5);
    }
    t.first[e] = lo;
    t.count[e] = n;
  }
  return t;
}

std::uint8_t clip8(std::int32_t acc) {
  return std::uint8_t(std::clamp(acc >> kPrecisionBits, 0, 255));
}

constexpr std::int32_t kHalf = 1 << (kPrecisionBits - 1);

// A rectangle of interleaved RGB rows.
struct View {
  const std::uint8_t* data;
  std::size_t stride;  // bytes per row
};

// Transposes 3-byte pixels: out row c (stride out_stride >= rows * 3 + 1) holds in column c.
// Turning the horizontal pass into a vertical one lets it run as contiguous, vectorised row
// arithmetic instead of a per-pixel gather. Pixels move as 4-byte words: the 4th byte lands on
// the next pixel, which is written later (r0 is the outer loop), or on the row's padding byte.
// The last input column is copied bytewise so that no read passes the end of its row.
void transpose_pixels(const std::uint8_t* in, std::size_t in_stride, int rows, int cols,
                      std::uint8_t* out, std::size_t out_stride) {
  constexpr int kBlock = 32;
  for (int r0 = 0; r0 < rows; r0 += kBlock) {
    const int r1 = std::min(rows, r0 + kBlock);
    for (int c0 = 0; c0 < cols; c0 += kBlock) {
      const int c1 = std::min(cols - 1, c0 + kBlock);
      for (int c = c0; c < c1; ++c) {
        std::uint8_t* dst = out + std::size_t(c) * out_stride;
        const std::uint8_t* src = in + std::size_t(c) * 3;
        for (int r = r0; r < r1; ++r) {
          std::uint32_t px;
          std::memcpy(&px, src + std::size_t(r) * in_stride, 4);
          std::memcpy(dst + std::size_t(r) * 3, &px, 4);
        }
      }
    }
    std::uint8_t* last = out + std::size_t(cols - 1) * out_stride;
    for (int r = r0; r < r1; ++r) {
      std::memcpy(last + std::size_t(r) * 3, in + std::size_t(r) * in_stride + (cols - 1) * 3, 3);
    }
  }
}

// One output row per entry of `taps`; `in` row 0 is input row `in_row0`; rows are `samples`
// wide. AVX2's 8-lane vpmulld doubles the throughput of this loop; target_clones picks it at
// load time where the CPU has it, and the plain SSE2 build elsewhere.
__attribute__((target_clones("avx2", "default"))) void vertical_pass(View in, int in_row0,
                                                                     const Taps& taps, int samples,
                                                                     std::uint8_t* out) {
  std::vector<std::int32_t> acc_buffer(samples);
  // __restrict: the accumulator, the input rows and the output never overlap. Without it GCC
  // guards the vector loop with a runtime overlap check, and the scalar fallback ran instead
  // (perf: 49% of preprocess in a scalar imul/add loop).
  std::int32_t* __restrict acc = acc_buffer.data();
  for (int y = 0; y < taps.entries(); ++y) {
    const std::int32_t* k = &taps.weights[std::size_t(y) * taps.ksize];
    std::fill(acc, acc + samples, kHalf);
    for (int i = 0; i < taps.count[y]; ++i) {
      const std::uint8_t* __restrict row =
          in.data + std::size_t(taps.first[y] + i - in_row0) * in.stride;
      const std::int32_t ki = k[i];
      for (int s = 0; s < samples; ++s) acc[s] += row[s] * ki;
    }
    std::uint8_t* __restrict dst = out + std::size_t(y) * samples;
    for (int s = 0; s < samples; ++s) dst[s] = clip8(acc[s]);
  }
}

// Part of the resized image: its top-left corner in the resized image (64-bit: the long side
// of a resized 1 x 9,000,000 image is 2,304,000,000) and its size (at most the crop).
struct Window {
  std::int64_t x0, y0;
  int width, height;
};

// Input samples [first, last) that the taps read.
std::array<int, 2> tap_span(const Taps& taps) {
  int last = 0;
  for (int e = 0; e < taps.entries(); ++e) last = std::max(last, taps.first[e] + taps.count[e]);
  return {taps.first[0], last};
}

// Input rows [first, last) that output rows [win.y0, win.y0 + win.height) read: through the
// vertical taps, or the window rows themselves when there is no vertical pass (the input is
// then as tall as the output, so the rows fit an int).
std::array<int, 2> window_rows(const Taps& vtaps, bool need_v, Window win) {
  if (!need_v) return {int(win.y0), int(win.y0) + win.height};
  return tap_span(vtaps);
}

// The horizontal pass over input rows [row_first, row_last), for the window's columns: a
// vertical pass over the transposed rows, transposed back. Returns rows of win.width pixels
// with a stride of win.width * 3 + 1 (the transpose's padding byte).
std::vector<std::uint8_t> horizontal_pass(View source, int src_width, std::int64_t out_w,
                                          Window win, int row_first, int row_last,
                                          const Filter& filter) {
  const Taps htaps = compute_taps(src_width, out_w, win.x0, win.width, filter);
  const int rows = row_last - row_first;
  const auto [col_first, col_last] = tap_span(htaps);  // only the input columns it reads
  const std::size_t t_stride = std::size_t(rows) * 3 + 1;
  std::vector<std::uint8_t> transposed(std::size_t(col_last - col_first) * t_stride);
  transpose_pixels(source.data + std::size_t(row_first) * source.stride + col_first * 3,
                   source.stride, rows, col_last - col_first, transposed.data(), t_stride);
  std::vector<std::uint8_t> filtered(std::size_t(win.width) * rows * 3);
  vertical_pass({transposed.data(), t_stride}, col_first, htaps, rows * 3, filtered.data());
  transposed = {};
  std::vector<std::uint8_t> columns(std::size_t(rows) * (std::size_t(win.width) * 3 + 1));
  transpose_pixels(filtered.data(), std::size_t(rows) * 3, win.width, rows, columns.data(),
                   std::size_t(win.width) * 3 + 1);
  return columns;
}

// Pillow's resample of `src` to out_w x out_h, computing only the pixels inside `win` (every
// output pixel depends only on its own taps, so a window is bit-identical to cropping the
// full result, and a 224 crop of a 256 resize skips a third of the work). Memory: the taps of
// the window's rows and columns, the window, and about 2 x 3 bytes for each input pixel that
// the window's taps reach (at most the input; for a crop of a resize, its source footprint).
RgbImage resample_window(const RgbImage& src, std::int64_t out_w, std::int64_t out_h, Window win,
                         const Filter& filter) {
  const bool need_h = out_w != src.width;
  const bool need_v = out_h != src.height;
  const View source{src.pixels.data(), std::size_t(src.width) * 3};

  Taps vtaps;
  if (need_v) vtaps = compute_taps(src.height, out_h, win.y0, win.height, filter);
  const auto [row_first, row_last] = window_rows(vtaps, need_v, win);

  std::vector<std::uint8_t> columns;
  View mid = source;
  int mid_row0 = 0;
  if (need_h) {
    columns = horizontal_pass(source, src.width, out_w, win, row_first, row_last, filter);
    mid = {columns.data(), std::size_t(win.width) * 3 + 1};
    mid_row0 = row_first;
  } else {
    mid.data += std::size_t(win.x0) * 3;
  }

  RgbImage out{win.width, win.height,
               std::vector<std::uint8_t>(std::size_t(win.width) * win.height * 3)};
  if (need_v) {
    vertical_pass(mid, mid_row0, vtaps, win.width * 3, out.pixels.data());
  } else {
    for (int y = 0; y < win.height; ++y) {
      const std::uint8_t* row = mid.data + std::size_t(win.y0 + y - mid_row0) * mid.stride;
      std::copy(row, row + win.width * 3, out.pixels.begin() + std::size_t(y) * win.width * 3);
    }
  }
  return out;
}

void check_image(const RgbImage& img, const char* what) {
  if (img.width <= 0 || img.height <= 0 ||
      img.pixels.size() != std::size_t(img.width) * img.height * 3) {
    throw std::invalid_argument(std::string(what) + ": image is empty or its pixel buffer (" +
                                std::to_string(img.pixels.size()) + " bytes) does not match " +
                                std::to_string(img.width) + "x" + std::to_string(img.height) +
                                "x3");
  }
}

// One axis of torchvision's CenterCrop: where the kept span starts in the resized image, how
// long it is, and where it lands in the crop (non-zero when the image is smaller and padded).
struct Span {
  std::int64_t src_start;
  int length, dst_start;
};

Span center_crop_span(std::int64_t size, int crop) {
  if (crop > size) return {0, int(size), int((crop - size) / 2)};
  // Python's round() rounds halves to even; so does nearbyint in the default rounding mode.
  return {std::int64_t(std::nearbyint(double(size - crop) / 2.0)), crop, 0};
}

// torchvision's geometry: the resized size and the crop spans in it.
struct Geometry {
  std::int64_t width, height;
  Span sx, sy;
  Window window() const { return {sx.src_start, sy.src_start, sx.length, sy.length}; }
};

Geometry geometry(int source_width, int source_height, const PreprocessSpec& spec);

}  // namespace

std::array<std::int64_t, 2> resized_size(int width, int height, int shorter) {
  if (width <= 0 || height <= 0 || shorter <= 0) {
    throw std::invalid_argument("resized_size: width, height and shorter must be > 0, got " +
                                std::to_string(width) + ", " + std::to_string(height) + ", " +
                                std::to_string(shorter));
  }
  const int short_side = std::min(width, height);
  const int long_side = std::max(width, height);
  // Python: int(shorter * long / short), the correctly rounded quotient of exact integers; in
  // 64 bits and doubles that is the same while the product is exact (< 2^53: any shorter side
  // below 4,194,304 pixels).
  const auto new_long =
      std::int64_t(double(std::int64_t(shorter) * long_side) / double(short_side));
  return width <= height ? std::array<std::int64_t, 2>{shorter, new_long}
                         : std::array<std::int64_t, 2>{new_long, shorter};
}

RgbImage resize(const RgbImage& src, int width, int height, const std::string& interpolation) {
  check_image(src, "resize");
  if (width <= 0 || height <= 0) {
    throw std::invalid_argument("resize: target size must be > 0, got " + std::to_string(width) +
                                "x" + std::to_string(height));
  }
  return resample_window(src, width, height, {0, 0, width, height}, filter_for(interpolation));
}

namespace {

Geometry geometry(int source_width, int source_height, const PreprocessSpec& spec) {
  const auto [rw, rh] = spec.resize_shorter > 0
                            ? resized_size(source_width, source_height, spec.resize_shorter)
                            : std::array<std::int64_t, 2>{source_width, source_height};
  return {rw, rh, center_crop_span(rw, spec.crop), center_crop_span(rh, spec.crop)};
}

}  // namespace

std::array<int, 2> rows_read(int /*width*/, int height, int source_width, int source_height,
                             const PreprocessSpec& spec) {
  const Geometry geo = geometry(source_width, source_height, spec);
  const bool need_v = geo.height != height;
  Taps vtaps;
  const Window win = geo.window();
  if (need_v) {
    vtaps = compute_taps(height, geo.height, win.y0, win.height, filter_for(spec.interpolation));
  }
  return window_rows(vtaps, need_v, win);
}

namespace {

void check_preprocess_args(const RgbImage& img, int source_width, int source_height,
                           const PreprocessSpec& spec) {
  check_image(img, "preprocess");
  filter_for(spec.interpolation);
  if (spec.crop <= 0 || spec.resize_shorter < 0) {
    throw std::invalid_argument("preprocess: crop must be > 0 and resize_shorter >= 0");
  }
  if (source_width <= 0 || source_height <= 0) {
    throw std::invalid_argument("preprocess: source size must be > 0");
  }
  for (float s : spec.std) {
    if (s == 0.0f) throw std::invalid_argument("preprocess: std must not be 0");
  }
}

void resize_crop_normalise(const RgbImage& img, int source_width, int source_height,
                           const PreprocessSpec& spec, float* out) {
  const Geometry geo = geometry(source_width, source_height, spec);
  const Span sx = geo.sx, sy = geo.sy;
  const RgbImage window =
      resample_window(img, geo.width, geo.height, geo.window(), filter_for(spec.interpolation));

  // ToTensor then Normalize, in float32 and in torchvision's order: (v / 255 - mean) / std.
  std::array<std::array<float, 256>, 3> lut;
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) lut[c][v] = (float(v) / 255.0f - spec.mean[c]) / spec.std[c];
  }
  const std::size_t plane = std::size_t(spec.crop) * spec.crop;
  const bool padded = sx.length < spec.crop || sy.length < spec.crop;
  if (spec.channels_last) {
    if (padded) {  // torchvision pads with 0 before normalising
      for (std::size_t i = 0; i < plane; ++i) {
        for (int c = 0; c < 3; ++c) out[i * 3 + c] = lut[c][0];
      }
    }
    for (int y = 0; y < sy.length; ++y) {
      const std::uint8_t* src = window.pixels.data() + std::size_t(y) * sx.length * 3;
      float* row = out + (std::size_t(sy.dst_start + y) * spec.crop + sx.dst_start) * 3;
      for (int i = 0; i < sx.length * 3; i += 3) {
        for (int c = 0; c < 3; ++c) row[i + c] = lut[c][src[i + c]];
      }
    }
    return;
  }
  for (int c = 0; c < 3; ++c) {
    float* dst = out + c * plane;
    if (padded) std::fill(dst, dst + plane, lut[c][0]);
    for (int y = 0; y < sy.length; ++y) {
      const std::uint8_t* src = window.pixels.data() + std::size_t(y) * sx.length * 3 + c;
      float* row = dst + std::size_t(sy.dst_start + y) * spec.crop + sx.dst_start;
      for (int x = 0; x < sx.length; ++x) row[x] = lut[c][src[x * 3]];
    }
  }
}

}  // namespace

void preprocess(const RgbImage& img, int source_width, int source_height,
                const PreprocessSpec& spec, float* out, const std::string& name) {
  check_preprocess_args(img, source_width, source_height, spec);
  try {
    resize_crop_normalise(img, source_width, source_height, spec, out);
  } catch (const std::bad_alloc&) {
    throw DecodeError(name, "out of memory preprocessing a " + std::to_string(source_width) +
                                " x " + std::to_string(source_height) + " image");
  }
}

}  // namespace lookalike::image
