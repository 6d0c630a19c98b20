// The engine: one collection and its model, and every operation a front end offers (the CLI
// today; the HTTP server and the Python package call the same functions). Front ends parse
// arguments and print; everything else happens here.
//
// Thread-safety: every method may be called from any number of threads at once. Searches,
// gets and lists run in parallel; writes (index, add_image, update_metadata, remove) are
// serialised by the collection; embedding requests from all threads go through one
// EmbedBatcher per model (dynamic batching, see engine/embed_batcher.h). Design and
// guarantees: docs/engine.md.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "dedup/duplicates.h"
#include "engine/embed_batcher.h"
#include "index/index_spec.h"
#include "model/embedding_model.h"
#include "pipeline/embed_files.h"
#include "pipeline/indexer.h"
#include "store/collection.h"

namespace lookalike::engine {

inline constexpr const char* kDefaultModel = "mobilenet_v2";

// Metadata nests at most this deep (a flat object is 1, an object in it 2; arrays count as
// objects do). nlohmann::json copies, merges and dumps recursively, so a request nested 100,000
// deep would overflow the stack; SQLite's json_valid stops at 1,000 (JSON_MAX_DEPTH). Real
// catalogues use 1-3 levels.
inline constexpr int kMaxMetadataDepth = 32;

using store::kMaxMetadataBytes;  // metadata length limit, bytes of compact JSON (catalog.h)

// How deep `value` nests (0 for a scalar, 1 for a flat object or array), walked without
// recursion so that any value can be measured.
int json_depth(const nlohmann::json& value);

// A cosine similarity lies in [-1, 1] and an L2 distance is >= 0: a min_score outside (or NaN)
// would keep every hit or none, a mistake in the request rather than a filter. Throws
// EngineError Invalid naming the range for `metric` ("cosine" or "l2"); every search checks it.
void check_min_score(std::optional<float> min_score, const std::string& metric);

// Raised for a request the engine refuses: `kind` tells a front end which status to give
// (CLI exit code, HTTP status). what() names the field or file and the cause.
class EngineError : public std::runtime_error {
 public:
  // Busy: another lookalike process holds the collection's writer lock (transient: the same
  // request succeeds once that process has finished). NoSpace: the disk or the quota is full
  // (ENOSPC, EDQUOT); nothing was stored. Damaged: an uploaded image's stored file is missing
  // or not the size its record says (upload_damage); uploading the same bytes again repairs it.
  enum class Kind { Invalid, NotFound, ReadOnly, Busy, NoSpace, Damaged };
  EngineError(Kind kind, const std::string& what) : std::runtime_error(what), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

struct EngineOptions {
  std::filesystem::path collection;  // the collection folder
  std::string model;  // name or .pt path; empty = the collection's model, else kDefaultModel
  int threads = 0;    // LibTorch intra-op and OpenMP threads; 0 = all cores
  // "auto" | "fp32" | "bf16" | "int8" (model::ModelOptions::precision, docs/precision.md);
  // the CLI's --precision, else $LOOKALIKE_PRECISION, else auto.
  std::string precision = "auto";
  int decode_threads = 1;  // 1..pipeline::kMaxDecodeThreads
  int batch_size = 32;     // images per forward pass, 1..1024
  // Forward passes side by side in bulk work (index, embedding many files), each on threads /
  // passes intra-op threads; 1..pipeline::kMaxPasses, 0 = auto: 2 where there are two cores
  // and two batches, else 1. Searches and uploads always run on all threads. docs/engine.md,
  // "Passes side by side".
  int passes = 0;
  std::int64_t max_pixels = 89'478'485;  // PIL's Image.MAX_IMAGE_PIXELS
  double max_aspect_ratio = 0;           // image::DecodeOptions::max_aspect_ratio; 0 = no limit
  std::chrono::microseconds batch_wait{2000};  // EmbedBatcher's window
};

enum class Access {
  ModelOnly,  // no collection needed (embed); the collection's model is used if there is one
  Read,       // an existing collection, read-only (search, info, get, list)
  Write,      // an existing collection, or one created on the first write (see NewCollection)
};

// How a collection is created by the first write of a Write engine on a folder that holds none.
struct NewCollection {
  std::string metric = "cosine";         // "cosine" | "l2"
  std::string factory = "Flat";          // FAISS factory string (index/vector_index.h), or "auto"
  std::int64_t memory_budget_bytes = 0;  // for "auto"
  index::SearchParams defaults;          // search defaults stored with a new collection
  // When given, they must match an existing collection (else EngineError Invalid).
  bool metric_given = false;
  bool factory_given = false;
};

struct IndexRequest {
  std::vector<std::filesystem::path> inputs;  // folders, image files, CSV manifests
  // Remove the stored images under `inputs` whose file is definitely gone (never under an input
  // or folder that failed; pipeline::find_vanished). They are reported in the summary either way.
  bool prune = false;
  std::string file_column;  // CSV: the column with the image path (default: see scan.h)
  bool include_hidden = false;
  const std::atomic<bool>* cancel = nullptr;
  std::function<void(const pipeline::Progress&)> on_progress;
};

struct SearchRequest {
  int k = 10;  // 1..store::kMaxTopK
  // cosine: keep score >= it, in [-1, 1]; l2: keep distance <= it, >= 0 (else EngineError
  // Invalid from every search)
  std::optional<float> min_score;
  std::vector<std::int64_t> exclude_ids;
  bool include_self = false;  // by id: keep the query image itself
  // Metadata filter (equality, IN, numeric ranges; store::MetadataFilter) applied inside the
  // index search: top-k among the matching images only. Empty = no filter.
  store::MetadataFilter where;
  // nprobe / efSearch / re-rank depth for this query; 0 fields: the collection's defaults.
  index::SearchParams params;
};

// --where terms (field=value, "field IN [a, b]", "price<50"; store::parse_where) to a filter;
// EngineError Invalid naming a malformed term.
store::MetadataFilter parse_where(const std::vector<std::string>& terms);

struct Timings {
  double decode_ms = 0;  // reading, decoding and preprocessing the query image
  double embed_ms = 0;   // the forward pass (including the batcher's wait)
  double search_ms = 0;  // index search and catalog read
  double total_ms = 0;
};

struct SearchResponse {
  std::string query;  // the file path, upload name, or the indexed image's path
  std::optional<std::int64_t> query_id;
  std::string error;  // non-empty: this query failed (results empty)
  std::vector<store::SearchResult> results;
  std::int64_t generation = 0;  // the collection generation the results come from
  Timings timings;
  store::SearchReport report;  // the plan (index or exact-subset), parameters, filter matches
  // Hints about a query that ran but may not do what was meant: Engine::filter_warnings when
  // the filter selected no image. Results are unaffected.
  std::vector<std::string> warnings;
};

struct AddResult {
  store::ImageRecord record;
  bool created = false;  // false: identical bytes were already stored (the existing image)
  Timings timings;       // decode and embed of a new image (zero when it was already stored)
  // The bytes were stored already, but their uploaded file was missing or damaged
  // (upload_damage) and has been written again from these bytes.
  bool repaired = false;
};

// Whether `rec` is an uploaded image (Engine::add_image) rather than one indexed from the user's
// files: its file is named <content hash>.<format> in a folder named uploads.
bool is_upload(const store::ImageRecord& rec);

// Where the file of `rec`, an image of the collection in `collection_dir`, is now. An upload's
// file belongs to its collection: <collection_dir>/uploads/<name>, whatever folder the record
// names (the catalog holds the absolute path at upload time, and a moved collection must find
// its files, a copied one read its own rather than the original's). Any other image's file is
// where the record says. Every reader of an image's file goes through this.
std::filesystem::path image_file(const std::filesystem::path& collection_dir,
                                 const store::ImageRecord& rec);

// Why the stored file of upload `rec` cannot be served as its record describes ("missing",
// "5000 bytes where the record says 12534"); nullopt when it is intact or `rec` is no upload.
// One stat: the size, not the content.
std::optional<std::string> upload_damage(const std::filesystem::path& collection_dir,
                                         const store::ImageRecord& rec);

struct RemoveResult {
  std::vector<std::int64_t> removed;
  std::vector<std::int64_t> missing_ids;   // ids given that the collection does not hold
  std::vector<std::string> missing_paths;  // paths given (as given) with nothing indexed under them
};

// How a collection's index is (re)built: a FAISS factory string or "auto", and search defaults.
struct IndexSpec {
  std::string spec = "Flat";             // factory string, or "auto" (index::choose_index_spec)
  std::int64_t memory_budget_bytes = 0;  // for "auto"; 0 = no budget
  index::SearchParams defaults;          // non-zero fields override the choice's defaults
};

struct DuplicatesResult {
  dedup::DuplicateReport report;
  // Perceptual hashes computed from files during the run (rows indexed before schema 4 have
  // none; report.computed_hashes), how many were stored, and why not when they could not be
  // (the collection locked by a writer, read-only): they are computed again next time.
  std::int64_t hashes_computed = 0;
  std::int64_t hashes_stored = 0;
  std::string hashes_not_stored;
};

struct ReindexResult {
  store::ReindexSummary summary;
  std::string choice_reason;  // for "auto": why this factory
  index::SearchParams defaults;
  // Set when the new index cache could not be saved (disk full, no write permission): the
  // reindex is committed all the same, and the next open rebuilds the cache from the catalog.
  std::string cache_warning;
};

// Resolves "auto" (choose_index_spec for `vectors` x `dim`) or checks a factory string;
// `reason` receives the choice's reason. EngineError Invalid for a factory FAISS refuses.
index::SpecChoice resolve_index_spec(const IndexSpec& spec, std::int64_t vectors, int dim);

struct EngineInfo {
  store::CollectionInfo collection;
  int threads = 0;
  // The precision the model runs at (or would, if not loaded yet) and why; both empty when
  // the collection's model cannot be found here; precision empty and the error as the reason
  // when the requested precision cannot run (--precision int8 on a model without an int8
  // archive).
  std::string precision;
  std::string precision_reason;
  // The precision of the collection's vectors, from its model id ("bf16" for "...+bf16", else
  // "fp32 (or a precision interchangeable with it)"), and why this run's precision would be
  // refused by it (empty when accepted or unknown; docs/precision.md, "Which vectors mix").
  std::string collection_precision;
  std::string precision_refusal;
  // The preprocessing of this run's model card (model::preprocess_canonical and its
  // fingerprint; empty when the card cannot be read here), and why the collection would refuse
  // it: its recorded fingerprint (CollectionInfo::config.preprocess_fingerprint) differs, with
  // the fields that differ; empty when accepted, unknown, or nothing is recorded yet.
  std::string model_preprocess;
  std::string model_preprocess_fingerprint;
  std::string preprocess_refusal;
  std::optional<BatcherStats> batcher;  // when the model is loaded
};

// Process-wide set-up, done once (later calls do nothing): the OpenMP thread count used by FAISS
// and OpenBLAS and, where the program runs on glibc's malloc rather than jemalloc, heap reuse
// for LibTorch's activations (mallopt; one malloc arena for all threads, so that it holds for
// the batcher's thread too). Call it before starting threads: a thread keeps the arena it first
// allocated from.
void setup_process(int threads);

// The heap allocator this program runs on: "jemalloc <version>" (the lookalike programs link it:
// lookalike_allocator, docs/engine.md "Memory") or "glibc malloc" (tests, sanitizer builds,
// -DLOOKALIKE_JEMALLOC=OFF).
std::string allocator_name();

// For a process whose forward passes share the cores with other work at the same moment (`serve`:
// HTTP workers decode uploads and search the index while the batcher's pass runs; `index`,
// `reindex`, `eval`, `train`, `reembed`: decode threads feed the model): makes sure
// OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE). libgomp's default lets a thread that
// waits at a barrier or for the next parallel region spin for about 300,000 iterations first;
// on 2 cores those spinning threads take the CPU from the decodes, the searches and from the
// pass's own other thread, and `serve` measured single uploads of 1.2 s instead of ~40 ms under
// load (bench/README.md, "The server"). libgomp reads the variable only when it is loaded, so
// when it is unset this sets it and re-executes the program (/proc/self/exe, same argv and pid);
// it returns when the variable is already set (by the user, who keeps the last word, or by the
// re-execution) or when the re-execution fails (logged; the program then runs as it is).
void use_passive_omp_wait(char** argv);

// For `serve` instead: its passes are mostly of 1 to 8 images, where a forward pass is dozens of
// short parallel regions and a passively waiting thread's futex wake-up at each costs more than
// the region's work. A bounded spin before sleeping (GOMP_SPINCOUNT=kServeSpinCount iterations)
// keeps batch-1 latency without libgomp's default spin of 300,000, which PASSIVE was brought in
// against. Measured with bench/upload_timings.py on the bench_server collection (MobileNetV2,
// one upload at a time, the server's batch-1 embed_ms): idle, PASSIVE 8.9-9.3 ms, 20,000
// 4.2-4.6 ms, 200,000 4.6 ms; with two CPU-bound processes beside it, PASSIVE 16.3 ms, 20,000
// 12.8 ms. Sets it and re-executes as use_passive_omp_wait does, unless OMP_WAIT_POLICY or
// GOMP_SPINCOUNT is already set (the user's word).
inline constexpr const char* kServeSpinCount = "20000";
void use_short_omp_spin(char** argv);

// Runs `work` on a new thread and waits for it, rethrowing whatever it threw. For work that runs
// OpenMP parallel regions (loading a model, training an IVF index) from a thread that lives on:
// an OpenMP team left on that thread would slow every forward pass (docs/engine.md, "OpenMP
// teams").
void run_on_own_thread(const std::function<void()>& work);

class Engine {
 public:
  // Throws EngineError (NotFound: no collection at a Read path; Invalid: bad option,
  // metric/factory that differ from the existing collection's), store::StoreError (a catalog
  // that cannot be opened, locked by another writer) and model::ModelError (missing model,
  // model that does not match the collection) naming the file and the cause.
  static std::unique_ptr<Engine> open(const EngineOptions& options, Access access,
                                      const NewCollection& fresh = {});
  ~Engine();

