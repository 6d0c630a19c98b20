#include "index/vector_index.h"

#include <faiss/IndexIDMap.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/impl/io.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

namespace lookalike::index {

namespace {

constexpr std::array<char, 8> kTrailerMagic = {'L', 'K', 'L', 'K', 'I', 'D', 'X', '1'};
constexpr std::size_t kTrailerBytes = 24;

faiss::MetricType faiss_metric(Metric m) {
  return m == Metric::Cosine ? faiss::METRIC_INNER_PRODUCT : faiss::METRIC_L2;
}

std::string errno_text() { return std::strerror(errno); }

void put_u64le(unsigned char* out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<unsigned char>(v >> (8 * i));
}

std::uint64_t get_u64le(const unsigned char* in) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(in[i]) << (8 * i);
  return v;
}

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

struct HashState {
  HashState() : state(XXH3_createState()) {
    if (!state) throw IndexError("out of memory for the checksum state");
    XXH3_64bits_reset(state);
  }
  ~HashState() { XXH3_freeState(state); }
  HashState(const HashState&) = delete;
  HashState& operator=(const HashState&) = delete;
  XXH3_state_t* state;
};

// Streams FAISS's serialisation to a file while hashing it, so the trailer needs no second pass.
struct HashingWriter : faiss::IOWriter {
  HashingWriter(std::FILE* f, XXH3_state_t* h) : file(f), hash(h) { name = "index cache"; }
  size_t operator()(const void* ptr, size_t size, size_t nitems) override {
    if (size == 0 || nitems == 0) return nitems;  // FAISS writes empty vectors as (nullptr, 0)
    size_t written = std::fwrite(ptr, size, nitems, file);
    XXH3_64bits_update(hash, ptr, size * written);
    bytes += size * written;
    return written;
  }
  std::FILE* file;
  XXH3_state_t* hash;
  std::uint64_t bytes = 0;
};

void fsync_dir(const std::filesystem::path& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw IndexError(dir.string() + ": cannot open directory to sync: " + errno_text());
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw IndexError(dir.string() + ": fsync failed: " + errno_text());
}

void write_file(const faiss::Index& index, const std::filesystem::path& tmp) {
  File f(std::fopen(tmp.c_str(), "wb"));
  if (!f) throw IndexError(tmp.string() + ": cannot create: " + errno_text());
  HashState hash;
  HashingWriter writer(f.get(), hash.state);
  try {
    faiss::write_index(&index, &writer);
  } catch (const faiss::FaissException& e) {
    throw IndexError(tmp.string() + ": FAISS could not write the index: " + e.what());
  }
  std::array<unsigned char, kTrailerBytes> trailer{};
  std::memcpy(trailer.data(), kTrailerMagic.data(), kTrailerMagic.size());
  put_u64le(trailer.data() + 8, writer.bytes);
  put_u64le(trailer.data() + 16, XXH3_64bits_digest(hash.state));
  if (std::fwrite(trailer.data(), 1, trailer.size(), f.get()) != trailer.size() ||
      std::fflush(f.get()) != 0 || ::fsync(::fileno(f.get())) != 0) {
    throw IndexError(tmp.string() + ": write failed: " + errno_text());
  }
  if (std::fclose(f.release()) != 0) {
    throw IndexError(tmp.string() + ": close failed: " + errno_text());
  }
}

// Checks the trailer and checksum before FAISS sees a byte of the file.
void verify_file(const std::filesystem::path& path) {
  File f(std::fopen(path.c_str(), "rb"));
  if (!f) throw IndexError(path.string() + ": cannot open: " + errno_text());
  std::error_code ec;
  auto size = std::filesystem::file_size(path, ec);
  if (ec) throw IndexError(path.string() + ": cannot stat: " + ec.message());
  if (size < kTrailerBytes) {
    throw IndexError(path.string() + ": not a lookalike index file (too short: " +
                     std::to_string(size) + " bytes)");
  }
  std::array<unsigned char, kTrailerBytes> trailer{};
  if (std::fseek(f.get(), static_cast<long>(size - kTrailerBytes), SEEK_SET) != 0 ||
      std::fread(trailer.data(), 1, trailer.size(), f.get()) != trailer.size()) {
    throw IndexError(path.string() + ": cannot read the trailer: " + errno_text());
  }
  if (std::memcmp(trailer.data(), kTrailerMagic.data(), kTrailerMagic.size()) != 0) {
    throw IndexError(path.string() + ": not a lookalike index file (no trailer; truncated?)");
  }
  std::uint64_t payload = get_u64le(trailer.data() + 8);
  if (payload != size - kTrailerBytes) {
    throw IndexError(path.string() + ": truncated or padded (trailer says " +
                     std::to_string(payload) + " payload bytes, file has " +
                     std::to_string(size - kTrailerBytes) + ")");
  }
  std::rewind(f.get());
  HashState hash;
  std::vector<char> buf(1 << 20);
  for (std::uint64_t left = payload; left > 0;) {
    std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(left, buf.size()));
    if (std::fread(buf.data(), 1, want, f.get()) != want) {
      throw IndexError(path.string() + ": read failed: " + errno_text());
    }
    XXH3_64bits_update(hash.state, buf.data(), want);
    left -= want;
  }
  if (XXH3_64bits_digest(hash.state) != get_u64le(trailer.data() + 16)) {
    throw IndexError(path.string() + ": checksum mismatch (file is corrupt)");
  }
}

}  // namespace

