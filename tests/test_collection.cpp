#include <gtest/gtest.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>
#include <sys/mount.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>

#include "store/collection.h"
#include "tests/store_test_util.h"

namespace {

namespace fs = std::filesystem;
using lookalike::store::Catalog;
using lookalike::store::CatalogConfig;
using lookalike::store::Collection;
using lookalike::store::kMaxTopK;
using lookalike::store::Put;
using lookalike::store::SearchResult;
using lookalike::store::StoreError;
using lookalike::testing::scratch_dir;
using lookalike::testing::seeded_vector;

constexpr int kDim = 1280;
constexpr int kSmallDim = 64;  // the tests that need many vectors
using Mode = Collection::Mode;
using Ids = std::vector<std::int64_t>;

CatalogConfig config(const std::string& metric = "cosine", const std::string& factory = "Flat",
                     int dim = kDim) {
  return {"test-model@0123456789abcdef", "test-model", dim, metric, factory};
}

CatalogConfig small_config(const std::string& factory = "Flat") {
  return config("cosine", factory, kSmallDim);
}

Put make_put(const std::string& path, std::uint64_t seed, int dim = kDim, bool normalise = true) {
  Put p;
  p.record.path = path;
  p.record.content_hash = std::to_string(seed) + "h";
  p.embedding = seeded_vector(seed, dim, normalise);
  return p;
}

std::string photo(int i) { return "/photos/" + std::to_string(i) + ".jpg"; }

// Images /photos/<i>.jpg with vector seeded_vector(seed_base + i), i in [first, first + n).
std::vector<Put> puts(int first, int n, bool normalise = true, int dim = kDim,
                      std::uint64_t seed_base = 0) {
  std::vector<Put> out;
  for (int i = first; i < first + n; ++i) {
    out.push_back(make_put(photo(i), seed_base + static_cast<std::uint64_t>(i), dim, normalise));
  }
  return out;
}

// The ids of the k images most similar to `q` by a full scan of the catalog (read through a
// separate read-only connection).
Ids brute_force_ids(const fs::path& dir, const std::vector<float>& q, int k) {
  auto catalog = Catalog::open_read_only(dir / "catalog.db");
  const int dim = static_cast<int>(q.size());
  std::vector<std::pair<double, std::int64_t>> scored;
  catalog->for_each_embedding([&](std::int64_t id, const float* v) {
    double dot = 0;
    for (int d = 0; d < dim; ++d) dot += double{v[d]} * q[d];
    scored.push_back({-dot, id});
  });
  std::sort(scored.begin(), scored.end());
  Ids ids;
  for (int i = 0; i < k && i < static_cast<int>(scored.size()); ++i) {
    ids.push_back(scored[i].second);
  }
  return ids;
}
Ids brute_force_ids(const Collection& c, const std::vector<float>& q, int k) {
  return brute_force_ids(c.dir(), q, k);
}

Ids ids_of(const std::vector<SearchResult>& results) {
  Ids ids;
  for (const auto& r : results) ids.push_back(r.image.id);
  return ids;
}

std::vector<Ids> search_ids(const Collection& c, int k) {
  std::vector<Ids> out;
  for (std::uint64_t q = 0; q < 5; ++q) {
    auto v = seeded_vector(100000 + q, c.config().dim);
    out.push_back(ids_of(c.search(v.data(), 1, k)[0]));
  }
  return out;
}

fs::path cache_file(const Collection& c) {
  return c.dir() / ("index-" + std::to_string(c.generation()) + ".faiss");
}

std::vector<fs::path> cache_files(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    auto name = e.path().filename().string();
    if (name.rfind("index-", 0) == 0) out.push_back(e.path());
  }
  return out;
}

std::set<std::string> file_names(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

template <class F>
std::string store_error(F&& f) {
  try {
    f();
  } catch (const StoreError& e) {
    return e.what();
  }
  return "(no StoreError)";
}

// --- raw SQLite access to a catalog file, as a damaged disk or an older version would leave it

void raw_sql(const fs::path& db, const std::string& sql) {
  sqlite3* h = nullptr;
  ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
  char* err = nullptr;
  EXPECT_EQ(sqlite3_exec(h, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(h);
}

std::string raw_value(const fs::path& db, const std::string& sql) {
  sqlite3* h = nullptr;
  sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READONLY, nullptr);
  sqlite3_stmt* st = nullptr;
  std::string out = "(no row)";
  if (sqlite3_prepare_v2(h, sql.c_str(), -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    out.assign(static_cast<const char*>(sqlite3_column_blob(st, 0)),
               static_cast<std::size_t>(sqlite3_column_bytes(st, 0)));
  }
  sqlite3_finalize(st);
  sqlite3_close(h);
  return out;
}

std::string vector_blob(const fs::path& db, std::int64_t id) {
  return raw_value(db, "SELECT vector FROM embeddings WHERE image_id = " + std::to_string(id));
}

void set_vector_blob(const fs::path& db, std::int64_t id, const std::string& blob) {
  sqlite3* h = nullptr;
  ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(h, "UPDATE embeddings SET vector = ? WHERE image_id = ?", -1, &st,
                               nullptr),
            SQLITE_OK);
  sqlite3_bind_blob(st, 1, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 2, id);
  EXPECT_EQ(sqlite3_step(st), SQLITE_DONE);
  EXPECT_EQ(sqlite3_changes(h), 1);
  sqlite3_finalize(st);
  sqlite3_close(h);
}

float float_at(const std::string& blob, int i) {
  float x;
  std::memcpy(&x, blob.data() + 4 * i, 4);  // little-endian host (x86-64, aarch64)
  return x;
}
void set_float_at(std::string& blob, int i, float x) { std::memcpy(blob.data() + 4 * i, &x, 4); }

// Counts index rebuilds from the catalog, seen through the warning build_from_catalog logs for
// every corrupt vector it leaves out: with exactly one corrupt vector in the catalog, one
// warning is one rebuild (there is no other way to tell from outside that one happened).
class RebuildCounter : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::atomic<int> rebuilds{0};

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    std::string_view text(msg.payload.data(), msg.payload.size());
    if (text.find("left out of the index") != std::string_view::npos) ++rebuilds;
  }
  void flush_() override {}
};

struct CountRebuilds {
  std::shared_ptr<RebuildCounter> sink = std::make_shared<RebuildCounter>();
  CountRebuilds() { spdlog::default_logger()->sinks().push_back(sink); }
  ~CountRebuilds() {
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink), sinks.end());
  }
  int operator()() const { return sink->rebuilds; }
};

// A collection of 400 images whose index cache for the current generation is saved.
fs::path saved_collection(const std::string& name) {
  auto dir = scratch_dir(name);
  auto c = Collection::create_or_open(dir, config());
  c->apply(puts(0, 250, true), {});
  c->apply(puts(250, 150, true), {});
  c->save_index();
  return dir;
}

// ------------------------------------------------------------------------------------------

TEST(Collection, SearchFindsStoredVectorsAndMatchesBruteForce) {
  auto dir = scratch_dir("collection_search");
  auto c = Collection::create_or_open(dir, config());
  auto ids = c->apply(puts(0, 300), {});
  auto q = seeded_vector(42, kDim);
  std::int64_t generation = -1;
  auto results = c->search(q.data(), 1, 5, {}, &generation);
  EXPECT_EQ(generation, 1);
  ASSERT_EQ(results[0].size(), 5u);
  EXPECT_EQ(results[0][0].image.id, ids[42]);
  EXPECT_EQ(results[0][0].image.path, "/photos/42.jpg");
  EXPECT_EQ(results[0][0].rank, 1);
  EXPECT_EQ(results[0][4].rank, 5);
  EXPECT_NEAR(results[0][0].score, 1.0f, 1e-4);
  auto other = seeded_vector(777777, kDim);
  EXPECT_EQ(ids_of(c->search(other.data(), 1, 10)[0]), brute_force_ids(*c, other, 10));
  // Several queries at once give what each gives alone.
  std::vector<float> three;
  for (std::uint64_t s : {5u, 777777u, 123u}) {
    auto v = seeded_vector(s, kDim);
    three.insert(three.end(), v.begin(), v.end());
  }
  auto batch = c->search(three.data(), 3, 7);
  ASSERT_EQ(batch.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(ids_of(batch[i]), ids_of(c->search(three.data() + i * kDim, 1, 7)[0])) << i;
  }
}

TEST(Collection, TopKIsBoundedBothWays) {
  auto c = Collection::create_or_open(scratch_dir("collection_topk"), config());
  c->apply(puts(0, 30), {});
  auto q = seeded_vector(3, kDim);
  for (int k : {0, -1, kMaxTopK + 1, 1 << 30}) {
    auto what = store_error([&] { c->search(q.data(), 1, k); });
    EXPECT_NE(what.find("k must be between 1 and 10000"), std::string::npos) << k << ": " << what;
  }
  EXPECT_EQ(c->search(q.data(), 1, kMaxTopK)[0].size(), 30u);  // the bound itself is accepted
  EXPECT_EQ(c->search(q.data(), 1, 1)[0].size(), 1u);
}

TEST(Collection, EmptyCollectionSearchesSavesAndReloads) {
  auto dir = scratch_dir("collection_empty");
  {
    auto c = Collection::create_or_open(dir, config());
    EXPECT_EQ(c->index_size(), 0);
    EXPECT_EQ(c->count(), 0);
    auto q = seeded_vector(1, kDim);
    auto results = c->search(q.data(), 1, 5);
    ASSERT_EQ(results.size(), 1u);
    EXPECT_TRUE(results[0].empty());
    c->save_index();
    EXPECT_TRUE(fs::exists(cache_file(*c)));
  }
  auto c = Collection::open(dir, Mode::Read);
  EXPECT_EQ(c->index_size(), 0);
  EXPECT_TRUE(c->index_from_cache());
}

TEST(Collection, ExcludeIdsSkipsThemAndStillReturnsK) {
  auto c = Collection::create_or_open(scratch_dir("collection_exclude"), config());
  auto ids = c->apply(puts(0, 50), {});
  auto q = seeded_vector(7, kDim);
  auto all = ids_of(c->search(q.data(), 1, 6)[0]);
  ASSERT_EQ(all[0], ids[7]);
  auto without = ids_of(c->search(q.data(), 1, 5, {ids[7], all[2]})[0]);
  Ids want = {all[1], all[3], all[4], all[5]};
  ASSERT_EQ(without.size(), 5u);
  EXPECT_EQ(Ids(without.begin(), without.begin() + 4), want);
  // Excluding everything leaves nothing, without error.
  EXPECT_TRUE(c->search(q.data(), 1, 3, ids)[0].empty());
}

