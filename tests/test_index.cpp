#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <set>

#include "index/vector_index.h"
#include "tests/store_test_util.h"

namespace {

using lookalike::index::Hit;
using lookalike::index::IndexError;
using lookalike::index::Metric;
using lookalike::index::VectorIndex;
using lookalike::testing::scratch_dir;
using lookalike::testing::seeded_matrix;

constexpr int kDim = 1280;

// Exact top-k computed here in double precision: the reference FAISS must match.
std::vector<Hit> brute_force(const std::vector<float>& base, const std::vector<std::int64_t>& ids,
                             const float* q, int k, Metric metric) {
  std::vector<Hit> all;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    double acc = 0;
    for (int d = 0; d < kDim; ++d) {
      double b = base[i * kDim + d];
      acc += metric == Metric::Cosine ? b * q[d] : (b - q[d]) * (b - q[d]);
    }
    all.push_back({ids[i], static_cast<float>(metric == Metric::Cosine ? acc : std::sqrt(acc))});
  }
  auto better = [&](const Hit& a, const Hit& b) {
    return metric == Metric::Cosine ? a.score > b.score : a.score < b.score;
  };
  std::partial_sort(all.begin(), all.begin() + k, all.end(), better);
  all.resize(static_cast<std::size_t>(k));
  return all;
}

struct Data {
  std::vector<float> base;
  std::vector<std::int64_t> ids;
};

Data make_data(std::int64_t n, bool normalise) {
  Data d{seeded_matrix(1, n, kDim, normalise), std::vector<std::int64_t>(n)};
  // Sparse, non-sequential ids: they must come back as given, not as positions.
  for (std::int64_t i = 0; i < n; ++i) d.ids[i] = 1000 + 7 * i;
  return d;
}

void expect_same_hits(const std::vector<Hit>& got, const std::vector<Hit>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].id, want[i].id) << "rank " << i;
    EXPECT_NEAR(got[i].score, want[i].score, 1e-4) << "rank " << i;
  }
}

void check_exact(Metric metric, bool normalise) {
  auto data = make_data(1500, normalise);
  VectorIndex index(kDim, metric);
  index.add(data.base.data(), data.ids.data(), static_cast<std::int64_t>(data.ids.size()));
  ASSERT_EQ(index.size(), 1500);
  auto queries = seeded_matrix(2, 8, kDim, normalise);
  auto hits = index.search(queries.data(), 8, 10);
  ASSERT_EQ(hits.size(), 8u);
  for (int q = 0; q < 8; ++q) {
    expect_same_hits(hits[q],
                     brute_force(data.base, data.ids, queries.data() + q * kDim, 10, metric));
  }
}

TEST(VectorIndex, FlatCosineEqualsBruteForce) { check_exact(Metric::Cosine, true); }

TEST(VectorIndex, FlatL2EqualsBruteForceAndReportsDistance) {
  check_exact(Metric::L2, false);
  // A stored vector is at distance 0 from itself (the sqrt of FAISS's squared distance).
  auto data = make_data(50, false);
  VectorIndex index(kDim, Metric::L2);
  index.add(data.base.data(), data.ids.data(), 50);
  auto hits = index.search(data.base.data() + 3 * kDim, 1, 2);
  EXPECT_EQ(hits[0][0].id, data.ids[3]);
  EXPECT_NEAR(hits[0][0].score, 0.0f, 1e-3);
}

TEST(VectorIndex, FewerStoredThanKReturnsWhatThereIs) {
  auto data = make_data(3, true);
  VectorIndex index(kDim, Metric::Cosine);
  index.add(data.base.data(), data.ids.data(), 3);
  auto hits = index.search(data.base.data(), 1, 10);
  ASSERT_EQ(hits[0].size(), 3u);
  EXPECT_EQ(hits[0][0].id, data.ids[0]);
  EXPECT_NEAR(hits[0][0].score, 1.0f, 1e-5);
  VectorIndex empty(kDim, Metric::Cosine);
  EXPECT_TRUE(empty.search(data.base.data(), 1, 5)[0].empty());
}

