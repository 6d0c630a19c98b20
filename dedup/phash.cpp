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

// The 32 x 32 luma average of a rectangle [x0, x1) x [y0, y1) of the image (source pixels,
// fractional edges): a box filter with fractional edges, so a 100-pixel side averaged to 32
// cells weighs every pixel as much as its area says (whole-pixel binning would give cells of
// 3 and 4 pixels). Luma: ITU-R BT.601.
//
// How: as integrals. The sum of a pixel grid up to a fractional position i + f (pixel i, a
// fraction f into it) is the sum up to pixel i plus f times pixel i, along either axis. Down the
// image, a running sum of the rows so far (per byte column, unsigned 32-bit integers, so exact: 255
// x 10,000,000 rows, libvips' largest, fits) is at hand at each row; at a cell row's lower edge,
// that sum minus the one kept at its upper edge (each plus its fractional row) is the cell row's
// column integrals, which are then cut across the same way. Each pixel costs one add whatever the
// number of frames, in loops the compiler vectorises; per frame the extra work is per cell row, not
// per source row. An earlier version weighed each pixel once per frame and cell (the same sums,
// about 4x slower on a 400 x 533 photo).
struct Frame {
  std::array<double, kGrid + 1> x_edges{};  // cell boundaries across, source pixels
  std::array<double, kGrid + 1> y_edges{};  // and down
  std::array<double, kGrid * kGrid> cells{};
  // The running row sum at the last y edge passed, and that edge's row and fraction.
  std::vector<std::uint32_t> sum_at_edge;
  int edge_row = 0;
  double edge_frac = 0;
  int next_edge = 0;  // the next y edge to reach

  Frame(double x0, double x1, double y0, double y1) {
    for (int c = 0; c <= kGrid; ++c) {
      x_edges[c] = x0 + (x1 - x0) * c / kGrid;
      y_edges[c] = y0 + (y1 - y0) * c / kGrid;
    }
  }
};

// Called at each of a frame's y edges, in order, with `rows_above` = the per-byte sum of rows
// [0, y) where y = floor(edge): fills the cell row that ends at that edge (none at the first).
void reach_edge(const image::RgbImage& rgb, Frame& f, const std::vector<std::uint32_t>& rows_above,
                int y, double frac, std::vector<double>& columns, std::vector<double>& prefix) {
  const int w = rgb.width;
  const std::size_t n = static_cast<std::size_t>(w) * 3;
  const int r = f.next_edge - 1;  // the cell row ending here
  if (r >= 0) {
    // Raw pointers: the build's _GLIBCXX_ASSERTIONS bounds-checks operator[], which keeps
    // loops from being vectorised.
    const std::uint32_t* below = rows_above.data();
    const std::uint32_t* above = f.sum_at_edge.data();
    double* col = columns.data();
    for (std::size_t k = 0; k < n; ++k) col[k] = static_cast<double>(below[k] - above[k]);
    auto add_row = [&](int row, double weight) {
      if (weight == 0 || row >= rgb.height) return;
      const std::uint8_t* p = rgb.pixels.data() + static_cast<std::size_t>(row) * n;
      for (std::size_t k = 0; k < n; ++k) col[k] += weight * p[k];
    };
    add_row(y, frac);
    add_row(f.edge_row, -f.edge_frac);
    // Luma of the column integrals, then their running sum across.
    double* run = prefix.data();
    run[0] = 0;
    for (int x = 0; x < w; ++x) {
      run[x + 1] = run[x] + 0.299 * col[3 * x] + 0.587 * col[3 * x + 1] + 0.114 * col[3 * x + 2];
    }
    auto running_to = [&](double x) {
      const int i = std::clamp(static_cast<int>(std::floor(x)), 0, w);
      return i == w ? run[w] : run[i] + (x - i) * (run[i + 1] - run[i]);
    };
    const double height = f.y_edges[r + 1] - f.y_edges[r];
    for (int c = 0; c < kGrid; ++c) {
      const double width = f.x_edges[c + 1] - f.x_edges[c];
      f.cells[r * kGrid + c] =
          (running_to(f.x_edges[c + 1]) - running_to(f.x_edges[c])) / (width * height);
    }
  }
  f.sum_at_edge = rows_above;
  f.edge_row = y;
  f.edge_frac = frac;
  ++f.next_edge;
}

// The frames' 32 x 32 averages in one pass down the image.
template <std::size_t N>
void average(const image::RgbImage& rgb, std::array<Frame, N>& frames) {
  const std::size_t n = static_cast<std::size_t>(rgb.width) * 3;
  std::vector<std::uint32_t> rows_above(n, 0);  // per byte column, the sum of rows [0, y)
  std::vector<double> columns(n), prefix(static_cast<std::size_t>(rgb.width) + 1);
  for (int y = 0; y <= rgb.height; ++y) {
    for (auto& f : frames) {
      while (f.next_edge <= kGrid) {
        const double e = f.y_edges[f.next_edge];
        const int row = std::clamp(static_cast<int>(std::floor(e)), 0, rgb.height);
        if (row != y) break;
        reach_edge(rgb, f, rows_above, y, row < rgb.height ? e - row : 0.0, columns, prefix);
      }
    }
    if (y == rgb.height) break;
    const std::uint8_t* p = rgb.pixels.data() + static_cast<std::size_t>(y) * n;
    std::uint32_t* sum = rows_above.data();
    for (std::size_t k = 0; k < n; ++k) sum[k] += p[k];
  }
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
    return Frame(mx, w - mx, my, h - my);
  };
  std::array<Frame, 3> frames{Frame(0, w, 0, h), central(0.95), central(0.90)};
  average(rgb, frames);
  return {dct_hash(frames[0].cells), dct_hash(frames[1].cells), dct_hash(frames[2].cells)};
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
