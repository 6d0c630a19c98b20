#include "index/vector_index.h"

#include <faiss/IndexAdditiveQuantizer.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFAdditiveQuantizer.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexIVFPQFastScan.h>
#include <faiss/IndexPQ.h>
#include <faiss/IndexPQFastScan.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IndexRefine.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/VectorTransform.h>
#include <faiss/clone_index.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/impl/io.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <faiss/invlists/InvertedLists.h>
#include <faiss/invlists/OnDiskInvertedLists.h>
#include <faiss/utils/distances.h>
#include <fcntl.h>
#include <omp.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <regex>
#include <shared_mutex>
#include <typeinfo>

namespace lookalike::index {

namespace {

using idx_t = faiss::Index::idx_t;

// ---------------------------------------------------------------------------------------------
// Limits and rules (documented in vector_index.h).

constexpr int kMaxDim = 65536;
constexpr std::int64_t kMaxNumber = std::int64_t{1} << 24;  // any number in a factory string
constexpr std::int64_t kMaxLists = std::int64_t{1} << 20;   // IVF / IMI list count
constexpr int kMaxCodeBits = 16;                            // PQ / RQ bits per code
constexpr int kMinHnswM = 2, kMaxHnswM = 512;
// faiss::ClusteringParameters::min_points_per_centroid (faiss/Clustering.h).
constexpr std::int64_t kPointsPerCentroid = 39;
constexpr std::int64_t kDefaultTrainingPoints = kPointsPerCentroid * 256;
constexpr int kHnswEfSearchFloor = 64;
constexpr std::size_t kMinProbes = 16, kMaxProbes = 256;
constexpr double kSerialTrainingWork = 4e9;  // multiply-adds; about a second on one core
// Adds of fewer vectors run FAISS on the calling thread alone (see VectorIndex::add).
constexpr std::int64_t kSerialAddBelow = 1024;

// File layout (see vector_index.h).
constexpr std::array<char, 8> kTrailerMagic = {'L', 'K', 'L', 'K', 'I', 'D', 'X', '2'};
constexpr std::size_t kHeaderBytes = 8;
constexpr std::size_t kTrailerBytes = 64;
constexpr unsigned char kStateFallback = 0, kStateFactory = 1;

faiss::MetricType faiss_metric(Metric m) {
  return m == Metric::Cosine ? faiss::METRIC_INNER_PRODUCT : faiss::METRIC_L2;
}

std::string errno_text() { return std::strerror(errno); }

std::string with_commas(std::int64_t v) {
  std::string digits = std::to_string(v < 0 ? -v : v);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return v < 0 ? "-" + out : out;
}

// ---------------------------------------------------------------------------------------------
// Factory strings.

// FAISS's message in plain words: its exceptions read "Error in <C++ signature> at
// <file>:<line>: <cause>", and only the cause means anything to a user. A failed internal check
// ("Error: 'metric == METRIC_L2' failed") is named as such. Other exceptions' text is kept.
std::string faiss_cause(const std::exception& e) {
  std::string m = e.what();
  static const std::regex prefix(R"(^Error in [\s\S]*? at \S+:[0-9]+: )");
  std::smatch at;
  if (std::regex_search(m, at, prefix)) m.erase(0, at.length(0));
  static const std::regex check(R"(^Error: ('[\s\S]*') failed$)");
  if (std::regex_match(m, at, check)) return "its internal check " + at[1].str() + " failed";
  while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) m.pop_back();
  return m.empty() ? "no reason given" : m;
}

[[noreturn]] void factory_error(const std::string& factory, const std::string& why) {
  throw IndexError("factory '" + factory + "': " + why);
}

// A digit run as a number, saturating (so "IVF99999999999" reads as huge, not as garbage).
std::int64_t number(const std::string& digits) {
  std::int64_t v = 0;
  for (char c : digits) {
    v = v * 10 + (c - '0');
    if (v > (std::int64_t{1} << 40)) return std::int64_t{1} << 40;
  }
  return v;
}

// Splits on commas outside parentheses: "IVF4(PQ8),Flat" -> {"IVF4(PQ8)", "Flat"}.
std::vector<std::string> top_level_parts(const std::string& f) {
  std::vector<std::string> parts(1);
  int depth = 0;
  for (char c : f) {
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (c == ',' && depth == 0) {
      parts.emplace_back();
    } else {
      parts.back() += c;
    }
  }
  return parts;
}

// The checks on the string that must run before FAISS builds anything (see vector_index.h).
void check_factory_string(int dim, const std::string& f) {
  if (dim < 1 || dim > kMaxDim) {
    throw IndexError("index dim must be in 1.." + std::to_string(kMaxDim) + ", got " +
                     std::to_string(dim));
  }
  if (f.empty()) factory_error(f, "empty factory string");
  if (f.find("IDMap") != std::string::npos) {
    factory_error(f, "must not contain IDMap (ids are mapped by lookalike)");
  }
  if (f.find("NSG") != std::string::npos) {
    factory_error(f, "NSG indexes cannot grow by incremental adds; use HNSW");
  }
  std::smatch m;
  const std::regex re1("IVF(-?)([0-9]*)");
  for (std::sregex_iterator it(f.begin(), f.end(), re1), end; it != end; ++it) {
    const auto& g = *it;
    if (!g[1].str().empty() || g[2].str().empty()) {
      factory_error(
          f, "IVF needs a positive list count (IVF<n>, n in 1.." + with_commas(kMaxLists) + ")");
    }
    std::int64_t n = number(g[2].str());
    if (n < 1 || n > kMaxLists) {
      factory_error(f, "IVF list count must be in 1.." + with_commas(kMaxLists) + ", got " +
                           g[2].str() + (n < 1 ? " (IVF0 aborts FAISS on the first add)" : ""));
    }
  }
  const std::regex re2("IMI([0-9]+)x([0-9]+)");
  for (std::sregex_iterator it(f.begin(), f.end(), re2), end; it != end; ++it) {
    std::int64_t parts = number((*it)[1].str()), bits = number((*it)[2].str());
    if (parts < 1 || bits < 1 || parts * bits > 20) {
      factory_error(f, "IMI<m>x<b> makes 2^(m*b) lists; m*b must be in 1..20");
    }
  }
  const std::regex hnsw("HNSW([0-9]*)");
  for (std::sregex_iterator it(f.begin(), f.end(), hnsw), end; it != end; ++it) {
    if ((*it)[1].str().empty()) continue;  // FAISS's default M = 32
    std::int64_t n = number((*it)[1].str());
    if (n < kMinHnswM || n > kMaxHnswM) {
      factory_error(f, "HNSW M must be in " + std::to_string(kMinHnswM) + ".." +
                           std::to_string(kMaxHnswM) + ", got " + (*it)[1].str());
    }
  }
  // PQ / OPQ divisibility, following the dimension through leading transforms.
  std::int64_t cur = dim;
  const std::regex pca("(?:PCAW?R?|ITQ)([0-9]+)"), opq("OPQ([0-9]+)(?:_([0-9]+))?"),
      resize("(?:RR|Pad)([0-9]+)"), pq("(^|[^A-Za-z])PQ([0-9]+)(?:x([0-9]+))?");
  for (const auto& part : top_level_parts(f)) {
    if (std::regex_match(part, m, pca)) {
      if (number(m[1].str()) > cur) {
        factory_error(f, part + ": PCA cannot output more dimensions than its input's " +
                             std::to_string(cur) + " (FAISS fails at training)");
      }
      cur = number(m[1].str());
      continue;
    }
    if (std::regex_match(part, m, resize)) {
      cur = number(m[1].str());
      continue;
    }
    if (std::regex_match(part, m, opq)) {
      std::int64_t sub = number(m[1].str());
      if (m[2].matched) cur = number(m[2].str());
      if (sub < 1 || cur % sub != 0) {
        factory_error(f, "OPQ" + m[1].str() + ": " + m[1].str() +
                             " sub-quantizers must divide the dimension " + std::to_string(cur));
      }
      continue;
    }
    for (std::sregex_iterator it(part.begin(), part.end(), pq), end; it != end; ++it) {
      std::int64_t sub = number((*it)[2].str());
      if (sub < 1) factory_error(f, "PQ needs at least one sub-quantizer (PQ0 crashes FAISS)");
      if (cur % sub != 0) {
        factory_error(f, "PQ" + (*it)[2].str() + ": the sub-quantizer count m = " + (*it)[2].str() +
                             " must divide the dimension " + std::to_string(cur));
      }
      if ((*it)[3].matched) {
        std::int64_t bits = number((*it)[3].str());
        if (bits < 1 || bits > kMaxCodeBits) {
          factory_error(f, "PQ bits per code must be in 1.." + std::to_string(kMaxCodeBits) +
                               ", got " + (*it)[3].str());
        }
      }
    }
  }
  const std::regex re3("(?:RQ|LSQ)([0-9]+)x([0-9]+)(?:x([0-9]+))?");
  for (std::sregex_iterator it(f.begin(), f.end(), re3), end; it != end; ++it) {
    std::int64_t bits = number((*it)[3].matched ? (*it)[3].str() : (*it)[2].str());
    if (bits < 1 || bits > kMaxCodeBits) {
      factory_error(f, "bits per code must be in 1.." + std::to_string(kMaxCodeBits));
    }
  }
  const std::regex re4("[0-9]+");
  for (std::sregex_iterator it(f.begin(), f.end(), re4), end; it != end; ++it) {
    std::int64_t n = number(it->str());
    if (n < 1 || n > kMaxNumber) {
      factory_error(f, "number " + it->str() + " out of range 1.." + with_commas(kMaxNumber) +
                           " (FAISS crashes on some zeros, and runs out of memory on huge sizes)");
    }
  }
}

// index_factory turns on polysemous training for PQ codes (unless the factory says "np"): a
// simulated annealing that reorders codes so that Hamming distances between them mean something.
// Only polysemous search uses that (IndexPQ::search_type ST_polysemous, IVFPQ polysemous_ht > 0),
// and index_factory leaves both off, so the ordering is never used; it took minutes for PQ16 on
// 12,000 vectors (ReproduceWithHammingObjective::cost_update). ADC search is invariant to it.
void no_polysemous_training(faiss::Index* index) {
  if (!index) return;
  if (auto* p = dynamic_cast<faiss::IndexPQ*>(index)) {
    if (p->search_type == faiss::IndexPQ::ST_PQ) p->do_polysemous_training = false;
  } else if (auto* q = dynamic_cast<faiss::IndexIVFPQ*>(index)) {
    if (q->polysemous_ht == 0) q->do_polysemous_training = false;
  } else if (auto* pt = dynamic_cast<faiss::IndexPreTransform*>(index)) {
    no_polysemous_training(pt->index);
  } else if (auto* h = dynamic_cast<faiss::IndexHNSW*>(index)) {
    no_polysemous_training(h->storage);
  } else if (auto* r = dynamic_cast<faiss::IndexRefine*>(index)) {
    no_polysemous_training(r->base_index);
    no_polysemous_training(r->refine_index);
  }
}

std::unique_ptr<faiss::Index> build_index(int dim, Metric metric, const std::string& factory) {
  check_factory_string(dim, factory);
  std::unique_ptr<faiss::Index> index;
  try {
    index.reset(faiss::index_factory(dim, factory.c_str(), faiss_metric(metric)));
  } catch (const std::out_of_range&) {  // std::stoi's, whose text is only "stoi"
    factory_error(factory, "rejected by FAISS: a number in it is out of range");
  } catch (const std::exception& e) {  // FaissException
    factory_error(factory, "rejected by FAISS: " + faiss_cause(e));
  }
  if (!index) factory_error(factory, "rejected by FAISS");
  no_polysemous_training(index.get());
  // Belt and braces: the structural facts the string checks are meant to guarantee.
  for (faiss::Index* at = index.get(); at;) {
    if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(at)) {
      if (ivf->nlist < 1) factory_error(factory, "IVF with no lists");
      break;
    }
    auto* pt = dynamic_cast<faiss::IndexPreTransform*>(at);
    at = pt ? pt->index : nullptr;
  }
  return index;
}

