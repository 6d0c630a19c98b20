#include "eval/bench_index.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>
#include <numeric>
#include <queue>
#include <random>
#include <regex>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "index/vector_index.h"
#include "store/catalog.h"
#include "store/collection.h"

namespace lookalike::eval {

namespace {

using index::Metric;
using index::VectorIndex;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Mixture shape (see the header): rank of each cluster's basis, its scale, the noise norm.
constexpr int kClusterRank = 16;
constexpr float kClusterScale = 0.25f;
constexpr float kNoiseNorm = 0.2f;
// Rows added per VectorIndex::add call after training (progress granularity).
constexpr std::int64_t kAddChunk = 100'000;

struct Data {
  int dim = 0;
  Metric metric = Metric::Cosine;
  std::vector<float> base;  // n x dim, row-major
  std::vector<std::int64_t> ids;
  std::unordered_map<std::int64_t, std::int64_t> row_of;  // id -> row (collection data only)
  std::vector<float> queries;                             // nq x dim
  std::unordered_set<std::int64_t> exclude;               // collection: the sampled query ids
  std::int64_t n() const { return static_cast<std::int64_t>(ids.size()); }
  int nq() const { return static_cast<int>(queries.size() / static_cast<std::size_t>(dim)); }
  std::int64_t row(std::int64_t id) const {
    if (row_of.empty()) return id;
    auto it = row_of.find(id);
    return it == row_of.end() ? -1 : it->second;
  }
};

int worker_count(int threads) {
  if (threads > 0) return threads;
  return std::max(1u, std::thread::hardware_concurrency());
}

// Runs fn(i) for i in [0, n) on `threads` std::threads (static interleaved split).
void parallel_for(std::int64_t n, int threads, const std::function<void(std::int64_t)>& fn) {
  const int t =
      static_cast<int>(std::min<std::int64_t>(std::max(threads, 1), std::max<std::int64_t>(n, 1)));
  std::vector<std::thread> pool;
  for (int w = 0; w < t; ++w) {
    pool.emplace_back([&, w] {
      for (std::int64_t i = w; i < n; i += t) fn(i);
    });
  }
  for (auto& th : pool) th.join();
}

void normalise(float* v, int d) {
  double s = 0;
  for (int j = 0; j < d; ++j) s += double(v[j]) * v[j];
  const float inv = s > 0 ? static_cast<float>(1.0 / std::sqrt(s)) : 0.0f;
  for (int j = 0; j < d; ++j) v[j] *= inv;
}

struct Mixture {
  int dim = 0, clusters = 0;
  std::vector<float> centres;  // clusters x dim
  std::vector<float> bases;    // clusters x kClusterRank x dim
};

Mixture make_mixture(int dim, int clusters, std::uint64_t seed) {
  Mixture m{dim, clusters, {}, {}};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  m.centres.resize(static_cast<std::size_t>(clusters) * dim);
  m.bases.resize(static_cast<std::size_t>(clusters) * kClusterRank * dim);
  const float basis_sd = 1.0f / std::sqrt(static_cast<float>(dim));
  for (int c = 0; c < clusters; ++c) {
    float* centre = &m.centres[static_cast<std::size_t>(c) * dim];
    for (int j = 0; j < dim; ++j) centre[j] = g(rng);
    normalise(centre, dim);
  }
  for (float& b : m.bases) b = g(rng) * basis_sd;
  return m;
}

// Points [first, first + count) of stream `stream` into out (count x dim); each block of 4096
// points has its own generator, so the result does not depend on the thread count.
void sample_mixture(const Mixture& m, std::uint64_t seed, std::uint64_t stream, std::int64_t count,
                    float* out, int threads) {
  constexpr std::int64_t kBlock = 4096;
  const std::int64_t blocks = (count + kBlock - 1) / kBlock;
  const int d = m.dim;
  parallel_for(blocks, threads, [&](std::int64_t b) {
    std::seed_seq seq{seed, stream, static_cast<std::uint64_t>(b)};
    std::mt19937_64 rng(seq);
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::uniform_int_distribution<int> pick(0, m.clusters - 1);
    const float noise_sd = kNoiseNorm / std::sqrt(static_cast<float>(d));
    float z[kClusterRank];
    for (std::int64_t i = b * kBlock; i < std::min(count, (b + 1) * kBlock); ++i) {
      float* x = out + i * d;
      const int c = pick(rng);
      const float* centre = &m.centres[static_cast<std::size_t>(c) * d];
      for (int r = 0; r < kClusterRank; ++r) z[r] = g(rng) * kClusterScale;
      for (int j = 0; j < d; ++j) x[j] = centre[j] + g(rng) * noise_sd;
      for (int r = 0; r < kClusterRank; ++r) {
        const float* u = &m.bases[(static_cast<std::size_t>(c) * kClusterRank + r) * d];
        for (int j = 0; j < d; ++j) x[j] += z[r] * u[j];
      }
      normalise(x, d);
    }
  });
}

Data generate(std::int64_t n, int nq, const BenchIndexOptions& o) {
  Data data;
  data.dim = o.dim;
  const int clusters = o.clusters > 0
                           ? o.clusters
                           : std::max(1, static_cast<int>(std::lround(std::sqrt(double(n)))));
  const Mixture m = make_mixture(o.dim, clusters, o.seed);
  data.base.resize(static_cast<std::size_t>(n) * o.dim);
  data.queries.resize(static_cast<std::size_t>(nq) * o.dim);
  const int t = worker_count(o.threads);
  sample_mixture(m, o.seed, 1, n, data.base.data(), t);
  sample_mixture(m, o.seed, 2, nq, data.queries.data(), t);
  data.ids.resize(static_cast<std::size_t>(n));
  std::iota(data.ids.begin(), data.ids.end(), 0);
  return data;
}

Data read_collection(const BenchIndexOptions& o) {
  // A collection that is missing or unusable is a runtime error (exit 1), as for every command
  // that reads one; only the option values themselves are usage errors.
  const auto& dir = o.from_collection;
  auto refuse = [&](const std::string& why) {
    return BenchDataError(fmt::format("--from-collection {}: {}", dir.string(), why));
  };
  std::error_code ec;
  const auto status = std::filesystem::status(dir, ec);
  if (status.type() == std::filesystem::file_type::not_found) throw refuse("no such folder");
  if (!ec && !std::filesystem::is_directory(status)) throw refuse("not a folder");
  bool found = false;
  try {
    found = store::Collection::exists(dir);  // throws naming the cause when it cannot tell
  } catch (const store::StoreError& e) {
    throw BenchDataError(fmt::format("--from-collection: {}", e.what()));
  }
  if (!found) {
    throw refuse(std::filesystem::exists(dir / "catalog.db", ec)
                     ? "no collection in this folder (its catalog.db is what an interrupted "
                       "creation left: no configuration, no images)"
                     : "no collection in this folder (no catalog.db)");
  }
  // The catalog alone: Collection::open would also load or rebuild the collection's index.
  auto catalog = store::Catalog::open_read_only(dir / "catalog.db");
  const auto config = catalog->config();
  if (!config) throw refuse("the collection has no configuration yet (nothing indexed)");
  Data data;
  data.dim = config->dim;
  data.metric = index::parse_metric(config->metric);
  catalog->for_each_embedding([&](std::int64_t id, const float* v) {
    data.row_of[id] = static_cast<std::int64_t>(data.ids.size());
    data.ids.push_back(id);
    data.base.insert(data.base.end(), v, v + data.dim);
  });
  return data;
}

// The first n rows of `all` (collection data: the catalog in id order), with nq queries drawn
// from those rows.
Data take_collection_rows(const Data& all, std::int64_t n, int nq, std::uint64_t seed) {
  Data data;
  data.dim = all.dim;
  data.metric = all.metric;
  n = std::min(n, all.n());
  data.ids.assign(all.ids.begin(), all.ids.begin() + n);
  data.base.assign(all.base.begin(), all.base.begin() + n * all.dim);
  for (std::int64_t r = 0; r < n; ++r) data.row_of[data.ids[r]] = r;
  std::vector<std::int64_t> rows(static_cast<std::size_t>(n));
  std::iota(rows.begin(), rows.end(), 0);
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ULL);
  std::shuffle(rows.begin(), rows.end(), rng);
  rows.resize(static_cast<std::size_t>(std::min<std::int64_t>(nq, n)));
  for (std::int64_t r : rows) {
    data.queries.insert(data.queries.end(), &data.base[r * data.dim],
                        &data.base[r * data.dim] + data.dim);
    data.exclude.insert(data.ids[r]);
  }
  return data;
}

// ---- plain exact scoring (higher is better: dot product, or minus the squared L2 distance)

float dot(const float* a, const float* b, int d) {
  // Eight partial sums: lets the compiler vectorise without -ffast-math.
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int j = 0;
  for (; j + 8 <= d; j += 8) {
    for (int l = 0; l < 8; ++l) s[l] += a[j + l] * b[j + l];
  }
  float t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; j < d; ++j) t += a[j] * b[j];
  return t;
}

