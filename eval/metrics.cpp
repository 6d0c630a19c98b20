#include "eval/metrics.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace lookalike::eval {

namespace {

void check_k(int k) {
  if (k < 1) throw std::invalid_argument("k must be at least 1, got " + std::to_string(k));
}

std::int64_t hits_in_top(std::span<const std::uint8_t> relevant, int k) {
  const auto n = std::min<std::size_t>(relevant.size(), static_cast<std::size_t>(k));
  return std::count_if(relevant.begin(), relevant.begin() + static_cast<std::ptrdiff_t>(n),
                       [](std::uint8_t r) { return r != 0; });
}

}  // namespace

double recall_at_k(std::span<const std::uint8_t> relevant, int k) {
  check_k(k);
  return hits_in_top(relevant, k) > 0 ? 1.0 : 0.0;
}

double precision_at_k(std::span<const std::uint8_t> relevant, int k) {
  check_k(k);
  return static_cast<double>(hits_in_top(relevant, k)) / k;
}

double average_precision(std::span<const std::uint8_t> relevant, std::int64_t n_relevant) {
  if (n_relevant < 0) {
    throw std::invalid_argument("n_relevant must be >= 0, got " + std::to_string(n_relevant));
  }
  std::int64_t found = 0;
  double sum = 0;
  for (std::size_t i = 0; i < relevant.size(); ++i) {
    if (relevant[i] == 0) continue;
    ++found;
    sum += static_cast<double>(found) / static_cast<double>(i + 1);
  }
  if (found > n_relevant) {
    throw std::invalid_argument(
        "the ranking holds " + std::to_string(found) +
        " relevant items, more than n_relevant = " + std::to_string(n_relevant));
  }
  return n_relevant == 0 ? 0.0 : sum / static_cast<double>(n_relevant);
}

void MetricsAccumulator::add(std::span<const std::uint8_t> relevant, std::int64_t n_relevant) {
  ++queries_;
  if (n_relevant == 0) {
    ++without_relevant_;
    return;  // a miss everywhere; AP undefined, so not part of mAP
  }
  r1_ += recall_at_k(relevant, 1);
  r5_ += recall_at_k(relevant, 5);
  r10_ += recall_at_k(relevant, 10);
  p10_ += precision_at_k(relevant, 10);
  ap_ += average_precision(relevant, n_relevant);
}

Metrics MetricsAccumulator::result() const {
  Metrics m;
  m.queries = queries_;
  m.queries_without_relevant = without_relevant_;
  if (queries_ > 0) {
    const auto q = static_cast<double>(queries_);
    m.recall_at_1 = r1_ / q;
    m.recall_at_5 = r5_ / q;
    m.recall_at_10 = r10_ / q;
    m.precision_at_10 = p10_ / q;
  }
  const std::int64_t with = queries_ - without_relevant_;
  if (with > 0) m.mean_ap = ap_ / static_cast<double>(with);
  return m;
}

}  // namespace lookalike::eval
