#include "store/collection.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <utility>

namespace lookalike::store {

namespace {

namespace fs = std::filesystem;

constexpr const char* kCatalogFile = "catalog.db";
constexpr const char* kLockFile = "lock";
constexpr std::size_t kAddChunk = 4096;  // vectors per index add during a rebuild

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

// Whether dir/catalog.db is a non-empty regular file. Only "no such file" reads as "no": any
// other failure to look (EACCES, ENOTDIR, EIO) throws, naming the folder and the system's
// words, rather than pass for an empty folder.
bool has_catalog_file(const fs::path& dir) {
  const auto db = dir / kCatalogFile;
  struct stat st {};
  if (::stat(db.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) return false;
    throw StoreError(dir.string() + ": cannot read the collection: " + std::strerror(err));
  }
  return S_ISREG(st.st_mode) && st.st_size > 0;
}

// A catalog.db that an interrupted creation by an older version left behind: empty, or a
// lookalike catalog without config and without images. Such a file holds nothing to keep.
bool is_unfinished_catalog(const fs::path& db) {
  if (file_bytes(db) == 0) return true;
  try {
    auto c = Catalog::open_read_only(db);
    return !c->config() && c->count() == 0;
  } catch (const StoreError&) {
    return false;  // someone else's file, or damaged: let open() report it
  }
}

index::Metric metric_of(const CatalogConfig& c) { return index::parse_metric(c.metric); }

constexpr const char* kUploads = "uploads";
constexpr const char* kOrphaned = "orphaned";  // uploads/orphaned/: swept files, never swept again

// Named like an upload (engine::Engine::add_image): <32 lowercase hex digits>.<format>.
bool is_upload_name(const std::string& name) {
  constexpr std::size_t kHashChars = 32;  // pipeline::content_hash: XXH3-128 in hex
  const auto dot = name.find('.');
  return dot == kHashChars && dot + 1 < name.size() &&
         name.substr(0, dot).find_first_not_of("0123456789abcdef") == std::string::npos &&
         !name.ends_with(".tmp");
}

std::int64_t count_uploads(const fs::path& folder) {
  std::int64_t n = 0;
  std::error_code ec;
  for (auto it = fs::directory_iterator(folder, ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    n += is_upload_name(it->path().filename().string());
  }
  return n;
}

// What only a collection that had a catalog leaves in `dir`: upload files, index caches (each
// bound to a catalog's collection_id), a catalog.db-wal holding commits. An interrupted creation
// leaves none of these (it writes catalog.db.tmp, then renames it).
std::vector<std::string> collection_traces(const fs::path& dir) {
  std::vector<std::string> out;
  const auto uploads = count_uploads(dir / kUploads) + count_uploads(dir / kUploads / kOrphaned);
  if (uploads > 0)
    out.push_back(std::string(kUploads) + "/ with " + std::to_string(uploads) + " uploaded image" +
                  (uploads == 1 ? "" : "s"));
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    const auto name = it->path().filename().string();
    if (is_index_cache(name)) out.push_back(name);
  }
  const auto wal = file_bytes(dir / (std::string(kCatalogFile) + "-wal"));
  if (wal > 0)
    out.push_back(std::string(kCatalogFile) + "-wal of " + std::to_string(wal) + " bytes");
  return out;
}

// Refuses a folder whose catalog.db is missing or empty (0 bytes) while the rest of a collection
// is there: the catalog was lost or damaged, and neither a new catalog nor "no collection" would
// be the truth (a writer would start afresh and sweep the uploads). Changes nothing.
void refuse_lost_catalog(const fs::path& dir) {
  const auto traces = collection_traces(dir);
  if (traces.empty()) return;
  const auto db = dir / kCatalogFile;
  std::error_code ec;
  const bool missing = !fs::exists(db, ec);
  std::string listed;
  for (const auto& t : traces) listed += (listed.empty() ? "" : ", ") + t;
  throw StoreError(db.string() + ": the catalog is " + (missing ? "missing" : "empty (0 bytes)") +
                   " while the collection's other files are there (" + listed +
                   "): it was lost or damaged. Restore catalog.db from a backup (the copy of "
                   "the collection's catalog.db, or `sqlite3 catalog.db .backup` output); "
                   "nothing was changed");
}

// What a write-mode open prints about stored vectors that fail their checks.
// `what`: what became of them ("left out of the index" when the index was built from the
// catalog, "not in the index" when it came from a cache file).
void warn_corrupt(const fs::path& db, const Catalog& catalog,
                  const std::vector<CorruptVector>& corrupt, const char* what) {
  for (const auto& bad : corrupt) {
    auto rec = catalog.get(bad.id);
    spdlog::warn("{}: image {} ({}): stored {}; {} (re-index the file)", db.string(), bad.id,
                 rec ? rec->path : "?", bad.reason, what);
  }
}

// Every stored vector that fails its checks (Catalog::for_each_embedding): reads every blob,
// O(vectors). See Collection::check_integrity for its cost.
std::vector<CorruptVector> scan_vectors(const Catalog& catalog) {
  std::vector<CorruptVector> corrupt;
  catalog.for_each_embedding([](std::int64_t, const float*) {}, &corrupt);
  return corrupt;
}

}  // namespace

RwLock::RwLock() {
  pthread_rwlockattr_t attr;
  pthread_rwlockattr_init(&attr);
  pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&lock_, &attr);
  pthread_rwlockattr_destroy(&attr);
}