float neg_l2sq(const float* a, const float* b, int d) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int j = 0;
  for (; j + 8 <= d; j += 8) {
    for (int l = 0; l < 8; ++l) {
      const float e = a[j + l] - b[j + l];
      s[l] += e * e;
    }
  }
  float t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; j < d; ++j) t += (a[j] - b[j]) * (a[j] - b[j]);
  return -t;
}

float score(Metric m, const float* a, const float* b, int d) {
  return m == Metric::Cosine ? dot(a, b, d) : neg_l2sq(a, b, d);
}

// Keeps the k best (score, id) seen; worst on top.
class TopK {
 public:
  explicit TopK(int k) : k_(k) {}
  bool wants(float s) const { return static_cast<int>(heap_.size()) < k_ || s > heap_.top().first; }
  void push(float s, std::int64_t id) {
    if (static_cast<int>(heap_.size()) < k_) {
      heap_.emplace(s, id);
    } else if (s > heap_.top().first) {
      heap_.pop();
      heap_.emplace(s, id);
    }
  }
  std::vector<std::int64_t> ids() {  // best first; empties the heap
    std::vector<std::int64_t> out(heap_.size());
    for (auto i = out.size(); i-- > 0; heap_.pop()) out[i] = heap_.top().second;
    return out;
  }