Metric parse_metric(const std::string& s) {
  if (s == "cosine") return Metric::Cosine;
  if (s == "l2") return Metric::L2;
  throw IndexError("metric: unknown value '" + s + "' (expected cosine or l2)");
}

std::string to_string(Metric m) { return m == Metric::Cosine ? "cosine" : "l2"; }

VectorIndex::VectorIndex(int dim, Metric metric, const std::string& factory)
    : dim_(dim), metric_(metric), factory_(factory) {
  if (dim < 1) throw IndexError("index dim must be positive, got " + std::to_string(dim));
  if (factory.rfind("IDMap", 0) == 0) {
    throw IndexError("factory '" + factory + "': must not start with IDMap (ids are mapped by " +
                     "lookalike)");
  }
  std::unique_ptr<faiss::Index> inner;
  try {
    inner.reset(faiss::index_factory(dim, factory.c_str(), faiss_metric(metric)));
  } catch (const faiss::FaissException& e) {
    throw IndexError("factory '" + factory + "' rejected by FAISS: " + e.what());
  }
  auto map = std::make_unique<faiss::IndexIDMap2>(inner.get());
  inner.release();
  map->own_fields = true;
  index_ = std::move(map);
}

VectorIndex::~VectorIndex() = default;
VectorIndex::VectorIndex(VectorIndex&&) noexcept = default;
VectorIndex& VectorIndex::operator=(VectorIndex&&) noexcept = default;

std::int64_t VectorIndex::size() const { return index_->ntotal; }

bool VectorIndex::needs_training() const { return !index_->is_trained; }

void VectorIndex::train(const float* vectors, std::int64_t n) {
  try {
    index_->train(n, vectors);
  } catch (const faiss::FaissException& e) {
    throw IndexError("training index '" + factory_ + "' on " + std::to_string(n) +
                     " vectors failed: " + e.what());
  }
}

void VectorIndex::add(const float* vectors, const std::int64_t* ids, std::int64_t n) {
  if (n <= 0) return;
  if (needs_training()) {
    throw IndexError("index '" + factory_ + "' must be trained before vectors are added");
  }
  try {
    index_->add_with_ids(n, vectors, ids);
  } catch (const faiss::FaissException& e) {
    throw IndexError("adding " + std::to_string(n) + " vectors to index '" + factory_ +
                     "' failed: " + e.what());
  }
}

std::int64_t VectorIndex::remove(const std::vector<std::int64_t>& ids) {
  if (ids.empty()) return 0;
  faiss::IDSelectorBatch selector(static_cast<std::int64_t>(ids.size()), ids.data());
  try {
    return static_cast<std::int64_t>(index_->remove_ids(selector));
  } catch (const faiss::FaissException& e) {
    throw IndexError("index '" + factory_ + "' cannot remove vectors: " + e.what());
  }
}

std::vector<std::vector<Hit>> VectorIndex::search(const float* queries, std::int64_t nq,
                                                  int k) const {
  if (k < 1) throw IndexError("search: k must be at least 1, got " + std::to_string(k));
  if (nq < 0) throw IndexError("search: negative query count " + std::to_string(nq));
  std::vector<std::vector<Hit>> out(static_cast<std::size_t>(nq));
  if (nq == 0 || index_->ntotal == 0) return out;
  std::vector<float> distances(static_cast<std::size_t>(nq) * k);
  std::vector<faiss::Index::idx_t> labels(distances.size());
  try {
    index_->search(nq, queries, k, distances.data(), labels.data());
  } catch (const faiss::FaissException& e) {
    throw IndexError("search in index '" + factory_ + "' failed: " + e.what());
  }
  for (std::int64_t q = 0; q < nq; ++q) {
    for (int j = 0; j < k; ++j) {
      std::size_t at = static_cast<std::size_t>(q) * k + j;
      if (labels[at] < 0) break;  // FAISS pads with -1 when fewer than k are found
      float score = distances[at];
      if (metric_ == Metric::L2) score = std::sqrt(std::max(score, 0.0f));
      out[q].push_back({labels[at], score});
    }
  }
  return out;
}

void VectorIndex::save(const std::filesystem::path& path) const {
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  try {
    write_file(*index_, tmp);
    std::filesystem::rename(tmp, path);
  } catch (const std::exception& e) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    if (dynamic_cast<const IndexError*>(&e)) throw;
    throw IndexError(path.string() + ": cannot save index: " + e.what());
  }
  fsync_dir(path.parent_path());
}

VectorIndex VectorIndex::load(const std::filesystem::path& path, int dim, Metric metric,
                              const std::string& factory) {
  verify_file(path);
  std::unique_ptr<faiss::Index> loaded;
  try {
    faiss::FileIOReader reader(path.c_str());
    loaded.reset(faiss::read_index(&reader));
  } catch (const std::exception& e) {  // FaissException, or bad_alloc on absurd sizes
    throw IndexError(path.string() + ": FAISS cannot read the index: " + e.what());
  }
  auto* map = dynamic_cast<faiss::IndexIDMap2*>(loaded.get());
  if (!map) throw IndexError(path.string() + ": not an id-mapped (IDMap2) FAISS index");
  if (map->d != dim) {
    throw IndexError(path.string() + ": index has dim " + std::to_string(map->d) + ", expected " +
                     std::to_string(dim));
  }
  if (map->metric_type != faiss_metric(metric)) {
    throw IndexError(path.string() + ": index metric differs from " + to_string(metric));
  }
  VectorIndex out;
  out.dim_ = dim;
  out.metric_ = metric;
  out.factory_ = factory;
  out.index_ = std::move(loaded);
  return out;
}

}  // namespace lookalike::index
