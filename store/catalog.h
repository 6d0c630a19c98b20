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

// 2: meta.collection_id (a random 128-bit id that binds index cache files to their catalog).
// 3: the metadata_terms side table that metadata filters and facets read (an index over the
//    top-level metadata fields), and meta.search_defaults.
// 4: images.phash, phash_95 and phash_90, the perceptual hash of each image (dedup/phash.h);
//    NULL until computed (rows written by an older lookalike get theirs from `duplicates`).
// 5: meta.preprocess and meta.preprocess_fingerprint, the preprocessing of the model card the
//    vectors were made with; absent in a catalog from before until the first model that opens
//    it for writing records its own (Catalog::set_preprocess). A lookalike that does not check
//    them must not write to a collection that has them, hence the bump.
inline constexpr int kCatalogSchemaVersion = 5;

// Perceptual DCT hash of an image's pixels (dedup/phash.h computes it; the catalog only stores
// it): 64 bits each of the whole frame, its central 95% x 95% and its central 90% x 90%.
struct StoredPictureHash {
  std::uint64_t full = 0;
  std::uint64_t center95 = 0;
  std::uint64_t center90 = 0;
};

// An image's metadata is at most this many bytes as stored (compact JSON). Every search hit and
// list page carries it, and a PATCH merges into it, so without a bound one record could grow
// without limit (a review's reached 78 MB, sent whole with every hit). Product catalogues carry
// a few hundred bytes. Enforced where metadata comes in: engine::Engine (uploads, PATCH) and
// pipeline::read_manifest (CSV rows).
inline constexpr std::size_t kMaxMetadataBytes = 64 * 1024;

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
  // images.phash/phash_95/phash_90; unset when not computed yet, or on a read-only connection to a
  // catalog older than schema 4. A put without one keeps the stored hash when its content_hash
  // is the stored one (same bytes, same pixels) and clears it otherwise.
  std::optional<StoredPictureHash> picture_hash;
};

// Fixed when the collection is created.
struct CatalogConfig {
  std::string model_id;    // EmbeddingModel::id(), e.g. "mobilenet_v2@1a2b3c4d5e6f7a8b"
  std::string model_name;  // e.g. "mobilenet_v2": how `search` finds the model again
  int dim = 0;
  std::string metric = "cosine";  // "cosine" | "l2"
  std::string factory = "Flat";   // FAISS factory string
  // Search parameters the index is meant to be queried with, a JSON object's text (e.g.
  // {"nprobe":32,"ef_search":128,"rerank":100}); meta.search_defaults. Tuning, not identity:
  // not compared when a collection is reopened with a config. Changed by set_index_config.
  std::string search_defaults = "{}";
  // The preprocessing the vectors were made with (schema 5): the model card's canonical text
  // (model::preprocess_canonical, e.g. "preprocess/1;resize_policy=...;mean=0.485,0.456,0.406;
  // std=...") in meta.preprocess and its 16-hex-digit digest (model::preprocess_fingerprint) in
  // meta.preprocess_fingerprint. Both empty when not recorded (a catalog older than schema 5 that
  // no model has opened for writing yet; set_preprocess records them). Not identity for
  // set_config / create_or_open: engine::Engine compares them with the model's.
  std::string preprocess;
  std::string preprocess_fingerprint;
};

// A vector that failed the checks made as vectors are read: a blob of dim * 4 bytes, finite
// values, and unit L2 norm (+-1e-3) in a cosine collection. Such a vector is left out of the
// index and reported.
struct CorruptVector {
  std::int64_t id = 0;
  // e.g. "embedding has a non-finite value", "embedding norm 0.8711, not 1 (cosine collection)",
  // "embedding has 5116 bytes, not 5120 (1280 floats)"
  std::string reason;
};

