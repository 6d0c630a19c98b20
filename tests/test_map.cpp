// viz/projection.h on generated data whose answer is known: PCA of points on a known plane,
// the perplexity calibration, and t-SNE on well-separated clusters.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "viz/map.h"
#include "viz/projection.h"

namespace lookalike::viz {
namespace {

// n points a*u + b*v + c in d dimensions, with orthonormal u, v (random directions, so that
// no coordinate axis is special), a of spread 3, b of spread 1.
struct PlaneData {
  std::vector<float> x;
  std::vector<double> a, b, u, v;
};

PlaneData plane(std::int64_t n, std::int64_t d) {
  PlaneData p;
  auto g = normal_samples(2 * n + 2 * d, 7);
  p.u.assign(g.begin(), g.begin() + d);
  p.v.assign(g.begin() + d, g.begin() + 2 * d);
  auto dot = [d](const std::vector<double>& x, const std::vector<double>& y) {
    return std::inner_product(x.begin(), x.begin() + d, y.begin(), 0.0);
  };
  double nu = std::sqrt(dot(p.u, p.u));
  for (auto& e : p.u) e /= nu;
  double uv = dot(p.u, p.v);
  for (std::int64_t j = 0; j < d; ++j) p.v[j] -= uv * p.u[j];
  double nv = std::sqrt(dot(p.v, p.v));
  for (auto& e : p.v) e /= nv;
  for (std::int64_t i = 0; i < n; ++i) {
    p.a.push_back(3 * g[2 * d + 2 * i]);
    p.b.push_back(g[2 * d + 2 * i + 1]);
  }
  // Centred and uncorrelated in the sample itself, so that u and v are exactly its principal
  // axes (a finite sample's own correlation would turn them within the plane).
  auto centre = [n](std::vector<double>& c) {
    double m = std::accumulate(c.begin(), c.end(), 0.0) / n;
    for (auto& e : c) e -= m;
  };
  centre(p.a), centre(p.b);
  double ab = std::inner_product(p.a.begin(), p.a.end(), p.b.begin(), 0.0);
  double aa = std::inner_product(p.a.begin(), p.a.end(), p.a.begin(), 0.0);
  for (std::int64_t i = 0; i < n; ++i) p.b[i] -= ab / aa * p.a[i];
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < d; ++j)
      p.x.push_back(float(p.a[i] * p.u[j] + p.b[i] * p.v[j] + 0.5 * (j % 3)));
  return p;
}

// The sign a component gets under the convention: its largest-|value| entry positive.
double convention_sign(const std::vector<double>& axis) {
  std::size_t best = 0;
  for (std::size_t j = 1; j < axis.size(); ++j)
    if (std::abs(axis[j]) > std::abs(axis[best])) best = j;
  return axis[best] < 0 ? -1 : 1;
}

void check_plane(std::int64_t n, std::int64_t d) {
  auto p = plane(n, d);
  auto r = pca(p.x.data(), n, d, 2);
  ASSERT_EQ(r.coords.size(), std::size_t(n * 2));
  const double su = convention_sign(p.u), sv = convention_sign(p.v);
  for (std::int64_t j = 0; j < d; ++j) {
    EXPECT_NEAR(r.components[j], su * p.u[j], 1e-6) << j;
    EXPECT_NEAR(r.components[d + j], sv * p.v[j], 1e-6) << j;
  }
  for (std::int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(r.coords[2 * i], su * p.a[i], 2e-4) << i;
    EXPECT_NEAR(r.coords[2 * i + 1], sv * p.b[i], 2e-4) << i;
  }
  // All the variance lies in the plane.
  EXPECT_NEAR((r.variance[0] + r.variance[1]) / r.total_variance, 1.0, 1e-6);
  EXPECT_GT(r.variance[0], r.variance[1]);
}

TEST(map_pca, RecoversAKnownPlaneWithMoreRowsThanDims) { check_plane(400, 12); }

// n <= d goes through the Gram matrix: the same axes and coordinates.
TEST(map_pca, RecoversAKnownPlaneWithMoreDimsThanRows) { check_plane(30, 64); }

TEST(map_pca, RefusesTooFewPointsAndBadK) {
  std::vector<float> one(8, 1.0f);
  EXPECT_THROW(pca(one.data(), 1, 8, 2), ProjectionError);
  EXPECT_THROW(pca(one.data(), 2, 4, 5), ProjectionError);
}

TEST(map_tsne, CalibratesEachRowToThePerplexity) {
  const std::int64_t n = 60;
  auto g = normal_samples(n * 5, 3);
  std::vector<double> sq(n * n);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int k = 0; k < 5; ++k) s += std::pow(g[i * 5 + k] - g[j * 5 + k], 2);
      sq[i * n + j] = s;
    }
  const double perplexity = 10;
  auto p = conditional_affinities(sq, n, perplexity);
  for (std::int64_t i = 0; i < n; ++i) {
    double sum = 0, h = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      sum += p[i * n + j];
      if (p[i * n + j] > 0) h -= p[i * n + j] * std::log(p[i * n + j]);
    }
    EXPECT_EQ(p[i * n + i], 0.0);
    EXPECT_NEAR(sum, 1.0, 1e-9);
    EXPECT_NEAR(std::exp(h), perplexity, 1e-3) << "row " << i;
  }
}