TEST(Collection, ApplyUpdatesTheLoadedIndex) {
  auto c = Collection::create_or_open(scratch_dir("collection_apply"), config());
  auto ids = c->apply(puts(0, 100), {});
  ASSERT_EQ(c->index_size(), 100);
  // Re-put image 3 with image 500's vector, remove image 4.
  auto moved = puts(500, 1);
  moved[0].record.path = "/photos/3.jpg";
  auto again = c->apply(moved, {ids[4]});
  EXPECT_EQ(again[0], ids[3]);
  EXPECT_EQ(c->index_size(), 99);
  EXPECT_EQ(c->count(), 99);
  EXPECT_EQ(c->generation(), 2);
  EXPECT_FALSE(c->index_from_cache());
  auto q500 = seeded_vector(500, kDim);
  EXPECT_EQ(c->search(q500.data(), 1, 1)[0][0].image.id, ids[3]);
  auto q4 = seeded_vector(4, kDim);
  auto all = c->search(q4.data(), 1, 99);
  ASSERT_EQ(all[0].size(), 99u);
  for (const auto& r : all[0]) EXPECT_NE(r.image.id, ids[4]);
  EXPECT_EQ(ids_of(c->search(q4.data(), 1, 10)[0]), brute_force_ids(*c, q4, 10));
  // Image 3's old vector is gone from the index: its best match now is something else.
  auto q3 = seeded_vector(3, kDim);
  auto best = c->search(q3.data(), 1, 1)[0][0];
  EXPECT_LT(best.score, 0.5f);
  EXPECT_EQ(ids_of(c->search(q3.data(), 1, 10)[0]), brute_force_ids(*c, q3, 10));
  // The same path twice in one batch: one image, holding the last vector.
  auto twice = puts(600, 2);
  twice[0].record.path = twice[1].record.path = "/photos/twice.jpg";
  auto both = c->apply(twice, {});
  EXPECT_EQ(both[0], both[1]);
  EXPECT_EQ(c->index_size(), 100);
  auto q601 = seeded_vector(601, kDim);
  auto hit = c->search(q601.data(), 1, 1)[0][0];
  EXPECT_EQ(hit.image.id, both[0]);
  EXPECT_NEAR(hit.score, 1.0f, 1e-4);
  auto q600 = seeded_vector(600, kDim);
  EXPECT_LT(c->search(q600.data(), 1, 1)[0][0].score, 0.5f);
}

