// Reading, sampling, projecting and grouping a collection for `lookalike map`.
#include "viz/map.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>
#include <unordered_map>

#include "viz/projection.h"

namespace lookalike::viz {

namespace {

// Qualitative colours: d3's category10 without its grey, then the lighter and darker tones of
// d3's category20/20b, so (other) and (none) keep the greys to themselves.
constexpr const char* kPalette[kMaxGroups] = {
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#bcbd22", "#17becf", "#393b79", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
    "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#637939"};
constexpr const char* kOtherColor = "#7f7f7f";
constexpr const char* kNoneColor = "#c7c7c7";

std::uint64_t mix(std::uint64_t z) {  // splitmix64's finaliser
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// The `limit` ids of smallest seeded hash, ascending: the same seed keeps the same images
// however many others are added.
std::vector<std::int64_t> sample_ids(std::vector<std::int64_t> ids, std::int64_t limit,
                                     std::uint64_t seed) {
  if (limit <= 0 || static_cast<std::int64_t>(ids.size()) <= limit) return ids;
  auto key = [seed](std::int64_t id) {
    return mix(static_cast<std::uint64_t>(id) + 0x9E3779B97F4A7C15ULL * (seed + 1));
  };
  std::nth_element(ids.begin(), ids.begin() + limit, ids.end(),
                   [&](auto a, auto b) { return key(a) < key(b); });
  ids.resize(limit);
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::int64_t effective_sample(const MapOptions& o, std::vector<std::string>& warnings,
                              std::int64_t matching) {
  if (o.sample < 0) throw MapUsageError(fmt::format("--sample must be >= 0, got {}", o.sample));
  if (o.method != Method::Tsne) return o.sample;
  if (o.sample > kMaxTsnePoints) {
    throw MapUsageError(fmt::format(
        "--sample {}: exact t-SNE is limited to {} points (O(n^2) memory and time a step); use "
        "--sample {} or less, or --method pca",
        o.sample, kMaxTsnePoints, kMaxTsnePoints));
  }
  if (o.sample == 0 && matching > kMaxTsnePoints) {
    warnings.push_back(fmt::format("t-SNE: {} of {} images sampled (the exact t-SNE limit)",
                                   kMaxTsnePoints, matching));
    return kMaxTsnePoints;
  }
  return o.sample;
}

// A metadata value as a legend entry: a string's text, a number or boolean as JSON writes it,
// an array's first scalar; anything else (null, object, missing) is no group.
std::optional<std::string> field_value(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number() || v.is_boolean()) return v.dump();
  if (v.is_array()) {
    for (const auto& e : v)
      if (auto s = field_value(e); s && !e.is_array()) return s;
  }
  return std::nullopt;
}

struct Grouping {
  std::vector<std::string> raw;  // a group name per point, kNoGroup when none
  bool field_seen = false;
  std::set<std::string> fields;  // top-level fields seen, for the warning
};

Grouping group_records(const std::vector<store::ImageRecord>& records, const std::string& field) {
  Grouping g;
  g.raw.reserve(records.size());
  for (const auto& r : records) {
    if (field.empty()) {
      auto folder = std::filesystem::path(r.path).parent_path().filename().string();
      g.raw.push_back(folder.empty() ? kNoGroup : folder);
      continue;
    }
    auto meta = nlohmann::json::parse(r.metadata, nullptr, /*allow_exceptions=*/false);
    std::optional<std::string> value;
    if (meta.is_object()) {
      for (auto it = meta.begin(); it != meta.end() && g.fields.size() < 50; ++it)
        g.fields.insert(it.key());
      if (auto it = meta.find(field); it != meta.end()) {
        g.field_seen = true;
        value = field_value(*it);
      }
    }
    g.raw.push_back(value ? *value : kNoGroup);
  }
  return g;
}

// Keeps the kMaxGroups most frequent values (all of them when they fit), in name order, then
// (other) and (none); renames the points' groups accordingly.
std::vector<MapGroup> legend(std::vector<MapPoint>& points) {
  std::map<std::string, std::int64_t> counts;
  for (const auto& p : points)
    if (p.group != kNoGroup) ++counts[p.group];
  std::vector<std::pair<std::string, std::int64_t>> by_count(counts.begin(), counts.end());
  std::stable_sort(by_count.begin(), by_count.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  const bool overflow = by_count.size() > static_cast<std::size_t>(kMaxGroups);
  if (overflow) by_count.resize(kMaxGroups - 1);
  std::map<std::string, std::int64_t> kept(by_count.begin(), by_count.end());
  std::int64_t other = 0, none = 0;
  for (auto& p : points) {
    if (p.group == kNoGroup) {
      ++none;
    } else if (!kept.contains(p.group)) {
      p.group = kOtherGroup;
      ++other;
    }
  }
  std::vector<MapGroup> out;
  for (const auto& [name, count] : kept) out.push_back({name, count, kPalette[out.size()]});
  if (other > 0) out.push_back({kOtherGroup, other, kOtherColor});
  if (none > 0) out.push_back({kNoGroup, none, kNoneColor});
  return out;
}

struct Loaded {
  std::vector<store::ImageRecord> records;
  std::vector<float> vectors;  // records.size() x dim
};

// Batch reads of the records and stored vectors; ids deleted meanwhile or whose vector fails
// its checks are left out (counted in `dropped`).
Loaded load(const store::Catalog& catalog, const std::vector<std::int64_t>& ids, int dim,
            std::int64_t& dropped) {
  auto records = catalog.get_many(ids);
  std::vector<std::int64_t> have;
  have.reserve(records.size());
  for (const auto& r : records) have.push_back(r.id);
  std::vector<float> vectors(have.size() * dim);
  std::unique_ptr<bool[]> found(new bool[have.size() + 1]());
  catalog.embeddings(have.data(), static_cast<std::int64_t>(have.size()), vectors.data(),
                     found.get());
  Loaded out;
  for (std::size_t i = 0; i < have.size(); ++i) {
    if (!found[i]) continue;
    std::copy_n(vectors.begin() + i * dim, dim,
                vectors.begin() + out.records.size() * static_cast<std::size_t>(dim));
    out.records.push_back(std::move(records[i]));
  }
  vectors.resize(out.records.size() * dim);
  out.vectors = std::move(vectors);
  dropped = static_cast<std::int64_t>(ids.size() - out.records.size());
  return out;
}

void check_perplexity(const MapOptions& o, std::int64_t n) {
  // Below 4 points no perplexity fits (it must be >= 1 and <= (n - 1) / 3): suggesting one
  // would only lead to this message again.
  if (n < 4) {
    throw MapUsageError(
        fmt::format("t-SNE needs at least 4 points and the map has {}; use --method pca", n));
  }
  if (!(o.perplexity >= 1)) {
    throw MapUsageError(fmt::format("--perplexity must be at least 1, got {}", o.perplexity));
  }
  if (3 * o.perplexity > double(n - 1)) {
    throw MapUsageError(fmt::format(
        "--perplexity {} needs at least {} points and the map has {}: use --perplexity {} or "
        "less",
        o.perplexity, static_cast<std::int64_t>(std::ceil(3 * o.perplexity)) + 1, n,
        std::max<std::int64_t>(1, (n - 1) / 3)));
  }
  if (o.iterations < 1) throw MapUsageError("--iterations must be at least 1");
}

void project(CollectionMap& map, const Loaded& data, int dim, const MapOptions& o) {
  const auto n = static_cast<std::int64_t>(data.records.size());
  const auto start = std::chrono::steady_clock::now();
  const int threads = o.threads > 0
                          ? o.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (at::get_num_threads() != threads) at::set_num_threads(threads);
  std::vector<double> xy;
  if (o.method == Method::Pca) {
    auto p = pca(data.vectors.data(), n, dim, 2);
    xy = std::move(p.coords);
    for (double v : p.variance)
      map.explained_ratio.push_back(p.total_variance > 0 ? v / p.total_variance : 0);
  } else {
    TsneOptions t;
    t.perplexity = o.perplexity;
    t.iterations = o.iterations;
    t.seed = o.seed;
    auto r = tsne(data.vectors.data(), n, dim, t);
    xy = std::move(r.coords);
    map.kl_divergence = r.kl_divergence;
    map.learning_rate = r.learning_rate;
    map.perplexity = o.perplexity;
  }
  map.projection_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (std::int64_t i = 0; i < n; ++i) {
    map.points[i].x = xy[2 * i];
    map.points[i].y = xy[2 * i + 1];
  }
}

}  // namespace

const char* method_name(Method m) { return m == Method::Pca ? "pca" : "tsne"; }

CollectionMap build_map(const store::Catalog& catalog, const std::string& collection_name,
                        const MapOptions& o) {
  auto config = catalog.config();
  if (!config)
    throw MapError(fmt::format("{}: the collection has no configuration yet", collection_name));
  CollectionMap map;
  map.collection = collection_name;
  // A collection made with --model PATH stores the path; its file name reads better.
  const std::filesystem::path model(config->model_name);
  map.model = model.has_parent_path() ? model.stem().string() : config->model_name;
  map.method = o.method;
  map.color_by = o.color_by.empty() ? "folder" : o.color_by;
  auto selected = catalog.matching(o.filter);
  map.generation = selected.generation;
  map.matching = static_cast<std::int64_t>(selected.ids.size());
  if (selected.ids.empty()) {
    throw MapError(o.filter.empty()
                       ? fmt::format("collection {} holds no images", collection_name)
                       : fmt::format("no image of collection {} matches --where", collection_name));
  }
  auto ids =
      sample_ids(std::move(selected.ids), effective_sample(o, map.warnings, map.matching), o.seed);
  std::int64_t dropped = 0;
  auto data = load(catalog, ids, config->dim, dropped);
  if (dropped > 0) {
    map.warnings.push_back(fmt::format(
        "{} images left out: removed while reading, or their stored vector failed its checks",
        dropped));
  }
  const auto n = static_cast<std::int64_t>(data.records.size());
  if (n < 2) {
    const bool sampled = static_cast<std::int64_t>(ids.size()) < map.matching;
    throw MapError(fmt::format(
        "collection {}: a map needs at least 2 images, got {}{}", collection_name, n,
        sampled ? fmt::format(" (--sample {} of {} matching)", o.sample, map.matching) : ""));
  }
  if (o.method == Method::Tsne) check_perplexity(o, n);
  auto grouping = group_records(data.records, o.color_by);
  if (!o.color_by.empty() && !grouping.field_seen) {
    std::string seen;
    for (const auto& f : grouping.fields) seen += (seen.empty() ? "" : ", ") + f;
    map.warnings.push_back(fmt::format(
        "--color-by {}: no image in the map has this metadata field (fields present: {}); every "
        "point is {}",
        o.color_by, seen.empty() ? "none" : seen, kNoGroup));
  }
  map.points.resize(n);
  for (std::int64_t i = 0; i < n; ++i) {
    const auto& r = data.records[i];
    map.points[i] = {r.id, r.path, grouping.raw[i], 0, 0, r.width, r.height, false};
  }
  map.groups = legend(map.points);
  project(map, data, config->dim, o);
  return map;
}

}  // namespace lookalike::viz
