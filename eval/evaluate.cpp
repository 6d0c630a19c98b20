#include "eval/evaluate.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <unordered_map>

#include "store/collection.h"

namespace fs = std::filesystem;

namespace lookalike::eval {

namespace {

using Clock = std::chrono::steady_clock;

// Embedding in chunks only to report progress; the engine batches within each chunk.
constexpr std::size_t kEmbedChunk = 256;
// Queries per search call: bounds the hits held at once (chunk x k), 10,000 x 256 x 16 bytes.
constexpr std::int64_t kSearchChunk = 256;
// Listing every skipped file of a large set would bury the results.
constexpr std::size_t kMaxWarnings = 20;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void say(const std::function<void(const std::string&)>& f, const std::string& line) {
  if (f) f(line);
}

void warn_list(const EvalOptions& o, const std::vector<std::string>& lines) {
  for (std::size_t i = 0; i < lines.size() && i < kMaxWarnings; ++i) say(o.warn, lines[i]);
  if (lines.size() > kMaxWarnings) {
    say(o.warn, fmt::format("... and {} more skipped", lines.size() - kMaxWarnings));
  }
}

// Labels as small integers shared by gallery and queries, so relevance is an int compare.
class LabelIds {
 public:
  std::vector<int> map(const std::vector<std::string>& labels) {
    std::vector<int> out;
    out.reserve(labels.size());
    for (const auto& l : labels)
      out.push_back(ids_.emplace(l, static_cast<int>(ids_.size())).first->second);
    return out;
  }

 private:
  std::unordered_map<std::string, int> ids_;
};

// An embedded set: rows that failed are dropped, keeping labels aligned.
struct Embedded {
  int dim = 0;
  std::vector<float> vectors;  // used x dim, row-major, L2-normalised
  std::vector<int> labels;
  std::int64_t failed = 0;
  double seconds = 0;
  std::int64_t size() const { return static_cast<std::int64_t>(labels.size()); }
};

Embedded embed_set(engine::Engine& e, const LabelledSet& set, const std::vector<int>& labels,
                   const std::string& what, const EvalOptions& o) {
  Embedded out;
  out.dim = e.model().dim();
  const auto t0 = Clock::now();
  std::vector<std::string> errors;
  for (std::size_t start = 0; start < set.files.size(); start += kEmbedChunk) {
    const std::size_t end = std::min(set.files.size(), start + kEmbedChunk);
    const std::vector<fs::path> chunk(set.files.begin() + start, set.files.begin() + end);
    const auto r = e.embed_files(chunk);
    for (std::size_t i = 0; i < chunk.size(); ++i) {
      if (!r.errors[i].empty()) {
        errors.push_back(r.errors[i]);
        continue;
      }
      const float* v = r.embeddings.data() + i * static_cast<std::size_t>(out.dim);
      out.vectors.insert(out.vectors.end(), v, v + out.dim);
      out.labels.push_back(labels[start + i]);
    }
    say(o.progress, fmt::format("embedded {}/{} {} images ({:.1f}/s)", end, set.files.size(), what,
                                static_cast<double>(end) / seconds_since(t0)));
  }
  out.seconds = seconds_since(t0);
  out.failed = static_cast<std::int64_t>(errors.size());
  warn_list(o, errors);
  if (out.size() == 0) {
    throw std::runtime_error(fmt::format("{}: none of its {} images could be embedded",
                                         set.source.string(), set.files.size()));
  }
  return out;
}

SetCounts counts(const LabelledSet& set, const Embedded& e) {
  return {e.size(), e.failed, set.unlabelled, set.empty_labels, set.unreadable};
}

void validate_specs(const EvalOptions& o, int dim) {
  for (const auto& spec : o.index_specs) {
    try {
      index::VectorIndex::validate_factory(dim, index::Metric::Cosine, spec);
    } catch (const index::IndexError& err) {
      throw EvalOptionError("--index-spec", err.what());
    }
  }
}

struct SpecResult {
  std::string status;
  index::SearchParams params;
  int ranked = 0;
  Metrics metrics;
  double search_seconds = 0;
};

// Relevance of one ranking; in leave-one-out the query's own id (its gallery position) is
// dropped, wherever the index ranked it.
void relevance_of(const std::vector<index::Hit>& hits, int label, const std::vector<int>& labels,
                  std::int64_t self, int keep, std::vector<std::uint8_t>& out) {
  out.clear();
  for (const auto& h : hits) {
    if (h.id == self) continue;
    if (static_cast<int>(out.size()) == keep) break;
    out.push_back(labels[static_cast<std::size_t>(h.id)] == label ? 1 : 0);
  }
}

index::VectorIndex build_index(const std::string& spec, const Embedded& gallery) {
  index::VectorIndex idx(gallery.dim, index::Metric::Cosine, spec);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(gallery.size()));
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>(i);
  idx.add(gallery.vectors.data(), ids.data(), gallery.size());
  return idx;
}

// What the rankings are scored against: gallery labels, and how many of each a query can find.
struct Relevance {
  const std::vector<int>& gallery_labels;
  std::unordered_map<int, std::int64_t> per_label;
  bool leave_one_out;
  int keep;  // ranking depth scored per query

