#include "cli/commands.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <ctime>
#include <iostream>
#include <iterator>
#include <memory>
#include <set>

#include "cli/output.h"
#include "engine/engine.h"
#include "model/embedding_model.h"
#include "server/server.h"

namespace lookalike::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::atomic<bool> g_interrupted{false};
// CLOCK_MONOTONIC time of the first SIGINT/SIGTERM, in ns; 0 before it.
std::atomic<std::int64_t> g_first_interrupt_ns{0};
static_assert(std::atomic<std::int64_t>::is_always_lock_free);
// A second signal this long after the first stops at once.
constexpr std::int64_t kForceExitAfterNs = 1'000'000'000;

std::int64_t monotonic_ns() {  // async-signal-safe (clock_gettime is)
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// The first SIGINT or SIGTERM asks the run to stop after the batch in flight (the summary is
// printed, exit 130). The same signal often arrives twice at once: coreutils `timeout` and some
// supervisors send it to the process and then to its process group, and a terminal's Ctrl-C
// reaches the whole foreground group. So a second signal within kForceExitAfterNs of the first
// is ignored; one after it (a user pressing Ctrl-C again because the stop takes too long) ends
// the process at once, deliberately, with exit 130: the catalog commits batch by batch, so
// every batch committed so far is kept (as after kill -9).
extern "C" void on_interrupt(int) {
  const std::int64_t now = monotonic_ns();
  std::int64_t first = 0;
  if (g_first_interrupt_ns.compare_exchange_strong(first, now)) {
    g_interrupted = true;
    return;
  }
  g_interrupted = true;
  if (now - first < kForceExitAfterNs) return;
  static const char kMessage[] =
      "\nlookalike: interrupted again: stopping now; every batch committed so far is kept\n";
  [[maybe_unused]] auto written = ::write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
  ::_exit(kInterrupted);
}

void install_interrupt_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_interrupt;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
}

index::SearchParams params_of(const SearchParamArgs& a) {
  index::SearchParams p;
  p.nprobe = a.nprobe;
  p.ef_search = a.ef_search;
  p.rerank = a.rerank;
  return p;
}

std::string params_line(const index::SearchParams& p) {
  std::string out;
  auto add = [&](const char* name, int v) {
    if (v > 0) out += fmt::format("{}{} {}", out.empty() ? "" : ", ", name, v);
  };
  add("nprobe", p.nprobe);
  add("efSearch", p.ef_search);
  add("rerank", p.rerank);
  return out.empty() ? "none" : out;
}

json summary_json(const pipeline::IndexSummary& s, const engine::Engine& e) {
  json failures = json::array();
  for (const auto& f : s.failures) {
    json row = {{"reason", f.reason}};
    set_path(row, "file", f.where);
    failures.push_back(row);
  }
  json vanished = json::array();
  for (const auto& v : s.vanished) {
    json row;
    set_path(row, "file", v);
    vanished.push_back(row);
  }
  json unchecked = json::array();
  for (const auto& u : s.unchecked) {
    json row = {{"images", u.images}};
    set_path(row, "file", u.where);
    unchecked.push_back(row);
  }
  json out = {{"type", "index_summary"},
              {"scanned", s.scanned},
              {"added", s.added},
              {"updated", s.updated},
              {"unchanged", s.unchanged},
              {"metadata_updated", s.metadata_updated},
              {"reused_embeddings", s.reused},
              {"removed", s.removed},
              {"vanished", vanished},
              {"unchecked", unchecked},
              {"failed", failures.size()},
              {"failures", failures},
              {"embedded", s.embedded},
              {"seconds", s.seconds},
              {"images_per_s", s.images_per_s},
              {"stages",
               {{"prepare_s", s.prepare_seconds},
                {"embed_s", s.embed_seconds},
                {"commit_s", s.commit_seconds},
                {"first_batch_s", s.first_batch_seconds},
                {"steady_images_per_s", s.steady_images_per_s}}},
              {"model_threads", s.model_threads},
              {"passes", s.passes},
              {"decode_threads", s.decode_threads},
              {"interrupted", s.interrupted},
              {"count", e.has_collection() ? e.collection().count() : 0}};
  set_path(out, "collection", e.has_collection() ? e.collection().dir().string() : "");
  if (!s.fatal_error.empty()) out["error"] = s.fatal_error;
  if (!s.cache_warning.empty()) out["cache_warning"] = s.cache_warning;
  if (!s.index_choice.empty()) out["index_choice"] = s.index_choice;
  if (auto p = e.model_precision())
    out["precision"] = {{"precision", model::to_string(p->precision)}, {"reason", p->reason}};
  return out;
}

