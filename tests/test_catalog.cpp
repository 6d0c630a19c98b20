#include <gtest/gtest.h>
#include <sqlite3.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <tuple>

#include "store/catalog.h"
#include "tests/store_test_util.h"

namespace {

using lookalike::store::Catalog;
using lookalike::store::CatalogConfig;
using lookalike::store::FilterOp;
using lookalike::store::ImageRecord;
using lookalike::store::MetadataFilter;
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

// reembed's copy: new paths take the ids given; later ones continue after them; a taken id
// fails the batch and writes nothing.
TEST(Catalog, KeepIdPutsTakeTheirIds) {
  auto c = fresh_catalog("catalog_keep_id");
  auto a = make_put("/a.jpg", 1);
  a.record.id = 7;
  a.keep_id = true;
  auto b = make_put("/b.jpg", 2);
  b.record.id = 3;
  b.keep_id = true;
  EXPECT_EQ(c->write_batch({a, b}, {}), (std::vector<std::int64_t>{7, 3}));
  EXPECT_EQ(c->get(3)->path, "/b.jpg");
  EXPECT_GT(c->write_batch({make_put("/c.jpg", 3)}, {})[0], 7);
  auto taken = make_put("/d.jpg", 4);
  taken.record.id = 7;
  taken.keep_id = true;
  const auto generation = c->generation();
  EXPECT_THROW(c->write_batch({make_put("/e.jpg", 5), taken}, {}), StoreError);
  EXPECT_EQ(c->count(), 3);
  EXPECT_EQ(c->generation(), generation);
  auto ignored = make_put("/f.jpg", 6);  // an id without keep_id is not used
  ignored.record.id = 7;
  EXPECT_NE(c->write_batch({ignored}, {})[0], 7);
}

// reembed's copy keeps the source's promise: an id deleted there is not given again here.
TEST(Catalog, ReservedIdsAreNotAssigned) {
  auto c = fresh_catalog("catalog_reserve");
  EXPECT_EQ(c->last_id_assigned(), 0);
  c->reserve_ids_through(40);  // before any id was assigned
  EXPECT_EQ(c->last_id_assigned(), 40);
  EXPECT_EQ(c->write_batch({make_put("/a.jpg", 1)}, {})[0], 41);
  c->reserve_ids_through(10);  // never lowers the mark
  EXPECT_EQ(c->write_batch({make_put("/b.jpg", 2)}, {})[0], 42);
  c->reserve_ids_through(100);
  EXPECT_EQ(c->write_batch({make_put("/c.jpg", 3)}, {})[0], 101);
  EXPECT_EQ(c->last_id_assigned(), 101);
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
  EXPECT_NE(what.find("(" + std::to_string(lookalike::store::kCatalogSchemaVersion) + ")"),
            std::string::npos)
      << what;
  EXPECT_EQ(raw_text(path, "SELECT value FROM meta WHERE key = 'schema_version'"), "99");
}

// Replaces the stored vector blob of `image_id` through a plain SQLite connection.
void raw_set_blob(const std::filesystem::path& db, std::int64_t image_id, const std::string& blob) {
  sqlite3* h = nullptr;
  ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(h, "UPDATE embeddings SET vector = ? WHERE image_id = ?", -1, &st,
                               nullptr),
            SQLITE_OK);
  sqlite3_bind_blob(st, 1, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 2, image_id);
  EXPECT_EQ(sqlite3_step(st), SQLITE_DONE);
  EXPECT_EQ(sqlite3_changes(h), 1);
  sqlite3_finalize(st);
  sqlite3_close(h);
}

std::string vector_blob(const std::filesystem::path& db, std::int64_t image_id) {
  return raw_text(db, "SELECT vector FROM embeddings WHERE image_id = " + std::to_string(image_id));
}

float float_at(const std::string& blob, int i) {
  float x;
  std::memcpy(&x, blob.data() + 4 * i, 4);  // little-endian host (x86-64, aarch64)
  return x;
}

void set_float_at(std::string& blob, int i, float x) { std::memcpy(blob.data() + 4 * i, &x, 4); }

bool is_hex_id(const std::string& s) {
  return s.size() == 32 && s.find_first_not_of("0123456789abcdef") == std::string::npos &&
         s != std::string(32, '0');
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const StoreError& e) {
    return e.what();
  }
  return "";
}

TEST(Catalog, CreateAtomicWritesACompleteCatalogAndNothingElse) {
  auto dir = scratch_dir("catalog_atomic");
  auto path = dir / "catalog.db";
  // A leftover of a killed creation is overwritten, not appended to.
  std::ofstream(dir / "catalog.db.tmp", std::ios::binary) << std::string(5000, 'x');
  Catalog::create_atomic(path, test_config());
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    names.push_back(e.path().filename().string());
  }
  EXPECT_EQ(names, std::vector<std::string>{"catalog.db"});
  // Already in WAL mode (file format bytes 18-19 of the header are 2): switching a live
  // catalog.db later rewrites its header through a rollback journal, and a kill in that moment
  // leaves a hot journal that read-only connections cannot roll back ("attempt to write a
  // readonly database") until a writer opens it.
  auto header = read_file(path).substr(0, 20);
  EXPECT_EQ(header[18], 2) << "catalog created in rollback-journal mode";
  EXPECT_EQ(header[19], 2) << "catalog created in rollback-journal mode";
  // Complete on its own: a read-only connection (which never writes) sees schema and config.
  auto ro = Catalog::open_read_only(path);
  ASSERT_TRUE(ro->config());
  EXPECT_EQ(ro->config()->model_id, test_config().model_id);
  EXPECT_EQ(ro->config()->dim, kDim);
  EXPECT_EQ(ro->generation(), 0);
  EXPECT_EQ(ro->count(), 0);
  EXPECT_TRUE(is_hex_id(ro->collection_id())) << ro->collection_id();
  EXPECT_EQ(raw_text(path, "SELECT value FROM meta WHERE key = 'schema_version'"),
            std::to_string(lookalike::store::kCatalogSchemaVersion));
  ro.reset();
  auto c = Catalog::open(path, false);
  auto ids = c->write_batch({make_put("/a.jpg", 1)}, {});
  EXPECT_EQ(c->embedding(ids[0]), seeded_vector(1, kDim));
  EXPECT_EQ(raw_text(path, "PRAGMA journal_mode"), "wal");  // the writer switched it to WAL
  // An invalid config creates nothing, not even the .tmp file.
  auto other = scratch_dir("catalog_atomic_bad") / "catalog.db";
  auto bad = test_config();
  bad.metric = "dot";
  EXPECT_THROW(Catalog::create_atomic(other, bad), StoreError);
  EXPECT_TRUE(std::filesystem::is_empty(other.parent_path()));
  // A folder that does not exist: StoreError naming the path, no stray files.
  auto missing = scratch_dir("catalog_atomic_missing") / "no" / "catalog.db";
  auto what = error_of([&] { Catalog::create_atomic(missing, test_config()); });
  EXPECT_NE(what.find(missing.string()), std::string::npos) << what;
}

TEST(Catalog, CollectionIdIsRandomAndStable) {
  auto a = fresh_catalog("catalog_id_a");
  auto b = fresh_catalog("catalog_id_b");
  auto id = a->collection_id();
  EXPECT_TRUE(is_hex_id(id)) << id;
  EXPECT_TRUE(is_hex_id(b->collection_id())) << b->collection_id();
  EXPECT_NE(id, b->collection_id());
  a->write_batch({make_put("/a.jpg", 1)}, {});
  auto path = a->path();
  a.reset();
  EXPECT_EQ(Catalog::open(path, false)->collection_id(), id);
  EXPECT_EQ(Catalog::open_read_only(path)->collection_id(), id);
}

