// Vector indexes over FAISS 1.7.3, built from a factory string ("Flat", "HNSW32", "IVF1024,Flat",
// "IVF256,PQ16", "SQ8", ...; see faiss/index_factory.h). Ids are caller-chosen int64 (the
// catalog's image ids).
//
// Slots. The FAISS index built by faiss::index_factory is used as is (no IndexIDMap2: its
// remove_ids is O(N) and, in 1.7.3, its search rejects every SearchParameters; HNSW has no
// remove_ids at all). FAISS labels are slots, the insertion positions 0..slots-1. This class keeps
// the catalog id of every slot (-1 once the slot is deleted) and a hash map id -> live slot.
// add() appends, remove() only marks slots deleted (tombstones), and search() never returns a
// deleted slot. Deleted slots still cost memory and scan time, so the owner (store::Collection)
// rebuilds the index from the catalog once deleted_fraction() exceeds kCompactFraction.
//
// Filtering during search. Where the FAISS index type honours SearchParameters::sel, a selector
// over the slot table (deleted slots and the caller's exclude set are not members) is passed to
// FAISS: IndexFlat, IndexScalarQuantizer, IndexIVFFlat / IndexIVFPQ / IndexIVFScalarQuantizer
// (through SearchParametersIVF), IndexHNSWFlat / PQ / SQ (only through SearchParametersHNSW),
// and an
// IndexPreTransform ("PCA64,...", "L2norm,...") around one of these. Every other type (IndexPQ,
// IndexRefine "...,RFlat", fast-scan "PQ16x4fs", LSH, additive quantizers, IVF variants outside
// the three above) rejects a selector in 1.7.3 (FAISS throws), and is searched by over-fetching:
// FAISS is asked for k' hits, filtered here, and asked again with 2k' while a query has fewer
// than k left and FAISS filled all k' places (capped at the slot count). k' starts at
// (k + excluded) / (1 - deleted_fraction()) + k, not at k + excluded + deleted: that would always
// suffice in one pass, but costs a result heap (for a refine stage, exact distances) of up to
// kCompactFraction of the slots per query, and fast-scan ranks worse at large k. search_path()
// says which path an index takes; tests/test_index.cpp checks each, and that a selector path
// returns a full k after the query's nearest neighbours are deleted (so FAISS really filtered).
//
// Training. A factory whose index needs training (IVF, PQ, SQ4/6/8, OPQ/PCA transforms, ...)
// starts as an exact IndexFlat of the same metric: vectors go there and search is exact. When an
// add brings the live count to training_threshold(), the factory's index is trained on all the
// live vectors held (FAISS's k-means itself samples at most 256 points per centroid), the live
// vectors are moved into it in slot order (re-slotted 0..size()-1, tombstones dropped; ids are
// kept), and it serves every later search. The rule for the threshold is at training_threshold().
// Two departures from index_factory's defaults: polysemous training of PQ codes is turned off
// (index_factory enables it unless the factory says "np"; only polysemous search, which
// index_factory leaves off, uses it, and its annealing took minutes for PQ16 on 12,000 vectors),
// and a training job under about 4e9 multiply-adds (k-means: vectors x dim x centroids x 25
// iterations) runs on one OpenMP thread: FAISS's k-means opens several OpenMP regions per
// iteration, and on a busy machine each barrier can wait out a time slice (PQ32x4 on 12,000
// vectors: 0.46 s alone, 11 s next to two compilers).
//
// Concurrency. const methods (search, size, deleted, contains, status, save, ...) may run from
// many threads at once while no non-const method runs; add, remove and assignment need exclusive
// access (the owner holds a shared/exclusive lock). search() with nq == 1 runs FAISS with one
// OpenMP thread on the calling thread: in 1.7.3 IndexHNSW, IndexPQ and IndexScalarQuantizer open
// an OpenMP team even for one query (IndexFlat and IndexIVF* do not; measured by counting the
// threads of a fresh calling thread before and after one search), so concurrent single-query
// searches would each start a team and oversubscribe the cores. With nq > 1 FAISS uses its OpenMP
// team (omp_get_max_threads() threads) on the calling thread: issue batch searches from one thread
// at a time. HNSW searches synchronise internally on hnsw.efSearch (see search()).
//
// Errors: failures are IndexError; FAISS's exceptions (FaissException, and std::bad_alloc when it
// allocates) are wrapped with FAISS's message. Allocations made here may throw std::bad_alloc.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace faiss {
struct Index;
}