void print_summary(const pipeline::IndexSummary& s, const engine::Engine& e) {
  const std::string metadata_note =
      s.metadata_updated > 0 ? fmt::format(" ({} with new metadata)", s.metadata_updated) : "";
  // The failures themselves are on stderr (run_index), in every mode: here only their count.
  // Interrupted: the files dealt with so far, of those found ("interrupted after 50 of 200
  // files"), not the files found alone.
  // (failures also count files the walk could not list, which `scanned` leaves out)
  const auto handled = std::min(
      s.scanned, s.added + s.updated + s.unchanged + static_cast<std::int64_t>(s.failures.size()));
  const std::string files =
      s.interrupted ? fmt::format("interrupted after {} of {}", handled, plural(s.scanned, "file"))
                    : "indexed " + plural(s.scanned, "file");
  std::cout << fmt::format(
      "{} in {:.1f} s: {} added, {} updated, {} unchanged{}, {} removed, {} failed\n", files,
      s.seconds, s.added, s.updated, s.unchanged, metadata_note, s.removed, s.failures.size());
  if (e.has_collection()) {
    std::cout << fmt::format(
        "embedded {} at {:.1f} images/s (inference threads: {}, passes side by side: {}, "
        "decode threads: {}); collection {} now holds {}\n",
        plural(s.embedded, "image"), s.images_per_s, s.model_threads, s.passes, s.decode_threads,
        e.collection().dir().string(), plural(e.collection().count(), "image"));
  } else {
    std::cout << "nothing to index; no collection was created\n";
  }
  if (!s.index_choice.empty()) std::cout << s.index_choice << "\n";
  if (auto p = e.model_precision())
    std::cout << fmt::format("precision {}: {}\n", model::to_string(p->precision), p->reason);
  if (!s.vanished.empty() && s.removed == 0) {
    const auto n = static_cast<std::int64_t>(s.vanished.size());
    std::cout << fmt::format("{} no longer {} (run with --prune to remove):\n",
                             plural(n, "indexed file"), n == 1 ? "exists" : "exist");
    for (const auto& v : s.vanished) std::cout << "  " << terminal_text(v) << "\n";
  } else if (s.removed > 0) {
    std::cout << fmt::format("removed {}\n", plural(s.removed, "vanished file"));
  }
  if (!s.unchecked.empty()) {
    std::int64_t n = 0;
    for (const auto& u : s.unchecked) n += u.images;
    std::cout << fmt::format(
        "{} under paths that failed {} not checked and {} kept (--prune removes only files that "
        "are definitely gone):\n",
        plural(n, "indexed file"), n == 1 ? "was" : "were", n == 1 ? "is" : "are");
    for (const auto& u : s.unchecked)
      std::cout << fmt::format("  {}: {}\n", terminal_text(u.where),
                               plural(u.images, "indexed file"));
  }
}

json metadata_of(const store::ImageRecord& r) {
  json meta = json::parse(r.metadata, nullptr, false);
  return meta.is_discarded() ? json::object() : meta;
}