std::unique_ptr<faiss::Index> make_flat(int dim, Metric metric) {
  return std::make_unique<faiss::IndexFlat>(dim, faiss_metric(metric));
}

std::int64_t sq_points(faiss::ScalarQuantizer::QuantizerType q) {
  using SQ = faiss::ScalarQuantizer;
  switch (q) {
    case SQ::QT_8bit:
    case SQ::QT_8bit_uniform:
      return kPointsPerCentroid << 8;
    case SQ::QT_6bit:
      return kPointsPerCentroid << 6;
    case SQ::QT_4bit:
    case SQ::QT_4bit_uniform:
      return kPointsPerCentroid << 4;
    default:
      return 0;  // fp16, 8bit_direct: nothing to train
  }
}

std::int64_t pq_points(const faiss::ProductQuantizer& pq) {
  return kPointsPerCentroid * static_cast<std::int64_t>(pq.ksub);
}

std::int64_t aq_points(const faiss::AdditiveQuantizer* aq) {
  std::int64_t out = 0;
  if (aq) {
    for (auto b : aq->nbits) out = std::max(out, kPointsPerCentroid << b);
  }
  return out ? out : kDefaultTrainingPoints;
}

// Training points each part of an (untrained) index needs; the rule is in vector_index.h.
std::int64_t training_points(const faiss::Index* index) {
  if (!index || index->is_trained) return 0;
  if (auto* pt = dynamic_cast<const faiss::IndexPreTransform*>(index)) {
    std::int64_t out = training_points(pt->index);
    for (const auto* vt : pt->chain) {
      if (vt->is_trained) continue;
      if (dynamic_cast<const faiss::PCAMatrix*>(vt) ||
          dynamic_cast<const faiss::ITQTransform*>(vt)) {
        out = std::max<std::int64_t>(out, vt->d_in);
      } else if (!dynamic_cast<const faiss::RandomRotationMatrix*>(vt)) {
        // OPQ (its PQ: 2^8 centroids per sub-quantizer) and any other trained transform
        out = std::max(out, kDefaultTrainingPoints);
      }
    }
    return out;
  }
  if (auto* ivf = dynamic_cast<const faiss::IndexIVF*>(index)) {
    std::int64_t out = 0;
    if (auto* imi = dynamic_cast<const faiss::MultiIndexQuantizer*>(ivf->quantizer)) {
      out = pq_points(imi->pq);
    } else {
      out = kPointsPerCentroid * static_cast<std::int64_t>(ivf->nlist);
    }
    if (auto* p = dynamic_cast<const faiss::IndexIVFPQ*>(index)) {
      out = std::max(out, pq_points(p->pq));
    } else if (auto* f = dynamic_cast<const faiss::IndexIVFPQFastScan*>(index)) {
      out = std::max(out, pq_points(f->pq));
    } else if (auto* s = dynamic_cast<const faiss::IndexIVFScalarQuantizer*>(index)) {
      out = std::max(out, sq_points(s->sq.qtype));
    } else if (auto* a = dynamic_cast<const faiss::IndexIVFAdditiveQuantizer*>(index)) {
      out = std::max(out, aq_points(a->aq));
    } else if (!dynamic_cast<const faiss::IndexIVFFlat*>(index)) {
      out = std::max(out, kDefaultTrainingPoints);
    }
    return out;
  }
  if (auto* p = dynamic_cast<const faiss::IndexPQ*>(index)) return pq_points(p->pq);
  if (auto* p = dynamic_cast<const faiss::IndexPQFastScan*>(index)) return pq_points(p->pq);
  if (auto* s = dynamic_cast<const faiss::IndexScalarQuantizer*>(index)) {
    return sq_points(s->sq.qtype);
  }
  if (auto* a = dynamic_cast<const faiss::IndexAdditiveQuantizer*>(index)) {
    return aq_points(a->aq);
  }
  if (auto* h = dynamic_cast<const faiss::IndexHNSW*>(index)) {
    return std::max<std::int64_t>(1, training_points(h->storage));
  }
  if (auto* r = dynamic_cast<const faiss::IndexRefine*>(index)) {
    return std::max(training_points(r->base_index), training_points(r->refine_index));
  }
  return kDefaultTrainingPoints;
}