TEST(VectorIndex, RemoveDropsIdsAndIgnoresUnknown) {
  auto data = make_data(200, true);
  VectorIndex index(kDim, Metric::Cosine);
  index.add(data.base.data(), data.ids.data(), 200);
  std::vector<std::int64_t> gone = {data.ids[0], data.ids[5], data.ids[199], 999999};
  EXPECT_EQ(index.remove(gone), 3);
  EXPECT_EQ(index.size(), 197);
  auto hits = index.search(data.base.data(), 1, 200);
  ASSERT_EQ(hits[0].size(), 197u);
  std::set<std::int64_t> seen;
  for (const auto& h : hits[0]) seen.insert(h.id);
  EXPECT_EQ(seen.size(), 197u);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(seen.count(gone[i]), 0u) << gone[i];
  // Searching with a removed vector no longer finds it; a kept one still finds itself.
  auto kept = index.search(data.base.data() + 6 * kDim, 1, 1);
  EXPECT_EQ(kept[0][0].id, data.ids[6]);
}

TEST(VectorIndex, SaveLoadRoundTrip) {
  auto dir = scratch_dir("index_roundtrip");
  auto data = make_data(300, true);
  VectorIndex index(kDim, Metric::Cosine);
  index.add(data.base.data(), data.ids.data(), 300);
  index.remove({data.ids[10]});
  auto file = dir / "a.faiss";
  index.save(file);
  EXPECT_FALSE(std::filesystem::exists(dir / "a.faiss.tmp"));
  auto loaded = VectorIndex::load(file, kDim, Metric::Cosine, "Flat");
  EXPECT_EQ(loaded.size(), 299);
  EXPECT_EQ(loaded.dim(), kDim);
  EXPECT_EQ(loaded.factory(), "Flat");
  auto queries = seeded_matrix(3, 5, kDim);
  auto a = index.search(queries.data(), 5, 7);
  auto b = loaded.search(queries.data(), 5, 7);
  for (int q = 0; q < 5; ++q) expect_same_hits(b[q], a[q]);
  // The loaded index keeps working: removal by id and adding again.
  EXPECT_EQ(loaded.remove({data.ids[11]}), 1);
  loaded.add(data.base.data() + 10 * kDim, &data.ids[10], 1);
  EXPECT_EQ(loaded.search(data.base.data() + 10 * kDim, 1, 1)[0][0].id, data.ids[10]);
  // Overwriting an existing file is atomic too and leaves no temporary behind.
  loaded.save(file);
  EXPECT_EQ(VectorIndex::load(file, kDim, Metric::Cosine, "Flat").size(), 299);
}

TEST(VectorIndex, LoadRejectsWrongDimOrMetric) {
  auto dir = scratch_dir("index_wrong");
  auto data = make_data(20, true);
  VectorIndex index(kDim, Metric::Cosine);
  index.add(data.base.data(), data.ids.data(), 20);
  index.save(dir / "a.faiss");
  EXPECT_THROW(VectorIndex::load(dir / "a.faiss", 512, Metric::Cosine, "Flat"), IndexError);
  EXPECT_THROW(VectorIndex::load(dir / "a.faiss", kDim, Metric::L2, "Flat"), IndexError);
  EXPECT_THROW(VectorIndex::load(dir / "missing.faiss", kDim, Metric::Cosine, "Flat"), IndexError);
}

std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_bytes(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
}

std::string load_error(const std::filesystem::path& p) {
  try {
    VectorIndex::load(p, kDim, Metric::Cosine, "Flat");
  } catch (const IndexError& e) {
    return e.what();
  }
  return "";
}

