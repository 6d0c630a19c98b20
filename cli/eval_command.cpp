// `lookalike eval`: Recall@k, Precision@10 and mAP of models and index specs on a labelled image
// set; see eval/evaluate.h for the procedure, eval/metrics.h for the definitions, docs/cli.md
// for the output.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/output.h"
#include "engine/engine.h"
#include "eval/evaluate.h"

namespace lookalike::cli {

namespace {

using nlohmann::json;

struct EvalArgs {
  std::filesystem::path gallery, queries;
  std::string label_column = "label";
  std::string file_column;
  std::vector<std::string> models;
  std::vector<std::string> specs;
};

void add_options(CLI::App& cmd, EvalArgs& a) {
  cmd.add_option("--gallery", a.gallery,
                 "Labelled gallery: a folder with a subfolder per class, or a CSV manifest")
      ->required();
  cmd.add_option("--queries", a.queries,
                 "Labelled queries (folder or CSV); without it, leave-one-out over the gallery");
  cmd.add_option("--label-column", a.label_column,
                 "CSV manifests: the label column (default label)");
  cmd.add_option("--file-column", a.file_column, "CSV manifests: the image path column");
  // Repeatable here; the global -m/--model (before `eval`) is used when none is given here.
  cmd.add_option("-m,--model", a.models,
                 "Model name or .pt path (repeatable: compared side by side)")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd.add_option("--index-spec", a.specs,
                 "FAISS factory string (repeatable; default Flat): Flat, IVF64,Flat, HNSW32, ...")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

eval::EvalOptions eval_options(const GlobalOptions& g, const EvalArgs& a) {
  eval::EvalOptions o;
  o.gallery = a.gallery;
  o.queries = a.queries;
  o.label_column = a.label_column;
  o.file_column = a.file_column;
  o.models = a.models;
  if (o.models.empty()) o.models = {g.model.empty() ? engine::kDefaultModel : g.model};
  if (!a.specs.empty()) o.index_specs = a.specs;
  // No collection: eval indexes into its own scratch collections, one per model and spec.
  o.engine = engine_options(g);
  o.engine.collection.clear();
  o.engine.model.clear();
  if (!g.quiet) {
    o.progress = [](const std::string& line) { fmt::print(stderr, "lookalike eval: {}\n", line); };
  }
  o.warn = [](const std::string& line) { spdlog::warn("{}", line); };
  return o;
}

const char* mode_name(const eval::EvalRow& r) {
  return r.leave_one_out ? "leave-one-out" : "query-vs-gallery";
}

json set_json(const eval::SetCounts& c) {
  return {{"failed", c.failed},
          {"unlabelled", c.unlabelled},
          {"empty_label", c.empty_labels},
          {"unreadable", c.unreadable}};
}

std::string params_note(const index::SearchParams& p) {
  std::string out;
  if (p.nprobe > 0) out += fmt::format(", nprobe {}", p.nprobe);
  if (p.ef_search > 0) out += fmt::format(", efSearch {}", p.ef_search);
  return out;
}

json row_json(const eval::EvalRow& r) {
  const auto& m = r.metrics;
  json metrics = {{"recall@1", m.recall_at_1},
                  {"recall@5", m.recall_at_5},
                  {"recall@10", m.recall_at_10},
                  {"precision@10", m.precision_at_10},
                  {"mAP", m.queries_with_relevant() > 0 ? json(m.mean_ap) : json(nullptr)}};
  json skipped = {{"gallery", set_json(r.gallery)},
                  {"queries_without_relevant", m.queries_without_relevant}};
  if (!r.leave_one_out) skipped["queries"] = set_json(r.queries);
  json row = {{"type", "eval"}};
  set_path(row, "model", r.model);
  row.update({{"model_id", r.model_id},
              {"index_spec", r.index_spec},
              {"index_status", r.index_status},
              {"search_params", store::search_params_json(r.search_params)},
              {"mode", mode_name(r)},
              {"gallery", r.gallery.used},
              {"queries", r.queries.used},
              {"ranked", r.ranked},
              {"metrics", metrics},
              {"skipped", skipped},
              {"embed_images_per_s", r.embed_images_per_s},
              {"search_ms_per_query", r.search_ms_per_query}});
  return row;
}

std::string fixed3(double v) { return fmt::format("{:.3f}", v); }

void print_table(const std::vector<eval::EvalRow>& rows) {
  std::vector<std::vector<std::string>> cells = {{"model", "index spec", "queries", "gallery",
                                                  "R@1", "R@5", "R@10", "P@10", "mAP", "img/s",
                                                  "ms/query"}};
  for (const auto& r : rows) {
    const auto& m = r.metrics;
    cells.push_back({r.model, r.index_spec, std::to_string(r.queries.used),
                     std::to_string(r.gallery.used), fixed3(m.recall_at_1), fixed3(m.recall_at_5),
                     fixed3(m.recall_at_10), fixed3(m.precision_at_10),
                     m.queries_with_relevant() > 0 ? fixed3(m.mean_ap) : "-",
                     fmt::format("{:.1f}", r.embed_images_per_s),
                     fmt::format("{:.2f}", r.search_ms_per_query)});
  }
  std::vector<std::size_t> width(cells.front().size(), 0);
  for (const auto& line : cells) {
    for (std::size_t c = 0; c < line.size(); ++c) width[c] = std::max(width[c], line[c].size());
  }
  for (const auto& line : cells) {
    std::string out;
    for (std::size_t c = 0; c < line.size(); ++c) {
      // Names left-aligned, numbers right-aligned.
      out += c < 2 ? fmt::format("{:<{}}", line[c], width[c])
                   : fmt::format("{:>{}}", line[c], width[c]);
      out += c + 1 < line.size() ? "  " : "\n";
    }
    std::cout << out;
  }
}

// "gallery images skipped: 1 could not be decoded, ..." or "" when nothing was skipped.
std::string skipped_note(const char* name, const eval::SetCounts& c) {
  std::vector<std::string> parts;
  auto add = [&](std::int64_t n, const char* what, const char* many = nullptr) {
    if (n > 0)
      parts.push_back(many != nullptr ? plural(n, what, many) : fmt::format("{} {}", n, what));
  };
  add(c.failed, "could not be decoded");
  add(c.unlabelled, "directly in the folder (no label)");
  add(c.empty_labels, "with an empty label");
  add(c.unreadable, "unreadable entry", "unreadable entries");
  if (parts.empty()) return "";
  return fmt::format("{} images skipped: {}\n", name, fmt::join(parts, ", "));
}

void print_notes(const std::vector<eval::EvalRow>& rows) {
  if (rows.empty()) return;
  const auto& first = rows.front();
  std::cout << fmt::format("\nmode: {}; full ranking of the gallery up to {} items per query\n",
                           mode_name(first), first.ranked);
  // Reading and decoding do not depend on the model, so every row skipped the same files.
  std::cout << skipped_note("gallery", first.gallery);
  if (!first.leave_one_out) std::cout << skipped_note("query", first.queries);
  for (const auto& r : rows) {
    std::cout << fmt::format("{} ({}) / {}: {}{}", r.model, r.model_id, r.index_spec,
                             r.index_status, params_note(r.search_params));
    if (r.metrics.queries_without_relevant > 0) {
      const std::int64_t n = r.metrics.queries_without_relevant;
      std::cout << fmt::format("; {} no same-label gallery image (misses, not in mAP)",
                               n == 1 ? "1 query has" : fmt::format("{} queries have", n));
    }
    std::cout << "\n";
  }
}

bool any_failed(const std::vector<eval::EvalRow>& rows) {
  return std::any_of(rows.begin(), rows.end(), [](const eval::EvalRow& r) {
    return r.gallery.failed + r.gallery.unreadable + r.queries.failed + r.queries.unreadable > 0;
  });
}

int run(const GlobalOptions& g, const EvalArgs& a) {
  std::vector<eval::EvalRow> rows;
  try {
    rows = eval::run_eval(eval_options(g, a));
  } catch (const eval::EvalOptionError& e) {
    spdlog::error("{}", e.what());
    return kUsage;
  } catch (const eval::LabelError& e) {
    spdlog::error("{}", e.what());
    return kError;
  }
  if (g.json) {
    for (const auto& r : rows) print_record(row_json(r));
  } else {
    print_table(rows);
    print_notes(rows);
  }
  // As elsewhere: files that could not be read or decoded make the run partial (listed above).
  return any_failed(rows) ? kPartial : kOk;
}

}  // namespace

Subcommand add_eval_command(CLI::App& app, const GlobalOptions& g) {
  auto args = std::make_shared<EvalArgs>();
  Subcommand s;
  s.app = app.add_subcommand(
      "eval", "Recall@1/5/10, Precision@10 and mAP of models and index specs on labelled images");
  add_options(*s.app, *args);
  s.run = [&g, args] { return run(g, *args); };
  return s;
}

}  // namespace lookalike::cli