// A short description of an index's structure, to tell whether a loaded file was built by the
// same factory: type names along the wrappers, list counts, code sizes.
std::string structure(const faiss::Index* index) {
  if (!index) return "-";
  const auto& t = typeid(*index);
  // What read_index gives back for what index_factory built: IndexFlatIP / IndexFlatL2 for
  // IndexFlat, IndexRefineFlat for IndexRefine over a flat refine index ("RFlat").
  std::string out = t == typeid(faiss::IndexFlatIP) || t == typeid(faiss::IndexFlatL2)
                        ? typeid(faiss::IndexFlat).name()
                    : t == typeid(faiss::IndexRefineFlat) ? typeid(faiss::IndexRefine).name()
                                                          : t.name();
  out += " d=" + std::to_string(index->d) + " code=";
  if (auto* pt = dynamic_cast<const faiss::IndexPreTransform*>(index)) {
    for (const auto* vt : pt->chain) out += std::string(typeid(*vt).name()) + ">";
    return out + structure(pt->index);
  }
  if (auto* ivf = dynamic_cast<const faiss::IndexIVF*>(index)) {
    out += std::to_string(ivf->code_size) + " nlist=" + std::to_string(ivf->nlist);
  } else if (auto* c = dynamic_cast<const faiss::IndexFlatCodes*>(index)) {
    out += std::to_string(c->code_size);
  } else if (auto* h = dynamic_cast<const faiss::IndexHNSW*>(index)) {
    out += "M=" + std::to_string(h->hnsw.nb_neighbors(1)) + " storage=" + structure(h->storage);
  } else if (auto* r = dynamic_cast<const faiss::IndexRefine*>(index)) {
    out += "[" + structure(r->base_index) + "|" + structure(r->refine_index) + "]";
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Search paths.

enum class Kind { Plain, Ivf, Hnsw, OverFetch };

// Which SearchParameters an index type honours a selector through, in FAISS 1.7.3; exact types
// only, since subclasses (IndexFlat1D, IndexIVFPQR, IndexHNSW2Level, ...) override search.
Kind kind_of(const faiss::Index* index) {
  if (auto* pt = dynamic_cast<const faiss::IndexPreTransform*>(index)) return kind_of(pt->index);
  const auto& t = typeid(*index);
  if (t == typeid(faiss::IndexFlat) || t == typeid(faiss::IndexFlatIP) ||
      t == typeid(faiss::IndexFlatL2) || t == typeid(faiss::IndexScalarQuantizer)) {
    return Kind::Plain;
  }
  if (t == typeid(faiss::IndexIVFFlat) || t == typeid(faiss::IndexIVFPQ) ||
      t == typeid(faiss::IndexIVFScalarQuantizer)) {
    return Kind::Ivf;
  }
  if (t == typeid(faiss::IndexHNSWFlat) || t == typeid(faiss::IndexHNSWPQ) ||
      t == typeid(faiss::IndexHNSWSQ)) {
    return Kind::Hnsw;
  }
  return Kind::OverFetch;
}

// Through pre-transforms (and, for tuning, a refine stage's base) to the index that searches.
faiss::Index* core(faiss::Index* index, bool through_refine) {
  for (;;) {
    if (auto* pt = dynamic_cast<faiss::IndexPreTransform*>(index)) {
      index = pt->index;
    } else if (auto* r = dynamic_cast<faiss::IndexRefine*>(index); r && through_refine) {
      index = r->base_index;
    } else {
      return index;
    }
  }
}

// Exclude sets up to this size (with no tombstones) are applied by asking for more hits.
constexpr std::int64_t kFewExcluded = 16;

// Slot s is a member when it is live, its id is not excluded and, with an allow set, allowed.
struct LiveSlots : faiss::IDSelector {
  LiveSlots(const std::vector<std::int64_t>& slot_id, const std::unordered_set<std::int64_t>* ex,
            const std::unordered_set<std::int64_t>* allow)
      : slot_id(slot_id), exclude(ex), allow(allow) {}
  bool is_member(idx_t slot) const override {
    if (slot < 0 || static_cast<std::size_t>(slot) >= slot_id.size()) return false;
    return member(slot_id[static_cast<std::size_t>(slot)]);
  }
  bool member(std::int64_t id) const {
    return id >= 0 && (!exclude || exclude->count(id) == 0) && (!allow || allow->count(id) != 0);
  }
  const std::vector<std::int64_t>& slot_id;
  const std::unordered_set<std::int64_t>* exclude;
  const std::unordered_set<std::int64_t>* allow;
};

// For a single query, FAISS runs with one OpenMP thread on the calling thread (see the header).
// omp_set_num_threads sets the calling thread's own ICV, so this is safe from many threads.
struct OmpSerial {
  explicit OmpSerial(bool on) : on(on) {
    if (on) {
      previous = omp_get_max_threads();
      omp_set_num_threads(1);
    }
  }
  ~OmpSerial() {
    if (on) omp_set_num_threads(previous);
  }
  OmpSerial(const OmpSerial&) = delete;
  OmpSerial& operator=(const OmpSerial&) = delete;
  bool on;
  int previous = 1;
};

// Lets IVF indexes reconstruct a slot's vector (exact for flat lists, decoded for codes): the
// exact-subset path scores filtered ids from it. Slots are FAISS's sequential labels, so the
// array form (8 bytes a vector) applies. Types that refuse a direct map keep none.
void enable_direct_map(faiss::Index* index) {
  auto* ivf = dynamic_cast<faiss::IndexIVF*>(core(index, true));
  if (ivf == nullptr || ivf->direct_map.type != faiss::DirectMap::NoMap) return;
  try {
    ivf->make_direct_map(true);
  } catch (const std::exception&) {
  }
}

// Bytes a FAISS index holds, from its structures' sizes (capacities where FAISS keeps spare).
std::int64_t faiss_bytes(const faiss::Index* index) {
  if (index == nullptr) return 0;
  if (auto* pt = dynamic_cast<const faiss::IndexPreTransform*>(index)) {
    std::int64_t b = faiss_bytes(pt->index);
    for (const auto* vt : pt->chain) {
      if (auto* lt = dynamic_cast<const faiss::LinearTransform*>(vt)) {
        b += static_cast<std::int64_t>((lt->A.size() + lt->b.size()) * sizeof(float));
      }
    }
    return b;
  }
  if (auto* r = dynamic_cast<const faiss::IndexRefine*>(index)) {
    return faiss_bytes(r->base_index) + faiss_bytes(r->refine_index);
  }
  if (auto* fc = dynamic_cast<const faiss::IndexFlatCodes*>(index)) {
    std::int64_t b = static_cast<std::int64_t>(fc->codes.size());
    if (auto* pq = dynamic_cast<const faiss::IndexPQ*>(index)) {
      b += static_cast<std::int64_t>(pq->pq.centroids.size() * sizeof(float));
    }
    return b;
  }
  if (auto* h = dynamic_cast<const faiss::IndexHNSW*>(index)) {
    const auto& g = h->hnsw;
    return faiss_bytes(h->storage) +
           static_cast<std::int64_t>(g.neighbors.size() * sizeof(g.neighbors[0]) +
                                     g.offsets.size() * sizeof(g.offsets[0]) +
                                     g.levels.size() * sizeof(g.levels[0]));
  }
  if (auto* ivf = dynamic_cast<const faiss::IndexIVF*>(index)) {
    std::int64_t b = faiss_bytes(ivf->quantizer);
    if (dynamic_cast<const faiss::OnDiskInvertedLists*>(ivf->invlists) == nullptr) {
      for (std::size_t l = 0; l < ivf->nlist; ++l) {
        b += static_cast<std::int64_t>(ivf->invlists->list_size(l) *
                                       (ivf->code_size + sizeof(idx_t)));
      }
    }
    b += static_cast<std::int64_t>(ivf->direct_map.array.size() * sizeof(idx_t));
    if (auto* ivfpq = dynamic_cast<const faiss::IndexIVFPQ*>(index)) {
      b += static_cast<std::int64_t>(ivfpq->pq.centroids.size() * sizeof(float) +
                                     ivfpq->precomputed_table.size() * sizeof(float));
    }
    return b;
  }
  return static_cast<std::int64_t>(index->sa_code_size()) * index->ntotal;
}

// Slot order and exact scores for the ids of an allow set (the exact-subset path).
struct Scored {
  float score;
  std::int64_t id;
};

bool better(Metric m, float a, float b) { return m == Metric::Cosine ? a > b : a < b; }

// The best `want` of `all`, best first; ties by id so results depend only on the inputs.
std::vector<Hit> best_of(std::vector<Scored>& all, std::int64_t want, Metric metric) {
  auto cmp = [metric](const Scored& a, const Scored& b) {
    return a.score != b.score ? better(metric, a.score, b.score) : a.id < b.id;
  };
  const auto n = static_cast<std::int64_t>(all.size());
  const std::int64_t keep = std::min(want, n);
  std::partial_sort(all.begin(), all.begin() + keep, all.end(), cmp);
  std::vector<Hit> out;
  out.reserve(static_cast<std::size_t>(keep));
  for (std::int64_t i = 0; i < keep; ++i) {
    const float score = all[static_cast<std::size_t>(i)].score;
    out.push_back({all[static_cast<std::size_t>(i)].id,
                   metric == Metric::L2 ? std::sqrt(std::max(score, 0.0f)) : score});
  }
  return out;
}

// Scores n vectors (n x dim) against one query into `out`: inner product, or squared L2.
void score_rows(Metric metric, const float* query, const float* rows, std::size_t n, int dim,
                float* out) {
  if (metric == Metric::Cosine) {
    faiss::fvec_inner_products_ny(out, query, rows, static_cast<std::size_t>(dim), n);
  } else {
    faiss::fvec_L2sqr_ny(out, query, rows, static_cast<std::size_t>(dim), n);
  }
}

// ---------------------------------------------------------------------------------------------
// Files.

void put_u16le(unsigned char* out, std::uint16_t v) {
  for (int i = 0; i < 2; ++i) out[i] = static_cast<unsigned char>(v >> (8 * i));
}

void put_u32le(unsigned char* out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<unsigned char>(v >> (8 * i));
}

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

// Streams bytes to a file while hashing them, so the trailer needs no second pass.
struct HashingWriter : faiss::IOWriter {
  HashingWriter(std::FILE* f, XXH3_state_t* h) : file(f), hash(h) { name = "index cache"; }
  size_t operator()(const void* ptr, size_t size, size_t nitems) override {
    if (size == 0 || nitems == 0) return nitems;  // FAISS writes empty vectors as (nullptr, 0)
    size_t written = std::fwrite(ptr, size, nitems, file);
    XXH3_64bits_update(hash, ptr, size * written);
    bytes += size * written;
    return written;
  }
  void put(const void* ptr, std::size_t n, const std::filesystem::path& path) {
    if ((*this)(ptr, 1, n) != n)
      throw IndexError(path.string() + ": write failed: " + errno_text());
  }
  std::FILE* file;
  XXH3_state_t* hash;
  std::uint64_t bytes = 0;
};

// Reads at most `left` bytes from the current position: FAISS cannot read past its part.
struct BoundedReader : faiss::IOReader {
  BoundedReader(std::FILE* f, std::uint64_t limit) : file(f), left(limit) { name = "index cache"; }
  size_t operator()(void* ptr, size_t size, size_t nitems) override {
    if (size == 0 || nitems == 0) return 0;
    size_t items = static_cast<size_t>(std::min<std::uint64_t>(nitems, left / size));
    size_t got = std::fread(ptr, size, items, file);
    left -= got * size;
    return got;
  }
  std::FILE* file;
  std::uint64_t left;
};

void fsync_dir(const std::filesystem::path& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw IndexError(dir.string() + ": cannot open directory to sync: " + errno_text());
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw IndexError(dir.string() + ": fsync failed: " + errno_text());
}

std::array<unsigned char, 16> parse_collection_id(const std::string& id) {
  std::array<unsigned char, 16> out{};
  auto nibble = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c - 'a' + 10; };
  bool ok = id.size() == 32;
  for (std::size_t i = 0; ok && i < id.size(); ++i) {
    ok = (id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f');
  }
  if (!ok) {
    throw IndexError("collection id must be 32 lowercase hex digits, got '" + id + "'");
  }
  for (std::size_t i = 0; i < 16; ++i) {
    out[i] = static_cast<unsigned char>(nibble(id[2 * i]) * 16 + nibble(id[2 * i + 1]));
  }
  return out;
}

std::string hex(const unsigned char* p, std::size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < n; ++i) {
    out += digits[p[i] >> 4];
    out += digits[p[i] & 15];
  }
  return out;
}

struct FileLayout {
  unsigned char state = 0;
  ProbeTuning tuning;
  std::uint64_t faiss_bytes = 0;
  std::uint64_t slots = 0;
};

// Checks the trailer, the checksum, the collection id and generation before FAISS sees a byte.
FileLayout verify_file(const std::filesystem::path& path, std::FILE* f,
                       const std::array<unsigned char, 16>& collection, std::int64_t generation) {
  std::error_code ec;
  auto size = std::filesystem::file_size(path, ec);
  if (ec) throw IndexError(path.string() + ": cannot stat: " + ec.message());
  if (size < kHeaderBytes + kTrailerBytes) {
    throw IndexError(path.string() + ": not a lookalike index file (too short: " +
                     std::to_string(size) + " bytes)");
  }
  std::array<unsigned char, kTrailerBytes> trailer{};
  if (std::fseek(f, static_cast<long>(size - kTrailerBytes), SEEK_SET) != 0 ||
      std::fread(trailer.data(), 1, trailer.size(), f) != trailer.size()) {
    throw IndexError(path.string() + ": cannot read the trailer: " + errno_text());
  }
  if (std::memcmp(trailer.data(), kTrailerMagic.data(), kTrailerMagic.size()) != 0) {
    throw IndexError(path.string() +
                     ": not a lookalike index file, or another version (no LKLKIDX2 trailer; "
                     "truncated?)");
  }
  const std::uint64_t payload = size - kTrailerBytes;
  const std::uint64_t said = get_u64le(trailer.data() + 48);
  if (said != payload) {
    throw IndexError(path.string() + ": truncated or padded (trailer says " + std::to_string(said) +
                     " payload bytes, file has " + std::to_string(payload) + ")");
  }
  std::rewind(f);
  HashState hash;
  std::vector<char> buf(1 << 20);
  for (std::uint64_t left = size - 8; left > 0;) {
    std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(left, buf.size()));
    if (std::fread(buf.data(), 1, want, f) != want) {
      throw IndexError(path.string() + ": read failed: " + errno_text());
    }
    XXH3_64bits_update(hash.state, buf.data(), want);
    left -= want;
  }
  if (XXH3_64bits_digest(hash.state) != get_u64le(trailer.data() + 56)) {
    throw IndexError(path.string() + ": checksum mismatch (file is corrupt)");
  }
  if (std::memcmp(trailer.data() + 8, collection.data(), collection.size()) != 0) {
    throw IndexError("index file " + path.string() + " belongs to another collection (" +
                     hex(trailer.data() + 8, 16) + ", expected " +
                     hex(collection.data(), collection.size()) + ")");
  }
  const auto file_generation = static_cast<std::int64_t>(get_u64le(trailer.data() + 24));
  if (file_generation != generation) {
    throw IndexError("index file " + path.string() + " is for generation " +
                     std::to_string(file_generation) + ", expected " + std::to_string(generation));
  }
  FileLayout out;
  out.faiss_bytes = get_u64le(trailer.data() + 32);
  out.slots = get_u64le(trailer.data() + 40);
  std::array<unsigned char, kHeaderBytes> header{};
  std::rewind(f);
  if (std::fread(header.data(), 1, header.size(), f) != header.size()) {
    throw IndexError(path.string() + ": read failed: " + errno_text());
  }
  out.state = header[0];
  const unsigned recall = header[2] | (header[3] << 8);
  const std::uint32_t nprobe = header[4] | (header[5] << 8) | (header[6] << 16) |
                               (static_cast<std::uint32_t>(header[7]) << 24);
  if (recall > 10000 || nprobe > kMaxLists || (out.state == kStateFallback && nprobe != 0)) {
    throw IndexError(path.string() + ": inconsistent header (state " + std::to_string(out.state) +
                     ", tuned nprobe " + std::to_string(nprobe) + ", recall " +
                     std::to_string(recall) + " / 10,000)");
  }
  out.tuning = {static_cast<int>(nprobe), recall / 10000.0};
  if ((out.state != kStateFallback && out.state != kStateFactory) || out.faiss_bytes > payload ||
      out.slots > payload / 8 || kHeaderBytes + out.faiss_bytes + 8 * out.slots != payload) {
    throw IndexError(path.string() + ": inconsistent layout (state " + std::to_string(out.state) +
                     ", " + std::to_string(out.faiss_bytes) + " FAISS bytes, " +
                     std::to_string(out.slots) + " slots, payload " + std::to_string(payload) +
                     ")");
  }
  return out;
}

