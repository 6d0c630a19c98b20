// `lookalike eval`: retrieval quality of models and index specs on a labelled image set.
//
// For each model, the gallery and the queries are embedded once (engine::Engine in ModelOnly
// mode: no collection is read or written); images that fail to decode are reported through
// `warn` and left out (they are neither ranked nor counted as relevant). Then, for each index
// spec, an index::VectorIndex(dim, Metric::Cosine, spec) is filled with the gallery (ids are
// gallery positions; a spec that needs training trains on the gallery when it is large enough,
// see VectorIndex::training_threshold, else searches exactly and index_status says so) and every
// query ranks the gallery: k = min(gallery size, store::kMaxTopK = 10,000), so over galleries
// larger than 10,000 images AP (and mAP) is computed over the top 10,000 only, a lower bound.
// An approximate index may return fewer than k items (IVF visits nprobe lists): items it does
// not return count as not retrieved. Metrics: eval/metrics.h.
//
// Modes: query-vs-gallery (queries given: a separate labelled set), or leave-one-out (no
// queries: every gallery image queries the others, itself excluded; n_relevant excludes it).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "eval/labels.h"
#include "eval/metrics.h"
#include "index/vector_index.h"

namespace lookalike::eval {

// A bad option value (an index spec FAISS refuses, no model): `option` names it
// ("--index-spec"); what() says why. Front ends treat it as a usage error.
class EvalOptionError : public std::invalid_argument {
 public:
  EvalOptionError(std::string option, const std::string& why)
      : std::invalid_argument(option + ": " + why), option_(std::move(option)) {}
  const std::string& option() const { return option_; }

 private:
  std::string option_;
};

struct EvalOptions {
  std::filesystem::path gallery;       // folder (a subfolder per class) or CSV manifest
  std::filesystem::path queries;       // the same kinds; empty = leave-one-out over the gallery
  std::string label_column = "label";  // CSV manifests
  std::string file_column;             // CSV manifests; empty = scan.h's default names
  std::vector<std::string> models;     // names or .pt paths; at least one
  std::vector<std::string> index_specs{"Flat"};  // FAISS factory strings (index/vector_index.h)
  // Threads, decode threads, batch size and pixel limit; `model` is set per model, and
  // `collection` is not used (ModelOnly).
  engine::EngineOptions engine;
  std::function<void(const std::string&)> progress;  // progress lines; null = silent
  std::function<void(const std::string&)> warn;      // skipped files, failed decodes; null = none
};

// What became of one image set's entries.
struct SetCounts {
  std::int64_t used = 0;          // embedded and evaluated
  std::int64_t failed = 0;        // listed with a label but could not be decoded or embedded
  std::int64_t unlabelled = 0;    // LabelledSet::unlabelled
  std::int64_t empty_labels = 0;  // LabelledSet::empty_labels
  std::int64_t unreadable = 0;    // LabelledSet::unreadable
};

struct EvalRow {
  std::string model;                  // as given
  std::string model_id;               // model::EmbeddingModel::id()
  std::string index_spec;             // as given
  std::string index_status;           // VectorIndex::status() after the gallery was added
  index::SearchParams search_params;  // VectorIndex::effective_params(): nprobe, efSearch used
  bool leave_one_out = false;
  SetCounts gallery, queries;  // leave-one-out: queries mirror the gallery
  int ranked = 0;              // k asked of the index per query
  Metrics metrics;
  double embed_images_per_s = 0;   // this model, gallery and queries together
  double search_ms_per_query = 0;  // batched search time / queries (includes scoring nothing)
};

// One row per (model, index spec), models in order, specs in order within each.
// Throws LabelError for an unusable image set (before any model is loaded), EvalOptionError
// for a spec FAISS refuses (checked with the model's dimension before anything is embedded) or
// an empty model list, model::ModelError / engine::EngineError for a model that cannot be
// loaded, and std::runtime_error naming the set when none of its images could be embedded.
std::vector<EvalRow> run_eval(const EvalOptions& options);

}  // namespace lookalike::eval