 private:
  using Entry = std::pair<float, std::int64_t>;
  int k_;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap_;
};

using IdLists = std::vector<std::vector<std::int64_t>>;

// Exact top-k of every query over `rows` (all rows when empty), threads over groups of 8
// queries so that each base row is read once per group.
IdLists exact_topk(const Data& data, int k, const std::vector<std::int64_t>& rows, int threads) {
  constexpr int kGroup = 8;
  const int nq = data.nq(), d = data.dim;
  IdLists out(static_cast<std::size_t>(nq));
  const std::int64_t m = rows.empty() ? data.n() : static_cast<std::int64_t>(rows.size());
  parallel_for((nq + kGroup - 1) / kGroup, threads, [&](std::int64_t g) {
    const int q0 = static_cast<int>(g) * kGroup, q1 = std::min(nq, q0 + kGroup);
    std::vector<TopK> top(static_cast<std::size_t>(q1 - q0), TopK(k));
    for (std::int64_t i = 0; i < m; ++i) {
      const std::int64_t r = rows.empty() ? i : rows[i];
      const std::int64_t id = data.ids[r];
      if (!data.exclude.empty() && data.exclude.count(id)) continue;
      const float* x = &data.base[r * d];
      for (int q = q0; q < q1; ++q) {
        top[q - q0].push(score(data.metric, &data.queries[std::size_t(q) * d], x, d), id);
      }
    }
    for (int q = q0; q < q1; ++q) out[q] = top[q - q0].ids();
  });
  return out;
}

double recall(const IdLists& found, const IdLists& truth, int count) {
  if (count == 0) return 0;
  double sum = 0;
  for (int q = 0; q < count; ++q) {
    if (truth[q].empty()) continue;
    std::unordered_set<std::int64_t> t(truth[q].begin(), truth[q].end());
    int hit = 0;
    for (std::int64_t id : found[q]) hit += t.count(id) ? 1 : 0;
    sum += double(hit) / double(truth[q].size());
  }
  return sum / count;
}

IdLists to_ids(const std::vector<std::vector<index::Hit>>& hits) {
  IdLists out(hits.size());
  for (std::size_t q = 0; q < hits.size(); ++q) {
    for (const auto& h : hits[q]) out[q].push_back(h.id);
  }
  return out;
}

bool all_full(const IdLists& lists, int count, int k) {
  for (int q = 0; q < count; ++q) {
    if (static_cast<int>(lists[q].size()) < k) return false;
  }
  return true;
}