json response_json(const engine::SearchResponse& r) {
  json out = {{"type", "search"}};
  set_path(out, "query", r.query);
  if (r.query_id) out["query_id"] = *r.query_id;
  if (!r.error.empty()) {
    out["error"] = r.error;
    return out;
  }
  out["generation"] = r.generation;
  out["results"] = json::array();
  for (const auto& h : r.results) {
    json row = {{"rank", h.rank}, {"id", h.image.id}, {"score", h.score}};
    set_path(row, "path", h.image.path);
    row["metadata"] = metadata_of(h.image);
    out["results"].push_back(row);
  }
  out["plan"] = {{"method", r.report.plan.method},
                 {"params", store::search_params_json(r.report.plan.params)},
                 {"candidates", r.report.plan.candidates}};
  if (r.report.filter_matches >= 0) {
    out["plan"]["filter_matches"] = r.report.filter_matches;
    out["plan"]["filter_ms"] = r.report.filter_ms;
  }
  if (!r.warnings.empty()) out["warnings"] = r.warnings;
  out["timings_ms"] = {{"decode", r.timings.decode_ms},
                       {"embed", r.timings.embed_ms},
                       {"search", r.timings.search_ms},
                       {"total", r.timings.total_ms}};
  return out;
}

// `warned`: the warnings already printed by this run (every query of a run shares its filter,
// and so its warnings: each is printed once).
void print_response(const engine::SearchResponse& r, const std::string& metric, bool as_json,
                    std::set<std::string>& warned) {
  if (!r.error.empty()) spdlog::error("{}", r.error);  // messages go to stderr in every mode
  for (const auto& w : r.warnings) {
    if (warned.insert(w).second) spdlog::warn("--where: {}", w);
  }
  if (as_json) {
    print_record(response_json(r));
    return;
  }
  if (!r.error.empty()) return;
  const char* score_name = metric == "l2" ? "distance" : "similarity";
  std::cout << "query: " << terminal_text(r.query) << "\n";
  std::cout << fmt::format("{:>5}  {:>10}  {}\n", "rank", score_name, "path  metadata");
  for (const auto& h : r.results) {
    std::cout << fmt::format("{:>5}  {:>10.4f}  {}  {}\n", h.rank, h.score,
                             terminal_text(h.image.path), metadata_line(metadata_of(h.image)));
  }
  std::cout << "\n";
}

}  // namespace

int run_index(const GlobalOptions& g, const IndexArgs& a) {
  // Installed first so that a Ctrl-C during model loading also ends cleanly with 130. It stays
  // installed until the summary is printed.
  install_interrupt_handler();
  engine::NewCollection fresh{a.metric,       a.factory,      a.memory_budget, params_of(a.params),
                              a.metric_given, a.factory_given};
  const bool existed = store::Collection::exists(g.collection);
  std::unique_ptr<engine::Engine> e;
  try {
    e = engine::Engine::open(engine_options(g), engine::Access::Write, fresh);
  } catch (const engine::EngineError& err) {
    if (err.kind() != engine::EngineError::Kind::Invalid) throw;
    spdlog::error("{}", err.what());
    return kUsage;
  } catch (const store::StoreError& err) {
    // A new collection: the only check before anything exists is that of its config (metric,
    // index spec), which is a usage error as at reindex and eval.
    if (existed) throw;
    spdlog::error("{}", err.what());
    return kUsage;
  }
  e->model();
  if (g_interrupted) return kInterrupted;

  ProgressPrinter progress(!g.quiet && !g.json);
  engine::IndexRequest r;
  r.inputs = a.inputs;
  r.prune = a.prune;
  r.file_column = a.file_column;
  r.include_hidden = a.hidden;
  r.cancel = &g_interrupted;
  r.on_progress = [&](const pipeline::Progress& p) { progress.update(p); };
  auto summary = e->index(r);
  if (g_interrupted) summary.interrupted = true;  // also a signal after the last batch
  progress.finish();
  // Failures reach stderr in every mode (docs/cli.md, "JSON output"); --json also lists them.
  for (const auto& f : summary.failures)
    spdlog::error("{}: {}", terminal_text(f.where), terminal_text(f.reason));

  if (g.json) {
    print_record(summary_json(summary, *e));
  } else {
    print_summary(summary, *e);
  }
  if (!summary.cache_warning.empty()) {
    spdlog::warn("{} (everything is committed; the index cache is rebuilt on the next open)",
                 summary.cache_warning);
  }
  if (!summary.fatal_error.empty()) {
    spdlog::error("{} (the {} committed before it {} kept)", summary.fatal_error,
                  plural(summary.committed_batches, "batch", "batches"),
                  summary.committed_batches == 1 ? "is" : "are");
    return kCommittedThenFailed;
  }
  if (summary.interrupted) return kInterrupted;
  const std::int64_t done = summary.added + summary.updated + summary.unchanged + summary.removed;
  if (summary.failures.empty() && summary.scanned == 0 && summary.removed == 0) {
    // Nothing failed and nothing was found: an empty folder, or only files of other kinds.
    spdlog::error("no image file found in the inputs (image extensions: {})",
                  fmt::join(pipeline::image_extensions(), " "));
    return kError;
  }
  if (!e->has_collection()) return kError;  // no input existed: nothing was created
  if (summary.failures.empty()) return kOk;
  return done > 0 ? kPartial : kError;  // every input failed: nothing was done
}

