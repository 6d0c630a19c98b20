#include "store/catalog.h"

#include <SQLiteCpp/SQLiteCpp.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <unordered_set>

namespace lookalike::store {

namespace {

// PRAGMA application_id: marks the file as ours for tools like `file`; meta is the authority.
constexpr int kApplicationId = 0x4C4B4C4B;  // "LKLK"

// Version 1 of the schema; docs/collection-format.md describes every column.
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE meta(
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE images(
  id            INTEGER PRIMARY KEY AUTOINCREMENT,
  path          TEXT NOT NULL UNIQUE,
  content_hash  TEXT NOT NULL,
  bytes         INTEGER NOT NULL,
  width         INTEGER NOT NULL,
  height        INTEGER NOT NULL,
  mtime_ns      INTEGER NOT NULL,
  metadata      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
  added_at_ms   INTEGER NOT NULL,
  updated_at_ms INTEGER NOT NULL
);
CREATE INDEX images_content_hash ON images(content_hash);
CREATE TABLE embeddings(
  image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
  model_id TEXT NOT NULL,
  vector   BLOB NOT NULL,
  PRIMARY KEY (image_id, model_id)
);
)sql";

// Migrations: kMigrations[v - 1] upgrades schema version v to v + 1. A new catalog is the v1
// schema plus every migration, so both paths give the same tables.
constexpr const char* kMigrations[] = {
    // 1 -> 2: the collection id that index cache files carry in their trailer.
    "INSERT OR IGNORE INTO meta(key, value) VALUES('collection_id', lower(hex(randomblob(16))));",
};
static_assert(std::size(kMigrations) == kCatalogSchemaVersion - 1);

constexpr const char* kImageColumns =
    "id, path, content_hash, bytes, width, height, mtime_ns, metadata, added_at_ms, "
    "updated_at_ms";

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

StoreError error(const std::filesystem::path& path, const std::string& what) {
  return StoreError(path.string() + ": " + what);
}

// Runs a catalog read, turning SQLite's exceptions (I/O error, corrupt page) into StoreError.
template <class F>
auto reading(const std::filesystem::path& path, F&& f) {
  try {
    return f();
  } catch (const SQLite::Exception& e) {
    throw error(path, std::string("catalog read failed: ") + e.what());
  }
}

// Vectors are stored little-endian float32 whatever the host's byte order.
std::string encode_vector(const std::vector<float>& v) {
  std::string blob(v.size() * 4, '\0');
  for (std::size_t i = 0; i < v.size(); ++i) {
    auto bits = std::bit_cast<std::uint32_t>(v[i]);
    for (int b = 0; b < 4; ++b) blob[i * 4 + b] = static_cast<char>(bits >> (8 * b));
  }
  return blob;
}

void decode_vector(const void* blob, std::size_t floats, float* out) {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(out, blob, floats * 4);
  } else {
    const auto* bytes = static_cast<const unsigned char*>(blob);
    for (std::size_t i = 0; i < floats; ++i) {
      std::uint32_t bits = 0;
      for (int b = 0; b < 4; ++b) bits |= std::uint32_t{bytes[i * 4 + b]} << (8 * b);
      out[i] = std::bit_cast<float>(bits);
    }
  }
}

// The checks made on every vector read back (a flipped byte must not be used silently).
std::optional<std::string> vector_problem(const float* v, int dim, bool cosine) {
  double sq = 0;
  for (int i = 0; i < dim; ++i) {
    if (!std::isfinite(v[i])) return "embedding has a non-finite value";
    sq += double{v[i]} * v[i];
  }
  if (cosine && std::abs(std::sqrt(sq) - 1.0) > 1e-3) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "embedding norm %.4f, not 1 (cosine collection)", std::sqrt(sq));
    return std::string(buf);
  }
  return std::nullopt;
}

ImageRecord read_record(SQLite::Statement& q) {
  ImageRecord r;
  r.id = q.getColumn(0).getInt64();
  r.path = q.getColumn(1).getString();
  r.content_hash = q.getColumn(2).getString();
  r.bytes = q.getColumn(3).getInt64();
  r.width = q.getColumn(4).getInt();
  r.height = q.getColumn(5).getInt();
  r.mtime_ns = q.getColumn(6).getInt64();
  r.metadata = q.getColumn(7).getString();
  r.added_at_ms = q.getColumn(8).getInt64();
  r.updated_at_ms = q.getColumn(9).getInt64();
  return r;
}