// The one check of a vector, made as vectors are written (Catalog::write_batch refuses the
// batch) and as they are read (the vector is a CorruptVector, left out): `n` floats at `v` for a
// collection of `dim` floats; nullopt when usable, else why not: "embedding has 1279 floats, not
// 1280", "embedding has a non-finite value" (NaN or infinity), or, when `cosine`, "embedding
// norm 0.8711, not 1 (cosine collection)" for an L2 norm off 1 by more than 1e-3. O(n).
std::optional<std::string> vector_problem(const float* v, std::size_t n, int dim, bool cosine);

// The one check of metadata made wherever it enters (the engine's uploads and edits, manifest
// rows, Catalog::write_batch and set_metadata): `json_text` must be a JSON object, and no key or
// string in it may hold a NUL character (U+0000), which SQLite's JSON functions cut short, so the
// filter table would store "a" for "a\u0000b" and `--where note=a` would match it. nullopt when
// usable, else why not: "field 'note': text holds a NUL character (U+0000)". O(size).
std::optional<std::string> metadata_problem(const std::string& json_text);

// Metadata filter: an image matches when every term holds (AND). Terms look at the top-level
// fields of the metadata object; a field whose value is an array matches a term when any of its
// elements does (tags: ["red","summer"] matches tags=red). Nested objects, and arrays or objects
// inside arrays, match nothing; null and missing fields match nothing.
//  - Eq, In: the value, as text, equals the term's value (In: any of its values): a JSON
//    string's characters, a number's SQLite text form (42, 4.5), true/false for booleans.
//  - Lt, Le, Gt, Ge: the value is a JSON number, or a string that parses fully as a finite
//    number ("49.99": CSV manifest columns are stored as strings), and compares so with
//    `number`. Booleans are not numbers.
// Evaluated through the metadata_terms side table (docs/collection-format.md); on a read-only
// connection to a catalog older than schema 3, by SQLite's JSON1 over every row instead.
enum class FilterOp { Eq, In, Lt, Le, Gt, Ge };
struct FilterTerm {
  std::string field;
  FilterOp op = FilterOp::Eq;
  std::vector<std::string> values;  // Eq: one; In: at least one; ranges: none
  double number = 0;                // ranges: the finite bound
};
struct MetadataFilter {
  std::vector<FilterTerm> terms;  // all must hold
  bool empty() const { return terms.empty(); }
};
// Parses one term per string, O(total length). Grammar (the operator is the first '=', '<' or
// '>' of the term, or an IN keyword before it):
//   field=value        equality; split at the first '=', field and value trimmed of spaces
//                      (note=a<b is equality on note with the value "a<b")
//   field IN [a, b]    IN (keyword case-insensitive, brackets required): items comma-separated
//                      and trimmed; "double quoted" items may hold commas, brackets and spaces
//                      (\" and \\ escape inside quotes)
//   field<N  field<=N  field>N  field>=N   ranges; N a finite number (a<=b is a range whose
//                      bound "b" is refused, never equality)
// Refused, naming the operator and listing the supported forms: "==", "!=", "=<", "=>", "<>"
// and a field ending in '~', '^', '$', '*', ':' or '|' before the '=' (a value that starts with
// '=', '<' or '>', or has edge spaces, can be given quoted in an IN list). Field rules: non-empty,
// at most 128 bytes, no '"', '\\' or control characters; a field holding '=', '<' or '>' can only
// be given through add_term/add_in/add_range. Throws StoreError "filter '<term>': <cause>".
MetadataFilter parse_where(const std::vector<std::string>& terms);
// Adds one equality term (field, value), with parse_where's field checks. O(1).
void add_term(MetadataFilter& filter, const std::string& field, const std::string& value);
// Adds one IN term; throws StoreError naming the field for a bad field or an empty list. O(n).
void add_in(MetadataFilter& filter, const std::string& field, std::vector<std::string> values);
// Adds one range term (op Lt, Le, Gt or Ge); throws StoreError naming the field for a bad
// field, another op, or a non-finite bound. O(1).
void add_range(MetadataFilter& filter, const std::string& field, FilterOp op, double bound);

