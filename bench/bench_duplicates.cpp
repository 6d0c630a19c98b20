// `lookalike duplicates` at scale, without a model: generated unit vectors (clusters of
// product-like neighbours, cosine ~0.5 within a cluster) with planted near-duplicate pairs
// (cosine 0.94-0.995 to their source) are inserted through Collection::apply, then
// dedup::find_duplicates runs over them through the collection's index. Reported per size: the
// time, the peak resident memory of the phase above what the process held before it (VmHWM,
// reset through /proc/self/clear_refs), and the recall of the planted pairs (both ends in one
// group) and the groups that are not a planted pair. Then the notebook way at --baseline images:
// every vector against every other through FAISS's exact range search (IndexFlatIP, blocks of
// 4,096 queries: a blocked N x N matrix multiply), union-find over the pairs >= threshold, with
// its own time and memory, and whether its groups equal find_duplicates' on the same vectors.
//
// Usage: bench_duplicates [--sizes 100000,1000000] [--dim 512] [--factory IVF1024,Flat]
//                         [--nprobe 16] [--k 10] [--threshold 0.9] [--baseline 50000]
//                         [--dir /tmp/lookalike-bench-dup]
//        bench_duplicates --hash-cost DIR   (what the indexer's perceptual hash costs an image:
//                         a full decode, the row-skipping decode, picture_hash_bytes, the
//                         indexer's one decode + hash, and the hash alone, each over every
//                         JPEG under DIR, already in memory, one thread)
// Figures: bench/README.md, docs/duplicates.md.
#include <faiss/IndexFlat.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "dedup/duplicates.h"
#include "dedup/phash.h"
#include "image/decode.h"
#include "store/collection.h"

namespace fs = std::filesystem;
using lookalike::dedup::DisjointSets;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  std::vector<std::int64_t> sizes = {100'000, 1'000'000};
  int dim = 512;
  std::string factory = "IVF1024,Flat";
  int nprobe = 16;
  int k = 10;
  double threshold = 0.90;
  std::int64_t baseline = 50'000;
  fs::path dir = "/tmp/lookalike-bench-dup";
};

// kB from a /proc/self/status line ("VmHWM:  123 kB").
std::int64_t status_kb(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(std::strlen(key)));
  }
  return -1;
}

// Resets VmHWM to the current RSS (Linux >= 4.0), so the next read is the peak of one phase.
void reset_peak() { std::ofstream("/proc/self/clear_refs") << "5"; }

double mib(std::int64_t kb) { return kb / 1024.0; }

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

void normalise(float* v, int dim) {
  double sq = 0;
  for (int i = 0; i < dim; ++i) sq += double{v[i]} * v[i];
  const auto inv = static_cast<float>(1.0 / std::sqrt(sq));
  for (int i = 0; i < dim; ++i) v[i] *= inv;
}

// The data set, generated in chunks from one seed: vector i is a cluster centre (1,024 of them)
// plus noise of the same norm (cosine ~0.71 to the centre), except that every 100th vector is a
// planted near-duplicate of vector i - 50 (noise of norm 0.1-0.35: cosine 0.944-0.995).
class Generator {
 public:
  explicit Generator(int dim) : dim_(dim), centres_(1024 * static_cast<std::size_t>(dim)) {
    std::mt19937_64 rng(1);
    std::normal_distribution<float> normal;
    for (auto& x : centres_) x = normal(rng);
    for (int c = 0; c < 1024; ++c) normalise(&centres_[c * static_cast<std::size_t>(dim)], dim);
  }
  static bool planted(std::int64_t i) { return i % 100 == 99; }
  static std::int64_t source(std::int64_t i) { return i - 50; }

