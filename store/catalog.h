// The catalog: a SQLite database (WAL) that is the source of truth of a collection. It holds
// every image (path, content hash, size, dimensions, mtime, metadata) and its embedding.
// Schema and crash-safety rules: docs/collection-format.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace SQLite {
class Database;
}

namespace lookalike::store {

// Raised for a catalog that cannot be opened, is not a lookalike catalog, has a newer schema,
// or fails a write. what() names the file and the cause. A failed write changes nothing.
class StoreError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline constexpr int kCatalogSchemaVersion = 1;

struct ImageRecord {
  std::int64_t id = 0;       // assigned by the catalog, never reused
  std::string path;          // absolute, lexically normal
  std::string content_hash;  // XXH3-128 of the file bytes, 32 lowercase hex digits
  std::int64_t bytes = 0;    // file size
  int width = 0;             // upright pixel size of the full image
  int height = 0;
  std::int64_t mtime_ns = 0;     // file modification time, ns since the Unix epoch
  std::string metadata = "{}";   // JSON object text (CSV manifest columns, user fields)
  std::int64_t added_at_ms = 0;  // when first added, ms since the Unix epoch
  std::int64_t updated_at_ms = 0;
};

// Fixed when the collection is created.
struct CatalogConfig {
  std::string model_id;    // EmbeddingModel::id(), e.g. "mobilenet_v2@1a2b3c4d5e6f7a8b"
  std::string model_name;  // e.g. "mobilenet_v2": how `search` finds the model again
  int dim = 0;
  std::string metric = "cosine";  // "cosine" | "l2"
  std::string factory = "Flat";   // FAISS factory string
};

struct Put {
  ImageRecord record;            // matched by path: an existing path is updated (keeps its id)
  std::vector<float> embedding;  // dim floats
};

class Catalog {
 public:
  // Opens (create = true: creates if absent, or initialises an empty file) the database at
  // `path` in WAL mode with synchronous=FULL, foreign keys on and a 5 s busy timeout. Migrates
  // an older schema. Throws StoreError "<path>: not a lookalike catalog (...)" for a non-SQLite
  // file or a SQLite file without lookalike's meta, and a StoreError naming both versions for a
  // newer schema_version. One Catalog is used from one thread at a time.
  static std::unique_ptr<Catalog> open(const std::filesystem::path& path, bool create);
  ~Catalog();

  const std::filesystem::path& path() const { return path_; }
  std::optional<CatalogConfig> config() const;
  // Once; throws StoreError if already set differently, or if a field is invalid (dim < 1,
  // unknown metric, empty model_id or factory).
  void set_config(const CatalogConfig& config);

  // Bumped by every committed write_batch/remove; the FAISS cache records the generation it
  // reflects.
  std::int64_t generation() const;
  std::int64_t count() const;

  std::optional<ImageRecord> get(std::int64_t id) const;
  // The records of `ids` that exist, by id, in one query (unknown ids are skipped).
  std::vector<ImageRecord> get_many(const std::vector<std::int64_t>& ids) const;
  std::optional<ImageRecord> find_path(const std::string& path) const;
  std::vector<ImageRecord> find_hash(const std::string& content_hash) const;
  std::vector<ImageRecord> list() const;  // by id
  std::optional<std::vector<float>> embedding(std::int64_t id) const;

  // One transaction: deletes `removes` (ids; unknown ids are ignored), then upserts `puts` (by
  // path) with their embeddings. Returns the id of each put, in order. Bumps the generation
  // once; an empty batch changes nothing. Throws StoreError naming the put (index and path) and
  // field when the catalog has no config, an embedding is not `dim` finite floats, or metadata
  // is not a JSON object; nothing is written then. Durable when it returns (synchronous=FULL).
  std::vector<std::int64_t> write_batch(const std::vector<Put>& puts,
                                        const std::vector<std::int64_t>& removes);

  // Calls fn(id, vector) for every embedding of the config's model, by id. vector: dim floats,
  // valid during the call only. Reads one snapshot and returns the generation it reflects.
  std::int64_t for_each_embedding(const std::function<void(std::int64_t, const float*)>& fn) const;

 private:
  Catalog() = default;
  std::filesystem::path path_;
  std::unique_ptr<SQLite::Database> db_;
};

}  // namespace lookalike::store