// Runs one(q) for queries in order until budget_s has passed (at least min(5, nq) queries).
// Returns (queries run, QPS over them).
std::pair<int, double> time_single(int nq, double budget_s, const std::function<void(int)>& one) {
  const int min_q = std::min(5, nq);
  const auto t0 = Clock::now();
  int done = 0;
  while (done < nq) {
    one(done);
    ++done;
    if (done >= min_q && seconds_since(t0) > budget_s) break;
  }
  return {done, done / std::max(seconds_since(t0), 1e-9)};
}

// ---- the run

struct Truth {
  IdLists all;       // exact top-k over every vector
  IdLists filtered;  // exact top-k over the allowed subset
  std::unordered_set<std::int64_t> allow;
  std::vector<char> allowed_row;  // per row
};

Truth ground_truth(const Data& data, const BenchIndexOptions& o) {
  Truth t;
  const std::int64_t n = data.n();
  const auto want = std::min<std::int64_t>(
      n, std::max<std::int64_t>(o.k, std::llround(o.filter_fraction * double(n))));
  std::vector<std::int64_t> rows(static_cast<std::size_t>(n));
  std::iota(rows.begin(), rows.end(), 0);
  std::mt19937_64 rng(o.seed + 7);
  std::shuffle(rows.begin(), rows.end(), rng);
  rows.resize(static_cast<std::size_t>(want));
  std::sort(rows.begin(), rows.end());
  t.allowed_row.assign(static_cast<std::size_t>(n), 0);
  for (std::int64_t r : rows) {
    t.allow.insert(data.ids[r]);
    t.allowed_row[r] = 1;
  }
  const int threads = worker_count(o.threads);
  t.all = exact_topk(data, o.k, {}, threads);
  t.filtered = exact_topk(data, o.k, rows, threads);
  return t;
}

struct Context {
  const Data& data;
  const Truth& truth;
  const BenchIndexOptions& o;
  BenchResult& result;
  void progress(const std::string& line) const {
    if (o.progress) o.progress(line);
  }
};