std::string fmt_recall(double recall) {
  char buf[64];
  std::snprintf(buf, sizeof buf, " (Recall@10 %.3f when trained)", recall);
  return buf;
}

// FAISS maps an IVF index's lists as OnDiskInvertedLists, whose prefetch_lists() (called by
// every IndexIVF::search) starts prefetch_nthread = 32 threads per search to touch the probed
// lists' pages. For a file in the page cache that is all cost: measured on 100,000 x 1280,
// IVF1024,Flat, one query at nprobe 32, 4.6-5.9 ms mapped against 0.58 ms in memory, and
// 0.58 ms mapped with the prefetch off. Pages not yet in memory fault in on first touch.
void no_list_prefetch(faiss::Index* index) {
  auto* ivf = dynamic_cast<faiss::IndexIVF*>(core(index, true));
  if (ivf == nullptr) return;
  if (auto* od = dynamic_cast<faiss::OnDiskInvertedLists*>(ivf->invlists)) od->prefetch_nthread = 0;
}

// nprobe when nothing was tuned: nlist / 16, clamped to 16..256 and to nlist.
std::size_t untuned_nprobe(const faiss::IndexIVF& ivf) {
  return std::min(ivf.nlist, std::clamp(ivf.nlist / 16, kMinProbes, kMaxProbes));
}

std::size_t builtin_nprobe(const faiss::IndexIVF& ivf, const ProbeTuning& tuning) {
  if (tuning.nprobe <= 0) return untuned_nprobe(ivf);
  return std::min(ivf.nlist, static_cast<std::size_t>(tuning.nprobe));
}

// See ProbeTuning. `index` (whose core is `ivf`) holds exactly the n rows of x, as slots 0..n-1,
// and is not shared yet: its nprobe member is set here. Throws what FAISS throws.
ProbeTuning tune_nprobe(faiss::Index& index, faiss::IndexIVF& ivf, const float* x, std::int64_t n,
                        int dim, Metric metric) {
  if (n < 2) return {};
  const std::int64_t nq = std::min<std::int64_t>(kTuneQueries, n);
  const std::int64_t k = std::min<std::int64_t>(10, n - 1);
  const std::int64_t kq = k + 1;  // the query itself comes back too
  std::vector<std::int64_t> rows(static_cast<std::size_t>(nq));
  std::vector<float> q(static_cast<std::size_t>(nq) * dim);
  for (std::int64_t i = 0; i < nq; ++i) {
    rows[i] = i * n / nq;
    std::memcpy(&q[i * dim], x + rows[i] * dim, sizeof(float) * dim);
  }
  std::vector<float> D(static_cast<std::size_t>(nq * kq));
  std::vector<idx_t> I(static_cast<std::size_t>(nq * kq));
  // The first k labels of row i other than the query's own.
  auto neighbours = [&](std::int64_t i) {
    std::vector<idx_t> out;
    for (std::int64_t j = 0; j < kq && static_cast<std::int64_t>(out.size()) < k; ++j) {
      const idx_t label = I[i * kq + j];
      if (label >= 0 && label != rows[i]) out.push_back(label);
    }
    return out;
  };
  if (metric == Metric::Cosine) {
    faiss::knn_inner_product(q.data(), x, dim, nq, n, kq, D.data(), I.data());
  } else {
    faiss::knn_L2sqr(q.data(), x, dim, nq, n, kq, D.data(), I.data());
  }
  std::vector<std::vector<idx_t>> truth(static_cast<std::size_t>(nq));
  for (std::int64_t i = 0; i < nq; ++i) {
    truth[i] = neighbours(i);
    std::sort(truth[i].begin(), truth[i].end());
  }
  ProbeTuning previous;
  for (std::size_t p = 1;; p = std::min(2 * p, ivf.nlist)) {
    ivf.nprobe = p;
    index.search(nq, q.data(), kq, D.data(), I.data());
    std::int64_t found = 0;
    for (std::int64_t i = 0; i < nq; ++i) {
      for (idx_t label : neighbours(i)) {
        found += std::binary_search(truth[i].begin(), truth[i].end(), label) ? 1 : 0;
      }
    }
    const ProbeTuning now{static_cast<int>(p),
                          static_cast<double>(found) / static_cast<double>(nq * k)};
    if (previous.nprobe > 0 && now.recall - previous.recall < kTunePlateau) return previous;
    if (now.recall >= kTuneRecall || p == ivf.nlist) return now;
    previous = now;
  }
}

}  // namespace

// -----------------------------------------------------------------------------------------------

struct VectorIndex::Shared {
  std::shared_mutex ef_mutex;  // guards hnsw.efSearch of the index in use
};

Metric parse_metric(const std::string& s) {
  if (s == "cosine") return Metric::Cosine;
  if (s == "l2") return Metric::L2;
  throw IndexError("metric: unknown value '" + s + "' (expected cosine or l2)");
}

std::string to_string(Metric m) { return m == Metric::Cosine ? "cosine" : "l2"; }

std::string to_string(SearchPath p) {
  return p == SearchPath::Selector ? "selector" : "over-fetch";
}

void VectorIndex::validate_factory(int dim, Metric metric, const std::string& factory) {
  build_index(dim, metric, factory);
}

VectorIndex::VectorIndex() : shared_(std::make_unique<Shared>()) {}

VectorIndex::VectorIndex(int dim, Metric metric, const std::string& factory) : VectorIndex() {
  dim_ = dim;
  metric_ = metric;
  factory_ = factory;
  index_ = build_index(dim, metric, factory);
  if (!index_->is_trained) {
    threshold_ = std::max<std::int64_t>(1, training_points(index_.get()));
    fallback_ = make_flat(dim, metric);
  }
  apply_search_defaults();
}

