// The engine's concurrency and batching claims (docs/engine.md), measured side by side in one run:
//
//   commit      committing one 32-image batch (Collection::apply, embeddings given) into Flat
//               cosine collections of 10k, 100k and 1M vectors: new images, updates of existing
//               paths and removes (tombstones). Target: median(largest) / median(smallest) <= 1.5
//               for new images (O(batch) work whatever N).
//   concurrent  searches by id per second (Collection::embedding + Collection::search, k = 10,
//               the id excluded) with 1, 4 and 16 threads on a 100k collection, alone and while a
//               writer commits 32 new images and 8 removes every second. Target: QPS with the
//               writer / QPS alone >= 0.8 at every thread count; max and p99 latency reported.
//   embed       16 single-image embeds through the engine's EmbedBatcher: one after another, and
//               from 16 threads at the same moment. Target: concurrent / sequential <= 0.6.
//
// usage: bench_engine [--only commit,concurrent,embed] [--dim 128] [--sizes 10000,100000,1000000]
//                     [--search-size 100000] [--search-threads 1,4,16] [--seconds 5]
//                     [--model PATH] [--photos DIR] [--threads N] [--work DIR] [--keep]
//                     [--seed N] [--json] [--check]
// Prints tables and ratios (or, with --json, one JSON object on stdout; progress goes to stderr).
// Exits 1 when a target is missed only with --check; 2 on a usage error or a failure.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <latch>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "engine/embed_batcher.h"
#include "engine/engine.h"
#include "image/decode.h"
#include "image/preprocess.h"
#include "model/embedding_model.h"
#include "model/model_card.h"
#include "store/collection.h"

#ifndef LOOKALIKE_BENCH_SOURCE_DIR
#define LOOKALIKE_BENCH_SOURCE_DIR "."
#endif

using namespace lookalike;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

namespace {

constexpr double kCommitRatioTarget = 1.5;      // median(largest) / median(smallest), at most
constexpr double kConcurrentRatioTarget = 0.8;  // QPS with writer / alone, at least
constexpr double kEmbedRatioTarget = 0.6;       // concurrent / sequential total, at most
constexpr int kBatch = 32;                      // images per timed commit
constexpr int kCommits = 20;                    // timed commits of each kind per size
constexpr int kBuildChunk = 10'000;             // puts per apply while building
constexpr int kWriterRemoves = 8;               // ids the concurrent writer removes per commit
constexpr int kEmbedImages = 16;
constexpr int kEmbedReps = 5;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}
double s_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
  bool commit = true, concurrent = true, embed = true;
  int dim = 128;
  std::vector<std::int64_t> sizes = {10'000, 100'000, 1'000'000};
  std::int64_t search_size = 100'000;
  std::vector<int> search_threads = {1, 4, 16};
  double seconds = 5;
  std::string model;               // empty: the default places
  std::string precision = "auto";  // model::ModelOptions::precision (docs/precision.md)
  std::string photos;              // empty: <shared>/datasets/clothing-small/test
  int threads = 0;                 // LibTorch / OpenMP threads; 0 = all cores
  fs::path work;
  bool keep = false;
  std::uint64_t seed = 42;
  bool as_json = false;
  bool check = false;
};

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "bench_engine: " << why
            << "\nusage: bench_engine [--only commit,concurrent,embed] [--dim 128]"
               " [--sizes 10000,100000,1000000]\n"
               "                    [--search-size 100000] [--search-threads 1,4,16] "
               "[--seconds 5] [--model PATH] [--precision auto|fp32|bf16]\n"
               "                    [--photos DIR] [--threads N] [--work DIR] [--keep] "
               "[--seed N] [--json] [--check]\n";
  std::exit(2);
}

template <class T>
std::vector<T> parse_list(const std::string& flag, const std::string& text) {
  std::vector<T> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    try {
      std::size_t used = 0;
      long long v = std::stoll(item, &used);
      if (used != item.size() || v < 1) throw std::invalid_argument(item);
      out.push_back(static_cast<T>(v));
    } catch (const std::exception&) {
      usage(flag + ": '" + item + "' is not a positive integer");
    }
  }
  if (out.empty()) usage(flag + ": empty list");
  return out;
}

fs::path exe_dir() {
  std::error_code ec;
  auto self = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::current_path() : self.parent_path();
}

// The build folder: the binary lives in <build>/bench/.
fs::path build_dir() { return exe_dir().parent_path(); }

