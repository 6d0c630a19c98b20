#include "eval/plot_svg.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "pipeline/files.h"

namespace lookalike::eval {

namespace {

// Plot area inside a 900 x 560 canvas; the legend sits right of it.
constexpr double kWidth = 900, kHeight = 560;
constexpr double kLeft = 70, kTop = 50, kPlotW = 560, kPlotH = 440;

// Tableau 10 (the matplotlib default cycle): distinct and readable on white.
constexpr const char* kColours[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

struct Axis {
  double lo = 0, hi = 1;  // decades of QPS: 10^lo .. 10^hi
  double x(double qps) const { return kLeft + (std::log10(qps) - lo) / (hi - lo) * kPlotW; }
  static double y(double recall) { return kTop + (1.0 - std::clamp(recall, 0.0, 1.0)) * kPlotH; }
};

Axis fit_axis(const std::vector<PlotSeries>& series) {
  double lo = INFINITY, hi = -INFINITY;
  for (const auto& s : series) {
    for (auto [q, r] : s.points) {
      if (q <= 0) continue;
      lo = std::min(lo, std::log10(q));
      hi = std::max(hi, std::log10(q));
    }
  }
  if (!std::isfinite(lo)) return {0, 1};
  Axis a{std::floor(lo), std::ceil(hi)};
  if (a.hi <= a.lo) a.hi = a.lo + 1;
  return a;
}

std::string axes(const Axis& a) {
  std::string out =
      fmt::format(R"~(<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#333"/>)~"
                  "\n",
                  kLeft, kTop, kPlotW, kPlotH);
  for (int i = 0; i <= 10; ++i) {
    const double r = i / 10.0, y = Axis::y(r);
    out += fmt::format(R"~(<line x1="{}" y1="{:.1f}" x2="{}" y2="{:.1f}" stroke="#ddd"/>)~"
                       "\n",
                       kLeft, y, kLeft + kPlotW, y);
    out += fmt::format(R"~(<text x="{}" y="{:.1f}" font-size="11" text-anchor="end">{:.1f}</text>)~"
                       "\n",
                       kLeft - 6, y + 4, r);
  }
  for (int e = static_cast<int>(a.lo); e <= static_cast<int>(a.hi); ++e) {
    const double x = a.x(std::pow(10.0, e));
    out += fmt::format(R"~(<line x1="{:.1f}" y1="{}" x2="{:.1f}" y2="{}" stroke="#ddd"/>)~"
                       "\n",
                       x, kTop, x, kTop + kPlotH);
    out +=
        fmt::format(R"~(<text x="{:.1f}" y="{}" font-size="11" text-anchor="middle">{:g}</text>)~"
                    "\n",
                    x, kTop + kPlotH + 16, std::pow(10.0, e));
  }
  out += fmt::format(
      R"~(<text x="{}" y="{}" font-size="13" text-anchor="middle">queries per second, one query per call (log scale)</text>)~"
      "\n",
      kLeft + kPlotW / 2, kTop + kPlotH + 38);
  out += fmt::format(
      R"~(<text x="18" y="{}" font-size="13" text-anchor="middle" transform="rotate(-90 18 {})">recall@k</text>)~"
      "\n",
      kTop + kPlotH / 2, kTop + kPlotH / 2);
  return out;
}

std::string one_series(const PlotSeries& s, const Axis& a, int index) {
  const char* colour = kColours[index % 10];
  auto pts = s.points;
  pts.erase(std::remove_if(pts.begin(), pts.end(), [](auto p) { return !(p.first > 0); }),
            pts.end());
  std::sort(pts.begin(), pts.end());
  std::string coords;
  for (auto [q, r] : pts) coords += fmt::format("{:.1f},{:.1f} ", a.x(q), Axis::y(r));
  std::string out = fmt::format(
      R"~(<g><title>{}</title><polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>)~",
      pipeline::markup_text(s.label), colour, coords);
  for (auto [q, r] : pts) {
    out += fmt::format(R"~(<circle cx="{:.1f}" cy="{:.1f}" r="3" fill="{}"/>)~", a.x(q), Axis::y(r),
                       colour);
  }
  out += "</g>\n";
  const double ly = kTop + 10 + 18 * index, lx = kLeft + kPlotW + 20;
  out += fmt::format(
      R"~(<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="2"/><text x="{}" y="{}" font-size="11">{}</text>)~"
      "\n",
      lx, ly, lx + 20, ly, colour, lx + 26, ly + 4, pipeline::markup_text(s.label));
  return out;
}

}  // namespace

std::string render_recall_qps_svg(const std::vector<PlotSeries>& series, const std::string& title) {
  const Axis a = fit_axis(series);
  std::string out = fmt::format(
      R"~(<?xml version="1.0" encoding="UTF-8"?>)~"
      "\n"
      R"~(<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{}" height="{}" viewBox="0 0 {} {}" font-family="sans-serif">)~"
      "\n"
      R"~(<rect width="100%" height="100%" fill="white"/>)~"
      "\n"
      R"~(<text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>)~"
      "\n",
      kWidth, kHeight, kWidth, kHeight, kWidth / 2, pipeline::markup_text(title));
  out += axes(a);
  for (std::size_t i = 0; i < series.size(); ++i)
    out += one_series(series[i], a, static_cast<int>(i));
  out += "</svg>\n";
  return out;
}

void check_plot_path(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec))
    throw std::runtime_error(fmt::format("--plot {}: is a folder", path.string()));
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  if (!fs::is_directory(dir, ec))
    throw std::runtime_error(fmt::format("--plot {}: cannot write: folder {} does not exist",
                                         path.string(), dir.string()));
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    throw std::runtime_error(fmt::format("--plot {}: cannot write in folder {}: {}", path.string(),
                                         dir.string(), std::strerror(errno)));
}

void write_recall_qps_svg(const std::filesystem::path& path, const std::vector<PlotSeries>& series,
                          const std::string& title) {
  const std::string svg = render_recall_qps_svg(series, title);
  try {
    // A failed write leaves no half-written plot over an older one.
    pipeline::write_file_atomically(
        path, {{reinterpret_cast<const std::uint8_t*>(svg.data()), svg.size()}},
        fmt::format(".tmp-{}", static_cast<long>(::getpid())));
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(fmt::format("cannot write the plot {}: {}", path.string(), e.what()));
  }
}

}  // namespace lookalike::eval