TEST(Collection, CacheIsUsedWhenFresh) {
  auto dir = saved_collection("collection_fresh");
  std::vector<Ids> before;
  fs::file_time_type written;
  {
    auto c = Collection::open(dir, Mode::Read);
    EXPECT_TRUE(fs::exists(cache_file(*c)));
    written = fs::last_write_time(cache_file(*c));
    before = search_ids(*c, 8);
    EXPECT_TRUE(c->index_from_cache());
    EXPECT_EQ(c->index_size(), 400);
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
  EXPECT_EQ(c->index_size(), 420);
  EXPECT_FALSE(c->index_from_cache());
  auto q = seeded_vector(1010, kDim);
  EXPECT_EQ(ids_of(c->search(q.data(), 1, 10)[0]), brute_force_ids(*c, q, 10));
  // A stale file under the current generation's name (an older generation, wrong count) is not
  // trusted either.
  fs::copy_file(old_file, cache_file(*c));
  auto c2 = Collection::open(dir, Mode::Read);
  EXPECT_EQ(c2->index_size(), 420);
  EXPECT_FALSE(c2->index_from_cache());
  EXPECT_EQ(ids_of(c2->search(q.data(), 1, 10)[0]), brute_force_ids(*c, q, 10));
}

TEST(Collection, CacheIsRebuiltWhenMissingAndSavedByTheWriter) {
  auto dir = saved_collection("collection_missing");
  std::vector<Ids> before;
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
  std::vector<Ids> before;
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

// Index files carry the collection id: a file copied from another collection with the same
// generation, count and dim is refused, even though nothing else tells them apart.
TEST(Collection, AnotherCollectionsIndexFileIsNotUsed) {
  auto a = scratch_dir("collection_foreign_a");
  auto b = scratch_dir("collection_foreign_b");
  Ids ids_a, ids_b;
  std::string id_a, id_b;
  {
    auto ca = Collection::create_or_open(a, small_config());
    ids_a = ca->apply(puts(0, 300, true, kSmallDim), {});
    ca->save_index();
    id_a = ca->collection_id();
    auto cb = Collection::create_or_open(b, small_config());
    ids_b = cb->apply(puts(0, 300, true, kSmallDim, 5000), {});  // same paths, other vectors
    cb->save_index();
    id_b = cb->collection_id();
    ASSERT_EQ(ca->generation(), cb->generation());
    ASSERT_EQ(cache_file(*ca).filename(), cache_file(*cb).filename());
  }
  ASSERT_EQ(ids_a, ids_b);  // the same ids too
  EXPECT_NE(id_a, id_b);
  auto file = cache_files(a).at(0);
  fs::copy_file(file, b / file.filename(), fs::copy_options::overwrite_existing);
  auto check = [&](const Collection& c) {
    for (std::uint64_t s : {5042u, 5007u, 77u, 123456u}) {
      auto q = seeded_vector(s, kSmallDim);
      EXPECT_EQ(ids_of(c.search(q.data(), 1, 10)[0]), brute_force_ids(b, q, 10)) << s;
    }
    auto q = seeded_vector(5042, kSmallDim);
    auto hit = c.search(q.data(), 1, 1)[0].at(0);
    EXPECT_EQ(hit.image.id, ids_b[42]);
    EXPECT_NEAR(hit.score, 1.0f, 1e-4);
  };
  {
    auto cb = Collection::open(b, Mode::Read);
    EXPECT_FALSE(cb->index_from_cache());
    EXPECT_EQ(cb->collection_id(), id_b);
    check(*cb);
  }
  {
    auto cb = Collection::open(b, Mode::Write);  // refuses it too, and writes its own
    EXPECT_FALSE(cb->index_from_cache());
    check(*cb);
  }
  EXPECT_NE(read_bytes(b / file.filename()), read_bytes(file));
  auto cb = Collection::open(b, Mode::Read);
  EXPECT_TRUE(cb->index_from_cache());
  check(*cb);
  EXPECT_TRUE(Collection::open(a, Mode::Read)->index_from_cache());  // A's own file is fine
}

TEST(Collection, WriterOpenCleansLeftovers) {
  auto dir = saved_collection("collection_leftovers");
  std::ofstream(dir / "index-1.faiss") << "old";
  std::ofstream(dir / "index-9.faiss.tmp") << "half";
  std::ofstream(dir / "catalog.db.tmp") << "half a catalog";
  auto c = Collection::open(dir, Mode::Write);
  EXPECT_FALSE(fs::exists(dir / "index-1.faiss"));
  EXPECT_FALSE(fs::exists(dir / "index-9.faiss.tmp"));
  EXPECT_FALSE(fs::exists(dir / "catalog.db.tmp"));
  EXPECT_TRUE(fs::exists(cache_file(*c)));
  EXPECT_EQ(c->count(), 400);
}

// The state a kill leaves between engine::Engine::remove's commit and its unlink (or between
// add_image's rename and its commit): an upload file that no row holds.
TEST(Collection, WriterOpenRemovesOrphanUploadsOnly) {
  auto dir = saved_collection("collection_orphan_uploads");
  const std::string held = "0123456789abcdef0123456789abcdef";
  const std::string orphan = "fedcba9876543210fedcba9876543210";
  const std::string copy = "00112233445566778899aabbccddeeff";  // a row has it, as another file
  fs::create_directories(dir / "uploads");
  {
    auto c = Collection::open(dir, Mode::Write);
    Put kept = make_put((dir / "moved-away" / "uploads" / (held + ".jpeg")).string(), 7001);
    kept.record.content_hash = held;
    Put other = make_put("/photos/elsewhere.jpg", 7002);
    other.record.content_hash = copy;
    c->apply({kept, other}, {});
  }
  for (const auto& name : {held + ".jpeg", orphan + ".png", copy + ".jpeg", orphan + ".jpeg.tmp",
                           std::string("notes.txt"), held.substr(0, 31) + ".jpeg"}) {
    std::ofstream(dir / "uploads" / name) << "bytes";
  }
  auto c = Collection::open(dir, Mode::Write);
  EXPECT_TRUE(fs::exists(dir / "uploads" / (held + ".jpeg")));  // its row, by file name
  EXPECT_FALSE(fs::exists(dir / "uploads" / (orphan + ".png")));
  EXPECT_FALSE(fs::exists(dir / "uploads" / (copy + ".jpeg")));  // same bytes, not this file
  EXPECT_FALSE(fs::exists(dir / "uploads" / (orphan + ".jpeg.tmp")));
  EXPECT_TRUE(fs::exists(dir / "uploads" / "notes.txt"));  // not named like an upload
  EXPECT_TRUE(fs::exists(dir / "uploads" / (held.substr(0, 31) + ".jpeg")));
  EXPECT_EQ(c->count(), 402);
  // Readers never sweep.
  std::ofstream(dir / "uploads" / (orphan + ".png")) << "bytes";
  c.reset();
  Collection::open(dir, Mode::Read);
  EXPECT_TRUE(fs::exists(dir / "uploads" / (orphan + ".png")));
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
  EXPECT_EQ(reader->index_size(), 10);
  EXPECT_EQ(reader->mode(), Mode::Read);
  EXPECT_THROW(reader->save_index(), StoreError);
  // The reader sees the writer's later commits (it refreshes its index when a search finds the
  // catalog ahead of it).
  writer->apply(puts(10, 5), {});
  auto q = seeded_vector(12, kDim);
  std::int64_t generation = -1;
  auto hits = reader->search(q.data(), 1, 1, {}, &generation)[0];
  ASSERT_EQ(hits.size(), 1u);
  EXPECT_EQ(hits[0].image.path, "/photos/12.jpg");
  EXPECT_EQ(generation, 2);
  EXPECT_EQ(reader->generation(), 2);
  EXPECT_EQ(reader->index_size(), 15);
  EXPECT_EQ(reader->count(), 15);
  // A remove is seen too: the removed image is never returned.
  auto gone = writer->find_path("/photos/12.jpg")->id;
  writer->apply({}, {gone});
  auto after_remove = reader->search(q.data(), 1, 20)[0];
  for (const auto& r : after_remove) EXPECT_NE(r.image.id, gone);
  EXPECT_EQ(reader->index_size(), 14);
  writer.reset();
  EXPECT_NO_THROW(Collection::open(dir, Mode::Write));
}

TEST(Collection, ReadModeRefusesEveryWriteAndChangesNothing) {
  auto dir = scratch_dir("collection_read_only");
  Ids ids;
  {
    auto c = Collection::create_or_open(dir, config());
    ids = c->apply(puts(0, 40), {});
    c->set_metadata(ids[0], R"({"label":"kept"})");
    c->save_index();
  }
  auto state = [&] {
    auto catalog = Catalog::open_read_only(dir / "catalog.db");
    std::string s;
    auto field = [&](const std::string& x) {
      s += x;
      s += '|';
    };
    field(std::to_string(catalog->generation()));
    field(catalog->collection_id());
    for (const auto& r : catalog->list()) {
      for (const auto& x : {std::to_string(r.id), r.path, r.content_hash, r.metadata,
                            std::to_string(r.updated_at_ms)}) {
        field(x);
      }
    }
    catalog->for_each_embedding([&](std::int64_t id, const float* v) {
      field(std::to_string(id));
      field(std::string(reinterpret_cast<const char*>(v), kDim * 4));
    });
    for (const auto& f : cache_files(dir)) {
      field(f.filename().string());
      field(read_bytes(f));
    }
    return s;
  };
  const auto before = state();
  const auto names = file_names(dir);
  auto r = Collection::open(dir, Mode::Read);
  const auto generation = r->generation();
  auto expect_refused = [&](const char* what, auto&& f) {
    auto message = store_error(f);
    EXPECT_NE(message.find("needs the collection opened for writing"), std::string::npos)
        << what << ": " << message;
    EXPECT_NE(message.find(dir.string()), std::string::npos) << what << ": " << message;
  };
  expect_refused("apply put", [&] { r->apply(puts(100, 1), {}); });
  expect_refused("apply update", [&] { r->apply(puts(1, 1, true, kDim, 900), {}); });
  expect_refused("apply remove", [&] { r->apply({}, {ids[3]}); });
  expect_refused("set_metadata", [&] { r->set_metadata(ids[0], R"({"label":"changed"})"); });
  expect_refused("save_index", [&] { r->save_index(); });
  EXPECT_EQ(r->generation(), generation);
  EXPECT_EQ(r->count(), 40);
  EXPECT_EQ(r->index_size(), 40);
  EXPECT_EQ(r->get(ids[0])->metadata, R"({"label":"kept"})");
  EXPECT_TRUE(r->get(ids[3]));
  EXPECT_FALSE(r->find_path(photo(100)));
  auto q = seeded_vector(1, kDim);
  EXPECT_EQ(r->search(q.data(), 1, 1)[0].at(0).image.id, ids[1]);  // not seed 901's vector
  r.reset();
  EXPECT_EQ(state(), before);
  EXPECT_EQ(file_names(dir), names);
}

TEST(Collection, InfoReportsSizes) {
  auto dir = scratch_dir("collection_info");
  auto c = Collection::create_or_open(dir, config());
  c->apply(puts(0, 200), {});
  auto before = c->info();
  EXPECT_EQ(before.count, 200);
  EXPECT_EQ(before.generation, 1);
  EXPECT_EQ(before.config.dim, kDim);
  EXPECT_EQ(before.dir, dir);
  EXPECT_EQ(before.collection_id, c->collection_id());
  EXPECT_EQ(before.collection_id.size(), 32u);
  EXPECT_EQ(before.index_bytes, 0);
  EXPECT_EQ(before.index_vectors, 200);
  EXPECT_EQ(before.index_deleted, 0);
  EXPECT_FALSE(before.index_status.empty());
  EXPECT_TRUE(before.corrupt.empty());
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
  // Removes and updates leave tombstones until compaction.
  auto ids = c->list();
  c->apply(puts(0, 3, true, kDim, 7000), {ids[10].id});
  info = c->info();
  EXPECT_EQ(info.count, 199);
  EXPECT_EQ(info.index_vectors, 199);
  EXPECT_EQ(info.index_deleted, 4);
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
  for (auto bad :
       {config("dot"), config("cosine", "IVF12x,Flat"), CatalogConfig{"m", "m", 0},
        CatalogConfig{"", "m", 8}, config("cosine", "IDMap,Flat"), config("cosine", "")}) {
    try {
      Collection::create_or_open(fresh, bad);
      FAIL() << bad.metric << " " << bad.factory << " " << bad.dim;
    } catch (const StoreError& e) {
      EXPECT_NE(std::string(e.what()).find("invalid config"), std::string::npos) << e.what();
    }
    EXPECT_THROW(Collection::validate_config(fresh, bad), StoreError);
    EXPECT_FALSE(fs::exists(fresh));
  }
  EXPECT_NO_THROW(Collection::validate_config(fresh, config()));
  EXPECT_NO_THROW(Collection::validate_config(fresh, small_config("HNSW32")));
  EXPECT_NO_THROW(Collection::validate_config(fresh, small_config("IVF16,Flat")));
  EXPECT_FALSE(fs::exists(fresh));
  // A garbage catalog.db is refused with the catalog's message, and left as it was, by open and
  // by create_or_open alike.
  auto garbage = scratch_dir("collection_garbage");
  const std::string junk(4096, 'g');
  std::ofstream(garbage / "catalog.db") << junk;
  try {
    Collection::open(garbage, Mode::Read);
    FAIL();
  } catch (const StoreError& e) {
    EXPECT_NE(std::string(e.what()).find("not a lookalike catalog"), std::string::npos);
  }
  auto what = store_error([&] { Collection::create_or_open(garbage, config()); });
  EXPECT_NE(what.find("not a lookalike catalog"), std::string::npos) << what;
  EXPECT_EQ(read_bytes(garbage / "catalog.db"), junk);
}

// A kill during creation by this or an older version leaves an empty or a config-less
// catalog.db, or a catalog.db.tmp: none of them is a collection, and create_or_open replaces
// them.
TEST(Collection, CreateOrOpenReplacesWhatAnInterruptedCreationLeft) {
  auto works = [](const fs::path& dir) {
    {
      auto c = Collection::create_or_open(dir, small_config());
      EXPECT_EQ(c->config().model_id, small_config().model_id);
      EXPECT_EQ(c->count(), 0);
      EXPECT_EQ(c->generation(), 0);
      auto ids = c->apply(puts(0, 20, true, kSmallDim), {});
      auto q = seeded_vector(7, kSmallDim);
      EXPECT_EQ(c->search(q.data(), 1, 1)[0].at(0).image.id, ids[7]);
    }
    EXPECT_TRUE(Collection::exists(dir));
    auto r = Collection::open(dir, Mode::Read);
    EXPECT_EQ(r->count(), 20);
    EXPECT_EQ(r->config().dim, kSmallDim);
    for (const auto& name : file_names(dir)) {
      EXPECT_EQ(name.find(".tmp"), std::string::npos) << name << " left behind";
    }
  };
  {
    SCOPED_TRACE("0-byte catalog.db");
    auto dir = scratch_dir("collection_create_empty");
    std::ofstream(dir / "catalog.db");
    EXPECT_FALSE(Collection::exists(dir));
    auto what = store_error([&] { Collection::open(dir, Mode::Read); });
    EXPECT_NE(what.find("not a lookalike collection"), std::string::npos) << what;
    works(dir);
  }
  {
    SCOPED_TRACE("catalog.db without config");
    auto dir = scratch_dir("collection_create_configless");
    { Catalog::open(dir / "catalog.db", true); }
    // Not a collection: `index` (create_or_open) replaces it, as an empty catalog.db is.
    EXPECT_FALSE(Collection::exists(dir));
    EXPECT_TRUE(Collection::unfinished(dir));
    for (auto mode : {Mode::Read, Mode::Write}) {
      auto what = store_error([&] { Collection::open(dir, mode); });
      EXPECT_NE(what.find("no config"), std::string::npos) << what;
    }
    works(dir);
    EXPECT_FALSE(Collection::unfinished(dir));
  }
  {
    SCOPED_TRACE("catalog.db without config but with images is never replaced");
    auto dir = scratch_dir("collection_create_configless_rows");
    { Catalog::open(dir / "catalog.db", true); }
    raw_sql(dir / "catalog.db",
            "INSERT INTO images(path, content_hash, bytes, width, height, mtime_ns, "
            "added_at_ms, updated_at_ms) VALUES('/keep.jpg', 'h', 1, 1, 1, 1, 1, 1);");
    EXPECT_TRUE(Collection::exists(dir));  // open() says what is wrong with it
    EXPECT_FALSE(Collection::unfinished(dir));
    auto what = store_error([&] { Collection::create_or_open(dir, small_config()); });
    EXPECT_NE(what.find("no config"), std::string::npos) << what;
    EXPECT_EQ(raw_value(dir / "catalog.db", "SELECT path FROM images"), "/keep.jpg");
  }
  {
    SCOPED_TRACE("catalog.db.tmp only");
    auto dir = scratch_dir("collection_create_tmp");
    std::ofstream(dir / "catalog.db.tmp") << std::string(3000, 't');
    std::ofstream(dir / "catalog.db.tmp-journal") << std::string(512, 'j');
    EXPECT_FALSE(Collection::exists(dir));
    works(dir);
  }
  {
    SCOPED_TRACE("0-byte catalog.db and catalog.db.tmp");
    auto dir = scratch_dir("collection_create_both");
    std::ofstream(dir / "catalog.db");
    std::ofstream(dir / "catalog.db.tmp") << std::string(3000, 't');
    works(dir);
  }
  {
    SCOPED_TRACE("a complete collection is never replaced");
    auto dir = scratch_dir("collection_create_keep");
    Ids ids;
    {
      auto c = Collection::create_or_open(dir, small_config());
      ids = c->apply(puts(0, 5, true, kSmallDim), {});
    }
    auto c = Collection::create_or_open(dir, small_config());
    EXPECT_EQ(c->count(), 5);
    EXPECT_EQ(c->get(ids[2])->path, photo(2));
  }
}

// A run that created a collection and stored nothing takes it back: only what it made goes (a
// folder that was there keeps everything else, and its own lock file), folders it made go.
TEST(Collection, UndoCreationRemovesOnlyWhatCreationMade) {
  {
    SCOPED_TRACE("new folders");
    auto top = scratch_dir("collection_undo_new");
    const auto dir = top / "a" / "b";
    Collection::Creation made;
    auto c = Collection::create_or_open(dir, small_config(), &made);
    EXPECT_TRUE(made.catalog);
    EXPECT_EQ(made.folders, (std::vector<fs::path>{dir, top / "a"}));
    c->save_index();
    EXPECT_TRUE(Collection::undo_creation(c, made));
    EXPECT_FALSE(c);
    EXPECT_FALSE(fs::exists(top / "a"));
    EXPECT_TRUE(fs::exists(top));
  }
  {
    SCOPED_TRACE("a folder that was there, with files of its own and a lock file");
    auto dir = scratch_dir("collection_undo_existing");
    std::ofstream(dir / "notes.txt") << "mine";
    std::ofstream(dir / "lock");
    std::ofstream(dir / "catalog.db");  // 0 bytes: what an interrupted creation left
    Collection::Creation made;
    auto c = Collection::create_or_open(dir, small_config(), &made);
    EXPECT_TRUE(made.catalog);
    EXPECT_TRUE(made.folders.empty());
    EXPECT_TRUE(Collection::undo_creation(c, made));
    EXPECT_EQ(file_names(dir), (std::set<std::string>{"lock", "notes.txt"}));
    EXPECT_EQ(read_bytes(dir / "notes.txt"), "mine");
  }
  {
    SCOPED_TRACE("a collection holding images, or one that was there, is kept");
    auto dir = scratch_dir("collection_undo_keep");
    Collection::Creation made;
    auto c = Collection::create_or_open(dir, small_config(), &made);
    c->apply(puts(0, 1, true, kSmallDim), {});
    EXPECT_FALSE(Collection::undo_creation(c, made));
    ASSERT_TRUE(c);
    c.reset();
    c = Collection::create_or_open(dir, small_config(), &made);
    EXPECT_FALSE(made.catalog);
    c->apply({}, c->ids_under("/"));
    EXPECT_FALSE(Collection::undo_creation(c, made));
    ASSERT_TRUE(c);
    EXPECT_TRUE(Collection::exists(dir));
  }
}

// A clean close leaves every commit in catalog.db itself, the WAL empty: catalog.db alone (what a
// backup or a copy takes) is the whole collection. The writer's connection closes last and
// checkpoints; a read-only connection cannot, so before, every row stayed in catalog.db-wal.
TEST(Collection, CleanCloseLeavesEveryCommitInCatalogDb) {
  auto dir = scratch_dir("collection_clean_close");
  Ids ids;
  {
    auto c = Collection::create_or_open(dir, small_config());
    ids = c->apply(puts(0, 10, true, kSmallDim), {});
    // Reads borrow pooled read-only connections, open until the collection closes.
    EXPECT_EQ(c->count(), 10);
    auto q = seeded_vector(3, kSmallDim);
    EXPECT_EQ(c->search(q.data(), 1, 1)[0].at(0).image.id, ids[3]);
    c->save_index();
  }
  const auto wal = dir / "catalog.db-wal";
  EXPECT_TRUE(!fs::exists(wal) || fs::file_size(wal) == 0)
      << "catalog.db-wal holds " << fs::file_size(wal) << " bytes after a clean close";
  // immutable=1: SQLite reads catalog.db alone, ignoring any WAL.
  {
    sqlite3* h = nullptr;
    const auto uri = "file:" + (dir / "catalog.db").string() + "?immutable=1";
    ASSERT_EQ(sqlite3_open_v2(uri.c_str(), &h, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, nullptr),
              SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(h, "SELECT count(*) FROM images", -1, &st, nullptr), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    EXPECT_EQ(sqlite3_column_int64(st, 0), 10);
    sqlite3_finalize(st);
    sqlite3_close(h);
  }
  // catalog.db copied alone to another folder is the collection.
  auto copy = scratch_dir("collection_clean_close_copy");
  fs::copy_file(dir / "catalog.db", copy / "catalog.db");
  auto r = Collection::open(copy, Mode::Read);
  EXPECT_EQ(r->count(), 10);
  EXPECT_EQ(r->index_size(), 10);
  auto q = seeded_vector(7, kSmallDim);
  EXPECT_EQ(r->search(q.data(), 1, 1)[0].at(0).image.path, photo(7));
  // A Read-mode collection beside a writer changes nothing on close: the writer still checkpoints.
  {
    auto w = Collection::open(dir, Mode::Write);
    auto reader = Collection::open(dir, Mode::Read);
    w->apply(puts(10, 5, true, kSmallDim), {});
    EXPECT_EQ(reader->count(), 15);
    w.reset();
  }
  EXPECT_TRUE(!fs::exists(wal) || fs::file_size(wal) == 0);
  EXPECT_EQ(Collection::open(dir, Mode::Read)->count(), 15);
}

// A folder that cannot be looked into is not "no collection": the system's words come through
// (here ENOTDIR: a path under a regular file; EACCES, as a user without permission, is checked
// through the binary by tests/e2e/store_defects.py).
TEST(Collection, UnreadableFolderIsNotReportedAsNoCollection) {
  auto dir = scratch_dir("collection_unreadable");
  std::ofstream(dir / "file") << "x";
  const auto under = dir / "file" / "c";
  for (auto* f : {+[](const fs::path& p) { Collection::exists(p); },
                  +[](const fs::path& p) { Collection::unfinished(p); },
                  +[](const fs::path& p) { Collection::open(p, Mode::Read); }}) {
    auto what = store_error([&] { f(under); });
    EXPECT_EQ(what, under.string() + ": cannot read the collection: Not a directory");
  }
  EXPECT_FALSE(Collection::exists(dir / "missing"));  // only "no such file" is "no collection"
  EXPECT_FALSE(Collection::unfinished(dir / "missing"));
}

// A tmpfs mounted on the fresh scratch folder `name` (mount options `options`, e.g. "size=1m"),
// unmounted when it goes out of scope; null where this process cannot mount one (not root:
// errno says why, and the test skips).
struct TmpfsMount {
  fs::path dir;
  explicit TmpfsMount(fs::path d) : dir(std::move(d)) {}
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;
  ~TmpfsMount() { ::umount2(dir.c_str(), MNT_DETACH); }
};

std::unique_ptr<TmpfsMount> mount_tmpfs(const std::string& name, const char* options) {
  // A mount left by a killed run would make the scratch directory busy.
  ::umount2((fs::path(LOOKALIKE_FIXTURES) / "store" / name).c_str(), MNT_DETACH);
  auto dir = scratch_dir(name);
  if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, options) != 0) return nullptr;
  return std::make_unique<TmpfsMount>(dir);
}

// create_or_open on a disk that fills up at every point of the creation (a small tmpfs, filled
// to leave 0, 4, 8, ... KiB): it either works, or throws StoreError and leaves no catalog.db (or
// a complete one), never half of one. Once there is room again, it works.
TEST(Collection, CreationOnAFullDiskLeavesNoHalfCollection) {
  const auto tmpfs = mount_tmpfs("collection_full_disk", "size=1m");
  if (!tmpfs) GTEST_SKIP() << "cannot mount a tmpfs (needs root): " << std::strerror(errno);
  const fs::path& mnt = tmpfs->dir;
  const auto dir = mnt / "c";
  const auto db = dir / "catalog.db";
  int clean_failures = 0, half_done = 0, successes = 0;
  for (int free_kb = 0; free_kb <= 160; free_kb += 4) {
    SCOPED_TRACE(std::to_string(free_kb) + " KiB free");
    for (const auto& e : fs::directory_iterator(mnt)) fs::remove_all(e.path());
    {
      std::ofstream filler(mnt / "filler", std::ios::binary);
      const auto space = fs::space(mnt).available;
      const auto want = static_cast<std::uintmax_t>(free_kb) * 1024;
      filler << std::string(space > want ? space - want : 0, 'f');
    }
    std::string what;
    try {
      auto c = Collection::create_or_open(dir, small_config());
      ++successes;
      try {
        c->apply(puts(0, 3, true, kSmallDim), {});
      } catch (const StoreError&) {
        // no room for the batch: the catalog must still be whole (checked below)
      }
    } catch (const StoreError& e) {
      what = e.what();
    } catch (const std::exception& e) {
      what = e.what();
      ADD_FAILURE() << "create_or_open threw something other than StoreError: " << what;
    }
    const bool failed = !what.empty();
    if (failed && !fs::exists(db)) {
      ++clean_failures;
      EXPECT_FALSE(Collection::exists(dir));
      EXPECT_NE(what.find("catalog.db"), std::string::npos) << what;
    }
    if (fs::exists(dir)) {
      for (const auto& name : file_names(dir)) {
        EXPECT_TRUE(name == "lock" || name.rfind("catalog.db", 0) == 0 ||
                    name.rfind("index-", 0) == 0)
            << "stray file " << name;
      }
    }
    fs::remove(mnt / "filler");  // room again (reading a WAL catalog needs room for its -shm)
    if (fs::exists(db)) {
      // Whatever happened, a catalog.db that exists is complete.
      if (failed) ++half_done;
      EXPECT_TRUE(Collection::exists(dir)) << what;
      std::unique_ptr<Catalog> catalog;
      EXPECT_NO_THROW(catalog = Catalog::open_read_only(db)) << what;
      if (catalog) {
        ASSERT_TRUE(catalog->config()) << "a catalog without config was left: " << what;
        EXPECT_EQ(catalog->config()->dim, kSmallDim);
        EXPECT_TRUE(catalog->count() == 0 || catalog->count() == 3);
      }
    }
    // The leftovers, whatever they are, do not stand in the way.
    auto c = Collection::create_or_open(dir, small_config());
    auto ids = c->apply(puts(10, 2, true, kSmallDim), {});
    auto q = seeded_vector(11, kSmallDim);
    EXPECT_EQ(c->search(q.data(), 1, 1)[0].at(0).image.id, ids[1]);
  }
  std::printf(
      "full disk: %d failed leaving no catalog.db, %d failed after creating it, %d "
      "created\n",
      clean_failures, half_done, successes);
  EXPECT_GE(clean_failures, 1) << "the disk never filled up during creation";
  EXPECT_GE(successes, 1) << "never enough room: the sweep tested nothing";
}

// Upkeep is O(batch): many small applies to a big collection never rebuild its index; updates
// leave tombstones until their share passes kCompactFraction, then one compaction clears them.
TEST(Collection, SmallAppliesToABigCollectionNeverRebuildIt) {
  constexpr int kBig = 20'000;
  auto dir = scratch_dir("collection_upkeep");
  Ids ids;
  {
    auto c = Collection::create_or_open(dir, small_config());
    ids = c->apply(puts(0, kBig, true, kSmallDim), {});
  }
  // One corrupt vector makes every rebuild visible: each logs one warning about it.
  auto blob = vector_blob(dir / "catalog.db", ids[0]);
  set_float_at(blob, 0, std::nanf(""));
  set_vector_blob(dir / "catalog.db", ids[0], blob);
  CountRebuilds rebuilds;
  auto c = Collection::open(dir, Mode::Write);
  ASSERT_EQ(rebuilds(), 1) << "no cache file for this generation: the open rebuilds";
  ASSERT_EQ(c->corrupt_ids(), std::unordered_set<std::int64_t>{ids[0]});
  std::int64_t live = kBig - 1;
  ASSERT_EQ(c->index_size(), live);
  std::int64_t generation = c->generation();

  // 200 applies of one new image each.
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 200; ++i) {
    c->apply({make_put(photo(kBig + i), static_cast<std::uint64_t>(kBig + i), kSmallDim)}, {});
    ++live;
    ASSERT_EQ(c->generation(), ++generation);
    ASSERT_FALSE(c->index_from_cache());
    auto info = c->info();
    ASSERT_EQ(info.index_deleted, 0) << "apply " << i;
    ASSERT_EQ(info.index_vectors, live) << "apply " << i;
  }
  const auto ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::printf("200 single-put applies to %d vectors: %.2f ms each\n", kBig, ms / 200);
  EXPECT_EQ(rebuilds(), 1) << "an add rebuilt the index";
  auto q = seeded_vector(kBig + 150, kSmallDim);
  EXPECT_EQ(c->search(q.data(), 1, 1)[0].at(0).image.path, photo(kBig + 150));

  // 100 applies of one update each: one tombstone each, no rebuild.
  for (int i = 0; i < 100; ++i) {
    c->apply({make_put(photo(i + 1), 900'000 + static_cast<std::uint64_t>(i), kSmallDim)}, {});
    auto info = c->info();
    ASSERT_EQ(info.index_deleted, i + 1) << "update " << i;
    ASSERT_EQ(info.index_vectors, live) << "update " << i;
  }
  EXPECT_EQ(rebuilds(), 1) << "an update rebuilt the index";
  auto q_new = seeded_vector(900'050, kSmallDim);
  auto hit = c->search(q_new.data(), 1, 1)[0].at(0);
  EXPECT_EQ(hit.image.path, photo(51));
  EXPECT_NEAR(hit.score, 1.0f, 1e-4);
  auto q_old = seeded_vector(51, kSmallDim);
  EXPECT_LT(c->search(q_old.data(), 1, 1)[0].at(0).score, 0.9f);

  // Batches of updates until the tombstones' share passes kCompactFraction: exactly then the
  // index is compacted (rebuilt beside the live one), once.
  const double f = lookalike::index::kCompactFraction;
  std::int64_t deleted = 100;
  int compactions = 0, next = 0;
  std::map<int, std::uint64_t> latest;  // image number -> seed of its current vector
  for (int round = 0; round < 300 && compactions < 2; ++round) {
    std::vector<Put> batch;
    for (int j = 0; j < 250; ++j, ++next) {
      const int image = 101 + next % (kBig - 101);  // never image 0, the corrupt one
      const auto seed = 1'000'000 + static_cast<std::uint64_t>(next);
      batch.push_back(make_put(photo(image), seed, kSmallDim));
      latest[image] = seed;
    }
    c->apply(batch, {});
    const std::int64_t expected = deleted + 250;
    const double share = static_cast<double>(expected) / static_cast<double>(expected + live);
    auto info = c->info();
    ASSERT_EQ(info.index_vectors, live);
    if (share > f) {
      ASSERT_EQ(info.index_deleted, 0)
          << "round " << round << ": share " << share << " passed " << f << " without compaction";
      ++compactions;
      deleted = 0;
    } else {
      ASSERT_EQ(info.index_deleted, expected) << "round " << round << ": compacted early";
      deleted = expected;
    }
    ASSERT_EQ(rebuilds(), 1 + compactions) << "round " << round;
  }
  EXPECT_EQ(compactions, 2);
  // After compaction every image is still found by its current vector.
  for (int image : {101, 5000, 19'999, 20'000}) {
    auto seed = latest.count(image) ? latest[image] : static_cast<std::uint64_t>(image);
    auto v = seeded_vector(seed, kSmallDim);
    auto top = c->search(v.data(), 1, 1)[0].at(0);
    EXPECT_EQ(top.image.path, photo(image)) << image;
    EXPECT_NEAR(top.score, 1.0f, 1e-4) << image;
  }
  EXPECT_EQ(c->corrupt_ids(), std::unordered_set<std::int64_t>{ids[0]});
}

// Stored vectors are checked as they are read into the index: a flipped byte is reported, the
// image is left out of the results, and every other image is still found.
TEST(Collection, CorruptStoredVectorsAreLeftOutAndReported) {
  auto dir = scratch_dir("collection_corrupt_vector");
  Ids ids;
  {
    auto c = Collection::create_or_open(dir, small_config());
    ids = c->apply(puts(0, 100, true, kSmallDim), {});
    c->save_index();
  }
  const auto db = dir / "catalog.db";
  auto blob = vector_blob(db, ids[10]);
  set_float_at(blob, 3, std::nanf(""));
  set_vector_blob(db, ids[10], blob);
  blob = vector_blob(db, ids[20]);
  for (int i = 0; i < kSmallDim; ++i) set_float_at(blob, i, float_at(blob, i) * 1.1f);
  set_vector_blob(db, ids[20], blob);
  blob = vector_blob(db, ids[30]);
  blob[4 * 5 + 3] ^= 0x40;  // one flipped bit: the exponent of element 5 grows by 128
  set_vector_blob(db, ids[30], blob);
  for (const auto& f : cache_files(dir)) fs::remove(f);
  const std::unordered_set<std::int64_t> bad = {ids[10], ids[20], ids[30]};

  auto check = [&](const Collection& c) {
    auto info = c.info();
    ASSERT_EQ(info.corrupt.size(), 3u);
    std::map<std::int64_t, std::string> reasons;
    for (const auto& v : info.corrupt) reasons[v.id] = v.reason;
    EXPECT_NE(reasons[ids[10]].find("non-finite"), std::string::npos) << reasons[ids[10]];
    EXPECT_NE(reasons[ids[20]].find("norm 1.1000"), std::string::npos) << reasons[ids[20]];
    EXPECT_NE(reasons[ids[30]].find("norm"), std::string::npos) << reasons[ids[30]];
    EXPECT_EQ(c.corrupt_ids(), bad);
    EXPECT_EQ(c.index_size(), 97);
    EXPECT_EQ(info.index_vectors, 97);
    EXPECT_EQ(c.count(), 100);
    for (int i = 0; i < 100; ++i) {
      auto q = seeded_vector(static_cast<std::uint64_t>(i), kSmallDim);
      auto results = c.search(q.data(), 1, 100)[0];
      ASSERT_EQ(results.size(), 97u) << i;
      for (const auto& r : results) ASSERT_EQ(bad.count(r.image.id), 0u) << r.image.path;
      if (bad.count(ids[i])) {
        auto what = store_error([&] { c.embedding(ids[i]); });
        EXPECT_NE(what.find(photo(i)), std::string::npos) << what;
        EXPECT_TRUE(c.get(ids[i]));  // the record itself is intact
      } else {
        EXPECT_EQ(results[0].image.id, ids[i]) << i;
        EXPECT_NEAR(results[0].score, 1.0f, 1e-4) << i;
        EXPECT_EQ(c.embedding(ids[i]), q) << i;
      }
    }
  };
  {
    SCOPED_TRACE("read mode");
    check(*Collection::open(dir, Mode::Read));
  }
  {
    SCOPED_TRACE("write mode");
    check(*Collection::open(dir, Mode::Write));
  }
  {
    SCOPED_TRACE("write mode, cache saved with the bad vectors left out");
    check(*Collection::open(dir, Mode::Write));
  }
  // Repair one by re-putting its file; remove another: neither is corrupt any more.
  auto c = Collection::open(dir, Mode::Write);
  c->apply({make_put(photo(20), 20, kSmallDim)}, {ids[30]});
  EXPECT_EQ(c->corrupt_ids(), std::unordered_set<std::int64_t>{ids[10]});
  ASSERT_EQ(c->info().corrupt.size(), 1u) << "a removed image is still reported corrupt";
  EXPECT_EQ(c->index_size(), 98);
  auto q = seeded_vector(20, kSmallDim);
  auto hit = c->search(q.data(), 1, 1)[0].at(0);
  EXPECT_EQ(hit.image.id, ids[20]);
  EXPECT_NEAR(hit.score, 1.0f, 1e-4);
  EXPECT_EQ(c->embedding(ids[20]), q);
  c->save_index();
  c.reset();
  auto r = Collection::open(dir, Mode::Read);
  EXPECT_EQ(r->corrupt_ids(), std::unordered_set<std::int64_t>{ids[10]});
  EXPECT_EQ(r->index_size(), 98);
}

// A blob of the wrong size (5116 bytes for 1280 floats) is a corrupt vector like a non-finite
// one: the collection opens in both modes (it failed every command), the image is left out and
// listed, and re-putting its file or removing it repairs the collection.
TEST(Collection, WrongSizeStoredVectorIsLeftOutAndRepairable) {
  auto dir = scratch_dir("collection_short_blob");
  Ids ids;
  {
    auto c = Collection::create_or_open(dir, config());
    ids = c->apply(puts(0, 10), {});
    c->save_index();
  }
  const auto db = dir / "catalog.db";
  for (int i : {2, 5}) {
    raw_sql(db, "UPDATE embeddings SET vector = substr(vector, 1, " + std::to_string(kDim * 4 - 4) +
                    ") WHERE image_id = " + std::to_string(ids[i]));
  }
  for (const auto& f : cache_files(dir)) fs::remove(f);
  const std::unordered_set<std::int64_t> bad = {ids[2], ids[5]};
  for (auto mode : {Mode::Read, Mode::Write}) {
    SCOPED_TRACE(mode == Mode::Read ? "read" : "write");
    std::unique_ptr<Collection> c;
    ASSERT_NO_THROW(c = Collection::open(dir, mode));
    EXPECT_EQ(c->corrupt_ids(), bad);
    EXPECT_EQ(c->index_size(), 8);
    auto info = c->info();
    ASSERT_EQ(info.corrupt.size(), 2u);
    EXPECT_NE(info.corrupt[0].reason.find("5116 bytes, not 5120"), std::string::npos)
        << info.corrupt[0].reason;
    auto q = seeded_vector(4, kDim);
    auto hits = c->search(q.data(), 1, 10)[0];
    EXPECT_EQ(hits.size(), 8u);
    EXPECT_EQ(hits.at(0).image.id, ids[4]);
    auto what = store_error([&] { c->embedding(ids[2]); });
    EXPECT_NE(what.find(photo(2)), std::string::npos) << what;
  }
  auto c = Collection::open(dir, Mode::Write);
  c->apply({make_put(photo(2), 2)}, {ids[5]});
  EXPECT_TRUE(c->corrupt_ids().empty());
  EXPECT_EQ(c->index_size(), 9);
  auto q = seeded_vector(2, kDim);
  EXPECT_EQ(c->search(q.data(), 1, 1)[0].at(0).image.id, ids[2]);
  c->save_index();
  c.reset();
  EXPECT_TRUE(Collection::open(dir, Mode::Read)->info().corrupt.empty());
}

TEST(Collection, FoldersPagesAndMetadata) {
  auto dir = scratch_dir("collection_reads");
  auto c = Collection::create_or_open(dir, small_config());
  auto ids =
      c->apply({make_put("/p/DIR/a.jpg", 1, kSmallDim), make_put("/p/DIR/sub/b.jpg", 2, kSmallDim),
                make_put("/p/DIR2/c.jpg", 3, kSmallDim), make_put("/p/DIRx.jpg", 4, kSmallDim),
                make_put("/p/DIR.jpg", 5, kSmallDim)},
               {});
  EXPECT_EQ(c->ids_under("/p/DIR"), (Ids{ids[0], ids[1]}));
  EXPECT_EQ(c->ids_under("/p/DIR2"), (Ids{ids[2]}));
  EXPECT_EQ(c->ids_under("/p/DIRx.jpg"), (Ids{ids[3]}));
  EXPECT_EQ(c->ids_under("/p"), ids);
  EXPECT_EQ(c->ids_under("/q"), Ids{});
  EXPECT_EQ(c->find_path("/p/DIR2/c.jpg")->id, ids[2]);
  EXPECT_EQ(c->get_many({ids[4], 12345, ids[1]}).size(), 2u);
  EXPECT_EQ(c->embedding_by_hash("3h"), seeded_vector(3, kSmallDim));

  // Pagination by id.
  c->apply({}, {ids[2]});
  Ids paged;
  std::int64_t after = 0;
  std::vector<std::size_t> sizes;
  for (int guard = 0; guard < 10; ++guard) {
    auto page = c->list_page(after, 2);
    sizes.push_back(page.size());
    if (page.empty()) break;
    for (const auto& r : page) paged.push_back(r.id);
    after = page.back().id;
  }
  EXPECT_EQ(paged, (Ids{ids[0], ids[1], ids[3], ids[4]}));
  EXPECT_EQ(sizes, (std::vector<std::size_t>{2, 2, 0}));
  EXPECT_EQ(c->list().size(), 4u);

  // set_metadata: a new generation, seen by get and by search results.
  const auto g = c->generation();
  EXPECT_TRUE(c->set_metadata(ids[0], R"({"label":"boot"})"));
  EXPECT_EQ(c->generation(), g + 1);
  EXPECT_EQ(c->info().generation, g + 1);
  EXPECT_EQ(c->get(ids[0])->metadata, R"({"label":"boot"})");
  auto q = seeded_vector(1, kSmallDim);
  std::int64_t seen = -1;
  auto hit = c->search(q.data(), 1, 1, {}, &seen)[0].at(0);
  EXPECT_EQ(seen, g + 1);
  EXPECT_EQ(hit.image.id, ids[0]);
  EXPECT_EQ(hit.image.metadata, R"({"label":"boot"})");
  EXPECT_FALSE(c->set_metadata(ids[2], R"({"x":1})"));  // removed
  EXPECT_EQ(c->generation(), g + 1);
  EXPECT_THROW(c->set_metadata(ids[0], "[1,2]"), StoreError);
  EXPECT_THROW(c->set_metadata(ids[0], "{oops"), StoreError);
  EXPECT_EQ(c->generation(), g + 1);
  EXPECT_EQ(c->get(ids[0])->metadata, R"({"label":"boot"})");
  // The index saved after a metadata change is used as is by the next reader.
  c->save_index();
  EXPECT_TRUE(fs::exists(dir / ("index-" + std::to_string(g + 1) + ".faiss")));
  c.reset();
  auto r = Collection::open(dir, Mode::Read);
  EXPECT_TRUE(r->index_from_cache());
  EXPECT_EQ(r->generation(), g + 1);
  EXPECT_EQ(r->search(q.data(), 1, 1)[0].at(0).image.metadata, R"({"label":"boot"})");
}

// A catalog written by schema version 1 (no collection id): readers use it as is, the first
// writer migrates it to the current version and gives it an id.
TEST(Collection, SchemaV1CatalogIsReadAsIsAndMigratedByTheWriter) {
  auto dir = scratch_dir("collection_v1");
  const auto db = dir / "catalog.db";
  std::string old_id;
  {
    auto c = Collection::create_or_open(dir, small_config());
    c->apply(puts(0, 100, true, kSmallDim), {});
    c->save_index();
    old_id = c->collection_id();
  }
  raw_sql(db,
          "DELETE FROM meta WHERE key = 'collection_id';"
          "UPDATE meta SET value = '1' WHERE key = 'schema_version';");
  auto q = seeded_vector(31337, kSmallDim);
  const auto want = brute_force_ids(dir, q, 10);
  {
    auto r = Collection::open(dir, Mode::Read);
    EXPECT_EQ(r->collection_id(), std::string(32, '0'));
    EXPECT_FALSE(r->index_from_cache());  // that file is bound to an id this catalog lacks
    EXPECT_EQ(r->count(), 100);
    EXPECT_EQ(ids_of(r->search(q.data(), 1, 10)[0]), want);
  }
  EXPECT_EQ(raw_value(db, "SELECT value FROM meta WHERE key = 'schema_version'"), "1");
  std::string new_id;
  {
    auto w = Collection::open(dir, Mode::Write);
    new_id = w->collection_id();
    EXPECT_EQ(new_id.size(), 32u);
    EXPECT_NE(new_id, std::string(32, '0'));
    EXPECT_EQ(new_id.find_first_not_of("0123456789abcdef"), std::string::npos) << new_id;
    EXPECT_FALSE(w->index_from_cache());
    EXPECT_EQ(w->generation(), 1);
    EXPECT_EQ(ids_of(w->search(q.data(), 1, 10)[0]), want);
  }
  EXPECT_EQ(raw_value(db, "SELECT value FROM meta WHERE key = 'schema_version'"),
            std::to_string(lookalike::store::kCatalogSchemaVersion));
  EXPECT_EQ(raw_value(db, "SELECT value FROM meta WHERE key = 'collection_id'"), new_id);
  auto r = Collection::open(dir, Mode::Read);
  EXPECT_EQ(r->collection_id(), new_id);
  EXPECT_TRUE(r->index_from_cache());
  EXPECT_EQ(ids_of(r->search(q.data(), 1, 10)[0]), want);
}

TEST(Collection, CosineRequiresNormalisedVectors) {
  auto c = Collection::create_or_open(scratch_dir("collection_norm"), config());
  try {
    c->apply(puts(0, 3, false), {});
    FAIL();
  } catch (const StoreError& e) {
    // The reason the read side gives for such a stored vector (CorruptVector).
    EXPECT_NE(std::string(e.what()).find(", not 1 (cosine collection)"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(c->count(), 0);
  EXPECT_EQ(c->generation(), 0);
}

// Every embedding of a batch is checked before anything is written, with the checks (and the
// 1e-3 norm tolerance) that reading a vector back applies: a NaN, an infinity, a wrong size or
// a cosine norm off 1 anywhere in a batch fails the whole batch with a StoreError naming the
// catalog, the image and the reason; the catalog, the index and its cache file are unchanged,
// and the collection opens and searches as before.
TEST(Collection, InvalidVectorsAreRefusedBeforeAnythingIsWritten) {
  const auto dir = scratch_dir("collection_invalid_vectors");
  auto c = Collection::create_or_open(dir, config());
  const Ids ids = c->apply(puts(0, 6), {});
  c->save_index();
  const auto before_results = search_ids(*c, 3);
  const auto before_generation = c->generation();
  const auto stored_vector = *c->embedding(ids[2]);

  auto nan = make_put(photo(101), 101);
  nan.embedding[7] = std::nanf("");
  auto inf = make_put(photo(102), 102);
  inf.embedding[0] = std::numeric_limits<float>::infinity();
  auto short_vec = make_put(photo(103), 103, kDim - 1);
  auto long_vec = make_put(photo(104), 104, kDim + 1);
  auto half = make_put(photo(105), 105);
  for (auto& x : half.embedding) x *= 0.5f;
  auto just_off = make_put(photo(106), 106);  // norm 1.0011: past the 1e-3 tolerance
  for (auto& x : just_off.embedding) x *= 1.0011f;
  auto update = make_put(photo(2), 107);  // an existing image: named by its id too
  update.embedding[3] = -std::numeric_limits<float>::infinity();
  const std::vector<std::pair<Put, std::string>> cases = {
      {nan, "embedding has a non-finite value"},
      {inf, "embedding has a non-finite value"},
      {short_vec, "embedding has 1279 floats, not 1280"},
      {long_vec, "embedding has 1281 floats, not 1280"},
      {half, "embedding norm 0.5000, not 1 (cosine collection)"},
      {just_off, "embedding norm 1.0011, not 1 (cosine collection)"},
      {update, "image " + std::to_string(ids[2])},
  };
  for (const auto& [bad, reason] : cases) {
    SCOPED_TRACE(reason);
    try {
      c->apply({make_put(photo(100), 100), bad}, {ids[0]});
      ADD_FAILURE() << "accepted " << bad.record.path;
    } catch (const StoreError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find((dir / "catalog.db").string()), std::string::npos) << what;
      EXPECT_NE(what.find(bad.record.path), std::string::npos) << what;
      EXPECT_NE(what.find(reason), std::string::npos) << what;
      EXPECT_NE(what.find("nothing written"), std::string::npos) << what;
    }
    EXPECT_EQ(c->count(), 6);
    EXPECT_EQ(c->index_size(), 6);
    EXPECT_EQ(c->generation(), before_generation);
    EXPECT_FALSE(c->find_path(photo(100))) << "the good put of the batch was written";
    EXPECT_TRUE(c->get(ids[0])) << "the batch's removal was applied";
    EXPECT_EQ(*c->embedding(ids[2]), stored_vector);
    EXPECT_EQ(search_ids(*c, 3), before_results);
  }
  // Within the tolerance is accepted, as reading it back accepts it.
  auto within = make_put(photo(108), 108);
  for (auto& x : within.embedding) x *= 1.0009f;
  EXPECT_NO_THROW(c->apply({within}, {}));
  EXPECT_TRUE(c->corrupt_ids().empty());
  c->apply({}, c->ids_under(photo(108)));
  c.reset();

  for (auto mode : {Mode::Read, Mode::Write}) {
    auto again = Collection::open(dir, mode);
    EXPECT_EQ(again->count(), 6);
    EXPECT_TRUE(again->corrupt_ids().empty());
    EXPECT_EQ(search_ids(*again, 3), before_results);
  }
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
    auto first = c->apply(puts(0, 2), {});  // too few to train 4 lists: still searchable
    EXPECT_EQ(c->index_size(), 2);
    auto q1 = seeded_vector(1, kDim);
    EXPECT_EQ(c->search(q1.data(), 1, 1)[0].at(0).image.id, first[1]);
    c->apply(puts(2, 298), {});
    EXPECT_EQ(c->index_size(), 300);
    auto q = seeded_vector(123, kDim);
    EXPECT_EQ(c->search(q.data(), 1, 1)[0].at(0).image.path, "/photos/123.jpg");
    c->apply(puts(300, 10), {});  // added to the index in memory
    auto q2 = seeded_vector(305, kDim);
    EXPECT_EQ(c->search(q2.data(), 1, 1)[0].at(0).image.path, "/photos/305.jpg");
    c->save_index();
  }
  auto c = Collection::open(dir, Mode::Read);
  EXPECT_EQ(c->index_size(), 310);
  EXPECT_TRUE(c->index_from_cache());
  auto q = seeded_vector(222, kDim);
  EXPECT_EQ(c->search(q.data(), 1, 1)[0].at(0).image.path, "/photos/222.jpg");
}

// Approximate factories: removed images never come back, updated ones are found by their new
// vector and not by their old one, before and after a save and reload, and across compactions.
class ApproximateFactory : public ::testing::TestWithParam<std::string> {};

TEST_P(ApproximateFactory, RemovesAndUpdatesWork) {
  const auto factory = GetParam();
  std::string name = "collection_factory_" + factory;
  std::replace(name.begin(), name.end(), ',', '_');
  auto dir = scratch_dir(name);
  auto c = Collection::create_or_open(dir, small_config(factory));
  constexpr int kN = 1000;
  auto ids = c->apply(puts(0, kN, true, kSmallDim), {});
  std::map<std::int64_t, std::uint64_t> live;  // id -> seed of its current vector
  for (int i = 0; i < kN; ++i) live[ids[i]] = static_cast<std::uint64_t>(i);
  std::map<std::int64_t, std::uint64_t> removed, replaced;  // id -> seed no longer in the index
  std::mt19937_64 rng(7);
  int next_new = kN;
  std::uint64_t next_seed = 100'000;

  auto check = [&](const Collection& col, const std::string& when) {
    SCOPED_TRACE(when);
    ASSERT_EQ(col.index_size(), static_cast<std::int64_t>(live.size()));
    for (const auto& [id, seed] : removed) {
      auto q = seeded_vector(seed, kSmallDim);
      auto hits = col.search(q.data(), 1, 20)[0];
      for (const auto& r : hits) {
        ASSERT_FALSE(removed.count(r.image.id)) << "removed image " << r.image.id << " returned";
        ASSERT_TRUE(live.count(r.image.id)) << r.image.id;
      }
    }
    int found = 0, stale = 0;
    for (const auto& [id, old_seed] : replaced) {
      auto q_new = seeded_vector(live.at(id), kSmallDim);
      auto hits = col.search(q_new.data(), 1, 10)[0];
      ASSERT_FALSE(hits.empty());
      if (hits[0].image.id == id && std::abs(hits[0].score - 1.0f) < 1e-4) ++found;
      auto q_old = seeded_vector(old_seed, kSmallDim);
      auto old_hits = col.search(q_old.data(), 1, 10)[0];
      for (const auto& r : old_hits) {
        ASSERT_TRUE(live.count(r.image.id)) << r.image.id;
        if (r.image.id == id && r.score > 0.999f) ++stale;  // matched its old vector
      }
    }
    EXPECT_EQ(stale, 0) << "an updated image was found by its old vector";
    std::printf("%s, %s: %d of %zu updated images found first by their new vector\n",
                factory.c_str(), when.c_str(), found, replaced.size());
    // IVF probes the query's own list, so a stored vector always finds itself; HNSW is
    // approximate.
    const double need = factory.rfind("IVF", 0) == 0 ? 1.0 : 0.97;
    EXPECT_GE(found, need * static_cast<double>(replaced.size()))
        << found << " of " << replaced.size() << " updated images found by their new vector";
  };

  for (int round = 0; round < 4; ++round) {
    std::vector<std::int64_t> keys;
    for (const auto& [id, seed] : live) keys.push_back(id);
    std::shuffle(keys.begin(), keys.end(), rng);
    // Round 3 removes a third of everything: past any compaction threshold.
    const std::size_t n_remove = round == 3 ? keys.size() / 3 : 40;
    Ids removes(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(n_remove));
    std::vector<Put> batch;
    for (std::size_t j = n_remove; j < n_remove + 40; ++j) {
      auto rec = c->get(keys[j]);
      ASSERT_TRUE(rec);
      batch.push_back(make_put(rec->path, next_seed++, kSmallDim));
    }
    for (int j = 0; j < 20; ++j) {
      batch.push_back(make_put(photo(next_new++), next_seed++, kSmallDim));
    }
    auto got = c->apply(batch, removes);
    for (auto id : removes) {
      removed[id] = live.at(id);
      replaced.erase(id);
      live.erase(id);
    }
    for (std::size_t j = 0; j < batch.size(); ++j) {
      const auto seed = next_seed - batch.size() + j;
      if (j < 40) {
        ASSERT_EQ(got[j], keys[n_remove + j]) << "an update changed the id";
        if (!replaced.count(got[j])) replaced[got[j]] = live.at(got[j]);
      }
      live[got[j]] = seed;
    }
    check(*c, "after round " + std::to_string(round) + " (" + c->info().index_status + ")");
    if (HasFatalFailure()) return;
  }
  EXPECT_EQ(c->count(), static_cast<std::int64_t>(live.size()));
  c->save_index();
  c.reset();
  auto r = Collection::open(dir, Mode::Read);
  EXPECT_TRUE(r->index_from_cache());
  check(*r, "reloaded from the cache");
}

INSTANTIATE_TEST_SUITE_P(Factories, ApproximateFactory, ::testing::Values("HNSW32", "IVF16,Flat"),
                         [](const auto& info) {
                           std::string s = info.param;
                           s.erase(std::remove(s.begin(), s.end(), ','), s.end());
                           return s;
                         });

}  // namespace

// Metadata filters (store::MetadataFilter): applied inside the index search, so a category
// that holds 2% of the collection still gets a full top-k, equal to brute force over it.
TEST(Collection, FilteredSearchIsFullTopKOfTheMatchingImagesOnly) {
  for (const std::string factory :
       {"Flat", "IVF4,Flat"}) {  // exact, and a trained IVF (all lists probed)
    auto c = Collection::create_or_open(scratch_dir("collection_filter_" + factory),
                                        config("cosine", factory));
    auto p = puts(0, 500);
    for (int i = 0; i < 500; ++i) {
      const char* cat = i % 50 == 0 ? "rare" : (i % 2 ? "odd" : "even");
      p[static_cast<std::size_t>(i)].record.metadata =
          std::string(R"({"category":")") + cat + R"(","n":)" + std::to_string(i) + R"(,"sale":)" +
          (i % 3 == 0 ? "true" : "false") + "}";
    }
    auto ids = c->apply(p, {});
    const auto rare = lookalike::store::parse_where({"category=rare"});
    auto q = seeded_vector(123456, kDim);
    auto hits = c->search(q.data(), 1, 10, {}, nullptr, &rare)[0];
    ASSERT_EQ(hits.size(), 10u) << factory << ": 10 of the 10 'rare' images";
    std::set<std::int64_t> rare_ids;
    for (int i = 0; i < 500; i += 50) rare_ids.insert(ids[static_cast<std::size_t>(i)]);
    for (const auto& h : hits) EXPECT_TRUE(rare_ids.count(h.image.id)) << factory;
    // Removing one leaves 9, never another category.
    c->apply({}, {ids[0]});
    hits = c->search(q.data(), 1, 10, {}, nullptr, &rare)[0];
    EXPECT_EQ(hits.size(), 9u) << factory;
  }
  auto c = Collection::create_or_open(scratch_dir("collection_filter_terms"), config());
  auto p = puts(0, 30);
  for (int i = 0; i < 30; ++i) {
    p[static_cast<std::size_t>(i)].record.metadata =
        std::string(R"({"category":")") + (i % 3 ? "a" : "b") + R"(","n":)" +
        std::to_string(i % 5) + R"(,"sale":)" + (i % 2 ? "true" : "false") + "}";
  }
  c->apply(p, {});
  // Exact brute force: category b (i % 3 == 0) and n = 0 (i % 5 == 0) -> i in {0, 15}.
  auto f = lookalike::store::parse_where({"category=b", "n=0"});
  auto q = seeded_vector(9, kDim);
  EXPECT_EQ(c->search(q.data(), 1, 10, {}, nullptr, &f)[0].size(), 2u);
  auto sale = lookalike::store::parse_where({"sale=true"});
  EXPECT_EQ(c->list_page(0, 100, &sale).size(), 15u);
  auto page = c->list_page(0, 4, &f);
  ASSERT_EQ(page.size(), 2u);
  EXPECT_EQ(page[0].path, photo(0));
  EXPECT_EQ(page[1].path, photo(15));
  auto facet = c->facet("category", 10);
  ASSERT_EQ(facet.size(), 2u);
  EXPECT_EQ(facet[0], (std::pair<std::string, std::int64_t>{"a", 20}));
  EXPECT_EQ(facet[1], (std::pair<std::string, std::int64_t>{"b", 10}));
  EXPECT_TRUE(c->search(q.data(), 1, 5, {}, nullptr,
                        &(f = lookalike::store::parse_where({"category=none"})))[0]
                  .empty());
  for (const std::string& bad :
       {std::string("novalue"), std::string("=x"), std::string("a\"b=1")}) {
    auto what = store_error([&] { lookalike::store::parse_where({bad}); });
    EXPECT_NE(what.find("filter"), std::string::npos) << bad << ": " << what;
  }
}

// A catalog restored from a backup older than some uploads lists none of them: a writer's open
// must not delete those files (the only copy of the photos), but move them aside, where later
// opens leave them, under a name that is never taken twice.
TEST(Collection, UnlistedUploadsAreMovedAsideNeverDeleted) {
  auto dir = saved_collection("collection_orphans_kept");
  const std::string orphan = "fedcba9876543210fedcba9876543210";
  const auto uploads = dir / "uploads";
  fs::create_directories(uploads / "orphaned");
  std::ofstream(uploads / (orphan + ".png")) << "the only copy";
  std::ofstream(uploads / "orphaned" / (orphan + ".png")) << "swept earlier";
  std::ofstream(uploads / (orphan + ".jpeg.tmp")) << "half";
  { auto c = Collection::open(dir, Mode::Write); }
  EXPECT_FALSE(fs::exists(uploads / (orphan + ".png")));
  EXPECT_FALSE(fs::exists(uploads / (orphan + ".jpeg.tmp")));  // never committed, never named
  EXPECT_EQ(read_bytes(uploads / "orphaned" / (orphan + ".png")), "swept earlier");
  EXPECT_EQ(read_bytes(uploads / "orphaned" / (orphan + ".png.2")), "the only copy");
  { auto c = Collection::open(dir, Mode::Write); }  // the quarantine is not swept again
  EXPECT_EQ(file_names(uploads / "orphaned"),
            (std::set<std::string>{orphan + ".png", orphan + ".png.2"}));
}

// A catalog.db that is missing or empty beside the rest of a collection was lost: no open
// replaces it or calls the folder empty, and nothing in the folder changes.
TEST(Collection, LostCatalogIsRefusedNotReplaced) {
  auto make = [](const std::string& name, auto&& damage) {
    auto dir = scratch_dir(name);
    {
      auto c = Collection::create_or_open(dir, small_config());
      c->apply(puts(0, 5, true, kSmallDim), {});
      c->save_index();
    }
    damage(dir);
    return dir;
  };
  const std::string upload = "0123456789abcdef0123456789abcdef.jpeg";
  std::vector<std::pair<std::string, fs::path>> cases = {
      {"the catalog is missing",
       make("collection_lost_missing", [](const fs::path& d) { fs::remove(d / "catalog.db"); })},
      {"the catalog is empty (0 bytes)",
       make("collection_lost_empty",
            [](const fs::path& d) { fs::resize_file(d / "catalog.db", 0); })},
      {"the catalog is empty (0 bytes)", make("collection_lost_uploads",
                                              [&](const fs::path& d) {
                                                fs::resize_file(d / "catalog.db", 0);
                                                for (const auto& f : cache_files(d)) fs::remove(f);
                                                fs::create_directories(d / "uploads");
                                                std::ofstream(d / "uploads" / upload) << "photo";
                                              })},
      {"the catalog is empty (0 bytes)", make("collection_lost_wal",
                                              [](const fs::path& d) {
                                                fs::resize_file(d / "catalog.db", 0);
                                                for (const auto& f : cache_files(d)) fs::remove(f);
                                                std::ofstream(d / "catalog.db-wal")
                                                    << std::string(4096, 'w');
                                              })},
  };
  for (const auto& [want, dir] : cases) {
    SCOPED_TRACE(dir.filename().string());
    const auto before = file_names(dir);
    const std::vector<std::function<void()>> attempts = {
        [&] { Collection::exists(dir); },
        [&] { Collection::unfinished(dir); },
        [&] { Collection::open(dir, Mode::Read); },
        [&] { Collection::open(dir, Mode::Write); },
        [&] { Collection::create_or_open(dir, small_config()); },
    };
    for (const auto& attempt : attempts) {
      auto what = store_error(attempt);
      EXPECT_NE(what.find((dir / "catalog.db").string() + ": " + want), std::string::npos) << what;
      EXPECT_NE(what.find("it was lost or damaged. Restore catalog.db from a backup"),
                std::string::npos)
          << what;
    }
    EXPECT_EQ(file_names(dir), before);
  }
}

// Stored vectors damaged after the index cache was written (the cache still verifies) are
// corrupt vectors all the same: a writer finds them on open (the indexer re-embeds
// corrupt_ids()), info() lists them after check_integrity, and the rebuilt cache, which leaves
// them out, is kept by later opens instead of being rebuilt every time.
TEST(Collection, CorruptVectorsAreFoundWhateverTheCache) {
  auto dir = scratch_dir("collection_corrupt_cached");
  Ids ids;
  {
    auto c = Collection::create_or_open(dir, small_config());
    ids = c->apply(puts(0, 50, true, kSmallDim), {});
    c->save_index();
  }
  const auto db = dir / "catalog.db";
  set_vector_blob(db, ids[3], vector_blob(db, ids[3]).substr(0, kSmallDim * 4 - 4));
  auto blob = vector_blob(db, ids[7]);
  set_float_at(blob, 2, std::numeric_limits<float>::infinity());
  set_vector_blob(db, ids[7], blob);
  const std::unordered_set<std::int64_t> bad = {ids[3], ids[7]};
  {
    SCOPED_TRACE("a reader keeps the cache; check_integrity finds them");
    auto r = Collection::open(dir, Mode::Read);
    EXPECT_TRUE(r->index_from_cache());
    r->check_integrity();
    auto info = r->info();
    ASSERT_EQ(info.corrupt.size(), 2u);
    EXPECT_EQ(r->corrupt_ids(), bad);
    std::map<std::int64_t, std::string> reasons;
    for (const auto& v : info.corrupt) reasons[v.id] = v.reason;
    EXPECT_EQ(reasons[ids[3]], "embedding has 252 bytes, not 256 (64 floats)");
    EXPECT_EQ(reasons[ids[7]], "embedding has a non-finite value");
  }
  {
    SCOPED_TRACE("a writer finds them, and rebuilds the cache that still holds them");
    auto c = Collection::open(dir, Mode::Write);
    EXPECT_EQ(c->corrupt_ids(), bad);
    EXPECT_FALSE(c->index_from_cache());
    EXPECT_EQ(c->index_size(), 48);
  }
  for (auto mode : {Mode::Write, Mode::Read}) {
    SCOPED_TRACE("the cache without them is kept");
    auto c = Collection::open(dir, mode);
    EXPECT_TRUE(c->index_from_cache());
    EXPECT_EQ(c->index_size(), 48);
    EXPECT_EQ(c->corrupt_ids(), bad);
  }
  {
    SCOPED_TRACE("re-embedding repairs them");
    auto c = Collection::open(dir, Mode::Write);
    c->apply({make_put(photo(3), 3, kSmallDim), make_put(photo(7), 7, kSmallDim)}, {});
    EXPECT_TRUE(c->corrupt_ids().empty());
    EXPECT_EQ(c->index_size(), 50);
  }
}

// A cleanly closed collection on read-only storage is read (SQLite cannot create the -shm a
// WAL reader needs there: immutable=1); one whose -wal holds commits cannot be, and says why.
TEST(Collection, ReadOnlyStorageIsReadable) {
  const auto tmpfs = mount_tmpfs("collection_read_only", "size=4m");
  if (!tmpfs) GTEST_SKIP() << "cannot mount a tmpfs (needs root): " << std::strerror(errno);
  const fs::path& mnt = tmpfs->dir;
  auto remount = [&](unsigned long ro) {
    ASSERT_EQ(::mount("tmpfs", mnt.c_str(), "tmpfs", MS_REMOUNT | ro, "size=4m"), 0)
        << std::strerror(errno);
  };
  const auto clean = mnt / "clean", unclean = mnt / "unclean";
  Ids ids;
  for (const auto& dir : {clean, unclean}) {
    auto c = Collection::create_or_open(dir, small_config());
    ids = c->apply(puts(0, 20, true, kSmallDim), {});
  }
  std::ofstream(unclean / "catalog.db-wal") << std::string(4096, 'w');  // as a kill leaves it
  remount(MS_RDONLY);
  const auto before = file_names(clean);
  {
    ASSERT_TRUE(Collection::exists(clean));
    auto r = Collection::open(clean, Mode::Read);
    EXPECT_EQ(r->count(), 20);
    auto q = seeded_vector(5, kSmallDim);
    EXPECT_EQ(r->search(q.data(), 1, 1)[0].at(0).image.id, ids[5]);
    r->check_integrity();
    EXPECT_EQ(r->get(ids[2])->path, photo(2));
  }
  EXPECT_EQ(file_names(clean), before);
  auto what = store_error([&] { Collection::open(unclean, Mode::Read); });
  EXPECT_NE(what.find("its folder is read-only and catalog.db-wal holds commits"),
            std::string::npos)
      << what;
  what = store_error([&] { Collection::open(clean, Mode::Write); });
  EXPECT_NE(what.find("Read-only file system"), std::string::npos) << what;
  remount(0);
}

// A creation that fails for want of room takes back what it made: no folder, no lock file.
TEST(Collection, FailedCreationLeavesNoFolderBehind) {
  const auto tmpfs = mount_tmpfs("collection_full_disk2", "size=1m");
  if (!tmpfs) GTEST_SKIP() << "cannot mount a tmpfs (needs root): " << std::strerror(errno);
  const fs::path& mnt = tmpfs->dir;
  {
    std::ofstream filler(mnt / "filler", std::ios::binary);
    filler << std::string(fs::space(mnt).available, 'f');
  }
  auto what = store_error([&] { Collection::create_or_open(mnt / "a" / "c", small_config()); });
  EXPECT_NE(what.find("catalog.db"), std::string::npos) << what;
  EXPECT_EQ(file_names(mnt), std::set<std::string>{"filler"});
}