namespace lookalike::index {

class IndexError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class Metric {
  Cosine,  // inner product of L2-normalised vectors; score = cosine similarity, higher is closer
  L2,      // Euclidean distance; score = distance (not squared), lower is closer
};
Metric parse_metric(const std::string& s);  // "cosine" | "l2"; throws IndexError otherwise
std::string to_string(Metric m);

struct Hit {
  std::int64_t id = -1;
  float score = 0;  // cosine similarity, or L2 distance; see Metric
};

// The owner (store::Collection) rebuilds the index from the catalog when deleted_fraction()
// exceeds this. Amortised cost O(removed): a rebuild of N slots needs at least N * 0.2 removals
// since the last rebuild, so each removal pays for 5 re-added vectors.
inline constexpr double kCompactFraction = 0.2;

// Smallest exact_subset_limit(): 20,000 ids, 40 MB of 512-d vectors, about 10 ms of scoring on
// one core of this machine. Qdrant's full_scan_threshold (10 MB of vectors) and Weaviate's
// flat-search cutoff (40,000) bracket it; see docs/indexes.md for the measurement.
inline constexpr std::int64_t kExactSubsetFloor = 20'000;

// How search() applies tombstones and the exclude set for this index type (see the top comment).
enum class SearchPath {
  Selector,   // an IDSelector in FAISS's SearchParameters: FAISS never returns a filtered slot
  OverFetch,  // FAISS returns k' >= k hits, filtered here; k' grows until k survive
};
std::string to_string(SearchPath p);  // "selector" | "over-fetch"

// Search-time parameters; 0 = the index's default (set_search_defaults, else the rule below).
struct SearchParams {
  // IVF: inverted lists visited per query (FAISS IndexIVF::nprobe), capped at nlist. Built-in
  // default: the nprobe tuned when the index was trained (ProbeTuning); for an index file
  // written before tuning existed, nlist / 16 clamped to 16..256 (FAISS's own default of 1 has
  // poor recall).
  int nprobe = 0;
  // HNSW: size of the candidate list (efSearch, Malkov and Yashunin, 2016), raised to k when
  // smaller. Built-in default 64 (FAISS's 16 loses recall under filters, see STACK.md).
  int ef_search = 0;
  // Re-rank depth: the index returns max(k, rerank) candidates, which are re-scored exactly
  // from full-precision vectors (SearchOptions::vectors) and the best k kept. For lossy codes
  // (PQ, SQ); 0 = off. Without a vector source it is ignored.
  int rerank = 0;
};

// Full-precision vectors by id, for re-ranking and for exact search over a filtered subset
// (store::Collection reads them from the catalog). Writes n x dim floats, row-major, into
// `out`, and found[i] = false for an id it does not hold (that row is then ignored).
using VectorSource =
    std::function<void(const std::int64_t* ids, std::int64_t n, float* out, bool* found)>;

struct SearchOptions {
  const std::unordered_set<std::int64_t>* exclude = nullptr;  // ids never returned
  const std::unordered_set<std::int64_t>* allow = nullptr;    // when set, only these ids
  SearchParams params;
  const VectorSource* vectors = nullptr;  // for params.rerank
};

// The built-in nprobe of a trained IVF index, measured when it was trained (the method of
// FAISS's AutoTune, faiss/AutoTune.h, reduced to the one parameter): up to kTuneQueries of the
// vectors it was trained on (evenly spaced rows) are searched with nprobe = 1, 2, 4, ... and
// compared with exact search (faiss::knn_inner_product / knn_L2sqr over the same vectors), each
// query leaving itself out; the first nprobe whose Recall@10 reaches kTuneRecall is kept. Where
// the codes themselves cap recall (PQ, SQ), nprobe stops rising when a doubling gains less than
// kTunePlateau, and the smaller one is kept. Capped at nlist.
// Why: a fixed share of the lists fits no collection. On 100,000 MobileNetV2-like vectors
// (bench/bench_server.cpp, IVF1024,Flat, lists 8.8x imbalanced) the former nlist / 16 = 64
// scanned 38,750 codes a query for Recall@10 0.999 where nprobe 16 scanned 14,324 for 0.973
// (bench/ivf_nlist.py); a search's time follows the bytes it scans.
// The target, 0.95, is the operating point the former `--index-spec auto` rule was set for
// (nlist / 32, "recall@10 >= 0.95 on clustered data") and the usual one of ANN benchmarks: of
// ten results, about one in twenty is the 11th-or-later neighbour instead; `--nprobe` buys more.
// Cost: kTuneQueries exact searches over the training set, a fraction of the k-means before it.
// The recall is measured on the training vectors; queries from outside the collection may score
// a little lower, photos like the collection's higher (above).
struct ProbeTuning {
  int nprobe = 0;       // 0 = not tuned (not IVF, untrained, or a file written before tuning)
  double recall = 0.0;  // Recall@10 against exact search at nprobe, on the sampled vectors
};
inline constexpr double kTuneRecall = 0.95;
inline constexpr double kTunePlateau = 0.005;
inline constexpr int kTuneQueries = 256;

// What one search() did, for timings and reports.
struct SearchPlan {
  // "index" (the FAISS index, a filter applied inside it), "exact-subset" (a filter that
  // selects few enough ids that they were scored exactly, one by one: see search()), and for
  // lossy indexes "subset-decoded" (scored on the decoded codes) or "subset-reranked" (then the
  // best `rerank` re-scored from full vectors).
  std::string method = "index";
  std::int64_t candidates = 0;  // ids scored by exact-subset, or candidates re-ranked
  SearchParams params;          // the effective values used (0 where not applicable)
};

class VectorIndex {
 public:
  // Checks a factory string without keeping anything built. Throws IndexError, naming the
  // factory, when dim is not in 1..65536, or the factory
  //  - contains IDMap (ids are mapped here),
  //  - has IVF with a list count that is not in 1..2^20 (IVF0 passes index_factory in 1.7.3 and
  //    the first add aborts the process: assertion list_no < nlist in
  //    ArrayInvertedLists::add_entries; 2^20 lists already cost 48 MiB of empty lists, and
  //    IVF1048576 is the largest size in FAISS's own guidelines),
  //  - has a PQ/OPQ whose sub-quantizer count m does not divide the dimension it encodes, or
  //    bits per code outside 1..16 (PQ0 divides by zero inside FAISS: SIGFPE),
  //  - has HNSW with M outside 2..512 (HNSW0 and HNSW1 kill the process inside FAISS),
  //  - has any other number that is 0 or above 2^24 (several FAISS constructors crash on 0),
  //  - names NSG (IndexNSG cannot grow incrementally), or
  //  - is rejected by faiss::index_factory (FAISS's message is included).
  // The checks on the string run before FAISS builds anything; then the index is built once
  // (cheap: nothing is trained) and discarded.
  static void validate_factory(int dim, Metric metric, const std::string& factory);

