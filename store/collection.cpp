#include "store/collection.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

namespace lookalike::store {

namespace {

namespace fs = std::filesystem;

constexpr const char* kCatalogFile = "catalog.db";
constexpr const char* kLockFile = "lock";
constexpr std::size_t kAddChunk = 4096;  // vectors per FAISS add during a rebuild

std::int64_t file_bytes(const fs::path& p) {
  std::error_code ec;
  auto n = fs::file_size(p, ec);
  return ec ? 0 : static_cast<std::int64_t>(n);
}

bool is_index_cache(const std::string& name) {
  return name.rfind("index-", 0) == 0 && name.size() > 12 &&
         name.compare(name.size() - 6, 6, ".faiss") == 0;
}

bool same_identity(const CatalogConfig& a, const CatalogConfig& b) {
  return a.model_id == b.model_id && a.dim == b.dim && a.metric == b.metric &&
         a.factory == b.factory;
}

std::string describe(const CatalogConfig& c) {
  return "model_id=" + c.model_id + " dim=" + std::to_string(c.dim) + " metric=" + c.metric +
         " factory=" + c.factory;
}

// Refuses a config before anything is created for it; building an index proves the factory
// string parses for this dim and metric.
void validate(const fs::path& dir, const CatalogConfig& c) {
  auto refuse = [&](const std::string& why) {
    return StoreError("collection " + dir.string() + ": invalid config: " + why);
  };
  if (c.model_id.empty()) throw refuse("model_id is empty");
  if (c.dim < 1) throw refuse("dim must be positive, got " + std::to_string(c.dim));
  try {
    index::VectorIndex probe(c.dim, index::parse_metric(c.metric), c.factory);
  } catch (const index::IndexError& e) {
    throw refuse(e.what());
  }
}

void check_normalised(const std::vector<Put>& puts) {
  for (std::size_t i = 0; i < puts.size(); ++i) {
    double sq = 0;
    for (float x : puts[i].embedding) sq += double{x} * x;
    double norm = std::sqrt(sq);
    if (std::abs(norm - 1.0) > 1e-3) {
      throw StoreError("put[" + std::to_string(i) + "] (" + puts[i].record.path +
                       "): embedding is not L2-normalised (norm " + std::to_string(norm) +
                       ") but the collection's metric is cosine");
    }
  }
}

}  // namespace

bool Collection::exists(const fs::path& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir / kCatalogFile, ec);
}

fs::path Collection::index_path(std::int64_t generation) const {
  return dir_ / ("index-" + std::to_string(generation) + ".faiss");
}

void Collection::lock() {
  auto path = dir_ / kLockFile;
  lock_fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) {
    throw StoreError(path.string() + ": cannot open lock file: " + std::strerror(errno));
  }
  // flock, not fcntl locks: released by the kernel when the holder dies (even by kill -9),
  // and two opens in one process exclude each other too.
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    ::close(lock_fd_);
    lock_fd_ = -1;
    if (err == EWOULDBLOCK) {
      throw StoreError("collection " + dir_.string() + " is locked by another lookalike process");
    }
    throw StoreError(path.string() + ": cannot lock: " + std::strerror(err));
  }
}

void Collection::remove_leftovers() {
  auto keep = index_path(catalog_->generation()).filename().string();
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    auto name = entry.path().filename().string();
    bool tmp = name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0;
    if (tmp || (is_index_cache(name) && name != keep)) fs::remove(entry.path(), ec);
  }
}

std::unique_ptr<Collection> Collection::open(const fs::path& dir, Mode mode) {
  if (!exists(dir)) {
    throw StoreError(dir.string() + ": not a lookalike collection (no " + kCatalogFile + ")");
  }
  std::unique_ptr<Collection> c(new Collection());
  c->dir_ = dir;
  c->mode_ = mode;
  if (mode == Mode::Write) c->lock();
  c->catalog_ = Catalog::open(dir / kCatalogFile, false);
  auto config = c->catalog_->config();
  if (!config) {
    throw StoreError(dir.string() +
                     ": collection has no config (its creation was interrupted; create it again)");
  }
  c->config_ = *config;
  if (mode == Mode::Write) c->remove_leftovers();
  return c;
}

