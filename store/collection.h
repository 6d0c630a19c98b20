// A collection is a directory:
//   catalog.db            SQLite catalog (source of truth, WAL), see store/catalog.h
//   index-<gen>.faiss     index cache for catalog generation <gen>, bound to the catalog's
//                         collection_id; rebuilt from the catalog whenever missing, stale or
//                         unreadable
//   lock                  advisory lock held by the one writer at a time
//   uploads/              images uploaded through the engine; uploads/orphaned/ holds upload
//                         files that the catalog did not list when a writer opened
// Format, crash safety and the concurrency design: docs/collection-format.md, docs/engine.md.
//
// Thread-safety (one process): every method may be called from any number of threads at once.
// Reads (search, get, list, info, ...) run in parallel, each on a pooled read-only SQLite
// connection; writes (apply, set_metadata, save_index) are serialised by a writer mutex. A
// search sees exactly one committed generation: its index hits and the catalog rows it returns
// come from the same generation (it retries when a writer committed in between), so it never
// returns an id whose row is gone nor half a batch. A search waits for a writer only while the
// writer swaps the in-memory index (O(batch) work under an exclusive lock), never during its
// forward pass or its SQLite commit.
// Several processes: any number of readers (no lock; SQLite WAL snapshots) and at most one
// writer (flock). A Read-mode collection that finds the catalog newer than its index reloads
// (or rebuilds) the index before answering.
#pragma once

#include <pthread.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

#include "index/vector_index.h"
#include "store/catalog.h"

namespace lookalike::store {

// Largest top-k a search accepts (Elasticsearch's index.max_result_window is the same 10,000):
// a bound on the memory a single request may ask for.
inline constexpr int kMaxTopK = 10'000;

struct SearchResult {
  int rank = 0;  // 1-based
  ImageRecord image;
  float score = 0;  // cosine similarity (metric cosine) or L2 distance (metric l2)
};

// What a search asks beyond the queries and k (see Collection::search).
struct SearchSpec {
  std::vector<std::int64_t> exclude_ids;   // never returned (e.g. the query image itself)
  const MetadataFilter* filter = nullptr;  // only matching images; null or empty: all
  index::SearchParams params;              // per query; 0 fields: the collection's defaults
};

// What a search did.
struct SearchReport {
  std::int64_t generation = 0;       // the generation the results come from
  index::SearchPlan plan;            // index or exact-subset, effective parameters
  double filter_ms = 0;              // resolving the filter to ids in the catalog
  std::int64_t filter_matches = -1;  // images the filter selected; -1 without a filter
};

// Search-time defaults of a collection as stored in the catalog (CatalogConfig::search_defaults,
// a JSON object {"nprobe": N, "ef_search": N, "rerank": N}; absent keys are 0). Throws
// StoreError naming the key for a value that is not a non-negative integer.
index::SearchParams parse_search_defaults(const std::string& json_text);
// The same as a JSON object with the non-zero fields only ({} when all are 0): the catalog's
// stored form, and what the CLI and the server report as a search's parameters.
nlohmann::json search_params_json(const index::SearchParams& params);
std::string search_defaults_json(const index::SearchParams& params);  // search_params_json, as text

// What reindex() did.
struct ReindexSummary {
  std::string old_factory, new_factory;
  std::int64_t vectors = 0;
  double build_seconds = 0;
  std::string status;  // VectorIndex::status() of the new index
};

struct CollectionInfo {
  std::filesystem::path dir;
  std::string collection_id;
  std::int64_t count = 0;
  CatalogConfig config;
  std::int64_t generation = 0;
  std::int64_t catalog_bytes = 0;       // catalog.db + -wal + -shm
  std::int64_t index_bytes = 0;         // current index cache file, 0 when not written yet
  std::int64_t total_bytes = 0;         // everything in the directory
  std::int64_t index_vectors = 0;       // live vectors in the in-memory index
  std::int64_t index_deleted = 0;       // tombstoned slots awaiting compaction
  std::string index_status;             // VectorIndex::status(), e.g. "exact search until ..."
  std::int64_t index_memory_bytes = 0;  // VectorIndex::memory_bytes()
  std::int64_t index_mapped_bytes = 0;  // memory-mapped IVF lists (file-backed pages)
  std::string index_search_path;        // "selector" | "over-fetch"
  index::SearchParams index_params;     // effective search-time defaults
  std::int64_t exact_subset_limit = 0;  // filters selecting at most this many ids score exactly
  std::vector<CorruptVector> corrupt;   // stored vectors left out of the index
};

// A shared/exclusive lock that prefers writers (glibc's default rwlock prefers readers, so a
// stream of searches could starve the writer's index swap forever).
class RwLock {
 public:
  RwLock();
  ~RwLock();
  RwLock(const RwLock&) = delete;
  RwLock& operator=(const RwLock&) = delete;
  void lock_shared() { pthread_rwlock_rdlock(&lock_); }
  void unlock_shared() { pthread_rwlock_unlock(&lock_); }
  void lock() { pthread_rwlock_wrlock(&lock_); }
  void unlock() { pthread_rwlock_unlock(&lock_); }