  // Calls validate_factory (same errors).
  VectorIndex(int dim, Metric metric, const std::string& factory = "Flat");
  ~VectorIndex();
  VectorIndex(VectorIndex&&) noexcept;
  VectorIndex& operator=(VectorIndex&&) noexcept;

  int dim() const { return dim_; }
  Metric metric() const { return metric_; }
  const std::string& factory() const { return factory_; }
  std::int64_t size() const { return static_cast<std::int64_t>(id_slot_.size()); }  // live
  std::int64_t deleted() const { return slots() - size(); }  // tombstoned slots
  std::int64_t slots() const { return static_cast<std::int64_t>(slot_id_.size()); }
  double deleted_fraction() const;  // deleted() / slots(), 0 when there are no slots
  bool contains(std::int64_t id) const { return id_slot_.count(id) != 0; }

  // True when the factory's own index is in use (always for a factory that needs no training);
  // false while vectors go to the exact fallback.
  bool trained() const { return fallback_ == nullptr; }
  // Live vectors at which the factory's index is trained; 0 for a factory that needs no
  // training. The max over the trainable parts of the factory, each needing 39 points (FAISS's
  // ClusteringParameters::min_points_per_centroid, below which its k-means warns) per centroid:
  //  - IVF<n> (and IMI): 39 * n for the coarse quantizer's k-means,
  //  - PQ<m>x<b> / OPQ (alone, in IVF, as HNSW storage, in a refine stage; also RQ/LSQ):
  //    39 * 2^b (b = 8 by default: 9,984) for each sub-quantizer's codebook,
  //  - SQ4 / SQ6 / SQ8: 39 * 2^bits, the same rule for lack of one in FAISS (its trainer only
  //    takes per-dimension min/max, which a small sample underestimates); SQfp16 needs none,
  //  - PCA / ITQ: the input dimension; any other untrained part: 9,984.
  std::int64_t training_threshold() const { return threshold_; }
  // One line for people, e.g. "exact search until 1,560 vectors (IVF40,Flat trains then); 40
  // now", "IVF40,Flat, trained; 1,600 vectors, 3 deleted; nprobe 4 (Recall@10 0.995 when
  // trained)", "Flat; 40 vectors".
  std::string status() const;
  SearchPath search_path() const;  // for the index in use now (the fallback: Selector)