VectorIndex::~VectorIndex() = default;
VectorIndex::VectorIndex(VectorIndex&&) noexcept = default;
VectorIndex& VectorIndex::operator=(VectorIndex&&) noexcept = default;

faiss::Index& VectorIndex::active() const { return fallback_ ? *fallback_ : *index_; }

double VectorIndex::deleted_fraction() const {
  return slots() == 0 ? 0.0 : static_cast<double>(deleted()) / static_cast<double>(slots());
}

SearchPath VectorIndex::search_path() const {
  return kind_of(&active()) == Kind::OverFetch ? SearchPath::OverFetch : SearchPath::Selector;
}

std::string VectorIndex::status() const {
  std::string counts = with_commas(size()) + " vectors";
  if (deleted() > 0) counts += ", " + with_commas(deleted()) + " deleted";
  if (threshold_ == 0) return factory_ + "; " + counts;
  if (trained() && tuning_.nprobe > 0) {
    return factory_ + ", trained; " + counts + "; nprobe " + std::to_string(tuning_.nprobe) +
           fmt_recall(tuning_.recall);
  }
  if (trained()) return factory_ + ", trained; " + counts;
  std::string out = "exact search until " + with_commas(std::max(threshold_, retry_at_)) +
                    " vectors (" + factory_ + " trains then); " + with_commas(size()) + " now";
  if (deleted() > 0) out += ", " + with_commas(deleted()) + " deleted";
  if (!training_error_.empty()) out += "; last training failed: " + training_error_;
  return out;
}

void VectorIndex::apply_search_defaults() {
  faiss::Index* at = core(index_.get(), true);
  if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(at)) {
    ivf->nprobe = builtin_nprobe(*ivf, tuning_);
  } else if (auto* h = dynamic_cast<faiss::IndexHNSW*>(at)) {
    h->hnsw.efSearch = kHnswEfSearchFloor;
  }
}

void VectorIndex::append(const float* vectors, const std::int64_t* ids, std::int64_t n) {
  faiss::Index& index = active();
  const std::int64_t base = slots();
  try {
    index.add(n, vectors);
  } catch (const std::exception& e) {
    // Whatever FAISS appended before failing stays unreachable: those slots are deleted.
    while (slots() < index.ntotal) slot_id_.push_back(-1);
    throw IndexError("adding " + std::to_string(n) + " vectors to index '" + factory_ +
                     "' failed: " + faiss_cause(e));
  }
  if (index.ntotal != base + n) {
    throw IndexError("index '" + factory_ + "' holds " + std::to_string(index.ntotal) +
                     " vectors after an add, expected " + std::to_string(base + n));
  }
  for (std::int64_t i = 0; i < n; ++i) {
    auto [it, inserted] = id_slot_.try_emplace(ids[i], base + i);
    if (!inserted) {
      slot_id_[static_cast<std::size_t>(it->second)] = -1;
      it->second = base + i;
    }
    slot_id_.push_back(ids[i]);
  }
}

void VectorIndex::train_and_move() {
  const auto* flat = static_cast<const faiss::IndexFlat*>(fallback_.get());
  const std::int64_t live = size();
  // k-means does about live * dim * centroids multiply-adds per iteration (25 iterations), and
  // opens several OpenMP regions per iteration. Small jobs run on one thread: on a busy machine
  // every region's barrier can wait out a scheduler time slice (measured: PQ32x4 on 12,000
  // vectors, 0.46 s alone, 11 s while two builds ran).
  const double work = static_cast<double>(live) * dim_ *
                      // NOLINTNEXTLINE(bugprone-integer-division): a whole number of centroids
                      static_cast<double>(threshold_ / kPointsPerCentroid + 1) * 25;
  OmpSerial serial(work < kSerialTrainingWork);
  std::unique_ptr<faiss::Index> fresh;
  std::vector<std::int64_t> ids;
  std::unordered_map<std::int64_t, std::int64_t> id_slot;
  ProbeTuning tuning;
  try {  // nothing here changes *this until it all worked
    std::vector<float> x(static_cast<std::size_t>(live) * dim_);
    ids.resize(static_cast<std::size_t>(live));
    std::size_t j = 0;
    for (std::size_t s = 0; s < slot_id_.size(); ++s) {
      if (slot_id_[s] < 0) continue;
      std::memcpy(&x[j * dim_], flat->get_xb() + s * dim_, sizeof(float) * dim_);
      ids[j++] = slot_id_[s];
    }
    fresh = build_index(dim_, metric_, factory_);
    fresh->train(live, x.data());
    enable_direct_map(fresh.get());
    fresh->add(live, x.data());
    if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(core(fresh.get(), true))) {
      tuning = tune_nprobe(*fresh, *ivf, x.data(), live, dim_, metric_);
    }
    id_slot.reserve(ids.size());
    for (std::size_t s = 0; s < ids.size(); ++s) id_slot.emplace(ids[s], s);
  } catch (const std::exception& e) {
    training_error_ = "on " + with_commas(live) + " vectors: " + faiss_cause(e);
    retry_at_ = 2 * live;
    return;
  }
  index_ = std::move(fresh);
  fallback_.reset();
  training_error_.clear();
  retry_at_ = 0;
  id_slot_ = std::move(id_slot);
  slot_id_ = std::move(ids);
  tuning_ = tuning;
  apply_search_defaults();
}

void VectorIndex::add(const float* vectors, const std::int64_t* ids, std::int64_t n) {
  if (n < 0) throw IndexError("add: negative count " + std::to_string(n));
  if (n == 0) return;
  if (mapped_) {
    throw IndexError("add: index '" + factory_ +
                     "' is memory-mapped read-only; load it unmapped to add vectors");
  }
  // Within one call a repeated id keeps its last row.
  std::unordered_map<std::int64_t, std::int64_t> last_row;
  last_row.reserve(static_cast<std::size_t>(n));
  for (std::int64_t r = 0; r < n; ++r) last_row[ids[r]] = r;
  std::vector<float> kept_vectors;
  std::vector<std::int64_t> kept_ids;
  const float* x = vectors;
  const std::int64_t* xid = ids;
  std::int64_t m = n;
  if (static_cast<std::int64_t>(last_row.size()) != n) {
    m = static_cast<std::int64_t>(last_row.size());
    kept_vectors.reserve(static_cast<std::size_t>(m) * dim_);
    kept_ids.reserve(static_cast<std::size_t>(m));
    for (std::int64_t r = 0; r < n; ++r) {
      if (last_row[ids[r]] != r) continue;
      kept_vectors.insert(kept_vectors.end(), vectors + r * dim_, vectors + (r + 1) * dim_);
      kept_ids.push_back(ids[r]);
    }
    x = kept_vectors.data();
    xid = kept_ids.data();
  }
  for (std::int64_t done = 0; done < m;) {
    std::int64_t chunk = m - done;
    const std::int64_t target = std::max(threshold_, retry_at_);
    if (!trained()) chunk = std::min(chunk, std::max<std::int64_t>(1, target - size()));
    {
      // FAISS's IVF add opens an OpenMP parallel region whatever the count: an upload's one
      // vector, added from an HTTP worker, would leave an OpenMP team on that worker and slow
      // every forward pass (docs/engine.md, "OpenMP teams": 4.0 -> 8.3-9.3 ms a batch-1 pass).
      OmpSerial serial(chunk < kSerialAddBelow);
      append(x + done * dim_, xid + done, chunk);
    }
    done += chunk;
    if (!trained() && size() >= target) train_and_move();
  }
}

void VectorIndex::reserve(std::int64_t more) {
  if (more <= 0 || mapped_) return;
  std::int64_t target = slots() + more;
  // The exact fallback is copied out and freed when the index trains: no further than that.
  if (!trained()) target = std::min(target, std::max(threshold_, retry_at_));
  auto* codes = dynamic_cast<faiss::IndexFlatCodes*>(&active());
  try {
    if (codes != nullptr) {
      codes->codes.reserve(static_cast<std::size_t>(target) * codes->code_size);
    }
    slot_id_.reserve(static_cast<std::size_t>(target));
    id_slot_.reserve(static_cast<std::size_t>(target));
  } catch (const std::exception&) {  // bad_alloc, or length_error past max_size()
    // Only a hint: the adds grow the arrays as they come.
  }
}

std::int64_t VectorIndex::capacity() const {
  const auto* codes = dynamic_cast<const faiss::IndexFlatCodes*>(&active());
  if (codes == nullptr || codes->code_size == 0) return slots();
  return static_cast<std::int64_t>(
      std::min(codes->codes.capacity() / codes->code_size, slot_id_.capacity()));
}

std::int64_t VectorIndex::remove(const std::vector<std::int64_t>& ids) {
  std::int64_t removed = 0;
  for (std::int64_t id : ids) {
    auto it = id_slot_.find(id);
    if (it == id_slot_.end()) continue;
    slot_id_[static_cast<std::size_t>(it->second)] = -1;
    id_slot_.erase(it);
    ++removed;
  }
  return removed;
}

std::vector<std::vector<Hit>> VectorIndex::search(
    const float* queries, std::int64_t nq, int k, const std::unordered_set<std::int64_t>* exclude,
    const std::unordered_set<std::int64_t>* allow) const {
  SearchOptions options;
  options.exclude = exclude;
  options.allow = allow;
  return search(queries, nq, k, options, nullptr);
}

void VectorIndex::set_search_defaults(const SearchParams& params) {
  if (params.nprobe < 0 || params.ef_search < 0 || params.rerank < 0) {
    throw IndexError("search parameters must not be negative");
  }
  defaults_ = params;
}