  // Vectors [begin, end) into out; needs the vectors it copies, so it keeps the last 100.
  void fill(std::int64_t begin, std::int64_t end, std::vector<float>& out) {
    out.resize(static_cast<std::size_t>(end - begin) * dim_);
    for (std::int64_t i = begin; i < end; ++i) {
      std::mt19937_64 rng(1000 + i);
      std::normal_distribution<float> normal;
      float* v = &out[static_cast<std::size_t>(i - begin) * dim_];
      const float sigma = 1.0f / std::sqrt(static_cast<float>(dim_));
      if (planted(i)) {
        const float* src = &recent_[static_cast<std::size_t>(source(i) % 100) * dim_];
        const float scale = 0.1f + 0.25f * static_cast<float>((i / 100) % 11) / 10.0f;
        for (int d = 0; d < dim_; ++d) v[d] = src[d] + scale * sigma * normal(rng);
      } else {
        const float* c = &centres_[static_cast<std::size_t>(rng() % 1024) * dim_];
        for (int d = 0; d < dim_; ++d) v[d] = c[d] + sigma * normal(rng);
      }
      normalise(v, dim_);
      std::copy_n(v, dim_, &recent_[static_cast<std::size_t>(i % 100) * dim_]);
    }
  }

 private:
  int dim_;
  std::vector<float> centres_;
  std::vector<float> recent_ = std::vector<float>(100 * static_cast<std::size_t>(dim_));
};

using Groups = std::set<std::set<std::int64_t>>;  // sets of 0-based vector numbers

Groups groups_of(const lookalike::dedup::DuplicateReport& r) {
  Groups out;
  for (const auto& g : r.groups) {
    std::set<std::int64_t> s;
    for (const auto& m : g.members) s.insert(m.id - 1);  // ids 1..n in insertion order
    out.insert(s);
  }
  return out;
}

void report_recall(const Groups& groups, std::int64_t n) {
  std::map<std::int64_t, const std::set<std::int64_t>*> group_of;
  for (const auto& g : groups) {
    for (auto i : g) group_of[i] = &g;
  }
  std::int64_t planted = 0, found = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    if (!Generator::planted(i)) continue;
    ++planted;
    auto a = group_of.find(i), b = group_of.find(Generator::source(i));
    found += a != group_of.end() && b != group_of.end() && a->second == b->second;
  }
  std::int64_t other = 0;
  for (const auto& g : groups) {
    const bool pair = g.size() == 2 && Generator::planted(*g.rbegin()) &&
                      Generator::source(*g.rbegin()) == *g.begin();
    other += !pair;
  }
  fmt::print(
      "  planted pairs {}, found {} (recall {:.4f}); groups that are not a planted pair: {}\n",
      planted, found, planted ? static_cast<double>(found) / planted : 0.0, other);
}

Groups brute_force(const std::vector<float>& data, std::int64_t n, int dim, double threshold) {
  faiss::IndexFlatIP flat(dim);
  flat.add(n, data.data());
  DisjointSets sets(static_cast<std::size_t>(n));
  constexpr std::int64_t kBlock = 4096;
  for (std::int64_t b = 0; b < n; b += kBlock) {
    const auto nq = std::min(kBlock, n - b);
    faiss::RangeSearchResult res(nq);
    flat.range_search(nq, data.data() + b * dim, static_cast<float>(threshold), &res);
    for (std::int64_t q = 0; q < nq; ++q) {
      for (auto j = res.lims[q]; j < res.lims[q + 1]; ++j) {
        if (res.labels[j] != b + q) sets.unite(static_cast<std::size_t>(b + q), res.labels[j]);
      }
    }
  }
  std::map<std::size_t, std::set<std::int64_t>> by_root;
  for (std::int64_t i = 0; i < n; ++i) {
    if (sets.size_of(i) > 1) by_root[sets.find(i)].insert(i);
  }
  Groups out;
  for (auto& [root, members] : by_root) out.insert(std::move(members));
  return out;
}

