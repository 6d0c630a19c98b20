// A recall-against-QPS chart as a standalone SVG 1.1 document (plain text, no library), for
// `lookalike bench-index --plot`: recall@k on a linear y axis (0..1), queries per second on a
// log10 x axis, one polyline with circle markers per series, a legend, ticks and a title.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace lookalike::eval {

struct PlotSeries {
  std::string label;                              // legend text, e.g. "IVF1024,Flat (n=100000)"
  std::vector<std::pair<double, double>> points;  // (QPS > 0, recall in 0..1); drawn in x order
};

// The SVG text (well-formed XML: labels are escaped). Points with QPS <= 0 are dropped.
std::string render_recall_qps_svg(const std::vector<PlotSeries>& series, const std::string& title);

// Before the benchmark: throws std::runtime_error naming `path` and the cause when it is a
// folder, or its folder does not exist or is not writable (the folder is not created, as for
// `map --out`), so that a typo does not cost a whole run.
void check_plot_path(const std::filesystem::path& path);

// Writes render_recall_qps_svg to `path` (through a temporary file beside it, renamed); throws
// std::runtime_error naming the path and the cause (strerror) on failure.
void write_recall_qps_svg(const std::filesystem::path& path, const std::vector<PlotSeries>& series,
                          const std::string& title);

}  // namespace lookalike::eval