std::optional<std::string> meta_value(SQLite::Database& db, const char* key) {
  SQLite::Statement q(db, "SELECT value FROM meta WHERE key = ?");
  q.bind(1, key);
  if (!q.executeStep()) return std::nullopt;
  return q.getColumn(0).getString();
}

void set_meta(SQLite::Database& db, const char* key, const std::string& value) {
  SQLite::Statement q(db, "INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)");
  q.bind(1, key);
  q.bind(2, value);
  q.exec();
}

bool has_table(SQLite::Database& db, const char* name) {
  SQLite::Statement q(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?");
  q.bind(1, name);
  return q.executeStep();
}

void initialise(SQLite::Database& db, bool wal = true) {
  if (wal) db.exec("PRAGMA journal_mode = WAL");
  SQLite::Transaction tx(db, SQLite::TransactionBehavior::IMMEDIATE);
  db.exec(kSchemaV1);
  for (const char* step : kMigrations) db.exec(step);
  db.exec("PRAGMA application_id = " + std::to_string(kApplicationId));
  set_meta(db, "schema_version", std::to_string(kCatalogSchemaVersion));
  set_meta(db, "created_at", std::to_string(now_ms()));
  set_meta(db, "generation", "0");
  tx.commit();
}

void migrate(SQLite::Database& db, const std::filesystem::path& path, int from) {
  SQLite::Transaction tx(db, SQLite::TransactionBehavior::IMMEDIATE);
  for (int v = from; v < kCatalogSchemaVersion; ++v) {
    const char* step = kMigrations[v - 1];
    if (!step) {
      throw error(path, "no migration from catalog schema version " + std::to_string(v));
    }
    db.exec(step);
  }
  set_meta(db, "schema_version", std::to_string(kCatalogSchemaVersion));
  tx.commit();
}

// Refuses files that are not ours before anything is written to them. A read-only connection
// reads an older schema as it is (only a writer migrates).
void check_identity(SQLite::Database& db, const std::filesystem::path& path,
                    bool may_migrate = true) {
  if (!has_table(db, "meta") || !has_table(db, "images") || !has_table(db, "embeddings")) {
    throw error(path, "not a lookalike catalog (no lookalike meta/images/embeddings tables)");
  }
  auto version_text = meta_value(db, "schema_version");
  if (!version_text) throw error(path, "not a lookalike catalog (meta has no schema_version)");
  int version = 0;
  try {
    version = std::stoi(*version_text);
  } catch (const std::exception&) {
    throw error(path,
                "not a lookalike catalog (schema_version '" + *version_text + "' is not a number)");
  }
  if (version > kCatalogSchemaVersion) {
    throw error(path, "catalog schema version " + std::to_string(version) +
                          " is newer than this lookalike supports (" +
                          std::to_string(kCatalogSchemaVersion) + "); upgrade lookalike");
  }
  if (version < 1) throw error(path, "invalid catalog schema version " + *version_text);
  if (version < kCatalogSchemaVersion && may_migrate) migrate(db, path, version);
}

CatalogConfig parse_config(const std::filesystem::path& path, const std::string& text) {
  try {
    auto j = nlohmann::json::parse(text);
    CatalogConfig c;
    c.model_id = j.at("model_id").get<std::string>();
    c.model_name = j.at("model_name").get<std::string>();
    c.dim = j.at("dim").get<int>();
    c.metric = j.at("metric").get<std::string>();
    c.factory = j.at("factory").get<std::string>();
    return c;
  } catch (const nlohmann::json::exception& e) {
    throw error(path, std::string("meta.config is invalid: ") + e.what());
  }
}

void validate_config(const CatalogConfig& c) {
  if (c.model_id.empty()) throw StoreError("config.model_id: must not be empty");
  if (c.dim < 1) throw StoreError("config.dim: must be positive, got " + std::to_string(c.dim));
  if (c.metric != "cosine" && c.metric != "l2") {
    throw StoreError("config.metric: unknown value '" + c.metric + "' (expected cosine or l2)");
  }
  if (c.factory.empty()) throw StoreError("config.factory: must not be empty");
}

bool same_config(const CatalogConfig& a, const CatalogConfig& b) {
  return a.model_id == b.model_id && a.model_name == b.model_name && a.dim == b.dim &&
         a.metric == b.metric && a.factory == b.factory;
}

void validate_put(const Put& put, std::size_t i, int dim) {
  const std::string where = "put[" + std::to_string(i) + "] (" + put.record.path + "): ";
  if (put.record.path.empty()) throw StoreError("put[" + std::to_string(i) + "]: path is empty");
  if (put.embedding.size() != static_cast<std::size_t>(dim)) {
    throw StoreError(where + "embedding has " + std::to_string(put.embedding.size()) +
                     " floats, the collection's dim is " + std::to_string(dim));
  }
  for (float x : put.embedding) {
    if (!std::isfinite(x)) throw StoreError(where + "embedding has a non-finite value");
  }
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(put.record.metadata);
  } catch (const nlohmann::json::parse_error& e) {
    throw StoreError(where + "metadata is not valid JSON: " + e.what());
  }
  if (!meta.is_object()) {
    throw StoreError(where + "metadata must be a JSON object, got " +
                     std::string(meta.type_name()));
  }
}

}  // namespace