Groups run_size(const Args& a, std::int64_t n) {
  const auto dir = a.dir / fmt::format("n{}", n);
  fs::remove_all(dir);
  fs::create_directories(dir);
  lookalike::store::CatalogConfig cfg;
  cfg.model_id = "generated@0000000000000000";
  cfg.model_name = "generated";
  cfg.dim = a.dim;
  cfg.factory = a.factory;
  auto start = Clock::now();
  Groups groups;
  {
    auto c = lookalike::store::Collection::create_or_open(dir, cfg);
    Generator gen(a.dim);
    std::vector<float> chunk;
    constexpr std::int64_t kChunk = 10'000;
    for (std::int64_t b = 0; b < n; b += kChunk) {
      const auto e = std::min(n, b + kChunk);
      gen.fill(b, e, chunk);
      std::vector<lookalike::store::Put> puts(static_cast<std::size_t>(e - b));
      for (std::int64_t i = b; i < e; ++i) {
        auto& p = puts[static_cast<std::size_t>(i - b)];
        p.record.path = fmt::format("/generated/{}.jpg", i);
        p.record.content_hash = fmt::format("{:032x}", i + 1);
        p.record.width = p.record.height = 256;
        p.embedding.assign(chunk.begin() + (i - b) * a.dim, chunk.begin() + (i - b + 1) * a.dim);
      }
      c->apply(puts, {});
    }
    c->save_index();
    fmt::print("n = {}: inserted in {:.1f} s ({}); RSS {:.0f} MiB\n", n, seconds_since(start),
               c->info().index_status, mib(status_kb("VmRSS:")));
  }
  // A fresh read-mode open, as `lookalike duplicates` does: the index loads from its file.
  auto c = lookalike::store::Collection::open(dir, lookalike::store::Collection::Mode::Read);
  const auto before = status_kb("VmRSS:");
  const auto file_before = status_kb("RssFile:");
  reset_peak();
  lookalike::dedup::DuplicateOptions o;
  o.threshold = a.threshold;
  o.k = a.k;
  o.perceptual_hash = false;  // no files behind generated vectors
  o.params.nprobe = a.nprobe;
  start = Clock::now();
  const auto report = lookalike::dedup::find_duplicates(*c, o);
  const double t = seconds_since(start);
  const auto peak = status_kb("VmHWM:");
  // IVF lists are memory-mapped from the index file (STACK.md): the search pages them in, and
  // they count as RssFile, not as memory duplicates allocates.
  const auto paged_in = status_kb("RssFile:") - file_before;
  fmt::print(
      "  duplicates ({}, nprobe {}, k {}, threshold {:.2f}): {:.1f} s, {} groups, {} images in "
      "groups; RSS before {:.0f} MiB, peak during {:.0f} MiB: {:.0f} MiB above, of which {:.0f} "
      "MiB the index file's mapped pages read in; the rest {:.0f} bytes an image\n",
      a.factory, a.nprobe, a.k, a.threshold, t, report.groups.size(), report.images_in_groups,
      mib(before), mib(peak), mib(peak - before), mib(paged_in),
      (peak - before - paged_in) * 1024.0 / n);
  groups = groups_of(report);
  report_recall(groups, n);
  return groups;
}

