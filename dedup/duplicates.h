// Duplicate groups in a collection (`lookalike duplicates`, docs/duplicates.md).
//
// Two images are linked when
//  - exact: they have the same content_hash (XXH3-128 of the file bytes), or
//  - near: one is among the other's top-k neighbours in the collection's index (Collection::search
//    on its stored embedding) with cosine similarity >= threshold.
// Groups are the connected components (union-find, Tarjan 1975) of that graph with at least two
// images, so a group may chain: A~B and B~C put A and C together even when A and C are under the
// threshold. The graph is never materialised as an N x N matrix: every image is searched once, in
// batches of `batch` queries, and only the union-find arrays (O(n)), the catalog's image rows
// (list(), O(n)) and one batch's queries and hits (O(batch x (dim + k))) are held. With an
// approximate index (IVF, HNSW, PQ) a neighbour the index misses is not linked (recall, not
// precision, drops); with Flat the search is exact.
//
// Each group has a representative: the largest width * height, then the smallest added_at_ms,
// then the smallest id. Each member carries its cosine similarity to the representative (dot
// product of the stored L2-normalised embeddings, so it may be under the threshold in a chain)
// and whether it is the same picture as the representative: identical content_hash, or a
// difference hash (dedup/dhash.h, Krawetz 2013) within max_hamming bits, computed from the
// files of group members only.
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

#include "dedup/dhash.h"
#include "store/collection.h"

namespace lookalike::dedup {

inline constexpr double kDefaultThreshold = 0.90;
inline constexpr int kDefaultNeighbours = 10;
inline constexpr int kDefaultBatch = 256;

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

struct DuplicateOptions {
  std::optional<double> threshold;  // cosine similarity in [-1, 1]; unset: default_threshold()
  int k = kDefaultNeighbours;       // neighbours searched per image, 1..store::kMaxTopK - 1
  int batch = kDefaultBatch;        // queries per Collection::search call, >= 1
  int max_hamming = kSamePictureMaxHamming;  // dHash bits, 0..64
  bool perceptual_hash = true;               // false: same_picture only from content_hash
};

struct DuplicateMember {
  std::int64_t id = 0;
  std::string path;
  int width = 0, height = 0;
  double similarity = 0;      // cosine similarity to the representative (1 for itself)
  bool same_picture = false;  // same content_hash, or dHash within max_hamming
  bool exact = false;         // same content_hash as the representative
  int hamming = -1;           // dHash distance to the representative; -1 when not computed
  std::string note;           // why same_picture could not be decided (an unreadable file)
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
  double threshold = 0;          // the one used
  std::string threshold_source;  // "--threshold" or "default for <model>"
  int k = 0;
};

// The default threshold for a model id ("mobilenet_v2@..." or a bare name); see the top comment.
double default_threshold(const std::string& model_id);

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
// be decoded for dHash do not throw: the member gets same_picture false and a note.
DuplicateReport find_duplicates(const store::Collection& collection,
                                const DuplicateOptions& options = {});

}  // namespace lookalike::dedup
