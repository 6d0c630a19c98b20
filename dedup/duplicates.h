// Duplicate groups in a collection (`lookalike duplicates`, docs/duplicates.md).
//
// Two images are linked when
//  - exact: they have the same content_hash (XXH3-128 of the file bytes), or
//  - near: one is among the other's top-k neighbours in the collection's index (Collection::search
//    on its stored embedding) with cosine similarity >= threshold.
// Groups are the connected components (union-find, Tarjan 1975) of that graph with at least two
// images, so a group may chain: A~B and B~C put A and C together even when A and C are under the
// threshold. The graph is never materialised as an N x N matrix: every image is searched once, in
// batches of `batch` queries (their vectors read with Catalog::embeddings), and only O(n)
// arrays are held beside the index: 44 bytes an image (a compact row of id and content hash, the
// union-find arrays, a sort permutation), plus one page of 10,000 catalog records, one batch's
// queries and hits (O(batch x (dim + k))) and, one group at a time, its records. With an
// approximate index (IVF, HNSW, PQ) a neighbour the index misses is not linked (recall, not
// precision, drops; raise `params` nprobe / ef_search); with Flat the search is exact.
// Measured at 100,000 and 1,000,000 generated vectors: bench/bench_duplicates.cpp.
//
// Each group has a representative: the largest width * height, then the smallest added_at_ms,
// then the smallest id. Each member carries its cosine similarity to the representative (dot
// product of the stored L2-normalised embeddings, so it may be under the threshold in a chain)
// and which picture it is: members are "the same picture" when they have the same content_hash
// or their perceptual hashes (dedup/phash.h, images.phash) are within max_distance bits, and
// `picture` numbers these same-picture sets inside the group (0: the representative's). The
// hash is read from the catalog; a row without one (indexed before schema 4) is hashed from
// its file and returned in computed_hashes for the caller to store (store_computed_hashes).
//
// Threshold defaults (cosine similarity), from tests/e2e/duplicates.py and the clothing-small
// gallery (3,068 product photos on plain backgrounds, docs/duplicates.md):
//  - mobilenet_v2: 0.90. Edited copies scored 0.947 (brightened 30%) to 0.993 (JPEG quality
//    60), a 10% crop 0.933; the nearest different photo of each of the 30 originals at most
//    0.76; over the whole gallery the nearest different photo is >= 0.90 for about 1% of the
//    images (124 pairs in 4.7 million), which then group as "similar" pictures.
//  - resnet50: 0.90. Edited copies 0.944 (10% crop) to 0.994 (quality 60); nearest different
//    photo of the 30 originals at most 0.73.
//  - any other model: 0.90, unmeasured; pass --threshold.
// Collections with metric l2 are refused (DuplicateError): their scores are distances whose scale
// depends on the model, so a similarity threshold has no meaning there.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "dedup/phash.h"
#include "index/vector_index.h"
#include "store/collection.h"