  // Upsert. vectors: n x dim float32, row-major; ids: n. For Cosine the vectors must be
  // L2-normalised. An id already present has its old slot deleted and the new vector appended;
  // within one call a repeated id keeps its last row. Cost O(n) plus FAISS's own add cost (which
  // for IVF/HNSW depends on nlist / log N, never on a scan of all slots), except once: the add
  // that reaches training_threshold() trains and moves all live vectors. When that training fails
  // (FAISS error, out of memory) nothing is lost: the vectors stay in the exact fallback,
  // status() says why, and training is retried when the live count has doubled. n == 0 is a
  // no-op. Throws IndexError when n < 0, or when FAISS fails to add: the rows of the failing
  // FAISS call are then not added and their ids keep their previous vectors (slots FAISS may
  // have appended are marked deleted); rows of the same call placed before a training step
  // stay added.
  void add(const float* vectors, const std::int64_t* ids, std::int64_t n);

  // A hint before adding about `more` vectors: where the active index keeps its vectors in one
  // growing array (Flat, SQ, PQ: FAISS's IndexFlatCodes::codes, and the exact fallback up to the
  // training threshold), that array and the id maps are grown once to their final size instead
  // of doubling as adds arrive. Why: each doubling copies the array, and jemalloc (which keeps
  // freed pages for reuse, engine/jemalloc_conf.cpp) left the old copies resident, about 2x
  // the vectors' bytes at the end of a large `index` run (docs/engine.md, "Memory").
  // Capacity that is never filled costs address space, not memory. A hint only: nothing
  // happens for other layouts or a memory-mapped index, and an allocation failure is ignored.
  void reserve(std::int64_t more);
  // Slots the index holds before its vector array must grow (reserve): for the layouts above,
  // the array's capacity; for others slots().
  std::int64_t capacity() const;
  // Deletes the ids' slots; returns how many were present. Unknown ids are ignored. O(ids.size()).
  std::int64_t remove(const std::vector<std::int64_t>& ids);