 private:
  pthread_rwlock_t lock_;
};

class Collection {
 public:
  enum class Mode { Read, Write };
  // What create_or_open made, so that a run that then stores nothing can take it back
  // (undo_creation).
  struct Creation {
    bool catalog = false;  // catalog.db was created (or replaced an unfinished one)
    std::vector<std::filesystem::path> folders;  // folders created for it, deepest first
    std::set<std::string> existing;              // the folder's entries before
  };
  // Opens an existing collection and loads its index (cache file or rebuild). Write mode takes
  // the writer lock (throws StoreError "collection <dir> is locked by another lookalike
  // process" when another writer holds it), deletes leftovers of an interrupted run (*.tmp,
  // index caches of other generations), moves upload files that no row lists to
  // uploads/orphaned/ (never deletes them: the catalog may be an older backup; a warning names
  // the count and the folder), and reads every stored vector when it uses the index cache, so
  // that corrupt_ids() is right (O(vectors): 0.45 s at 100,000 1280-d vectors). Throws
  // StoreError when `dir` is not a collection or its catalog is refused (see Catalog), "<dir>/
  // catalog.db: the catalog is missing (or empty) while the collection's other files are
  // there ...: it was lost or damaged. Restore catalog.db from a backup ..." (see exists), or
  // "<dir>: cannot read the collection: <cause>" when the folder cannot be looked into.
  static std::unique_ptr<Collection> open(const std::filesystem::path& dir, Mode mode);
  // Opens `dir` for writing, creating it first when it is not a collection yet: the catalog
  // appears atomically, complete with `config` (Catalog::create_atomic), so a kill or a full
  // disk during creation leaves no half collection, and a creation that fails takes back what it
  // made (the lock file, the folders); an empty or config-less catalog.db left by an older
  // version is replaced, but not a missing or empty one beside a collection's other files
  // (StoreError, as exists). Throws StoreError if the existing config differs from
  // `config` in model_id, dim, metric or factory, or if `config` is invalid (empty model_id,
  // dim < 1, unknown metric, a factory string VectorIndex::validate_factory refuses): then
  // nothing is created. `creation`, when given, receives what was made (see undo_creation).
  static std::unique_ptr<Collection> create_or_open(const std::filesystem::path& dir,
                                                    const CatalogConfig& config,
                                                    Creation* creation = nullptr);
  // Takes back a creation that stored nothing: when `creation.catalog` is set and `c` holds no
  // image, closes `c` (reset) and deletes what create_or_open made: catalog.db with its -wal
  // and -shm, and the lock file and index caches that were not in the folder before (all while
  // it still holds the writer lock, released last), then the folders it created, each only if
  // empty. Never anything else. Returns whether it did;
  // otherwise (it holds images, or they cannot be counted) `c` is left open. Does not throw.
  static bool undo_creation(std::unique_ptr<Collection>& c, const Creation& creation);
  // Whether `dir` holds a collection: a catalog.db that is not the leftover of an interrupted
  // creation (see unfinished). Throws StoreError "<dir>: cannot read the collection: <cause>"
  // (the system's words, e.g. "Permission denied", "Not a directory") when it cannot tell: a
  // folder that cannot be looked into is not "no collection". Throws StoreError "<dir>/
  // catalog.db: the catalog is missing (or: empty (0 bytes)) while the collection's other files
  // are there (<what>): it was lost or damaged. Restore catalog.db from a backup ...; nothing
  // was changed" when catalog.db is missing or empty but the folder holds upload files, an
  // index-*.faiss or a catalog.db-wal of some size: what only a collection that had a catalog
  // leaves.
  static bool exists(const std::filesystem::path& dir);
  // Whether `dir` holds a catalog.db that an interrupted creation left: 0 bytes, or a lookalike
  // catalog without config and without images. It is no collection: create_or_open replaces
  // it, and open() refuses it. Throws as exists() does.
  static bool unfinished(const std::filesystem::path& dir);
  // Refuses a config before anything is created for it (see create_or_open).
  static void validate_config(const std::filesystem::path& dir, const CatalogConfig& config);
  ~Collection();

