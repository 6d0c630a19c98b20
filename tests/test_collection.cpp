#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "store/collection.h"
#include "tests/store_test_util.h"

namespace {

namespace fs = std::filesystem;
using lookalike::index::IndexError;
using lookalike::store::CatalogConfig;
using lookalike::store::Collection;
using lookalike::store::Put;
using lookalike::store::SearchResult;
using lookalike::store::StoreError;
using lookalike::testing::scratch_dir;
using lookalike::testing::seeded_vector;

constexpr int kDim = 1280;
using Mode = Collection::Mode;

CatalogConfig config(const std::string& metric = "cosine", const std::string& factory = "Flat") {
  return {"test-model@0123456789abcdef", "test-model", kDim, metric, factory};
}

std::vector<Put> puts(int first, int n, bool normalise = true) {
  std::vector<Put> out;
  for (int i = first; i < first + n; ++i) {
    Put p;
    p.record.path = "/photos/" + std::to_string(i) + ".jpg";
    p.record.content_hash = std::to_string(i) + "h";
    p.embedding = seeded_vector(static_cast<std::uint64_t>(i), kDim, normalise);
    out.push_back(std::move(p));
  }
  return out;
}

// The ids of the k images most similar to `q` by a full scan of the catalog.
std::vector<std::int64_t> brute_force_ids(const Collection& c, const std::vector<float>& q, int k) {
  std::vector<std::pair<double, std::int64_t>> scored;
  c.catalog().for_each_embedding([&](std::int64_t id, const float* v) {
    double dot = 0;
    for (int d = 0; d < kDim; ++d) dot += double{v[d]} * q[d];
    scored.push_back({-dot, id});
  });
  std::sort(scored.begin(), scored.end());
  std::vector<std::int64_t> ids;
  for (int i = 0; i < k && i < static_cast<int>(scored.size()); ++i) {
    ids.push_back(scored[i].second);
  }
  return ids;
}

std::vector<std::int64_t> ids_of(const std::vector<SearchResult>& results) {
  std::vector<std::int64_t> ids;
  for (const auto& r : results) ids.push_back(r.image.id);
  return ids;
}

std::vector<std::vector<std::int64_t>> search_ids(Collection& c, int k) {
  std::vector<std::vector<std::int64_t>> out;
  for (std::uint64_t q = 0; q < 5; ++q) {
    auto v = seeded_vector(100000 + q, kDim);
    out.push_back(ids_of(c.search(v.data(), 1, k)[0]));
  }
  return out;
}

fs::path cache_file(const Collection& c) {
  return c.dir() / ("index-" + std::to_string(c.catalog().generation()) + ".faiss");
}

// A collection of 400 images whose index cache for the current generation is saved.
fs::path saved_collection(const std::string& name) {
  auto dir = scratch_dir(name);
  auto c = Collection::create_or_open(dir, config());
  c->apply(puts(0, 250, true), {});
  c->apply(puts(250, 150, true), {});
  c->save_index();
  return dir;
}

TEST(Collection, SearchFindsStoredVectorsAndMatchesBruteForce) {
  auto dir = scratch_dir("collection_search");
  auto c = Collection::create_or_open(dir, config());
  auto ids = c->apply(puts(0, 300), {});
  auto q = seeded_vector(42, kDim);
  auto results = c->search(q.data(), 1, 5);
  ASSERT_EQ(results[0].size(), 5u);
  EXPECT_EQ(results[0][0].image.id, ids[42]);
  EXPECT_EQ(results[0][0].image.path, "/photos/42.jpg");
  EXPECT_EQ(results[0][0].rank, 1);
  EXPECT_EQ(results[0][4].rank, 5);
  EXPECT_NEAR(results[0][0].score, 1.0f, 1e-4);
  auto other = seeded_vector(777777, kDim);
  EXPECT_EQ(ids_of(c->search(other.data(), 1, 10)[0]), brute_force_ids(*c, other, 10));
  EXPECT_THROW(c->search(q.data(), 1, 0), IndexError);
}

TEST(Collection, EmptyCollectionSearchesSavesAndReloads) {
  auto dir = scratch_dir("collection_empty");
  {
    auto c = Collection::create_or_open(dir, config());
    EXPECT_EQ(c->index().size(), 0);
    auto q = seeded_vector(1, kDim);
    auto results = c->search(q.data(), 1, 5);
    ASSERT_EQ(results.size(), 1u);
    EXPECT_TRUE(results[0].empty());
    c->save_index();
    EXPECT_TRUE(fs::exists(cache_file(*c)));
  }
  auto c = Collection::open(dir, Mode::Read);
  EXPECT_EQ(c->index().size(), 0);
  EXPECT_TRUE(c->index_from_cache());
}

TEST(Collection, ExcludeIdsSkipsThemAndStillReturnsK) {
  auto c = Collection::create_or_open(scratch_dir("collection_exclude"), config());
  auto ids = c->apply(puts(0, 50), {});
  auto q = seeded_vector(7, kDim);
  auto all = ids_of(c->search(q.data(), 1, 6)[0]);
  ASSERT_EQ(all[0], ids[7]);
  auto without = ids_of(c->search(q.data(), 1, 5, {ids[7], all[2]})[0]);
  std::vector<std::int64_t> want = {all[1], all[3], all[4], all[5]};
  ASSERT_EQ(without.size(), 5u);
  EXPECT_EQ(std::vector<std::int64_t>(without.begin(), without.begin() + 4), want);
  // Excluding everything leaves nothing, without error.
  EXPECT_TRUE(c->search(q.data(), 1, 3, ids)[0].empty());
}

TEST(Collection, ApplyUpdatesTheLoadedIndex) {
  auto c = Collection::create_or_open(scratch_dir("collection_apply"), config());
  auto ids = c->apply(puts(0, 100), {});
  ASSERT_EQ(c->index().size(), 100);
  // Re-put image 3 with image 500's vector, remove image 4.
  auto moved = puts(500, 1);
  moved[0].record.path = "/photos/3.jpg";
  auto again = c->apply(moved, {ids[4]});
  EXPECT_EQ(again[0], ids[3]);
  EXPECT_EQ(c->index().size(), 99);
  EXPECT_FALSE(c->index_from_cache());
  auto q500 = seeded_vector(500, kDim);
  EXPECT_EQ(c->search(q500.data(), 1, 1)[0][0].image.id, ids[3]);
  auto q4 = seeded_vector(4, kDim);
  auto all = c->search(q4.data(), 1, 99);
  ASSERT_EQ(all[0].size(), 99u);
  for (const auto& r : all[0]) EXPECT_NE(r.image.id, ids[4]);
  EXPECT_EQ(ids_of(c->search(q4.data(), 1, 10)[0]), brute_force_ids(*c, q4, 10));
}

TEST(Collection, CacheIsUsedWhenFresh) {
  auto dir = saved_collection("collection_fresh");
  std::vector<std::vector<std::int64_t>> before;
  fs::file_time_type written;
  {
    auto c = Collection::open(dir, Mode::Read);
    EXPECT_TRUE(fs::exists(cache_file(*c)));
    written = fs::last_write_time(cache_file(*c));
    before = search_ids(*c, 8);
    EXPECT_TRUE(c->index_from_cache());
    EXPECT_EQ(c->index().size(), 400);
  }
  auto c = Collection::open(dir, Mode::Write);
  EXPECT_EQ(search_ids(*c, 8), before);
  EXPECT_TRUE(c->index_from_cache());
  c->save_index();  // nothing new: the file stays as it was
  EXPECT_EQ(fs::last_write_time(cache_file(*c)), written);
}

TEST(Collection, CacheIsRebuiltWhenStale) {
  auto dir = saved_collection("collection_stale");
  fs::path old_file;
  {
    auto c = Collection::open(dir, Mode::Write);
    old_file = cache_file(*c);
    c->apply(puts(1000, 20), {});  // generation moves on; the cache is not saved
  }
  auto c = Collection::open(dir, Mode::Read);
  EXPECT_FALSE(fs::exists(cache_file(*c)));
  EXPECT_EQ(c->index().size(), 420);
  EXPECT_FALSE(c->index_from_cache());
  auto q = seeded_vector(1010, kDim);
  EXPECT_EQ(ids_of(c->search(q.data(), 1, 10)[0]), brute_force_ids(*c, q, 10));
  // A stale file under the current generation's name (wrong count) is not trusted either.
  fs::copy_file(old_file, cache_file(*c));
  auto c2 = Collection::open(dir, Mode::Read);
  EXPECT_EQ(c2->index().size(), 420);
  EXPECT_FALSE(c2->index_from_cache());
}

TEST(Collection, CacheIsRebuiltWhenMissingAndSavedByTheWriter) {
  auto dir = saved_collection("collection_missing");
  std::vector<std::vector<std::int64_t>> before;
  {
    auto c = Collection::open(dir, Mode::Read);
    before = search_ids(*c, 8);
    fs::remove(cache_file(*c));
  }
  {
    auto c = Collection::open(dir, Mode::Read);
    EXPECT_EQ(search_ids(*c, 8), before);
    EXPECT_FALSE(c->index_from_cache());
    EXPECT_FALSE(fs::exists(cache_file(*c)));  // readers never write
  }
  {
    auto c = Collection::open(dir, Mode::Write);
    EXPECT_EQ(search_ids(*c, 8), before);
    EXPECT_FALSE(c->index_from_cache());
    EXPECT_TRUE(fs::exists(cache_file(*c)));
  }
  auto c = Collection::open(dir, Mode::Read);
  EXPECT_EQ(search_ids(*c, 8), before);
  EXPECT_TRUE(c->index_from_cache());
}

TEST(Collection, CorruptOrTruncatedCacheIsRebuilt) {
  auto dir = saved_collection("collection_corrupt");
  std::vector<std::vector<std::int64_t>> before;
  fs::path file;
  {
    auto c = Collection::open(dir, Mode::Read);
    before = search_ids(*c, 8);
    file = cache_file(*c);
  }
  const auto size = fs::file_size(file);
  fs::resize_file(file, size / 3);
  {
    auto c = Collection::open(dir, Mode::Read);
    EXPECT_EQ(search_ids(*c, 8), before);
    EXPECT_FALSE(c->index_from_cache());
  }
  std::ofstream(file, std::ios::binary | std::ios::trunc) << std::string(size, 'x');
  {
    auto c = Collection::open(dir, Mode::Write);
    EXPECT_EQ(search_ids(*c, 8), before);
    EXPECT_FALSE(c->index_from_cache());
  }
  auto c = Collection::open(dir, Mode::Read);  // the writer replaced the bad file
  EXPECT_EQ(search_ids(*c, 8), before);
  EXPECT_TRUE(c->index_from_cache());
}

TEST(Collection, WriterOpenCleansLeftovers) {
  auto dir = saved_collection("collection_leftovers");
  std::ofstream(dir / "index-1.faiss") << "old";
  std::ofstream(dir / "index-9.faiss.tmp") << "half";
  auto c = Collection::open(dir, Mode::Write);
  EXPECT_FALSE(fs::exists(dir / "index-1.faiss"));
  EXPECT_FALSE(fs::exists(dir / "index-9.faiss.tmp"));
  EXPECT_TRUE(fs::exists(cache_file(*c)));
}

TEST(Collection, SecondWriterIsRefusedReadersAreNot) {
  auto dir = scratch_dir("collection_lock");
  auto writer = Collection::create_or_open(dir, config());
  writer->apply(puts(0, 10), {});
  try {
    Collection::open(dir, Mode::Write);
    FAIL() << "second writer got in";
  } catch (const StoreError& e) {
    EXPECT_EQ(std::string(e.what()),
              "collection " + dir.string() + " is locked by another lookalike process");
  }
  EXPECT_THROW(Collection::create_or_open(dir, config()), StoreError);
  auto reader = Collection::open(dir, Mode::Read);
  EXPECT_EQ(reader->index().size(), 10);
  EXPECT_THROW(reader->save_index(), StoreError);
  // The reader sees the writer's later commits.
  writer->apply(puts(10, 5), {});
  EXPECT_EQ(reader->index().size(), 15);
  auto q = seeded_vector(12, kDim);
  EXPECT_EQ(reader->search(q.data(), 1, 1)[0][0].image.path, "/photos/12.jpg");
  writer.reset();
  EXPECT_NO_THROW(Collection::open(dir, Mode::Write));
}

TEST(Collection, InfoReportsSizes) {
  auto dir = scratch_dir("collection_info");
  auto c = Collection::create_or_open(dir, config());
  c->apply(puts(0, 200), {});
  auto before = c->info();
  EXPECT_EQ(before.count, 200);
  EXPECT_EQ(before.generation, 1);
  EXPECT_EQ(before.config.dim, kDim);
  EXPECT_EQ(before.index_bytes, 0);
  EXPECT_GT(before.catalog_bytes, 200 * kDim * 4);
  c->save_index();
  auto info = c->info();
  auto db = dir / "catalog.db";
  auto size_or_0 = [](const fs::path& p) {
    return fs::exists(p) ? static_cast<std::int64_t>(fs::file_size(p)) : 0;
  };
  EXPECT_EQ(info.catalog_bytes,
            size_or_0(db) + size_or_0(dir / "catalog.db-wal") + size_or_0(dir / "catalog.db-shm"));
  EXPECT_EQ(info.index_bytes, static_cast<std::int64_t>(fs::file_size(cache_file(*c))));
  EXPECT_GT(info.index_bytes, 200 * kDim * 4);
  EXPECT_EQ(info.total_bytes, info.catalog_bytes + info.index_bytes + size_or_0(dir / "lock"));
}

TEST(Collection, OpenRefusesNonCollectionsAndMismatchedConfig) {
  auto dir = scratch_dir("collection_bad");
  try {
    Collection::open(dir, Mode::Read);
    FAIL();
  } catch (const StoreError& e) {
    EXPECT_NE(std::string(e.what()).find("not a lookalike collection"), std::string::npos);
  }
  { Collection::create_or_open(dir, config()); }
  auto other = config();
  other.dim = 512;
  try {
    Collection::create_or_open(dir, other);
    FAIL();
  } catch (const StoreError& e) {
    EXPECT_NE(std::string(e.what()).find("was created with"), std::string::npos) << e.what();
  }
  // An invalid config creates nothing.
  auto fresh = scratch_dir("collection_badconfig") / "c";
  for (auto bad : {config("dot"), config("cosine", "IVF12x,Flat"), CatalogConfig{"m", "m", 0}}) {
    try {
      Collection::create_or_open(fresh, bad);
      FAIL() << bad.metric << " " << bad.factory << " " << bad.dim;
    } catch (const StoreError& e) {
      EXPECT_NE(std::string(e.what()).find("invalid config"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(fresh));
  }
  // A garbage catalog.db is refused with the catalog's message.
  auto garbage = scratch_dir("collection_garbage");
  std::ofstream(garbage / "catalog.db") << std::string(4096, 'g');
  try {
    Collection::open(garbage, Mode::Read);
    FAIL();
  } catch (const StoreError& e) {
    EXPECT_NE(std::string(e.what()).find("not a lookalike catalog"), std::string::npos);
  }
}

TEST(Collection, CosineRequiresNormalisedVectors) {
  auto c = Collection::create_or_open(scratch_dir("collection_norm"), config());
  try {
    c->apply(puts(0, 3, false), {});
    FAIL();
  } catch (const StoreError& e) {
    EXPECT_NE(std::string(e.what()).find("not L2-normalised"), std::string::npos);
  }
  EXPECT_EQ(c->catalog().count(), 0);
}

TEST(Collection, L2ReportsDistances) {
  auto c = Collection::create_or_open(scratch_dir("collection_l2"), config("l2"));
  auto ids = c->apply(puts(0, 50, false), {});
  auto q = seeded_vector(9, kDim, false);
  auto r = c->search(q.data(), 1, 3)[0];
  EXPECT_EQ(r[0].image.id, ids[9]);
  EXPECT_NEAR(r[0].score, 0.0f, 1e-3);
  EXPECT_GT(r[1].score, 1.0f);  // distances grow down the list
  EXPECT_GE(r[2].score, r[1].score);
}

TEST(Collection, TrainedFactoryTrainsOnTheCatalogAtRebuild) {
  auto dir = scratch_dir("collection_ivf");
  {
    auto c = Collection::create_or_open(dir, config("cosine", "IVF4,Flat"));
    c->apply(puts(0, 2), {});
    EXPECT_THROW(c->index(), IndexError);  // 2 vectors cannot train 4 lists
    c->apply(puts(2, 298), {});
    EXPECT_EQ(c->index().size(), 300);
    auto q = seeded_vector(123, kDim);
    EXPECT_EQ(c->search(q.data(), 1, 1)[0][0].image.path, "/photos/123.jpg");
    c->apply(puts(300, 10), {});  // added to the trained index in memory
    auto q2 = seeded_vector(305, kDim);
    EXPECT_EQ(c->search(q2.data(), 1, 1)[0][0].image.path, "/photos/305.jpg");
    c->save_index();
  }
  auto c = Collection::open(dir, Mode::Read);
  EXPECT_EQ(c->index().size(), 310);
  EXPECT_TRUE(c->index_from_cache());
}

}  // namespace