RwLock::~RwLock() { pthread_rwlock_destroy(&lock_); }

// An index built from the catalog, with the generation of the snapshot it was read from.
struct Collection::Built {
  std::unique_ptr<index::VectorIndex> index;
  std::int64_t generation = 0;
  std::vector<CorruptVector> corrupt;
  bool from_cache = false;
};

bool Collection::exists(const fs::path& dir) {
  if (!has_catalog_file(dir)) {
    refuse_lost_catalog(dir);
    return false;
  }
  return !is_unfinished_catalog(dir / kCatalogFile);
}

bool Collection::unfinished(const fs::path& dir) {
  const auto db = dir / kCatalogFile;
  struct stat st {};
  if (::stat(db.c_str(), &st) != 0) {
    has_catalog_file(dir);  // throws unless it is "no such file"
    refuse_lost_catalog(dir);
    return false;
  }
  if (st.st_size == 0) refuse_lost_catalog(dir);
  return S_ISREG(st.st_mode) && is_unfinished_catalog(db);
}

void Collection::validate_config(const fs::path& dir, const CatalogConfig& c) {
  auto refuse = [&](const std::string& why) {
    return StoreError("collection " + dir.string() + ": invalid config: " + why);
  };
  if (c.model_id.empty()) throw refuse("model_id is empty");
  if (c.dim < 1) throw refuse("dim must be positive, got " + std::to_string(c.dim));
  try {
    index::VectorIndex::validate_factory(c.dim, index::parse_metric(c.metric), c.factory);
  } catch (const index::IndexError& e) {
    throw refuse(e.what());
  }
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

void Collection::remove_leftovers(std::int64_t generation) {
  auto keep = index_path(generation).filename().string();
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    auto name = entry.path().filename().string();
    bool tmp = (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) ||
               name.rfind("catalog.db.tmp", 0) == 0;  // and its -journal / -wal / -shm
    if (tmp || (is_index_cache(name) && name != keep)) fs::remove(entry.path(), ec);
  }
  sweep_uploads();
}

// Upload files no row lists are moved aside, never deleted: the catalog may be the one that is
// wrong (restored from a backup older than the uploads, or replaced), and then those files are
// the only copy of the photos. Only *.tmp files go: an upload killed while writing its file
// (engine::Engine::add_image writes uploads/<hash>.<format>.tmp, then renames it, then commits),
// which no row ever names and whose request never succeeded.
void Collection::sweep_uploads() {
  const auto uploads = dir_ / kUploads;
  std::error_code ec;
  std::vector<fs::path> orphans;
  for (const auto& entry : fs::directory_iterator(uploads, ec)) {
    auto name = entry.path().filename().string();
    if (is_tmp_upload(name)) {
      fs::remove(entry.path(), ec);
    } else if (is_orphan_upload(name)) {
      orphans.push_back(entry.path());
    }
  }
  if (orphans.empty()) return;
  const auto moved = quarantine(orphans);
  spdlog::warn(
      "{}: {} upload file{} that no catalog row lists {} moved to {} (a catalog restored from "
      "a backup older than them, or an upload or removal cut short); nothing was deleted. To "
      "get them back, upload them again, or restore the catalog that lists them and move them "
      "back to {}/; delete that folder once you no longer need them",
      uploads.string(), moved, moved == 1 ? "" : "s", moved == 1 ? "was" : "were",
      (uploads / kOrphaned).string(), uploads.string());
}

// Moves `files` into uploads/orphaned/ (never over a file there: a taken name gets a numbered
// suffix); returns how many moved. One that cannot be moved stays where it is, with a warning.
std::int64_t Collection::quarantine(const std::vector<fs::path>& files) const {
  const auto folder = dir_ / kUploads / kOrphaned;
  std::error_code ec;
  fs::create_directories(folder, ec);
  std::int64_t moved = 0;
  for (const auto& f : files) {
    auto target = folder / f.filename();
    for (int n = 2; fs::exists(target, ec); ++n) {
      target = folder / (f.filename().string() + "." + std::to_string(n));
    }
    fs::rename(f, target, ec);
    if (ec) {
      spdlog::warn("{}: no catalog row lists it, and it cannot be moved to {}: {}; left as it is",
                   f.string(), folder.string(), ec.message());
      continue;
    }
    ++moved;
  }
  return moved;
}