Options parse(int argc, char** argv) {
  Options o;
  o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  o.work = build_dir() / "bench-work";
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(flag + " needs a value");
      return argv[++i];
    };
    auto integer = [&](long long lo) {
      auto text = value();
      try {
        std::size_t used = 0;
        long long v = std::stoll(text, &used);
        if (used == text.size() && v >= lo) return v;
      } catch (const std::exception&) {
      }
      usage(flag + ": '" + text + "' is not an integer >= " + std::to_string(lo));
    };
    if (flag == "--only") {
      o.commit = o.concurrent = o.embed = false;
      std::stringstream in(value());
      for (std::string part; std::getline(in, part, ',');) {
        if (part == "commit") {
          o.commit = true;
        } else if (part == "concurrent") {
          o.concurrent = true;
        } else if (part == "embed") {
          o.embed = true;
        } else {
          usage("--only: unknown part '" + part + "' (commit, concurrent or embed)");
        }
      }
    } else if (flag == "--dim") {
      o.dim = static_cast<int>(integer(1));
    } else if (flag == "--sizes") {
      o.sizes = parse_list<std::int64_t>(flag, value());
      std::sort(o.sizes.begin(), o.sizes.end());
    } else if (flag == "--search-size") {
      o.search_size = integer(100);
    } else if (flag == "--search-threads") {
      o.search_threads = parse_list<int>(flag, value());
    } else if (flag == "--seconds") {
      auto text = value();
      try {
        o.seconds = std::stod(text);
      } catch (const std::exception&) {
        o.seconds = 0;
      }
      if (!(o.seconds > 0)) usage("--seconds: '" + text + "' is not a positive number");
    } else if (flag == "--model") {
      o.model = value();
    } else if (flag == "--precision") {
      o.precision = value();
    } else if (flag == "--photos") {
      o.photos = value();
    } else if (flag == "--threads") {
      o.threads = static_cast<int>(integer(1));
    } else if (flag == "--work") {
      o.work = value();
    } else if (flag == "--keep") {
      o.keep = true;
    } else if (flag == "--seed") {
      o.seed = static_cast<std::uint64_t>(integer(0));
    } else if (flag == "--json") {
      o.as_json = true;
    } else if (flag == "--check") {
      o.check = true;
    } else if (flag == "--help" || flag == "-h") {
      usage("help");
    } else {
      usage("unknown argument '" + flag + "'");
    }
  }
  return o;
}

// ---------------------------------------------------------------------------------------------
// Statistics

struct Summary {
  std::size_t n = 0;
  double median = 0, p90 = 0, p99 = 0, max = 0, mean = 0;
};

double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return std::numeric_limits<double>::quiet_NaN();
  double rank = p * static_cast<double>(sorted.size() - 1);
  auto lo = static_cast<std::size_t>(std::floor(rank));
  auto hi = static_cast<std::size_t>(std::ceil(rank));
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - static_cast<double>(lo));
}

Summary summarise(std::vector<double> v) {
  Summary s;
  s.n = v.size();
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.median = percentile(v, 0.5);
  s.p90 = percentile(v, 0.9);
  s.p99 = percentile(v, 0.99);
  s.max = v.back();
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / static_cast<double>(v.size());
  return s;
}

json to_json(const Summary& s) {
  return {{"n", s.n},        {"median_ms", s.median}, {"p90_ms", s.p90},
          {"p99_ms", s.p99}, {"max_ms", s.max},       {"mean_ms", s.mean}};
}

const char* verdict(bool ok) { return ok ? "PASS" : "MISS"; }

// ---------------------------------------------------------------------------------------------
// Synthetic collections: random seeded unit vectors, distinct paths and content hashes.

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Image number i: paths sorted as a scan of nested folders would give them; content hashes
// look random (they are, for real files), version > 0 for an updated file's new bytes.
std::string image_path(std::int64_t i) {
  return fmt::format("/bench/photos/{:04d}/{:08d}.jpg", i / 1000, i);
}
std::string image_hash(std::uint64_t seed, std::int64_t i, int version) {
  std::uint64_t a =
      splitmix64(seed ^ (static_cast<std::uint64_t>(i) << 8) ^ static_cast<std::uint64_t>(version));
  return fmt::format("{:016x}{:016x}", a, splitmix64(a));
}

class Generator {
 public:
  Generator(int dim, std::uint64_t seed) : dim_(dim), seed_(seed), rng_(seed) {}

  std::vector<float> unit_vector() {
    std::vector<float> v(static_cast<std::size_t>(dim_));
    double sq = 0;
    do {
      sq = 0;
      for (auto& x : v) {
        x = normal_(rng_);
        sq += double{x} * x;
      }
    } while (sq < 1e-12);
    const auto inv = static_cast<float>(1.0 / std::sqrt(sq));
    for (auto& x : v) x *= inv;
    return v;
  }

  store::Put put(std::int64_t i, int version = 0) {
    store::Put p;
    p.record.path = image_path(i);
    p.record.content_hash = image_hash(seed_, i, version);
    p.record.bytes = 40'000 + static_cast<std::int64_t>(splitmix64(i) % 60'000);
    p.record.width = 400;
    p.record.height = 533;
    p.record.mtime_ns = 1'760'000'000'000'000'000 + i * 1000 + version;
    p.embedding = unit_vector();
    return p;
  }

  std::mt19937_64& rng() { return rng_; }
  int dim() const { return dim_; }

 private:
  int dim_;
  std::uint64_t seed_;
  std::mt19937_64 rng_;
  std::normal_distribution<float> normal_{0.0f, 1.0f};
};

store::CatalogConfig bench_config(int dim) {
  store::CatalogConfig c;
  c.model_id = "bench-random@0000000000000000";
  c.model_name = "bench-random";
  c.dim = dim;
  c.metric = "cosine";
  c.factory = "Flat";
  return c;
}

// A collection and which image numbers it holds.
struct Bench {
  std::unique_ptr<store::Collection> collection;
  std::vector<std::int64_t> id_of;  // by image number; -1 once removed
  std::vector<std::int64_t> live;   // image numbers still stored (order arbitrary)
  double build_s = 0;               // everything, including generating the vectors
  double apply_s = 0;               // Collection::apply calls only
};

