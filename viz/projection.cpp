#include "viz/projection.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace lookalike::viz {

namespace {

using torch::indexing::Slice;

torch::Tensor as_double(const float* data, std::int64_t n, std::int64_t d) {
  return torch::from_blob(const_cast<float*>(data), {n, d}, torch::kFloat32).to(torch::kFloat64);
}

std::vector<double> to_vector(const torch::Tensor& t) {
  auto c = t.to(torch::kFloat64).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

// Rows of `components` (k x d) flipped so that each one's largest-|value| entry is positive.
void fix_signs(torch::Tensor& components) {
  auto idx = components.abs().argmax(1, /*keepdim=*/true);
  auto lead = components.gather(1, idx);
  components = components * (1.0 - 2.0 * (lead < 0).to(components.scalar_type()));
}

void check_finite(const torch::Tensor& t, const char* what) {
  if (!torch::isfinite(t).all().item<bool>()) {
    throw ProjectionError(std::string(what) + ": the result has non-finite values");
  }
}

}  // namespace

Pca pca(const float* data, std::int64_t n, std::int64_t d, int k) {
  if (n < 2) throw ProjectionError("PCA needs at least 2 points, got " + std::to_string(n));
  if (k < 1 || k > d) {
    throw ProjectionError("PCA: " + std::to_string(k) + " components asked of " +
                          std::to_string(d) + "-d data");
  }
  torch::NoGradGuard no_grad;
  auto x = as_double(data, n, d);
  check_finite(x, "PCA input");
  auto mean = x.mean(0);
  auto xc = x - mean;
  torch::Tensor components, eigenvalues;  // eigenvalues of xc^T xc along `components`
  if (n > d) {
    auto [w, v] = torch::linalg_eigh(xc.t().mm(xc));  // ascending
    eigenvalues = w.flip(0).index({Slice(0, k)});
    components = v.flip(1).index({Slice(), Slice(0, k)}).t();
  } else {
    // xc xc^T u = w u  =>  v = xc^T u / sqrt(w) is a unit eigenvector of xc^T xc.
    auto [w, u] = torch::linalg_eigh(xc.mm(xc.t()));
    const std::int64_t kk = std::min<std::int64_t>(k, n);
    eigenvalues = w.flip(0).index({Slice(0, kk)}).clamp_min(0);
    auto top = u.flip(1).index({Slice(), Slice(0, kk)});
    components = xc.t().mm(top).t();
    components = components / components.norm(2, 1, true).clamp_min(1e-300);
    if (kk < k) {  // rank < k: zero-variance axes, any unit direction will do
      components = torch::cat({components, torch::zeros({k - kk, d}, torch::kFloat64)});
      eigenvalues = torch::cat({eigenvalues, torch::zeros({k - kk}, torch::kFloat64)});
    }
  }
  fix_signs(components);
  auto coords = xc.mm(components.t());
  check_finite(coords, "PCA");
  Pca out;
  out.k = k;
  out.coords = to_vector(coords);
  out.components = to_vector(components);
  out.mean = to_vector(mean);
  out.variance = to_vector(eigenvalues / double(n - 1));
  out.total_variance = xc.pow(2).sum().item<double>() / double(n - 1);
  return out;
}

std::vector<double> normal_samples(std::size_t count, std::uint64_t seed) {
  std::uint64_t state = seed;
  auto next = [&state] {  // splitmix64 (Steele, Lea and Flood 2014)
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  };
  auto uniform = [&] { return (double(next() >> 11) + 0.5) * 0x1.0p-53; };  // (0, 1)
  std::vector<double> out(count);
  for (std::size_t i = 0; i < count; i += 2) {
    double r = std::sqrt(-2 * std::log(uniform())), t = 2 * M_PI * uniform();
    out[i] = r * std::cos(t);
    if (i + 1 < count) out[i + 1] = r * std::sin(t);
  }
  return out;
}

namespace {

// Row i of p_{j|i} for precision beta (= 1 / 2 sigma^2); returns the entropy in nats.
double affinity_row(const double* dist, std::int64_t n, std::int64_t i, double beta, double* p) {
  // Shifting by the smallest distance keeps exp() from underflowing to an all-zero row.
  double dmin = std::numeric_limits<double>::infinity();
  for (std::int64_t j = 0; j < n; ++j)
    if (j != i) dmin = std::min(dmin, dist[j]);
  double sum = 0, weighted = 0;
  for (std::int64_t j = 0; j < n; ++j) {
    p[j] = j == i ? 0.0 : std::exp(-(dist[j] - dmin) * beta);
    sum += p[j];
    weighted += (dist[j] - dmin) * p[j];
  }
  for (std::int64_t j = 0; j < n; ++j) p[j] /= sum;
  return std::log(sum) + beta * weighted / sum;
}

// tsne.py's x2p: bisection on beta, doubling or halving while unbounded.
void calibrate_row(const double* dist, std::int64_t n, std::int64_t i, double target, double* p) {
  double beta = 1, lo = -std::numeric_limits<double>::infinity(),
         hi = std::numeric_limits<double>::infinity();
  for (int step = 0; step < 50; ++step) {
    double h = affinity_row(dist, n, i, beta, p);
    if (std::abs(h - target) < 1e-5) return;
    if (h > target) {
      lo = beta;
      beta = std::isinf(hi) ? beta * 2 : (beta + hi) / 2;
    } else {
      hi = beta;
      beta = std::isinf(lo) ? beta / 2 : (beta + lo) / 2;
    }
  }
  affinity_row(dist, n, i, beta, p);
}

}  // namespace

std::vector<double> conditional_affinities(const std::vector<double>& sqdist, std::int64_t n,
                                           double perplexity) {
  if (static_cast<std::int64_t>(sqdist.size()) != n * n) {
    throw ProjectionError("t-SNE: distance matrix is not n x n");
  }
  std::vector<double> p(sqdist.size());
  const double target = std::log(perplexity);
  at::parallel_for(0, n, 16, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i)
      calibrate_row(sqdist.data() + i * n, n, i, target, p.data() + i * n);
  });
  return p;
}