// An upload killed while its file was being written (engine::Engine::add_image writes
// uploads/<hash>.<format>.tmp, then renames it).
bool Collection::is_tmp_upload(const std::string& name) {
  return name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0;
}

// An upload file that no row holds: a catalog restored from an older backup, a kill between
// engine::Engine::remove's commit and its unlink, or between add_image's rename and its commit.
// Uploads are named <content hash>.<format>; a file is kept while any row with that hash has
// that file name (compared by name, not by absolute path, so that a moved collection keeps its
// files), and anything not named like an upload (uploads/orphaned/ included) is left alone.
bool Collection::is_orphan_upload(const std::string& name) const {
  if (!is_upload_name(name)) return false;
  for (const auto& rec : writer_->find_hash(name.substr(0, name.find('.')))) {
    if (fs::path(rec.path).filename() == name) return false;
  }
  return true;
}

void Collection::require_write(const char* what) const {
  if (mode_ != Mode::Write) {
    throw StoreError(dir_.string() + ": " + what + " needs the collection opened for writing");
  }
}

std::unique_ptr<Catalog> Collection::acquire() const {
  {
    std::lock_guard lock(pool_mu_);
    if (!idle_.empty()) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      return c;
    }
  }
  return Catalog::open_read_only(dir_ / kCatalogFile);
}

void Collection::release(std::unique_ptr<Catalog> c) const {
  std::lock_guard lock(pool_mu_);
  idle_.push_back(std::move(c));
}

template <class F>
auto Collection::reading(F&& f) const {
  auto c = acquire();
  // A connection that threw is dropped rather than pooled: it may sit in a failed state.
  auto result = f(*c);
  release(std::move(c));
  return result;
}

std::unique_ptr<Collection> Collection::open(const fs::path& dir, Mode mode) {
  if (!has_catalog_file(dir)) {
    refuse_lost_catalog(dir);
    throw StoreError(dir.string() + ": not a lookalike collection (no " + kCatalogFile + ")");
  }
  std::unique_ptr<Collection> c(new Collection());
  c->dir_ = dir;
  c->mode_ = mode;
  if (mode == Mode::Write) {
    c->lock();
    c->writer_ = Catalog::open(dir / kCatalogFile, false);  // migrates an older schema
  }
  auto primary = mode == Mode::Write ? nullptr : Catalog::open_read_only(dir / kCatalogFile);
  const Catalog& catalog = mode == Mode::Write ? *c->writer_ : *primary;
  auto config = catalog.config();
  if (!config) {
    const auto images = catalog.count();
    if (images == 0) {  // unfinished(dir): create_or_open replaces it
      throw StoreError(dir.string() +
                       ": collection has no config (its creation was interrupted); `lookalike "
                       "index PATH` creates it again");
    }
    throw StoreError(dir.string() + ": collection has no config but holds " +
                     std::to_string(images) +
                     " images (no lookalike leaves such a catalog); it is not replaced: restore "
                     "catalog.db from a backup");
  }
  c->config_ = *config;
  c->collection_id_ = catalog.collection_id();
  if (mode == Mode::Write) c->remove_leftovers(catalog.generation());
  c->load_or_rebuild(catalog);
  if (primary) c->release(std::move(primary));
  return c;
}

std::unique_ptr<Collection> Collection::create_or_open(const fs::path& dir,
                                                       const CatalogConfig& config,
                                                       Creation* creation) {
  validate_config(dir, config);
  if (!has_catalog_file(dir)) refuse_lost_catalog(dir);  // before anything is made
  std::error_code ec;
  Creation made;
  // The folders that do not exist yet, deepest first ("a/b/" names the folder "a/b").
  auto folder = dir.lexically_normal();
  while (!folder.empty() && folder.filename().empty() && folder != folder.root_path())
    folder = folder.parent_path();
  for (auto p = folder; !p.empty() && p != p.parent_path(); p = p.parent_path()) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) == 0 || errno != ENOENT) break;
    made.folders.push_back(p);
  }
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    made.existing.insert(it->path().filename().string());
  }
  fs::create_directories(dir, ec);
  if (ec) throw StoreError(dir.string() + ": cannot create collection directory: " + ec.message());
  {
    // The lock is taken before the catalog exists, so two creators cannot race.
    std::unique_ptr<Collection> guard(new Collection());
    guard->dir_ = dir;
    try {
      guard->lock();
    } catch (const StoreError&) {
      for (const auto& folder : made.folders) fs::remove(folder, ec);  // only when empty
      throw;
    }
    try {
      made.catalog = create_catalog(dir, config);
    } catch (const StoreError&) {
      // A full disk, say: what this call made goes (the lock file before the lock is
      // released, then the folders, each only if empty), so nothing is left behind.
      if (made.existing.count(kLockFile) == 0) fs::remove(dir / kLockFile, ec);
      guard.reset();
      for (const auto& folder : made.folders) fs::remove(folder, ec);
      throw;
    }
  }  // the guard's lock is released; open() takes it again
  if (creation) *creation = made;
  auto c = open(dir, Mode::Write);
  if (!same_identity(c->config_, config)) {
    throw StoreError("collection " + dir.string() + " was created with " + describe(c->config_) +
                     ", not " + describe(config));
  }
  return c;
}