// The plain single-threaded loop: every score, then partial_sort for the top k.
std::vector<std::int64_t> brute_force_query(const Data& data, const float* q, int k,
                                            std::vector<float>& scores,
                                            std::vector<std::int64_t>& order) {
  const std::int64_t n = data.n();
  const int d = data.dim;
  scores.resize(static_cast<std::size_t>(n));
  for (std::int64_t r = 0; r < n; ++r) {
    scores[r] =
        data.exclude.count(data.ids[r]) ? -INFINITY : score(data.metric, q, &data.base[r * d], d);
  }
  order.resize(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  const auto kk = std::min<std::int64_t>(k, n);
  std::partial_sort(order.begin(), order.begin() + kk, order.end(),
                    [&](std::int64_t a, std::int64_t b) { return scores[a] > scores[b]; });
  std::vector<std::int64_t> out;
  for (std::int64_t i = 0; i < kk; ++i) out.push_back(data.ids[order[i]]);
  return out;
}

void bench_brute_force(const Context& c) {
  c.progress("brute-force loop");
  const Data& data = c.data;
  const int nq = data.nq();
  IdLists found(static_cast<std::size_t>(nq));
  std::vector<float> scores;
  std::vector<std::int64_t> order;
  BenchRow row;
  row.method = "brute-force loop";
  row.plan = "scan";
  row.memory_bytes = static_cast<std::int64_t>(data.base.size() * sizeof(float));
  row.bytes_per_vector = double(data.dim) * sizeof(float);
  auto [done, qps] = time_single(nq, c.o.single_budget_s, [&](int q) {
    found[q] =
        brute_force_query(data, &data.queries[std::size_t(q) * data.dim], c.o.k, scores, order);
  });
  row.single_qps = qps;
  row.single_queries = done;
  row.recall = recall(found, c.truth.all, done);
  c.result.rows.push_back(row);
}

// Filtering after an exact search: the full exact scan, then the best allowed ids kept.
void bench_filter_after_exact(const Context& c) {
  c.progress("filter after exact scan");
  const Data& data = c.data;
  const int nq = data.nq(), d = data.dim, k = c.o.k;
  IdLists found(static_cast<std::size_t>(nq));
  std::vector<float> scores(static_cast<std::size_t>(data.n()));
  BenchRow row;
  row.method = "filter after exact scan";
  row.plan = "scan";
  row.memory_bytes = static_cast<std::int64_t>(data.base.size() * sizeof(float));
  row.bytes_per_vector = double(data.dim) * sizeof(float);
  auto [done, qps] = time_single(nq, c.o.single_budget_s, [&](int q) {
    const float* qv = &data.queries[std::size_t(q) * d];
    for (std::int64_t r = 0; r < data.n(); ++r)
      scores[r] = score(data.metric, qv, &data.base[r * d], d);
    TopK top(k);
    for (std::int64_t r = 0; r < data.n(); ++r) {
      if (!top.wants(scores[r])) continue;
      const std::int64_t id = data.ids[r];
      if (c.truth.allow.count(id) && !data.exclude.count(id)) top.push(scores[r], id);
    }
    found[q] = top.ids();
  });
  row.filtered_single_qps = qps;
  row.single_queries = done;
  row.filtered_recall = recall(found, c.truth.filtered, done);
  row.full_top_k = all_full(found, done, k);
  c.result.rows.push_back(row);
}

struct Setting {
  index::SearchParams params;
  std::string label;
};

int parse_count(const std::string& spec, const std::string& prefix) {
  std::smatch m;
  if (std::regex_search(spec, m, std::regex(prefix + "([0-9]+)"))) return std::stoi(m[1]);
  return 0;
}

std::vector<Setting> settings_for(const std::string& spec, std::int64_t n, bool quick) {
  // Searches are cheap next to the builds; above 500k only the PQ re-rank sweep is shorter.
  const bool large = n >= 500'000;
  std::vector<int> probes =
      quick ? std::vector<int>{1, 4, 16, 64} : std::vector<int>{1, 2, 4, 8, 16, 32, 64, 128};
  std::vector<int> efs =
      quick ? std::vector<int>{16, 64, 256} : std::vector<int>{16, 32, 64, 128, 256};
  std::vector<int> reranks =
      quick || large ? std::vector<int>{0, 100, 200} : std::vector<int>{0, 50, 100, 200};
  const bool pq = spec.find("PQ") != std::string::npos || spec.find("SQ") != std::string::npos;
  if (!pq) reranks = {0};
  const int nlist = parse_count(spec, "IVF");
  std::vector<Setting> out;
  if (nlist > 0) {
    std::vector<int> capped;
    for (int p : probes) capped.push_back(std::min(p, nlist));
    capped.erase(std::unique(capped.begin(), capped.end()), capped.end());
    for (int p : capped) {
      for (int r : reranks) {
        Setting s;
        s.params.nprobe = p;
        s.params.rerank = r;
        s.label = fmt::format("nprobe={}", p) + (pq ? fmt::format(" rerank={}", r) : "");
        out.push_back(s);
      }
    }
  } else if (spec.find("HNSW") != std::string::npos) {
    for (int e : efs) {
      Setting s;
      s.params.ef_search = e;
      s.label = fmt::format("efSearch={}", e);
      out.push_back(s);
    }
  } else {
    for (int r : reranks) {
      Setting s;
      s.params.rerank = r;
      s.label = pq ? fmt::format("rerank={}", r) : "";
      out.push_back(s);
    }
  }
  return out;
}

// Adds every vector: first exactly training_threshold() of them (so that training samples that
// many, not all n), then chunks of kAddChunk.
double build(const Context& c, VectorIndex& idx) {
  const Data& data = c.data;
  const auto t0 = Clock::now();
  std::int64_t at = 0;
  const std::int64_t n = data.n();
  while (at < n) {
    std::int64_t step = kAddChunk;
    if (!idx.trained() && idx.training_threshold() > at) step = idx.training_threshold() - at;
    step = std::min(step, n - at);
    idx.add(&data.base[at * data.dim], &data.ids[at], step);
    at += step;
    if (n >= 200'000)
      c.progress(
          fmt::format("  {}: {} / {} added, {:.1f} s", idx.factory(), at, n, seconds_since(t0)));
  }
  return seconds_since(t0);
}

void measure_setting(const Context& c, const VectorIndex& idx, const Setting& s,
                     const index::VectorSource& source, BenchRow& row) {
  const Data& data = c.data;
  const int nq = data.nq(), k = c.o.k, d = data.dim;
  index::SearchOptions opts;
  opts.exclude = data.exclude.empty() ? nullptr : &data.exclude;
  opts.params = s.params;
  opts.vectors = &source;
  index::SearchPlan plan;
  auto t0 = Clock::now();
  auto batched = to_ids(idx.search(data.queries.data(), nq, k, opts, &plan));
  row.batched_qps = nq / std::max(seconds_since(t0), 1e-9);
  row.recall = recall(batched, c.truth.all, nq);
  row.nprobe = plan.params.nprobe;
  row.ef_search = plan.params.ef_search;
  row.rerank = plan.params.rerank;
  auto single = time_single(nq, c.o.single_budget_s, [&](int q) {
    (void)idx.search(&data.queries[std::size_t(q) * d], 1, k, opts, nullptr);
  });
  row.single_queries = single.first;
  row.single_qps = single.second;

  opts.allow = &c.truth.allow;
  t0 = Clock::now();
  auto filtered = to_ids(idx.search(data.queries.data(), nq, k, opts, &plan));
  row.filtered_batched_qps = nq / std::max(seconds_since(t0), 1e-9);
  row.filtered_recall = recall(filtered, c.truth.filtered, nq);
  row.full_top_k = all_full(filtered, nq, k);
  row.plan = plan.method;
  auto fsingle = time_single(nq, c.o.single_budget_s, [&](int q) {
    (void)idx.search(&data.queries[std::size_t(q) * d], 1, k, opts, nullptr);
  });
  row.filtered_single_qps = fsingle.second;
}

void bench_spec(const Context& c, const std::string& spec) {
  const Data& data = c.data;
  c.progress(fmt::format("{}: building on {} vectors", spec, data.n()));
  VectorIndex idx(data.dim, data.metric, spec);
  BenchRow base;
  base.method = spec;
  base.build_s = build(c, idx);
  if (!idx.trained()) {
    c.result.notes.push_back(
        fmt::format("{} at {} vectors: not trained (needs {}), exact fallback measured", spec,
                    data.n(), idx.training_threshold()));
  }
  base.memory_bytes = idx.memory_bytes();
  base.bytes_per_vector = double(base.memory_bytes) / double(std::max<std::int64_t>(1, data.n()));
  const index::VectorSource source = [&data](const std::int64_t* ids, std::int64_t n, float* out,
                                             bool* found) {
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t r = data.row(ids[i]);
      found[i] = r >= 0 && r < data.n();
      if (found[i]) std::copy_n(&data.base[r * data.dim], data.dim, out + i * data.dim);
    }
  };
  for (const Setting& s : settings_for(spec, data.n(), c.o.quick)) {
    BenchRow row = base;
    row.params = s.label;
    measure_setting(c, idx, s, source, row);
    c.progress(fmt::format("  {} {}: recall {:.3f}, {:.0f} QPS single, filtered recall {:.3f} ({})",
                           spec, s.label, *row.recall, *row.single_qps, *row.filtered_recall,
                           row.plan));
    c.result.rows.push_back(row);
  }
}

void bench_size(const Data& data, const BenchIndexOptions& o, BenchResult& result) {
  const std::int64_t n = data.n();
  if (o.progress) o.progress(fmt::format("{} vectors x {}: exact ground truth", n, data.dim));
  const Truth truth = ground_truth(data, o);
  const std::size_t first = result.rows.size();
  Context c{data, truth, o, result};
  bench_brute_force(c);
  bench_filter_after_exact(c);
  std::vector<std::string> specs = o.specs;
  if (specs.empty()) specs = default_specs(n, data.dim, o.pq_m, o.max_hnsw, o.nlist);
  if (o.specs.empty() && n > o.max_hnsw) {
    result.notes.push_back(fmt::format(
        "HNSW32 skipped at {} vectors (--max-hnsw {}): its build takes many minutes per 100k "
        "vectors on 2 cores (measured: 746 s for 100k x 1280)",
        n, o.max_hnsw));
  }
  for (const auto& spec : specs) bench_spec(c, spec);
  for (std::size_t i = first; i < result.rows.size(); ++i) result.rows[i].size = n;
}

}  // namespace