int run_search(const GlobalOptions& g, const SearchArgs& a) {
  if (a.k < 1 || a.k > store::kMaxTopK) {
    spdlog::error("-k: k must be between 1 and {}, got {}", store::kMaxTopK, a.k);
    return kUsage;
  }
  engine::SearchRequest r;
  r.where = engine::parse_where(a.where);
  auto e = engine::Engine::open(engine_options(g), engine::Access::Read);
  const std::string metric = e->collection().config().metric;
  r.k = a.k;
  r.include_self = a.include_self;
  r.params = params_of(a.params);
  if (a.min_score_given) r.min_score = static_cast<float>(a.min_score);
  engine::check_min_score(r.min_score, metric);  // a usage error (exit 2), not one per query
  std::size_t failed = 0;
  std::set<std::string> warned;
  for (std::int64_t id : a.ids) {
    engine::SearchResponse resp;
    try {
      resp = e->search_id(id, r);
    } catch (const engine::EngineError& err) {
      resp.query = fmt::format("--id {}", id);
      resp.query_id = id;
      resp.error = err.what();
    } catch (const store::StoreError& err) {
      resp.query = fmt::format("--id {}", id);
      resp.query_id = id;
      resp.error = err.what();
    }
    if (!resp.error.empty()) ++failed;
    print_response(resp, metric, g.json, warned);
  }
  if (!a.images.empty()) {
    for (const auto& resp : e->search_files(a.images, r)) {
      if (!resp.error.empty()) ++failed;
      print_response(resp, metric, g.json, warned);
    }
  }
  if (failed == 0) return kOk;
  return failed == a.ids.size() + a.images.size() ? kError : kPartial;
}

int run_reindex(const GlobalOptions& g, const ReindexArgs& a) {
  // (A cache that cannot be saved is a warning: the new spec is committed either way.)
  if (!store::Collection::exists(g.collection)) {
    spdlog::error("{}: no collection here", g.collection.string());
    return kError;
  }
  auto e = engine::Engine::open(engine_options(g), engine::Access::Write);
  const auto r = e->reindex({a.spec, a.memory_budget, params_of(a.params)});
  if (!r.cache_warning.empty()) {
    spdlog::warn("{} (the new index is committed; its cache is rebuilt on the next open)",
                 r.cache_warning);
  }
  const auto full = e->info();
  const auto& info = full.collection;
  if (g.json) {
    json out = {{"type", "reindex"},
                {"old_index_spec", r.summary.old_factory},
                {"index_spec", r.summary.new_factory},
                {"vectors", r.summary.vectors},
                {"build_seconds", r.summary.build_seconds},
                {"index_status", r.summary.status},
                {"search_params", store::search_params_json(info.index_params)},
                {"index_memory_bytes", info.index_memory_bytes}};
    if (!r.choice_reason.empty()) out["reason"] = r.choice_reason;
    if (!r.cache_warning.empty()) out["cache_warning"] = r.cache_warning;
    print_record(out);
    return kOk;
  }
  if (!r.choice_reason.empty()) {
    std::cout << fmt::format("auto picked \"{}\": {}\n", r.summary.new_factory, r.choice_reason);
  }
  std::cout << fmt::format(
      "reindexed {} from \"{}\" to \"{}\" in {:.1f} s (no image re-embedded): {}; "
      "search {}; index memory {}\n",
      plural(r.summary.vectors, "vector"), r.summary.old_factory, r.summary.new_factory,
      r.summary.build_seconds, r.summary.status, params_line(info.index_params),
      human_bytes(info.index_memory_bytes));
  return kOk;
}

