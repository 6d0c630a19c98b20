#include "cli/commands.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <csignal>
#include <iostream>
#include <memory>
#include <optional>

#include "cli/output.h"
#include "index/vector_index.h"
#include "model/embedding_model.h"
#include "pipeline/embed_files.h"
#include "pipeline/files.h"
#include "pipeline/indexer.h"
#include "pipeline/scan.h"
#include "store/collection.h"

namespace lookalike::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kDefaultModel = "mobilenet_v2";

std::atomic<bool> g_interrupted{false};

extern "C" void on_interrupt(int) {
  g_interrupted = true;
  // A second Ctrl-C kills at once; the catalog is transactional, so that is safe too.
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
}

image::DecodeOptions decode_options(const GlobalOptions& g, const model::ModelCard& card) {
  image::DecodeOptions d;
  d.max_pixels = g.max_pixels;
  d.min_shorter_side = card.resize_shorter > 0 ? card.resize_shorter : card.input_size;
  return d;
}

// The model for a command: --model, else the collection's, else the default.
std::unique_ptr<model::EmbeddingModel> load_model(const GlobalOptions& g,
                                                  const store::CatalogConfig* config) {
  std::string name = !g.model.empty() ? g.model : config ? config->model_name : kDefaultModel;
  auto path = model::resolve_model(name, model::default_model_dirs());
  auto m = model::EmbeddingModel::load(path, {g.threads, true});
  if (config != nullptr && m->id() != config->model_id) {
    throw model::ModelError(fmt::format(
        "{}: model {} does not match the collection {}, which was built with {}; use that "
        "model or another --collection",
        path.string(), m->id(), g.collection.string(), config->model_id));
  }
  return m;
}

// Stored as the collection's model name: a path given by the user is kept absolute, so that
// later commands find the same archive without --model.
std::string model_reference(const GlobalOptions& g, const model::EmbeddingModel& m) {
  if (g.model.empty()) return m.card().name;
  bool is_path = g.model.find('/') != std::string::npos || fs::exists(g.model);
  return is_path ? pipeline::normalize_path(m.archive()).string() : g.model;
}

std::unique_ptr<store::Collection> open_existing(const GlobalOptions& g,
                                                 store::Collection::Mode mode) {
  if (!store::Collection::exists(g.collection)) {
    throw store::StoreError(fmt::format(
        "{}: no collection here; create one with `lookalike index PATH` (or set --collection / "
        "LOOKALIKE_COLLECTION)",
        g.collection.string()));
  }
  return store::Collection::open(g.collection, mode);
}

// The config of the collection at --collection, if there is one (without taking the lock).
std::optional<store::CatalogConfig> existing_config(const GlobalOptions& g) {
  if (!store::Collection::exists(g.collection)) return std::nullopt;
  return store::Collection::open(g.collection, store::Collection::Mode::Read)->config();
}

json summary_json(const pipeline::IndexSummary& s, const store::Collection& c) {
  json failures = json::array();
  for (const auto& f : s.failures) failures.push_back({{"file", f.where}, {"reason", f.reason}});
  return {{"collection", c.dir().string()},
          {"scanned", s.scanned},
          {"added", s.added},
          {"updated", s.updated},
          {"unchanged", s.unchanged},
          {"reused_embeddings", s.reused},
          {"removed", s.removed},
          {"vanished", s.vanished},
          {"failed", failures.size()},
          {"failures", failures},
          {"embedded", s.embedded},
          {"seconds", s.seconds},
          {"images_per_s", s.images_per_s},
          {"model_threads", s.model_threads},
          {"decode_threads", s.decode_threads},
          {"interrupted", s.interrupted},
          {"count", c.catalog().count()}};
}