// Under the writer lock: creates dir/catalog.db unless a collection is there, replacing what an
// interrupted creation left (but not a catalog that was lost: refuse_lost_catalog). Returns
// whether it created one.
bool Collection::create_catalog(const fs::path& dir, const CatalogConfig& config) {
  const auto db = dir / kCatalogFile;
  std::error_code ec;
  if (!has_catalog_file(dir)) refuse_lost_catalog(dir);  // again, now that no writer can run
  if (fs::exists(db, ec) && is_unfinished_catalog(db)) {
    for (const char* suffix : {"", "-wal", "-shm", "-journal"})
      fs::remove(db.string() + suffix, ec);
  }
  if (fs::exists(db, ec)) return false;
  Catalog::create_atomic(db, config);
  return true;
}

index::SearchParams parse_search_defaults(const std::string& json_text) {
  index::SearchParams p;
  const auto j = nlohmann::json::parse(json_text.empty() ? "{}" : json_text, nullptr, false);
  if (!j.is_object()) throw StoreError("search_defaults: not a JSON object: " + json_text);
  auto take = [&](const char* key, int& out) {
    auto it = j.find(key);
    if (it == j.end()) return;
    if (!it->is_number_integer() || it->get<std::int64_t>() < 0 ||
        it->get<std::int64_t>() > (1 << 24)) {
      throw StoreError(std::string("search_defaults.") + key +
                       ": expected an integer in 0..16777216, got " + it->dump());
    }
    out = it->get<int>();
  };
  take("nprobe", p.nprobe);
  take("ef_search", p.ef_search);
  take("rerank", p.rerank);
  return p;
}

nlohmann::json search_params_json(const index::SearchParams& p) {
  nlohmann::json j = nlohmann::json::object();
  if (p.nprobe > 0) j["nprobe"] = p.nprobe;
  if (p.ef_search > 0) j["ef_search"] = p.ef_search;
  if (p.rerank > 0) j["rerank"] = p.rerank;
  return j;
}

std::string search_defaults_json(const index::SearchParams& p) {
  return search_params_json(p).dump();
}

bool Collection::undo_creation(std::unique_ptr<Collection>& c, const Creation& creation) {
  if (!c || !creation.catalog) return false;
  try {
    if (c->count() != 0) return false;
  } catch (const StoreError&) {
    return false;  // cannot tell: keep it
  }
  const auto dir = c->dir_;
  // SQLite closes first; the lock is held until the files are gone, so that no other writer
  // opens the catalog that is about to be deleted.
  const int lock_fd = std::exchange(c->lock_fd_, -1);
  c.reset();
  std::error_code ec;
  std::vector<fs::path> doomed;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    const auto name = it->path().filename().string();
    const bool catalog = name == kCatalogFile || name == std::string(kCatalogFile) + "-wal" ||
                         name == std::string(kCatalogFile) + "-shm" ||
                         name == std::string(kCatalogFile) + "-journal";
    const bool ours = name == kLockFile || is_index_cache(name) ||
                      (name.rfind("index-", 0) == 0 && name.ends_with(".faiss.tmp"));
    if (catalog || (ours && creation.existing.count(name) == 0)) doomed.push_back(it->path());
  }
  for (const auto& p : doomed) fs::remove(p, ec);
  if (lock_fd >= 0) ::close(lock_fd);                                  // released last
  for (const auto& folder : creation.folders) fs::remove(folder, ec);  // only when empty
  return true;
}