  bool has_collection() const;
  // has_collection(), after opening the collection that another process (`lookalike index`)
  // created in the folder since this engine was opened without one: one stat while there is
  // none. False while that process still holds the writer lock (a Write engine opens the
  // collection for writing; reads see nothing until then), and EngineError Busy is what a
  // write gets meanwhile. Throws model::ModelError when its model is not this engine's.
  bool adopt_collection();
  // Throws EngineError NotFound when there is no collection (yet).
  const store::Collection& collection() const;
  // image_file for an image of this collection; EngineError NotFound without a collection.
  std::filesystem::path image_file(const store::ImageRecord& rec) const;
  // Throws EngineError Damaged (naming the image, the cause, and that uploading the same bytes
  // repairs it) when `rec` is an upload whose stored file is missing or of the wrong size.
  void check_stored_file(const store::ImageRecord& rec) const;
  // Loads the model on first use (resolution: options.model, else the collection's, else
  // kDefaultModel) and checks it matches the collection.
  model::EmbeddingModel& model();
  EmbedBatcher& batcher();
  // The precision the loaded model runs at and why; nullopt before the model is loaded.
  std::optional<model::PrecisionChoice> model_precision() const;
  // How a collection created by this engine names its model (CatalogConfig::model_name), so
  // that later commands find it without --model: the card's name, or options.model as given
  // when it is a name, or the archive's absolute path when it is a path. Loads the model.
  std::string model_reference();