  // queries: nq x dim float32, row-major. Returns nq lists of at most k hits, best first, with
  // catalog ids; never a deleted or excluded id and, when `allow` is given, only allowed ids
  // (a filter applied inside the search, through the same selector or over-fetch path as
  // tombstones, so a query gets min(k, allowed live ids) hits from an exact index). k is capped
  // at the number of such ids before anything is allocated. Throws IndexError when k < 1 or nq < 0,
  // or when FAISS fails. Results are exact for Flat and for every factory until it is trained;
  // after that they are FAISS's approximation: IVF searches the nprobe lists tuned at training
  // (ProbeTuning; FAISS's default of 1 has poor recall), and
  // HNSW uses efSearch = max(64, k) (FAISS's default is 16; measured filtered HNSW recall 0.28 at
  // 16, 0.67 at 64, see STACK.md "FAISS 1.7.3"). In 1.7.3 the HNSW candidate heap is sized from the
  // member hnsw.efSearch, not the per-query parameter, so the member is set to exactly that value
  // for each search: searches wanting the current value share an internal lock, one wanting another
  // value takes it exclusively. Results depend only on the query, k and the index contents.
  std::vector<std::vector<Hit>> search(
      const float* queries, std::int64_t nq, int k,
      const std::unordered_set<std::int64_t>* exclude = nullptr,
      const std::unordered_set<std::int64_t>* allow = nullptr) const;
  // The same with search-time parameters, re-ranking and a report of what was done. With an
  // allow set of at most exact_subset_limit() live ids, those ids are scored one by one (their
  // vectors read from the index: exact where it stores them uncompressed, decoded codes for PQ
  // and SQ, then re-ranked from options.vectors when params.rerank asks) instead of searching
  // the index with a filter: the filtered index search loses recall at
  // low selectivity (HNSW walks excluded nodes; IVF's probed lists hold few members), and
  // scoring m ids costs m x dim multiply-adds, less than the index search visits below the
  // limit. Throws IndexError as the other overload, and when params are negative.
  std::vector<std::vector<Hit>> search(const float* queries, std::int64_t nq, int k,
                                       const SearchOptions& options,
                                       SearchPlan* plan = nullptr) const;

  // How the built-in nprobe was chosen (see ProbeTuning); nprobe 0 when it was not tuned.
  const ProbeTuning& probe_tuning() const { return tuning_; }

  // Collection defaults for search-time parameters (0 fields: the built-in rule).
  void set_search_defaults(const SearchParams& params);
  // The values a search with `request` would use (request's non-zero fields, else the
  // defaults, else the built-in rule); 0 for a parameter the index in use does not have.
  SearchParams effective_params(const SearchParams& request = {}) const;
  // Allow sets with at most this many live ids are scored exactly (see search()): the larger of
  // kExactSubsetFloor and the number of codes the index search visits per query (IVF:
  // size * nprobe / nlist; others: kExactSubsetFloor).
  std::int64_t exact_subset_limit(const SearchParams& request = {}) const;

  // Memory the FAISS index holds now, in bytes (codes, ids, centroids, graph links; computed
  // from the structures' sizes), and per live vector. For a memory-mapped index the mapped
  // inverted lists count as file-backed (mapped_bytes), not in memory_bytes.
  std::int64_t memory_bytes() const;
  std::int64_t mapped_bytes() const;
  bool memory_mapped() const { return mapped_; }

