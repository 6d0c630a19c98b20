// Projections of embeddings to a few dimensions for `lookalike map`: exact PCA and exact t-SNE.
// Inputs are n x d float32, row-major (one embedding a row); outputs are row-major too.
// Numerics run on LibTorch CPU tensors (LAPACK through OpenBLAS for the eigen-decomposition)
// with at::get_num_threads() threads: the caller sets the thread count.
//
// Sources:
//  - PCA: I. T. Jolliffe, "Principal Component Analysis", 2nd ed., Springer 2002, ch. 1 and
//    3.5 (the Gram-matrix route when n < d). Eigen-decomposition: torch::linalg_eigh (LAPACK
//    syevd).
//  - t-SNE: L. van der Maaten and G. Hinton, "Visualizing Data using t-SNE", JMLR 9:2579-2605,
//    2008, and its reference implementation tsne.py (lvdmaaten.github.io/tsne): per-point
//    Gaussian bandwidth by binary search on the entropy (log(perplexity), tolerance 1e-5, 50
//    steps), symmetrised P = (P + P^T) / 2n floored at 1e-12, Student-t (1 dof) Q, momentum
//    0.5 then 0.8, adaptive gains (+0.2 / x0.8, floor 0.01; Jacobs 1988), the input reduced to
//    50 dimensions by PCA first, initial map N(0, 1e-4^2). Early exaggeration 12 for 250
//    iterations follows L. van der Maaten, "Accelerating t-SNE using Tree-Based Algorithms",
//    JMLR 15, 2014 (bhtsne); the default learning rate max(n / exaggeration / 4, 50) follows
//    A. Belkina et al., Nature Communications 10:5415, 2019 (scikit-learn's "auto"), with the
//    gradient's factor 4 kept as in the 2008 paper's equation 5.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <vector>

namespace lookalike::viz {

// Bad arguments (shapes, option values) and numerical failures; what() says which.
class ProjectionError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Pca {
  int k = 0;                       // components computed
  std::vector<double> coords;      // n x k: (x_i - mean) . component_j
  std::vector<double> components;  // k x d, unit length; sign: largest-|value| entry positive
  std::vector<double> mean;        // d
  std::vector<double> variance;    // k: variance along each component (divisor n - 1)
  double total_variance = 0;       // sum of the per-dimension variances (divisor n - 1)
};

// Exact PCA, the top k principal axes, in double precision. Eigen-decomposition of the d x d
// covariance when n > d, else of the n x n Gram matrix of the centred rows (same axes, less
// work): O(n d min(n, d)). Sign convention (reproducible coordinates): each component's entry
// of largest absolute value is positive (ties: the first such entry). n >= 2, 1 <= k <= d;
// axes past rank(data) carry variance 0 and arbitrary directions. Throws ProjectionError.
Pca pca(const float* data, std::int64_t n, std::int64_t d, int k);

struct TsneOptions {
  double perplexity = 30;  // effective neighbours; must be below n (checked: 1 <= p, 3p < n)
  int iterations = 1000;   // gradient steps, >= 1
  int exaggeration_iterations = 250;  // P multiplied by `exaggeration` during these steps
  double exaggeration = 12;
  double learning_rate = 0;  // 0: max(n / exaggeration / 4, 50)
  int pca_dims = 50;         // reduce the input to this many PCA dimensions first (0: don't)
  std::uint64_t seed = 0;    // initial map; same seed, data and thread count: same result
};

struct Tsne {
  std::vector<double> coords;  // n x 2, centred
  double kl_divergence = 0;    // KL(P || Q) of the final map (nats)
  double learning_rate = 0;    // the one used
};

// Exact t-SNE to 2 dimensions. Time O(n^2) a step (two fused passes over the pairs, no n x n
// temporaries); memory: P as n x n floats (100 MB at n = 5,000), and while P is calibrated a
// few n x n doubles (about 800 MB at 5,000). Measured: 3,068 points, 1000 steps, 35 s of CPU
// (`lookalike map --method tsne` on clothing-small, docs/map.md). Throws ProjectionError for
// n < 4, perplexity outside [1, (n - 1) / 3], or a non-finite result.
Tsne tsne(const float* data, std::int64_t n, std::int64_t d, const TsneOptions& options);

// The conditional affinities p_{j|i} of t-SNE (row i sums to 1, p_{i|i} = 0), each row's
// Gaussian bandwidth found by binary search so that its entropy is log(perplexity) nats
// (within 1e-5, at most 50 steps). Squared Euclidean distances are `sqdist`, n x n. Exposed for
// tests. Returns n x n row-major.
std::vector<double> conditional_affinities(const std::vector<double>& sqdist, std::int64_t n,
                                           double perplexity);

// Deterministic standard normal samples (splitmix64 + Box-Muller): the same on every platform,
// unlike std::normal_distribution.
std::vector<double> normal_samples(std::size_t count, std::uint64_t seed);

}  // namespace lookalike::viz