int run_embed(const GlobalOptions& g, const EmbedArgs& a) {
  if (!a.npy.empty()) check_npy_target(a.npy);  // before embedding every image
  auto e = engine::Engine::open(engine_options(g), engine::Access::ModelOnly);
  auto& m = e->model();
  auto embedded = e->embed_files(a.images);
  const std::size_t n = a.images.size();
  const auto dim = static_cast<std::size_t>(embedded.dim);
  // Errors reach stderr whatever --json says (docs/cli.md, "JSON output"); the JSON records
  // carry them too (with --npy they have none to go in).
  for (const auto& err : embedded.errors) {
    if (!err.empty()) spdlog::error("{}", err);
  }
  const std::size_t failed = embedded.failed();
  if (failed == n && !a.npy.empty()) return kError;  // nothing embedded: no file, none replaced
  if (!a.npy.empty()) {
    write_npy(a.npy, embedded.embeddings, n, dim);
    if (!g.quiet) {
      std::cerr << fmt::format("lookalike: wrote {} x {} float32 embeddings ({}) to {}\n", n, dim,
                               m.id(), a.npy.string());
    }
  } else if (g.json) {
    for (std::size_t i = 0; i < n; ++i) {
      json row = {{"type", "embedding"}, {"model", m.id()}, {"dim", dim}};
      set_path(row, "path", a.images[i].string());
      if (embedded.errors[i].empty()) {
        const float* v = embedded.embeddings.data() + i * dim;
        row["embedding"] = std::vector<float>(v, v + dim);
      } else {
        row["error"] = embedded.errors[i];
      }
      print_record(row);
    }
  } else {
    // The path, a tab, the values separated by spaces: a path may hold spaces (and even tabs:
    // the values hold none, so the last tab ends it). Each value in the shortest form that reads
    // back as the same float32 (fmt's "{}"), so the text holds what the .npy holds.
    fmt::memory_buffer line;
    for (std::size_t i = 0; i < n; ++i) {
      if (!embedded.errors[i].empty()) continue;
      line.clear();
      const std::string path = a.images[i].string();
      line.append(path.data(), path.data() + path.size());
      const float* v = embedded.embeddings.data() + i * dim;
      for (std::size_t d = 0; d < dim; ++d)
        fmt::format_to(std::back_inserter(line), "{}{}", d == 0 ? '\t' : ' ', v[d]);
      line.push_back('\n');
      std::cout.write(line.data(), static_cast<std::streamsize>(line.size()));
    }
  }
  if (failed == 0) return kOk;
  return failed == n ? kError : kPartial;
}