int default_nlist(std::int64_t n, int wanted) {
  const double target = 4.0 * std::sqrt(double(std::max<std::int64_t>(n, 1)));
  std::int64_t nlist =
      wanted > 0 ? wanted : std::int64_t{1} << static_cast<int>(std::lround(std::log2(target)));
  while (nlist > 1 && nlist * 39 > n) nlist /= 2;
  return static_cast<int>(nlist);
}

std::vector<std::string> default_specs(std::int64_t n, int dim, int pq_m, std::int64_t max_hnsw,
                                       int wanted_nlist) {
  const int nlist = default_nlist(n, wanted_nlist);
  int m = pq_m;
  if (m == 0) {
    m = std::max(1, dim / 8);
    while (dim % m != 0) --m;
  }
  // 8-bit codebooks need 9,984 training points; fewer bits where n is smaller (39 per centroid).
  int bits = 8;
  while (bits > 1 && (std::int64_t{39} << bits) > n) --bits;
  std::vector<std::string> specs{"Flat", fmt::format("IVF{},Flat", nlist)};
  if (n <= max_hnsw) specs.push_back("HNSW32");
  specs.push_back(bits == 8 ? fmt::format("IVF{},PQ{}", nlist, m)
                            : fmt::format("IVF{},PQ{}x{}", nlist, m, bits));
  return specs;
}