  // Brings the collection up to date with the inputs (scan, decode, embed, commit per batch).
  // Creates the collection only when the scan found something to index, and takes a collection
  // it created back (Collection::undo_creation; has_collection() is false again) when nothing
  // was stored in the end (every file failed, or it was cancelled before the first commit).
  // Bad files are summary.failures; see pipeline::index_files for the rest.
  pipeline::IndexSummary index(const IndexRequest& request);

  // Stores an uploaded image inside the collection (<dir>/uploads/<content hash>.<format>),
  // embeds it and commits it with `metadata` (a JSON object). The same bytes again return the
  // stored image (created = false; metadata unchanged), and so do bytes that `index` stored from
  // a file (the same content hash): one image, one record. Concurrent uploads of the same bytes
  // store one. The same bytes whose uploaded file is missing or damaged (upload_damage) write it
  // again (repaired = true). Throws image::DecodeError naming `name` for bytes that are not a
  // supported image, EngineError Invalid for metadata that is not an object, nests deeper than
  // kMaxMetadataDepth or is longer than kMaxMetadataBytes, EngineError ReadOnly without Write
  // access, NoSpace when the disk or quota is full, Busy when another process holds the writer
  // lock; nothing is stored then.
  AddResult add_image(std::span<const std::uint8_t> bytes, const std::string& name,
                      const nlohmann::json& metadata);