TEST(Catalog, SchemaV1IsMigratedByAWriterAndReadAsIsByAReader) {
  auto path = scratch_dir("catalog_v1") / "catalog.db";
  std::vector<std::int64_t> ids;
  {
    auto c = Catalog::open(path, true);
    c->set_config(test_config());
    ids = c->write_batch({make_put("/a.jpg", 1), make_put("/b.jpg", 2)}, {});
  }
  // What a version-1 catalog looks like: no collection_id, schema_version 1.
  raw_sql(path,
          "DELETE FROM meta WHERE key = 'collection_id';"
          "UPDATE meta SET value = '1' WHERE key = 'schema_version';");
  {
    auto ro = Catalog::open_read_only(path);
    EXPECT_EQ(ro->count(), 2);
    EXPECT_EQ(ro->generation(), 1);
    EXPECT_EQ(ro->get(ids[0])->path, "/a.jpg");
    EXPECT_EQ(ro->embedding(ids[1]), seeded_vector(2, kDim));
    // No id yet: zeros, which no index file carries.
    EXPECT_EQ(ro->collection_id(), std::string(32, '0'));
  }
  EXPECT_EQ(raw_text(path, "SELECT value FROM meta WHERE key = 'schema_version'"), "1");
  EXPECT_EQ(raw_text(path, "SELECT count(*) FROM meta WHERE key = 'collection_id'"), "0");
  std::string id;
  {
    auto c = Catalog::open(path, false);
    id = c->collection_id();
    EXPECT_TRUE(is_hex_id(id)) << id;
    EXPECT_EQ(c->count(), 2);
    EXPECT_EQ(c->generation(), 1);  // a migration is not a data change
    EXPECT_EQ(c->embedding(ids[0]), seeded_vector(1, kDim));
  }
  EXPECT_EQ(raw_text(path, "SELECT value FROM meta WHERE key = 'schema_version'"),
            std::to_string(lookalike::store::kCatalogSchemaVersion));
  EXPECT_EQ(raw_text(path, "SELECT value FROM meta WHERE key = 'collection_id'"), id);
  EXPECT_EQ(Catalog::open(path, false)->collection_id(), id);  // migrated once, then kept
  EXPECT_EQ(Catalog::open_read_only(path)->collection_id(), id);
}

TEST(Catalog, ReadOnlyConnectionRefusesEveryWrite) {
  auto path = scratch_dir("catalog_ro") / "catalog.db";
  std::vector<std::int64_t> ids;
  {
    auto c = Catalog::open(path, true);
    c->set_config(test_config());
    ids = c->write_batch({make_put("/a.jpg", 1, R"({"k":1})")}, {});
  }
  auto ro = Catalog::open_read_only(path);
  EXPECT_THROW(ro->write_batch({make_put("/b.jpg", 2)}, {}), StoreError);
  EXPECT_THROW(ro->write_batch({}, {ids[0]}), StoreError);
  EXPECT_THROW(ro->set_metadata(ids[0], R"({"k":2})"), StoreError);
  auto other = test_config();
  other.dim = 8;
  EXPECT_THROW(ro->set_config(other), StoreError);
  EXPECT_EQ(ro->count(), 1);
  EXPECT_EQ(ro->generation(), 1);
  EXPECT_EQ(ro->get(ids[0])->metadata, R"({"k":1})");
  EXPECT_EQ(ro->config()->dim, kDim);
  // A read-only connection to a missing or empty file is refused.
  auto dir = scratch_dir("catalog_ro_missing");
  EXPECT_NE(error_of([&] { Catalog::open_read_only(dir / "catalog.db"); }).find("no such catalog"),
            std::string::npos);
  std::ofstream(dir / "empty.db");
  EXPECT_NE(
      error_of([&] { Catalog::open_read_only(dir / "empty.db"); }).find("not a lookalike catalog"),
      std::string::npos);
  EXPECT_EQ(std::filesystem::file_size(dir / "empty.db"), 0u);
}

TEST(Catalog, IdsUnderMatchesTheFolderAndNothingBesideIt) {
  auto c = fresh_catalog("catalog_under");
  auto ids = c->write_batch(
      {make_put("/p/DIR/a.jpg", 1), make_put("/p/DIR/sub/b.jpg", 2), make_put("/p/DIR2/c.jpg", 3),
       make_put("/p/DIRx.jpg", 4), make_put("/p/DIR.jpg", 5), make_put("/p/DIR-x/d.jpg", 6),
       make_put("/p/DI_/e.jpg", 7), make_put("/p/DI%/f.jpg", 8), make_put("/p/dir/g.jpg", 9)},
      {});
  using Ids = std::vector<std::int64_t>;
  EXPECT_EQ(c->ids_under("/p/DIR"), (Ids{ids[0], ids[1]}));
  EXPECT_EQ(c->ids_under("/p/DIR/sub"), (Ids{ids[1]}));
  EXPECT_EQ(c->ids_under("/p/DIR/a.jpg"), (Ids{ids[0]}));  // the image itself
  EXPECT_EQ(c->ids_under("/p/DIRx.jpg"), (Ids{ids[3]}));
  EXPECT_EQ(c->ids_under("/p/DI"), Ids{});           // a prefix of a name is not a folder
  EXPECT_EQ(c->ids_under("/p/DI_"), (Ids{ids[6]}));  // no LIKE wildcards
  EXPECT_EQ(c->ids_under("/p/DI%"), (Ids{ids[7]}));
  EXPECT_EQ(c->ids_under("/p/dir"), (Ids{ids[8]}));  // case-sensitive
  EXPECT_EQ(c->ids_under("/p"), ids);
  EXPECT_EQ(c->ids_under("/q"), Ids{});
}

// The root folder holds every image: its prefix is "/", not "//" (`lookalike remove /` found
// nothing).
TEST(Catalog, IdsUnderTheRootFolderIsEveryImage) {
  auto c = fresh_catalog("catalog_under_root");
  auto ids = c->write_batch({make_put("/a.jpg", 1), make_put("/p/DIR/b.jpg", 2),
                             make_put("/zz/c.jpg", 3), make_put("/~/d.jpg", 4)},
                            {});
  EXPECT_EQ(c->ids_under("/"), ids);
  c->write_batch({}, c->ids_under("/"));
  EXPECT_EQ(c->count(), 0);
}

// A write-mode open of a damaged catalog of an older schema refuses it before migrating it:
// "nothing was written" holds, and its schema_version is still the old one.
TEST(Catalog, DamagedOlderCatalogIsRefusedBeforeItIsMigrated) {
  const auto path = scratch_dir("catalog_damaged_v3") / "catalog.db";
  {
    auto c = Catalog::open(path, true);
    c->set_config(test_config());
    std::vector<Put> puts;
    for (int i = 0; i < 300; ++i) puts.push_back(make_put("/p/" + std::to_string(i) + ".jpg", i));
    c->write_batch(puts, {});
  }
  // What a version-3 catalog looks like: no phash columns, schema_version 3; everything in
  // catalog.db itself (the WAL checkpointed), so that the page damaged below is the one read.
  raw_sql(path,
          "ALTER TABLE images DROP COLUMN phash; ALTER TABLE images DROP COLUMN phash_95;"
          "ALTER TABLE images DROP COLUMN phash_90;"
          "UPDATE meta SET value = '3' WHERE key = 'schema_version';"
          "PRAGMA wal_checkpoint(TRUNCATE);");
  ASSERT_EQ(raw_text(path, "SELECT value FROM meta WHERE key = 'schema_version'"), "3");
  {
    auto ro = Catalog::open_read_only(path);
    ASSERT_EQ(ro->count(), 300);
    ASSERT_EQ(ro->quick_check(), "ok");
  }
  // Damage the root page of the content-hash index: the meta table and the schema, which the
  // identity check reads, stay intact.
  const auto page_size = std::stoll(raw_text(path, "PRAGMA page_size"));
  const auto root = std::stoll(raw_text(path,
                                        "SELECT rootpage FROM sqlite_master WHERE name = "
                                        "'images_content_hash'"));
  ASSERT_GT(root, 1);
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp((root - 1) * page_size);
    const std::string junk(static_cast<std::size_t>(page_size), '\xa5');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  const auto before = read_file(path);
  auto what = open_error(path, false);
  EXPECT_NE(what.find("catalog is damaged"), std::string::npos) << what;
  EXPECT_NE(what.find("nothing was written"), std::string::npos) << what;
  EXPECT_EQ(raw_text(path, "SELECT value FROM meta WHERE key = 'schema_version'"), "3");
  EXPECT_EQ(raw_text(path,
                     "SELECT count(*) FROM pragma_table_info('images') WHERE name LIKE "
                     "'phash%'"),
            "0");
  EXPECT_TRUE(read_file(path) == before) << "catalog.db was written to";
  const auto wal = std::filesystem::path(path.string() + "-wal");
  EXPECT_TRUE(!std::filesystem::exists(wal) || std::filesystem::file_size(wal) == 0)
      << "the refused open wrote to the WAL";
}