// The ids a filter selects, with the generation of the read transaction that selected them.
struct FilterSnapshot {
  std::int64_t generation = 0;
  std::vector<std::int64_t> ids;  // ascending
};

// Records read in one read transaction, with the generation that transaction saw.
struct Snapshot {
  std::int64_t generation = 0;
  std::vector<ImageRecord> records;  // by id
};

struct Put {
  ImageRecord record;            // matched by path: an existing path is updated (keeps its id)
  std::vector<float> embedding;  // dim floats
  // A new path takes record.id instead of the next free id (reembed copies a collection with
  // its ids, so that clients' references survive a model or precision switch). The id must be
  // free: a taken one fails the whole apply (StoreError, nothing written).
  bool keep_id = false;
};

class Catalog {
 public:
  // Opens (create = true: creates if absent, or initialises an empty file) the database at
  // `path` in WAL mode with synchronous=FULL, foreign keys on and a 5 s busy timeout. Migrates
  // an older schema. Throws StoreError "<path>: not a lookalike catalog (...)" for a non-SQLite
  // file or a SQLite file without lookalike's meta, "<path>: catalog is damaged (...)" for a
  // file SQLite finds malformed or that fails quick_check (both with the advice "Restore a
  // backup, or recover the rows with `sqlite3 catalog.db .recover`"), and a StoreError naming
  // both versions for a newer schema_version. One Catalog is used from one thread at a time.
  static std::unique_ptr<Catalog> open(const std::filesystem::path& path, bool create);
  // A read-only connection (SQLITE_OPEN_READONLY) to an existing catalog: every write throws
  // StoreError. An older schema is read as it is (only a writer migrates); a v1 catalog has no
  // collection_id yet, and collection_id() returns 32 zeros for it. In a folder it cannot write
  // (read-only storage), where SQLite cannot create the -shm a WAL reader needs, it opens the
  // file with SQLite's immutable=1 when no catalog.db-wal holds data (a clean close), and
  // otherwise throws StoreError saying the folder is read-only and the -wal holds commits.
  static std::unique_ptr<Catalog> open_read_only(const std::filesystem::path& path);
  // Creates a complete catalog (schema and `config`) at `path` atomically: it is written to
  // <path>.tmp, switched to WAL and closed (checkpointed), fsynced and renamed over `path`, and
  // the folder fsynced, so
  // a kill or a full disk leaves either no catalog or a complete one (and a .tmp leftover that
  // the next writer deletes). Throws StoreError naming `path` and the cause.
  static void create_atomic(const std::filesystem::path& path, const CatalogConfig& config);
  ~Catalog();

  const std::filesystem::path& path() const { return path_; }
  std::optional<CatalogConfig> config() const;
  // Once; throws StoreError if already set differently (search_defaults is not compared), or
  // if a field is invalid (dim < 1, unknown metric, empty model_id or factory, search_defaults
  // not a JSON object).
  void set_config(const CatalogConfig& config);
  // Records the preprocessing of the model that writes to this catalog (CatalogConfig::
  // preprocess, preprocess_fingerprint; both non-empty, the fingerprint 16 lowercase hex digits)
  // when none is recorded yet: true when it wrote them, false when the same fingerprint was
  // there already. Does not bump the generation (no vector changes). O(1). Throws StoreError for
  // invalid values, a catalog without a config, a different fingerprint already recorded (naming
  // both), a read-only connection or a failed write (nothing written then).
  bool set_preprocess(const std::string& canonical, const std::string& fingerprint);
  // Replaces config.factory and meta.search_defaults in one transaction and bumps the
  // generation (an index cache built for the old factory no longer matches). O(1). Throws
  // StoreError for an empty factory, search_defaults that is not a JSON object, a catalog
  // without a config or a failed write (nothing is written then).
  void set_index_config(const std::string& factory, const std::string& search_defaults);