std::unique_ptr<Catalog> Catalog::open(const std::filesystem::path& path, bool create) {
  std::error_code ec;
  if (!create && !std::filesystem::exists(path, ec)) {
    throw error(path, "no such catalog");
  }
  std::unique_ptr<Catalog> c(new Catalog());
  c->path_ = path;
  try {
    int flags = SQLite::OPEN_READWRITE | (create ? SQLite::OPEN_CREATE : 0);
    c->db_ = std::make_unique<SQLite::Database>(path, flags, 5000);
    auto& db = *c->db_;
    // Connection settings only: nothing is written to a file that may turn out not to be ours.
    db.exec("PRAGMA synchronous = FULL");
    db.exec("PRAGMA foreign_keys = ON");
    // The first read is where SQLite notices a file that is not a database.
    bool empty = db.execAndGet("SELECT count(*) FROM sqlite_master").getInt() == 0;
    if (empty && create) {
      initialise(db);
    } else if (empty) {
      throw error(path, "not a lookalike catalog (empty database)");
    } else {
      check_identity(db, path);
      // A writer must not build on a damaged file: quick_check reads every page, O(file size),
      // paid once per write-mode open (readers skip it; `info` runs it, see check_integrity).
      auto verdict = db.execAndGet("PRAGMA quick_check(1)").getString();
      if (verdict != "ok") {
        throw error(path, "catalog is damaged (SQLite quick_check: " + verdict +
                              "); nothing was written. Restore a backup, or recover the rows with "
                              "`sqlite3 catalog.db .recover`");
      }
    }
    db.exec("PRAGMA journal_mode = WAL");  // persistent; a no-op once set
  } catch (const SQLite::Exception& e) {
    if (e.getErrorCode() == SQLITE_NOTADB) {
      throw error(path, std::string("not a lookalike catalog (") + e.what() + ")");
    }
    throw error(path, std::string("cannot open catalog: ") + e.what());
  }
  return c;
}

std::unique_ptr<Catalog> Catalog::open_read_only(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw error(path, "no such catalog");
  std::unique_ptr<Catalog> c(new Catalog());
  c->path_ = path;
  try {
    c->db_ = std::make_unique<SQLite::Database>(path, SQLite::OPEN_READONLY, 5000);
    if (c->db_->execAndGet("SELECT count(*) FROM sqlite_master").getInt() == 0) {
      throw error(path, "not a lookalike catalog (empty database)");
    }
    check_identity(*c->db_, path, /*may_migrate=*/false);
  } catch (const SQLite::Exception& e) {
    if (e.getErrorCode() == SQLITE_NOTADB) {
      throw error(path, std::string("not a lookalike catalog (") + e.what() + ")");
    }
    throw error(path, std::string("cannot open catalog: ") + e.what());
  }
  return c;
}