int run_info(const GlobalOptions& g) {
  auto nullable = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
  auto e = engine::Engine::open(engine_options(g), engine::Access::Read);
  e->collection().check_integrity();  // info is where a user looks for damage
  const auto full = e->info();
  const auto& info = full.collection;
  if (g.json) {
    json corrupt = json::array();
    for (const auto& c : info.corrupt) corrupt.push_back({{"id", c.id}, {"reason", c.reason}});
    json out = {{"type", "info"},
                {"collection_id", info.collection_id},
                {"count", info.count},
                {"model_id", info.config.model_id},
                {"model", info.config.model_name},
                {"precision", full.precision.empty() ? json(nullptr) : json(full.precision)},
                {"precision_reason", full.precision_reason},
                {"collection_precision", full.collection_precision},
                {"precision_accepted",
                 full.precision.empty() ? json(nullptr) : json(full.precision_refusal.empty())},
                {"precision_refusal",
                 full.precision_refusal.empty() ? json(nullptr) : json(full.precision_refusal)},
                {"preprocess_fingerprint", nullable(info.config.preprocess_fingerprint)},
                {"preprocess", nullable(info.config.preprocess)},
                {"model_preprocess_fingerprint", nullable(full.model_preprocess_fingerprint)},
                {"preprocess_accepted", full.model_preprocess_fingerprint.empty()
                                            ? json(nullptr)
                                            : json(full.preprocess_refusal.empty())},
                {"preprocess_refusal", nullable(full.preprocess_refusal)},
                {"dim", info.config.dim},
                {"metric", info.config.metric},
                {"index_factory", info.config.factory},
                {"index_status", info.index_status},
                {"index_vectors", info.index_vectors},
                {"index_deleted", info.index_deleted},
                {"index_memory_bytes", info.index_memory_bytes},
                {"index_bytes_per_vector",
                 info.index_vectors > 0 ? info.index_memory_bytes / info.index_vectors : 0},
                {"index_mapped_bytes", info.index_mapped_bytes},
                {"index_search_path", info.index_search_path},
                {"search_params", store::search_params_json(info.index_params)},
                {"exact_subset_limit", info.exact_subset_limit},
                {"corrupt_vectors", corrupt},
                {"generation", info.generation},
                {"catalog_bytes", info.catalog_bytes},
                {"index_bytes", info.index_bytes},
                {"total_bytes", info.total_bytes}};
    set_path(out, "collection", info.dir.string());
    print_record(out);
    return kOk;
  }
  std::cout << fmt::format(
      "collection  {}\nimages      {}\nmodel       {} ({})\ndimension   {}\nmetric      {}\n"
      "index       {} (FAISS factory string): {}\n"
      "memory      {} index in memory ({} bytes a vector){}\n"
      "search      {}; filters selecting up to {} images are scored exactly\n"
      "disk        {} ({} catalog, {} index)\n",
      info.dir.string(), info.count, info.config.model_name, info.config.model_id, info.config.dim,
      info.config.metric, info.config.factory, info.index_status,
      human_bytes(info.index_memory_bytes),
      info.index_vectors > 0 ? info.index_memory_bytes / info.index_vectors : 0,
      info.index_mapped_bytes > 0 ? fmt::format(", {} memory-mapped from the index file",
                                                human_bytes(info.index_mapped_bytes))
                                  : "",
      params_line(info.index_params), info.exact_subset_limit, human_bytes(info.total_bytes),
      human_bytes(info.catalog_bytes), human_bytes(info.index_bytes));
  // The collection's precision is fixed by its vectors; this run's is a choice that may differ.
  std::cout << fmt::format("precision   collection: {}", full.collection_precision);
  if (!full.precision.empty())
    std::cout << fmt::format("; this run: {} ({}){}", full.precision, full.precision_reason,
                             full.precision_refusal.empty()
                                 ? ""
                                 : "; refused by this collection: " + full.precision_refusal);
  else if (!full.precision_reason.empty())
    std::cout << fmt::format("; this run cannot run: {}", full.precision_reason);
  std::cout << "\n";
  // The preprocessing the vectors were made with (docs/model-card.md, "Preprocessing
  // fingerprint"), and whether this run's card agrees.
  if (info.config.preprocess_fingerprint.empty()) {
    std::cout << "preprocess  not recorded (a collection from before schema 5): the next "
                 "`index` records its model card's";
  } else {
    std::cout << fmt::format(
        "preprocess  {} ({})", info.config.preprocess_fingerprint,
        info.config.preprocess.empty() ? "canonical text not recorded" : info.config.preprocess);
  }
  if (!full.preprocess_refusal.empty())
    std::cout << fmt::format("; refused for this run: {}", full.preprocess_refusal);
  std::cout << "\n";
  for (const auto& c : info.corrupt) {
    std::cout << fmt::format("corrupt     image {}: {} (left out of the index; re-index it)\n",
                             c.id, c.reason);
  }
  return kOk;
}