// Schema 5: the preprocessing of the vectors' model card (meta.preprocess and
// meta.preprocess_fingerprint). Written with the config at creation, kept by set_index_config,
// recorded once by set_preprocess (no generation bump), never replaced by another one; a
// version-4 catalog migrates without them (only a model knows its preprocessing) and is read
// as having none.
TEST(Catalog, PreprocessingIsRecordedOnceAndKept) {
  const std::string canonical = "preprocess/1;resize_policy=resize_shorter_center_crop;mean=1,2,3";
  const std::string fp = "0123456789abcdef";
  auto cfg = test_config();
  cfg.preprocess = canonical;
  cfg.preprocess_fingerprint = fp;
  const auto created = scratch_dir("catalog_preprocess_created") / "catalog.db";
  Catalog::create_atomic(created, cfg);
  {
    auto c = Catalog::open(created, false);
    EXPECT_EQ(c->config()->preprocess, canonical);
    EXPECT_EQ(c->config()->preprocess_fingerprint, fp);
    c->set_index_config("IVF16,Flat", "{\"nprobe\":4}");
    EXPECT_EQ(c->config()->preprocess_fingerprint, fp) << "set_index_config dropped it";
    EXPECT_FALSE(c->set_preprocess(canonical, fp));
    const auto generation = c->generation();
    auto what = error_of([&] { c->set_preprocess("preprocess/1;mean=4,5,6", "fedcba9876543210"); });
    EXPECT_NE(what.find(created.string()), std::string::npos) << what;
    EXPECT_NE(what.find(fp), std::string::npos) << what;
    EXPECT_NE(what.find("fedcba9876543210"), std::string::npos) << what;
    EXPECT_EQ(c->config()->preprocess_fingerprint, fp);
    EXPECT_EQ(c->generation(), generation);
  }
  EXPECT_EQ(Catalog::open_read_only(created)->config()->preprocess, canonical);

  // A catalog as schema 4 left it: no keys.
  const auto path = scratch_dir("catalog_preprocess_v4") / "catalog.db";
  {
    auto c = Catalog::open(path, true);
    c->set_config(test_config());
    c->write_batch({make_put("/a.jpg", 1)}, {});
  }
  raw_sql(path,
          "DELETE FROM meta WHERE key IN ('preprocess', 'preprocess_fingerprint');"
          "UPDATE meta SET value = '4' WHERE key = 'schema_version';");
  {
    auto ro = Catalog::open_read_only(path);
    EXPECT_EQ(ro->config()->preprocess, "");
    EXPECT_EQ(ro->config()->preprocess_fingerprint, "");
    EXPECT_THROW(ro->set_preprocess(canonical, fp), StoreError);
  }
  EXPECT_EQ(raw_text(path, "SELECT value FROM meta WHERE key = 'schema_version'"), "4");
  auto c = Catalog::open(path, false);
  EXPECT_EQ(raw_text(path, "SELECT value FROM meta WHERE key = 'schema_version'"),
            std::to_string(lookalike::store::kCatalogSchemaVersion));
  EXPECT_EQ(lookalike::store::kCatalogSchemaVersion, 5);
  EXPECT_EQ(c->config()->preprocess_fingerprint, "") << "the migration made one up";
  for (const auto& [text, digest] : std::vector<std::pair<std::string, std::string>>{
           {"", fp}, {canonical, ""}, {canonical, "0123"}, {canonical, "0123456789ABCDEF"}}) {
    auto what = error_of([&] { c->set_preprocess(text, digest); });
    EXPECT_NE(what.find("preprocess"), std::string::npos) << what;
  }
  EXPECT_EQ(c->config()->preprocess_fingerprint, "");
  const auto generation = c->generation();
  EXPECT_TRUE(c->set_preprocess(canonical, fp));
  EXPECT_EQ(c->generation(), generation);
  EXPECT_EQ(c->config()->preprocess, canonical);
  EXPECT_EQ(raw_text(path, "SELECT value FROM meta WHERE key = 'preprocess_fingerprint'"), fp);
  EXPECT_EQ(c->embedding(c->find_path("/a.jpg")->id), seeded_vector(1, kDim));
}

TEST(Catalog, ListPagePaginatesByIdAcrossGaps) {
  auto c = fresh_catalog("catalog_pages");
  std::vector<Put> puts;
  for (int i = 0; i < 25; ++i) puts.push_back(make_put("/p/" + std::to_string(i) + ".jpg", i));
  auto ids = c->write_batch(puts, {});
  c->write_batch({}, {ids[0], ids[10], ids[11], ids[24]});  // gaps, including both ends
  auto all = c->list();
  ASSERT_EQ(all.size(), 21u);
  std::vector<std::int64_t> paged;
  std::vector<std::size_t> sizes;
  std::int64_t after = 0;
  for (int guard = 0; guard < 10; ++guard) {
    auto page = c->list_page(after, 8);
    sizes.push_back(page.size());
    if (page.empty()) break;
    for (const auto& r : page) {
      EXPECT_GT(r.id, after);
      paged.push_back(r.id);
    }
    after = page.back().id;
  }
  EXPECT_EQ(sizes, (std::vector<std::size_t>{8, 8, 5, 0}));
  std::vector<std::int64_t> listed;
  for (const auto& r : all) listed.push_back(r.id);
  EXPECT_EQ(paged, listed);
  auto page = c->list_page(ids[9], 2);  // after a removed id's neighbour: skips the gap
  ASSERT_EQ(page.size(), 2u);
  EXPECT_EQ(page[0].id, ids[12]);
  EXPECT_EQ(page[0].path, "/p/12.jpg");
  EXPECT_EQ(page[1].id, ids[13]);
  EXPECT_TRUE(c->list_page(ids[24], 10).empty());
}

TEST(Catalog, SetMetadataReplacesItAndBumpsTheGeneration) {
  auto c = fresh_catalog("catalog_metadata");
  auto ids = c->write_batch({make_put("/a.jpg", 1, R"({"old":true})")}, {});
  auto before = *c->get(ids[0]);
  EXPECT_EQ(c->generation(), 1);
  EXPECT_TRUE(c->set_metadata(ids[0], R"({"label":"shoe"})"));
  EXPECT_EQ(c->generation(), 2);
  auto after = *c->get(ids[0]);
  EXPECT_EQ(after.metadata, R"({"label":"shoe"})");
  EXPECT_EQ(after.content_hash, before.content_hash);
  EXPECT_EQ(after.added_at_ms, before.added_at_ms);
  EXPECT_GE(after.updated_at_ms, before.updated_at_ms);
  EXPECT_EQ(c->embedding(ids[0]), seeded_vector(1, kDim));
  EXPECT_FALSE(c->set_metadata(ids[0] + 100, R"({"x":1})"));  // no such image
  EXPECT_EQ(c->generation(), 2);
  for (const char* bad : {"[1]", "{oops", "3", "\"text\""}) {
    EXPECT_THROW(c->set_metadata(ids[0], bad), StoreError) << bad;
  }
  EXPECT_EQ(c->generation(), 2);
  EXPECT_EQ(c->get(ids[0])->metadata, R"({"label":"shoe"})");
}

TEST(Catalog, SnapshotReadsRecordsAndGenerationTogether) {
  auto c = fresh_catalog("catalog_snapshot");
  auto ids = c->write_batch({make_put("/a.jpg", 1), make_put("/b.jpg", 2)}, {});
  c->write_batch({}, {ids[0]});
  auto s = c->snapshot({ids[1], ids[0], 9999});
  EXPECT_EQ(s.generation, 2);
  ASSERT_EQ(s.records.size(), 1u);
  EXPECT_EQ(s.records[0].id, ids[1]);
  EXPECT_EQ(c->snapshot({}).generation, 2);
}

TEST(Catalog, EmbeddingByHashFollowsTheCurrentContent) {
  auto c = fresh_catalog("catalog_by_hash");
  c->write_batch({make_put("/a.jpg", 1), make_put("/b.jpg", 2)}, {});
  EXPECT_EQ(c->embedding_by_hash("hash-of-1"), seeded_vector(1, kDim));
  EXPECT_FALSE(c->embedding_by_hash("hash-of-3"));
  c->write_batch({make_put("/a.jpg", 3)}, {});  // a.jpg's content changed
  EXPECT_FALSE(c->embedding_by_hash("hash-of-1"));
  EXPECT_EQ(c->embedding_by_hash("hash-of-3"), seeded_vector(3, kDim));
}

