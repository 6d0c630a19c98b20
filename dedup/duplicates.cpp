#include "dedup/duplicates.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <memory>
#include <numeric>
#include <tuple>
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
  if (o.max_distance < 0 || o.max_distance > 64) {
    throw DuplicateOptionError(
        fmt::format("max perceptual-hash distance {}: must be in 0..64", o.max_distance));
  }
  if (o.params.nprobe < 0 || o.params.ef_search < 0 || o.params.rerank < 0) {
    throw DuplicateOptionError("--nprobe, --ef-search and rerank must not be negative");
  }
}

// What the whole-collection passes need of an image: 24 bytes instead of a full record (path,
// metadata), so 1,000,000 images hold 24 MB here.
struct Row {
  std::int64_t id = 0;
  std::uint64_t content_hi = 0, content_lo = 0;  // XXH3-128 from its 32 hex digits
};

// A content_hash that is not 32 hex digits (never written by lookalike, but the catalog does not
// forbid it) is keyed by std::hash of its text and its length in the top bits.
std::pair<std::uint64_t, std::uint64_t> content_key(const std::string& h) {
  std::uint64_t hi = 0, lo = 0;
  if (h.size() == 32 && std::from_chars(h.data(), h.data() + 16, hi, 16).ptr == h.data() + 16 &&
      std::from_chars(h.data() + 16, h.data() + 32, lo, 16).ptr == h.data() + 32) {
    return {hi, lo};
  }
  return {std::hash<std::string>{}(h), ~std::uint64_t{0} - h.size()};
}

constexpr int kPage = 10'000;

std::vector<Row> read_rows(const store::Collection& c) {
  std::vector<Row> rows;
  std::int64_t after = 0;
  for (;;) {
    const auto page = c.list_page(after, kPage);
    for (const auto& r : page) {
      const auto [hi, lo] = content_key(r.content_hash);
      rows.push_back({r.id, hi, lo});
    }
    if (page.size() < static_cast<std::size_t>(kPage)) break;
    after = page.back().id;
  }
  return rows;  // by id (list_page's order)
}

// Position of `id` in rows (ascending ids), or npos.
std::size_t slot_of(const std::vector<Row>& rows, std::int64_t id) {
  auto it = std::lower_bound(rows.begin(), rows.end(), id,
                             [](const Row& r, std::int64_t v) { return r.id < v; });
  return it != rows.end() && it->id == id ? static_cast<std::size_t>(it - rows.begin())
                                          : static_cast<std::size_t>(-1);
}

void link_exact(const std::vector<Row>& rows, DisjointSets& sets) {
  std::vector<std::uint32_t> order(rows.size());
  std::iota(order.begin(), order.end(), 0u);
  std::sort(order.begin(), order.end(), [&](auto a, auto b) {
    return std::tie(rows[a].content_hi, rows[a].content_lo) <
           std::tie(rows[b].content_hi, rows[b].content_lo);
  });
  for (std::size_t i = 1; i < order.size(); ++i) {
    const auto &a = rows[order[i - 1]], &b = rows[order[i]];
    if (a.content_hi == b.content_hi && a.content_lo == b.content_lo) {
      sets.unite(order[i - 1], order[i]);
    }
  }
}

// Searches rows [begin, end) on their stored embeddings and links every neighbour at or above
// the threshold.
void link_batch(const store::Collection& c, const std::vector<Row>& rows, std::size_t begin,
                std::size_t end, const DuplicateOptions& o, double threshold, DisjointSets& sets) {
  const auto dim = static_cast<std::size_t>(c.config().dim);
  const auto n = end - begin;
  std::vector<std::int64_t> ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = rows[begin + i].id;
  std::vector<float> vectors(n * dim);
  auto found = std::make_unique<bool[]>(n);
  c.embeddings(ids.data(), static_cast<std::int64_t>(n), vectors.data(), found.get());
  std::vector<std::size_t> who;  // rows whose vector was found, packed to the front
  for (std::size_t i = 0; i < n; ++i) {
    if (!found[i]) continue;  // removed meanwhile, or corrupt: nothing to search
    if (who.size() != i) {
      std::copy_n(vectors.begin() + i * dim, dim, vectors.begin() + who.size() * dim);
    }
    who.push_back(begin + i);
  }
  if (who.empty()) return;
  store::SearchSpec spec;
  spec.params = o.params;
  // k + 1: the query's own vector is its first hit.
  const auto hits = c.search(vectors.data(), static_cast<std::int64_t>(who.size()), o.k + 1, spec);
  for (std::size_t q = 0; q < hits.size(); ++q) {
    for (const auto& h : hits[q]) {
      if (h.score < threshold) break;  // best first
      const auto other = slot_of(rows, h.image.id);
      if (other == static_cast<std::size_t>(-1) || other == who[q]) continue;
      sets.unite(who[q], other);
    }
  }
}