SearchParams VectorIndex::effective_params(const SearchParams& request) const {
  auto pick = [](int asked, int fallback) { return asked > 0 ? asked : fallback; };
  SearchParams e;
  const faiss::Index* at = core(&active(), true);
  if (auto* ivf = dynamic_cast<const faiss::IndexIVF*>(at)) {
    const auto builtin = builtin_nprobe(*ivf, tuning_);
    const auto n = static_cast<std::size_t>(
        pick(request.nprobe, pick(defaults_.nprobe, static_cast<int>(builtin))));
    e.nprobe = static_cast<int>(std::min(n, ivf->nlist));
  } else if (dynamic_cast<const faiss::IndexHNSW*>(at) != nullptr) {
    e.ef_search = pick(request.ef_search, pick(defaults_.ef_search, kHnswEfSearchFloor));
  }
  e.rerank = pick(request.rerank, defaults_.rerank);
  return e;
}

std::int64_t VectorIndex::exact_subset_limit(const SearchParams& request) const {
  const faiss::Index* at = core(&active(), true);
  std::int64_t visited = 0;
  if (auto* ivf = dynamic_cast<const faiss::IndexIVF*>(at)) {
    visited = slots() * effective_params(request).nprobe / static_cast<std::int64_t>(ivf->nlist);
  }
  return std::max(kExactSubsetFloor, visited);
}

std::int64_t VectorIndex::memory_bytes() const {
  // The slot table and the id -> slot hash map (about 32 bytes a live entry in libstdc++).
  return faiss_bytes(&active()) + slots() * 8 + size() * 32;
}

std::int64_t VectorIndex::mapped_bytes() const {
  auto* ivf = dynamic_cast<const faiss::IndexIVF*>(core(&active(), true));
  if (ivf == nullptr) return 0;
  auto* od = dynamic_cast<const faiss::OnDiskInvertedLists*>(ivf->invlists);
  return od ? static_cast<std::int64_t>(od->totsize) : 0;
}

// Vectors of `slots` into `out` (n x dim) where the index stores them uncompressed (exact =
// true) or can decode them (exact = false); false when it can do neither.
bool VectorIndex::read_vectors(const std::int64_t* slots, std::size_t n, float* out,
                               bool& exact) const {
  const faiss::Index& index = active();
  const faiss::IndexFlat* flat = dynamic_cast<const faiss::IndexFlat*>(&index);
  if (auto* h = dynamic_cast<const faiss::IndexHNSWFlat*>(&index)) {
    flat = dynamic_cast<const faiss::IndexFlat*>(h->storage);
  }
  if (flat != nullptr) {
    for (std::size_t i = 0; i < n; ++i) {
      std::memcpy(out + i * dim_, flat->get_xb() + slots[i] * dim_, sizeof(float) * dim_);
    }
    exact = true;
    return true;
  }
  try {
    for (std::size_t i = 0; i < n; ++i) index.reconstruct(slots[i], out + i * dim_);
  } catch (const std::exception&) {
    return false;
  }
  exact = typeid(index) == typeid(faiss::IndexIVFFlat);
  return true;
}

// Scores the allowed live ids one by one (see the header): exact where the index stores full
// vectors or `source` gives them, else on the index's decoded codes. Empty when neither.
std::optional<std::vector<std::vector<Hit>>> VectorIndex::exact_subset(const float* queries,
                                                                       std::int64_t nq,
                                                                       std::int64_t want,
                                                                       const SearchOptions& options,
                                                                       SearchPlan* plan) const {
  std::vector<std::pair<std::int64_t, std::int64_t>> members;  // (slot, id), by slot
  members.reserve(options.allow->size());
  for (std::int64_t id : *options.allow) {
    auto it = id_slot_.find(id);
    if (it == id_slot_.end()) continue;
    if (options.exclude != nullptr && options.exclude->count(id) != 0) continue;
    members.emplace_back(it->second, id);
  }
  std::sort(members.begin(), members.end());
  // Flat storage: score each row where it lies (one pass over the rows, no copy).
  const faiss::IndexFlat* flat = dynamic_cast<const faiss::IndexFlat*>(&active());
  if (auto* h = dynamic_cast<const faiss::IndexHNSWFlat*>(&active())) {
    flat = dynamic_cast<const faiss::IndexFlat*>(h->storage);
  }
  if (flat != nullptr) {
    const float* xb = flat->get_xb();
    const auto d = static_cast<std::size_t>(dim_);
    std::vector<std::vector<Hit>> out(static_cast<std::size_t>(nq));
    std::vector<Scored> all(members.size());
    for (std::int64_t q = 0; q < nq; ++q) {
      const float* x = queries + q * dim_;
      for (std::size_t i = 0; i < members.size(); ++i) {
        const float* row = xb + static_cast<std::size_t>(members[i].first) * d;
        all[i] = {metric_ == Metric::Cosine ? faiss::fvec_inner_product(x, row, d)
                                            : faiss::fvec_L2sqr(x, row, d),
                  members[i].second};
      }
      out[static_cast<std::size_t>(q)] = best_of(all, want, metric_);
    }
    if (plan != nullptr) {
      plan->method = "exact-subset";
      plan->candidates = static_cast<std::int64_t>(members.size());
    }
    return out;
  }
  constexpr std::size_t kChunk = 1024;
  std::vector<float> rows(kChunk * static_cast<std::size_t>(dim_));
  std::vector<float> scores(kChunk);
  std::vector<std::int64_t> chunk_slots(kChunk), chunk_ids(kChunk);
  std::unique_ptr<bool[]> found(new bool[kChunk]);
  std::vector<std::vector<Scored>> all(static_cast<std::size_t>(nq));
  for (auto& a : all) a.reserve(members.size());
  bool exact = true;
  for (std::size_t at = 0; at < members.size(); at += kChunk) {
    const std::size_t n = std::min(kChunk, members.size() - at);
    for (std::size_t i = 0; i < n; ++i) {
      chunk_slots[i] = members[at + i].first;
      chunk_ids[i] = members[at + i].second;
      found[i] = true;
    }
    // Decoded codes where the index is lossy (re-ranked below); the caller's full vectors only
    // where the index cannot decode at all (one catalog read per id is far slower).
    bool stored_exact = false;
    const bool stored = read_vectors(chunk_slots.data(), n, rows.data(), stored_exact);
    if (!stored && options.vectors != nullptr) {
      (*options.vectors)(chunk_ids.data(), static_cast<std::int64_t>(n), rows.data(), found.get());
      stored_exact = true;
    } else if (!stored) {
      return std::nullopt;
    }
    exact = exact && stored_exact;
    for (std::int64_t q = 0; q < nq; ++q) {
      score_rows(metric_, queries + q * dim_, rows.data(), n, dim_, scores.data());
      auto& a = all[static_cast<std::size_t>(q)];
      for (std::size_t i = 0; i < n; ++i) {
        if (found[i]) a.push_back({scores[i], chunk_ids[i]});
      }
    }
  }
  const int depth = effective_params(options.params).rerank;
  const bool reranking = !exact && depth > 0 && options.vectors != nullptr;
  const std::int64_t keep = reranking ? std::max<std::int64_t>(want, depth) : want;
  std::vector<std::vector<Hit>> out(static_cast<std::size_t>(nq));
  for (std::int64_t q = 0; q < nq; ++q) {
    out[static_cast<std::size_t>(q)] = best_of(all[static_cast<std::size_t>(q)], keep, metric_);
  }
  if (reranking) rerank(queries, out, want, *options.vectors);
  if (plan != nullptr) {
    // "subset-decoded": scored on the index's decoded codes (then re-ranked when asked).
    plan->method = exact ? "exact-subset" : reranking ? "subset-reranked" : "subset-decoded";
    plan->candidates = static_cast<std::int64_t>(members.size());
  }
  return out;
}

// Re-scores each row's hits from full vectors and keeps the best `want` (hits the source
// lacks keep their index score).
void VectorIndex::rerank(const float* queries, std::vector<std::vector<Hit>>& out,
                         std::int64_t want, const VectorSource& source) const {
  std::vector<float> rows;
  std::vector<std::int64_t> ids;
  std::vector<float> scores;
  for (std::size_t q = 0; q < out.size(); ++q) {
    auto& hits = out[q];
    const std::size_t n = hits.size();
    ids.resize(n);
    rows.assign(n * static_cast<std::size_t>(dim_), 0.0f);
    scores.resize(n);
    std::unique_ptr<bool[]> found(new bool[std::max<std::size_t>(n, 1)]);
    for (std::size_t i = 0; i < n; ++i) {
      ids[i] = hits[i].id;
      found[i] = false;
    }
    source(ids.data(), static_cast<std::int64_t>(n), rows.data(), found.get());
    score_rows(metric_, queries + q * dim_, rows.data(), n, dim_, scores.data());
    std::vector<Scored> all;
    all.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      float s = hits[i].score;
      if (metric_ == Metric::L2) s = s * s;  // best_of takes squared distances
      all.push_back({found[i] ? scores[i] : s, ids[i]});
    }
    hits = best_of(all, want, metric_);
  }
}

