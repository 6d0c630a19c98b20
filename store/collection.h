// A collection is a directory:
//   catalog.db            SQLite catalog (source of truth, WAL), see store/catalog.h
//   index-<gen>.faiss     FAISS index cache for catalog generation <gen>; rebuilt from the
//                         catalog whenever missing, stale or unreadable
//   lock                  advisory lock held by the one writer at a time
// Format and crash-safety argument: docs/collection-format.md.
// Thread-safety: a Collection (its SQLite connection and in-memory index) is used from one
// thread at a time; give each thread or request worker its own, or serialise access. Several
// processes may open one collection: any number of readers (no lock; SQLite WAL snapshots)
// and at most one writer.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "index/vector_index.h"
#include "store/catalog.h"

namespace lookalike::store {

struct SearchResult {
  int rank = 0;  // 1-based
  ImageRecord image;
  float score = 0;  // cosine similarity (metric cosine) or L2 distance (metric l2)
};

struct CollectionInfo {
  std::filesystem::path dir;
  std::int64_t count = 0;
  CatalogConfig config;
  std::int64_t generation = 0;
  std::int64_t catalog_bytes = 0;  // catalog.db + -wal + -shm
  std::int64_t index_bytes = 0;    // current index cache file, 0 when not written yet
  std::int64_t total_bytes = 0;    // everything in the directory
};

class Collection {
 public:
  enum class Mode { Read, Write };
  // Opens an existing collection. Write mode takes the writer lock (throws StoreError
  // "collection <dir> is locked by another lookalike process" when another writer holds it)
  // and deletes leftovers of an interrupted run (*.tmp, index caches of other generations).
  // Throws StoreError when `dir` is not a collection or its catalog is refused (see Catalog).
  static std::unique_ptr<Collection> open(const std::filesystem::path& dir, Mode mode);
  // Creates `dir` (and parents) and an empty catalog with `config` if it is not a collection
  // yet, else opens it for writing; throws StoreError if its config differs from `config` in
  // model_id, dim, metric or factory, or if `config` is invalid (empty model_id, dim < 1,
  // unknown metric, a factory string FAISS rejects): then nothing is created.
  static std::unique_ptr<Collection> create_or_open(const std::filesystem::path& dir,
                                                    const CatalogConfig& config);
  static bool exists(const std::filesystem::path& dir);
  ~Collection();

  const std::filesystem::path& dir() const { return dir_; }
  Catalog& catalog() { return *catalog_; }
  const Catalog& catalog() const { return *catalog_; }
  const CatalogConfig& config() const { return config_; }

  // The FAISS index for the catalog's current generation: loaded from the cache file if it
  // loads and holds as many vectors as the catalog, else rebuilt from the catalog's embeddings
  // (trained on all of them first when the factory needs training) and, in Write mode, saved.
  // A damaged cache file is logged and rebuilt, never fatal. Throws index::IndexError when the
  // rebuild itself fails (e.g. fewer vectors than an IVF factory's lists).
  index::VectorIndex& index();
  // True when the current in-memory index came from the cache file as is.
  bool index_from_cache() const { return index_from_cache_; }

  // Commits to the catalog first (source of truth, durable on return), then updates the
  // in-memory index if it is loaded (if that fails, the next index() call rebuilds it).
  // Throws StoreError as Catalog::write_batch does, and for a metric cosine collection when an
  // embedding's L2 norm is not 1 (+-1e-3); nothing is written then.
  std::vector<std::int64_t> apply(const std::vector<Put>& puts,
                                  const std::vector<std::int64_t>& removes);
  // Writes index-<generation>.faiss atomically and deletes other cache files; does nothing when
  // that file already holds the in-memory index. Write mode only (else StoreError).
  void save_index();

  // queries: nq x dim float32 row-major (L2-normalised for cosine). Results best first, at most
  // k each; `exclude_ids` are skipped (e.g. the query image itself for --id). Throws
  // index::IndexError when k < 1.
  std::vector<std::vector<SearchResult>> search(const float* queries, std::int64_t nq, int k,
                                                const std::vector<std::int64_t>& exclude_ids = {});
  CollectionInfo info() const;

 private:
  Collection() = default;
  std::filesystem::path index_path(std::int64_t generation) const;
  void lock();
  void remove_leftovers();
  void load_or_rebuild(std::int64_t generation);
  void rebuild();
  void update_index(const std::vector<Put>& puts, const std::vector<std::int64_t>& ids,
                    const std::vector<std::int64_t>& removes);

  std::filesystem::path dir_;
  Mode mode_ = Mode::Read;
  int lock_fd_ = -1;
  CatalogConfig config_;
  std::unique_ptr<Catalog> catalog_;
  std::optional<index::VectorIndex> index_;
  std::int64_t index_generation_ = -1;
  bool index_from_cache_ = false;
  bool index_saved_ = false;  // the cache file of index_generation_ holds index_
};

}  // namespace lookalike::store
