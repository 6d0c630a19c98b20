// FAISS's vector distance kernels (the 25 functions of faiss/utils/distances_simd.cpp, 1.7.3),
// compiled here for AVX2 + FMA with a baseline fallback chosen at load time.
//
// Why: Debian's libfaiss.a is built for baseline x86-64, where distances_simd.cpp falls back to
// plain scalar loops. Profiled: fvec_inner_product_ref was 84% of an IVF1024,Flat search by id
// on 100,000 x 1280 vectors (perf, bench_server), and the same kernels drive IVF list scans,
// coarse quantizers, HNSW walks, PQ tables and Flat search below FAISS's BLAS threshold (20
// queries). libfaiss.a is a static archive: the linker takes a member only for symbols still
// undefined, so when these definitions are linked as object files ahead of it (see
// index/CMakeLists.txt), its distances_simd member is never used and every FAISS call lands here.
// tests/test_index.cpp checks each function against a double-precision reference.
//
// Each kernel keeps 16 independent partial sums, which GCC vectorises into two 8-lane
// accumulators without reassociating (so without -ffast-math); the sums are then added in a
// fixed order: results are deterministic for a given ISA and differ from the scalar loop only in
// rounding (as FAISS's own AVX build does). target_clones builds an x86-64-v3 (AVX2, FMA)
// and a baseline version and picks one once per process through an ifunc resolver.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <stdexcept>