int run_remove(const GlobalOptions& g, const RemoveArgs& a) {
  if (!store::Collection::exists(g.collection)) {
    spdlog::error("{}: no collection here", g.collection.string());
    return kError;
  }
  auto e = engine::Engine::open(engine_options(g), engine::Access::Write);
  auto result = e->remove(a.ids, a.paths);
  // The next open loads the index as it is. The removals are committed already: a cache that
  // cannot be saved (full disk, read-only folder) is a warning, as for `index` (docs/cli.md).
  std::string cache_warning;
  if (!result.removed.empty()) {
    try {
      e->checkpoint();
    } catch (const std::exception& ex) {
      cache_warning = ex.what();
      spdlog::warn("{} (the removals are committed; the index cache is rebuilt on the next open)",
                   cache_warning);
    }
  }
  for (const auto id : result.missing_ids) spdlog::error("--id {}: not in the collection", id);
  for (const auto& p : result.missing_paths) spdlog::error("{}: not in the collection", p);
  const auto count = e->collection().count();
  if (g.json) {
    json out = {{"type", "remove"},
                {"removed", result.removed.size()},
                {"removed_ids", result.removed},
                {"not_found", json::array()},
                {"count", count}};
    if (!cache_warning.empty()) out["cache_warning"] = cache_warning;
    for (const auto id : result.missing_ids) out["not_found"].push_back({{"id", id}});
    for (const auto& p : result.missing_paths) {
      json row;
      set_path(row, "path", p);
      out["not_found"].push_back(row);
    }
    print_record(out);
  } else {
    std::cout << fmt::format("removed {}; collection {} now holds {}\n",
                             plural(static_cast<std::int64_t>(result.removed.size()), "image"),
                             g.collection.string(), plural(count, "image"));
  }
  if (result.missing_ids.empty() && result.missing_paths.empty()) return kOk;
  return result.removed.empty() ? kError : kPartial;  // nothing found: nothing was done
}

// What a precision's fidelity record says, for `models`: "min cosine 0.99985, meets the bar",
// "not calibrated", or why the record does not count (void, failed).
std::string fidelity_summary(const json& entry, const fs::path& dir) {
  const auto f = entry.value("fidelity", json());
  if (!f.is_object()) return "not calibrated";
  if (const std::string why = model::void_fidelity_reason(entry, dir); !why.empty())
    return "not calibrated: " + why;
  if (f.contains("failure"))
    return "calibration failed, below the bar: " + f.value("failure", std::string());
  if (!f.contains("min_cosine"))
    return fmt::format("{} the bar", model::meets_bar(f) ? "meets" : "below");
  return fmt::format("min cosine {:.5f}, {} the bar", f.value("min_cosine", 0.0),
                     model::meets_bar(f) ? "meets" : "below");
}

// One precision of a card, for `models`: "bf16 (min cosine 0.99985, meets the bar)", with its
// archive flagged when the file is missing.
std::string precision_item(const std::string& name, const json& entry, const fs::path& dir) {
  std::string item = name + " (" + fidelity_summary(entry, dir) + ")";
  const std::string archive = entry.value("archive", "");
  std::error_code ec;
  if (!archive.empty() && !fs::is_regular_file(dir / archive, ec))
    item += " [ARCHIVE MISSING: " + (dir / archive).string() + "]";
  return item;
}

// "fp32, bf16 (min cosine 0.99985, meets the bar)"; what auto would pick on this CPU.
std::string precisions_line(const model::InstalledModel& m) {
  const auto& card = m.card;
  const fs::path dir = m.archive.parent_path();
  std::string line = "fp32";
  if (card.precisions.is_object())
    for (const auto& [name, entry] : card.precisions.items())
      if (name != "fp32" && entry.is_object()) line += ", " + precision_item(name, entry, dir);
  try {
    line +=
        "; " +
        model::choose_precision("auto", card.precisions, model::cpu_flags(), card.name, dir).reason;
  } catch (const model::ModelError& e) {
    line += std::string("; auto: cannot choose: ") + e.what();
  }
  return line;
}

