// `lookalike models calibrate`: argument handling and printing; the measurement is
// eval::calibrate (eval/calibrate.h).
#include <fmt/format.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/output.h"
#include "engine/engine.h"
#include "eval/calibrate.h"
#include "model/embedding_model.h"

namespace lookalike::cli {
namespace {

nlohmann::json metrics_json(const std::optional<eval::Metrics>& m) {
  if (!m) return nullptr;
  return {{"recall_at_1", m->recall_at_1}, {"map", m->mean_ap}, {"queries", m->queries}};
}

void print_human(const eval::CalibrationReport& r, bool recorded) {
  std::cout << fmt::format("{}{}{}\n", plural(r.images, "photo"),
                           r.labelled ? " (labelled, leave-one-out)" : "",
                           r.failed ? fmt::format(", {} could not be decoded", r.failed) : "");
  std::cout << fmt::format("{:<6} {:>10} {:>11} {:>10} {:>8} {:>9}  {}\n", "", "min cos",
                           "mean cos", "Recall@1", "mAP", "images/s", "bar");
  auto metric = [](const std::optional<eval::Metrics>& m, bool map) {
    return m ? fmt::format("{:.4f}", map ? m->mean_ap : m->recall_at_1) : std::string("-");
  };
  std::cout << fmt::format("{:<6} {:>10} {:>11} {:>10} {:>8} {:>9.1f}\n", "fp32", "1", "1",
                           metric(r.fp32_metrics, false), metric(r.fp32_metrics, true),
                           r.fp32_images_per_s);
  for (const auto& p : r.precisions)
    std::cout << fmt::format("{:<6} {:>10.6f} {:>11.6f} {:>10} {:>8} {:>9.1f}  {}\n",
                             model::to_string(p.precision), p.min_cosine, p.mean_cosine,
                             metric(p.metrics, false), metric(p.metrics, true), p.images_per_s,
                             p.meets_bar ? "meets" : "below");
  std::cout << (recorded ? "recorded in " + r.card.string()
                         : std::string("--dry-run: card unchanged"))
            << "\n";
}

}  // namespace

int run_calibrate(const GlobalOptions& g, const CalibrateArgs& a) {
  eval::CalibrateOptions o;
  o.model = model::resolve_model(g.model.empty() ? engine::kDefaultModel : g.model,
                                 model::default_model_dirs());
  o.images = a.images;
  o.precisions = a.precisions;
  o.limit = a.limit;
  apply_run_settings(g, o);
  engine::setup_process(g.threads);
  const auto report = eval::calibrate(o);
  if (!a.dry_run) eval::record_calibration(report);
  if (!g.json) {
    print_human(report, !a.dry_run);
    return kOk;
  }
  nlohmann::json out{{"type", "calibration"},
                     {"card", report.card.string()},
                     {"images", report.images},
                     {"failed", report.failed},
                     {"labelled", report.labelled},
                     {"notes", report.notes},
                     {"recorded", !a.dry_run},
                     {"fp32",
                      {{"images_per_s", report.fp32_images_per_s},
                       {"metrics", metrics_json(report.fp32_metrics)}}}};
  for (const auto& p : report.precisions)
    out["precisions"][model::to_string(p.precision)] = {{"archive", p.archive},
                                                        {"min_cosine", p.min_cosine},
                                                        {"mean_cosine", p.mean_cosine},
                                                        {"worst_file", p.worst_file},
                                                        {"images_per_s", p.images_per_s},
                                                        {"metrics", metrics_json(p.metrics)},
                                                        {"recall_at_1_delta", p.recall_at_1_delta},
                                                        {"map_delta", p.map_delta},
                                                        {"meets_bar", p.meets_bar}};
  print_record(out);
  return kOk;
}

}  // namespace lookalike::cli
