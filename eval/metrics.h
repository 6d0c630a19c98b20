// Retrieval metrics over ranked relevance lists: pure functions, no I/O.
//
// A ranking is the gallery ordered by the index for one query, best first; `relevant` holds one
// entry per ranked item, non-zero when that item has the query's label. It may be shorter than
// the gallery: `lookalike eval` ranks at most store::kMaxTopK (10,000) items, and an approximate
// index (IVF) returns only the items in the lists it visited. Items never ranked count as not
// retrieved. `n_relevant` is the number of gallery items with the query's label (the query
// itself left out in leave-one-out), ranked or not.
//
// Definitions (as tests/e2e/retrieval.py and the Python reference figures in
// ../shared/models/mobilenet_v2/SOURCE.md compute them):
//   Recall@k     1 when at least one of the first k items is relevant, else 0: the "hit rate"
//                form of Recall@k used in image retrieval (Song et al., "Deep Metric Learning via
//                Lifted Structured Feature Embedding", CVPR 2016; Musgrave et al., "A Metric
//                Learning Reality Check", ECCV 2020), not |relevant in top k| / n_relevant.
//   Precision@k  |relevant among the first k| / k, always divided by k, also when fewer than k
//                items were ranked (trec_eval's P_k convention).
//   AP           (1 / n_relevant) * sum over ranks r (from 1) with a relevant item of
//                |relevant among the first r| / r (Manning, Raghavan, Schütze, "Introduction to
//                Information Retrieval", 2008, section 8.4; trec_eval's map). Relevant items
//                that were not ranked add 0, so AP over a truncated ranking is a lower bound.
//   mAP          the mean of AP over the queries that have at least one relevant gallery item.
//
// Queries without any relevant gallery item (a label absent from the gallery, or a class of one
// image in leave-one-out) cannot be found: they count as misses (0) in Recall@k and
// Precision@k, are left out of mAP (AP is undefined for them: 0 / 0), and are counted in
// Metrics::queries_without_relevant so that a report can say so.
#pragma once

#include <cstdint>
#include <span>

namespace lookalike::eval {

// k >= 1 (std::invalid_argument otherwise), for all three.
double recall_at_k(std::span<const std::uint8_t> relevant, int k);
double precision_at_k(std::span<const std::uint8_t> relevant, int k);
// 0 when n_relevant == 0. std::invalid_argument when n_relevant < 0 or fewer than the relevant
// items in the ranking.
double average_precision(std::span<const std::uint8_t> relevant, std::int64_t n_relevant);

struct Metrics {
  double recall_at_1 = 0, recall_at_5 = 0, recall_at_10 = 0;  // means over all queries
  double precision_at_10 = 0;                                 // mean over all queries
  double mean_ap = 0;  // mean over queries_with_relevant(); 0 when there are none
  std::int64_t queries = 0;
  std::int64_t queries_without_relevant = 0;
  std::int64_t queries_with_relevant() const { return queries - queries_without_relevant; }
};

// Sums per-query values; result() takes the means. Rankings can be added in any order and in
// chunks (the evaluator never holds all rankings at once).
class MetricsAccumulator {
 public:
  void add(std::span<const std::uint8_t> relevant, std::int64_t n_relevant);
  Metrics result() const;

 private:
  double r1_ = 0, r5_ = 0, r10_ = 0, p10_ = 0, ap_ = 0;
  std::int64_t queries_ = 0, without_relevant_ = 0;
};

}  // namespace lookalike::eval