  const std::filesystem::path& dir() const { return dir_; }
  const CatalogConfig& config() const { return config_; }
  const std::string& collection_id() const { return collection_id_; }
  Mode mode() const { return mode_; }

  // Catalog reads on a pooled read-only connection (see Catalog for each).
  std::optional<ImageRecord> get(std::int64_t id) const;
  std::vector<ImageRecord> get_many(const std::vector<std::int64_t>& ids) const;
  std::optional<ImageRecord> find_path(const std::string& path) const;
  // Images whose stored content_hash is `content_hash`, by id.
  std::vector<ImageRecord> find_hash(const std::string& content_hash) const;
  std::vector<ImageRecord> list() const;
  std::vector<ImageRecord> list_page(std::int64_t after_id, int limit,
                                     const MetadataFilter* filter = nullptr) const;
  std::vector<std::pair<std::string, std::int64_t>> facet(const std::string& field,
                                                          int limit) const;
  std::vector<std::string> metadata_fields(int limit) const;
  bool has_metadata_field(const std::string& field) const;
  std::vector<std::int64_t> ids_under(const std::string& path) const;
  std::optional<std::vector<float>> embedding(std::int64_t id) const;
  std::optional<std::vector<float>> embedding_by_hash(const std::string& content_hash) const;
  // Catalog::embeddings: the stored vectors of ids[0..n) into out (n x dim), found[i] per id.
  void embeddings(const std::int64_t* ids, std::int64_t n, float* out, bool* found) const;
  std::int64_t count() const;  // O(n) in SQLite; not for per-batch paths
  // The generation the in-memory index reflects (what a search sees now).
  std::int64_t generation() const;
  // True when the in-memory index came from the cache file as is (not rebuilt).
  bool index_from_cache() const;
  std::int64_t index_size() const;  // live vectors in the in-memory index
  // Ids whose stored vector failed its checks (left out of the index). Complete in Write mode
  // (the open reads every stored vector) and after check_integrity; a Read-mode open whose
  // cache file was used as is may not know them.
  std::unordered_set<std::int64_t> corrupt_ids() const;

  // A hint that about `more` images are about to be added (index::VectorIndex::reserve): the
  // in-memory index grows once instead of doubling. Write mode only; no effect otherwise.
  void reserve_index(std::int64_t more);

  // Write mode only (else StoreError). Commits to the catalog first (durable on return), then
  // applies the batch to the in-memory index under the exclusive lock: O(puts + removes)
  // index work, whatever the collection's size. When the index's tombstoned share passes
  // index::kCompactFraction, the index is rebuilt from the catalog beside the live one and
  // swapped in. Every embedding of the batch is checked first, as reads check stored vectors
  // (store::vector_problem: `dim` floats, all finite, L2 norm 1 +-1e-3 for metric cosine): one
  // that fails throws StoreError "<dir>/catalog.db: put[i] (<path>[, image <id>]): <reason>;
  // nothing written", as do the other refusals of Catalog::write_batch, and then neither the
  // catalog nor the index changes.
  std::vector<std::int64_t> apply(const std::vector<Put>& puts,
                                  const std::vector<std::int64_t>& removes);
  // Write mode only. Replaces an image's metadata (a JSON object's text); false when no such
  // id. Bumps the generation.
  bool set_metadata(std::int64_t id, const std::string& metadata);
  // Catalog::last_id_assigned; and, write mode only, Catalog::reserve_ids_through.
  std::int64_t last_id_assigned() const;
  void reserve_ids_through(std::int64_t id);
  // Write mode only. Catalog::set_picture_hashes (the generation and the index are untouched).
  std::int64_t set_picture_hashes(const std::vector<Catalog::PictureHashUpdate>& updates);
  // Writes index-<generation>.faiss atomically and deletes other cache files; does nothing when
  // that file already holds the in-memory index. Write mode only (else StoreError). Searches go
  // on while it writes; writers wait.
  void save_index();