  // One response per query, in order; a query that fails carries `error` (the others run).
  // Throws EngineError Invalid for k outside [1, kMaxTopK].
  std::vector<SearchResponse> search_files(const std::vector<std::filesystem::path>& images,
                                           const SearchRequest& request);
  SearchResponse search_bytes(std::span<const std::uint8_t> bytes, const std::string& name,
                              const SearchRequest& request);
  SearchResponse search_id(std::int64_t id, const SearchRequest& request);
  // Search with a given embedding: 1 x dim float32, L2-normalised for cosine.
  SearchResponse search_vector(const float* embedding, const SearchRequest& request);

  // Embeddings of image files in input order (n x dim; failed rows zero with an error).
  pipeline::EmbeddedFiles embed_files(const std::vector<std::filesystem::path>& images);

  std::optional<store::ImageRecord> get(std::int64_t id) const;
  // Page of images with id > after_id, by id, matching `where`; limit 1..10,000 (EngineError
  // Invalid otherwise).
  std::vector<store::ImageRecord> list(std::int64_t after_id, int limit,
                                       const store::MetadataFilter& where = {}) const;
  // The most frequent values of a top-level metadata field and their image counts (for a
  // category filter's choices); limit 1..10,000. EngineError Invalid for a bad field name.
  std::vector<std::pair<std::string, std::int64_t>> facet(const std::string& field,
                                                          int limit) const;
  // For a filter that selects no image: one warning per field of its terms that no image has
  // (Catalog::has_metadata_field: no string, number or boolean value, nor an array holding one,
  // under that top-level field), most likely a typo, naming it and listing the fields present:
  // "no image has metadata field 'colour'; fields present: category, description". Empty when
  // every field is present (the values simply match nothing). O(terms log rows), and
  // O(kMaxFieldsListed log rows) to list the fields. search_* fill SearchResponse::warnings
  // with it when the filter matched nothing.
  static constexpr int kMaxFieldsListed = 20;
  std::vector<std::string> filter_warnings(const store::MetadataFilter& where) const;
  // Replaces (merge = false) or merges (merge = true: top-level keys, null deletes a key) an
  // image's metadata; false when there is no such id. EngineError Invalid for a non-object, one
  // nested deeper than kMaxMetadataDepth, or a result longer than kMaxMetadataBytes. Updates of
  // one image are serialised: concurrent merges all land.
  bool update_metadata(std::int64_t id, const nlohmann::json& metadata, bool merge);
  // Removes images by id and by path: a file, or every image under a folder ("DIR", "DIR/" and
  // "DIR/." alike). Uploaded files removed this way are deleted from <dir>/uploads.
  RemoveResult remove(const std::vector<std::int64_t>& ids,
                      const std::vector<std::filesystem::path>& paths);
  EngineInfo info() const;
  // Rebuilds the index from the stored vectors with another spec (no image is decoded); Write
  // access. EngineError Invalid for a bad spec, NotFound without a collection.
  ReindexResult reindex(const IndexSpec& spec);
  // Stores new search-time defaults for the collection (Write access).
  void set_search_defaults(const index::SearchParams& defaults);
  // Exact and near-duplicate groups (dedup::find_duplicates). Whether the default threshold was
  // measured for this model is read from its card (a head trained with `lookalike train` is not
  // the measured network, whatever its file is called); no model is loaded. Hashes computed
  // from files are stored afterwards (with Write access here, else through a short write-mode
  // open, so that no writer lock is held during the search). Throws
  // dedup::DuplicateOptionError for bad options, EngineError NotFound without a collection.
  DuplicatesResult duplicates(dedup::DuplicateOptions options);
  // Saves the index cache file, so that the next open need not rebuild it.
  void checkpoint();

