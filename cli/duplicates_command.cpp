// `lookalike duplicates`: exact and near-duplicate groups of the collection; see
// dedup/duplicates.h for the method and docs/duplicates.md for the output.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/output.h"
#include "dedup/duplicates.h"
#include "image/decode.h"
#include "model/embedding_model.h"
#include "model/model_card.h"
#include "store/collection.h"

namespace lookalike::cli {

namespace {

using nlohmann::json;

struct DuplicatesArgs {
  double threshold = 0;
  int k = dedup::kDefaultNeighbours;
  int nprobe = 0;
  int ef_search = 0;
  bool json = false;
};

// What became of the perceptual hashes computed from files during the run.
struct Backfill {
  std::int64_t computed = 0;
  std::int64_t stored = 0;
  std::string not_stored;  // why they could not be stored (locked, read-only); empty otherwise
};

json member_json(const dedup::DuplicateMember& m) {
  json out = {{"id", m.id}};
  set_path(out, "path", m.path);
  out.update({{"similarity", m.similarity},
              {"same_picture", m.same_picture},
              {"exact", m.exact},
              {"width", m.width},
              {"height", m.height},
              {"picture", m.picture},
              {"hamming", m.hamming >= 0 ? json(m.hamming) : json(nullptr)}});
  if (!m.note.empty()) out["note"] = m.note;
  return out;
}

json report_json(const dedup::DuplicateReport& r, const Backfill& b) {
  json groups = json::array();
  for (const auto& g : r.groups) {
    json members = json::array();
    for (const auto& m : g.members) members.push_back(member_json(m));
    groups.push_back({{"representative", g.representative}, {"members", members}});
  }
  json summary = {{"groups", r.groups.size()},
                  {"images", r.images},
                  {"images_in_groups", r.images_in_groups},
                  {"exact_groups", r.exact_groups},
                  {"threshold", r.threshold},
                  {"threshold_source", r.threshold_source},
                  {"k", r.k},
                  {"search_params", store::search_params_json(r.params)},
                  {"hashes_computed", b.computed},
                  {"hashes_stored", b.stored}};
  if (!b.not_stored.empty()) summary["hashes_not_stored"] = b.not_stored;
  return {{"type", "duplicates"}, {"groups", groups}, {"summary", summary}};
}

std::string verdict(const dedup::DuplicateMember& m) {
  if (m.exact) return "same picture (identical file)";
  if (m.same_picture) return fmt::format("same picture (pHash distance {})", m.hamming);
  if (m.hamming >= 0) {
    return fmt::format("similar (pHash distance {}{})", m.hamming,
                       m.picture > 0 ? fmt::format(", picture {}", m.picture) : "");
  }
  return m.note.empty() ? "similar" : "similar (" + m.note + ")";
}

void print_human(const dedup::DuplicateReport& r, const Backfill& b, bool quiet) {
  for (const auto& g : r.groups) {
    const auto& rep = g.members.front();
    std::cout << fmt::format("group of {} (representative {}, {} x {})\n  * {:>8}  {}\n",
                             g.members.size(), rep.id, rep.width, rep.height, rep.id, rep.path);
    for (std::size_t i = 1; i < g.members.size(); ++i) {
      const auto& m = g.members[i];
      std::cout << fmt::format("    {:>8}  {}  similarity {:.4f}, {}\n", m.id, m.path, m.similarity,
                               verdict(m));
    }
    std::cout << "\n";
  }
  if (quiet) return;
  std::cout << fmt::format(
      "{} groups, {} of {} images in groups, {} exact groups (threshold {:g}, {}; k {})\n",
      r.groups.size(), r.images_in_groups, r.images, r.exact_groups, r.threshold,
      r.threshold_source, r.k);
  if (b.computed > 0) {
    std::cout << fmt::format("{} perceptual hashes computed from files, {} stored{}\n", b.computed,
                             b.stored, b.not_stored.empty() ? "" : " (" + b.not_stored + ")");
  }
}

// What the collection's model is, from its card (found as `search` finds the model): the
// measured thresholds hold for the pretrained networks, not for a head trained with `lookalike
// train`, whatever its file is called. Only the card is read; no model is loaded.
dedup::ModelKind model_kind(const store::CatalogConfig& config, std::string* note) {
  try {
    const auto archive = model::resolve_model(config.model_name, model::default_model_dirs());
    const auto card =
        model::load_model_card(std::filesystem::path(archive).replace_extension(".json"));
    return card.training.is_null() ? dedup::ModelKind::kPretrained : dedup::ModelKind::kTrained;
  } catch (const model::ModelError& e) {
    *note = e.what();
    return dedup::ModelKind::kUnknown;
  }
}

// Rows indexed before schema 4 have no perceptual hash: what the run computed is stored now,
// through a short write-mode open (the writer lock is not held during the search itself).
Backfill store_hashes(const GlobalOptions& g, const dedup::DuplicateReport& report) {
  Backfill b;
  b.computed = static_cast<std::int64_t>(report.computed_hashes.size());
  if (b.computed == 0) return b;
  try {
    auto writer = store::Collection::open(g.collection, store::Collection::Mode::Write);
    b.stored = dedup::store_computed_hashes(*writer, report);
  } catch (const store::StoreError& e) {
    b.not_stored = fmt::format("not stored: {}", e.what());
    spdlog::warn("perceptual hashes {}; they will be computed again next time", b.not_stored);
  }
  return b;
}

int run(const GlobalOptions& g, const DuplicatesArgs& a, bool threshold_given) {
  if (!store::Collection::exists(g.collection)) {
    spdlog::error("{}: no collection here", g.collection.string());
    return kError;
  }
  dedup::DuplicateOptions o;
  if (threshold_given) o.threshold = a.threshold;
  o.k = a.k;
  o.params.nprobe = a.nprobe;
  o.params.ef_search = a.ef_search;
  image::init_decoder();
  dedup::DuplicateReport report;
  {
    auto collection = store::Collection::open(g.collection, store::Collection::Mode::Read);
    try {
      o.model_kind = model_kind(collection->config(), &o.model_note);
      report = dedup::find_duplicates(*collection, o);
    } catch (const dedup::DuplicateOptionError& e) {
      spdlog::error("lookalike duplicates: {}", e.what());
      return kUsage;
    }
  }
  const auto backfill = store_hashes(g, report);
  if (g.json || a.json) {
    std::cout << report_json(report, backfill).dump() << "\n";
  } else {
    print_human(report, backfill, g.quiet);
  }
  return kOk;
}

}  // namespace

Subcommand add_duplicates_command(CLI::App& app, const GlobalOptions& g) {
  auto args = std::make_shared<DuplicatesArgs>();
  Subcommand s;
  s.app = app.add_subcommand(
      "duplicates",
      "Groups of exact and near-duplicate images, telling the same picture from similar ones");
  s.app
      ->add_option("--threshold", args->threshold,
                   fmt::format("Cosine similarity at or above which two images are linked "
                               "(default {:.2f}; measured for mobilenet_v2 and resnet50, "
                               "docs/duplicates.md)",
                               dedup::kDefaultThreshold))
      ->check(CLI::Range(-1.0, 1.0));
  s.app
      ->add_option(
          "-k", args->k,
          fmt::format("Neighbours searched per image (default {})", dedup::kDefaultNeighbours))
      ->check(CLI::Range(1, store::kMaxTopK - 1));
  s.app
      ->add_option("--nprobe", args->nprobe,
                   "IVF lists visited per neighbour search (default: the collection's)")
      ->check(CLI::Range(0, 1 << 20));
  s.app
      ->add_option("--ef-search", args->ef_search,
                   "HNSW candidate list per neighbour search (default: the collection's)")
      ->check(CLI::Range(0, 1 << 20));
  s.app->add_flag(
      "--json", args->json,
      "One JSON object: {\"type\": \"duplicates\", \"groups\": [...], \"summary\": {...}}");
  auto* app_ptr = s.app;
  s.run = [&g, args, app_ptr] { return run(g, *args, app_ptr->count("--threshold") > 0); };
  return s;
}

}  // namespace lookalike::cli