void Catalog::create_atomic(const std::filesystem::path& path, const CatalogConfig& config) {
  validate_config(config);
  auto tmp = path;
  tmp += ".tmp";
  std::error_code ec;
  std::filesystem::remove(tmp, ec);
  for (const char* suffix : {"-journal", "-wal", "-shm"}) {
    std::filesystem::remove(tmp.string() + suffix, ec);
  }
  try {
    {
      SQLite::Database db(tmp, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE, 5000);
      db.exec("PRAGMA synchronous = FULL");
      initialise(db, /*wal=*/false);  // a rollback journal: the file is complete on its own
      nlohmann::json j = {{"model_id", config.model_id},
                          {"model_name", config.model_name},
                          {"dim", config.dim},
                          {"metric", config.metric},
                          {"factory", config.factory}};
      set_meta(db, "config", j.dump());
      // WAL before the rename: switched later, on catalog.db itself, the header would be
      // rewritten through a rollback journal, and a kill then leaves a hot journal that no
      // read-only connection can roll back ("attempt to write a readonly database").
      db.exec("PRAGMA journal_mode = WAL");
    }  // the last connection closes: the -wal is checkpointed and deleted
    int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ::fsync(fd) != 0) {
      if (fd >= 0) ::close(fd);
      throw error(tmp, std::string("cannot sync: ") + std::strerror(errno));
    }
    ::close(fd);
    std::filesystem::rename(tmp, path);
    auto dir = path.parent_path();
    int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  } catch (const SQLite::Exception& e) {
    std::filesystem::remove(tmp, ec);
    throw error(path, std::string("cannot create catalog: ") + e.what());
  } catch (const std::filesystem::filesystem_error& e) {
    std::filesystem::remove(tmp, ec);
    throw error(path, std::string("cannot create catalog: ") + e.what());
  } catch (const StoreError&) {
    std::filesystem::remove(tmp, ec);
    throw;
  }
}

Catalog::~Catalog() = default;

std::string Catalog::quick_check() const {
  return reading(path_, [&] { return db_->execAndGet("PRAGMA quick_check(1)").getString(); });
}

std::string Catalog::collection_id() const {
  return reading(path_, [&] {
    // A v1 catalog opened read-only has none yet: zeros never match a saved index file.
    return meta_value(*db_, "collection_id").value_or(std::string(32, '0'));
  });
}

namespace {

void check_field(const std::string& field, const std::string& term) {
  auto bad = [&](const std::string& why) { throw StoreError("filter '" + term + "': " + why); };
  if (field.empty()) bad("empty field name (write field=value)");
  if (field.size() > 128) bad("field name longer than 128 bytes");
  for (unsigned char ch : field) {
    if (ch == '"' || ch == '\\' || ch < 0x20)
      bad("field name may not contain '\"', '\\' or control characters");
  }
}

// A JSON path naming the top-level member `field` (quoted, so dots and spaces are literal).
std::string json_path(const std::string& field) { return "$.\"" + field + "\""; }

// One SQL condition per term; binds 3 parameters each (see bind_filter).
std::string filter_sql(const MetadataFilter& filter) {
  std::string sql;
  for (std::size_t i = 0; i < filter.equals.size(); ++i) {
    if (i) sql += " AND ";
    sql += "(json_type(metadata, ?) = ? OR CAST(json_extract(metadata, ?) AS TEXT) = ?)";
  }
  return sql;
}

int bind_filter(SQLite::Statement& q, const MetadataFilter& filter, int at) {
  for (const auto& [field, value] : filter.equals) {
    const std::string path = json_path(field);
    q.bind(at++, path);
    // JSON true/false: json_type says 'true'/'false'; json_extract would give 1/0.
    if (value == "true" || value == "false") {
      q.bind(at++, value);
    } else {
      q.bind(at++);  // NULL: the json_type arm never matches
    }
    q.bind(at++, path);
    q.bind(at++, value);
  }
  return at;
}

}  // namespace

void add_term(MetadataFilter& filter, const std::string& field, const std::string& value) {
  check_field(field, field + "=" + value);
  filter.equals.emplace_back(field, value);
}

MetadataFilter parse_where(const std::vector<std::string>& terms) {
  MetadataFilter f;
  for (const auto& t : terms) {
    const auto eq = t.find('=');
    if (eq == std::string::npos) throw StoreError("filter '" + t + "': expected field=value");
    const std::string field = t.substr(0, eq);
    check_field(field, t);
    f.equals.emplace_back(field, t.substr(eq + 1));
  }
  return f;
}