std::unique_ptr<Collection> Collection::create_or_open(const fs::path& dir,
                                                       const CatalogConfig& config) {
  validate(dir, config);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw StoreError(dir.string() + ": cannot create collection directory: " + ec.message());
  std::unique_ptr<Collection> c(new Collection());
  c->dir_ = dir;
  c->mode_ = Mode::Write;
  c->lock();  // before the catalog exists, so two creators cannot race
  c->catalog_ = Catalog::open(dir / kCatalogFile, true);
  if (auto existing = c->catalog_->config()) {
    if (!same_identity(*existing, config)) {
      throw StoreError("collection " + dir.string() + " was created with " + describe(*existing) +
                       ", not " + describe(config));
    }
    c->config_ = *existing;
  } else {
    c->catalog_->set_config(config);
    c->config_ = config;
  }
  c->remove_leftovers();
  return c;
}

Collection::~Collection() {
  catalog_.reset();  // close SQLite before the lock is released
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

index::VectorIndex& Collection::index() {
  auto generation = catalog_->generation();
  if (!index_ || index_generation_ != generation) load_or_rebuild(generation);
  return *index_;
}

void Collection::load_or_rebuild(std::int64_t generation) {
  index_.reset();
  index_from_cache_ = false;
  auto file = index_path(generation);
  std::error_code ec;
  if (fs::exists(file, ec)) {
    try {
      auto loaded = index::VectorIndex::load(file, config_.dim, index::parse_metric(config_.metric),
                                             config_.factory);
      auto count = catalog_->count();
      if (loaded.size() == count) {
        index_ = std::move(loaded);
        index_generation_ = generation;
        index_from_cache_ = true;
        index_saved_ = true;
        return;
      }
      spdlog::warn("{}: holds {} vectors, the catalog {} images; rebuilding from the catalog",
                   file.string(), loaded.size(), count);
    } catch (const index::IndexError& e) {
      spdlog::warn("{}; rebuilding the index from the catalog", e.what());
    }
  }
  rebuild();
  if (mode_ == Mode::Write) save_index();
}

void Collection::rebuild() {
  index::VectorIndex fresh(config_.dim, index::parse_metric(config_.metric), config_.factory);
  // A trainable factory sees every vector before the first add; Flat streams in chunks.
  const bool train = fresh.needs_training();
  const auto dim = static_cast<std::size_t>(config_.dim);
  std::vector<float> vectors;
  std::vector<std::int64_t> ids;
  auto flush = [&] {
    fresh.add(vectors.data(), ids.data(), static_cast<std::int64_t>(ids.size()));
    vectors.clear();
    ids.clear();
  };
  auto generation = catalog_->for_each_embedding([&](std::int64_t id, const float* v) {
    vectors.insert(vectors.end(), v, v + dim);
    ids.push_back(id);
    if (!train && ids.size() == kAddChunk) flush();
  });
  if (train && !ids.empty()) fresh.train(vectors.data(), static_cast<std::int64_t>(ids.size()));
  if (!ids.empty()) flush();
  index_ = std::move(fresh);
  index_generation_ = generation;
  index_saved_ = false;
}

void Collection::update_index(const std::vector<Put>& puts, const std::vector<std::int64_t>& ids,
                              const std::vector<std::int64_t>& removes) {
  // Updated images are removed and re-added; a path put twice in one batch keeps its last vector.
  std::vector<std::int64_t> gone(removes);
  gone.insert(gone.end(), ids.begin(), ids.end());
  index_->remove(gone);
  std::unordered_map<std::int64_t, std::size_t> last;
  for (std::size_t i = 0; i < ids.size(); ++i) last[ids[i]] = i;
  std::vector<float> vectors;
  std::vector<std::int64_t> add_ids;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (last[ids[i]] != i) continue;
    vectors.insert(vectors.end(), puts[i].embedding.begin(), puts[i].embedding.end());
    add_ids.push_back(ids[i]);
  }
  index_->add(vectors.data(), add_ids.data(), static_cast<std::int64_t>(add_ids.size()));
}

