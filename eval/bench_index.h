// `lookalike bench-index`: build time, memory, recall@k and QPS of index types through
// index::VectorIndex (what users get), on generated clustered vectors or a collection's own.
//
// Data. Generated: a Gaussian mixture on the unit sphere. Each of C centres (default
// round(sqrt(n))) is a random unit vector; a point is normalise(centre + U_c z + e), with U_c a
// per-cluster d x 16 Gaussian basis (entries N(0, 1/d)), z ~ N(0, 0.25^2 I_16) and isotropic
// noise e ~ N(0, 0.2^2 / d I_d). The low-rank part gives each cluster a neighbour structure of
// low intrinsic dimension, as image embeddings have (a pure isotropic cloud in 512-d makes every
// point nearly equidistant from its cluster mates, which no real embedding set does), and the
// noise keeps the set from lying exactly on 16-d planes. Deterministic for a seed; queries are
// held-out points of the same mixture. From a collection: its catalog's embeddings; queries
// are a random sample of them, each excluded from its own results.
//
// Ground truth: exact top-k by a plain C++ scan (threads over queries), and for the filter the
// exact top-k among a random subset of filter_fraction of the ids.
//
// Measured per method and search setting (a sweep reuses one build):
//   build_s          seconds to add all vectors, training included
//   memory_bytes     VectorIndex::memory_bytes() (FAISS structures + slot table); re-ranking
//                    reads full vectors from a VectorSource that stands for the catalog's
//                    stored vectors (on disk in a collection), not counted here
//   recall           mean over queries of |found top-k ∩ exact top-k| / k, from the batched run
//   single_qps       queries / total seconds, one query per call from one thread, in query
//                    order until single_budget_s has passed (at least min(5, queries) queries)
//   batched_qps      all queries in one call, FAISS's OpenMP team of `threads`
//   filtered_*       the same with SearchOptions::allow = the subset; plan = SearchPlan::method
//   full_top_k       every filtered query got k hits
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace lookalike::eval {

// A bad option: `option` names it ("--sizes"), what() says why.
class BenchOptionError : public std::invalid_argument {
 public:
  BenchOptionError(std::string option, const std::string& why)
      : std::invalid_argument(option + ": " + why), option_(std::move(option)) {}
  const std::string& option() const { return option_; }

 private:
  std::string option_;
};

// Data that cannot be benchmarked: a --from-collection folder that does not exist, holds no
// collection, cannot be read or has no configuration. A runtime error (CLI exit 1), not a usage
// one; what() names the folder and the cause.
class BenchDataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct BenchIndexOptions {
  std::vector<std::int64_t> sizes{1000, 10000, 100000};  // vectors per run, 1..1,000,000
  int dim = 512;                                         // generated data only
  int queries = 200;
  int k = 10;
  int threads = 0;  // OpenMP threads for batched search and ground truth; 0 = all cores
  std::uint64_t seed = 42;
  double filter_fraction = 0.01;          // share of ids the filter keeps, (0, 1]
  std::int64_t max_hnsw = 200'000;        // HNSW rows are skipped above this size
  int pq_m = 0;                           // IVF-PQ sub-quantizers; 0 = dim / 8
  int clusters = 0;                       // mixture centres; 0 = round(sqrt(n))
  int nlist = 0;                          // IVF lists of the default specs; 0 = default_nlist(n)
  std::vector<std::string> specs;         // factory strings; empty = the default set
  bool quick = false;                     // a small sweep
  double single_budget_s = 3;             // time cap of one single-query measurement
  std::filesystem::path from_collection;  // empty = generated data
  std::function<void(const std::string&)> progress;  // progress lines; null = silent
};

struct BenchRow {
  std::int64_t size = 0;
  std::string method;  // "brute-force loop", "Flat", "IVF1024,Flat", "filter after exact scan"
  std::string params;  // "nprobe=8", "nprobe=8 rerank=100", "efSearch=64", "" for none
  int nprobe = 0, ef_search = 0, rerank = 0;  // effective values (SearchPlan::params)
  double build_s = 0;
  std::int64_t memory_bytes = 0;
  double bytes_per_vector = 0;
  std::optional<double> recall;  // unset for the filter-only baseline row
  std::optional<double> single_qps;
  int single_queries = 0;  // queries the single-query QPS was measured over
  std::optional<double> batched_qps;
  std::optional<double> filtered_recall;
  std::optional<double> filtered_single_qps;
  std::optional<double> filtered_batched_qps;
  std::optional<bool> full_top_k;
  std::string plan;  // filtered run: SearchPlan::method ("index", "exact-subset", ...); "scan"
                     // for the plain loops
};

struct BenchResult {
  int dim = 0;
  std::vector<std::int64_t> sizes;
  int queries = 0;
  int k = 10;
  double filter_fraction = 0;
  std::string data;  // "generated (...)" or "collection <dir>"
  std::vector<std::string> notes;
  std::vector<BenchRow> rows;
};

// Throws BenchOptionError for an invalid option (before any work), including factory strings
// VectorIndex::validate_factory refuses.
void validate(const BenchIndexOptions& options);

// Runs every size and method. Throws BenchOptionError (validate; a collection too small for
// --queries and -k), BenchDataError for a missing or unusable --from-collection, store::StoreError
// for a catalog that cannot be read, index::IndexError when FAISS fails.
BenchResult run_bench_index(const BenchIndexOptions& options);

// The default factory strings for n vectors of dimension dim: Flat, IVF{nlist},Flat,
// HNSW32 (n <= max_hnsw), IVF{nlist},PQ{m}. nlist: the power of two nearest 4 sqrt(n) (FAISS
// wiki, "Guidelines to choose an index"), at most n / 39 (VectorIndex's training threshold:
// 39 points per centroid) and at least 1.
// nlist > 0 replaces the rule (still capped at n / 39).
std::vector<std::string> default_specs(std::int64_t n, int dim, int pq_m, std::int64_t max_hnsw,
                                       int nlist = 0);
int default_nlist(std::int64_t n, int nlist = 0);

std::string format_table(const BenchResult& result);  // fixed-width text, one row per line
std::string to_json(const BenchResult& result);       // {"dim", "sizes", "queries", "rows"...}

}  // namespace lookalike::eval