void print_summary(const pipeline::IndexSummary& s, const store::Collection& c) {
  std::cout << fmt::format(
      "{} {} files in {:.1f} s: {} added, {} updated, {} unchanged, {} removed, {} failed\n",
      s.interrupted ? "interrupted after" : "indexed", s.scanned, s.seconds, s.added, s.updated,
      s.unchanged, s.removed, s.failures.size());
  std::cout << fmt::format(
      "embedded {} images at {:.1f} images/s (inference threads: {}, decode threads: {}); "
      "collection {} now holds {} images\n",
      s.embedded, s.images_per_s, s.model_threads, s.decode_threads, c.dir().string(),
      c.catalog().count());
  if (!s.failures.empty()) {
    std::cout << "failed:\n";
    for (const auto& f : s.failures) std::cout << "  " << f.where << ": " << f.reason << "\n";
  }
  if (!s.vanished.empty() && s.removed == 0) {
    std::cout << fmt::format("{} indexed files no longer exist (run with --prune to remove):\n",
                             s.vanished.size());
    for (const auto& v : s.vanished) std::cout << "  " << v << "\n";
  } else if (s.removed > 0) {
    std::cout << fmt::format("removed {} vanished files\n", s.removed);
  }
}

json result_json(const store::SearchResult& r) {
  json meta = json::parse(r.image.metadata, nullptr, false);
  if (meta.is_discarded()) meta = json::object();
  return {{"rank", r.rank},
          {"id", r.image.id},
          {"path", r.image.path},
          {"score", r.score},
          {"metadata", meta}};
}

void print_results(const std::string& query, const std::vector<store::SearchResult>& results,
                   const store::Collection& c, bool as_json, const json& query_extra) {
  if (as_json) {
    json out = {{"query", query}};
    out.update(query_extra);
    out["results"] = json::array();
    for (const auto& r : results) out["results"].push_back(result_json(r));
    std::cout << out.dump() << "\n";
    return;
  }
  const char* score_name = c.config().metric == "l2" ? "distance" : "similarity";
  std::cout << "query: " << query << "\n";
  std::cout << fmt::format("{:>5}  {:>10}  {}\n", "rank", score_name, "path  metadata");
  for (const auto& r : results) {
    json meta = json::parse(r.image.metadata, nullptr, false);
    std::cout << fmt::format("{:>5}  {:>10.4f}  {}  {}\n", r.rank, r.score, r.image.path,
                             meta.is_discarded() ? "" : metadata_line(meta));
  }
  std::cout << "\n";
}

}  // namespace

int run_index(const GlobalOptions& g, const IndexArgs& a) {
  // Installed first so that a Ctrl-C during model loading also ends cleanly with 130.
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
  const auto existing = existing_config(g);
  if (existing && ((a.metric_given && a.metric != existing->metric) ||
                   (a.factory_given && a.factory != existing->factory))) {
    spdlog::error(
        "{}: the collection uses metric {} and index factory \"{}\", fixed when it "
        "was created; use another --collection for {} / \"{}\"",
        g.collection.string(), existing->metric, existing->factory, a.metric, a.factory);
    return kUsage;
  }
  auto m = load_model(g, existing ? &*existing : nullptr);
  if (g_interrupted) return kInterrupted;
  store::CatalogConfig config = existing ? *existing
                                         : store::CatalogConfig{m->id(), model_reference(g, *m),
                                                                m->dim(), a.metric, a.factory};
  index::parse_metric(config.metric);  // fail early on a bad metric
  auto collection = store::Collection::create_or_open(g.collection, config);

  pipeline::ScanOptions scan_options{a.file_column, a.hidden};
  auto scan = pipeline::scan_inputs(a.inputs, scan_options);

  ProgressPrinter progress(!g.quiet && !g.json);
  pipeline::IndexOptions options;
  options.prune = a.prune;
  options.batch_size = g.batch_size;
  options.decode_threads = g.decode_threads;
  options.decode = decode_options(g, m->card());
  options.cancel = &g_interrupted;
  options.on_progress = [&](const pipeline::Progress& p) { progress.update(p); };

  auto summary = pipeline::index_files(*collection, *m, scan, options);
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  progress.finish();

  if (g.json) {
    std::cout << summary_json(summary, *collection).dump(2) << "\n";
  } else {
    print_summary(summary, *collection);
  }
  if (summary.interrupted) return kInterrupted;
  return summary.failures.empty() ? kOk : kPartial;
}