std::vector<ImageRecord> Catalog::list_page(std::int64_t after_id, int limit,
                                            const MetadataFilter* filter) const {
  return reading(path_, [&] {
    const bool filtered = filter != nullptr && !filter->empty();
    SQLite::Statement q(*db_, std::string("SELECT ") + kImageColumns + " FROM images WHERE id > ?" +
                                  (filtered ? " AND " + filter_sql(*filter) : "") +
                                  " ORDER BY id LIMIT ?");
    int at = 1;
    q.bind(at++, after_id);
    if (filtered) at = bind_filter(q, *filter, at);
    q.bind(at, limit);
    std::vector<ImageRecord> out;
    while (q.executeStep()) out.push_back(read_record(q));
    return out;
  });
}

FilterSnapshot Catalog::matching(const MetadataFilter& filter) const {
  return reading(path_, [&] {
    SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::DEFERRED);
    FilterSnapshot s;
    s.generation = generation();
    SQLite::Statement q(*db_,
                        "SELECT id FROM images" +
                            (filter.empty() ? std::string() : " WHERE " + filter_sql(filter)) +
                            " ORDER BY id");
    bind_filter(q, filter, 1);
    while (q.executeStep()) s.ids.push_back(q.getColumn(0).getInt64());
    tx.commit();
    return s;
  });
}

std::vector<std::pair<std::string, std::int64_t>> Catalog::facet(const std::string& field,
                                                                 int limit) const {
  check_field(field, field);
  return reading(path_, [&] {
    SQLite::Statement q(*db_,
                        "SELECT v, COUNT(*) AS c FROM (SELECT CASE json_type(metadata, ?1) "
                        "WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
                        "ELSE CAST(json_extract(metadata, ?1) AS TEXT) END AS v FROM images) "
                        "WHERE v IS NOT NULL GROUP BY v ORDER BY c DESC, v LIMIT ?2");
    q.bind(1, json_path(field));
    q.bind(2, limit);
    std::vector<std::pair<std::string, std::int64_t>> out;
    while (q.executeStep()) out.emplace_back(q.getColumn(0).getString(), q.getColumn(1).getInt64());
    return out;
  });
}

Snapshot Catalog::snapshot(const std::vector<std::int64_t>& ids) const {
  return reading(path_, [&] {
    SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::DEFERRED);
    Snapshot s;
    s.generation = generation();
    s.records = get_many(ids);
    tx.commit();
    return s;
  });
}

std::vector<std::int64_t> Catalog::ids_under(const std::string& path) const {
  return reading(path_, [&] {
    // [path + "/", path + "0") is every string with the prefix path + "/" ('0' follows '/').
    SQLite::Statement q(*db_,
                        "SELECT id FROM images WHERE path = ?1 OR (path >= ?2 AND path < ?3) "
                        "ORDER BY id");
    q.bind(1, path);
    q.bind(2, path + "/");
    q.bind(3, path + "0");
    std::vector<std::int64_t> out;
    while (q.executeStep()) out.push_back(q.getColumn(0).getInt64());
    return out;
  });
}

bool Catalog::set_metadata(std::int64_t id, const std::string& metadata) {
  auto parsed = nlohmann::json::parse(metadata, nullptr, false);
  if (parsed.is_discarded() || !parsed.is_object()) {
    throw StoreError("metadata of image " + std::to_string(id) + ": must be a JSON object");
  }
  try {
    SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
    SQLite::Statement q(*db_, "UPDATE images SET metadata = ?, updated_at_ms = ? WHERE id = ?");
    q.bind(1, metadata);
    q.bind(2, now_ms());
    q.bind(3, id);
    if (q.exec() == 0) return false;
    db_->exec("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'");
    tx.commit();
    return true;
  } catch (const SQLite::Exception& e) {
    throw error(path_, std::string("metadata update failed, nothing written: ") + e.what());
  }
}

std::optional<CatalogConfig> Catalog::config() const {
  return reading(path_, [&]() -> std::optional<CatalogConfig> {
    auto text = meta_value(*db_, "config");
    if (!text) return std::nullopt;
    return parse_config(path_, *text);
  });
}

void Catalog::set_config(const CatalogConfig& config) {
  validate_config(config);
  try {
    SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
    if (auto text = meta_value(*db_, "config")) {
      if (!same_config(parse_config(path_, *text), config)) {
        throw error(path_, "config is already set to a different one: " + *text);
      }
      return;
    }
    nlohmann::json j = {{"model_id", config.model_id},
                        {"model_name", config.model_name},
                        {"dim", config.dim},
                        {"metric", config.metric},
                        {"factory", config.factory}};
    set_meta(*db_, "config", j.dump());
    tx.commit();
  } catch (const SQLite::Exception& e) {
    throw error(path_, std::string("cannot write config: ") + e.what());
  }
}