int hash_cost(const fs::path& dir) {
  lookalike::image::init_decoder();
  std::vector<std::vector<std::uint8_t>> files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.path().extension() == ".jpg")
      files.push_back(lookalike::image::read_image_file(e.path()));
  }
  if (files.empty()) {
    fmt::print(stderr, "bench_duplicates: no .jpg under {}\n", dir.string());
    return 1;
  }
  // MobileNetV2's preprocessing (resize 256, crop 224), for the decode the indexer does.
  lookalike::image::PreprocessSpec spec;
  lookalike::image::DecodeOptions rows;
  rows.rows_for = &spec;
  rows.min_shorter_side = spec.resize_shorter;
  auto time_it = [&](auto&& f) {
    const auto start = Clock::now();
    std::uint64_t sink = 0;
    for (int round = 0; round < 3; ++round) {
      for (const auto& b : files) sink += f(b);
    }
    const double ms = seconds_since(start) * 1000.0 / (3.0 * files.size());
    return std::pair{ms, sink};
  };
  const auto full = time_it(
      [](const auto& b) { return lookalike::image::decode_buffer(b, "x").rgb.pixels.size(); });
  const auto model = time_it([&](const auto& b) {
    return lookalike::image::decode_buffer(b, "x", rows).rgb.pixels.size();
  });
  const auto hash =
      time_it([](const auto& b) { return lookalike::dedup::picture_hash_bytes(b, "x").full & 1; });
  // What the indexer does per embedded image: one decode of the whole frame at the model's
  // scale, the three hashes from its pixels (pipeline/indexer.cpp). Against the model's decode
  // plus picture_hash_bytes (its second decode), what the indexer did before.
  auto whole = rows;
  whole.rows_for = nullptr;
  const auto once = time_it([&](const auto& b) {
    const auto d = lookalike::image::decode_buffer(b, "x", whole);
    return lookalike::dedup::picture_hash(d.rgb).full & 1;
  });
  std::vector<lookalike::image::RgbImage> decoded;
  for (const auto& b : files) decoded.push_back(lookalike::image::decode_buffer(b, "x", whole).rgb);
  std::size_t at = 0;
  const auto hash_only = time_it([&](const auto&) {
    return lookalike::dedup::picture_hash(decoded[at++ % decoded.size()]).full & 1;
  });
  fmt::print(
      "{} JPEGs under {}, one thread, ms an image: full decode {:.3f}; the model's decode "
      "(rows_for, shorter side >= 256) {:.3f}; picture_hash_bytes (DCT-downscaled decode + "
      "three pHashes) {:.3f}; the model's decode + picture_hash_bytes {:.3f}; the indexer's "
      "(the whole frame at the model's scale + three pHashes of its pixels) {:.3f}, of which "
      "the three pHashes {:.3f}\n",
      files.size(), dir.string(), full.first, model.first, hash.first, model.first + hash.first,
      once.first, hash_only.first);
  return static_cast<int>(
      (full.second + model.second + hash.second + once.second + hash_only.second) & 0);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i], value = argv[i + 1];
    if (key == "--sizes") {
      a.sizes.clear();
      std::size_t at = 0;
      while (at <= value.size()) {
        auto comma = value.find(',', at);
        if (comma == std::string::npos) comma = value.size();
        a.sizes.push_back(std::stoll(value.substr(at, comma - at)));
        at = comma + 1;
      }
    } else if (key == "--dim") {
      a.dim = std::stoi(value);
    } else if (key == "--factory") {
      a.factory = value;
    } else if (key == "--nprobe") {
      a.nprobe = std::stoi(value);
    } else if (key == "--k") {
      a.k = std::stoi(value);
    } else if (key == "--threshold") {
      a.threshold = std::stod(value);
    } else if (key == "--baseline") {
      a.baseline = std::stoll(value);
    } else if (key == "--dir") {
      a.dir = value;
    } else {
      throw std::invalid_argument("unknown option " + key);
    }
  }
  if (a.dim < 1 || a.dim > 512) throw std::invalid_argument("--dim: 1..512");
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--hash-cost") return hash_cost(argv[2]);
  Args a;
  try {
    a = parse(argc, argv);
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_duplicates: {}\n", e.what());
    return 2;
  }
  fmt::print("bench_duplicates: dim {}, {}, {} hardware threads\n", a.dim, a.factory,
             std::thread::hardware_concurrency());
  for (auto n : a.sizes) run_size(a, n);
  if (a.baseline > 0) {
    const auto n = a.baseline;
    const auto ours = run_size(a, n);
    const auto before = status_kb("VmRSS:");
    reset_peak();
    auto start = Clock::now();
    Generator gen(a.dim);
    std::vector<float> data;
    gen.fill(0, n, data);
    const auto truth = brute_force(data, n, a.dim, a.threshold);
    const double t = seconds_since(start);
    const auto peak = status_kb("VmHWM:");
    fmt::print(
        "n = {}: brute force (FAISS IndexFlatIP range search, blocks of 4,096 queries, "
        "union-find): {:.1f} s, {} groups, peak {:.0f} MiB above the {:.0f} MiB before; "
        "find_duplicates' groups {} the brute force's\n",
        n, t, truth.size(), mib(peak - before), mib(before),
        ours == truth ? "equal" : "DIFFER from");
    report_recall(truth, n);
    fs::remove_all(a.dir / fmt::format("n{}", n));
  }
  for (auto n : a.sizes) fs::remove_all(a.dir / fmt::format("n{}", n));
  return 0;
}