  // Bumped by every committed write_batch/remove; the FAISS cache records the generation it
  // reflects.
  std::int64_t generation() const;
  std::int64_t count() const;  // O(n): SQLite counts rows; keep it off per-batch paths
  // Copies every committed page from catalog.db-wal into catalog.db and truncates the WAL to 0
  // bytes (PRAGMA wal_checkpoint(TRUNCATE)), so that catalog.db alone holds every commit. Waits
  // up to the busy timeout for readers of older snapshots; throws StoreError when SQLite fails
  // or a reader kept it from finishing (the WAL then keeps what was not copied: nothing is
  // lost). A read-write connection only (Collection's writer runs it before it closes).
  void checkpoint();
  // SQLite's PRAGMA quick_check: "ok", or the first problem found. Reads every page: O(file
  // size). A write-mode open runs it and refuses a damaged catalog.
  std::string quick_check() const;
  // 32 lowercase hex digits, fixed at creation (meta.collection_id).
  std::string collection_id() const;

  std::optional<ImageRecord> get(std::int64_t id) const;
  // The records of `ids` that exist, by id, in one query (unknown ids are skipped).
  std::vector<ImageRecord> get_many(const std::vector<std::int64_t>& ids) const;
  std::optional<ImageRecord> find_path(const std::string& path) const;
  std::vector<ImageRecord> find_hash(const std::string& content_hash) const;
  std::vector<ImageRecord> list() const;  // by id
  // Records with id > after_id, by id, at most `limit` (pagination by keyset), matching
  // `filter` when one is given. With a filter: O(m log n) for m matches after after_id while
  // the rarest term is rare (under ~32,768 rows); past that, a walk by id that probes the terms
  // per image, O((limit / density) log n). A JSON1 scan on a read-only pre-v3 catalog.
  std::vector<ImageRecord> list_page(std::int64_t after_id, int limit,
                                     const MetadataFilter* filter = nullptr) const;
  // The ids `filter` selects (ascending) and the generation, in one read transaction. Reads the
  // rarest term's rows from the side table (O(r log n) for r rows) and intersects the others
  // with them (a probe per candidate, or a merge with their rows, whichever reads less); an
  // empty filter lists every id, O(images). A JSON1 scan, O(images), on a read-only pre-v3
  // catalog. At 1M images about 1 ms per 10,000 ids read from an index and 2-3 us per probe:
  // 1 ms for a 1% equality, 28 ms for 1% AND 50% (bench/bench_filter.cpp).
  FilterSnapshot matching(const MetadataFilter& filter) const;
  // The most frequent values of a top-level metadata field (array elements counted one by
  // one), with their image counts, most frequent first (ties by value), at most `limit`.
  // O(rows of the field). Field checks as parse_where.
  std::vector<std::pair<std::string, std::int64_t>> facet(const std::string& field,
                                                          int limit) const;
  // The top-level metadata fields that a filter can match in some image (a string, number or
  // boolean value, or an array holding one: the side table's fields), sorted bytewise, at most
  // `limit`. O(limit log rows): one index probe per field. A JSON1 scan, O(images), on a
  // read-only pre-v3 catalog.
  std::vector<std::string> metadata_fields(int limit) const;
  // Whether some image's metadata has `field` with a value a filter can match (as
  // metadata_fields). O(log rows).
  bool has_metadata_field(const std::string& field) const;
  // The records of `ids` that exist and the generation, in one read transaction.
  Snapshot snapshot(const std::vector<std::int64_t>& ids) const;
  // Ids of the image at `path` and of every image under the folder `path` (a prefix match on
  // "path/", through the unique index on path: O(log n + matches)). `path` is absolute and
  // normal, without a trailing '/' except the root folder "/" (every image).
  std::vector<std::int64_t> ids_under(const std::string& path) const;
  // The stored embedding of `id`, checked as vectors are read (see CorruptVector: a blob that is
  // not dim * 4 bytes is one too): throws StoreError naming the image and the reason for a
  // corrupt one.
  std::optional<std::vector<float>> embedding(std::int64_t id) const;
  // The stored embeddings of ids[0..n) into out (n x dim, row-major), in one read transaction
  // with one prepared statement: found[i] = false for an id without one, or whose vector fails
  // the checks (CorruptVector; its row of `out` is left as it was). For re-ranking and exact
  // scoring of filtered subsets: O(n log images).
  void embeddings(const std::int64_t* ids, std::int64_t n, float* out, bool* found) const;
  // The embedding of some image whose current content_hash is `content_hash` (checked), if any:
  // reuse by content, not by record (a record's content may have changed since it was looked at).
  std::optional<std::vector<float>> embedding_by_hash(const std::string& content_hash) const;
  // Replaces the metadata of `id` (a JSON object's text) and bumps the generation; false when
  // there is no such image. Throws StoreError when `metadata` is not a JSON object.
  bool set_metadata(std::int64_t id, const std::string& metadata);
  // The highest image id ever assigned, deleted ones included (AUTOINCREMENT's sqlite_sequence
  // row); 0 before the first.
  std::int64_t last_id_assigned() const;
  // New images get ids above `id` from now on (a copy of another catalog keeps that one's
  // promise never to reuse an id). Never lowers the mark. Throws StoreError when it cannot write.
  void reserve_ids_through(std::int64_t id);

