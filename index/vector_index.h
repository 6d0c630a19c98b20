// Vector indexes over FAISS, built from a factory string ("Flat", later "IVF1024,Flat",
// "HNSW32", "IVF256,PQ16", ...; see faiss/index_factory.h). Ids are caller-chosen int64
// (the catalog's image ids): the FAISS index is wrapped in IndexIDMap2.
// Not thread-safe for writes: add/remove/train/save need exclusive access; concurrent search()
// calls on an unchanging index are safe (FAISS's guarantee for const search).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
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

class VectorIndex {
 public:
  // Throws IndexError when dim < 1, or when FAISS rejects the factory string (message includes
  // FAISS's). The factory must not itself add an IDMap: ids are mapped here.
  VectorIndex(int dim, Metric metric, const std::string& factory = "Flat");
  ~VectorIndex();
  VectorIndex(VectorIndex&&) noexcept;
  VectorIndex& operator=(VectorIndex&&) noexcept;

  int dim() const { return dim_; }
  Metric metric() const { return metric_; }
  const std::string& factory() const { return factory_; }
  std::int64_t size() const;
  bool needs_training() const;

  // vectors: n x dim float32, row-major; ids: n. For Cosine the vectors must be L2-normalised.
  // Throws IndexError when FAISS fails (e.g. too few training points for IVF), or on add to
  // an index that needs training and has not been trained. Adding an id twice stores it twice.
  void train(const float* vectors, std::int64_t n);
  void add(const float* vectors, const std::int64_t* ids, std::int64_t n);
  // Returns how many were removed; unknown ids are ignored. Throws IndexError when the
  // factory's index does not support removal (e.g. HNSW).
  std::int64_t remove(const std::vector<std::int64_t>& ids);

  // queries: nq x dim float32, row-major. Returns nq lists of at most k hits, best first
  // (fewer when the index holds fewer than k). Throws IndexError when k < 1 or nq < 0.
  std::vector<std::vector<Hit>> search(const float* queries, std::int64_t nq, int k) const;

  // File format: FAISS's own serialisation (faiss.read_index reads it) followed by a 24-byte
  // trailer: "LKLKIDX1", payload size (u64 LE), XXH3-64 of the payload (u64 LE). The trailer
  // lets load() reject a damaged file before FAISS parses it (a corrupt length field can make
  // FAISS allocate without bound).
  // Atomic: writes <path>.tmp, fsyncs it, renames it over <path>, fsyncs the directory.
  // Throws IndexError on I/O failure (the .tmp file is removed).
  void save(const std::filesystem::path& path) const;
  // Throws IndexError when the file is missing, truncated, fails its checksum, or is not an
  // id-mapped FAISS index of this dim and metric. `factory` is recorded, not checked.
  static VectorIndex load(const std::filesystem::path& path, int dim, Metric metric,
                          const std::string& factory);

 private:
  VectorIndex() = default;
  int dim_ = 0;
  Metric metric_ = Metric::Cosine;
  std::string factory_;
  std::unique_ptr<faiss::Index> index_;
};

}  // namespace lookalike::index