int run_search(const GlobalOptions& g, const SearchArgs& a) {
  auto collection = open_existing(g, store::Collection::Mode::Read);
  const int dim = collection->config().dim;
  int failed = 0;

  // Queries by id need no model.
  for (std::int64_t id : a.ids) {
    auto rec = collection->catalog().get(id);
    auto vec = collection->catalog().embedding(id);
    if (!rec || !vec) {
      spdlog::error("--id {}: no such image in {}", id, g.collection.string());
      ++failed;
      continue;
    }
    std::vector<std::int64_t> exclude;
    if (!a.include_self) exclude.push_back(id);
    auto results = collection->search(vec->data(), 1, a.k, exclude);
    print_results(rec->path, results[0], *collection, g.json, {{"query_id", id}});
  }

  if (!a.images.empty()) {
    auto m = load_model(g, &collection->config());
    auto embedded = pipeline::embed_files(*m, a.images, decode_options(g, m->card()),
                                          g.decode_threads, g.batch_size);
    for (std::size_t i = 0; i < a.images.size(); ++i) {
      if (!embedded.errors[i].empty()) {
        spdlog::error("{}", embedded.errors[i]);
        ++failed;
        continue;
      }
      auto results = collection->search(&embedded.embeddings[i * dim], 1, a.k);
      print_results(a.images[i].string(), results[0], *collection, g.json, json::object());
    }
  }
  std::size_t total = a.ids.size() + a.images.size();
  if (failed == 0) return kOk;
  return static_cast<std::size_t>(failed) == total ? kError : kPartial;
}

int run_embed(const GlobalOptions& g, const EmbedArgs& a) {
  const auto config = g.model.empty() ? existing_config(g) : std::nullopt;
  auto m = load_model(g, config ? &*config : nullptr);
  auto embedded = pipeline::embed_files(*m, a.images, decode_options(g, m->card()),
                                        g.decode_threads, g.batch_size);
  for (const auto& e : embedded.errors) {
    if (!e.empty()) spdlog::error("{}", e);
  }
  const std::size_t n = a.images.size();
  const int dim = embedded.dim;
  if (!a.npy.empty()) {
    write_npy(a.npy, embedded.embeddings, n, dim);
    if (!g.quiet) {
      std::cerr << fmt::format("lookalike: wrote {} x {} float32 embeddings ({}) to {}\n", n, dim,
                               m->id(), a.npy.string());
    }
  } else if (g.json) {
    json out = {{"model", m->id()}, {"dim", dim}, {"embeddings", json::array()}};
    for (std::size_t i = 0; i < n; ++i) {
      json row = {{"path", a.images[i].string()}};
      if (embedded.errors[i].empty()) {
        row["embedding"] =
            std::vector<float>(&embedded.embeddings[i * dim], &embedded.embeddings[(i + 1) * dim]);
      } else {
        row["error"] = embedded.errors[i];
      }
      out["embeddings"].push_back(row);
    }
    std::cout << out.dump() << "\n";
  } else {
    for (std::size_t i = 0; i < n; ++i) {
      if (!embedded.errors[i].empty()) continue;
      std::cout << a.images[i].string();
      for (int d = 0; d < dim; ++d) std::cout << ' ' << embedded.embeddings[i * dim + d];
      std::cout << "\n";
    }
  }
  std::size_t failed = embedded.failed();
  if (failed == 0) return kOk;
  return failed == n ? kError : kPartial;
}