Bench build_collection(const fs::path& dir, std::int64_t n, Generator& gen) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  Bench b;
  const auto start = Clock::now();
  b.collection = store::Collection::create_or_open(dir, bench_config(gen.dim()));
  b.id_of.reserve(static_cast<std::size_t>(n) + 4096);
  std::vector<store::Put> puts;
  puts.reserve(kBuildChunk);
  for (std::int64_t first = 0; first < n; first += kBuildChunk) {
    puts.clear();
    const std::int64_t last = std::min<std::int64_t>(n, first + kBuildChunk);
    for (std::int64_t i = first; i < last; ++i) puts.push_back(gen.put(i));
    const auto t = Clock::now();
    auto ids = b.collection->apply(puts, {});
    b.apply_s += s_since(t);
    b.id_of.insert(b.id_of.end(), ids.begin(), ids.end());
    if (n >= 200'000 && (last % 200'000 == 0 || last == n)) {
      std::cerr << fmt::format("  ... {} / {} vectors, {:.1f} s\n", last, n, s_since(start));
    }
  }
  b.live.resize(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) b.live[static_cast<std::size_t>(i)] = i;
  b.build_s = s_since(start);
  return b;
}

// `count` distinct random positions in b.live.
std::vector<std::size_t> pick_live(Bench& b, std::size_t count, std::mt19937_64& rng) {
  std::unordered_set<std::size_t> chosen;
  std::uniform_int_distribution<std::size_t> any(0, b.live.size() - 1);
  while (chosen.size() < count) chosen.insert(any(rng));
  std::vector<std::size_t> out(chosen.begin(), chosen.end());
  std::sort(out.begin(), out.end());
  return out;
}

// ---------------------------------------------------------------------------------------------
// Part 1: commit cost against collection size

struct CommitRow {
  std::int64_t size = 0;
  double build_s = 0, apply_s = 0;
  Summary added, updated, removed;
  std::int64_t index_live = 0, expected_live = 0, catalog_count = 0;
};

// One collection of the commit part, built, then committed to round-robin with the others.
struct CommitTarget {
  std::int64_t size = 0;
  fs::path dir;
  std::unique_ptr<Generator> gen;
  Bench bench;
  std::int64_t next = 0;  // the next new image number
  std::vector<double> added, updated, removed;
};

void commit_new(CommitTarget& t) {  // 32 new images
  std::vector<store::Put> puts;
  for (int j = 0; j < kBatch; ++j) puts.push_back(t.gen->put(t.next + j));
  const auto t0 = Clock::now();
  auto ids = t.bench.collection->apply(puts, {});
  t.added.push_back(ms_between(t0, Clock::now()));
  for (auto id : ids) {
    t.bench.id_of.push_back(id);
    t.bench.live.push_back(t.next++);
  }
}

void commit_update(CommitTarget& t, int version) {  // 32 existing paths: new bytes, new vector
  std::vector<store::Put> puts;
  for (auto pos : pick_live(t.bench, kBatch, t.gen->rng())) {
    puts.push_back(t.gen->put(t.bench.live[pos], version));
  }
  const auto t0 = Clock::now();
  t.bench.collection->apply(puts, {});
  t.updated.push_back(ms_between(t0, Clock::now()));
}

void commit_remove(CommitTarget& t) {  // 32 ids
  auto& b = t.bench;
  auto picks = pick_live(b, kBatch, t.gen->rng());
  std::vector<std::int64_t> ids;
  for (auto pos : picks) ids.push_back(b.id_of[static_cast<std::size_t>(b.live[pos])]);
  const auto t0 = Clock::now();
  b.collection->apply({}, ids);
  t.removed.push_back(ms_between(t0, Clock::now()));
  for (auto it = picks.rbegin(); it != picks.rend(); ++it) {  // highest position first
    b.id_of[static_cast<std::size_t>(b.live[*it])] = -1;
    b.live[*it] = b.live.back();
    b.live.pop_back();
  }
}