Collection::~Collection() {
  // The pooled read-only connections close first, so that the writer's connection is the last:
  // a read-only connection cannot checkpoint, and without this every commit would stay in
  // catalog.db-wal, leaving catalog.db alone (what a backup or a copy takes) an empty shell.
  {
    std::lock_guard lock(pool_mu_);
    idle_.clear();
  }
  if (writer_) {
    try {
      writer_->checkpoint();  // catalog.db holds every commit; the WAL is left empty
    } catch (const std::exception& e) {
      try {
        spdlog::warn("{}", e.what());
      } catch (...) {
      }
    }
    writer_.reset();  // close SQLite before the lock is released
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

Collection::Built Collection::build_from_catalog(const Catalog& catalog) const {
  return build_from_catalog(catalog, config_.factory);
}

Collection::Built Collection::build_from_catalog(const Catalog& catalog,
                                                 const std::string& factory) const {
  Built b;
  b.index = std::make_unique<index::VectorIndex>(config_.dim, metric_of(config_), factory);
  const auto dim = static_cast<std::size_t>(config_.dim);
  std::vector<float> vectors;
  std::vector<std::int64_t> ids;
  auto flush = [&] {
    b.index->add(vectors.data(), ids.data(), static_cast<std::int64_t>(ids.size()));
    vectors.clear();
    ids.clear();
  };
  b.generation = catalog.for_each_embedding(
      [&](std::int64_t id, const float* v) {
        vectors.insert(vectors.end(), v, v + dim);
        ids.push_back(id);
        if (ids.size() == kAddChunk) flush();
      },
      &b.corrupt);
  if (!ids.empty()) flush();
  warn_corrupt(dir_ / kCatalogFile, catalog, b.corrupt, "left out of the index");
  return b;
}

void Collection::install(Built built) const {
  try {
    built.index->set_search_defaults(parse_search_defaults(config_.search_defaults));
  } catch (const std::exception& e) {  // a hand-edited meta row must not keep the collection shut
    spdlog::warn("{}: {}; using the built-in search parameters", dir_.string(), e.what());
  }
  std::unique_lock lock(index_lock_);
  index_ = std::move(built.index);
  index_generation_ = built.generation;
  index_saved_ = built.from_cache;
  index_from_cache_ = built.from_cache;
  corrupt_ = std::move(built.corrupt);
}

void Collection::load_or_rebuild(const Catalog& catalog) {
  const auto generation = catalog.generation();
  auto file = index_path(generation);
  std::error_code ec;
  if (fs::exists(file, ec)) {
    try {
      auto loaded = index::VectorIndex::load(file, config_.dim, metric_of(config_), config_.factory,
                                             collection_id_, generation, mode_ == Mode::Read);
      const auto count = catalog.count();
      // The cache holds every stored vector but the corrupt ones. A writer always reads them
      // all (the indexer re-embeds corrupt_ids(); the cache may predate the damage, and then
      // holds a vector that the catalog no longer has); a reader only when the counts differ.
      std::vector<CorruptVector> corrupt;
      if (mode_ == Mode::Write || loaded.size() != count) corrupt = scan_vectors(catalog);
      const auto usable = count - static_cast<std::int64_t>(corrupt.size());
      if (loaded.size() == usable) {
        if (mode_ == Mode::Write)
          warn_corrupt(dir_ / kCatalogFile, catalog, corrupt, "not in the index");
        install({std::make_unique<index::VectorIndex>(std::move(loaded)), generation,
                 std::move(corrupt), true});
        return;
      }
      spdlog::warn("{}: holds {} vectors, the catalog {} usable ones; rebuilding from the catalog",
                   file.string(), loaded.size(), usable);
    } catch (const index::IndexError& e) {
      spdlog::warn("{}; rebuilding the index from the catalog", e.what());
    }
  }
  install(build_from_catalog(catalog));
  if (mode_ == Mode::Write) {
    // A full disk must not keep the writer out (it may be opening to remove images).
    try {
      save_index();
    } catch (const index::IndexError& e) {
      spdlog::warn("{}; the index stays in memory only until the next save", e.what());
    }
  }
}

void Collection::refresh_if_stale(std::int64_t catalog_generation) const {
  // Only a Read-mode collection gets here: another process committed since the index was read.
  std::lock_guard guard(refresh_mu_);
  {
    std::shared_lock lock(index_lock_);
    if (index_generation_ >= catalog_generation) return;  // another thread refreshed it
  }
  auto catalog = acquire();
  const auto generation = catalog->generation();
  if (auto cfg = catalog->config()) {  // another process may have reindexed
    std::unique_lock lock(index_lock_);
    config_.factory = cfg->factory;
    config_.search_defaults = cfg->search_defaults;
  }
  auto file = index_path(generation);
  std::error_code ec;
  Built built;
  if (fs::exists(file, ec)) {
    try {
      built.index = std::make_unique<index::VectorIndex>(index::VectorIndex::load(
          file, config_.dim, metric_of(config_), config_.factory, collection_id_, generation,
          /*map=*/true));
      built.generation = generation;
      built.from_cache = true;
    } catch (const index::IndexError&) {
      built.index.reset();
    }
  }
  if (!built.index) built = build_from_catalog(*catalog);
  release(std::move(catalog));
  install(std::move(built));
}

std::vector<std::int64_t> Collection::apply(const std::vector<Put>& puts,
                                            const std::vector<std::int64_t>& removes) {
  require_write("apply");
  std::lock_guard writer(write_mu_);
  // write_batch checks every put (store::vector_problem: length, finite, cosine norm) before
  // its transaction starts, and the index is touched only after the commit: a refused batch
  // leaves both as they were.
  auto ids = writer_->write_batch(puts, removes);
  if (puts.empty() && removes.empty()) return ids;
  const auto after = writer_->generation();

  // Updated images are replaced in the index (upsert); a path put twice keeps its last vector.
  std::unordered_map<std::int64_t, std::size_t> last;
  for (std::size_t i = 0; i < ids.size(); ++i) last[ids[i]] = i;
  std::vector<float> vectors;
  std::vector<std::int64_t> add_ids;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (last[ids[i]] != i) continue;
    vectors.insert(vectors.end(), puts[i].embedding.begin(), puts[i].embedding.end());
    add_ids.push_back(ids[i]);
  }
  bool failed = false;
  {
    std::unique_lock lock(index_lock_);
    try {
      index_->remove(removes);
      index_->add(vectors.data(), add_ids.data(), static_cast<std::int64_t>(add_ids.size()));
      const std::unordered_set<std::int64_t> removed(removes.begin(), removes.end());
      std::erase_if(corrupt_, [&](const CorruptVector& c) {
        return last.count(c.id) > 0 || removed.count(c.id) > 0;
      });
      index_generation_ = after;
      index_saved_ = false;
      index_from_cache_ = false;
    } catch (const index::IndexError& e) {
      spdlog::warn("{}: in-memory index update failed ({}); rebuilding it from the catalog",
                   dir_.string(), e.what());
      failed = true;
    }
  }
  if (failed) {
    install(build_from_catalog(*writer_));
  } else {
    maybe_compact();
  }
  return ids;
}

void Collection::reserve_index(std::int64_t more) {
  if (writer_ == nullptr) return;
  std::unique_lock lock(index_lock_);
  index_->reserve(more);
}

void Collection::maybe_compact() {
  {
    std::shared_lock lock(index_lock_);
    if (index_->deleted_fraction() <= index::kCompactFraction) return;
  }
  // Built beside the live index (searches go on), swapped in under the exclusive lock. The
  // writer mutex is held, so the catalog cannot move on meanwhile.
  install(build_from_catalog(*writer_));
}

std::int64_t Collection::last_id_assigned() const {
  return reading([&](const Catalog& c) { return c.last_id_assigned(); });
}

void Collection::reserve_ids_through(std::int64_t id) {
  require_write("reserve_ids_through");
  std::lock_guard writer(write_mu_);
  writer_->reserve_ids_through(id);
}

bool Collection::set_metadata(std::int64_t id, const std::string& metadata) {
  require_write("set_metadata");
  std::lock_guard writer(write_mu_);
  if (!writer_->set_metadata(id, metadata)) return false;
  const auto after = writer_->generation();
  std::unique_lock lock(index_lock_);
  index_generation_ = after;  // the vectors are unchanged; the cache file stays valid by content
  index_saved_ = false;
  return true;
}

std::int64_t Collection::set_picture_hashes(
    const std::vector<Catalog::PictureHashUpdate>& updates) {
  require_write("set_picture_hashes");
  std::lock_guard writer(write_mu_);
  return writer_->set_picture_hashes(updates);
}

void Collection::save_index() {
  require_write("save_index");
  std::lock_guard writer(write_mu_);
  std::shared_lock lock(index_lock_);
  auto file = index_path(index_generation_);
  std::error_code ec;
  if (!(index_saved_ && fs::exists(file, ec))) {
    index_->save(file, collection_id_, index_generation_);
    index_saved_ = true;
  }
  auto keep = file.filename().string();
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    auto name = entry.path().filename().string();
    if (is_index_cache(name) && name != keep) fs::remove(entry.path(), ec);
  }
}