int run_info(const GlobalOptions& g) {
  auto collection = open_existing(g, store::Collection::Mode::Read);
  collection->index();  // so that an index rebuilt from the catalog is reflected
  auto info = collection->info();
  if (g.json) {
    std::cout << json{{"collection", info.dir.string()},
                      {"count", info.count},
                      {"model_id", info.config.model_id},
                      {"model", info.config.model_name},
                      {"dim", info.config.dim},
                      {"metric", info.config.metric},
                      {"index_factory", info.config.factory},
                      {"generation", info.generation},
                      {"catalog_bytes", info.catalog_bytes},
                      {"index_bytes", info.index_bytes},
                      {"total_bytes", info.total_bytes}}
                     .dump(2)
              << "\n";
    return kOk;
  }
  std::cout << fmt::format(
      "collection  {}\nimages      {}\nmodel       {} ({})\ndimension   {}\nmetric      {}\n"
      "index       {} (FAISS factory string)\ndisk        {} ({} catalog, {} index)\n",
      info.dir.string(), info.count, info.config.model_name, info.config.model_id, info.config.dim,
      info.config.metric, info.config.factory, human_bytes(info.total_bytes),
      human_bytes(info.catalog_bytes), human_bytes(info.index_bytes));
  return kOk;
}

int run_remove(const GlobalOptions& g, const RemoveArgs& a) {
  auto collection = open_existing(g, store::Collection::Mode::Write);
  std::vector<std::int64_t> ids;
  std::vector<std::string> not_found;
  for (std::int64_t id : a.ids) {
    if (collection->catalog().get(id)) {
      ids.push_back(id);
    } else {
      not_found.push_back(fmt::format("--id {}", id));
    }
  }
  auto records = collection->catalog().list();
  for (const auto& p : a.paths) {
    std::string target = pipeline::normalize_path(p).string();
    std::string prefix = target + "/";
    std::size_t before = ids.size();
    for (const auto& r : records) {
      if (r.path == target || r.path.rfind(prefix, 0) == 0) ids.push_back(r.id);
    }
    if (ids.size() == before) not_found.push_back(p.string());
  }
  if (!ids.empty()) {
    collection->apply({}, ids);
    collection->save_index();
  }
  for (const auto& nf : not_found) spdlog::error("{}: not in the collection", nf);
  if (g.json) {
    std::cout << json{{"removed", ids.size()},
                      {"not_found", not_found},
                      {"count", collection->catalog().count()}}
                     .dump(2)
              << "\n";
  } else {
    std::cout << fmt::format("removed {} images; collection {} now holds {} images\n", ids.size(),
                             g.collection.string(), collection->catalog().count());
  }
  return not_found.empty() ? kOk : kPartial;
}

int run_models(const GlobalOptions& g) {
  auto dirs = model::default_model_dirs();
  auto models = model::list_models(dirs);
  if (g.json) {
    json out = json::array();
    for (const auto& m : models) {
      json card = model::model_card_to_json(m.card);
      card["archive"] = m.archive.string();
      out.push_back(card);
    }
    std::cout << out.dump(2) << "\n";
    return kOk;
  }
  if (models.empty()) {
    std::cout << "no models installed in:";
    for (const auto& d : dirs) std::cout << " " << d.string();
    std::cout << "\nexport one: /usr/bin/python3 tools/export_model.py mobilenet_v2 --weights FILE "
                 "--out DIR (and set LOOKALIKE_MODELS=DIR)\n";
    return kOk;
  }
  std::cout << fmt::format("{:<16} {:<14} {:>5}  {:<8}  {}\n", "name", "architecture", "dim",
                           "input", "archive");
  for (const auto& m : models) {
    std::cout << fmt::format(
        "{:<16} {:<14} {:>5}  {:<8}  {}\n", m.card.name,
        m.card.architecture + (m.card.variant.empty() ? "" : " " + m.card.variant),
        m.card.embedding_dim, fmt::format("{}px", m.card.input_size), m.archive.string());
    std::cout << fmt::format("{:<16} weights: {} ({})\n", "", m.card.weights_source,
                             m.card.license);
  }
  return kOk;
}

}  // namespace lookalike::cli
