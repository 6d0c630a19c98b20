#include "index/index_spec.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

namespace lookalike::index {
namespace {

std::string mib(std::int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

std::int64_t nearest_power_of_two(double x) {
  const double p = std::round(std::log2(std::max(x, 1.0)));
  return std::int64_t{1} << static_cast<int>(p);
}

// Bytes an IVF index with `code` bytes a vector needs: codes, ids (8), direct map (8), slot
// table and id map (about 40, see VectorIndex::memory_bytes), centroids.
std::int64_t ivf_bytes(std::int64_t n, int dim, std::int64_t nlist, std::int64_t code) {
  return n * (code + 8 + 8 + 40) + nlist * dim * 4;
}

}  // namespace

SpecChoice choose_index_spec(std::int64_t vectors, int dim, std::int64_t budget) {
  SpecChoice c;
  const std::int64_t n = std::max<std::int64_t>(vectors, 0);
  const std::int64_t flat = n * (4LL * dim + 40);
  const bool fits_flat = budget <= 0 || flat <= budget;
  if (n * dim <= kExactWorkLimit && fits_flat) {
    c.factory = "Flat";
    c.estimated_bytes = flat;
    c.reason = std::to_string(n) + " vectors x " + std::to_string(dim) +
               " dims is within exact search's budget of 2^25 multiply-adds a query";
    return c;
  }
  const std::int64_t nlist = std::clamp<std::int64_t>(
      nearest_power_of_two(kListsPerSqrtN * std::sqrt(static_cast<double>(n))), 256, 65536);
  const std::string ivf = "IVF" + std::to_string(nlist) + ",";
  const std::string size_text = std::to_string(n) + " vectors x " + std::to_string(dim) + " dims";
  struct Form {
    std::string lists;
    std::int64_t code;
    int rerank;
  };
  std::vector<Form> forms = {{"Flat", 4LL * dim, 0}, {"SQ8", dim, 0}};
  for (int div : {4, 8, 16, 32}) {
    if (dim % div == 0 && dim / div >= 1)
      forms.push_back({"PQ" + std::to_string(dim / div), dim / div, 100});
  }
  for (const auto& f : forms) {
    const std::int64_t bytes = ivf_bytes(n, dim, nlist, f.code);
    if (budget > 0 && bytes > budget) continue;
    c.factory = ivf + f.lists;
    c.defaults.rerank = f.rerank;
    c.estimated_bytes = bytes;
    c.reason = size_text + " is past exact search's 2^25 multiply-adds a query; IVF with " +
               std::to_string(nlist) + " lists (about 8 sqrt(n)), nprobe tuned when it trains, " +
               f.lists + " lists need about " + mib(bytes);
    if (budget > 0) c.reason += " of the " + mib(budget) + " budget";
    if (f.code < 4LL * dim) {
      c.reason += " (Flat lists would need " + mib(ivf_bytes(n, dim, nlist, 4LL * dim)) + ")";
    }
    if (f.rerank > 0) c.reason += "; re-ranks 100 candidates from the catalog's vectors";
    return c;
  }
  const Form& smallest = forms.back();
  c.factory = ivf + smallest.lists;
  c.defaults.rerank = smallest.rerank;
  c.estimated_bytes = ivf_bytes(n, dim, nlist, smallest.code);
  c.reason = size_text + ": even " + smallest.lists + " lists need about " +
             mib(c.estimated_bytes) + ", over the " + mib(budget) + " budget";
  return c;
}

}  // namespace lookalike::index
