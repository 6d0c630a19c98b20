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
#include "engine/engine.h"
#include "image/decode.h"
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

json report_json(const engine::DuplicatesResult& result) {
  const auto& r = result.report;
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
                  {"hashes_computed", result.hashes_computed},
                  {"hashes_stored", result.hashes_stored}};
  if (!result.hashes_not_stored.empty()) summary["hashes_not_stored"] = result.hashes_not_stored;
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

void print_human(const engine::DuplicatesResult& result, bool quiet) {
  const auto& r = result.report;
  for (const auto& g : r.groups) {
    const auto& rep = g.members.front();
    std::cout << fmt::format("group of {} (representative {}, {} x {})\n  * {:>8}  {}\n",
                             plural(static_cast<std::int64_t>(g.members.size()), "image"), rep.id,
                             rep.width, rep.height, rep.id, rep.path);
    for (std::size_t i = 1; i < g.members.size(); ++i) {
      const auto& m = g.members[i];
      std::cout << fmt::format("    {:>8}  {}  similarity {:.4f}, {}\n", m.id,
                               terminal_text(m.path), m.similarity, verdict(m));
    }
    std::cout << "\n";
  }
  if (quiet) return;
  std::cout << fmt::format("{}, {} of {} in groups, {} (threshold {:g}, {}; k {})\n",
                           plural(static_cast<std::int64_t>(r.groups.size()), "group"),
                           r.images_in_groups, plural(r.images, "image"),
                           plural(r.exact_groups, "exact group"), r.threshold, r.threshold_source,
                           r.k);
  if (result.hashes_computed > 0) {
    const auto& why = result.hashes_not_stored;
    std::cout << fmt::format("{} computed from files, {} stored{}\n",
                             plural(result.hashes_computed, "perceptual hash", "perceptual hashes"),
                             result.hashes_stored, why.empty() ? "" : " (" + why + ")");
  }
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
  engine::DuplicatesResult r;
  try {
    r = engine::Engine::open(engine_options(g), engine::Access::Read)->duplicates(o);
  } catch (const dedup::DuplicateOptionError& e) {
    spdlog::error("{}", e.what());
    return kUsage;
  }
  // Files that could not be read for the perceptual hash: a note on their member (text and
  // --json), and on stderr in every mode (docs/cli.md, "JSON output").
  for (const auto& group : r.report.groups) {
    for (const auto& m : group.members) {
      if (!m.note.empty() && m.note.rfind("representative ", 0) != 0)
        spdlog::warn("{}: {}", terminal_text(m.path), terminal_text(m.note));
    }
  }
  if (!r.hashes_not_stored.empty()) {
    spdlog::warn("perceptual hashes {}; they will be computed again next time",
                 r.hashes_not_stored);
  }
  if (g.json || a.json) {
    std::cout << report_json(r).dump() << "\n";
  } else {
    print_human(r, g.quiet);
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