std::vector<std::vector<SearchResult>> Collection::search(
    const float* queries, std::int64_t nq, int k, const std::vector<std::int64_t>& exclude_ids,
    std::int64_t* generation_out, const MetadataFilter* filter) const {
  SearchSpec spec;
  spec.exclude_ids = exclude_ids;
  spec.filter = filter;
  SearchReport report;
  auto out = search(queries, nq, k, spec, &report);
  if (generation_out) *generation_out = report.generation;
  return out;
}

std::vector<std::vector<SearchResult>> Collection::search(const float* queries, std::int64_t nq,
                                                          int k, const SearchSpec& spec,
                                                          SearchReport* report) const {
  if (k < 1 || k > kMaxTopK) {
    throw StoreError("k must be between 1 and " + std::to_string(kMaxTopK) + ", got " +
                     std::to_string(k));
  }
  const std::unordered_set<std::int64_t> excluded(spec.exclude_ids.begin(), spec.exclude_ids.end());
  const MetadataFilter* filter = spec.filter;
  const bool filtered = filter != nullptr && !filter->empty();
  // Full vectors for re-ranking and exact subsets: the catalog's stored embeddings.
  const index::VectorSource vectors = [this](const std::int64_t* ids, std::int64_t n, float* out,
                                             bool* found) {
    reading([&](const Catalog& c) {
      c.embeddings(ids, n, out, found);
      return 0;
    });
  };
  index::SearchOptions options;
  options.exclude = excluded.empty() ? nullptr : &excluded;
  options.params = spec.params;
  options.vectors = &vectors;
  SearchReport local;
  SearchReport& r = report ? *report : local;
  for (int attempt = 0;; ++attempt) {
    std::vector<std::vector<index::Hit>> hits;
    std::int64_t seen = 0;
    std::unordered_set<std::int64_t> allowed;
    std::int64_t filter_generation = -1;
    if (filtered) {
      const auto t0 = std::chrono::steady_clock::now();
      auto fs = reading([&](const Catalog& c) { return c.matching(*filter); });
      allowed.insert(fs.ids.begin(), fs.ids.end());
      filter_generation = fs.generation;
      r.filter_matches = static_cast<std::int64_t>(fs.ids.size());
      r.filter_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      options.allow = &allowed;
    }
    {
      std::shared_lock lock(index_lock_);
      hits = index_->search(queries, nq, k, options, &r.plan);
      seen = index_generation_;
    }
    if (filtered && filter_generation != seen && attempt < 1000) {
      if (mode_ == Mode::Read) {
        refresh_if_stale(filter_generation);
      } else {
        std::this_thread::yield();
      }
      continue;
    }
    std::vector<std::int64_t> wanted;
    for (const auto& list : hits) {
      for (const auto& h : list) wanted.push_back(h.id);
    }
    auto snap = reading([&](const Catalog& c) { return c.snapshot(wanted); });
    if (snap.generation != seen && attempt < 1000) {
      // A commit landed between the index search and the catalog read. In this process the
      // writer swaps the index right after its commit: try again once it has. Elsewhere
      // (Read mode, another process writes): reload the index first.
      if (mode_ == Mode::Read) {
        refresh_if_stale(snap.generation);
      } else {
        std::this_thread::yield();
      }
      continue;
    }
    std::unordered_map<std::int64_t, ImageRecord> records;
    for (auto& rec : snap.records) records.emplace(rec.id, std::move(rec));
    std::vector<std::vector<SearchResult>> out(hits.size());
    for (std::size_t q = 0; q < hits.size(); ++q) {
      for (const auto& h : hits[q]) {
        auto it = records.find(h.id);
        if (it == records.end()) continue;  // only after 1000 attempts lost a race
        out[q].push_back({static_cast<int>(out[q].size()) + 1, it->second, h.score});
      }
    }
    r.generation = seen;
    return out;
  }
}