// A flipped byte in a stored vector: never used silently, reported naming the image.
TEST(Catalog, CorruptStoredVectorsAreReportedNeverUsed) {
  auto c = fresh_catalog("catalog_corrupt_vector");
  auto ids =
      c->write_batch({make_put("/ok.jpg", 1), make_put("/nan.jpg", 2), make_put("/long.jpg", 3),
                      make_put("/flip.jpg", 4), make_put("/twin.jpg", 4)},
                     {});
  const auto path = c->path();
  auto blob = vector_blob(path, ids[1]);
  set_float_at(blob, 7, std::nanf(""));
  raw_set_blob(path, ids[1], blob);
  blob = vector_blob(path, ids[2]);
  for (int i = 0; i < kDim; ++i) set_float_at(blob, i, float_at(blob, i) * 1.1f);
  raw_set_blob(path, ids[2], blob);
  blob = vector_blob(path, ids[3]);
  blob[4 * 100 + 3] ^= 0x40;  // one flipped bit in the exponent of element 100
  ASSERT_TRUE(std::isfinite(float_at(blob, 100)));
  raw_set_blob(path, ids[3], blob);

  std::vector<std::int64_t> seen;
  std::vector<lookalike::store::CorruptVector> corrupt;
  c->for_each_embedding([&](std::int64_t id, const float*) { seen.push_back(id); }, &corrupt);
  EXPECT_EQ(seen, (std::vector<std::int64_t>{ids[0], ids[4]}));
  ASSERT_EQ(corrupt.size(), 3u);
  EXPECT_EQ(corrupt[0].id, ids[1]);
  EXPECT_NE(corrupt[0].reason.find("non-finite"), std::string::npos) << corrupt[0].reason;
  EXPECT_EQ(corrupt[1].id, ids[2]);
  EXPECT_NE(corrupt[1].reason.find("norm 1.1000"), std::string::npos) << corrupt[1].reason;
  EXPECT_EQ(corrupt[2].id, ids[3]);
  EXPECT_NE(corrupt[2].reason.find("norm"), std::string::npos) << corrupt[2].reason;
  // Without the out-parameter the corrupt ones are still skipped.
  seen.clear();
  c->for_each_embedding([&](std::int64_t id, const float*) { seen.push_back(id); });
  EXPECT_EQ(seen.size(), 2u);

  for (int i : {1, 2, 3}) {
    auto what = error_of([&] { c->embedding(ids[i]); });
    auto rec = c->get(ids[i]);
    EXPECT_NE(what.find(rec->path), std::string::npos) << what;
    EXPECT_NE(what.find("image " + std::to_string(ids[i])), std::string::npos) << what;
  }
  EXPECT_EQ(c->embedding(ids[0]), seeded_vector(1, kDim));
  // By hash: the corrupt copy is skipped, the intact image with the same content is used.
  EXPECT_EQ(c->embedding_by_hash("hash-of-4"), seeded_vector(4, kDim));
  EXPECT_FALSE(c->embedding_by_hash("hash-of-2"));
  // Re-putting the file repairs it.
  c->write_batch({make_put("/nan.jpg", 2)}, {});
  EXPECT_EQ(c->embedding(ids[1]), seeded_vector(2, kDim));
}

// A blob of the wrong size is a corrupt vector like a non-finite one: reported, skipped, never a
// failed read of the whole catalog (every command failed on it), repaired by a re-put.
TEST(Catalog, WrongSizeBlobIsACorruptVectorNotAFailedRead) {
  auto c = fresh_catalog("catalog_short_blob");
  auto ids = c->write_batch(
      {make_put("/ok.jpg", 1), make_put("/short.jpg", 2), make_put("/twin.jpg", 2)}, {});
  const auto path = c->path();
  raw_sql(path, "UPDATE embeddings SET vector = substr(vector, 1, " + std::to_string(kDim * 4 - 4) +
                    ") WHERE image_id = " + std::to_string(ids[1]));
  ASSERT_EQ(raw_text(path, "SELECT length(vector) FROM embeddings WHERE image_id = " +
                               std::to_string(ids[1])),
            std::to_string(kDim * 4 - 4));

  std::vector<std::int64_t> seen;
  std::vector<lookalike::store::CorruptVector> corrupt;
  EXPECT_NO_THROW(
      c->for_each_embedding([&](std::int64_t id, const float*) { seen.push_back(id); }, &corrupt));
  EXPECT_EQ(seen, (std::vector<std::int64_t>{ids[0], ids[2]}));
  ASSERT_EQ(corrupt.size(), 1u);
  EXPECT_EQ(corrupt[0].id, ids[1]);
  EXPECT_NE(corrupt[0].reason.find("5116 bytes, not 5120"), std::string::npos) << corrupt[0].reason;

  auto what = error_of([&] { c->embedding(ids[1]); });
  EXPECT_NE(what.find("/short.jpg"), std::string::npos) << what;
  EXPECT_NE(what.find("5116 bytes"), std::string::npos) << what;
  EXPECT_NE(what.find("re-index"), std::string::npos) << what;
  // By hash: the short copy is skipped, its intact twin is used.
  EXPECT_EQ(c->embedding_by_hash("hash-of-2"), seeded_vector(2, kDim));
  std::vector<float> out(2 * kDim);
  bool found[2] = {true, false};
  const std::int64_t both[2] = {ids[1], ids[0]};
  c->embeddings(both, 2, out.data(), found);
  EXPECT_FALSE(found[0]);
  EXPECT_TRUE(found[1]);
  // Re-putting the file repairs it.
  c->write_batch({make_put("/short.jpg", 2)}, {});
  EXPECT_EQ(c->embedding(ids[1]), seeded_vector(2, kDim));
  corrupt.clear();
  c->for_each_embedding([](std::int64_t, const float*) {}, &corrupt);
  EXPECT_TRUE(corrupt.empty());
}

// A cosine check is not applied to an l2 catalog: only finiteness.
TEST(Catalog, L2CatalogChecksOnlyFiniteness) {
  auto c = Catalog::open(scratch_dir("catalog_corrupt_l2") / "catalog.db", true);
  auto cfg = test_config();
  cfg.metric = "l2";
  c->set_config(cfg);
  auto p = make_put("/big.jpg", 1);
  for (auto& x : p.embedding) x *= 3;
  auto ids = c->write_batch({p, make_put("/nan.jpg", 2)}, {});
  auto blob = vector_blob(c->path(), ids[1]);
  set_float_at(blob, 0, std::numeric_limits<float>::infinity());
  raw_set_blob(c->path(), ids[1], blob);
  EXPECT_EQ(c->embedding(ids[0]), p.embedding);
  EXPECT_THROW(c->embedding(ids[1]), StoreError);
  std::vector<lookalike::store::CorruptVector> corrupt;
  int n = 0;
  c->for_each_embedding([&](std::int64_t, const float*) { ++n; }, &corrupt);
  EXPECT_EQ(n, 1);
  ASSERT_EQ(corrupt.size(), 1u);
  EXPECT_EQ(corrupt[0].id, ids[1]);
}

