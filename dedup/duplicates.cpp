#include "dedup/duplicates.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>
#include <unordered_set>

#include "image/image.h"

namespace lookalike::dedup {

namespace {

using store::ImageRecord;

void check_options(const DuplicateOptions& o) {
  if (o.threshold && !(*o.threshold >= -1.0 && *o.threshold <= 1.0)) {
    throw DuplicateOptionError(
        fmt::format("--threshold {}: a cosine similarity must be in [-1, 1]", *o.threshold));
  }
  if (o.k < 1 || o.k > store::kMaxTopK - 1) {
    throw DuplicateOptionError(
        fmt::format("-k {}: must be between 1 and {}", o.k, store::kMaxTopK - 1));
  }
  if (o.batch < 1) throw DuplicateOptionError(fmt::format("batch {}: must be >= 1", o.batch));
  if (o.max_hamming < 0 || o.max_hamming > 64) {
    throw DuplicateOptionError(fmt::format("max Hamming {}: must be in 0..64", o.max_hamming));
  }
}

void link_exact(const std::vector<ImageRecord>& images, DisjointSets& sets) {
  std::unordered_map<std::string, std::size_t> first;
  first.reserve(images.size());
  for (std::size_t i = 0; i < images.size(); ++i) {
    auto [it, fresh] = first.emplace(images[i].content_hash, i);
    if (!fresh) sets.unite(it->second, i);
  }
}

// Searches images [begin, end) on their stored embeddings and links every neighbour at or above
// the threshold.
void link_batch(const store::Collection& c, const std::vector<ImageRecord>& images,
                const std::unordered_map<std::int64_t, std::size_t>& slot, std::size_t begin,
                std::size_t end, int k, double threshold, DisjointSets& sets) {
  const auto dim = static_cast<std::size_t>(c.config().dim);
  std::vector<float> queries;
  std::vector<std::size_t> who;
  queries.reserve((end - begin) * dim);
  for (std::size_t i = begin; i < end; ++i) {
    auto v = c.embedding(images[i].id);
    if (!v || v->size() != dim) continue;  // removed meanwhile, or corrupt: nothing to search
    queries.insert(queries.end(), v->begin(), v->end());
    who.push_back(i);
  }
  if (who.empty()) return;
  // k + 1: the query's own vector is its first hit.
  const auto hits =
      c.search(queries.data(), static_cast<std::int64_t>(who.size()), k + 1, store::SearchSpec{});
  for (std::size_t q = 0; q < hits.size(); ++q) {
    for (const auto& h : hits[q]) {
      if (h.score < threshold) break;  // best first
      auto it = slot.find(h.image.id);
      if (it == slot.end() || it->second == who[q]) continue;
      sets.unite(who[q], it->second);
    }
  }
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) s += double{a[i]} * b[i];
  return s;
}

struct Hashed {
  std::optional<std::uint64_t> hash;
  std::string error;
};

Hashed hash_of(const std::string& path) {
  try {
    return {dhash_file(path), ""};
  } catch (const image::DecodeError& e) {
    return {std::nullopt, e.what()};
  }
}

void judge(DuplicateMember& m, const Hashed& rep, const std::string& rep_path,
           const DuplicateOptions& o) {
  if (m.exact) {
    m.same_picture = true;
    m.hamming = 0;
    return;
  }
  if (!o.perceptual_hash) return;
  if (!rep.hash) {
    m.note = fmt::format("representative {} unreadable for dHash: {}", rep_path, rep.error);
    return;
  }
  const auto mine = hash_of(m.path);
  if (!mine.hash) {
    m.note = "unreadable for dHash: " + mine.error;
    return;
  }
  m.hamming = hamming(*mine.hash, *rep.hash);
  m.same_picture = m.hamming <= o.max_hamming;
}

DuplicateGroup make_group(const store::Collection& c, const std::vector<ImageRecord>& images,
                          const std::vector<std::size_t>& members, const DuplicateOptions& o) {
  const auto& rep = images[pick_representative(images, members)];
  const auto rep_vec = c.embedding(rep.id).value_or(std::vector<float>{});
  const Hashed rep_hash = o.perceptual_hash ? hash_of(rep.path) : Hashed{};
  DuplicateGroup g;
  g.representative = rep.id;
  for (auto i : members) {
    const auto& r = images[i];
    DuplicateMember m;
    m.id = r.id;
    m.path = r.path;
    m.width = r.width;
    m.height = r.height;
    m.exact = r.content_hash == rep.content_hash;
    if (r.id == rep.id) {
      m.similarity = 1.0;
      m.same_picture = true;
      m.hamming = 0;
    } else {
      m.similarity = dot(c.embedding(r.id).value_or(std::vector<float>{}), rep_vec);
      judge(m, rep_hash, rep.path, o);
    }
    g.members.push_back(std::move(m));
  }
  std::stable_sort(g.members.begin(), g.members.end(), [&](const auto& a, const auto& b) {
    if ((a.id == rep.id) != (b.id == rep.id)) return a.id == rep.id;
    if (a.similarity != b.similarity) return a.similarity > b.similarity;
    return a.id < b.id;
  });
  return g;
}

std::vector<std::vector<std::size_t>> components(std::size_t n, DisjointSets& sets) {
  std::unordered_map<std::size_t, std::size_t> group_of;  // root -> position in `out`
  std::vector<std::vector<std::size_t>> out;
  for (std::size_t i = 0; i < n; ++i) {
    if (sets.size_of(i) < 2) continue;
    auto [it, fresh] = group_of.emplace(sets.find(i), out.size());
    if (fresh) out.emplace_back();
    out[it->second].push_back(i);
  }
  return out;
}

}  // namespace