TEST(VectorIndex, LoadRejectsTruncatedAndGarbageFiles) {
  auto dir = scratch_dir("index_bad");
  auto data = make_data(100, true);
  VectorIndex index(kDim, Metric::Cosine);
  index.add(data.base.data(), data.ids.data(), 100);
  index.save(dir / "good.faiss");
  const auto good = read_bytes(dir / "good.faiss");
  ASSERT_GT(good.size(), 100u * kDim * 4);

  for (std::size_t len :
       {std::size_t{0}, std::size_t{10}, std::size_t{24}, good.size() / 2, good.size() - 1}) {
    auto p = dir / ("truncated-" + std::to_string(len) + ".faiss");
    write_bytes(p, good.substr(0, len));
    auto what = load_error(p);
    EXPECT_NE(what.find(p.string()), std::string::npos) << "len " << len << ": " << what;
  }
  // One flipped byte inside the vectors: the checksum catches it.
  auto flipped = good;
  flipped[flipped.size() / 2] ^= 0x5a;
  write_bytes(dir / "flipped.faiss", flipped);
  EXPECT_NE(load_error(dir / "flipped.faiss").find("checksum"), std::string::npos);
  // A flipped byte in FAISS's header, where its sizes live, never reaches FAISS's parser.
  auto header = good;
  header[20] ^= 0x7f;
  write_bytes(dir / "header.faiss", header);
  EXPECT_NE(load_error(dir / "header.faiss").find("checksum"), std::string::npos);
  // Random bytes of the same size.
  std::string garbage(good.size(), '\0');
  std::uint64_t state = 42;
  for (auto& c : garbage) c = static_cast<char>(lookalike::testing::splitmix64(state));
  write_bytes(dir / "garbage.faiss", garbage);
  EXPECT_NE(load_error(dir / "garbage.faiss"), "");
  write_bytes(dir / "text.faiss", "this is not an index at all, just some text padding it out");
  EXPECT_NE(load_error(dir / "text.faiss").find("not a lookalike index file"), std::string::npos);
}

TEST(VectorIndex, BadFactoryStringIsRejected) {
  try {
    VectorIndex bad(kDim, Metric::Cosine, "NoSuchIndex42");
    FAIL() << "accepted a bad factory string";
  } catch (const IndexError& e) {
    EXPECT_NE(std::string(e.what()).find("NoSuchIndex42"), std::string::npos) << e.what();
  }
  EXPECT_THROW(VectorIndex(kDim, Metric::Cosine, "IDMap,Flat"), IndexError);
  EXPECT_THROW(VectorIndex(0, Metric::Cosine, "Flat"), IndexError);
}

TEST(VectorIndex, BadArgumentsAreRejected) {
  EXPECT_THROW(lookalike::index::parse_metric("dot"), IndexError);
  EXPECT_EQ(lookalike::index::parse_metric("l2"), Metric::L2);
  EXPECT_EQ(lookalike::index::to_string(Metric::Cosine), "cosine");
  VectorIndex index(kDim, Metric::Cosine);
  std::vector<float> q(kDim, 0.0f);
  EXPECT_THROW(index.search(q.data(), 1, 0), IndexError);
  EXPECT_THROW(index.search(q.data(), -1, 3), IndexError);
}

TEST(VectorIndex, IvfNeedsTrainingAndFailsClearlyWithoutIt) {
  auto data = make_data(400, true);
  VectorIndex index(kDim, Metric::Cosine, "IVF8,Flat");
  EXPECT_TRUE(index.needs_training());
  EXPECT_THROW(index.add(data.base.data(), data.ids.data(), 400), IndexError);
  EXPECT_THROW(index.train(data.base.data(), 4), IndexError);  // fewer points than lists
  index.train(data.base.data(), 400);
  EXPECT_FALSE(index.needs_training());
  index.add(data.base.data(), data.ids.data(), 400);
  auto hits = index.search(data.base.data() + 17 * kDim, 1, 1);
  EXPECT_EQ(hits[0][0].id, data.ids[17]);
  EXPECT_NEAR(hits[0][0].score, 1.0f, 1e-4);
  EXPECT_EQ(index.remove({data.ids[17]}), 1);
}

}  // namespace
