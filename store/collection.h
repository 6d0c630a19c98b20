// A collection is a directory:
//   catalog.db            SQLite catalog (source of truth, WAL), see store/catalog.h
//   index-<gen>.faiss     FAISS index cache for catalog generation <gen>; rebuilt from the
//                         catalog whenever missing, stale or unreadable
//   lock                  advisory lock held by the one writer at a time
// Format: docs/collection-format.md.
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
  // Opens an existing collection. Write mode takes the writer lock (throws StoreError when
  // another writer holds it). Throws StoreError when `dir` is not a collection.
  static std::unique_ptr<Collection> open(const std::filesystem::path& dir, Mode mode);
  // Creates `dir` (and parents) and an empty catalog with `config` if it is not a collection
  // yet, else opens it for writing; throws StoreError if its config differs from `config` in
  // model_id, dim, metric or factory.
  static std::unique_ptr<Collection> create_or_open(const std::filesystem::path& dir,
                                                    const CatalogConfig& config);
  static bool exists(const std::filesystem::path& dir);
  ~Collection();

  const std::filesystem::path& dir() const { return dir_; }
  Catalog& catalog() { return *catalog_; }
  const Catalog& catalog() const { return *catalog_; }
  const CatalogConfig& config() const { return config_; }

  // The FAISS index, loaded from the cache if it matches the catalog generation, else rebuilt
  // from the catalog's embeddings (and, in Write mode, saved).
  index::VectorIndex& index();

  // Commits to the catalog first (source of truth), then applies to the in-memory index.
  std::vector<std::int64_t> apply(const std::vector<Put>& puts,
                                  const std::vector<std::int64_t>& removes);
  // Writes index-<generation>.faiss atomically and deletes older cache files. Write mode only.
  void save_index();

  // queries: nq x dim float32 row-major (L2-normalised for cosine). Results best first;
  // `exclude_ids` are skipped (e.g. the query image itself for --id).
  std::vector<std::vector<SearchResult>> search(const float* queries, std::int64_t nq, int k,
                                                const std::vector<std::int64_t>& exclude_ids = {});
  CollectionInfo info() const;

 private:
  Collection() = default;
  std::filesystem::path dir_;
  Mode mode_ = Mode::Read;
  int lock_fd_ = -1;
  CatalogConfig config_;
  std::unique_ptr<Catalog> catalog_;
  std::optional<index::VectorIndex> index_;
  std::int64_t index_generation_ = -1;
};

}  // namespace lookalike::store