  // One transaction: deletes `removes` (ids; unknown ids are ignored), then upserts `puts` (by
  // path) with their embeddings. Returns the id of each put, in order. Bumps the generation
  // once; an empty batch changes nothing. Every put is checked before the transaction starts:
  // throws StoreError "<catalog>: put[i] (<path>[, image <id>]): <reason>; nothing written" when
  // the catalog has no config, an embedding fails vector_problem (wrong length, NaN/infinity, a
  // cosine norm off 1: what a read would leave out), or metadata is not a JSON object; nothing
  // is written then. Durable when it returns (synchronous=FULL).
  std::vector<std::int64_t> write_batch(const std::vector<Put>& puts,
                                        const std::vector<std::int64_t>& removes);

  struct PictureHashUpdate {
    std::int64_t id = 0;
    std::string content_hash;  // the content the hash was computed from
    StoredPictureHash hash;
  };
  // Stores perceptual hashes computed after the fact (the lazy backfill of `duplicates`), in one
  // transaction: each row only while its content_hash is still the one given (a file
  // re-indexed meanwhile keeps its own). Does not bump the generation: the hash is derived
  // from the content the row already names, and no index cache depends on it. Returns the rows
  // updated. O(updates log n). Throws StoreError on a read-only connection or a failed write
  // (nothing written then).
  std::int64_t set_picture_hashes(const std::vector<PictureHashUpdate>& updates);

  // Calls fn(id, vector) for every embedding of the config's model, by id. vector: dim floats,
  // valid during the call only. Reads one snapshot and returns the generation it reflects.
  // Vectors that fail the checks (CorruptVector: a wrong-size blob, a non-finite value, a
  // cosine norm off 1) are not passed to fn; they are appended to `corrupt` when given.
  std::int64_t for_each_embedding(const std::function<void(std::int64_t, const float*)>& fn,
                                  std::vector<CorruptVector>* corrupt = nullptr) const;

 private:
  Catalog() = default;
  // Whether metadata_terms exists (schema >= 3); a read-only connection to an older catalog
  // evaluates filters by JSON1 instead. Once true, it stays true.
  bool terms_indexed() const;
  // Whether images has the phash columns (schema >= 4); the same for a read-only older catalog.
  bool hashes_stored() const;
  std::string image_columns() const;  // the SELECT list read_record reads
  std::filesystem::path path_;
  std::unique_ptr<SQLite::Database> db_;
  mutable bool terms_indexed_ = false;
  mutable bool hashes_stored_ = false;
};

}  // namespace lookalike::store
