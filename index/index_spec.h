// `--index-spec auto`: which FAISS factory string and search defaults suit a collection of a
// given size, dimension and memory budget. The rule and the measurements behind it are in
// docs/indexes.md (figures from `lookalike bench-index` on this project's reference machine).
#pragma once

#include <cstdint>
#include <string>

#include "index/vector_index.h"

namespace lookalike::index {

// Collections up to this many multiply-adds per query (vectors x dim) are searched exactly:
// 2^25, e.g. 65,536 vectors at 512-d or 26,214 at 1280-d, a few ms per query on one core with
// AVX2 (bench-index: Flat at 10,000 x 512 answers in about 0.5 ms). Above it IVF pays off.
inline constexpr std::int64_t kExactWorkLimit = std::int64_t{1} << 25;

// IVF lists per sqrt(vectors), within FAISS's 4-16. Measured on the 100,000 x 1280 collection of
// bench/bench_server.cpp (500 queries, Recall@10 against exact search, codes scanned per query
// from faiss::indexIVF_stats): IVF1024 (4 sqrt(n)) scanned 14,324 codes at nprobe 16 for 0.973,
// IVF2048 5,548 codes at nprobe 16 for 0.965 and 9,720 at 32 for 0.995: about half the memory
// traffic of a search (which is bound by it) for the same recall, for twice the k-means work
// and a training threshold of 39 x nlist vectors (80,000 at 100,000).
inline constexpr double kListsPerSqrtN = 8.0;

struct SpecChoice {
  std::string factory;               // e.g. "Flat", "IVF4096,Flat", "IVF4096,SQ8", "IVF4096,PQ64"
  SearchParams defaults;             // stored as the collection's search defaults
  std::string reason;                // one line for people: the figures the choice came from
  std::int64_t estimated_bytes = 0;  // index memory the choice needs at `vectors`
};

// vectors >= 0, dim >= 1; memory_budget_bytes 0 = no budget. In order:
//  1. vectors x dim <= kExactWorkLimit: "Flat" (exact; an IVF would not be faster).
//  2. IVF with nlist = the power of two nearest kListsPerSqrtN sqrt(vectors) (FAISS's guideline,
//     "Guidelines to choose an index", 4-16 sqrt(n)), clamped to 256..65,536, its nprobe left to
//     the tuning done when it trains (ProbeTuning, vector_index.h); the lists hold, in the first
//     form that fits the budget: Flat (4 x dim bytes a vector), SQ8 (dim bytes), PQ with m = the
//     largest divisor of dim in {dim/4, dim/8, dim/16, dim/32} that fits (m bytes), re-ranked
//     exactly from the catalog's vectors (rerank 100).
//  3. Nothing fits: the smallest PQ, and the reason says it exceeds the budget.
// HNSW is not picked: it builds orders of magnitude slower than IVF on few cores (100,000 x
// 1280: 746 s against seconds), holds the full vectors plus its graph, and has no removal.
SpecChoice choose_index_spec(std::int64_t vectors, int dim, std::int64_t memory_budget_bytes);

}  // namespace lookalike::index