namespace {

torch::Tensor squared_distances(const torch::Tensor& x) {
  auto sq = x.pow(2).sum(1);
  return (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * x.mm(x.t())).clamp_min(0);
}

torch::Tensor joint_affinities(const torch::Tensor& x, double perplexity) {
  const std::int64_t n = x.size(0);
  auto dist = squared_distances(x).contiguous();
  std::vector<double> d(dist.data_ptr<double>(), dist.data_ptr<double>() + n * n);
  auto cond = conditional_affinities(d, n, perplexity);
  auto p = torch::from_blob(cond.data(), {n, n}, torch::kFloat64).clone();
  return ((p + p.t()) / (2.0 * n)).clamp_min(1e-12);
}

// The map's state, points as separate x and y arrays so that the row loops vectorise.
struct Descent {
  std::int64_t n = 0;
  std::vector<float> p;  // n x n joint affinities
  std::vector<float> x, y, gx, gy, ux, uy, gain_x, gain_y;
  std::vector<double> row_sum;  // per-row partial sums, added in order: deterministic
};

// Z = sum over i != j of (1 + |y_i - y_j|^2)^-1, the normaliser of Q.
double student_normaliser(Descent& s) {
  const std::int64_t n = s.n;
  at::parallel_for(0, n, 64, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      const float xi = s.x[i], yi = s.y[i];
      float acc = 0;
      for (std::int64_t j = 0; j < n; ++j) {
        const float dx = xi - s.x[j], dy = yi - s.y[j];
        acc += 1.0f / (1.0f + dx * dx + dy * dy);
      }
      s.row_sum[i] = double(acc) - 1.0;  // j == i contributes exactly 1
    }
  });
  double z = 0;
  for (double v : s.row_sum) z += v;
  return z;
}

// Equation 5 of the 2008 paper: dC/dy_i = 4 sum_j (p_ij - q_ij)(1 + |y_i - y_j|^2)^-1 (y_i - y_j).
// The j == i term is zero since y_i - y_i = 0.
void gradient(Descent& s, float exaggeration, double z) {
  const std::int64_t n = s.n;
  const float inv_z = float(1.0 / z);
  at::parallel_for(0, n, 64, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      const float xi = s.x[i], yi = s.y[i];
      const float* p = s.p.data() + i * n;
      float ax = 0, ay = 0;
      for (std::int64_t j = 0; j < n; ++j) {
        const float dx = xi - s.x[j], dy = yi - s.y[j];
        const float num = 1.0f / (1.0f + dx * dx + dy * dy);
        const float w = (exaggeration * p[j] - num * inv_z) * num;
        ax += w * dx;
        ay += w * dy;
      }
      s.gx[i] = 4 * ax;
      s.gy[i] = 4 * ay;
    }
  });
}