ReindexSummary Collection::reindex(const std::string& factory,
                                   const index::SearchParams& defaults) {
  require_write("reindex");
  try {
    index::VectorIndex::validate_factory(config_.dim, metric_of(config_), factory);
  } catch (const index::IndexError& e) {
    throw StoreError(e.what());
  }
  std::lock_guard writer(write_mu_);
  ReindexSummary summary;
  summary.old_factory = config_.factory;
  summary.new_factory = factory;
  const auto t0 = std::chrono::steady_clock::now();
  Built built = build_from_catalog(*writer_, factory);  // searches go on meanwhile
  summary.build_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string json = search_defaults_json(defaults);
  writer_->set_index_config(factory, json);
  built.generation = writer_->generation();
  built.index->set_search_defaults(defaults);
  summary.vectors = built.index->size();
  summary.status = built.index->status();
  {
    std::unique_lock lock(index_lock_);
    config_.factory = factory;
    config_.search_defaults = json;
  }
  install(std::move(built));
  return summary;
}

void Collection::set_search_defaults(const index::SearchParams& defaults) {
  require_write("set_search_defaults");
  std::lock_guard writer(write_mu_);
  const std::string json = search_defaults_json(defaults);
  writer_->set_index_config(config_.factory, json);
  const auto after = writer_->generation();
  std::unique_lock lock(index_lock_);
  config_.search_defaults = json;
  index_->set_search_defaults(defaults);
  index_generation_ = after;  // the vectors are unchanged
  index_saved_ = false;
}