// Builds every size first, then times the commits round-robin over the sizes (new images, then
// updates, then removes), so that a change in the machine's load hits every size alike.
std::vector<CommitRow> commit_rows(const Options& o) {
  std::vector<CommitTarget> targets(o.sizes.size());
  for (std::size_t s = 0; s < o.sizes.size(); ++s) {
    auto& t = targets[s];
    t.size = o.sizes[s];
    t.next = t.size;
    t.gen = std::make_unique<Generator>(o.dim, o.seed + static_cast<std::uint64_t>(t.size));
    t.dir = o.work / fmt::format("commit-{}", t.size);
    std::cerr << fmt::format("commit: building a {}-vector collection (dim {}, Flat, cosine)\n",
                             t.size, o.dim);
    t.bench = build_collection(t.dir, t.size, *t.gen);
    std::cerr << fmt::format("  built in {:.1f} s ({:.1f} s in apply)\n", t.bench.build_s,
                             t.bench.apply_s);
  }
  std::cerr << fmt::format("commit: {} x {} commits of each kind, round-robin over the sizes\n",
                           kCommits, o.sizes.size());
  for (int r = 0; r < kCommits; ++r) {
    for (auto& t : targets) commit_new(t);
  }
  for (int r = 0; r < kCommits; ++r) {
    for (auto& t : targets) commit_update(t, r + 1);
  }
  for (int r = 0; r < kCommits; ++r) {
    for (auto& t : targets) commit_remove(t);
  }
  std::vector<CommitRow> rows;
  for (auto& t : targets) {
    CommitRow row;
    row.size = t.size;
    row.build_s = t.bench.build_s;
    row.apply_s = t.bench.apply_s;
    row.added = summarise(t.added);
    row.updated = summarise(t.updated);
    row.removed = summarise(t.removed);
    row.index_live = t.bench.collection->index_size();
    row.expected_live = static_cast<std::int64_t>(t.bench.live.size());
    row.catalog_count = t.bench.collection->count();
    if (row.index_live != row.expected_live || row.catalog_count != row.expected_live) {
      std::cerr << fmt::format(
          "  WARNING: {}: the index holds {} live vectors and the catalog {} images; expected "
          "{}\n",
          t.size, row.index_live, row.catalog_count, row.expected_live);
    }
    std::cerr << fmt::format(
        "  {}: commit medians: new {:.2f} ms, update {:.2f} ms, remove {:.2f} ms\n", t.size,
        row.added.median, row.updated.median, row.removed.median);
    t.bench.collection.reset();
    if (!o.keep) {
      std::error_code ec;
      fs::remove_all(t.dir, ec);
    }
    rows.push_back(row);
  }
  return rows;
}

json run_commit(const Options& o, bool& ok) {
  const auto rows = commit_rows(o);
  const auto& small = rows.front();
  const auto& large = rows.back();
  const double r_add = large.added.median / small.added.median;
  const double r_upd = large.updated.median / small.updated.median;
  const double r_rem = large.removed.median / small.removed.median;
  const bool pass = rows.size() < 2 || r_add <= kCommitRatioTarget;
  ok = ok && pass;

  json j = {{"dim", o.dim},
            {"factory", "Flat"},
            {"metric", "cosine"},
            {"batch", kBatch},
            {"commits_per_kind", kCommits},
            {"build_chunk", kBuildChunk}};
  for (const auto& r : rows) {
    j["sizes"].push_back({{"size", r.size},
                          {"build_s", r.build_s},
                          {"build_apply_s", r.apply_s},
                          {"new", to_json(r.added)},
                          {"update", to_json(r.updated)},
                          {"remove", to_json(r.removed)},
                          {"index_live", r.index_live},
                          {"catalog_count", r.catalog_count},
                          {"expected_live", r.expected_live}});
  }
  j["ratio_of"] = fmt::format("median({}) / median({})", large.size, small.size);
  j["ratio_new"] = r_add;
  j["ratio_update"] = r_upd;
  j["ratio_remove"] = r_rem;
  j["target_ratio_new"] = kCommitRatioTarget;
  j["pass"] = pass;

  if (!o.as_json) {
    fmt::print("\n== commit: one {}-image batch (Collection::apply), dim {}, Flat, cosine ==\n",
               kBatch, o.dim);
    fmt::print("{:>10} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>10}\n", "vectors",
               "build s", "new med", "new p90", "upd med", "upd p90", "rm med", "rm p90",
               "index ok");
    for (const auto& r : rows) {
      bool idx_ok = r.index_live == r.expected_live && r.catalog_count == r.expected_live;
      fmt::print(
          "{:>10} {:>9.1f} | {:>9.2f} {:>9.2f} | {:>9.2f} {:>9.2f} | {:>9.2f} {:>9.2f} | {:>10}\n",
          r.size, r.build_s, r.added.median, r.added.p90, r.updated.median, r.updated.p90,
          r.removed.median, r.removed.p90, idx_ok ? "yes" : "NO");
    }
    fmt::print(
        "(ms per {}-image commit, {} commits of each kind, round-robin over the sizes; "
        "build: {} puts per apply)\n",
        kBatch, kCommits, kBuildChunk);
    if (rows.size() >= 2) {
      fmt::print("new images: median({}) / median({}) = {:.2f}  (target <= {}: {})\n", large.size,
                 small.size, r_add, kCommitRatioTarget, verdict(pass));
      fmt::print("updates:    median({}) / median({}) = {:.2f}\n", large.size, small.size, r_upd);
      fmt::print("removes:    median({}) / median({}) = {:.2f}\n", large.size, small.size, r_rem);
    }
  }
  return j;
}

// ---------------------------------------------------------------------------------------------
// Part 2: searches by id with and without a writer

struct SearchRun {
  int threads = 0;
  bool writer = false;
  double elapsed_s = 0;
  std::int64_t searches = 0;
  std::int64_t missing = 0;  // picked ids the writer had removed (skipped)
  std::int64_t short_results = 0;
  double qps = 0;
  Summary latency;      // embedding read + search, per search by id
  Summary search_only;  // Collection::search alone
  Summary commits;      // the writer's apply calls
};