// Jacobs' (1988) adaptive gains and the momentum step, then the map re-centred (tsne.py).
void step(Descent& s, float momentum, float eta) {
  auto one = [&](std::vector<float>& g, std::vector<float>& u, std::vector<float>& gain,
                 std::vector<float>& pos) {
    double mean = 0;
    for (std::int64_t i = 0; i < s.n; ++i) {
      const bool same_sign = (g[i] > 0) == (u[i] > 0);
      gain[i] = std::max(same_sign ? gain[i] * 0.8f : gain[i] + 0.2f, 0.01f);
      u[i] = momentum * u[i] - eta * gain[i] * g[i];
      pos[i] += u[i];
      mean += pos[i];
    }
    const float m = float(mean / s.n);
    for (auto& v : pos) v -= m;
  };
  one(s.gx, s.ux, s.gain_x, s.x);
  one(s.gy, s.uy, s.gain_y, s.y);
}

// KL(P || Q) in nats, Q from the final map.
double kl_divergence(Descent& s) {
  const double z = student_normaliser(s);
  const std::int64_t n = s.n;
  at::parallel_for(0, n, 64, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      double acc = 0;
      for (std::int64_t j = 0; j < n; ++j) {
        if (j == i) continue;
        const double dx = s.x[i] - s.x[j], dy = s.y[i] - s.y[j];
        const double q = std::max(1.0 / (1.0 + dx * dx + dy * dy) / z, 1e-12);
        const double p = s.p[i * n + j];
        acc += p * std::log(p / q);
      }
      s.row_sum[i] = acc;
    }
  });
  double kl = 0;
  for (double v : s.row_sum) kl += v;
  return kl;
}

void check_tsne_args(std::int64_t n, const TsneOptions& o) {
  if (n < 4) throw ProjectionError("t-SNE needs at least 4 points, got " + std::to_string(n));
  if (!(o.perplexity >= 1) || 3 * o.perplexity > double(n - 1)) {
    throw ProjectionError(
        "t-SNE perplexity must be between 1 and (points - 1) / 3 = " + std::to_string((n - 1) / 3) +
        " for " + std::to_string(n) + " points, got " + std::to_string(o.perplexity));
  }
  if (o.iterations < 1) throw ProjectionError("t-SNE iterations must be at least 1");
}

}  // namespace

Tsne tsne(const float* data, std::int64_t n, std::int64_t d, const TsneOptions& o) {
  check_tsne_args(n, o);
  torch::NoGradGuard no_grad;
  torch::Tensor x;
  if (o.pca_dims > 0 && o.pca_dims < d) {
    auto reduced = pca(data, n, d, o.pca_dims);
    x = torch::from_blob(reduced.coords.data(), {n, o.pca_dims}, torch::kFloat64).clone();
  } else {
    x = as_double(data, n, d);
  }
  check_finite(x, "t-SNE input");
  // P in double (the bandwidth search needs it); the descent in float, as the references do.
  auto p = joint_affinities(x, o.perplexity).to(torch::kFloat32).contiguous();
  Descent s;
  s.n = n;
  s.p.assign(p.data_ptr<float>(), p.data_ptr<float>() + n * n);
  p = torch::Tensor();
  const double eta =
      o.learning_rate > 0 ? o.learning_rate : std::max(double(n) / o.exaggeration / 4.0, 50.0);
  auto init = normal_samples(std::size_t(n) * 2, o.seed);
  for (std::int64_t i = 0; i < n; ++i) {
    s.x.push_back(float(1e-4 * init[2 * i]));
    s.y.push_back(float(1e-4 * init[2 * i + 1]));
  }
  for (auto* v : {&s.gx, &s.gy, &s.ux, &s.uy}) v->assign(n, 0.0f);
  s.gain_x.assign(n, 1.0f);
  s.gain_y.assign(n, 1.0f);
  s.row_sum.assign(n, 0.0);
  for (int it = 0; it < o.iterations; ++it) {
    const bool early = it < o.exaggeration_iterations;
    gradient(s, early ? float(o.exaggeration) : 1.0f, student_normaliser(s));
    step(s, early ? 0.5f : 0.8f, float(eta));
  }
  Tsne out;
  out.kl_divergence = kl_divergence(s);
  out.learning_rate = eta;
  for (std::int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) {
      throw ProjectionError("t-SNE: the map has non-finite values");
    }
    out.coords.push_back(s.x[i]);
    out.coords.push_back(s.y[i]);
  }
  return out;
}

}  // namespace lookalike::viz