bool Collection::record_preprocess(const std::string& canonical, const std::string& fingerprint) {
  require_write("record_preprocess");
  std::lock_guard writer(write_mu_);
  const bool wrote = writer_->set_preprocess(canonical, fingerprint);
  std::unique_lock lock(index_lock_);
  config_.preprocess = canonical;
  config_.preprocess_fingerprint = fingerprint;
  return wrote;
}

std::optional<ImageRecord> Collection::get(std::int64_t id) const {
  return reading([&](const Catalog& c) { return c.get(id); });
}
std::vector<ImageRecord> Collection::get_many(const std::vector<std::int64_t>& ids) const {
  return reading([&](const Catalog& c) { return c.get_many(ids); });
}
std::optional<ImageRecord> Collection::find_path(const std::string& path) const {
  return reading([&](const Catalog& c) { return c.find_path(path); });
}
std::vector<ImageRecord> Collection::find_hash(const std::string& content_hash) const {
  return reading([&](const Catalog& c) { return c.find_hash(content_hash); });
}
std::vector<ImageRecord> Collection::list() const {
  return reading([&](const Catalog& c) { return c.list(); });
}
std::vector<ImageRecord> Collection::list_page(std::int64_t after_id, int limit,
                                               const MetadataFilter* filter) const {
  return reading([&](const Catalog& c) { return c.list_page(after_id, limit, filter); });
}
std::vector<std::pair<std::string, std::int64_t>> Collection::facet(const std::string& field,
                                                                    int limit) const {
  return reading([&](const Catalog& c) { return c.facet(field, limit); });
}
std::vector<std::string> Collection::metadata_fields(int limit) const {
  return reading([&](const Catalog& c) { return c.metadata_fields(limit); });
}
bool Collection::has_metadata_field(const std::string& field) const {
  return reading([&](const Catalog& c) { return c.has_metadata_field(field); });
}
std::vector<std::int64_t> Collection::ids_under(const std::string& path) const {
  return reading([&](const Catalog& c) { return c.ids_under(path); });
}
std::optional<std::vector<float>> Collection::embedding(std::int64_t id) const {
  return reading([&](const Catalog& c) { return c.embedding(id); });
}
void Collection::embeddings(const std::int64_t* ids, std::int64_t n, float* out,
                            bool* found) const {
  reading([&](const Catalog& c) {
    c.embeddings(ids, n, out, found);
    return 0;
  });
}
std::optional<std::vector<float>> Collection::embedding_by_hash(const std::string& hash) const {
  return reading([&](const Catalog& c) { return c.embedding_by_hash(hash); });
}
std::int64_t Collection::count() const {
  return reading([&](const Catalog& c) { return c.count(); });
}

std::int64_t Collection::generation() const {
  std::shared_lock lock(index_lock_);
  return index_generation_;
}

bool Collection::index_from_cache() const {
  std::shared_lock lock(index_lock_);
  return index_from_cache_;
}

std::int64_t Collection::index_size() const {
  std::shared_lock lock(index_lock_);
  return index_->size();
}

std::unordered_set<std::int64_t> Collection::corrupt_ids() const {
  std::shared_lock lock(index_lock_);
  std::unordered_set<std::int64_t> out;
  for (const auto& c : corrupt_) out.insert(c.id);
  return out;
}

void Collection::check_integrity() const {
  auto verdict = reading([&](const Catalog& c) { return c.quick_check(); });
  if (verdict != "ok") {
    throw StoreError((dir_ / kCatalogFile).string() +
                     ": catalog is damaged (SQLite quick_check: " + verdict +
                     "). Restore a backup, or recover the rows with `sqlite3 catalog.db "
                     ".recover`");
  }
  // quick_check does not look inside the blobs: read every vector, so that info() lists each
  // corrupt one even when the index came from a cache file that predates the damage.
  auto corrupt = reading([&](const Catalog& c) { return scan_vectors(c); });
  std::unique_lock lock(index_lock_);
  corrupt_ = std::move(corrupt);
}

CollectionInfo Collection::info() const {
  CollectionInfo i;
  i.dir = dir_;
  i.collection_id = collection_id_;
  {
    std::shared_lock lock(index_lock_);
    i.config = config_;
    i.generation = index_generation_;
    i.index_memory_bytes = index_->memory_bytes();
    i.index_mapped_bytes = index_->mapped_bytes();
    i.index_search_path = index::to_string(index_->search_path());
    i.index_params = index_->effective_params();
    i.exact_subset_limit = index_->exact_subset_limit();
    i.index_vectors = index_->size();
    i.index_deleted = index_->deleted();
    i.index_status = index_->status();
    i.corrupt = corrupt_;
  }
  i.count = count();
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