// The write side and the read side check a vector with one function: whatever a write
// refuses, reading the same vector back (smuggled in by SQL) leaves out with the same reason,
// and whatever a write accepts reads back; the cosine norm tolerance (1e-3) is the same. A put
// written straight to the catalog is checked too (not only through Collection::apply).
TEST(Catalog, WritesRefuseExactlyWhatReadsLeaveOut) {
  auto c = fresh_catalog("catalog_same_checks");
  auto keep = c->write_batch({make_put("/keep.jpg", 1)}, {});
  auto scaled = [](std::uint64_t seed, float by) {
    auto v = seeded_vector(seed, kDim);
    for (auto& x : v) x *= by;
    return v;
  };
  auto with = [](std::vector<float> v, int i, float x) {
    v[static_cast<std::size_t>(i)] = x;
    return v;
  };
  const std::vector<std::pair<std::vector<float>, bool>> vectors = {
      {scaled(2, 1.0009f), true},
      {scaled(3, 0.9991f), true},
      {scaled(4, 1.0011f), false},
      {scaled(5, 0.9989f), false},
      {scaled(6, 0.5f), false},
      {with(seeded_vector(7, kDim), 9, std::nanf("")), false},
      {with(seeded_vector(8, kDim), 0, -std::numeric_limits<float>::infinity()), false},
  };
  for (std::size_t i = 0; i < vectors.size(); ++i) {
    const auto& [v, valid] = vectors[i];
    SCOPED_TRACE(i);
    auto put = make_put("/v" + std::to_string(i) + ".jpg", 100 + i);
    put.embedding = v;
    std::string refused;
    try {
      c->write_batch({make_put("/good.jpg", 50), put}, {});
    } catch (const StoreError& e) {
      refused = e.what();
    }
    EXPECT_EQ(refused.empty(), valid) << refused;
    if (!valid) {
      EXPECT_NE(refused.find(c->path().string()), std::string::npos) << refused;
      EXPECT_NE(refused.find("put[1] (" + put.record.path + ")"), std::string::npos) << refused;
      EXPECT_FALSE(c->find_path("/good.jpg")) << "a refused batch wrote its good put";
    }
    c->write_batch({}, c->find_path("/good.jpg") ? std::vector{c->find_path("/good.jpg")->id}
                                                 : std::vector<std::int64_t>{});
    // The same vector stored behind the writer's back, and read.
    auto carrier = make_put("/carrier.jpg", 200 + i);
    const auto id = c->write_batch({carrier}, {})[0];
    std::string blob(v.size() * 4, '\0');
    for (std::size_t k = 0; k < v.size(); ++k) set_float_at(blob, static_cast<int>(k), v[k]);
    raw_set_blob(c->path(), id, blob);
    std::vector<lookalike::store::CorruptVector> corrupt;
    c->for_each_embedding([](std::int64_t, const float*) {}, &corrupt);
    if (valid) {
      EXPECT_TRUE(corrupt.empty());
      if (!refused.empty()) ADD_FAILURE() << "refused a vector reads accept";
    } else {
      ASSERT_EQ(corrupt.size(), 1u);
      EXPECT_EQ(corrupt[0].id, id);
      EXPECT_NE(refused.find(": " + corrupt[0].reason), std::string::npos)
          << "write: " << refused << "\nread: " << corrupt[0].reason;
    }
    c->write_batch({}, {id});
    if (valid) c->write_batch({}, {c->find_path(put.record.path)->id});
  }
  EXPECT_EQ(c->count(), 1);
  EXPECT_EQ(c->embedding(keep[0]), seeded_vector(1, kDim));
}

// ---- Metadata filters (store::MetadataFilter) over the metadata_terms side table.

using Ids = std::vector<std::int64_t>;

Ids ids_of(const Catalog& c, const std::vector<std::string>& where) {
  return c.matching(lookalike::store::parse_where(where)).ids;
}

Ids paged_ids(const Catalog& c, const MetadataFilter& f, int page) {
  Ids out;
  std::int64_t after = 0;
  for (int guard = 0; guard < 100000; ++guard) {
    auto rows = c.list_page(after, page, &f);
    if (rows.empty()) break;
    for (const auto& r : rows) out.push_back(r.id);
    after = rows.back().id;
  }
  return out;
}

TEST(Catalog, FilterOpsOnEveryKindOfValue) {
  auto c = fresh_catalog("catalog_filter_ops");
  auto ids = c->write_batch(
      {make_put("/0.jpg", 0, R"({"v":"shoe","n":42,"tags":["red","summer"]})"),
       make_put("/1.jpg", 1, R"({"v":"49.99","n":4.5,"tags":["blue"],"sale":true})"),
       make_put("/2.jpg", 2, R"({"v":42,"n":"7","sale":false,"tags":[1,"2.5",true]})"),
       make_put("/3.jpg", 3, R"({"v":null,"n":null,"obj":{"x":1},"tags":[[1],{"x":1},null]})"),
       make_put("/4.jpg", 4, R"({"n":" 7","v":"x,y","tags":"red"})"), make_put("/5.jpg", 5, "{}")},
      {});
  auto pick = [&](std::initializer_list<int> is) {
    Ids out;
    for (int i : is) out.push_back(ids[static_cast<std::size_t>(i)]);
    return out;
  };
  // Equality: a string's characters, a number's text form, true/false; null/missing: nothing.
  EXPECT_EQ(ids_of(*c, {"v=shoe"}), pick({0}));
  EXPECT_EQ(ids_of(*c, {"v=49.99"}), pick({1}));
  EXPECT_EQ(ids_of(*c, {"v=42"}), pick({2}));
  EXPECT_EQ(ids_of(*c, {"n=4.5"}), pick({1}));
  EXPECT_EQ(ids_of(*c, {"n=7"}), pick({2}));  // the string "7"; " 7" is another string
  EXPECT_EQ(ids_of(*c, {"sale=true"}), pick({1}));
  EXPECT_EQ(ids_of(*c, {"sale=false"}), pick({2}));
  EXPECT_EQ(ids_of(*c, {"sale=1"}), Ids{});  // a boolean is not the number 1
  EXPECT_EQ(ids_of(*c, {"v=null"}), Ids{});
  EXPECT_EQ(ids_of(*c, {"v="}), Ids{});
  EXPECT_EQ(ids_of(*c, {"missing=x"}), Ids{});
  EXPECT_EQ(ids_of(*c, {"obj={\"x\":1}"}), Ids{});  // nested objects are not indexed
  // Arrays: any element (scalars only; nested arrays and objects match nothing).
  EXPECT_EQ(ids_of(*c, {"tags=red"}), pick({0, 4}));
  EXPECT_EQ(ids_of(*c, {"tags=2.5"}), pick({2}));
  EXPECT_EQ(ids_of(*c, {"tags=true"}), pick({2}));
  EXPECT_EQ(ids_of(*c, {"tags=[1]"}), Ids{});
  // IN: any of the values, same semantics; a quoted item may hold a comma.
  EXPECT_EQ(ids_of(*c, {"v IN [shoe, 42, nope]"}), pick({0, 2}));
  EXPECT_EQ(ids_of(*c, {"tags in [summer,blue]"}), pick({0, 1}));
  EXPECT_EQ(ids_of(*c, {R"(v IN ["x,y"])"}), pick({4}));
  EXPECT_EQ(ids_of(*c, {"sale IN [true, false]"}), pick({1, 2}));
  // Ranges: JSON numbers and strings that parse fully as finite numbers; not booleans.
  EXPECT_EQ(ids_of(*c, {"n>4.5"}), pick({0, 2}));
  EXPECT_EQ(ids_of(*c, {"n>=4.5"}), pick({0, 1, 2}));
  EXPECT_EQ(ids_of(*c, {"n<7"}), pick({1}));
  EXPECT_EQ(ids_of(*c, {"n<=7"}), pick({1, 2}));  // " 7" does not parse fully
  EXPECT_EQ(ids_of(*c, {"v<50"}), pick({1, 2}));  // "49.99" and 42
  EXPECT_EQ(ids_of(*c, {"v > -1e300"}), pick({1, 2}));
  EXPECT_EQ(ids_of(*c, {"tags>=1"}), pick({2}));  // 1 and "2.5"; true is not a number
  EXPECT_EQ(ids_of(*c, {"sale>=0"}), Ids{});
  EXPECT_EQ(ids_of(*c, {"v<0"}), Ids{});
  // AND of terms.
  EXPECT_EQ(ids_of(*c, {"n>=4.5", "tags IN [red, blue]"}), pick({0, 1}));
  EXPECT_EQ(ids_of(*c, {"n>=4.5", "tags IN [red, blue]", "sale=true"}), pick({1}));
  EXPECT_EQ(ids_of(*c, {"v=shoe", "v=42"}), Ids{});
  // The programmatic forms the server uses.
  MetadataFilter f;
  lookalike::store::add_in(f, "v", {"shoe", "49.99"});
  lookalike::store::add_range(f, "n", FilterOp::Gt, 5);
  EXPECT_EQ(c->matching(f).ids, pick({0}));
  EXPECT_EQ(paged_ids(*c, f, 1), pick({0}));
  EXPECT_THROW(lookalike::store::add_in(f, "v", {}), StoreError);
  EXPECT_THROW(lookalike::store::add_range(f, "n", FilterOp::Eq, 5), StoreError);
  EXPECT_THROW(lookalike::store::add_range(f, "n", FilterOp::Lt, std::nan("")), StoreError);
  EXPECT_THROW(lookalike::store::add_range(f, "", FilterOp::Lt, 1), StoreError);
  // Facets count array elements one by one, and only scalar values.
  auto tags = c->facet("tags", 10);
  ASSERT_EQ(tags.size(), 6u);
  EXPECT_EQ(tags[0], (std::pair<std::string, std::int64_t>{"red", 2}));
  EXPECT_EQ(tags[1].second, 1);
  EXPECT_EQ(c->facet("obj", 10).size(), 0u);
  // The generation comes with the ids.
  EXPECT_EQ(c->matching(lookalike::store::parse_where({"v=shoe"})).generation, c->generation());
}