bool DuplicateGroup::exact() const {
  return std::all_of(members.begin(), members.end(), [](const auto& m) { return m.exact; });
}

double default_threshold(const std::string& model_id) {
  const auto name = model_id.substr(0, model_id.find('@'));
  // Measured figures for both are in the header and docs/duplicates.md.
  if (name == "mobilenet_v2" || name == "resnet50") return 0.90;
  return kDefaultThreshold;
}

DisjointSets::DisjointSets(std::size_t n) : parent_(n), size_(n, 1) {
  std::iota(parent_.begin(), parent_.end(), std::size_t{0});
}

std::size_t DisjointSets::find(std::size_t x) {
  while (parent_[x] != x) {
    parent_[x] = parent_[parent_[x]];
    x = parent_[x];
  }
  return x;
}

bool DisjointSets::unite(std::size_t a, std::size_t b) {
  a = find(a);
  b = find(b);
  if (a == b) return false;
  if (size_[a] < size_[b]) std::swap(a, b);
  parent_[b] = a;
  size_[a] += size_[b];
  return true;
}

std::size_t pick_representative(const std::vector<ImageRecord>& images,
                                const std::vector<std::size_t>& members) {
  auto better = [&](std::size_t a, std::size_t b) {
    const auto& x = images[a];
    const auto& y = images[b];
    const auto px = std::int64_t{x.width} * x.height, py = std::int64_t{y.width} * y.height;
    if (px != py) return px > py;
    if (x.added_at_ms != y.added_at_ms) return x.added_at_ms < y.added_at_ms;
    return x.id < y.id;
  };
  return *std::min_element(members.begin(), members.end(), better);
}

DuplicateReport find_duplicates(const store::Collection& c, const DuplicateOptions& o) {
  check_options(o);
  if (c.config().metric != "cosine") {
    throw DuplicateError(fmt::format(
        "{}: metric {} is not supported: duplicates needs a cosine collection (similarity "
        "thresholds have no meaning for L2 distances); index the images into a new collection with "
        "--metric cosine",
        c.dir().string(), c.config().metric));
  }
  DuplicateReport report;
  report.k = o.k;
  report.threshold = o.threshold.value_or(default_threshold(c.config().model_id));
  report.threshold_source =
      o.threshold ? "--threshold"
                  : "default for " + c.config().model_id.substr(0, c.config().model_id.find('@'));
  const auto images = c.list();
  report.images = static_cast<std::int64_t>(images.size());
  std::unordered_map<std::int64_t, std::size_t> slot;
  slot.reserve(images.size());
  for (std::size_t i = 0; i < images.size(); ++i) slot.emplace(images[i].id, i);

  DisjointSets sets(images.size());
  link_exact(images, sets);
  for (std::size_t begin = 0; begin < images.size(); begin += o.batch) {
    const auto end = std::min(images.size(), begin + static_cast<std::size_t>(o.batch));
    link_batch(c, images, slot, begin, end, o.k, report.threshold, sets);
  }
  for (const auto& members : components(images.size(), sets)) {
    report.groups.push_back(make_group(c, images, members, o));
    report.images_in_groups += static_cast<std::int64_t>(members.size());
    if (report.groups.back().exact()) ++report.exact_groups;
  }
  std::sort(report.groups.begin(), report.groups.end(), [](const auto& a, const auto& b) {
    if (a.members.size() != b.members.size()) return a.members.size() > b.members.size();
    return a.representative < b.representative;
  });
  return report;
}

}  // namespace lookalike::dedup