std::vector<std::int64_t> Collection::apply(const std::vector<Put>& puts,
                                            const std::vector<std::int64_t>& removes) {
  if (config_.metric == "cosine") check_normalised(puts);
  const auto before = catalog_->generation();
  const bool current = index_ && index_generation_ == before;
  auto ids = catalog_->write_batch(puts, removes);
  const auto after = catalog_->generation();
  if (after == before) return ids;
  if (!current) {
    index_.reset();  // the next index() call loads or rebuilds it
    return ids;
  }
  try {
    update_index(puts, ids, removes);
    index_generation_ = after;
    index_from_cache_ = false;
    index_saved_ = false;
  } catch (const index::IndexError& e) {
    spdlog::warn("{}: in-memory index update failed ({}); it will be rebuilt", dir_.string(),
                 e.what());
    index_.reset();
  }
  return ids;
}

void Collection::save_index() {
  if (mode_ != Mode::Write) {
    throw StoreError(dir_.string() + ": save_index needs the collection opened for writing");
  }
  index();
  auto file = index_path(index_generation_);
  std::error_code ec;
  if (!(index_saved_ && fs::exists(file, ec))) {
    index_->save(file);
    index_saved_ = true;
  }
  auto keep = file.filename().string();
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    auto name = entry.path().filename().string();
    if (is_index_cache(name) && name != keep) fs::remove(entry.path(), ec);
  }
}

std::vector<std::vector<SearchResult>> Collection::search(
    const float* queries, std::int64_t nq, int k, const std::vector<std::int64_t>& exclude_ids) {
  if (k < 1) throw index::IndexError("search: k must be at least 1, got " + std::to_string(k));
  auto& idx = index();
  std::unordered_set<std::int64_t> excluded(exclude_ids.begin(), exclude_ids.end());
  // Ask for enough extra hits that k remain after the excluded ones are dropped.
  auto want = std::min<std::int64_t>(std::int64_t{k} + static_cast<std::int64_t>(excluded.size()),
                                     std::max<std::int64_t>(idx.size(), k));
  auto hits = idx.search(queries, nq, static_cast<int>(std::min<std::int64_t>(want, INT_MAX)));

  std::vector<std::int64_t> wanted;
  for (const auto& list : hits) {
    for (const auto& h : list) wanted.push_back(h.id);
  }
  std::unordered_map<std::int64_t, ImageRecord> records;
  for (auto& r : catalog_->get_many(wanted)) records.emplace(r.id, std::move(r));

  std::vector<std::vector<SearchResult>> out(hits.size());
  for (std::size_t q = 0; q < hits.size(); ++q) {
    for (const auto& h : hits[q]) {
      if (static_cast<int>(out[q].size()) == k) break;
      if (excluded.count(h.id)) continue;
      auto it = records.find(h.id);
      if (it == records.end()) continue;  // removed by another process since the index was read
      out[q].push_back({static_cast<int>(out[q].size()) + 1, it->second, h.score});
    }
  }
  return out;
}

CollectionInfo Collection::info() const {
  CollectionInfo i;
  i.dir = dir_;
  i.count = catalog_->count();
  i.config = config_;
  i.generation = catalog_->generation();
  auto db = dir_ / kCatalogFile;
  i.catalog_bytes =
      file_bytes(db) + file_bytes(db.string() + "-wal") + file_bytes(db.string() + "-shm");
  i.index_bytes = file_bytes(index_path(i.generation));
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir_, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) i.total_bytes += file_bytes(it->path());
  }
  return i;
}

}  // namespace lookalike::store