namespace lookalike::dedup {

inline constexpr double kDefaultThreshold = 0.90;
inline constexpr int kDefaultNeighbours = 10;
inline constexpr int kDefaultBatch = 256;
// Groups up to this size compare the perceptual hashes of every pair of members (O(g^2));
// larger ones (a long chain at a low threshold) compare each member with the representative.
inline constexpr std::size_t kPairwiseLimit = 2048;

// The collection cannot be searched for duplicates (metric l2, no embeddings), or a search
// failed. what() names the collection folder and the cause.
class DuplicateError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// An option out of range; what() names the option (--threshold, -k).
class DuplicateOptionError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// What the collection's model is, as its model card says (the caller reads it: this library
// loads no model). The thresholds above were measured for the pretrained networks only; a head
// trained with `lookalike train` may carry the same name (`--out mobilenet_v2.pt`), so the
// name alone never decides.
enum class ModelKind {
  kUnknown,     // the card could not be read (model_note says why)
  kPretrained,  // a card without a `training` section
  kTrained,     // a card with one (lookalike train)
};

struct DuplicateOptions {
  std::optional<double> threshold;  // cosine similarity in [-1, 1]; unset: default_threshold()
  ModelKind model_kind = ModelKind::kUnknown;  // decides whether the default was measured
  std::string model_note;                      // kUnknown: why (e.g. the card's error)
  int k = kDefaultNeighbours;  // neighbours searched per image, 1..store::kMaxTopK - 1
  int batch = kDefaultBatch;   // queries per Collection::search call, >= 1
  int max_distance = kSamePictureMaxDistance;  // pHash bits (dedup::distance), 0..64
  bool perceptual_hash = true;                 // false: same_picture only from content_hash
  // Search-time parameters of the neighbour searches (nprobe for IVF, ef_search for HNSW,
  // rerank for PQ/SQ); 0 fields: the collection's defaults. Negative: DuplicateOptionError.
  index::SearchParams params;
};

struct DuplicateMember {
  std::int64_t id = 0;
  std::string path;
  int width = 0, height = 0;
  double similarity = 0;      // cosine similarity to the representative (1 for itself)
  bool same_picture = false;  // picture == 0: the same picture as the representative
  bool exact = false;         // same content_hash as the representative
  int hamming = -1;           // pHash distance (dedup::distance) to the representative; -1: none
  // Same-picture set inside the group: members with the same number are the same picture
  // (linked by content_hash or pHash within max_distance, transitively); 0 is the
  // representative's, the others numbered in member order. Without a hash a member is a set
  // of its own (unless its content_hash matches).
  int picture = 0;
  std::string note;  // why the hash is missing (an unreadable file)
};

struct DuplicateGroup {
  std::int64_t representative = 0;
  std::vector<DuplicateMember> members;  // the representative first, then by similarity
  bool exact() const;                    // every member has the representative's content_hash
};

struct DuplicateReport {
  std::vector<DuplicateGroup> groups;  // largest first, then by representative id
  std::int64_t images = 0;             // images in the collection
  std::int64_t images_in_groups = 0;
  std::int64_t exact_groups = 0;
  double threshold = 0;  // the one used
  // "--threshold", "default for <model>" (measured: a pretrained mobilenet_v2 or resnet50, by
  // its card), else "default, not measured for <model> (<why>)"
  std::string threshold_source;
  int k = 0;
  index::SearchParams params;  // as given (0 fields: the collection's defaults)
  // Perceptual hashes computed from files because the catalog row had none (a row written
  // before schema 4, or a read-only catalog without the columns).
  std::vector<store::Catalog::PictureHashUpdate> computed_hashes;
};

// The default threshold for a model id ("mobilenet_v2@..." or a bare name); see the top comment.
// The same 0.90 for every model so far; whether it was measured is measured_default's to say.
double default_threshold(const std::string& model_id);
// Whether the default threshold was measured for this model: a name with measured figures and a
// card that says it is the pretrained network, not a trained head of that name.
bool measured_default(const std::string& model_id, ModelKind kind);

// Union-find over 0..n-1 with path halving and union by size: O(n) memory, near-constant time a
// call (inverse Ackermann).
class DisjointSets {
 public:
  explicit DisjointSets(std::size_t n);
  std::size_t find(std::size_t x);
  bool unite(std::size_t a, std::size_t b);  // false when already in one set
  std::size_t size_of(std::size_t x) { return size_[find(x)]; }

 private:
  std::vector<std::size_t> parent_, size_;
};

// Index (into `images`) of the representative among `members` (indices into `images`): largest
// width * height, then smallest added_at_ms, then smallest id.
std::size_t pick_representative(const std::vector<store::ImageRecord>& images,
                                const std::vector<std::size_t>& members);

// Throws DuplicateOptionError for options out of range, DuplicateError for an l2 collection,
// store::StoreError / index::IndexError when the catalog or the index fails. Files that cannot
// be decoded for the perceptual hash do not throw: the member gets a picture of its own and a
// note.
DuplicateReport find_duplicates(const store::Collection& collection,
                                const DuplicateOptions& options = {});

// Stores report.computed_hashes (Collection::set_picture_hashes; write mode). Returns the rows
// updated (a row re-indexed meanwhile keeps its own). Throws store::StoreError.
std::int64_t store_computed_hashes(store::Collection& collection, const DuplicateReport& report);

}  // namespace lookalike::dedup