void validate(const BenchIndexOptions& o) {
  if (o.sizes.empty()) throw BenchOptionError("--sizes", "give at least one size");
  for (auto n : o.sizes) {
    if (n < 1 || n > 1'000'000) {
      throw BenchOptionError("--sizes", fmt::format("{} is not in 1..1000000", n));
    }
  }
  if (o.dim < 1 || o.dim > 4096)
    throw BenchOptionError("--dim", fmt::format("{} is not in 1..4096", o.dim));
  if (o.queries < 1 || o.queries > 100'000) {
    throw BenchOptionError("--queries", fmt::format("{} is not in 1..100000", o.queries));
  }
  if (o.k < 1 || o.k > 1000)
    throw BenchOptionError("--k", fmt::format("{} is not in 1..1000", o.k));
  // As the global --threads: OpenMP creates every thread up front, and tens of thousands
  // fail to start (libgomp aborts) or exhaust the stack space.
  if (o.threads < 0 || o.threads > 1024)
    throw BenchOptionError("--threads", fmt::format("{} is not in 0..1024", o.threads));
  if (!(o.filter_fraction > 0 && o.filter_fraction <= 1)) {
    throw BenchOptionError("--filter-fraction",
                           fmt::format("{} is not in (0, 1]", o.filter_fraction));
  }
  if (o.pq_m < 0 || (o.pq_m > 0 && o.dim % o.pq_m != 0)) {
    throw BenchOptionError("--pq-m", fmt::format("{} does not divide --dim {}", o.pq_m, o.dim));
  }
  if (o.clusters < 0) throw BenchOptionError("--clusters", "must not be negative");
  if (o.nlist < 0 || o.nlist > (1 << 20)) {
    throw BenchOptionError("--nlist", fmt::format("{} is not in 0..1048576", o.nlist));
  }
  if (!(o.single_budget_s > 0)) throw BenchOptionError("--single-budget", "must be positive");
  for (const auto& spec : o.specs) {
    try {
      // With --from-collection the dimension is the collection's; checked again when known.
      VectorIndex::validate_factory(o.dim, Metric::Cosine, spec);
    } catch (const index::IndexError& e) {
      throw BenchOptionError("--index-spec", e.what());
    }
  }
}