  // File format (all integers little-endian):
  //   payload (8 + F + 8 * S bytes):
  //     u8       state: 0 = the FAISS part is the exact IndexFlat fallback (the factory's index
  //              is not trained yet), 1 = it is the factory's own index
  //     u8       zero
  //     u16      ProbeTuning::recall x 10,000, rounded (0 when not tuned)
  //     u32      ProbeTuning::nprobe (0 when not tuned: files written before tuning existed
  //              have zeros here, and keep the nlist / 16 rule)
  //     F bytes  faiss::write_index of that index (faiss.read_index reads these bytes alone)
  //     S x i64  the catalog id of each slot (FAISS label), -1 for a deleted slot
  //   trailer (64 bytes):
  //     [0, 8)   "LKLKIDX2"
  //     [8, 24)  collection id: the 32 hex digits given to save, as 16 bytes
  //     [24, 32) generation, i64
  //     [32, 40) F, u64
  //     [40, 48) S, u64
  //     [48, 56) payload size, u64 (= 8 + F + 8 * S)
  //     [56, 64) XXH3-64 (seed 0) of every byte before this field: the payload and the
  //              trailer's first 56 bytes
  // The trailer lets load() reject a damaged or foreign file before FAISS parses a byte (a
  // corrupt length field can make FAISS allocate without bound).
  // collection_id: 32 lowercase hex digits (store keeps a random 128-bit id per collection).
  // Atomic: writes <path>.tmp, fsyncs it, renames it over <path>, fsyncs the directory.
  // Throws IndexError on a malformed collection_id, or on I/O failure (the .tmp file is removed).
  void save(const std::filesystem::path& path, const std::string& collection_id,
            std::int64_t generation) const;
  // Throws IndexError when collection_id is malformed or the factory invalid (validate_factory),
  // or (the message naming the path) when the file is missing, truncated, fails its checksum,
  // belongs to another collection ("index file X belongs to another collection (...)") or
  // generation ("index file X is for generation A, expected B"), does not match dim or metric,
  // was built by another factory (compared: index types through the wrappers, dim, code size,
  // list count, HNSW M), or its slot table is inconsistent (a slot count other than the FAISS
  // index's, a repeated id). Order: trailer and size, checksum, collection, generation, layout,
  // then FAISS parses its part, bounded to its F bytes.
  // map = true: an IVF index's inverted lists are memory-mapped read-only from the file
  // (FAISS IO_FLAG_MMAP; other types load fully, as FAISS 1.7.3 maps nothing else). A mapped
  // index cannot be added to or compacted (IndexError); load it unmapped for writing.
  static VectorIndex load(const std::filesystem::path& path, int dim, Metric metric,
                          const std::string& factory, const std::string& collection_id,
                          std::int64_t generation, bool map = false);

  // True when compact() can rebuild this index exactly from what it stores: the exact fallback,
  // Flat, HNSW with Flat storage ("HNSW32", "HNSW32,Flat") and IVF with flat lists
  // ("IVF1024,Flat"; read from the inverted lists, no direct map needed).
  bool can_compact() const;
  // A copy without deleted slots (slots renumbered in order, ids kept), same factory; trained
  // parts (IVF centroids) are reused, HNSW graphs are rebuilt. Throws IndexError when
  // !can_compact(): lossy codes (PQ, SQ) cannot be re-encoded exactly; rebuild from the catalog.
  VectorIndex compact() const;

 private:
  struct Shared;  // the lock guarding hnsw.efSearch; heap-allocated so the index stays movable
  VectorIndex();
  faiss::Index& active() const;  // the fallback while untrained, else the factory's index
  void append(const float* vectors, const std::int64_t* ids, std::int64_t n);
  void train_and_move();
  void apply_search_defaults();
  bool read_vectors(const std::int64_t* slots, std::size_t n, float* out, bool& exact) const;
  std::optional<std::vector<std::vector<Hit>>> exact_subset(const float* queries, std::int64_t nq,
                                                            std::int64_t want,
                                                            const SearchOptions& options,
                                                            SearchPlan* plan) const;
  void rerank(const float* queries, std::vector<std::vector<Hit>>& out, std::int64_t want,
              const VectorSource& source) const;

  int dim_ = 0;
  Metric metric_ = Metric::Cosine;
  std::string factory_;
  std::unique_ptr<faiss::Index> index_;     // the factory's index (untrained until threshold_)
  std::unique_ptr<faiss::Index> fallback_;  // exact IndexFlat while index_ is untrained
  std::int64_t threshold_ = 0;
  std::int64_t retry_at_ = 0;  // after a failed training: the live count to retry at
  std::string training_error_;
  std::vector<std::int64_t> slot_id_;                       // catalog id per slot, -1 deleted
  std::unordered_map<std::int64_t, std::int64_t> id_slot_;  // live id -> slot
  std::unique_ptr<Shared> shared_;
  SearchParams defaults_;
  ProbeTuning tuning_;
  bool mapped_ = false;
};

}  // namespace lookalike::index