std::optional<PictureHash> stored_hash(const ImageRecord& r) {
  if (!r.picture_hash) return std::nullopt;
  return PictureHash{r.picture_hash->full, r.picture_hash->center95, r.picture_hash->center90};
}

DuplicateGroup make_group(const store::Collection& c, const std::vector<Row>& rows,
                          const std::vector<std::size_t>& slots, const DuplicateOptions& o,
                          DuplicateReport& report) {
  std::vector<std::int64_t> ids;
  for (auto s : slots) ids.push_back(rows[s].id);
  std::sort(ids.begin(), ids.end());
  const auto records = c.get_many(ids);  // removed meanwhile: left out
  std::vector<std::size_t> all(records.size());
  std::iota(all.begin(), all.end(), std::size_t{0});
  const std::size_t rep_at = records.empty() ? 0 : pick_representative(records, all);
  const auto dim = static_cast<std::size_t>(c.config().dim);
  std::vector<std::int64_t> rec_ids;
  for (const auto& r : records) rec_ids.push_back(r.id);
  std::vector<float> vectors(records.size() * dim, 0.0f);
  auto found = std::make_unique<bool[]>(records.size());
  c.embeddings(rec_ids.data(), static_cast<std::int64_t>(rec_ids.size()), vectors.data(),
               found.get());

  // Perceptual hashes: stored, else from the file (kept for the caller to store).
  std::vector<std::optional<PictureHash>> hashes(records.size());
  std::vector<std::string> notes(records.size());
  if (o.perceptual_hash) {
    for (std::size_t i = 0; i < records.size(); ++i) {
      hashes[i] = stored_hash(records[i]);
      if (hashes[i]) continue;
      try {
        hashes[i] = picture_hash_file(records[i].path);
        report.computed_hashes.push_back(
            {records[i].id,
             records[i].content_hash,
             {hashes[i]->full, hashes[i]->center95, hashes[i]->center90}});
      } catch (const image::DecodeError& e) {
        notes[i] = fmt::format("unreadable for the perceptual hash: {}", e.what());
      }
    }
  }
  auto same = [&](std::size_t a, std::size_t b, int* d) {
    if (records[a].content_hash == records[b].content_hash) {
      *d = 0;
      return true;
    }
    if (!hashes[a] || !hashes[b]) return false;
    *d = distance(*hashes[a], *hashes[b]);
    return *d <= o.max_distance;
  };
  DisjointSets pictures(records.size());
  const bool pairwise = records.size() <= kPairwiseLimit;
  std::vector<int> to_rep(records.size(), -1);
  for (std::size_t a = 0; a < records.size(); ++a) {
    int d = -1;
    if (same(a, rep_at, &d)) pictures.unite(a, rep_at);
    to_rep[a] = d;
    if (!pairwise) continue;
    for (std::size_t b = a + 1; b < records.size(); ++b) {
      if (b != rep_at && a != rep_at && same(a, b, &d)) pictures.unite(a, b);
    }
  }

  const auto& rep = records[rep_at];
  const float* rep_vec = vectors.data() + rep_at * dim;
  DuplicateGroup g;
  g.representative = rep.id;
  std::vector<std::size_t> roots;
  for (std::size_t i = 0; i < records.size(); ++i) {
    const auto& r = records[i];
    DuplicateMember m;
    m.id = r.id;
    m.path = r.path;
    m.width = r.width;
    m.height = r.height;
    m.exact = r.content_hash == rep.content_hash;
    m.note = notes[i];
    roots.push_back(pictures.find(i));
    if (i == rep_at) {
      m.similarity = 1.0;
      m.hamming = 0;
    } else {
      double dot = 0;
      if (found[i] && found[rep_at]) {
        for (std::size_t k = 0; k < dim; ++k) dot += double{vectors[i * dim + k]} * rep_vec[k];
      }
      m.similarity = dot;
      m.hamming = to_rep[i];
      if (m.note.empty() && !notes[rep_at].empty() && o.perceptual_hash) {
        m.note = fmt::format("representative {}: {}", rep.path, notes[rep_at]);
      }
    }
    m.same_picture = roots.back() == pictures.find(rep_at);
    g.members.push_back(std::move(m));
  }
  std::vector<std::size_t> order(g.members.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](auto x, auto y) {
    const auto &a = g.members[x], &b = g.members[y];
    if ((a.id == rep.id) != (b.id == rep.id)) return a.id == rep.id;
    if (a.similarity != b.similarity) return a.similarity > b.similarity;
    return a.id < b.id;
  });
  std::vector<DuplicateMember> sorted;
  std::unordered_map<std::size_t, int> number;  // same-picture root -> picture
  for (auto i : order) {
    auto [it, fresh] = number.emplace(roots[i], static_cast<int>(number.size()));
    g.members[i].picture = it->second;
    sorted.push_back(std::move(g.members[i]));
  }
  g.members = std::move(sorted);
  return g;
}