std::int64_t Catalog::generation() const {
  return reading(path_, [&] {
    return db_->execAndGet("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'")
        .getInt64();
  });
}

std::int64_t Catalog::count() const {
  return reading(path_, [&] { return db_->execAndGet("SELECT count(*) FROM images").getInt64(); });
}

std::optional<ImageRecord> Catalog::get(std::int64_t id) const {
  return reading(path_, [&]() -> std::optional<ImageRecord> {
    SQLite::Statement q(*db_, std::string("SELECT ") + kImageColumns + " FROM images WHERE id = ?");
    q.bind(1, id);
    if (!q.executeStep()) return std::nullopt;
    return read_record(q);
  });
}

std::vector<ImageRecord> Catalog::get_many(const std::vector<std::int64_t>& ids) const {
  return reading(path_, [&] {
    std::vector<ImageRecord> out;
    if (ids.empty()) return out;
    // One statement for any number of ids: they travel as a JSON array.
    SQLite::Statement q(*db_, std::string("SELECT ") + kImageColumns +
                                  " FROM images WHERE id IN (SELECT value FROM json_each(?))"
                                  " ORDER BY id");
    q.bind(1, nlohmann::json(ids).dump());
    while (q.executeStep()) out.push_back(read_record(q));
    return out;
  });
}

std::optional<ImageRecord> Catalog::find_path(const std::string& path) const {
  return reading(path_, [&]() -> std::optional<ImageRecord> {
    SQLite::Statement q(*db_,
                        std::string("SELECT ") + kImageColumns + " FROM images WHERE path = ?");
    q.bind(1, path);
    if (!q.executeStep()) return std::nullopt;
    return read_record(q);
  });
}

std::vector<ImageRecord> Catalog::find_hash(const std::string& content_hash) const {
  return reading(path_, [&] {
    SQLite::Statement q(*db_, std::string("SELECT ") + kImageColumns +
                                  " FROM images WHERE content_hash = ? ORDER BY id");
    q.bind(1, content_hash);
    std::vector<ImageRecord> out;
    while (q.executeStep()) out.push_back(read_record(q));
    return out;
  });
}

std::vector<ImageRecord> Catalog::list() const {
  return reading(path_, [&] {
    SQLite::Statement q(*db_, std::string("SELECT ") + kImageColumns + " FROM images ORDER BY id");
    std::vector<ImageRecord> out;
    while (q.executeStep()) out.push_back(read_record(q));
    return out;
  });
}

namespace {
// Decodes and checks one stored vector blob; throws StoreError for a wrong size.
std::vector<float> read_vector(const std::filesystem::path& path, SQLite::Column blob,
                               std::int64_t id, int dim) {
  if (blob.getBytes() != dim * 4) {
    throw error(path, "embedding of image " + std::to_string(id) + " has " +
                          std::to_string(blob.getBytes()) + " bytes, expected " +
                          std::to_string(dim * 4));
  }
  std::vector<float> v(static_cast<std::size_t>(dim));
  decode_vector(blob.getBlob(), v.size(), v.data());
  return v;
}
}  // namespace

std::optional<std::vector<float>> Catalog::embedding(std::int64_t id) const {
  return reading(path_, [&]() -> std::optional<std::vector<float>> {
    auto cfg = config();
    if (!cfg) return std::nullopt;
    SQLite::Statement q(*db_, "SELECT vector FROM embeddings WHERE image_id = ? AND model_id = ?");
    q.bind(1, id);
    q.bind(2, cfg->model_id);
    if (!q.executeStep()) return std::nullopt;
    auto v = read_vector(path_, q.getColumn(0), id, cfg->dim);
    if (auto why = vector_problem(v.data(), cfg->dim, cfg->metric == "cosine")) {
      auto rec = get(id);
      throw error(path_, "image " + std::to_string(id) + (rec ? " (" + rec->path + ")" : "") +
                             ": stored " + *why + "; re-index the file to repair it");
    }
    return v;
  });
}