TEST(Catalog, FilterFollowsRePutsSetMetadataAndRemoves) {
  auto c = fresh_catalog("catalog_filter_updates");
  auto ids = c->write_batch({make_put("/a.jpg", 1, R"({"cat":"x","price":10,"tags":["t"]})"),
                             make_put("/b.jpg", 2, R"({"cat":"x","price":"20"})"),
                             make_put("/c.jpg", 3, R"({"cat":"y"})")},
                            {});
  EXPECT_EQ(ids_of(*c, {"cat=x"}), (Ids{ids[0], ids[1]}));
  EXPECT_EQ(ids_of(*c, {"price>5"}), (Ids{ids[0], ids[1]}));
  // A re-put of a path with new metadata: the old fields stop matching, the new ones match.
  auto again = c->write_batch({make_put("/a.jpg", 1, R"({"cat":"y","price":1})")}, {});
  EXPECT_EQ(again[0], ids[0]);
  EXPECT_EQ(ids_of(*c, {"cat=x"}), (Ids{ids[1]}));
  EXPECT_EQ(ids_of(*c, {"cat=y"}), (Ids{ids[0], ids[2]}));
  EXPECT_EQ(ids_of(*c, {"price>5"}), (Ids{ids[1]}));
  EXPECT_EQ(ids_of(*c, {"tags=t"}), Ids{});
  // set_metadata replaces them too.
  ASSERT_TRUE(c->set_metadata(ids[2], R"({"cat":"x","tags":["t","u"]})"));
  EXPECT_EQ(ids_of(*c, {"cat=x"}), (Ids{ids[1], ids[2]}));
  EXPECT_EQ(ids_of(*c, {"cat=y"}), (Ids{ids[0]}));
  EXPECT_EQ(ids_of(*c, {"tags=u"}), (Ids{ids[2]}));
  // A refused write changes nothing.
  EXPECT_THROW(c->set_metadata(ids[2], "[1]"), StoreError);
  EXPECT_THROW(c->write_batch({make_put("/a.jpg", 1, R"({"cat":"z"})"), make_put("/d.jpg", 4, "7")},
                              {ids[1]}),
               StoreError);
  EXPECT_EQ(ids_of(*c, {"cat=x"}), (Ids{ids[1], ids[2]}));
  EXPECT_EQ(ids_of(*c, {"cat=z"}), Ids{});
  // Removes drop their matches; the side table keeps no rows of removed images.
  c->write_batch({}, {ids[1]});
  EXPECT_EQ(ids_of(*c, {"cat=x"}), (Ids{ids[2]}));
  EXPECT_EQ(ids_of(*c, {"price>5"}), Ids{});
  EXPECT_EQ(raw_text(c->path(), "SELECT count(*) FROM metadata_terms WHERE image_id = " +
                                    std::to_string(ids[1])),
            "0");
  auto facet = c->facet("cat", 10);
  ASSERT_EQ(facet.size(), 2u);
  EXPECT_EQ(facet[0].second + facet[1].second, 2);
}

// A random metadata value: its JSON text and what the filter semantics make of it (the text
// equality compares, and the number ranges compare, if any). Arrays list their elements.
struct Value {
  std::string json;
  std::vector<std::pair<std::string, std::optional<double>>> scalars;
};

Value random_value(std::uint64_t& state) {
  auto r = [&](std::uint64_t n) { return lookalike::testing::splitmix64(state) % n; };
  auto scalar = [&]() -> Value {
    switch (r(7)) {
      case 0: {
        auto n = static_cast<int>(r(41)) - 20;
        return {std::to_string(n), {{std::to_string(n), n}}};
      }
      case 1: {  // quarters print exactly: "3.25"
        const double x = (static_cast<int>(r(160)) - 80) / 4.0 + (r(2) ? 0.25 : 0.5);
        char buf[32];
        std::snprintf(buf, sizeof buf, "%g", x);
        return {buf, {{buf, x}}};
      }
      case 2: {  // numeric strings, as CSV columns are stored
        auto n = static_cast<int>(r(41)) - 20;
        std::string t = r(2) ? std::to_string(n) : std::to_string(n) + ".50";
        return {"\"" + t + "\"", {{t, std::nullopt}}};
      }
      case 3: {
        static const char* words[] = {"red", "blue", "green", "", "1e3x", " 5"};
        std::string w = words[r(6)];
        return {"\"" + w + "\"", {{w, std::nullopt}}};
      }
      case 4:
        return r(2) ? Value{"true", {{"true", std::nullopt}}}
                    : Value{"false", {{"false", std::nullopt}}};
      case 5:
        return {"null", {}};
      default:
        return {R"({"k":1})", {}};
    }
  };
  if (r(4) != 0) {
    auto v = scalar();
    // Numeric strings: the number is what the text says (fixed up here, not by the catalog).
    if (!v.scalars.empty() && v.json.front() == '"') {
      const auto& t = v.scalars[0].first;
      char* end = nullptr;
      double x = std::strtod(t.c_str(), &end);
      v.scalars[0].second =
          (!t.empty() && t[0] != ' ' && *end == '\0') ? std::optional(x) : std::nullopt;
    }
    return v;
  }
  Value arr{"[", {}};
  const int n = static_cast<int>(r(4));
  for (int i = 0; i < n; ++i) {
    auto e = random_value(state);
    if (e.json.front() == '[') e = {"[]", {}};  // arrays in arrays: never matched
    arr.json += (i ? "," : "") + e.json;
    arr.scalars.insert(arr.scalars.end(), e.scalars.begin(), e.scalars.end());
  }
  arr.json += "]";
  return arr;
}

bool brute_holds(const std::map<std::string, Value>& record,
                 const lookalike::store::FilterTerm& t) {
  auto it = record.find(t.field);
  if (it == record.end()) return false;
  for (const auto& [text, num] : it->second.scalars) {
    switch (t.op) {
      case FilterOp::Eq:
      case FilterOp::In:
        if (std::find(t.values.begin(), t.values.end(), text) != t.values.end()) return true;
        break;
      case FilterOp::Lt:
        if (num && *num < t.number) return true;
        break;
      case FilterOp::Le:
        if (num && *num <= t.number) return true;
        break;
      case FilterOp::Gt:
        if (num && *num > t.number) return true;
        break;
      case FilterOp::Ge:
        if (num && *num >= t.number) return true;
        break;
    }
  }
  return false;
}