SearchRun search_run(Bench& b, const std::vector<std::int64_t>& ids, int threads, bool writer,
                     double seconds, Generator& gen, std::int64_t& next_image,
                     std::vector<std::int64_t>& removable, std::uint64_t seed) {
  auto& c = *b.collection;
  SearchRun run;
  run.threads = threads;
  run.writer = writer;
  std::latch ready(threads + (writer ? 1 : 0));
  std::latch go(1);
  Clock::time_point start, deadline;
  std::vector<std::vector<double>> lat(threads), only(threads);
  std::vector<std::int64_t> done(threads, 0), missing(threads, 0), shorts(threads, 0);
  std::vector<Clock::time_point> ended(threads);
  std::vector<double> commit_ms;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::mt19937_64 rng(seed + static_cast<std::uint64_t>(t) * 7919);
      std::uniform_int_distribution<std::size_t> any(0, ids.size() - 1);
      lat[t].reserve(1 << 16);
      only[t].reserve(1 << 16);
      ready.count_down();
      go.wait();
      for (;;) {
        const auto t0 = Clock::now();
        if (t0 >= deadline) break;
        const auto id = ids[any(rng)];
        auto v = c.embedding(id);
        if (!v) {
          ++missing[t];
          continue;
        }
        const auto t1 = Clock::now();
        auto res = c.search(v->data(), 1, 10, {id});
        const auto t2 = Clock::now();
        if (res.at(0).size() != 10) ++shorts[t];
        lat[t].push_back(ms_between(t0, t2));
        only[t].push_back(ms_between(t1, t2));
        ++done[t];
      }
      ended[t] = Clock::now();
    });
  }
  if (writer) {
    pool.emplace_back([&] {
      ready.count_down();
      go.wait();
      for (int k = 0;; ++k) {
        const auto tick = start + std::chrono::milliseconds(500 + 1000 * k);
        if (tick >= deadline) break;
        std::this_thread::sleep_until(tick);
        std::vector<store::Put> puts;
        for (int j = 0; j < kBatch; ++j) puts.push_back(gen.put(next_image + j));
        std::vector<std::int64_t> removes;
        for (int j = 0; j < kWriterRemoves && !removable.empty(); ++j) {
          removes.push_back(removable.back());
          removable.pop_back();
        }
        const auto t0 = Clock::now();
        c.apply(puts, removes);
        commit_ms.push_back(ms_between(t0, Clock::now()));
        next_image += kBatch;
      }
    });
  }
  ready.wait();
  start = Clock::now();
  deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  go.count_down();
  for (auto& th : pool) th.join();

  auto last = start;
  std::vector<double> all, all_only;
  for (int t = 0; t < threads; ++t) {
    last = std::max(last, ended[t]);
    run.searches += done[t];
    run.missing += missing[t];
    run.short_results += shorts[t];
    all.insert(all.end(), lat[t].begin(), lat[t].end());
    all_only.insert(all_only.end(), only[t].begin(), only[t].end());
  }
  run.elapsed_s = std::chrono::duration<double>(last - start).count();
  run.qps = static_cast<double>(run.searches) / run.elapsed_s;
  run.latency = summarise(std::move(all));
  run.search_only = summarise(std::move(all_only));
  run.commits = summarise(std::move(commit_ms));
  return run;
}