std::optional<std::vector<float>> Catalog::embedding_by_hash(
    const std::string& content_hash) const {
  return reading(path_, [&]() -> std::optional<std::vector<float>> {
    auto cfg = config();
    if (!cfg) return std::nullopt;
    SQLite::Statement q(*db_,
                        "SELECT e.image_id, e.vector FROM images i JOIN embeddings e ON "
                        "e.image_id = i.id AND e.model_id = ? WHERE i.content_hash = ? "
                        "ORDER BY i.id");
    q.bind(1, cfg->model_id);
    q.bind(2, content_hash);
    while (q.executeStep()) {
      auto v = read_vector(path_, q.getColumn(1), q.getColumn(0).getInt64(), cfg->dim);
      if (!vector_problem(v.data(), cfg->dim, cfg->metric == "cosine")) return v;
    }
    return std::nullopt;
  });
}

std::vector<std::int64_t> Catalog::write_batch(const std::vector<Put>& puts,
                                               const std::vector<std::int64_t>& removes) {
  if (puts.empty() && removes.empty()) return {};
  auto cfg = config();
  if (!cfg) throw error(path_, "catalog has no config yet; cannot add images");
  for (std::size_t i = 0; i < puts.size(); ++i) validate_put(puts[i], i, cfg->dim);

  std::vector<std::int64_t> ids;
  try {
    SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
    SQLite::Statement del(*db_, "DELETE FROM images WHERE id = ?");
    for (auto id : removes) {
      del.bind(1, id);
      del.exec();
      del.reset();
    }
    SQLite::Statement upsert(
        *db_,
        "INSERT INTO images(path, content_hash, bytes, width, height, mtime_ns, metadata, "
        "added_at_ms, updated_at_ms) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(path) DO UPDATE SET content_hash = excluded.content_hash, "
        "bytes = excluded.bytes, width = excluded.width, height = excluded.height, "
        "mtime_ns = excluded.mtime_ns, metadata = excluded.metadata, "
        "updated_at_ms = excluded.updated_at_ms RETURNING id");
    SQLite::Statement vec(*db_,
                          "INSERT OR REPLACE INTO embeddings(image_id, model_id, vector) "
                          "VALUES(?, ?, ?)");
    const std::int64_t now = now_ms();
    for (const auto& put : puts) {
      const auto& r = put.record;
      upsert.bind(1, r.path);
      upsert.bind(2, r.content_hash);
      upsert.bind(3, r.bytes);
      upsert.bind(4, r.width);
      upsert.bind(5, r.height);
      upsert.bind(6, r.mtime_ns);
      upsert.bind(7, r.metadata);
      upsert.bind(8, r.added_at_ms > 0 ? r.added_at_ms : now);
      upsert.bind(9, now);
      upsert.executeStep();
      std::int64_t id = upsert.getColumn(0).getInt64();
      upsert.reset();
      ids.push_back(id);

      std::string blob = encode_vector(put.embedding);
      vec.bind(1, id);
      vec.bind(2, cfg->model_id);
      vec.bind(3, blob.data(), static_cast<int>(blob.size()));
      vec.exec();
      vec.reset();
    }
    db_->exec("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'");
    tx.commit();
  } catch (const SQLite::Exception& e) {
    throw error(path_, std::string("write failed, nothing written: ") + e.what());
  }
  return ids;
}

std::int64_t Catalog::for_each_embedding(const std::function<void(std::int64_t, const float*)>& fn,
                                         std::vector<CorruptVector>* corrupt) const {
  return reading(path_, [&] {
    auto cfg = config();
    if (!cfg) return generation();
    const bool cosine = cfg->metric == "cosine";
    // A read transaction pins one WAL snapshot, so the generation matches the vectors.
    SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::DEFERRED);
    std::int64_t gen = generation();
    SQLite::Statement q(*db_,
                        "SELECT image_id, vector FROM embeddings WHERE model_id = ? "
                        "ORDER BY image_id");
    q.bind(1, cfg->model_id);
    while (q.executeStep()) {
      const std::int64_t id = q.getColumn(0).getInt64();
      auto v = read_vector(path_, q.getColumn(1), id, cfg->dim);
      if (auto why = vector_problem(v.data(), cfg->dim, cosine)) {
        if (corrupt) corrupt->push_back({id, *why});
        continue;
      }
      fn(id, v.data());
    }
    tx.commit();
    return gen;
  });
}

}  // namespace lookalike::store