// Where the default threshold comes from, and when it was not measured for this model, why.
std::string default_source(const std::string& model_id, const DuplicateOptions& o) {
  const auto name = model_id.substr(0, model_id.find('@'));
  if (measured_default(model_id, o.model_kind)) return "default for " + name;
  // A trained head pulls images of one label together: at 0.90 whole classes can read as
  // duplicates, and nothing measured says what threshold suits it.
  const std::string why =
      o.model_kind == ModelKind::kTrained
          ? "a head trained by lookalike train (its card has 'training') groups images of one "
            "label"
      : o.model_kind == ModelKind::kUnknown && !o.model_note.empty()
          ? "its model card, which tells the pretrained network from a trained head, could not "
            "be read: " +
                o.model_note
          : "a trained head groups images of one label";
  return "default, not measured for " + name + " (" + why + ": check a sample, set --threshold)";
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

bool measured_default(const std::string& model_id, ModelKind kind) {
  const auto name = model_id.substr(0, model_id.find('@'));
  return kind == ModelKind::kPretrained && (name == "mobilenet_v2" || name == "resnet50");
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
  report.threshold_source = o.threshold ? "--threshold" : default_source(c.config().model_id, o);
  report.params = o.params;
  const auto rows = read_rows(c);
  report.images = static_cast<std::int64_t>(rows.size());

  DisjointSets sets(rows.size());
  link_exact(rows, sets);
  for (std::size_t begin = 0; begin < rows.size(); begin += o.batch) {
    const auto end = std::min(rows.size(), begin + static_cast<std::size_t>(o.batch));
    link_batch(c, rows, begin, end, o, report.threshold, sets);
  }
  for (const auto& members : components(rows.size(), sets)) {
    auto g = make_group(c, rows, members, o, report);
    if (g.members.size() < 2) continue;  // removed meanwhile
    report.images_in_groups += static_cast<std::int64_t>(g.members.size());
    if (g.exact()) ++report.exact_groups;
    report.groups.push_back(std::move(g));
  }
  std::sort(report.groups.begin(), report.groups.end(), [](const auto& a, const auto& b) {
    if (a.members.size() != b.members.size()) return a.members.size() > b.members.size();
    return a.representative < b.representative;
  });
  return report;
}

std::int64_t store_computed_hashes(store::Collection& collection, const DuplicateReport& report) {
  return collection.set_picture_hashes(report.computed_hashes);
}

}  // namespace lookalike::dedup