// matching() and list_page() against a brute-force evaluation of random filters over random
// records, on the side table and on the JSON1 fallback of a read-only v2 catalog.
TEST(Catalog, FilterMatchesBruteForceOnRandomRecordsAndFilters) {
  auto path = scratch_dir("catalog_filter_random") / "catalog.db";
  auto c = Catalog::open(path, true);
  auto cfg = test_config();
  cfg.dim = 4;
  c->set_config(cfg);
  std::uint64_t state = 20240611;
  const std::vector<std::string> fields = {"a", "b", "c"};
  std::vector<std::map<std::string, Value>> records;
  std::vector<Put> puts;
  for (int i = 0; i < 3000; ++i) {
    std::map<std::string, Value> rec;
    std::string json = "{";
    for (const auto& f : fields) {
      if (lookalike::testing::splitmix64(state) % 5 == 0) continue;  // missing
      rec[f] = random_value(state);
      json += (json.size() > 1 ? "," : "") + ("\"" + f + "\":") + rec[f].json;
    }
    json += "}";
    Put p;
    p.record.path = "/r/" + std::to_string(i) + ".jpg";
    p.record.content_hash = "h" + std::to_string(i);
    p.record.metadata = json;
    p.embedding = seeded_vector(static_cast<std::uint64_t>(i), 4);
    puts.push_back(p);
    records.push_back(std::move(rec));
  }
  auto ids = c->write_batch(puts, {});
  // Pools the filters draw from: every text and number the records hold, and a few others.
  std::vector<std::string> texts = {"nope", "red"};
  for (const auto& rec : records) {
    for (const auto& [f, v] : rec) {
      for (const auto& s : v.scalars) texts.push_back(s.first);
    }
  }
  auto random_filter = [&] {
    auto r = [&](std::uint64_t n) { return lookalike::testing::splitmix64(state) % n; };
    std::vector<std::string> where;
    const int n = 1 + static_cast<int>(r(3));
    for (int i = 0; i < n; ++i) {
      const std::string& field = fields[r(fields.size())];
      const auto op = r(6);
      if (op == 0) {
        where.push_back(field + "=" + texts[r(texts.size())]);
      } else if (op == 1) {
        std::string list;
        for (int k = 0, m = 1 + static_cast<int>(r(3)); k < m; ++k) {
          list += (k ? ", \"" : "\"") + texts[r(texts.size())] + "\"";
        }
        where.push_back(field + " IN [" + list + "]");
      } else {
        static const char* ops[] = {"<", "<=", ">", ">="};
        const double bound = (static_cast<int>(r(49)) - 24) / 2.0;
        char buf[32];
        std::snprintf(buf, sizeof buf, "%g", bound);
        where.push_back(field + ops[r(4)] + buf);
      }
    }
    return where;
  };
  std::vector<std::vector<std::string>> filters;
  for (int k = 0; k < 150; ++k) filters.push_back(random_filter());
  std::vector<Ids> expected;
  std::size_t nonempty = 0;
  for (const auto& where : filters) {
    const auto f = lookalike::store::parse_where(where);
    Ids want;
    for (std::size_t i = 0; i < records.size(); ++i) {
      if (std::all_of(f.terms.begin(), f.terms.end(),
                      [&](const auto& t) { return brute_holds(records[i], t); })) {
        want.push_back(ids[i]);
      }
    }
    nonempty += !want.empty();
    std::string label;
    for (const auto& w : where) label += w + " & ";
    EXPECT_EQ(c->matching(f).ids, want) << label;
    EXPECT_EQ(paged_ids(*c, f, 7), want) << label;
    expected.push_back(std::move(want));
  }
  EXPECT_GT(nonempty, filters.size() / 3) << "the random filters should mostly match something";
  // The same answers from JSON1 on a read-only connection to this catalog aged to v2.
  c.reset();
  raw_sql(path,
          "DROP TABLE metadata_terms; DELETE FROM meta WHERE key = 'search_defaults';"
          "UPDATE meta SET value = '2' WHERE key = 'schema_version';");
  auto ro = Catalog::open_read_only(path);
  for (std::size_t k = 0; k < filters.size(); ++k) {
    const auto f = lookalike::store::parse_where(filters[k]);
    EXPECT_EQ(ro->matching(f).ids, expected[k]) << filters[k][0];
    if (k % 10 == 0) {
      EXPECT_EQ(paged_ids(*ro, f, 50), expected[k]) << filters[k][0];
    }
  }
}

// Every term common (over the ~32,768 rows where list_page stops reading ids first): the walk by
// id answers, page by page, the same as matching().
TEST(Catalog, ListPageOfACommonFilterWalksById) {
  auto c = Catalog::open(scratch_dir("catalog_filter_dense") / "catalog.db", true);
  auto cfg = test_config();
  cfg.dim = 4;
  c->set_config(cfg);
  Ids ids;
  for (int b = 0; b < 8; ++b) {
    std::vector<Put> puts;
    for (int i = b * 10000; i < (b + 1) * 10000; ++i) {
      Put p;
      p.record.path = "/d/" + std::to_string(i) + ".jpg";
      p.record.content_hash = "h";
      p.record.metadata = std::string(R"({"k":")") + (i % 8 ? "common" : "rare") + R"(","n":)" +
                          std::to_string(i) + "}";
      p.embedding = seeded_vector(1, 4);
      puts.push_back(p);
    }
    auto got = c->write_batch(puts, {});
    ids.insert(ids.end(), got.begin(), got.end());
  }
  const auto f = lookalike::store::parse_where({"k=common", "n>=4000"});
  Ids want;
  for (int i = 4000; i < 80000; ++i) {
    if (i % 8) want.push_back(ids[static_cast<std::size_t>(i)]);
  }
  EXPECT_EQ(c->matching(f).ids, want);
  auto page = c->list_page(ids[5000], 100, &f);
  ASSERT_EQ(page.size(), 100u);
  auto from = std::upper_bound(want.begin(), want.end(), ids[5000]);
  for (std::size_t i = 0; i < page.size(); ++i) EXPECT_EQ(page[i].id, from[i]);
  EXPECT_EQ(paged_ids(*c, f, 5000), want);
  // A rare term with a common one: the rare term's ids first.
  const auto g = lookalike::store::parse_where({"k=rare", "n>=4000"});
  Ids rare;
  for (int i = 4000; i < 80000; i += 8) rare.push_back(ids[static_cast<std::size_t>(i)]);
  EXPECT_EQ(c->matching(g).ids, rare);
  EXPECT_EQ(paged_ids(*c, g, 999), rare);
}

TEST(Catalog, SchemaV2IsMigratedWithItsSideTableAndReadOnlyStillFilters) {
  auto path = scratch_dir("catalog_v2") / "catalog.db";
  Ids ids;
  {
    auto c = Catalog::open(path, true);
    c->set_config(test_config());
    ids = c->write_batch({make_put("/a.jpg", 1, R"({"cat":"x","price":"9.5","tags":["s","t"]})"),
                          make_put("/b.jpg", 2, R"({"cat":"y","price":20})"),
                          make_put("/c.jpg", 3, R"({"cat":"x"})")},
                         {});
  }
  // What a version-2 catalog looks like: no side table, no search_defaults, schema_version 2.
  raw_sql(path,
          "DROP TABLE metadata_terms; DELETE FROM meta WHERE key = 'search_defaults';"
          "UPDATE meta SET value = '2' WHERE key = 'schema_version';");
  const std::vector<std::pair<std::vector<std::string>, Ids>> cases = {
      {{"cat=x"}, {ids[0], ids[2]}},
      {{"price<10"}, {ids[0]}},
      {{"tags IN [t, u]"}, {ids[0]}},
      {{"cat=x", "price>=9.5"}, {ids[0]}},
      {{"cat=z"}, {}}};
  {
    auto ro = Catalog::open_read_only(path);  // read as it is: JSON1 answers the filters
    for (const auto& [where, want] : cases) EXPECT_EQ(ids_of(*ro, where), want) << where[0];
    auto facet = ro->facet("cat", 10);
    ASSERT_EQ(facet.size(), 2u);
    EXPECT_EQ(facet[0], (std::pair<std::string, std::int64_t>{"x", 2}));
    EXPECT_EQ(ro->facet("tags", 10).size(), 2u);
    EXPECT_EQ(ro->config()->search_defaults, "{}");
  }
  EXPECT_EQ(raw_text(path, "SELECT value FROM meta WHERE key = 'schema_version'"), "2");
  {
    auto c = Catalog::open(path, false);  // the writer migrates, building the side table
    EXPECT_EQ(c->generation(), 1);        // a migration is not a data change
    for (const auto& [where, want] : cases) EXPECT_EQ(ids_of(*c, where), want) << where[0];
    EXPECT_EQ(c->config()->search_defaults, "{}");
  }
  EXPECT_EQ(raw_text(path, "SELECT value FROM meta WHERE key = 'schema_version'"),
            std::to_string(lookalike::store::kCatalogSchemaVersion));
  // a: cat, price, tags x2; b: cat, price; c: cat.
  EXPECT_EQ(raw_text(path, "SELECT count(*) FROM metadata_terms"), "7");
  auto ro = Catalog::open_read_only(path);
  for (const auto& [where, want] : cases) EXPECT_EQ(ids_of(*ro, where), want) << where[0];
}

TEST(Catalog, ParseWhereGrammar) {
  using lookalike::store::parse_where;
  auto one = [](const std::string& term) {
    auto f = parse_where({term});
    EXPECT_EQ(f.terms.size(), 1u) << term;
    return f.terms.at(0);
  };
  auto t = one("note=a<b");  // '=' comes first: equality, '<' is in the value
  EXPECT_EQ(t.op, FilterOp::Eq);
  EXPECT_EQ(t.field, "note");
  EXPECT_EQ(t.values, std::vector<std::string>{"a<b"});
  t = one("category = shoes");  // spaces around '=' are trimmed, as in ranges and IN
  EXPECT_EQ(t.op, FilterOp::Eq);
  EXPECT_EQ(t.field, "category");
  EXPECT_EQ(t.values, std::vector<std::string>{"shoes"});
  t = one("\tmy field =  two words ");
  EXPECT_EQ(t.field, "my field");
  EXPECT_EQ(t.values, std::vector<std::string>{"two words"});
  t = one("a=");
  EXPECT_EQ(t.values, std::vector<std::string>{""});
  t = one("a=b=c");  // only the first '=' splits
  EXPECT_EQ(t.values, std::vector<std::string>{"b=c"});
  t = one("a=x<5");
  EXPECT_EQ(t.values, std::vector<std::string>{"x<5"});
  t = one(R"(a IN ["=b", "<5", " x "])");  // how to ask for such values
  EXPECT_EQ(t.values, (std::vector<std::string>{"=b", "<5", " x "}));
  t = one("q=x IN [a]");  // an IN after the '=' is part of the value
  EXPECT_EQ(t.op, FilterOp::Eq);
  EXPECT_EQ(t.values, std::vector<std::string>{"x IN [a]"});
  t = one(R"(tags In [ a , "b, c" , "[d]", "say \"hi\"", "" ])");
  EXPECT_EQ(t.op, FilterOp::In);
  EXPECT_EQ(t.field, "tags");
  EXPECT_EQ(t.values, (std::vector<std::string>{"a", "b, c", "[d]", "say \"hi\"", ""}));
  t = one("my field IN[x=1]");
  EXPECT_EQ(t.field, "my field");
  EXPECT_EQ(t.values, std::vector<std::string>{"x=1"});
  for (const auto& [term, op, n] : std::vector<std::tuple<std::string, FilterOp, double>>{
           {"price<10", FilterOp::Lt, 10},
           {"price <= 10.5", FilterOp::Le, 10.5},
           {"price>-3", FilterOp::Gt, -3},
           {"price>=+1e3", FilterOp::Ge, 1000}}) {
    t = one(term);
    EXPECT_EQ(t.field, "price") << term;
    EXPECT_EQ(t.op, op) << term;
    EXPECT_EQ(t.number, n) << term;
  }
  EXPECT_EQ(parse_where({"a=1", "b<2", "c IN [3]"}).terms.size(), 3u);
  // Errors name the term and the cause.
  for (const auto& [term, cause] : std::vector<std::pair<std::string, std::string>>{
           {"novalue", "expected field=value"},
           {"=x", "empty field"},
           {"<3", "empty field"},
           {"a<=b", "finite number"},
           {"a>", "finite number"},
           {"a<1e999", "finite number"},
           {"a>=nan", "finite number"},
           {"a<0x10", "finite number"},
           {"a>1 2", "finite number"},
           {"tags IN []", "at least one"},
           {"tags IN [a", "closing"},
           {"tags IN [a,,b]", "empty value"},
           {"tags IN [a] b", "after"},
           {R"(tags IN ["a)", "unterminated"},
           {R"(tags IN ["a" b])", "expected ','"},
           {"category==shoes", "== is not supported"},
           {"category == shoes", "== is not supported"},
           {"category!=shoes", "!= (not equal) is not supported"},
           {"category != shoes", "!= (not equal) is not supported"},
           {"price=<5", "=< is not supported (write field<=N)"},
           {"price=>5", "=> is not supported (write field>=N)"},
           {"price<>5", "<> (not equal) is not supported"},
           {"name~=shirt", "~= is not supported"},
           {"name*=shirt", "*= is not supported"},
           {"a\"b=1", "may not contain"},
           {"a\"b IN [1]", "may not contain"},
           {std::string(129, 'f') + "<1", "longer than 128"}}) {
    auto what = error_of([&] { parse_where({"ok=1", term}); });
    EXPECT_NE(what.find("filter '" + term + "'"), std::string::npos) << term << ": " << what;
    EXPECT_NE(what.find(cause), std::string::npos) << term << ": " << what;
    if (what.find("not supported") != std::string::npos) {
      EXPECT_NE(what.find("supported: field=value, field IN [a, b], field<N"), std::string::npos)
          << what;
    }
  }
}