 private:
  Engine() = default;
  void ensure_collection();
  // The stored image with `hash` (upload_mu_ held): its file written again from `bytes` when it
  // is an upload whose file is missing or damaged.
  std::optional<AddResult> stored_copy(store::Collection& c, const std::string& hash,
                                       std::span<const std::uint8_t> bytes);
  store::Collection& writable();
  image::DecodeOptions decode_options();
  void check_k(int k) const;
  SearchResponse run_search(const float* embedding, const SearchRequest& request,
                            std::vector<std::int64_t> exclude);
  // `shape` (uploads): receives width, height and the pHash of the whole decoded frame.
  std::vector<float> embed_buffer(std::span<const std::uint8_t> bytes, const std::string& name,
                                  Timings& t, store::ImageRecord* shape = nullptr,
                                  std::string* format = nullptr);
  // Bulk work's passes in flight (options.passes, auto resolved) and the embed function that
  // runs each on its share of the model's threads through the batcher.
  int bulk_passes(std::size_t images);
  pipeline::EmbedFn bulk_embed(int passes);

  EngineOptions options_;
  Access access_ = Access::Read;
  NewCollection fresh_;
  std::unique_ptr<store::Collection> collection_;
  // What ensure_collection's create_or_open made: index() takes it back when it stores nothing.
  store::Collection::Creation creation_;
  mutable std::mutex model_mu_;  // guards the lazy model and batcher load, and collection creation
  std::unique_ptr<model::EmbeddingModel> model_;
  std::unique_ptr<EmbedBatcher> batcher_;
  // Makes an upload's "already stored?" check, file write and commit one step (and a removal's
  // lookups, commit and unlink of uploaded files), so that concurrent uploads of the same bytes
  // store one copy (the embedding runs outside it).
  std::mutex upload_mu_;
  std::mutex metadata_mu_;  // makes a metadata merge's read and write one step
};

}  // namespace lookalike::engine