json run_concurrent(const Options& o, bool& ok) {
  Generator gen(o.dim, o.seed ^ 0xC0FFEEull);
  std::cerr << fmt::format("concurrent: building a {}-vector collection (dim {}, Flat, cosine)\n",
                           o.search_size, o.dim);
  const auto dir = o.work / "concurrent";
  auto b = build_collection(dir, o.search_size, gen);
  std::cerr << fmt::format("  built in {:.1f} s\n", b.build_s);
  const std::vector<std::int64_t> ids = b.id_of;  // the searchers' picks
  std::vector<std::int64_t> removable = ids;      // the writer's removes, in random order
  std::shuffle(removable.begin(), removable.end(), gen.rng());
  std::int64_t next_image = o.search_size;

  // Warm-up: the read-only connection pool, the page cache, FAISS's first calls.
  const int most = *std::max_element(o.search_threads.begin(), o.search_threads.end());
  search_run(b, ids, most, false, std::min(1.0, o.seconds), gen, next_image, removable, o.seed);

  struct Pair {
    SearchRun alone, with;
  };
  std::vector<Pair> pairs;
  for (int t : o.search_threads) {
    std::cerr << fmt::format("  {} search thread(s), {:.0f} s alone, then {:.0f} s with a writer\n",
                             t, o.seconds, o.seconds);
    Pair p;
    p.alone = search_run(b, ids, t, false, o.seconds, gen, next_image, removable, o.seed + t);
    p.with = search_run(b, ids, t, true, o.seconds, gen, next_image, removable, o.seed + 100 + t);
    pairs.push_back(p);
  }
  const auto index_live = b.collection->index_size();
  b.collection.reset();
  if (!o.keep) {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }

  bool pass = true;
  json j = {{"size", o.search_size},
            {"dim", o.dim},
            {"factory", "Flat"},
            {"k", 10},
            {"seconds", o.seconds},
            {"writer", fmt::format("{} new images + {} removes per commit, one commit a second",
                                   kBatch, kWriterRemoves)},
            {"index_live_at_end", index_live},
            {"target_ratio", kConcurrentRatioTarget}};
  auto run_json = [](const SearchRun& r) {
    return json{{"qps", r.qps},
                {"searches", r.searches},
                {"elapsed_s", r.elapsed_s},
                {"missing_ids_skipped", r.missing},
                {"short_results", r.short_results},
                {"latency", to_json(r.latency)},
                {"search_only", to_json(r.search_only)},
                {"writer_commits", to_json(r.commits)}};
  };
  for (const auto& p : pairs) {
    const double ratio = p.with.qps / p.alone.qps;
    const bool row_pass = ratio >= kConcurrentRatioTarget;
    pass = pass && row_pass;
    j["threads"].push_back({{"threads", p.alone.threads},
                            {"alone", run_json(p.alone)},
                            {"with_writer", run_json(p.with)},
                            {"ratio", ratio},
                            {"pass", row_pass}});
  }
  j["pass"] = pass;
  ok = ok && pass;

  if (!o.as_json) {
    fmt::print(
        "\n== concurrent: searches by id (embedding + search, k = 10), {} vectors, dim {}, "
        "Flat, {:.0f} s each ==\n",
        o.search_size, o.dim, o.seconds);
    fmt::print("{:>7} | {:>9} {:>9} {:>6} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>6}\n",
               "threads", "QPS alone", "QPS+wr", "ratio", "p50", "p99", "max", "p50+wr", "p99+wr",
               "max+wr", "target");
    for (const auto& p : pairs) {
      const double ratio = p.with.qps / p.alone.qps;
      fmt::print(
          "{:>7} | {:>9.0f} {:>9.0f} {:>6.2f} | {:>8.2f} {:>8.2f} {:>8.2f} | {:>8.2f} {:>8.2f} "
          "{:>8.2f} | {:>6}\n",
          p.alone.threads, p.alone.qps, p.with.qps, ratio, p.alone.latency.median,
          p.alone.latency.p99, p.alone.latency.max, p.with.latency.median, p.with.latency.p99,
          p.with.latency.max, verdict(ratio >= kConcurrentRatioTarget));
    }
    fmt::print(
        "(latency in ms per search by id; +wr: while a writer commits {} new images and "
        "{} removes every second)\n",
        kBatch, kWriterRemoves);
    fmt::print("Collection::search alone, ms (p99 / max):\n");
    for (const auto& p : pairs) {
      fmt::print(
          "  {:>2} threads: alone {:.2f} / {:.2f}, with writer {:.2f} / {:.2f}; writer "
          "commits: {} x, median {:.1f} ms, max {:.1f} ms\n",
          p.alone.threads, p.alone.search_only.p99, p.alone.search_only.max, p.with.search_only.p99,
          p.with.search_only.max, p.with.commits.n, p.with.commits.median, p.with.commits.max);
    }
    fmt::print("QPS with writer / alone >= {} at every thread count: {}\n", kConcurrentRatioTarget,
               verdict(pass));
  }
  return j;
}

// ---------------------------------------------------------------------------------------------
// Part 3: dynamic batching of concurrent single-image embeds

std::optional<fs::path> find_model(const Options& o, std::vector<std::string>& tried) {
  std::error_code ec;
  if (!o.model.empty()) {
    tried.push_back(o.model);
    if (fs::is_regular_file(o.model, ec)) return fs::path(o.model);
    return std::nullopt;
  }
  if (const char* dirs = std::getenv("LOOKALIKE_MODELS")) {
    std::stringstream in(dirs);
    for (std::string d; std::getline(in, d, ':');) {
      if (d.empty()) continue;
      auto p = fs::path(d) / "mobilenet_v2.pt";
      tried.push_back(p.string());
      if (fs::is_regular_file(p, ec)) return p;
    }
  }
  auto p = build_dir() / "fixtures" / "models" / "mobilenet_v2.pt";
  tried.push_back(p.string());
  if (fs::is_regular_file(p, ec)) return p;
  return std::nullopt;
}

fs::path photos_dir(const Options& o) {
  if (!o.photos.empty()) return o.photos;
  fs::path shared = fs::path(LOOKALIKE_BENCH_SOURCE_DIR) / ".." / "shared";
  if (const char* s = std::getenv("LOOKALIKE_SHARED_DIR")) shared = s;
  return (shared / "datasets" / "clothing-small" / "test").lexically_normal();
}

// kEmbedImages photos spread over the sorted list (all categories, not the first one only).
std::vector<fs::path> pick_photos(const fs::path& dir) {
  std::vector<fs::path> all;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    auto ext = it->path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
    if (it->is_regular_file(ec) && (ext == ".jpg" || ext == ".jpeg")) all.push_back(it->path());
  }
  std::sort(all.begin(), all.end());
  std::vector<fs::path> out;
  if (all.size() < kEmbedImages) return out;
  for (int i = 0; i < kEmbedImages; ++i) out.push_back(all[all.size() * i / kEmbedImages]);
  return out;
}

json skip_embed(const Options& o, const std::string& why) {
  if (!o.as_json) fmt::print("\n== embed: skipped: {} ==\n", why);
  std::cerr << "embed: skipped: " << why << "\n";
  return {{"skipped", why}};
}