std::vector<std::vector<Hit>> VectorIndex::search(const float* queries, std::int64_t nq, int k,
                                                  const SearchOptions& options,
                                                  SearchPlan* plan) const {
  if (k < 1) throw IndexError("search: k must be at least 1, got " + std::to_string(k));
  if (nq < 0) throw IndexError("search: negative query count " + std::to_string(nq));
  const SearchParams& asked = options.params;
  if (asked.nprobe < 0 || asked.ef_search < 0 || asked.rerank < 0) {
    throw IndexError("search: nprobe, efSearch and rerank must not be negative");
  }
  const SearchParams eff = effective_params(asked);
  if (plan != nullptr) {
    *plan = SearchPlan{};
    plan->params = eff;
  }
  std::vector<std::vector<Hit>> out(static_cast<std::size_t>(nq));
  if (nq == 0 || size() == 0) return out;
  const std::unordered_set<std::int64_t>* exclude = options.exclude;
  const std::unordered_set<std::int64_t>* allow = options.allow;
  std::int64_t excluded = 0;
  if (exclude) {
    for (std::int64_t id : *exclude) excluded += contains(id) ? 1 : 0;
  }
  if (excluded == 0) exclude = nullptr;
  LiveSlots selector(slot_id_, exclude, allow);
  // Members: live, not excluded, allowed. O(|allow|) to count them.
  std::int64_t members = size() - excluded;
  if (allow) {
    members = 0;
    for (std::int64_t id : *allow) members += contains(id) && selector.member(id) ? 1 : 0;
  }
  const std::int64_t want = std::min<std::int64_t>(k, members);
  if (want <= 0) return out;
  OmpSerial serial(nq == 1);
  if (allow && members <= exact_subset_limit(asked)) {
    SearchOptions subset = options;
    subset.exclude = exclude;
    if (auto hits = exact_subset(queries, nq, want, subset, plan)) return std::move(*hits);
  }
  // With re-ranking, the index's best `fetch` candidates are re-scored and `want` kept.
  const bool reranking = eff.rerank > 0 && options.vectors != nullptr;
  const std::int64_t fetch =
      reranking ? std::min<std::int64_t>(members, std::max<std::int64_t>(want, eff.rerank)) : want;
  // A few excluded ids (a search by id leaves out the query image) and no tombstones: ask FAISS
  // for fetch + excluded hits without a selector and drop the excluded here. Exact, and cheaper
  // than a selector, which costs a hash lookup per scanned code (12% of an IVF-PQ search).
  const bool few_excluded = excluded > 0 && excluded <= kFewExcluded && deleted() == 0 && !allow;
  const bool filter = (deleted() > 0 || excluded > 0 || allow != nullptr) && !few_excluded;

  faiss::Index& index = active();
  const Kind kind = kind_of(&index);
  faiss::Index* tuned = core(&index, true);  // the IVF or HNSW whose member may need setting
  auto* tuned_ivf = dynamic_cast<faiss::IndexIVF*>(tuned);
  auto* tuned_hnsw = dynamic_cast<faiss::IndexHNSW*>(tuned);

  // Runs one FAISS search of `n` queries for `kq` hits each, into D / I (n x kq).
  std::vector<float> D;
  std::vector<idx_t> I;
  auto run = [&](const float* q, std::int64_t n, std::int64_t kq) {
    D.assign(static_cast<std::size_t>(n * kq), 0.0f);
    I.assign(static_cast<std::size_t>(n * kq), -1);
    faiss::SearchParameters plain;
    faiss::SearchParametersIVF ivf_params;
    faiss::SearchParametersHNSW hnsw_params;
    const faiss::SearchParameters* params = nullptr;
    // Members read by FAISS during the search (HNSW's efSearch always, IVF's nprobe where the
    // type takes no SearchParameters) must hold the wanted value for the whole search:
    // searches wanting the current value share the lock, another value is set and searched with
    // under the exclusive lock (results depend only on query, k and parameters).
    std::shared_lock<std::shared_mutex> member_lock;
    std::unique_lock<std::shared_mutex> member_exclusive;
    auto hold = [&](auto& member, auto value) {
      member_lock = std::shared_lock<std::shared_mutex>(shared_->ef_mutex);
      if (member != value) {
        member_lock.unlock();
        member_exclusive = std::unique_lock<std::shared_mutex>(shared_->ef_mutex);
        member = value;
      }
    };
    if (kind == Kind::Ivf) {
      ivf_params.nprobe = static_cast<std::size_t>(eff.nprobe);
      ivf_params.max_codes = tuned_ivf->max_codes;
      ivf_params.sel = filter ? &selector : nullptr;
      params = &ivf_params;
    } else if (kind == Kind::Hnsw) {
      const int ef = static_cast<int>(std::max<std::int64_t>(eff.ef_search, kq));
      hold(tuned_hnsw->hnsw.efSearch, ef);
      hnsw_params.efSearch = ef;
      hnsw_params.sel = &selector;
      if (filter) params = &hnsw_params;
    } else if (kind == Kind::Plain) {
      plain.sel = &selector;
      if (filter) params = &plain;
    } else if (tuned_ivf != nullptr) {  // fast-scan IVF, a refine stage over IVF: no params
      hold(tuned_ivf->nprobe, static_cast<std::size_t>(eff.nprobe));
    } else if (tuned_hnsw != nullptr) {
      hold(tuned_hnsw->hnsw.efSearch, static_cast<int>(std::max<std::int64_t>(eff.ef_search, kq)));
    }
    try {
      index.search(n, q, kq, D.data(), I.data(), params);
    } catch (const std::exception& e) {
      throw IndexError("search in index '" + factory_ + "' failed: " + faiss_cause(e));
    }
  };
  // Appends row `row` of D / I (kq wide) to `hits`: live, not excluded, at most `fetch`.
  // Returns how many labels FAISS filled in.
  auto collect = [&](std::int64_t row, std::int64_t kq, std::vector<Hit>& hits) {
    std::int64_t filled = 0;
    for (std::int64_t j = 0; j < kq; ++j) {
      const auto at = static_cast<std::size_t>(row * kq + j);
      const idx_t slot = I[at];
      if (slot < 0 || slot >= slots()) continue;  // FAISS pads with -1 when it finds fewer
      ++filled;
      if (!selector.member(slot_id_[static_cast<std::size_t>(slot)])) continue;
      const std::int64_t id = slot_id_[static_cast<std::size_t>(slot)];
      if (static_cast<std::int64_t>(hits.size()) >= fetch) continue;
      float score = D[at];
      if (metric_ == Metric::L2) score = std::sqrt(std::max(score, 0.0f));
      hits.push_back({id, score});
    }
    return filled;
  };
  auto finish = [&]() {
    if (reranking) {
      rerank(queries, out, want, *options.vectors);
      if (plan != nullptr) plan->candidates = fetch;
    }
    return std::move(out);
  };

  if (kind != Kind::OverFetch || !filter) {
    const std::int64_t kq = few_excluded ? std::min(slots(), fetch + excluded) : fetch;
    run(queries, nq, kq);
    for (std::int64_t q = 0; q < nq; ++q) collect(q, kq, out[static_cast<std::size_t>(q)]);
    return finish();
  }
  // Over-fetch. Asking for k + excluded + deleted hits would always leave k live ones, but costs
  // a heap (and for a refine stage, exact distances) of up to 20% of the slots per query, and
  // fast-scan ranks worse at large k (measured: recall@10 0.60 against 0.70). So start from the
  // expected need, k + excluded over the live fraction, plus k, and double while a query still
  // lacks hits and FAISS filled every place (an exhaustive index needs one pass unless the
  // deleted slots cluster around the query; at most log2(slots / k) passes).
  // With an allow set the expected need is fetch over the members' share of the slots.
  const double live_fraction = 1.0 - deleted_fraction();
  const double need = allow ? static_cast<double>(fetch) * static_cast<double>(slots()) /
                                  static_cast<double>(members)
                            : static_cast<double>(fetch + excluded) / std::max(live_fraction, 1e-3);
  std::int64_t kq = std::min(slots(), static_cast<std::int64_t>(std::ceil(need)) + fetch);
  std::vector<std::int64_t> pending(static_cast<std::size_t>(nq));
  for (std::int64_t q = 0; q < nq; ++q) pending[static_cast<std::size_t>(q)] = q;
  std::vector<float> gathered;
  while (!pending.empty()) {
    const float* q = queries;
    if (static_cast<std::int64_t>(pending.size()) != nq) {
      gathered.resize(pending.size() * static_cast<std::size_t>(dim_));
      for (std::size_t i = 0; i < pending.size(); ++i) {
        std::memcpy(&gathered[i * dim_], queries + pending[i] * dim_, sizeof(float) * dim_);
      }
      q = gathered.data();
    }
    run(q, static_cast<std::int64_t>(pending.size()), kq);
    std::vector<std::int64_t> again;
    for (std::size_t i = 0; i < pending.size(); ++i) {
      auto& hits = out[static_cast<std::size_t>(pending[i])];
      hits.clear();
      std::int64_t filled = collect(static_cast<std::int64_t>(i), kq, hits);
      if (static_cast<std::int64_t>(hits.size()) < fetch && filled == kq && kq < slots()) {
        again.push_back(pending[i]);
      }
    }
    pending = std::move(again);
    kq = std::min(slots(), 2 * kq);
  }
  return finish();
}