namespace faiss {

// The declarations FAISS's headers give (faiss/utils/distances.h, utils.h), and the _ref
// functions its distances_simd.cpp defines without a header.
float fvec_L2sqr(const float* x, const float* y, size_t d);
float fvec_inner_product(const float* x, const float* y, size_t d);
float fvec_L1(const float* x, const float* y, size_t d);
float fvec_Linf(const float* x, const float* y, size_t d);
float fvec_norm_L2sqr(const float* x, size_t d);
void fvec_inner_products_ny(float* ip, const float* x, const float* y, size_t d, size_t ny);
void fvec_L2sqr_ny(float* dis, const float* x, const float* y, size_t d, size_t ny);
size_t fvec_L2sqr_ny_nearest(float* tmp, const float* x, const float* y, size_t d, size_t ny);
size_t fvec_L2sqr_ny_nearest_y_transposed(float* tmp, const float* x, const float* y,
                                          const float* y_sqlen, size_t d, size_t d_offset,
                                          size_t ny);
void fvec_add(size_t d, const float* a, const float* b, float* c);
void fvec_add(size_t d, const float* a, float b, float* c);
void fvec_sub(size_t d, const float* a, const float* b, float* c);
void fvec_madd(size_t n, const float* a, float bf, const float* b, float* c);
int fvec_madd_and_argmin(size_t n, const float* a, float bf, const float* b, float* c);
void compute_PQ_dis_tables_dsub2(size_t d, size_t ksub, const float* centroids, size_t nx,
                                 const float* x, bool is_inner_product, float* dis_tables);
float fvec_L2sqr_ref(const float* x, const float* y, size_t d);
float fvec_inner_product_ref(const float* x, const float* y, size_t d);
float fvec_L1_ref(const float* x, const float* y, size_t d);
float fvec_Linf_ref(const float* x, const float* y, size_t d);
float fvec_norm_L2sqr_ref(const float* x, size_t d);
void fvec_L2sqr_ny_ref(float* dis, const float* x, const float* y, size_t d, size_t ny);
void fvec_inner_products_ny_ref(float* ip, const float* x, const float* y, size_t d, size_t ny);
size_t fvec_L2sqr_ny_nearest_ref(float* tmp, const float* x, const float* y, size_t d, size_t ny);
void fvec_L2sqr_ny_y_transposed_ref(float* dis, const float* x, const float* y,
                                    const float* y_sqlen, size_t d, size_t d_offset, size_t ny);
size_t fvec_L2sqr_ny_nearest_y_transposed_ref(float* tmp, const float* x, const float* y,
                                              const float* y_sqlen, size_t d, size_t d_offset,
                                              size_t ny);

// Not under ThreadSanitizer or AddressSanitizer: target_clones dispatches through an ifunc
// resolver that runs during relocation, before the sanitizer runtime is up, and the
// instrumented resolver then crashes the process (seen: test_store_stress under scripts/tsan.sh).
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define LOOKALIKE_SIMD
#else
#define LOOKALIKE_SIMD __attribute__((target_clones("arch=x86-64-v3", "default")))
#endif

namespace {

constexpr size_t kLanes = 16;

inline float sum_lanes(const float* acc) {
  float s = 0;
  for (size_t j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

template <class Op>
inline float reduce(const float* x, const float* y, size_t d, Op op) {
  float acc[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= d; i += kLanes) {
    for (size_t j = 0; j < kLanes; ++j) acc[j] += op(x[i + j], y[i + j]);
  }
  float s = sum_lanes(acc);
  for (; i < d; ++i) s += op(x[i], y[i]);
  return s;
}

inline float ip_op(float a, float b) { return a * b; }
inline float l2_op(float a, float b) {
  const float t = a - b;
  return t * t;
}

size_t argmin(const float* v, size_t n) {
  size_t best = 0;
  float min = HUGE_VALF;
  for (size_t i = 0; i < n; ++i) {
    if (v[i] < min) {
      min = v[i];
      best = i;
    }
  }
  return best;
}

}  // namespace

LOOKALIKE_SIMD float fvec_inner_product(const float* x, const float* y, size_t d) {
  return reduce(x, y, d, ip_op);
}

LOOKALIKE_SIMD float fvec_L2sqr(const float* x, const float* y, size_t d) {
  return reduce(x, y, d, l2_op);
}

LOOKALIKE_SIMD float fvec_norm_L2sqr(const float* x, size_t d) { return reduce(x, x, d, ip_op); }

LOOKALIKE_SIMD float fvec_L1(const float* x, const float* y, size_t d) {
  return reduce(x, y, d, [](float a, float b) { return std::fabs(a - b); });
}

float fvec_Linf(const float* x, const float* y, size_t d) {
  float m = 0;
  for (size_t i = 0; i < d; ++i) m = std::fmax(m, std::fabs(x[i] - y[i]));
  return m;
}

LOOKALIKE_SIMD void fvec_inner_products_ny(float* ip, const float* x, const float* y, size_t d,
                                           size_t ny) {
  for (size_t i = 0; i < ny; ++i, y += d) ip[i] = reduce(x, y, d, ip_op);
}

LOOKALIKE_SIMD void fvec_L2sqr_ny(float* dis, const float* x, const float* y, size_t d, size_t ny) {
  for (size_t i = 0; i < ny; ++i, y += d) dis[i] = reduce(x, y, d, l2_op);
}

size_t fvec_L2sqr_ny_nearest(float* tmp, const float* x, const float* y, size_t d, size_t ny) {
  fvec_L2sqr_ny(tmp, x, y, d, ny);
  return argmin(tmp, ny);
}

// y is transposed: component j of vector i at y[i + j * d_offset]; y_sqlen[i] its squared norm.
LOOKALIKE_SIMD void fvec_L2sqr_ny_y_transposed_ref(float* dis, const float* x, const float* y,
                                                   const float* y_sqlen, size_t d, size_t d_offset,
                                                   size_t ny) {
  const float x_sqlen = reduce(x, x, d, ip_op);
  for (size_t i = 0; i < ny; ++i) dis[i] = 0;
  for (size_t j = 0; j < d; ++j) {  // row by row: contiguous in i, vectorises over vectors
    const float xj = x[j];
    const float* row = y + j * d_offset;
    for (size_t i = 0; i < ny; ++i) dis[i] += xj * row[i];
  }
  for (size_t i = 0; i < ny; ++i) dis[i] = x_sqlen + y_sqlen[i] - 2 * dis[i];
}

size_t fvec_L2sqr_ny_nearest_y_transposed(float* tmp, const float* x, const float* y,
                                          const float* y_sqlen, size_t d, size_t d_offset,
                                          size_t ny) {
  fvec_L2sqr_ny_y_transposed_ref(tmp, x, y, y_sqlen, d, d_offset, ny);
  return argmin(tmp, ny);
}

LOOKALIKE_SIMD void fvec_add(size_t d, const float* a, const float* b, float* c) {
  for (size_t i = 0; i < d; ++i) c[i] = a[i] + b[i];
}

LOOKALIKE_SIMD void fvec_add(size_t d, const float* a, float b, float* c) {
  for (size_t i = 0; i < d; ++i) c[i] = a[i] + b;
}

LOOKALIKE_SIMD void fvec_sub(size_t d, const float* a, const float* b, float* c) {
  for (size_t i = 0; i < d; ++i) c[i] = a[i] - b[i];
}

LOOKALIKE_SIMD void fvec_madd(size_t n, const float* a, float bf, const float* b, float* c) {
  for (size_t i = 0; i < n; ++i) c[i] = a[i] + bf * b[i];
}

int fvec_madd_and_argmin(size_t n, const float* a, float bf, const float* b, float* c) {
  fvec_madd(n, a, bf, b, c);
  return static_cast<int>(argmin(c, n));
}

// PQ with 2-dimensional sub-vectors: dis_tables is nx x M x ksub (M = d / 2), centroids is
// M x ksub x 2, entry (i, m, k) the inner product or squared L2 distance between x_i's m-th
// pair of components and centroid k of sub-quantizer m.
void compute_PQ_dis_tables_dsub2(size_t d, size_t ksub, const float* centroids, size_t nx,
                                 const float* x, bool is_inner_product, float* dis_tables) {
  const size_t M = d / 2;
  for (size_t i = 0; i < nx; ++i) {
    const float* xi = x + i * d;
    float* out = dis_tables + i * M * ksub;
    for (size_t m = 0; m < M; ++m) {
      const float x0 = xi[2 * m], x1 = xi[2 * m + 1];
      const float* c = centroids + m * ksub * 2;
      for (size_t k = 0; k < ksub; ++k) {
        const float a = c[2 * k], b = c[2 * k + 1];
        out[m * ksub + k] =
            is_inner_product ? x0 * a + x1 * b : (x0 - a) * (x0 - a) + (x1 - b) * (x1 - b);
      }
    }
  }
}

// The reference versions FAISS exports too (tests and other FAISS code may call them).
float fvec_L2sqr_ref(const float* x, const float* y, size_t d) {
  float s = 0;
  for (size_t i = 0; i < d; ++i) s += l2_op(x[i], y[i]);
  return s;
}
float fvec_inner_product_ref(const float* x, const float* y, size_t d) {
  float s = 0;
  for (size_t i = 0; i < d; ++i) s += x[i] * y[i];
  return s;
}
float fvec_L1_ref(const float* x, const float* y, size_t d) {
  float s = 0;
  for (size_t i = 0; i < d; ++i) s += std::fabs(x[i] - y[i]);
  return s;
}
float fvec_Linf_ref(const float* x, const float* y, size_t d) { return fvec_Linf(x, y, d); }
float fvec_norm_L2sqr_ref(const float* x, size_t d) { return fvec_inner_product_ref(x, x, d); }
void fvec_L2sqr_ny_ref(float* dis, const float* x, const float* y, size_t d, size_t ny) {
  for (size_t i = 0; i < ny; ++i, y += d) dis[i] = fvec_L2sqr_ref(x, y, d);
}
void fvec_inner_products_ny_ref(float* ip, const float* x, const float* y, size_t d, size_t ny) {
  for (size_t i = 0; i < ny; ++i, y += d) ip[i] = fvec_inner_product_ref(x, y, d);
}
size_t fvec_L2sqr_ny_nearest_ref(float* tmp, const float* x, const float* y, size_t d, size_t ny) {
  fvec_L2sqr_ny_ref(tmp, x, y, d, ny);
  return argmin(tmp, ny);
}
size_t fvec_L2sqr_ny_nearest_y_transposed_ref(float* tmp, const float* x, const float* y,
                                              const float* y_sqlen, size_t d, size_t d_offset,
                                              size_t ny) {
  fvec_L2sqr_ny_y_transposed_ref(tmp, x, y, y_sqlen, d, d_offset, ny);
  return argmin(tmp, ny);
}

}  // namespace faiss