TEST(Catalog, SearchDefaultsAndSetIndexConfig) {
  auto path = scratch_dir("catalog_index_config") / "catalog.db";
  auto cfg = test_config();
  cfg.search_defaults = R"({"nprobe":32,"ef_search":128,"rerank":100})";
  Catalog::create_atomic(path, cfg);
  auto c = Catalog::open(path, false);
  EXPECT_EQ(c->config()->search_defaults, cfg.search_defaults);
  EXPECT_EQ(c->config()->factory, "Flat");
  // Not compared: the same config with other defaults is accepted and changes nothing.
  auto other = cfg;
  other.search_defaults = "{}";
  EXPECT_NO_THROW(c->set_config(other));
  EXPECT_EQ(c->config()->search_defaults, cfg.search_defaults);
  const auto gen = c->generation();
  c->set_index_config("IVF64,Flat", R"({"nprobe":8})");
  EXPECT_EQ(c->generation(), gen + 1);
  EXPECT_EQ(c->config()->factory, "IVF64,Flat");
  EXPECT_EQ(c->config()->search_defaults, R"({"nprobe":8})");
  EXPECT_EQ(c->config()->model_id, cfg.model_id);
  EXPECT_EQ(c->config()->dim, kDim);
  // Refused: nothing written, generation kept.
  EXPECT_NE(error_of([&] { c->set_index_config("", "{}"); }).find("factory"), std::string::npos);
  for (const char* bad : {"[1]", "{oops", "3", ""}) {
    EXPECT_NE(error_of([&] { c->set_index_config("Flat", bad); }).find("search_defaults"),
              std::string::npos)
        << bad;
  }
  EXPECT_EQ(c->generation(), gen + 1);
  EXPECT_EQ(c->config()->factory, "IVF64,Flat");
  c.reset();
  auto ro = Catalog::open_read_only(path);
  EXPECT_EQ(ro->config()->search_defaults, R"({"nprobe":8})");
  EXPECT_THROW(ro->set_index_config("Flat", "{}"), StoreError);
  // set_config writes it; absent from meta reads as "{}"; an invalid one is refused.
  auto d = fresh_catalog("catalog_index_config_default");
  EXPECT_EQ(d->config()->search_defaults, "{}");
  raw_sql(d->path(), "DELETE FROM meta WHERE key = 'search_defaults'");
  EXPECT_EQ(d->config()->search_defaults, "{}");
  auto e = Catalog::open(scratch_dir("catalog_index_config_bad") / "catalog.db", true);
  auto bad = test_config();
  bad.search_defaults = "[]";
  EXPECT_THROW(e->set_config(bad), StoreError);
  EXPECT_FALSE(e->config());
  EXPECT_THROW(e->set_index_config("Flat", "{}"), StoreError);  // no config yet
}

}  // namespace

// A catalog SQLite cannot read as a database (a zeroed header, a truncated file) is a damaged
// catalog, and its message says what to do, as quick_check's does.
TEST(Catalog, DamagedFileSaysDamagedAndHowToRecover) {
  auto dir = scratch_dir("catalog_damaged_file");
  auto make = [&](const std::string& name) {
    auto path = dir / name;
    auto c = Catalog::open(path, true);
    c->set_config({"m@0123456789abcdef", "m", 4, "l2", "Flat"});
    std::vector<lookalike::store::Put> puts;
    for (int i = 0; i < 300; ++i) {
      lookalike::store::Put p;
      p.record.path = "/p/" + std::to_string(i) + ".jpg";
      p.record.content_hash = std::to_string(i);
      p.embedding = {1, 2, 3, static_cast<float>(i)};
      puts.push_back(p);
    }
    c->write_batch(puts, {});
    c->checkpoint();
    return path;
  };
  auto zeroed = make("zeroed.db");
  {
    std::fstream f(zeroed, std::ios::in | std::ios::out | std::ios::binary);
    f << std::string(100, '\0');
  }
  auto truncated = make("truncated.db");
  std::filesystem::resize_file(truncated, std::filesystem::file_size(truncated) / 2);
  for (const auto& [path, want] :
       {std::pair{zeroed, std::string(": not a lookalike catalog (file is not a database): the "
                                      "catalog is damaged, or the file is not one")},
        std::pair{truncated, std::string(": catalog is damaged (")}}) {
    for (const auto& open : std::vector<std::function<void()>>{
             [&] { Catalog::open(path, false); }, [&] { Catalog::open_read_only(path); }}) {
      auto what = error_of(open);
      EXPECT_NE(what.find(path.string() + want), std::string::npos) << what;
      EXPECT_NE(what.find("Restore a backup, or recover the rows with `sqlite3 catalog.db "
                          ".recover`"),
                std::string::npos)
          << what;
    }
  }
}