int run_models(const GlobalOptions& g) {
  auto dirs = model::default_model_dirs();
  std::vector<model::BrokenModel> broken;  // listed with their error, not hidden
  auto models = model::list_models(dirs, &broken);
  // Listed below (--json: with their "error"), and on stderr in every mode.
  for (const auto& b : broken)
    spdlog::warn("{}: model {} cannot be used: {}", b.archive.string(), b.archive.stem().string(),
                 b.error);
  if (g.json) {
    for (const auto& b : broken) {
      json rec = {{"type", "model"}, {"name", b.archive.stem().string()}, {"error", b.error}};
      set_path(rec, "archive", b.archive.string());
      print_record(rec);
    }
    for (const auto& m : models) {
      // "name" is the file stem, as for the broken ones above and in the human listing: it is
      // what --model takes. The card's own name (the model id's first part) is "card_name".
      json card = model::model_card_to_json(m.card);
      card["card_name"] = m.card.name;
      card["name"] = m.archive.stem().string();
      card["archive"] = m.archive.string();
      card["type"] = "model";
      const fs::path dir = m.archive.parent_path();
      const auto c =
          model::choose_precision("auto", m.card.precisions, model::cpu_flags(), m.card.name, dir);
      card["auto_precision"] = {{"precision", model::to_string(c.precision)}, {"reason", c.reason}};
      card["missing_archives"] = model::missing_archives(m.card.precisions, dir);
      print_record(card);
    }
    return kOk;
  }
  if (models.empty() && broken.empty()) {
    std::cout << "no models installed in:";
    for (const auto& d : dirs) std::cout << " " << d.string();
    std::cout << "\nexport one: /usr/bin/python3 tools/export_model.py mobilenet_v2 --weights FILE "
                 "--out DIR (and set LOOKALIKE_MODELS=DIR)\n";
    return kOk;
  }
  std::cout << fmt::format("{:<16} {:<14} {:>5}  {:<8}  {}\n", "name", "architecture", "dim",
                           "input", "archive");
  // The file stem, as for the broken ones below: it is what --model takes (the card's name is
  // in the model id; the exporter and train write them equal).
  for (const auto& m : models) {
    std::cout << fmt::format(
        "{:<16} {:<14} {:>5}  {:<8}  {}\n", m.archive.stem().string(),
        m.card.architecture + (m.card.variant.empty() ? "" : " " + m.card.variant),
        m.card.embedding_dim, fmt::format("{}px", m.card.input_size), m.archive.string());
    if (m.card.name != m.archive.stem().string())
      std::cout << fmt::format("{:<16} card name: {} (its model id's first part)\n", "",
                               m.card.name);
    std::cout << fmt::format("{:<16} weights: {} ({})\n", "", m.card.weights_source,
                             m.card.license);
    std::cout << fmt::format("{:<16} precision: {}\n", "", precisions_line(m));
  }
  for (const auto& b : broken) {
    std::cout << fmt::format("{:<16} BROKEN: {}\n{:<16} archive: {}\n", b.archive.stem().string(),
                             b.error, "", b.archive.string());
  }
  return kOk;
}

}  // namespace lookalike::cli

namespace lookalike::cli {

int run_serve(const GlobalOptions& g, const ServeArgs& a) {
  server::ServerOptions o;
  o.host = a.host;
  o.port = a.port;
  o.workers = a.workers;
  o.worker_nice = a.worker_nice;
  o.max_upload_bytes = static_cast<std::size_t>(a.max_upload_mb * 1024 * 1024);
  o.api_key = a.api_key;
  if (o.api_key.empty()) {
    const char* env = std::getenv("LOOKALIKE_API_KEY");
    if (env != nullptr) o.api_key = env;
  }
  if (a.private_reads && o.api_key.empty()) {
    spdlog::error("--private needs an API key (--api-key or $LOOKALIKE_API_KEY)");
    return kUsage;
  }
  o.private_reads = a.private_reads;
  o.cors_origins = a.cors_origins;
  o.allowed_hosts = a.allowed_hosts;
  o.read_timeout_s = a.read_timeout_s;
  o.write_timeout_s = a.write_timeout_s;
  o.request_timeout_s = a.request_timeout_s;
  o.shutdown_timeout_s = a.shutdown_timeout_s;
  o.web_dir = a.web_dir;
  auto eo = engine_options(g);
  eo.max_aspect_ratio = a.max_aspect_ratio;
  eo.batch_wait = std::chrono::microseconds(static_cast<std::int64_t>(a.batch_wait_ms * 1000));
  return server::serve(eo, o) == 0 ? kOk : kError;
}

engine::EngineOptions engine_options(const GlobalOptions& g) {
  engine::EngineOptions o;
  o.collection = g.collection;
  o.model = g.model;
  o.precision = g.precision;
  apply_run_settings(g, o);
  return o;
}

}  // namespace lookalike::cli