  // queries: nq x dim float32 row-major (L2-normalised for cosine). Results best first, at most
  // k each (fewer when the collection holds fewer); `exclude_ids` are skipped (e.g. the query
  // image itself). Throws StoreError "k must be between 1 and 10000" for k outside
  // [1, kMaxTopK], and index::IndexError when FAISS fails. `generation`, when given, receives
  // the generation the results come from. With a non-empty `filter`, only images matching it
  // are returned (resolved in the catalog at the same generation as the index hits, then
  // applied inside the index search: min(k, matches) hits from an exact index).
  std::vector<std::vector<SearchResult>> search(const float* queries, std::int64_t nq, int k,
                                                const std::vector<std::int64_t>& exclude_ids = {},
                                                std::int64_t* generation = nullptr,
                                                const MetadataFilter* filter = nullptr) const;
  // The same with per-query search parameters and a report. A filter that selects at most
  // VectorIndex::exact_subset_limit() images is answered by scoring those images exactly;
  // lossy indexes (PQ, SQ) re-rank with the catalog's stored vectors when params.rerank (or the
  // collection default) is set.
  std::vector<std::vector<SearchResult>> search(const float* queries, std::int64_t nq, int k,
                                                const SearchSpec& spec,
                                                SearchReport* report = nullptr) const;
  // Write mode only. Rebuilds the index with `factory` from the catalog's stored vectors (no
  // image is decoded or embedded) and stores `factory` and `defaults` as the collection's index
  // configuration, in one catalog transaction; searches go on against the old index until the
  // new one is swapped in. Throws StoreError for an invalid factory (nothing changes) and as
  // Catalog::set_index_config does.
  ReindexSummary reindex(const std::string& factory, const index::SearchParams& defaults);
  // Write mode only. Stores new search-time defaults (keeps the index).
  void set_search_defaults(const index::SearchParams& defaults);
  // Write mode only (else StoreError). Catalog::set_preprocess: records the preprocessing of the
  // model that writes here (canonical text and fingerprint, CatalogConfig::preprocess*) when none
  // is recorded (a collection from before schema 5), and config() reports it from then on. True
  // when it wrote, false when the same fingerprint was recorded already; throws StoreError when
  // another one is. The generation and the index are untouched. O(1).
  bool record_preprocess(const std::string& canonical, const std::string& fingerprint);
  CollectionInfo info() const;
  // Reads every page of the catalog (SQLite quick_check, O(file size)); throws StoreError naming
  // catalog.db, the first problem and how to recover when it is damaged. Write-mode opens run it
  // already. Then reads every stored vector (O(vectors), 0.45 s at 100,000 1280-d vectors) and
  // records those that fail their checks, so that info() and corrupt_ids() list them whatever
  // the index was loaded from.
  void check_integrity() const;

 private:
  struct Built;
  class Lease;
  Collection() = default;
  std::filesystem::path index_path(std::int64_t generation) const;
  void lock();
  void remove_leftovers(std::int64_t generation);
  void sweep_uploads();
  std::int64_t quarantine(const std::vector<std::filesystem::path>& files) const;
  static bool create_catalog(const std::filesystem::path& dir, const CatalogConfig& config);
  static bool is_tmp_upload(const std::string& name);
  bool is_orphan_upload(const std::string& name) const;
  void require_write(const char* what) const;
  std::unique_ptr<Catalog> acquire() const;
  void release(std::unique_ptr<Catalog> c) const;
  template <class F>
  auto reading(F&& f) const;
  Built build_from_catalog(const Catalog& catalog) const;
  Built build_from_catalog(const Catalog& catalog, const std::string& factory) const;
  void load_or_rebuild(const Catalog& catalog);
  void refresh_if_stale(std::int64_t catalog_generation) const;
  void install(Built built) const;
  void maybe_compact();

  std::filesystem::path dir_;
  Mode mode_ = Mode::Read;
  int lock_fd_ = -1;
  // factory and search_defaults change on reindex (and, in Read mode, when another process
  // reindexed), preprocess* when record_preprocess records them: written under index_lock_ held
  // exclusively.
  mutable CatalogConfig config_;
  std::string collection_id_;
  std::unique_ptr<Catalog> writer_;  // Write mode; used under write_mu_
  std::mutex write_mu_;

  mutable std::mutex pool_mu_;
  mutable std::vector<std::unique_ptr<Catalog>> idle_;

  // The in-memory index and what it reflects, guarded by index_lock_.
  mutable RwLock index_lock_;
  mutable std::unique_ptr<index::VectorIndex> index_;
  mutable std::int64_t index_generation_ = -1;
  mutable bool index_saved_ = false;  // the cache file of index_generation_ holds index_
  mutable bool index_from_cache_ = false;
  mutable std::vector<CorruptVector> corrupt_;
  mutable std::mutex refresh_mu_;  // Read mode: one reload at a time
};

}  // namespace lookalike::store
