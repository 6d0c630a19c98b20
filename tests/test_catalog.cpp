#include <gtest/gtest.h>
#include <sqlite3.h>

#include <cstring>
#include <fstream>

#include "store/catalog.h"
#include "tests/store_test_util.h"

namespace {

using lookalike::store::Catalog;
using lookalike::store::CatalogConfig;
using lookalike::store::ImageRecord;
using lookalike::store::Put;
using lookalike::store::StoreError;
using lookalike::testing::scratch_dir;
using lookalike::testing::seeded_vector;

constexpr int kDim = 1280;

CatalogConfig test_config() { return {"test-model@0123456789abcdef", "test-model", kDim}; }

Put make_put(const std::string& path, std::uint64_t seed, const std::string& metadata = "{}") {
  Put p;
  p.record.path = path;
  p.record.content_hash = "hash-of-" + std::to_string(seed);
  p.record.bytes = 1000 + static_cast<std::int64_t>(seed);
  p.record.width = 640;
  p.record.height = 480;
  p.record.mtime_ns = 1'700'000'000'000'000'000 + static_cast<std::int64_t>(seed);
  p.record.metadata = metadata;
  p.embedding = seeded_vector(seed, kDim);
  return p;
}

std::unique_ptr<Catalog> fresh_catalog(const std::string& name) {
  auto c = Catalog::open(scratch_dir(name) / "catalog.db", true);
  c->set_config(test_config());
  return c;
}

// Runs SQL on a catalog file through a separate, plain SQLite connection.
void raw_sql(const std::filesystem::path& db, const std::string& sql) {
  sqlite3* h = nullptr;
  ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
  char* err = nullptr;
  int rc = sqlite3_exec(h, sql.c_str(), nullptr, nullptr, &err);
  EXPECT_EQ(rc, SQLITE_OK) << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(h);
}

std::string raw_text(const std::filesystem::path& db, const std::string& sql) {
  sqlite3* h = nullptr;
  sqlite3_open(db.c_str(), &h);
  sqlite3_stmt* st = nullptr;
  std::string out;
  if (sqlite3_prepare_v2(h, sql.c_str(), -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    out.assign(static_cast<const char*>(sqlite3_column_blob(st, 0)),
               static_cast<std::size_t>(sqlite3_column_bytes(st, 0)));
  }
  sqlite3_finalize(st);
  sqlite3_close(h);
  return out;
}

std::string open_error(const std::filesystem::path& path, bool create) {
  try {
    Catalog::open(path, create);
  } catch (const StoreError& e) {
    return e.what();
  }
  return "";
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

TEST(Catalog, CreateReadUpdateDelete) {
  auto c = fresh_catalog("catalog_crud");
  EXPECT_EQ(c->count(), 0);
  auto ids = c->write_batch(
      {make_put("/a.jpg", 1, R"({"label":"shirt"})"), make_put("/b.jpg", 2), make_put("/c.jpg", 3)},
      {});
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(c->count(), 3);

  auto a = c->get(ids[0]);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->path, "/a.jpg");
  EXPECT_EQ(a->content_hash, "hash-of-1");
  EXPECT_EQ(a->bytes, 1001);
  EXPECT_EQ(a->width, 640);
  EXPECT_EQ(a->height, 480);
  EXPECT_EQ(a->mtime_ns, 1'700'000'000'000'000'001);
  EXPECT_EQ(a->metadata, R"({"label":"shirt"})");
  EXPECT_GT(a->added_at_ms, 1'600'000'000'000);
  EXPECT_EQ(c->embedding(ids[0]), seeded_vector(1, kDim));

  EXPECT_EQ(c->find_path("/b.jpg")->id, ids[1]);
  EXPECT_FALSE(c->find_path("/nope.jpg"));
  ASSERT_EQ(c->find_hash("hash-of-3").size(), 1u);
  EXPECT_EQ(c->find_hash("hash-of-3")[0].id, ids[2]);
  EXPECT_EQ(c->list().size(), 3u);
  auto many = c->get_many({ids[2], 424242, ids[0]});
  ASSERT_EQ(many.size(), 2u);
  EXPECT_EQ(many[0].id, ids[0]);
  EXPECT_EQ(many[1].id, ids[2]);

  c->write_batch({}, {ids[1], 999999});
  EXPECT_EQ(c->count(), 2);
  EXPECT_FALSE(c->get(ids[1]));
  EXPECT_FALSE(c->embedding(ids[1]));  // cascaded
  EXPECT_EQ(raw_text(c->path(), "SELECT count(*) FROM embeddings"), "2");
}

TEST(Catalog, UpsertByPathKeepsIdAndAddedTime) {
  auto c = fresh_catalog("catalog_upsert");
  auto first = c->write_batch({make_put("/a.jpg", 1)}, {});
  auto before = *c->get(first[0]);
  auto again = c->write_batch({make_put("/a.jpg", 7, R"({"v":2})")}, {});
  EXPECT_EQ(again, first);
  EXPECT_EQ(c->count(), 1);
  auto after = *c->get(first[0]);
  EXPECT_EQ(after.content_hash, "hash-of-7");
  EXPECT_EQ(after.metadata, R"({"v":2})");
  EXPECT_EQ(after.added_at_ms, before.added_at_ms);
  EXPECT_GE(after.updated_at_ms, before.updated_at_ms);
  EXPECT_EQ(c->embedding(first[0]), seeded_vector(7, kDim));
  // The same path twice in one batch is one image holding the last put.
  auto twice = c->write_batch({make_put("/b.jpg", 8), make_put("/b.jpg", 9)}, {});
  EXPECT_EQ(twice[0], twice[1]);
  EXPECT_EQ(c->count(), 2);
  EXPECT_EQ(c->embedding(twice[0]), seeded_vector(9, kDim));
}

TEST(Catalog, IdsAreNeverReused) {
  auto c = fresh_catalog("catalog_ids");
  auto ids = c->write_batch({make_put("/a.jpg", 1), make_put("/b.jpg", 2)}, {});
  c->write_batch({}, {ids[1]});  // the highest id goes
  auto next = c->write_batch({make_put("/c.jpg", 3)}, {});
  EXPECT_GT(next[0], ids[1]);
  c->write_batch({}, {ids[0], next[0]});
  EXPECT_EQ(c->count(), 0);
  auto last = c->write_batch({make_put("/a.jpg", 1)}, {});  // even the same path
  EXPECT_GT(last[0], next[0]);
}

TEST(Catalog, GenerationBumpsOncePerCommittedBatch) {
  auto c = fresh_catalog("catalog_generation");
  EXPECT_EQ(c->generation(), 0);
  c->write_batch({make_put("/a.jpg", 1), make_put("/b.jpg", 2)}, {});
  EXPECT_EQ(c->generation(), 1);
  c->write_batch({}, {});  // nothing to do
  EXPECT_EQ(c->generation(), 1);
  c->write_batch({}, {123456});
  EXPECT_EQ(c->generation(), 2);
  EXPECT_THROW(c->write_batch({make_put("/c.jpg", 3, "[]")}, {}), StoreError);
  EXPECT_EQ(c->generation(), 2);
}

TEST(Catalog, ConfigIsSetOnce) {
  auto c = Catalog::open(scratch_dir("catalog_config") / "catalog.db", true);
  EXPECT_FALSE(c->config());
  EXPECT_THROW(c->write_batch({make_put("/a.jpg", 1)}, {}), StoreError);  // no config yet
  auto bad = test_config();
  bad.metric = "dot";
  EXPECT_THROW(c->set_config(bad), StoreError);
  bad = test_config();
  bad.dim = 0;
  EXPECT_THROW(c->set_config(bad), StoreError);
  EXPECT_FALSE(c->config());

  c->set_config(test_config());
  c->set_config(test_config());  // the same again is fine
  auto other = test_config();
  other.dim = 512;
  try {
    c->set_config(other);
    FAIL() << "config changed";
  } catch (const StoreError& e) {
    EXPECT_NE(std::string(e.what()).find("already set"), std::string::npos) << e.what();
  }
  EXPECT_EQ(c->config()->dim, kDim);
  EXPECT_EQ(c->config()->model_id, "test-model@0123456789abcdef");
  EXPECT_EQ(c->config()->factory, "Flat");
  EXPECT_EQ(c->config()->metric, "cosine");
}

// A bad put anywhere in a batch rejects the whole batch, naming the put and the field.
void expect_rejected(Catalog& c, Put bad, const std::string& needle) {
  auto count = c.count();
  auto generation = c.generation();
  try {
    c.write_batch({make_put("/good.jpg", 11), bad}, {c.list().front().id});
    FAIL() << "accepted " << needle;
  } catch (const StoreError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("put[1]"), std::string::npos) << what;
    EXPECT_NE(what.find(bad.record.path), std::string::npos) << what;
    EXPECT_NE(what.find(needle), std::string::npos) << what;
  }
  EXPECT_EQ(c.count(), count);
  EXPECT_EQ(c.generation(), generation);
  EXPECT_FALSE(c.find_path("/good.jpg"));
}

TEST(Catalog, BadPutsAreRejectedWithoutPartialWrites) {
  auto c = fresh_catalog("catalog_reject");
  c->write_batch({make_put("/keep.jpg", 1)}, {});
  auto short_vec = make_put("/short.jpg", 2);
  short_vec.embedding.resize(kDim - 1);
  expect_rejected(*c, short_vec, "embedding has 1279 floats");
  auto nan_vec = make_put("/nan.jpg", 3);
  nan_vec.embedding[5] = std::nanf("");
  expect_rejected(*c, nan_vec, "non-finite");
  expect_rejected(*c, make_put("/array.jpg", 4, "[1, 2]"), "metadata must be a JSON object");
  expect_rejected(*c, make_put("/text.jpg", 5, "{not json"), "metadata is not valid JSON");
  EXPECT_EQ(c->embedding(c->find_path("/keep.jpg")->id), seeded_vector(1, kDim));
}

TEST(Catalog, VectorsAreLittleEndianFloat32Blobs) {
  auto c = fresh_catalog("catalog_blob");
  auto ids = c->write_batch({make_put("/a.jpg", 5)}, {});
  auto blob = raw_text(c->path(),
                       "SELECT vector FROM embeddings WHERE image_id = " + std::to_string(ids[0]));
  ASSERT_EQ(blob.size(), kDim * 4u);
  auto v = seeded_vector(5, kDim);
  for (int i : {0, 1, 639, 1279}) {
    std::uint32_t bits = 0;
    for (int b = 0; b < 4; ++b) {
      bits |= std::uint32_t{static_cast<unsigned char>(blob[i * 4 + b])} << (8 * b);
    }
    float x;
    std::memcpy(&x, &bits, 4);
    EXPECT_EQ(x, v[i]) << i;
  }
  EXPECT_EQ(raw_text(c->path(), "PRAGMA journal_mode"), "wal");
}

TEST(Catalog, ForEachEmbeddingVisitsAllByIdAndReportsGeneration) {
  auto c = fresh_catalog("catalog_each");
  auto ids =
      c->write_batch({make_put("/a.jpg", 1), make_put("/b.jpg", 2), make_put("/c.jpg", 3)}, {});
  c->write_batch({}, {ids[1]});
  std::vector<std::int64_t> seen;
  auto gen = c->for_each_embedding([&](std::int64_t id, const float* v) {
    seen.push_back(id);
    auto want = seeded_vector(id == ids[0] ? 1 : 3, kDim);
    EXPECT_EQ(std::vector<float>(v, v + kDim), want);
  });
  EXPECT_EQ(seen, (std::vector<std::int64_t>{ids[0], ids[2]}));
  EXPECT_EQ(gen, 2);
}

TEST(Catalog, ReopenPersistsEverything) {
  auto dir = scratch_dir("catalog_reopen");
  std::vector<std::int64_t> ids;
  {
    auto c = Catalog::open(dir / "catalog.db", true);
    c->set_config(test_config());
    ids = c->write_batch({make_put("/a.jpg", 1, R"({"k":"v"})"), make_put("/b.jpg", 2)}, {});
  }
  auto c = Catalog::open(dir / "catalog.db", false);
  EXPECT_EQ(c->count(), 2);
  EXPECT_EQ(c->generation(), 1);
  EXPECT_EQ(c->config()->model_name, "test-model");
  EXPECT_EQ(c->get(ids[0])->metadata, R"({"k":"v"})");
  EXPECT_EQ(c->embedding(ids[1]), seeded_vector(2, kDim));
  // create = true on an existing catalog opens it as is.
  auto again = Catalog::open(dir / "catalog.db", true);
  EXPECT_EQ(again->count(), 2);
}

TEST(Catalog, MissingFileIsRefusedWithoutCreate) {
  auto path = scratch_dir("catalog_missing") / "catalog.db";
  EXPECT_NE(open_error(path, false).find("no such catalog"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(Catalog, GarbageFileIsRefusedAndLeftAlone) {
  auto path = scratch_dir("catalog_garbage") / "catalog.db";
  std::string garbage(8192, '\0');
  std::uint64_t state = 7;
  for (auto& c : garbage) c = static_cast<char>(lookalike::testing::splitmix64(state));
  std::ofstream(path, std::ios::binary) << garbage;
  for (bool create : {false, true}) {
    auto what = open_error(path, create);
    EXPECT_NE(what.find(path.string() + ": not a lookalike catalog ("), std::string::npos) << what;
  }
  EXPECT_EQ(read_file(path), garbage);
}

TEST(Catalog, ForeignSqliteDatabaseIsRefusedAndLeftAlone) {
  auto path = scratch_dir("catalog_foreign") / "other.db";
  raw_sql(path,
          "CREATE TABLE photos(id INTEGER PRIMARY KEY, name TEXT);"
          "INSERT INTO photos(name) VALUES('x');");
  for (bool create : {false, true}) {
    auto what = open_error(path, create);
    EXPECT_NE(what.find(path.string() + ": not a lookalike catalog ("), std::string::npos) << what;
  }
  EXPECT_EQ(raw_text(path, "SELECT group_concat(name) FROM sqlite_master"), "photos");
  EXPECT_EQ(raw_text(path, "PRAGMA journal_mode"), "delete");  // not switched to WAL either
  // A meta table of someone else's, without our schema_version.
  raw_sql(path,
          "CREATE TABLE meta(key TEXT, value TEXT); CREATE TABLE images(id);"
          "CREATE TABLE embeddings(id);");
  EXPECT_NE(open_error(path, false).find("no schema_version"), std::string::npos);
}

TEST(Catalog, NewerSchemaIsRefusedWithBothVersions) {
  auto path = scratch_dir("catalog_newer") / "catalog.db";
  {
    auto c = Catalog::open(path, true);
    c->set_config(test_config());
    c->write_batch({make_put("/a.jpg", 1)}, {});
  }
  raw_sql(path, "UPDATE meta SET value = '99' WHERE key = 'schema_version'");
  auto what = open_error(path, false);
  EXPECT_NE(what.find(path.string()), std::string::npos) << what;
  EXPECT_NE(what.find("schema version 99 is newer"), std::string::npos) << what;
  EXPECT_NE(what.find("(1)"), std::string::npos) << what;
  EXPECT_EQ(raw_text(path, "SELECT value FROM meta WHERE key = 'schema_version'"), "99");
}

}  // namespace