void VectorIndex::save(const std::filesystem::path& path, const std::string& collection_id,
                       std::int64_t generation) const {
  const auto collection = parse_collection_id(collection_id);
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  try {
    File f(std::fopen(tmp.c_str(), "wb"));
    if (!f) throw IndexError(tmp.string() + ": cannot create: " + errno_text());
    HashState hash;
    HashingWriter writer(f.get(), hash.state);
    std::array<unsigned char, kHeaderBytes> header{};
    header[0] = trained() ? kStateFactory : kStateFallback;
    put_u16le(&header[2], static_cast<std::uint16_t>(std::lround(tuning_.recall * 10000)));
    put_u32le(&header[4], static_cast<std::uint32_t>(tuning_.nprobe));
    writer.put(header.data(), header.size(), tmp);
    try {
      // write_index reads hnsw.efSearch, which a concurrent search may be setting.
      std::shared_lock<std::shared_mutex> ef_lock(shared_->ef_mutex);
      faiss::write_index(&active(), &writer);
    } catch (const faiss::FaissException& e) {
      throw IndexError(tmp.string() + ": FAISS could not write the index: " + faiss_cause(e));
    }
    const std::uint64_t faiss_bytes = writer.bytes - kHeaderBytes;
    std::vector<unsigned char> buf;
    buf.reserve(8 * 4096);
    for (std::size_t s = 0; s < slot_id_.size(); ++s) {
      buf.resize(buf.size() + 8);
      put_u64le(&buf[buf.size() - 8], static_cast<std::uint64_t>(slot_id_[s]));
      if (buf.size() == 8 * 4096 || s + 1 == slot_id_.size()) {
        writer.put(buf.data(), buf.size(), tmp);
        buf.clear();
      }
    }
    std::array<unsigned char, kTrailerBytes> trailer{};
    std::memcpy(trailer.data(), kTrailerMagic.data(), kTrailerMagic.size());
    std::memcpy(trailer.data() + 8, collection.data(), collection.size());
    put_u64le(trailer.data() + 24, static_cast<std::uint64_t>(generation));
    put_u64le(trailer.data() + 32, faiss_bytes);
    put_u64le(trailer.data() + 40, slot_id_.size());
    put_u64le(trailer.data() + 48, writer.bytes);
    writer.put(trailer.data(), kTrailerBytes - 8, tmp);
    put_u64le(trailer.data() + 56, XXH3_64bits_digest(hash.state));
    if (std::fwrite(trailer.data() + 56, 1, 8, f.get()) != 8 || std::fflush(f.get()) != 0 ||
        ::fsync(::fileno(f.get())) != 0) {
      throw IndexError(tmp.string() + ": write failed: " + errno_text());
    }
    if (std::fclose(f.release()) != 0) {
      throw IndexError(tmp.string() + ": close failed: " + errno_text());
    }
    std::filesystem::rename(tmp, path);
  } catch (const std::exception& e) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    if (dynamic_cast<const IndexError*>(&e)) throw;
    throw IndexError(path.string() + ": cannot save index: " + faiss_cause(e));
  }
  fsync_dir(path.parent_path());
}

VectorIndex VectorIndex::load(const std::filesystem::path& path, int dim, Metric metric,
                              const std::string& factory, const std::string& collection_id,
                              std::int64_t generation, bool map) {
  const auto collection = parse_collection_id(collection_id);
  VectorIndex out(dim, metric, factory);  // validates the factory; the shell to fill
  File f(std::fopen(path.c_str(), "rb"));
  if (!f) throw IndexError(path.string() + ": cannot open: " + errno_text());
  const FileLayout layout = verify_file(path, f.get(), collection, generation);
  auto fail = [&](const std::string& why) { throw IndexError(path.string() + ": " + why); };
  if (layout.state == kStateFallback && out.threshold_ == 0) {
    fail("holds an untrained index's exact fallback, but factory '" + factory +
         "' needs no training");
  }
  if (std::fseek(f.get(), static_cast<long>(kHeaderBytes), SEEK_SET) != 0) {
    fail("seek failed: " + errno_text());
  }
  std::unique_ptr<faiss::Index> loaded;
  // Mapping needs FAISS's own file reader (its hook maps the file and reads list offsets by
  // ftell); the checksum above has vouched for every byte, so the bound is checked after.
  const bool mapping = map && layout.state == kStateFactory &&
                       dynamic_cast<faiss::IndexIVF*>(core(out.index_.get(), true)) != nullptr;
  std::uint64_t read_bytes = 0;
  try {
    if (mapping) {
      faiss::FileIOReader file_reader(f.get());
      loaded.reset(faiss::read_index(&file_reader, faiss::IO_FLAG_MMAP));
      const long at = std::ftell(f.get());
      read_bytes = at < 0 ? 0 : static_cast<std::uint64_t>(at) - kHeaderBytes;
    } else {
      BoundedReader reader(f.get(), layout.faiss_bytes);
      loaded.reset(faiss::read_index(&reader));
      read_bytes = layout.faiss_bytes - reader.left;
    }
  } catch (const std::exception& e) {  // FaissException, or bad_alloc on absurd sizes
    fail(std::string("FAISS cannot read the index: ") + faiss_cause(e));
  }
  if (read_bytes != layout.faiss_bytes) {
    fail("FAISS read " + std::to_string(read_bytes) + " of the " +
         std::to_string(layout.faiss_bytes) + " bytes of its part");
  }
  if (loaded->d != dim) {
    fail("index has dim " + std::to_string(loaded->d) + ", expected " + std::to_string(dim));
  }
  if (loaded->metric_type != faiss_metric(metric)) {
    fail("index metric differs from " + to_string(metric));
  }
  const faiss::Index* expected =
      layout.state == kStateFallback ? out.fallback_.get() : out.index_.get();
  if (structure(loaded.get()) != structure(expected)) {
    fail("index was built by another factory than '" + factory + "'");
  }
  if (!loaded->is_trained) fail("index is not trained");
  if (static_cast<std::uint64_t>(loaded->ntotal) != layout.slots) {
    fail("slot table has " + std::to_string(layout.slots) + " slots, the index " +
         std::to_string(loaded->ntotal) + " vectors");
  }
  out.slot_id_.resize(static_cast<std::size_t>(layout.slots));
  std::vector<unsigned char> buf(8 * 4096);
  for (std::size_t s = 0; s < out.slot_id_.size();) {
    std::size_t n = std::min<std::size_t>(4096, out.slot_id_.size() - s);
    if (std::fread(buf.data(), 8, n, f.get()) != n) fail("read failed: " + errno_text());
    for (std::size_t i = 0; i < n; ++i, ++s) {
      out.slot_id_[s] = static_cast<std::int64_t>(get_u64le(&buf[8 * i]));
    }
  }
  out.id_slot_.reserve(out.slot_id_.size());
  for (std::size_t s = 0; s < out.slot_id_.size(); ++s) {
    const std::int64_t id = out.slot_id_[s];
    if (id < -1) fail("slot " + std::to_string(s) + " has id " + std::to_string(id));
    if (id >= 0 && !out.id_slot_.emplace(id, s).second) {
      fail("id " + std::to_string(id) + " is in more than one slot");
    }
  }
  if (layout.state == kStateFallback) {
    out.fallback_ = std::move(loaded);
  } else {
    out.index_ = std::move(loaded);
    out.fallback_.reset();
    out.tuning_ = layout.tuning;
    out.apply_search_defaults();
    enable_direct_map(out.index_.get());
    out.mapped_ = mapping;
    if (mapping) no_list_prefetch(out.index_.get());
  }
  return out;
}

bool VectorIndex::can_compact() const {
  if (!trained()) return true;
  const auto& t = typeid(*index_);
  return t == typeid(faiss::IndexFlat) || t == typeid(faiss::IndexFlatIP) ||
         t == typeid(faiss::IndexFlatL2) || t == typeid(faiss::IndexHNSWFlat) ||
         t == typeid(faiss::IndexIVFFlat);
}

VectorIndex VectorIndex::compact() const {
  if (mapped_) throw IndexError("compact: index '" + factory_ + "' is memory-mapped read-only");
  if (!can_compact()) {
    throw IndexError("compact: index '" + factory_ +
                     "' stores lossy codes that cannot be re-encoded exactly; rebuild it from "
                     "the catalog");
  }
  // The live vectors in slot order, and their ids.
  std::vector<std::int64_t> rank(slot_id_.size(), -1);
  std::vector<std::int64_t> ids;
  ids.reserve(static_cast<std::size_t>(size()));
  for (std::size_t s = 0; s < slot_id_.size(); ++s) {
    if (slot_id_[s] < 0) continue;
    rank[s] = static_cast<std::int64_t>(ids.size());
    ids.push_back(slot_id_[s]);
  }
  std::vector<float> x(ids.size() * static_cast<std::size_t>(dim_));
  auto take = [&](std::size_t slot, const float* v) {
    if (rank[slot] >= 0) std::memcpy(&x[rank[slot] * dim_], v, sizeof(float) * dim_);
  };
  const faiss::Index& index = active();
  const faiss::IndexFlat* flat = dynamic_cast<const faiss::IndexFlat*>(&index);
  if (auto* h = dynamic_cast<const faiss::IndexHNSWFlat*>(&index)) {
    flat = dynamic_cast<const faiss::IndexFlat*>(h->storage);
  }
  auto* ivf = dynamic_cast<const faiss::IndexIVFFlat*>(&index);
  if (flat) {
    for (std::size_t s = 0; s < slot_id_.size(); ++s) take(s, flat->get_xb() + s * dim_);
  } else if (ivf) {
    for (std::size_t list = 0; list < ivf->nlist; ++list) {
      const std::size_t n = ivf->invlists->list_size(list);
      if (n == 0) continue;
      faiss::InvertedLists::ScopedIds list_ids(ivf->invlists, list);
      faiss::InvertedLists::ScopedCodes codes(ivf->invlists, list);
      const auto* v = reinterpret_cast<const float*>(codes.get());
      for (std::size_t i = 0; i < n; ++i) take(static_cast<std::size_t>(list_ids[i]), v + i * dim_);
    }
  }
  VectorIndex out(dim_, metric_, factory_);
  if (ivf) {  // keep the trained centroids: clone, empty, refill
    std::unique_ptr<faiss::Index> copy(faiss::clone_index(index_.get()));
    copy->reset();
    out.index_ = std::move(copy);
    out.fallback_.reset();
    out.tuning_ = tuning_;
    out.apply_search_defaults();
    out.append(x.data(), ids.data(), static_cast<std::int64_t>(ids.size()));
  } else {
    out.add(x.data(), ids.data(), static_cast<std::int64_t>(ids.size()));
  }
  return out;
}

}  // namespace lookalike::index