json run_embed(const Options& o, bool& ok) {
  std::vector<std::string> tried;
  auto model_path = find_model(o, tried);
  if (!model_path) {
    std::string places;
    for (const auto& t : tried) places += (places.empty() ? "" : ", ") + t;
    return skip_embed(o, fmt::format("no model at {} (export one with /usr/bin/python3 "
                                     "tools/export_model.py mobilenet_v2 --weights "
                                     "../shared/models/mobilenet_v2/"
                                     "mobilenet_v2_imagenet_float.pth --out <build>/fixtures/"
                                     "models, or pass --model PATH)",
                                     places));
  }
  const auto dir = photos_dir(o);
  auto photos = pick_photos(dir);
  if (photos.empty()) {
    return skip_embed(o, fmt::format("fewer than {} JPEG photos under {} (pass --photos DIR)",
                                     kEmbedImages, dir.string()));
  }

  std::cerr << fmt::format("embed: loading {} ({} threads)\n", model_path->string(), o.threads);
  engine::EngineOptions eo;
  eo.collection = o.work / "embed-no-collection";  // ModelOnly: nothing is created there
  eo.model = model_path->string();
  eo.threads = o.threads;
  eo.precision = o.precision;
  auto eng = engine::Engine::open(eo, engine::Access::ModelOnly);
  auto& batcher = eng->batcher();
  auto& m = eng->model();
  const auto spec = m.preprocess_spec();
  const std::size_t per_image = 3ull * spec.crop * spec.crop;
  const auto dim = static_cast<std::size_t>(m.dim());

  image::DecodeOptions decode;  // as the engine decodes a query image
  decode.min_shorter_side = m.card().resize_shorter > 0 ? m.card().resize_shorter : spec.crop;
  decode.rows_for = &spec;
  std::vector<std::vector<float>> inputs;
  for (const auto& p : photos) {
    auto img = image::decode_file(p, decode);
    std::vector<float> in(per_image);
    image::preprocess(img.rgb, img.source_width, img.source_height, spec, in.data());
    inputs.push_back(std::move(in));
  }

  std::vector<std::vector<float>> reference(kEmbedImages);
  auto sequential = [&](bool keep) {
    const auto t0 = Clock::now();
    for (int i = 0; i < kEmbedImages; ++i) {
      auto out = batcher.embed(inputs[i].data(), 1);
      if (keep) reference[i] = std::move(out);
    }
    return ms_between(t0, Clock::now());
  };
  // The floor for (b): all 16 images as one request, so one forward pass and no waiting. When
  // it costs about as much as (a), the model gains nothing from batching on this machine and
  // no batcher can meet the target.
  std::vector<float> joined;
  for (const auto& in : inputs) joined.insert(joined.end(), in.begin(), in.end());
  auto one_pass = [&] {
    const auto t0 = Clock::now();
    batcher.embed(joined.data(), kEmbedImages);
    return ms_between(t0, Clock::now());
  };
  double worst_cosine = 1.0;
  auto concurrent = [&](std::int64_t& passes) {
    std::latch armed(kEmbedImages), go(1);
    std::vector<Clock::time_point> ended(kEmbedImages);
    std::vector<std::vector<float>> out(kEmbedImages);
    std::vector<std::thread> pool;
    for (int i = 0; i < kEmbedImages; ++i) {
      pool.emplace_back([&, i] {
        // As the engine's uploads and queries do before decoding (EmbedBatcher::expect).
        auto announced = batcher.expect();
        armed.count_down();
        go.wait();
        out[i] = batcher.embed(inputs[i].data(), 1, announced);
        ended[i] = Clock::now();
      });
    }
    armed.wait();
    const auto before = batcher.stats().forward_passes;
    const auto t0 = Clock::now();
    go.count_down();
    for (auto& th : pool) th.join();
    passes = batcher.stats().forward_passes - before;
    auto last = *std::max_element(ended.begin(), ended.end());
    for (int i = 0; i < kEmbedImages; ++i) {  // same vectors as one at a time?
      if (reference[i].empty()) continue;
      double dot = 0;
      for (std::size_t d = 0; d < dim; ++d) dot += double{out[i][d]} * reference[i][d];
      worst_cosine = std::min(worst_cosine, dot);
    }
    return ms_between(t0, last);
  };

  std::cerr << "embed: warming up\n";
  std::int64_t passes = 0;
  batcher.embed(inputs[0].data(), 1);
  sequential(true);
  concurrent(passes);
  one_pass();
  std::vector<double> seq, conc, whole;
  std::vector<std::int64_t> conc_passes;
  std::int64_t seq_passes = 0;
  for (int r = 0; r < kEmbedReps; ++r) {
    const auto s0 = batcher.stats().forward_passes;
    seq.push_back(sequential(false));
    seq_passes += batcher.stats().forward_passes - s0;
    conc.push_back(concurrent(passes));
    conc_passes.push_back(passes);
    whole.push_back(one_pass());
    std::cerr << fmt::format(
        "  rep {}: sequential {:.1f} ms, concurrent {:.1f} ms ({} passes), one request of {} "
        "{:.1f} ms\n",
        r + 1, seq.back(), conc.back(), passes, kEmbedImages, whole.back());
  }
  const auto s = summarise(seq);
  const auto c = summarise(conc);
  const auto w = summarise(whole);
  const double ratio = c.median / s.median;
  const bool pass = ratio <= kEmbedRatioTarget;
  ok = ok && pass;
  std::vector<std::int64_t> sorted_passes = conc_passes;
  std::sort(sorted_passes.begin(), sorted_passes.end());
  const auto stats = batcher.stats();

  json j = {{"model", m.id()},
            {"archive", model_path->string()},
            {"precision", model::to_string(m.precision().precision)},
            {"precision_reason", m.precision().reason},
            {"threads", m.threads()},
            {"batch_size", eo.batch_size},
            {"batch_wait_us", eo.batch_wait.count()},
            {"photos", photos.size()},
            {"photos_dir", dir.string()},
            {"repetitions", kEmbedReps},
            {"sequential_ms", seq},
            {"concurrent_ms", conc},
            {"sequential_median_ms", s.median},
            {"concurrent_median_ms", c.median},
            {"one_request_ms", whole},
            {"one_request_median_ms", w.median},
            {"one_request_over_sequential", w.median / s.median},
            {"ratio", ratio},
            {"target_ratio", kEmbedRatioTarget},
            {"pass", pass},
            {"sequential_forward_passes_per_rep", seq_passes / kEmbedReps},
            {"concurrent_forward_passes", conc_passes},
            {"worst_cosine_concurrent_vs_sequential", worst_cosine},
            {"batcher_totals",
             {{"requests", stats.requests},
              {"images", stats.images},
              {"forward_passes", stats.forward_passes}}}};

  if (!o.as_json) {
    fmt::print(
        "\n== embed: {} single-image embeds through the engine's EmbedBatcher, {}, {} "
        "threads, {} ==\n",
        kEmbedImages, m.id(), m.threads(), model::to_string(m.precision().precision));
    fmt::print("{:<44} {:>10} {:>10} {:>10} {:>14}\n", "", "median ms", "min ms", "max ms",
               "forward passes");
    double smin = *std::min_element(seq.begin(), seq.end());
    double cmin = *std::min_element(conc.begin(), conc.end());
    fmt::print("{:<44} {:>10.1f} {:>10.1f} {:>10.1f} {:>14}\n",
               fmt::format("(a) sequential, one after another"), s.median, smin, s.max,
               seq_passes / kEmbedReps);
    std::string plist;
    for (auto p : conc_passes) plist += (plist.empty() ? "" : ",") + std::to_string(p);
    fmt::print("{:<44} {:>10.1f} {:>10.1f} {:>10.1f} {:>14}\n",
               fmt::format("(b) {} threads at once (latch)", kEmbedImages), c.median, cmin, c.max,
               plist);
    fmt::print("{:<44} {:>10.1f} {:>10.1f} {:>10.1f} {:>14}\n",
               fmt::format("(c) floor: one request of all {}", kEmbedImages), w.median,
               *std::min_element(whole.begin(), whole.end()), w.max, 1);
    fmt::print(
        "({} repetitions each, alternating; batch window {} us, max batch {}; {} photos "
        "from {})\n",
        kEmbedReps, eo.batch_wait.count(), eo.batch_size, photos.size(), dir.string());
    fmt::print(
        "concurrent / sequential = {:.2f}  (target <= {}: {}); worst cosine between a "
        "batched and a lone embedding: {:.6f}\n",
        ratio, kEmbedRatioTarget, verdict(pass), worst_cosine);
    fmt::print(
        "one forward pass of {} / {} single passes = {:.2f} (what batching can gain on "
        "this machine at best)\n",
        kEmbedImages, kEmbedImages, w.median / s.median);
  }
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  const auto o = parse(argc, argv);
  try {
    // As every engine process does (mallopt, the OpenMP count FAISS uses): Engine::open calls
    // it too, and only the first call counts.
    engine::setup_process(o.threads);
    image::init_decoder();
    std::error_code ec;
    const bool work_existed = fs::exists(o.work, ec);
    fs::create_directories(o.work, ec);
    if (ec) throw std::runtime_error(o.work.string() + ": cannot create: " + ec.message());

    json out = {{"bench", "bench_engine"},
                {"cores", std::thread::hardware_concurrency()},
                {"threads", o.threads},
                {"seed", o.seed}};
    if (!o.as_json) {
      fmt::print("bench_engine: {} cores, {} threads (LibTorch intra-op and OpenMP), seed {}\n",
                 std::thread::hardware_concurrency(), o.threads, o.seed);
    }
    bool ok = true;
    const auto start = Clock::now();
    if (o.commit) out["commit"] = run_commit(o, ok);
    if (o.concurrent) out["concurrent"] = run_concurrent(o, ok);
    if (o.embed) out["embed"] = run_embed(o, ok);
    out["all_targets_met"] = ok;
    out["total_s"] = s_since(start);

    if (!o.keep) {
      fs::remove_all(o.work / "embed-no-collection", ec);
      if (!work_existed || fs::is_empty(o.work, ec)) fs::remove_all(o.work, ec);
    }
    if (o.as_json) {
      std::cout << out.dump(2) << "\n";
    } else {
      fmt::print("\nall targets met: {} (total {:.0f} s)\n", ok ? "yes" : "no", s_since(start));
    }
    return o.check && !ok ? 1 : 0;
  } catch (const std::exception& e) {
    std::cerr << "bench_engine: " << e.what() << "\n";
    return 2;
  }
}
