#include "eval/calibrate.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "eval/labels.h"
#include "model/embedding_model.h"
#include "pipeline/embed_files.h"
#include "pipeline/scan.h"

namespace lookalike::eval {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct PhotoSet {
  std::vector<fs::path> files;
  std::vector<std::string> labels;  // empty when unlabelled
};

// A labelled set when the folder has class subfolders (or is a CSV with a label column), else
// every image below the folder, unlabelled: calibration needs photos, labels only add metrics.
PhotoSet load_photos(const CalibrateOptions& o) {
  PhotoSet set;
  std::error_code ec;
  if (!fs::exists(o.images, ec))
    throw LabelError(o.images.string() + ": no such file or directory");
  try {
    auto labelled = load_labelled_set(o.images);
    set.files = std::move(labelled.files);
    set.labels = std::move(labelled.labels);
  } catch (const RepeatedImageError&) {
    throw;
  } catch (const LabelError&) {
    auto scan = pipeline::scan_inputs({o.images});
    for (auto& f : scan.files) set.files.push_back(f.path);
    if (set.files.empty())
      throw LabelError(fmt::format("{}: no image files to calibrate on (image extensions: {})",
                                   o.images.string(),
                                   fmt::join(pipeline::image_extensions(), " ")));
  }
  if (o.limit > 0 && static_cast<std::int64_t>(set.files.size()) > o.limit) {
    // Evenly spread, so every class of a sorted folder stays represented.
    PhotoSet picked;
    const double step = static_cast<double>(set.files.size()) / static_cast<double>(o.limit);
    for (std::int64_t i = 0; i < o.limit; ++i) {
      const auto j = static_cast<size_t>(static_cast<double>(i) * step);
      picked.files.push_back(set.files[j]);
      if (!set.labels.empty()) picked.labels.push_back(set.labels[j]);
    }
    set = std::move(picked);
  }
  return set;
}

struct Run {
  std::vector<float> embeddings;  // n x dim
  std::vector<std::string> errors;
  double images_per_s = 0;
  int dim = 0;
  std::string archive;
  std::string digest;   // model::archive_digest of the archive that ran
  std::string failure;  // non-empty: the archive's output was not finite (no embeddings)
};

Run embed_at(const CalibrateOptions& o, const std::string& precision, const PhotoSet& set);

// A reduced precision whose output is NaN or infinite has failed calibration, which is a result
// to record (below the bar, naming the archive), not a reason to leave the card as it was. FP32
// is the reference: its failure ends the calibration (embed_at throws).
Run embed_reduced(const CalibrateOptions& o, const std::string& precision, const PhotoSet& set) {
  try {
    return embed_at(o, precision, set);
  } catch (const model::NonFiniteOutput& e) {
    Run failed;
    failed.failure = e.what();
    failed.errors.assign(set.files.size(), "");
    // The archive that failed, so that replacing it voids this record too.
    const auto card = model::load_model_card(fs::path(o.model).replace_extension(".json"));
    const auto choice = model::choose_precision(precision, card.precisions, model::cpu_flags(),
                                                card.name, o.model.parent_path());
    failed.archive = choice.archive;
    failed.digest = model::archive_digest(o.model.parent_path() / choice.archive);
    return failed;
  }
}

Run embed_at(const CalibrateOptions& o, const std::string& precision, const PhotoSet& set) {
  model::ModelOptions mo;
  mo.threads = o.threads;
  mo.max_batch = o.batch_size;
  mo.precision = precision;
  auto m = model::EmbeddingModel::load(o.model, mo);
  const auto& card = m->card();
  image::DecodeOptions decode;
  decode.min_shorter_side = card.resize_shorter > 0 ? card.resize_shorter : card.input_size;
  // The rate is taken over full batches only: oneDNN creates its kernels on the first pass of
  // each batch shape, which for the last, partial batch is a shape seen once (MobileNetV2: a
  // tenth of a 372-photo run), and that cost depends on the precision. One full warm-up batch
  // first, for the same reason.
  double full_s = 0, all_s = 0;
  std::int64_t full = 0, all = 0;
  auto timed = [&](const float* in, int n) {
    const auto t0 = std::chrono::steady_clock::now();
    auto out = m->embed(in, n);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    all_s += s;
    all += n;
    if (n == o.batch_size) {
      full_s += s;
      full += n;
    }
    return out;
  };
  {
    std::vector<fs::path> warm(
        set.files.begin(),
        set.files.begin() + std::min<size_t>(set.files.size(), std::max(1, o.batch_size)));
    pipeline::embed_files(*m, warm, decode, o.decode_threads, o.batch_size);
  }
  auto e = pipeline::embed_files(*m, set.files, decode, o.decode_threads, o.batch_size, timed);
  Run r{std::move(e.embeddings),
        std::move(e.errors),
        0,
        e.dim,
        m->precision().archive,
        model::archive_digest(m->running_archive()),
        ""};
  if (full > 0) {
    r.images_per_s = static_cast<double>(full) / full_s;
  } else if (all_s > 0) {
    r.images_per_s = static_cast<double>(all) / all_s;
  }
  return r;
}

double dot(const float* a, const float* b, int d) {
  double s = 0;
  for (int i = 0; i < d; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// Leave-one-out over the photos that embedded at every precision (`ok`): each is a query against
// all the others, ranked by cosine similarity (rows are L2-normalised).
Metrics leave_one_out(const Run& r, const std::vector<std::string>& labels,
                      const std::vector<size_t>& ok) {
  MetricsAccumulator acc;
  std::vector<std::pair<double, size_t>> scored;
  std::vector<std::uint8_t> relevant;
  for (size_t qi : ok) {
    scored.clear();
    std::int64_t n_relevant = 0;
    for (size_t gi : ok) {
      if (gi == qi) continue;
      scored.emplace_back(-dot(&r.embeddings[qi * r.dim], &r.embeddings[gi * r.dim], r.dim), gi);
      n_relevant += labels[gi] == labels[qi];
    }
    std::sort(scored.begin(), scored.end());
    relevant.clear();
    for (const auto& [s, gi] : scored) relevant.push_back(labels[gi] == labels[qi]);
    acc.add(relevant, n_relevant);
  }
  return acc.result();
}

// Min and mean cosine of `r` to FP32 over the photos `ok`, into `pr` (worst_file: the photo at the
// minimum). Returns the failure, naming the photo, when a cosine is not finite: NaN compares
// false with everything, so it would otherwise be skipped by the minimum and recorded as
// meeting the bar.
std::string cosines(const Run& r, const Run& fp32, const PhotoSet& set,
                    const std::vector<size_t>& ok, PrecisionResult& pr) {
  pr.min_cosine = std::numeric_limits<double>::infinity();
  double sum = 0;
  for (size_t i : ok) {
    const double c = dot(&r.embeddings[i * r.dim], &fp32.embeddings[i * fp32.dim], r.dim);
    if (!std::isfinite(c))
      return fmt::format("{}: cosine to FP32 is not finite for {} (NaN or infinite embedding)",
                         r.archive, set.files[i].string());
    sum += c;
    if (c < pr.min_cosine) {
      pr.min_cosine = c;
      pr.worst_file = set.files[i].string();
    }
  }
  pr.mean_cosine = sum / static_cast<double>(ok.size());
  return "";
}

// Names the first photo that failed, and why: "no photo could be decoded" alone leaves the user
// guessing between a wrong folder, a wrong format and a damaged file.
std::string no_photo_decoded(const fs::path& images, const std::vector<std::string>& fp32,
                             const std::vector<Run>& runs) {
  std::string first = fp32.empty() ? "" : fp32.front();
  for (const auto& r : runs)
    if (first.empty() && !r.errors.empty()) first = r.errors.front();
  return fmt::format("{}: no photo could be decoded ({} tried; first failure: {})", images.string(),
                     fp32.size(), first.empty() ? "unknown" : first);
}

// What the user must know about how far the record can be trusted (also written into it).
std::vector<std::string> calibration_notes(const CalibrationReport& r, const fs::path& images) {
  std::vector<std::string> notes;
  if (!r.labelled)
    notes.push_back(fmt::format(
        "Recall@1 and mAP not measured: {} is not a folder per class (or a CSV with a label "
        "column), so only the cosine part of the bar was checked",
        images.string()));
  if (r.images < model::kMinCalibrationImages)
    notes.push_back(fmt::format(
        "only {} photos: a record needs at least {} to meet the bar, so every precision is "
        "recorded as below it; calibrate on more photos",
        r.images, model::kMinCalibrationImages));
  return notes;
}

// JSON has no NaN or infinity (nlohmann writes null, which the card then refuses to load), so a
// figure that is not finite is left out: the record then says less, never something unreadable.
void put_finite(json& obj, const char* key, double value) {
  if (!obj.is_object()) obj = json::object();
  if (std::isfinite(value)) {
    obj[key] = value;
  } else {
    obj.erase(key);
  }
}

}  // namespace

CalibrationReport calibrate(const CalibrateOptions& o) {
  CalibrationReport report;
  const fs::path archive = o.model;
  report.card = fs::path(archive).replace_extension(".json");
  const auto card = model::load_model_card(report.card);
  std::vector<std::string> wanted = o.precisions;
  if (wanted.empty() && card.precisions.is_object())
    for (const auto& [name, entry] : card.precisions.items())
      if (name != "fp32" && entry.is_object() && entry.contains("archive")) wanted.push_back(name);
  if (wanted.empty())
    throw model::ModelError(report.card.string() +
                            ": lists no reduced-precision archive (card field 'precisions'); "
                            "export one with tools/export_model.py --precisions bf16");

  const PhotoSet set = load_photos(o);
  const Run fp32 = embed_at(o, "fp32", set);
  report.fp32_images_per_s = fp32.images_per_s;
  std::vector<Run> runs;
  for (const auto& p : wanted) {
    if (model::parse_precision(p, "--precision", nullptr) == model::Precision::FP32)
      throw model::ModelError("--precision: calibrate measures reduced precisions, not " + p);
    runs.push_back(embed_reduced(o, p, set));
  }
  std::vector<size_t> ok;
  for (size_t i = 0; i < set.files.size(); ++i) {
    bool all = fp32.errors[i].empty();
    for (const auto& r : runs) all = all && r.errors[i].empty();
    if (all) ok.push_back(i);
  }
  if (ok.empty()) throw LabelError(no_photo_decoded(o.images, fp32.errors, runs));
  report.images = static_cast<std::int64_t>(ok.size());
  report.failed = static_cast<std::int64_t>(set.files.size() - ok.size());
  report.labelled = !set.labels.empty();
  if (report.labelled) report.fp32_metrics = leave_one_out(fp32, set.labels, ok);

  for (size_t k = 0; k < runs.size(); ++k) {
    const Run& r = runs[k];
    PrecisionResult pr;
    pr.precision = model::parse_precision(wanted[k], "--precision", nullptr);
    pr.archive = r.archive;
    pr.archive_digest = r.digest;
    pr.images_per_s = r.images_per_s;
    pr.failure = r.failure.empty() ? cosines(r, fp32, set, ok, pr) : r.failure;
    if (!pr.failure.empty()) {
      pr.min_cosine = pr.mean_cosine = std::numeric_limits<double>::quiet_NaN();
      pr.images_per_s = 0;
      report.notes.push_back(model::to_string(pr.precision) +
                             ": below the bar, its output could not be measured: " + pr.failure);
      report.precisions.push_back(std::move(pr));
      continue;
    }
    if (report.labelled) {
      pr.metrics = leave_one_out(r, set.labels, ok);
      pr.recall_at_1_delta = pr.metrics->recall_at_1 - report.fp32_metrics->recall_at_1;
      pr.map_delta = pr.metrics->mean_ap - report.fp32_metrics->mean_ap;
    }
    pr.meets_bar = model::meets_bar({{"min_cosine", pr.min_cosine},
                                     {"recall_at_1_delta", pr.recall_at_1_delta},
                                     {"map_delta", pr.map_delta},
                                     {"images", report.images}});
    report.precisions.push_back(std::move(pr));
  }
  auto notes = calibration_notes(report, o.images);
  notes.insert(notes.end(), report.notes.begin(), report.notes.end());  // failures, above
  report.notes = std::move(notes);
  for (const auto& note : report.notes) spdlog::warn("models calibrate: {}", note);
  return report;
}

void record_calibration(const CalibrationReport& report) {
  auto card = model::load_model_card(report.card);
  if (!card.precisions.is_object()) card.precisions = json::object();
  const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  put_finite(card.precisions["fp32"], "images_per_s", report.fp32_images_per_s);
  for (const auto& p : report.precisions) {
    json f{{"images", report.images},
           {"labelled", report.labelled},
           {"retrieval_measured", report.labelled},
           {"meets_bar", p.meets_bar},
           {"bar",
            {{"min_cosine", model::kMinCosineBar}, {"max_metric_delta", model::kMaxMetricDelta}}},
           {"measured_at", when},
           {"archive_digest", p.archive_digest}};
    if (!p.failure.empty()) {
      f["failure"] = p.failure;
    } else {
      put_finite(f, "min_cosine", p.min_cosine);
      put_finite(f, "mean_cosine", p.mean_cosine);
      f["worst_file"] = p.worst_file;
    }
    if (p.metrics && p.failure.empty()) {
      put_finite(f, "recall_at_1", p.metrics->recall_at_1);
      put_finite(f, "map", p.metrics->mean_ap);
      put_finite(f, "fp32_recall_at_1", report.fp32_metrics->recall_at_1);
      put_finite(f, "fp32_map", report.fp32_metrics->mean_ap);
      put_finite(f, "recall_at_1_delta", p.recall_at_1_delta);
      put_finite(f, "map_delta", p.map_delta);
    }
    if (!report.notes.empty()) f["note"] = fmt::format("{}", fmt::join(report.notes, "; "));
    auto& entry = card.precisions[model::to_string(p.precision)];
    entry["fidelity"] = f;
    put_finite(entry, "images_per_s", p.images_per_s);
  }
  const fs::path tmp = fs::path(report.card).concat(".tmp");
  model::save_model_card(card, tmp);
  std::error_code ec;
  fs::rename(tmp, report.card, ec);
  if (ec)
    throw model::ModelError(report.card.string() +
                            ": cannot replace the model card: " + ec.message());
}

}  // namespace lookalike::eval