BenchResult run_bench_index(const BenchIndexOptions& o) {
  validate(o);
  if (o.threads > 0) omp_set_num_threads(o.threads);
  BenchResult result;
  result.sizes = o.sizes;
  result.queries = o.queries;
  result.k = o.k;
  result.filter_fraction = o.filter_fraction;
  result.notes.push_back(
      "single QPS: one query per call from one thread, over the queries run in --single-budget "
      "seconds; batched QPS: all queries in one call");
  result.notes.push_back(
      "IVF-PQ rerank: candidates re-scored from full vectors held outside the index (in a "
      "collection: the catalog on disk), not counted in its memory");
  std::optional<Data> all;
  if (!o.from_collection.empty()) {
    all = read_collection(o);
    for (const auto& spec : o.specs) {
      try {
        VectorIndex::validate_factory(all->dim, all->metric, spec);
      } catch (const index::IndexError& e) {
        throw BenchOptionError("--index-spec", e.what());
      }
    }
    result.data = fmt::format("collection {} ({} vectors)", o.from_collection.string(), all->n());
  }
  result.dim = all ? all->dim : o.dim;
  if (!all) {
    result.data = fmt::format(
        "generated: Gaussian mixture on the unit sphere, {} centres, rank-{} clusters, seed {}",
        o.clusters > 0 ? std::to_string(o.clusters) : "sqrt(n)", kClusterRank, o.seed);
  }
  for (std::int64_t n : o.sizes) {
    if (o.progress) o.progress(fmt::format("size {}: preparing data", n));
    const Data data =
        all ? take_collection_rows(*all, n, o.queries, o.seed) : generate(n, o.queries, o);
    if (all && data.n() - static_cast<std::int64_t>(data.exclude.size()) < o.k) {
      throw BenchOptionError(
          "--from-collection",
          fmt::format("{} holds {} vectors: too few for {} queries (excluded from the results) "
                      "and k = {}",
                      o.from_collection.string(), all->n(), o.queries, o.k));
    }
    if (all && data.n() < n) {
      result.notes.push_back(fmt::format("size {}: the collection holds {} vectors", n, data.n()));
    }
    bench_size(data, o, result);
  }
  return result;
}

namespace {

std::string opt(const std::optional<double>& v, const char* f) {
  return v ? fmt::format(fmt::runtime(f), *v) : "-";
}

}  // namespace

std::string format_table(const BenchResult& r) {
  std::string out =
      fmt::format("bench-index: d = {}, {} queries, k = {}, filter keeps {:g}% of ids; {}\n", r.dim,
                  r.queries, r.k, 100 * r.filter_fraction, r.data);
  out += fmt::format(
      "{:>8}  {:<24} {:<20} {:>8} {:>10} {:>8} {:>7} {:>9} {:>9} {:>8} {:>9} {:>5} {}\n", "size",
      "method", "params", "build s", "memory MB", "B/vec", "recall", "1-q QPS", "batch QPS",
      "f.recall", "f.QPS", "full", "plan");
  for (const auto& row : r.rows) {
    out += fmt::format(
        "{:>8}  {:<24} {:<20} {:>8.2f} {:>10.1f} {:>8.0f} {:>7} {:>9} {:>9} {:>8} {:>9} {:>5} {}\n",
        row.size, row.method, row.params, row.build_s, row.memory_bytes / 1e6, row.bytes_per_vector,
        opt(row.recall, "{:.3f}"), opt(row.single_qps, "{:.0f}"), opt(row.batched_qps, "{:.0f}"),
        opt(row.filtered_recall, "{:.3f}"), opt(row.filtered_single_qps, "{:.0f}"),
        row.full_top_k ? (*row.full_top_k ? "yes" : "no") : "-", row.plan);
  }
  for (const auto& note : r.notes) out += "note: " + note + "\n";
  return out;
}

std::string to_json(const BenchResult& r) {
  using nlohmann::json;
  auto j_opt = [](const auto& v) { return v ? json(*v) : json(nullptr); };
  json rows = json::array();
  for (const auto& row : r.rows) {
    rows.push_back({{"size", row.size},
                    {"method", row.method},
                    {"params", row.params},
                    {"nprobe", row.nprobe},
                    {"ef_search", row.ef_search},
                    {"rerank", row.rerank},
                    {"build_s", row.build_s},
                    {"memory_bytes", row.memory_bytes},
                    {"bytes_per_vector", row.bytes_per_vector},
                    {"recall", j_opt(row.recall)},
                    {"single_qps", j_opt(row.single_qps)},
                    {"single_queries", row.single_queries},
                    {"batched_qps", j_opt(row.batched_qps)},
                    {"filtered_recall", j_opt(row.filtered_recall)},
                    {"filtered_single_qps", j_opt(row.filtered_single_qps)},
                    {"filtered_batched_qps", j_opt(row.filtered_batched_qps)},
                    {"full_top_k", j_opt(row.full_top_k)},
                    {"plan", row.plan}});
  }
  json j = {{"type", "bench_index"}, {"dim", r.dim},     {"sizes", r.sizes},
            {"queries", r.queries},  {"k", r.k},         {"filter_fraction", r.filter_fraction},
            {"data", r.data},        {"notes", r.notes}, {"rows", rows}};
  return j.dump();  // one line, as every --json record (JSON Lines)
}

}  // namespace lookalike::eval
