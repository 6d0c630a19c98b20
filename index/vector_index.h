// Vector indexes over FAISS, built from a factory string ("Flat", later "IVF1024,Flat",
// "HNSW32", "IVF256,PQ16", ...; see faiss/index_factory.h). Ids are caller-chosen int64
// (the catalog's image ids): the FAISS index is wrapped in IndexIDMap2.
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
  // Throws IndexError when FAISS rejects the factory string (message includes FAISS's).
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
  void train(const float* vectors, std::int64_t n);
  void add(const float* vectors, const std::int64_t* ids, std::int64_t n);
  // Returns how many were removed; unknown ids are ignored.
  std::int64_t remove(const std::vector<std::int64_t>& ids);

  // queries: nq x dim float32, row-major. Returns nq lists of at most k hits, best first.
  std::vector<std::vector<Hit>> search(const float* queries, std::int64_t nq, int k) const;

  // Atomic: writes <path>.tmp, fsyncs, renames. Throws IndexError on I/O failure.
  void save(const std::filesystem::path& path) const;
  // Throws IndexError when the file is missing, truncated or not a FAISS index of this dim.
  static VectorIndex load(const std::filesystem::path& path, Metric metric,
                          const std::string& factory);

 private:
  VectorIndex() = default;
  int dim_ = 0;
  Metric metric_ = Metric::Cosine;
  std::string factory_;
  std::unique_ptr<faiss::Index> index_;
};

}  // namespace lookalike::index