  std::int64_t relevant_for(int label) const {
    const auto it = per_label.find(label);
    const std::int64_t n = it == per_label.end() ? 0 : it->second;
    return leave_one_out ? n - 1 : n;  // the query itself is not a result
  }
};

void score_chunk(const std::vector<std::vector<index::Hit>>& hits, std::int64_t first,
                 const Embedded& queries, const Relevance& r, MetricsAccumulator& acc) {
  std::vector<std::uint8_t> rel;
  for (std::size_t i = 0; i < hits.size(); ++i) {
    const std::int64_t q = first + static_cast<std::int64_t>(i);
    const int label = queries.labels[static_cast<std::size_t>(q)];
    relevance_of(hits[i], label, r.gallery_labels, r.leave_one_out ? q : -1, r.keep, rel);
    acc.add(rel, r.relevant_for(label));
  }
}

SpecResult evaluate_spec(const std::string& spec, const Embedded& gallery, const Embedded& queries,
                         bool leave_one_out) {
  const index::VectorIndex idx = build_index(spec, gallery);
  const std::int64_t ng = gallery.size();
  SpecResult out;
  out.status = idx.status();
  out.ranked =
      static_cast<int>(std::min<std::int64_t>(leave_one_out ? ng - 1 : ng, store::kMaxTopK));
  // One more in leave-one-out, for the query itself, which is then dropped.
  const int k = static_cast<int>(std::min<std::int64_t>(ng, out.ranked + (leave_one_out ? 1 : 0)));
  out.params = idx.effective_params();
  // HNSW's candidate list is raised to k for the search (vector_index.h): that is the value used.
  if (out.params.ef_search > 0) out.params.ef_search = std::max(out.params.ef_search, k);

  Relevance relevance{gallery.labels, {}, leave_one_out, out.ranked};
  for (int l : gallery.labels) ++relevance.per_label[l];
  MetricsAccumulator acc;
  for (std::int64_t start = 0; start < queries.size(); start += kSearchChunk) {
    const std::int64_t n = std::min(kSearchChunk, queries.size() - start);
    const auto t0 = Clock::now();
    const auto hits = idx.search(queries.vectors.data() + start * gallery.dim, n, k);
    out.search_seconds += seconds_since(t0);
    score_chunk(hits, start, queries, relevance, acc);
  }
  out.metrics = acc.result();
  return out;
}

struct Sets {
  LabelledSet gallery, queries;
  std::vector<int> gallery_labels, query_labels;
};

Sets load_sets(const EvalOptions& o) {
  Sets s;
  s.gallery = load_labelled_set(o.gallery, o.label_column, o.file_column);
  warn_list(o, s.gallery.skipped);
  if (!o.queries.empty()) {
    s.queries = load_labelled_set(o.queries, o.label_column, o.file_column);
    warn_list(o, s.queries.skipped);
  }
  LabelIds ids;
  s.gallery_labels = ids.map(s.gallery.labels);
  s.query_labels = ids.map(s.queries.labels);
  return s;
}

// Loads `model` and checks every index spec against its dimension (EvalOptionError, model
// errors as Engine::model throws them).
std::unique_ptr<engine::Engine> open_model(const std::string& model, const EvalOptions& o) {
  engine::EngineOptions eo = o.engine;
  eo.model = model;
  eo.collection.clear();
  auto e = engine::Engine::open(eo, engine::Access::ModelOnly);
  validate_specs(o, e->model().dim());
  return e;
}

void evaluate_model(const std::string& model, engine::Engine& engine, const Sets& s,
                    const EvalOptions& o, std::vector<EvalRow>& rows) {
  const bool loo = o.queries.empty();
  auto& m = engine.model();
  say(o.progress, fmt::format("{} ({}, {}-d)", model, m.id(), m.dim()));
  const Embedded gallery = embed_set(engine, s.gallery, s.gallery_labels, "gallery", o);
  const Embedded queries =
      loo ? Embedded{} : embed_set(engine, s.queries, s.query_labels, "query", o);
  const Embedded& q = loo ? gallery : queries;
  const double rate =
      static_cast<double>(gallery.size() + gallery.failed + queries.size() + queries.failed) /
      std::max(1e-9, gallery.seconds + queries.seconds);
  for (const auto& spec : o.index_specs) {
    const auto t0 = Clock::now();
    const SpecResult r = evaluate_spec(spec, gallery, q, loo);
    say(o.progress, fmt::format("{} / {}: {} queries ranked in {:.1f} s", model, spec, q.size(),
                                seconds_since(t0)));
    EvalRow row;
    row.model = model;
    row.model_id = m.id();
    row.index_spec = spec;
    row.index_status = r.status;
    row.search_params = r.params;
    row.leave_one_out = loo;
    row.gallery = counts(s.gallery, gallery);
    row.queries = loo ? row.gallery : counts(s.queries, queries);
    row.ranked = r.ranked;
    row.metrics = r.metrics;
    row.embed_images_per_s = rate;
    row.search_ms_per_query = 1000.0 * r.search_seconds / static_cast<double>(q.size());
    rows.push_back(std::move(row));
  }
}

}  // namespace

std::vector<EvalRow> run_eval(const EvalOptions& o) {
  if (o.models.empty()) throw EvalOptionError("--model", "give at least one model");
  if (o.index_specs.empty()) throw EvalOptionError("--index-spec", "give at least one spec");
  const Sets sets = load_sets(o);
  // Every model loads and every spec is checked against its dimension before anything is
  // embedded: a bad second model must not cost, and then discard, the first one's run. A
  // model given twice runs once.
  std::vector<std::string> models;
  for (const auto& m : o.models) {
    if (std::find(models.begin(), models.end(), m) == models.end()) models.push_back(m);
  }
  std::vector<std::unique_ptr<engine::Engine>> engines;
  for (const auto& model : models) engines.push_back(open_model(model, o));
  std::vector<EvalRow> rows;
  for (std::size_t i = 0; i < models.size(); ++i) {
    evaluate_model(models[i], *engines[i], sets, o, rows);
    engines[i].reset();  // its weights are not needed again
  }
  return rows;
}

}  // namespace lookalike::eval