// Four Gaussian clusters in 20-d, centres 10 apart, spread 1: t-SNE must keep them apart.
std::vector<float> clusters(std::int64_t per, std::int64_t d, std::vector<int>& label) {
  auto g = normal_samples(4 * per * d + 4 * d, 11);
  std::vector<float> x;
  for (int c = 0; c < 4; ++c)
    for (std::int64_t i = 0; i < per; ++i) {
      label.push_back(c);
      for (std::int64_t j = 0; j < d; ++j)
        x.push_back(float(g[(c * per + i) * d + j] + 7 * g[4 * per * d + c * d + j]));
    }
  return x;
}

double nn_agreement(const std::vector<double>& y, const std::vector<int>& label) {
  const std::size_t n = label.size();
  int agree = 0;
  for (std::size_t i = 0; i < n; ++i) {
    double best = 1e300;
    std::size_t nn = i;
    for (std::size_t j = 0; j < n; ++j) {
      double d2 = std::pow(y[2 * i] - y[2 * j], 2) + std::pow(y[2 * i + 1] - y[2 * j + 1], 2);
      if (j != i && d2 < best) best = d2, nn = j;
    }
    agree += label[nn] == label[i];
  }
  return double(agree) / n;
}

TEST(map_tsne, SeparatesClustersAndIsDeterministicForASeed) {
  std::vector<int> label;
  const std::int64_t per = 40, d = 20;
  auto x = clusters(per, d, label);
  TsneOptions o;
  o.perplexity = 15;
  o.iterations = 400;
  o.seed = 5;
  auto a = tsne(x.data(), 4 * per, d, o);
  auto b = tsne(x.data(), 4 * per, d, o);
  EXPECT_EQ(a.coords, b.coords);
  const double agree = nn_agreement(a.coords, label);
  std::printf("t-SNE 1-NN cluster agreement %.3f, KL %.4f\n", agree, a.kl_divergence);
  EXPECT_GE(agree, 0.98);
  EXPECT_GT(a.kl_divergence, 0);
  o.seed = 6;
  auto c = tsne(x.data(), 4 * per, d, o);
  EXPECT_NE(a.coords, c.coords);
}

TEST(map_tsne, RefusesAPerplexityTooLargeForThePoints) {
  std::vector<float> x(20 * 3, 0.5f);
  TsneOptions o;
  o.perplexity = 30;
  EXPECT_THROW(tsne(x.data(), 20, 3, o), ProjectionError);
}

TEST(map_output, RefusesOtherExtensionsAndMissingFolders) {
  EXPECT_THROW(check_output("map.jpg"), MapUsageError);
  EXPECT_THROW(check_output("map"), MapUsageError);
  EXPECT_THROW(check_output("/nonexistent-folder-lookalike/map.svg"), MapError);
  EXPECT_NO_THROW(check_output(::testing::TempDir() + "/map.PNG"));
}

}  // namespace
}  // namespace lookalike::viz
