#include "store/catalog.h"

#include <SQLiteCpp/SQLiteCpp.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <string_view>
#include <thread>
#include <unordered_set>

#include "store/wal_check.h"

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
    // 2 -> 3: the metadata_terms side table, built from the rows already there (kTermsTable).
    nullptr,
    // 3 -> 4: the perceptual hash columns (migrate_to_4), NULL for the rows already there:
    // computing them needs every file, so `duplicates` fills them lazily.
    nullptr,
    // 4 -> 5: meta.preprocess and meta.preprocess_fingerprint stay absent: only a model knows its
    // preprocessing, so the first one that opens the catalog for writing records its own
    // (Catalog::set_preprocess; run_migration does nothing for this step).
    nullptr,
};
static_assert(std::size(kMigrations) == kCatalogSchemaVersion - 1);

// One row per (image, top-level field, scalar value): a field holding an array has a row per
// distinct scalar element. value: the text equality compares (a string's characters, a
// number's SQLite text form, true/false); num: the value as a number when it is a JSON number or
// a string that parses fully as a finite one (lookalike_number), else NULL. The primary key
// clusters an image's rows (rewritten by every put) and answers per-image probes; the two
// indexes answer equality/IN and ranges by field.
constexpr const char* kTermsTable = R"sql(
CREATE TABLE IF NOT EXISTS metadata_terms(
  image_id INTEGER NOT NULL,
  field    TEXT NOT NULL,
  value    TEXT NOT NULL,
  num      REAL,
  PRIMARY KEY (image_id, field, value)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metadata_terms_value ON metadata_terms(field, value, image_id);
CREATE INDEX IF NOT EXISTS metadata_terms_num ON metadata_terms(field, num, image_id) WHERE num IS NOT NULL;
)sql";

// The (image_id, field, value, num) rows of metadata objects, as one SELECT: `from` joins the
// source of the JSON text `meta` (e.g. "images AS i, "), `id` names the image, `where` narrows
// the source. One definition for writes, the migration and the JSON1 fallback of a read-only
// pre-v3 catalog, so all three agree on what a value is.
std::string term_rows_sql(const std::string& from, const std::string& meta, const std::string& id,
                          const std::string& where) {
  auto arm = [&](const char* x, const std::string& join, const std::string& cond) {
    const std::string t = std::string(x) + ".type";
    const std::string a = std::string(x) + ".atom";
    return "SELECT " + id + " AS image_id, j.key AS field, CASE " + t +
           " WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' ELSE CAST(" + a +
           " AS TEXT) END AS value, CASE WHEN " + t + " IN ('integer', 'real') THEN CAST(" + a +
           " AS REAL) WHEN " + t + " = 'text' THEN lookalike_number(" + a + ") END AS num FROM " +
           from + "json_each(" + meta + ") AS j" + join + " WHERE " + where + cond + " AND " + t +
           " IN ('text', 'integer', 'real', 'true', 'false')";
  };
  return arm("j", "", "1") + " UNION ALL " +
         arm("e", ", json_each(j.value) AS e", "j.type = 'array'");
}

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
  // Stored as SQLite's signed 64-bit integers, bit for bit.
  if (!q.getColumn(10).isNull() && !q.getColumn(11).isNull() && !q.getColumn(12).isNull()) {
    r.picture_hash = StoredPictureHash{static_cast<std::uint64_t>(q.getColumn(10).getInt64()),
                                       static_cast<std::uint64_t>(q.getColumn(11).getInt64()),
                                       static_cast<std::uint64_t>(q.getColumn(12).getInt64())};
  }
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

// A string "parses fully as a finite number": optional sign, digits with an optional
// fraction and exponent, nothing before or after (no spaces, hex, inf or nan). from_chars, so
// the locale's decimal point never matters.
std::optional<double> parse_number(std::string_view s) {
  if (!s.empty() && s.front() == '+') s.remove_prefix(1);
  if (s.empty() || s.find_first_not_of("0123456789+-.eE") != std::string_view::npos) {
    return std::nullopt;
  }
  double v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

// SQL lookalike_number(text): parse_number's value or NULL. Every connection registers it: the
// side table's writes, the migration and the JSON1 fallback call it.
void number_function(sqlite3_context* ctx, int, sqlite3_value** argv) {
  const auto* text = reinterpret_cast<const char*>(sqlite3_value_text(argv[0]));
  if (!text) return sqlite3_result_null(ctx);
  auto v =
      parse_number(std::string_view(text, static_cast<std::size_t>(sqlite3_value_bytes(argv[0]))));
  if (v) {
    sqlite3_result_double(ctx, *v);
  } else {
    sqlite3_result_null(ctx);
  }
}

void register_functions(SQLite::Database& db) {
  int rc = sqlite3_create_function_v2(db.getHandle(), "lookalike_number", 1,
                                      SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS,
                                      nullptr, number_function, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) throw SQLite::Exception(db.getHandle(), rc);
}

// The 2 -> 3 step: the side table, filled from every existing row in the same transaction.
// Rebuilt from scratch if one is there already (a catalog aged back by hand, or rows written by
// something that did not keep it): the images rows are the truth.
void migrate_to_3(SQLite::Database& db) {
  db.exec(kTermsTable);
  db.exec("DELETE FROM metadata_terms");
  db.exec("INSERT OR IGNORE INTO metadata_terms(image_id, field, value, num) " +
          term_rows_sql("images AS i, ", "i.metadata", "i.id", ""));
}

// ?1: the image id, ?2: its metadata text.
const std::string kInsertTerms =
    "INSERT OR IGNORE INTO metadata_terms(image_id, field, value, num) " +
    term_rows_sql("", "?2", "?1", "");

// Replaces the side-table rows of `id`; inside the caller's write transaction.
void write_terms(SQLite::Database& db, std::int64_t id, const std::string& metadata) {
  SQLite::Statement del(db, "DELETE FROM metadata_terms WHERE image_id = ?");
  del.bind(1, id);
  del.exec();
  SQLite::Statement add(db, kInsertTerms);
  add.bind(1, id);
  add.bind(2, metadata);
  add.exec();
}

bool has_column(SQLite::Database& db, const char* table, const char* column) {
  SQLite::Statement q(db, "SELECT 1 FROM pragma_table_info(?) WHERE name = ?");
  q.bind(1, table);
  q.bind(2, column);
  return q.executeStep();
}

// The 3 -> 4 step. ALTER TABLE is transactional in SQLite: a kill leaves version 3 without the
// columns or version 4 with them. A catalog aged back by hand may have them already.
void migrate_to_4(SQLite::Database& db) {
  for (const char* column : {"phash", "phash_95", "phash_90"}) {
    if (!has_column(db, "images", column)) {
      db.exec(std::string("ALTER TABLE images ADD COLUMN ") + column + " INTEGER");
    }
  }
}

void run_migration(SQLite::Database& db, int from) {
  if (from == 2) return migrate_to_3(db);
  if (from == 3) return migrate_to_4(db);
  if (from == 4) return;  // nothing to add (kMigrations)
  db.exec(kMigrations[from - 1]);
}

void initialise(SQLite::Database& db, bool wal = true) {
  if (wal) db.exec("PRAGMA journal_mode = WAL");
  SQLite::Transaction tx(db, SQLite::TransactionBehavior::IMMEDIATE);
  db.exec(kSchemaV1);
  for (int v = 1; v < kCatalogSchemaVersion; ++v) run_migration(db, v);
  db.exec("PRAGMA application_id = " + std::to_string(kApplicationId));
  set_meta(db, "schema_version", std::to_string(kCatalogSchemaVersion));
  set_meta(db, "created_at", std::to_string(now_ms()));
  set_meta(db, "generation", "0");
  tx.commit();
}

void migrate(SQLite::Database& db, const std::filesystem::path& path, int from) {
  SQLite::Transaction tx(db, SQLite::TransactionBehavior::IMMEDIATE);
  for (int v = from; v < kCatalogSchemaVersion; ++v) {
    if (v - 1 >= static_cast<int>(std::size(kMigrations))) {
      throw error(path, "no migration from catalog schema version " + std::to_string(v));
    }
    run_migration(db, v);
  }
  set_meta(db, "schema_version", std::to_string(kCatalogSchemaVersion));
  tx.commit();
}

// Refuses files that are not ours before anything is written to them; returns the schema
// version. Reads only: a writer migrates an older schema (migrate) once the file has passed
// quick_check, and a read-only connection reads it as it is.
int check_identity(SQLite::Database& db, const std::filesystem::path& path) {
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
  return version;
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

bool is_json_object(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  return !j.is_discarded() && j.is_object();
}

// Both empty (nothing recorded; allowed when `optional`), or a canonical text and a fingerprint
// of 16 lowercase hex digits.
void check_preprocess(const std::string& canonical, const std::string& fingerprint, bool optional) {
  if (optional && canonical.empty() && fingerprint.empty()) return;
  if (canonical.empty()) throw StoreError("config.preprocess: must not be empty");
  if (fingerprint.size() != 16 ||
      fingerprint.find_first_not_of("0123456789abcdef") != std::string::npos) {
    throw StoreError("config.preprocess_fingerprint: expected 16 lowercase hex digits, got '" +
                     fingerprint + "'");
  }
}

void validate_config(const CatalogConfig& c) {
  if (c.model_id.empty()) throw StoreError("config.model_id: must not be empty");
  if (c.dim < 1) throw StoreError("config.dim: must be positive, got " + std::to_string(c.dim));
  if (c.metric != "cosine" && c.metric != "l2") {
    throw StoreError("config.metric: unknown value '" + c.metric + "' (expected cosine or l2)");
  }
  if (c.factory.empty()) throw StoreError("config.factory: must not be empty");
  if (!is_json_object(c.search_defaults)) {
    throw StoreError("config.search_defaults: must be a JSON object, got '" + c.search_defaults +
                     "'");
  }
  check_preprocess(c.preprocess, c.preprocess_fingerprint, /*optional=*/true);
}

void write_config(SQLite::Database& db, const CatalogConfig& c) {
  nlohmann::json j = {{"model_id", c.model_id},
                      {"model_name", c.model_name},
                      {"dim", c.dim},
                      {"metric", c.metric},
                      {"factory", c.factory}};
  set_meta(db, "config", j.dump());
  set_meta(db, "search_defaults", c.search_defaults);
  // Recorded once (create_atomic, set_config, set_preprocess) and kept by set_index_config,
  // whose config, read back by parse_config, carries none.
  if (!c.preprocess_fingerprint.empty()) {
    set_meta(db, "preprocess", c.preprocess);
    set_meta(db, "preprocess_fingerprint", c.preprocess_fingerprint);
  }
}

bool same_config(const CatalogConfig& a, const CatalogConfig& b) {
  return a.model_id == b.model_id && a.model_name == b.model_name && a.dim == b.dim &&
         a.metric == b.metric && a.factory == b.factory;
}

}  // namespace

// The checks made on every vector written and read back (a flipped byte must not be used
// silently, and a write must not store what a read would leave out).
std::optional<std::string> vector_problem(const float* v, std::size_t n, int dim, bool cosine) {
  if (n != static_cast<std::size_t>(dim)) {
    return "embedding has " + std::to_string(n) + " floats, not " + std::to_string(dim);
  }
  double sq = 0;
  for (std::size_t i = 0; i < n; ++i) {
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

namespace {

// Refuses a put that must not be stored: the message names the catalog, the put (its index in
// the batch, its path, and the image id when the path is stored already) and the reason.
void validate_put(const Catalog& catalog, const Put& put, std::size_t i, const CatalogConfig& cfg) {
  auto refuse = [&](const std::string& why) {
    std::string who = "put[" + std::to_string(i) + "]";
    if (!put.record.path.empty()) {
      who += " (" + put.record.path;
      std::optional<std::int64_t> id;
      if (put.keep_id) {
        id = put.record.id;
      } else if (auto stored = catalog.find_path(put.record.path)) {
        id = stored->id;
      }
      if (id) who += ", image " + std::to_string(*id);
      who += ")";
    }
    return error(catalog.path(), who + ": " + why + "; nothing written");
  };
  if (put.record.path.empty()) throw refuse("path is empty");
  if (auto why = vector_problem(put.embedding.data(), put.embedding.size(), cfg.dim,
                                cfg.metric == "cosine")) {
    throw refuse(*why);
  }
  if (auto why = metadata_problem(put.record.metadata)) throw refuse(*why);
}

}  // namespace

namespace {

// The advice every message about a damaged catalog ends with.
constexpr const char* kRestoreAdvice =
    "Restore a backup, or recover the rows with `sqlite3 catalog.db .recover`";

// SQLite's error on opening or first reading a catalog, in words that say what to do: a file
// SQLite cannot read as a database (a zeroed header, a truncated file) is a damaged catalog.
StoreError open_error(const std::filesystem::path& path, const SQLite::Exception& e) {
  const int code = e.getErrorCode() & 0xff;  // the primary code of an extended one
  if (code == SQLITE_NOTADB) {
    return error(path, std::string("not a lookalike catalog (") + e.what() +
                           "): the catalog is damaged, or the file is not one; nothing was "
                           "written. " +
                           kRestoreAdvice);
  }
  if (code == SQLITE_CORRUPT) {
    return error(path, std::string("catalog is damaged (") + e.what() + "); nothing was written. " +
                           kRestoreAdvice);
  }
  return error(path, std::string("cannot open catalog: ") + e.what());
}

// A file: URI for `path` (SQLite's URI rules: '%', '?' and '#' are percent-encoded).
std::string file_uri(const std::filesystem::path& path) {
  std::string out = "file:";
  for (unsigned char ch : std::filesystem::absolute(path).string()) {
    if (ch == '%' || ch == '?' || ch == '#' || ch < 0x21 || ch >= 0x7f) {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", ch);
      out += buf;
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out;
}

// Whether this process may create files beside `path` (the -shm a WAL reader needs).
bool folder_writable(const std::filesystem::path& path) {
  const auto dir = path.parent_path();
  return ::access(dir.empty() ? "." : dir.c_str(), W_OK) == 0;
}

// Whether catalog.db-wal holds data (commits that catalog.db alone lacks, or may lack).
bool wal_holds_data(const std::filesystem::path& path) {
  std::error_code ec;
  const auto bytes = std::filesystem::file_size(path.string() + "-wal", ec);
  return !ec && bytes > 0;
}

// Why a reader cannot open a catalog in a folder it cannot write, and what to do.
StoreError read_only_error(const std::filesystem::path& path, const SQLite::Exception& e) {
  return error(path, std::string("cannot open catalog: ") + e.what() +
                         ": its folder is read-only and catalog.db-wal holds commits that are "
                         "not in catalog.db yet (the collection was not closed cleanly); open "
                         "it once where its folder is writable (any lookalike command), or "
                         "copy the folder to writable storage");
}

// Opens and identifies a catalog read-only; `immutable`: through SQLite's immutable=1 URI
// parameter (no locks, no -shm, no -wal).
std::unique_ptr<SQLite::Database> open_reader(const std::filesystem::path& path, bool immutable) {
  auto db = immutable
                ? std::make_unique<SQLite::Database>(file_uri(path) + "?immutable=1",
                                                     SQLite::OPEN_READONLY | SQLite::OPEN_URI, 5000)
                : std::make_unique<SQLite::Database>(path, SQLite::OPEN_READONLY, 5000);
  register_functions(*db);
  if (db->execAndGet("SELECT count(*) FROM sqlite_master").getInt() == 0) {
    throw error(path, "not a lookalike catalog (empty database)");
  }
  check_identity(*db, path);  // an older schema is read as it is
  return db;
}

// Refuses a catalog whose write-ahead log SQLite would replay only in part, silently dropping
// committed transactions (store/wal_check.h). A WAL that a live writer changes while it is read
// can look damaged (a frame half appended, or the file restarted from its first frame after a
// checkpoint while older frames still follow), so only a WAL that no one changes is judged: the
// same size and modification time before and after two reads 50 ms apart, which found the same
// damage. A damaged WAL has no live writer: SQLite overwrites the dropped frames on its next
// write.
void refuse_damaged_wal(const std::filesystem::path& path) {
  const std::filesystem::path wal = path.string() + "-wal";
  using Stamp = std::pair<std::int64_t, std::int64_t>;  // size, mtime in ns
  auto stamp = [&]() -> std::optional<Stamp> {
    struct stat st {};
    if (::stat(wal.c_str(), &st) != 0) return std::nullopt;
    return Stamp{st.st_size, st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec};
  };
  auto check = [&]() -> std::optional<WalDamage> {
    try {
      return check_wal(wal);
    } catch (const std::runtime_error&) {
      return std::nullopt;  // unreadable: SQLite's own open reports it
    }
  };
  const auto before = stamp();
  const auto first = check();
  if (!first || !before || stamp() != before) return;
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto damage = check();
  if (damage != first || stamp() != before) return;
  throw error(wal, "frame " + std::to_string(damage->frame + 1) + " of " +
                       std::to_string(damage->frames) +
                       " fails its checksum, and SQLite would drop the " +
                       std::to_string(damage->lost_commits) +
                       " committed transactions after it without a word (images added, edited "
                       "or removed since the last checkpoint); nothing was opened. Keep a copy of "
                       "the collection folder. To accept the loss, run `sqlite3 " +
                       path.string() +
                       " 'PRAGMA wal_checkpoint(TRUNCATE)'`, which keeps the commits before that "
                       "frame, then run the command again");
}

}  // namespace

std::unique_ptr<Catalog> Catalog::open(const std::filesystem::path& path, bool create) {
  std::error_code ec;
  if (!create && !std::filesystem::exists(path, ec)) {
    throw error(path, "no such catalog");
  }
  refuse_damaged_wal(path);
  std::unique_ptr<Catalog> c(new Catalog());
  c->path_ = path;
  try {
    int flags = SQLite::OPEN_READWRITE | (create ? SQLite::OPEN_CREATE : 0);
    c->db_ = std::make_unique<SQLite::Database>(path, flags, 5000);
    auto& db = *c->db_;
    register_functions(db);
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
      const int version = check_identity(db, path);
      // A writer must not build on a damaged file: quick_check reads every page, O(file size),
      // paid once per write-mode open (readers skip it; `info` runs it, see check_integrity).
      // It runs before anything is written, the migration of an older schema included.
      auto verdict = db.execAndGet("PRAGMA quick_check(1)").getString();
      if (verdict != "ok") {
        throw error(path, "catalog is damaged (SQLite quick_check: " + verdict +
                              "); nothing was written. " + kRestoreAdvice);
      }
      if (version < kCatalogSchemaVersion) migrate(db, path, version);
    }
    db.exec("PRAGMA journal_mode = WAL");  // persistent; a no-op once set
  } catch (const SQLite::Exception& e) {
    throw open_error(path, e);
  }
  return c;
}

std::unique_ptr<Catalog> Catalog::open_read_only(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw error(path, "no such catalog");
  refuse_damaged_wal(path);
  std::unique_ptr<Catalog> c(new Catalog());
  c->path_ = path;
  try {
    c->db_ = open_reader(path, false);
  } catch (const SQLite::Exception& e) {
    // A WAL reader needs catalog.db-shm, which SQLite cannot create in a read-only folder
    // ("unable to open database file"): a cleanly closed catalog is whole in catalog.db alone,
    // and reads as an immutable file there.
    if ((e.getErrorCode() & 0xff) != SQLITE_CANTOPEN || !std::filesystem::exists(path, ec)) {
      throw open_error(path, e);
    }
    if (folder_writable(path)) throw open_error(path, e);
    // immutable=1 ignores the WAL, so only a cleanly closed catalog reads so. No writer can
    // run meanwhile: it could not create its lock file in this folder either.
    if (wal_holds_data(path)) throw read_only_error(path, e);
    try {
      c->db_ = open_reader(path, true);
    } catch (const SQLite::Exception& again) {
      throw open_error(path, again);
    }
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
      register_functions(db);
      initialise(db, /*wal=*/false);  // a rollback journal: the file is complete on its own
      write_config(db, config);
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

void Catalog::checkpoint() {
  try {
    SQLite::Statement q(*db_, "PRAGMA wal_checkpoint(TRUNCATE)");
    // One row: busy (1 when a reader kept it from finishing), WAL frames, frames checkpointed.
    if (q.executeStep() && q.getColumn(0).getInt() != 0) {
      throw error(path_, "WAL checkpoint incomplete: another connection is reading (" +
                             std::to_string(q.getColumn(2).getInt()) + " of " +
                             std::to_string(q.getColumn(1).getInt()) +
                             " WAL frames copied); catalog.db-wal keeps the rest");
    }
  } catch (const SQLite::Exception& e) {
    throw error(path_, std::string("WAL checkpoint failed: ") + e.what());
  }
}

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

std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return {};
  const auto e = s.find_last_not_of(" \t");
  return std::string(s.substr(b, e - b + 1));
}

const char* op_text(FilterOp op) {
  switch (op) {
    case FilterOp::Lt:
      return "<";
    case FilterOp::Le:
      return "<=";
    case FilterOp::Gt:
      return ">";
    case FilterOp::Ge:
      return ">=";
    default:
      return "=";
  }
}

constexpr const char* kSupported =
    "supported: field=value, field IN [a, b], field<N, field<=N, field>N, field>=N";

// An '=' term whose field or value shows another language's operator: "a==b", "a!=b", "a=<5",
// "a=>5", "a~=b", ... These would otherwise match nothing without a word (value "=b", field
// "a!"). A value that really starts with '=', '<' or '>' can be given quoted in an IN list.
void refuse_unsupported_operator(const std::string& t, const std::string& field,
                                 const std::string& value) {
  auto bad = [&](const std::string& op, const std::string& hint) {
    throw StoreError("filter '" + t + "': " + op + " is not supported" + hint + "; " + kSupported);
  };
  if (!field.empty() && std::string_view("!~^$*:|").find(field.back()) != std::string::npos) {
    if (field.back() == '!') bad("!= (not equal)", "");
    bad(std::string(1, field.back()) + "=", "");
  }
  if (value.starts_with('=')) bad("==", " (write field=value)");
  if (value.starts_with('<')) bad("=<", " (write field<=N)");
  if (value.starts_with('>')) bad("=>", " (write field>=N)");
}

// Where an IN keyword starts: whitespace, "in" in any case, optional whitespace, then '['.
// Returns the offset of the first whitespace character, or npos.
std::size_t find_in_keyword(const std::string& t) {
  for (std::size_t i = 0; i < t.size(); ++i) {
    if (t[i] != ' ' && t[i] != '\t') continue;
    std::size_t k = i;
    while (k < t.size() && (t[k] == ' ' || t[k] == '\t')) ++k;
    if (k + 2 > t.size() || std::tolower(static_cast<unsigned char>(t[k])) != 'i' ||
        std::tolower(static_cast<unsigned char>(t[k + 1])) != 'n') {
      i = k - 1;
      continue;
    }
    k += 2;
    while (k < t.size() && (t[k] == ' ' || t[k] == '\t')) ++k;
    if (k < t.size() && t[k] == '[') return i;
  }
  return std::string::npos;
}

// The items of "[a, "b,c", d]" starting at `open` (the '[').
std::vector<std::string> parse_list(const std::string& t, std::size_t open) {
  auto bad = [&](const std::string& why) { throw StoreError("filter '" + t + "': " + why); };
  std::vector<std::string> items;
  std::size_t i = open + 1;
  auto skip_space = [&] {
    while (i < t.size() && (t[i] == ' ' || t[i] == '\t')) ++i;
  };
  skip_space();
  if (i < t.size() && t[i] == ']') bad("IN needs at least one value");
  for (;;) {
    skip_space();
    if (i >= t.size()) bad("IN list has no closing ']'");
    if (t[i] == '"') {
      std::string item;
      ++i;
      for (;; ++i) {
        if (i >= t.size()) bad("unterminated quoted value in IN list");
        if (t[i] == '"') break;
        if (t[i] == '\\' && i + 1 < t.size() && (t[i + 1] == '"' || t[i + 1] == '\\')) ++i;
        item += t[i];
      }
      ++i;
      items.push_back(std::move(item));
      skip_space();
    } else {
      const auto end = t.find_first_of(",]", i);
      if (end == std::string::npos) bad("IN list has no closing ']'");
      std::string item = trim(std::string_view(t).substr(i, end - i));
      if (item.empty()) bad("empty value in IN list (quote it: \"\")");
      if (item.find_first_of("\"[") != std::string::npos) {
        bad("value '" + item + "' in IN list holds '\"' or '['; quote it");
      }
      items.push_back(std::move(item));
      i = end;
    }
    if (i >= t.size()) bad("IN list has no closing ']'");
    if (t[i] == ']') break;
    if (t[i] != ',') bad("expected ',' or ']' after a value in the IN list");
    ++i;
  }
  if (!trim(std::string_view(t).substr(i + 1)).empty()) bad("text after the IN list's ']'");
  return items;
}

// The condition a term puts on a metadata_terms row (columns field, value, num), with '?'
// placeholders that bind_term fills. `probe`: for a lookup by image_id, where '+num' keeps
// SQLite on the primary key instead of scanning the whole range in metadata_terms_num.
std::string term_cond(const FilterTerm& t, bool probe = false) {
  switch (t.op) {
    case FilterOp::Eq:
      return "field = ? AND value = ?";
    case FilterOp::In: {
      std::string sql = "field = ? AND value IN (";
      for (std::size_t i = 0; i < t.values.size(); ++i) sql += i ? ", ?" : "?";
      return sql + ")";
    }
    default:
      return std::string("field = ? AND ") + (probe ? "+num " : "num ") + op_text(t.op) + " ?";
  }
}

int bind_term(SQLite::Statement& q, const FilterTerm& t, int at) {
  q.bind(at++, t.field);
  if (t.op == FilterOp::Eq || t.op == FilterOp::In) {
    for (const auto& v : t.values) q.bind(at++, v);
  } else {
    q.bind(at++, t.number);
  }
  return at;
}

const char* term_index(const FilterTerm& t) {
  return t.op == FilterOp::Eq || t.op == FilterOp::In ? "metadata_terms_value"
                                                      : "metadata_terms_num";
}

// The JSON1 form of a filter, a condition on an `images` row: each term against the rows the
// side table would hold for it (term_rows_sql). O(fields) per image.
std::string json1_sql(const MetadataFilter& filter) {
  const std::string rows = term_rows_sql("", "images.metadata", "0", "");
  std::string sql;
  for (std::size_t i = 0; i < filter.terms.size(); ++i) {
    if (i) sql += " AND ";
    sql += "EXISTS (SELECT 1 FROM (" + rows + ") WHERE " + term_cond(filter.terms[i]) + ")";
  }
  return sql;
}

int bind_filter(SQLite::Statement& q, const MetadataFilter& filter, int at) {
  for (const auto& t : filter.terms) at = bind_term(q, t, at);
  return at;
}

// Side-table rows of `t` with image_id > after, counting at most `cap`: how rare a term is,
// without reading all of a common one.
std::int64_t capped_rows(SQLite::Database& db, const FilterTerm& t, std::int64_t after,
                         std::int64_t cap) {
  SQLite::Statement q(db, std::string("SELECT count(*) FROM (SELECT 1 FROM metadata_terms ") +
                              "INDEXED BY " + term_index(t) + " WHERE " + term_cond(t) +
                              " AND image_id > ? LIMIT ?)");
  int at = bind_term(q, t, 1);
  q.bind(at++, after);
  q.bind(at, cap);
  q.executeStep();
  return q.getColumn(0).getInt64();
}

// The ids `t` selects with id > after, ascending.
std::vector<std::int64_t> term_ids(SQLite::Database& db, const FilterTerm& t, std::int64_t after) {
  SQLite::Statement q(db, std::string("SELECT image_id FROM metadata_terms INDEXED BY ") +
                              term_index(t) + " WHERE " + term_cond(t) + " AND image_id > ?");
  q.bind(bind_term(q, t, 1), after);
  std::vector<std::int64_t> ids;
  while (q.executeStep()) ids.push_back(q.getColumn(0).getInt64());
  // One value's rows come in id order; several values, a range or an array's elements do not.
  if (t.op != FilterOp::Eq) {
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  }
  return ids;
}

constexpr std::int64_t kUnknownRows = std::numeric_limits<std::int64_t>::max();

// Row counts of the terms, found by raising a common cap (4096, x8, ...) until some term is
// under it or the cap passes `max_cap`: O(terms x rarest term's rows). Terms over the last cap
// are kUnknownRows.
std::vector<std::int64_t> term_rows(SQLite::Database& db, const MetadataFilter& f,
                                    std::int64_t after, std::int64_t max_cap) {
  std::vector<std::int64_t> rows(f.terms.size(), kUnknownRows);
  for (std::int64_t cap = 4096;; cap *= 8) {
    bool found = false;
    for (std::size_t i = 0; i < f.terms.size(); ++i) {
      auto n = capped_rows(db, f.terms[i], after, cap);
      if (n < cap) {
        rows[i] = n;
        found = true;
      }
    }
    if (found || cap >= max_cap) return rows;
  }
}

// Ids (ascending, > after) matching every term, through the side table: the rarest term's
// ids, narrowed by each other term, rarest first: by a primary-key probe per candidate when
// the candidates are few next to the term's rows, else by merging with the term's ids.
std::vector<std::int64_t> resolve(SQLite::Database& db, const MetadataFilter& f, std::int64_t after,
                                  const std::vector<std::int64_t>& rows) {
  std::vector<std::size_t> order(f.terms.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return rows[a] < rows[b]; });
  auto ids = term_ids(db, f.terms[order[0]], after);
  for (std::size_t k = 1; k < order.size() && !ids.empty(); ++k) {
    const auto& t = f.terms[order[k]];
    std::vector<std::int64_t> kept;
    if (rows[order[k]] / 8 > static_cast<std::int64_t>(ids.size())) {
      SQLite::Statement probe(db, "SELECT 1 FROM metadata_terms WHERE image_id = ? AND " +
                                      term_cond(t, true) + " LIMIT 1");
      for (auto id : ids) {
        probe.bind(1, id);
        bind_term(probe, t, 2);
        if (probe.executeStep()) kept.push_back(id);
        probe.reset();
      }
    } else {
      auto other = term_ids(db, t, after);
      std::set_intersection(ids.begin(), ids.end(), other.begin(), other.end(),
                            std::back_inserter(kept));
    }
    ids = std::move(kept);
  }
  return ids;
}

}  // namespace

bool Catalog::terms_indexed() const {
  if (!terms_indexed_) terms_indexed_ = has_table(*db_, "metadata_terms");
  return terms_indexed_;
}

bool Catalog::hashes_stored() const {
  if (!hashes_stored_) hashes_stored_ = has_column(*db_, "images", "phash");
  return hashes_stored_;
}

std::string Catalog::image_columns() const {
  return std::string(kImageColumns) + (hashes_stored()
                                           ? ", phash, phash_95, phash_90"
                                           : ", NULL AS phash, NULL AS phash_95, NULL AS phash_90");
}

void add_term(MetadataFilter& filter, const std::string& field, const std::string& value) {
  check_field(field, field + "=" + value);
  filter.terms.push_back({field, FilterOp::Eq, {value}, 0});
}

void add_in(MetadataFilter& filter, const std::string& field, std::vector<std::string> values) {
  const std::string term = field + " IN [...]";
  check_field(field, term);
  if (values.empty()) throw StoreError("filter '" + term + "': IN needs at least one value");
  filter.terms.push_back({field, FilterOp::In, std::move(values), 0});
}

void add_range(MetadataFilter& filter, const std::string& field, FilterOp op, double bound) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", bound);
  const std::string term = field + op_text(op) + buf;
  check_field(field, term);
  if (op == FilterOp::Eq || op == FilterOp::In) {
    throw StoreError("filter '" + term + "': a range needs <, <=, > or >=");
  }
  if (!std::isfinite(bound)) throw StoreError("filter '" + term + "': bound is not finite");
  filter.terms.push_back({field, op, {}, bound});
}

MetadataFilter parse_where(const std::vector<std::string>& terms) {
  MetadataFilter f;
  for (const auto& t : terms) {
    const auto op = t.find_first_of("=<>");
    const auto in = find_in_keyword(t);
    if (in != std::string::npos && (op == std::string::npos || in < op)) {
      const std::string field = trim(std::string_view(t).substr(0, in));
      check_field(field, t);
      f.terms.push_back({field, FilterOp::In, parse_list(t, t.find('[', in)), 0});
      continue;
    }
    if (op == std::string::npos) {
      throw StoreError("filter '" + t + "': expected field=value, field IN [a, b], or field<N");
    }
    if (t[op] == '=') {
      const std::string field = trim(std::string_view(t).substr(0, op));
      const std::string value = trim(std::string_view(t).substr(op + 1));
      refuse_unsupported_operator(t, field, value);
      check_field(field, t);
      f.terms.push_back({field, FilterOp::Eq, {value}, 0});
      continue;
    }
    const bool or_equal = op + 1 < t.size() && t[op + 1] == '=';
    if (t[op] == '<' && op + 1 < t.size() && t[op + 1] == '>') {
      throw StoreError("filter '" + t + "': <> (not equal) is not supported; " + kSupported);
    }
    const FilterOp range = t[op] == '<' ? (or_equal ? FilterOp::Le : FilterOp::Lt)
                                        : (or_equal ? FilterOp::Ge : FilterOp::Gt);
    const std::string field = trim(std::string_view(t).substr(0, op));
    check_field(field, t);
    const std::string bound = trim(std::string_view(t).substr(op + (or_equal ? 2 : 1)));
    auto n = parse_number(bound);
    if (!n) {
      throw StoreError("filter '" + t + "': " + op_text(range) + " needs a finite number, got '" +
                       bound + "'");
    }
    f.terms.push_back({field, range, {}, *n});
  }
  return f;
}

std::vector<ImageRecord> Catalog::list_page(std::int64_t after_id, int limit,
                                            const MetadataFilter* filter) const {
  return reading(path_, [&] {
    const bool filtered = filter != nullptr && !filter->empty();
    if (filtered && terms_indexed()) {
      SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::DEFERRED);
      // A rare term: its ids first, then the records of the first `limit` matches.
      auto rows = term_rows(*db_, *filter, after_id, 32768);
      if (*std::min_element(rows.begin(), rows.end()) != kUnknownRows) {
        auto ids = resolve(*db_, *filter, after_id, rows);
        if (limit >= 0 && ids.size() > static_cast<std::size_t>(limit)) ids.resize(limit);
        auto out = get_many(ids);
        tx.commit();
        return out;
      }
      // Every term common: matches are dense, so walking by id finds `limit` of them soon.
      std::string sql = std::string("SELECT ") + image_columns() + " FROM images WHERE id > ?";
      for (const auto& t : filter->terms) {
        sql += " AND EXISTS (SELECT 1 FROM metadata_terms AS t WHERE t.image_id = images.id AND " +
               term_cond(t, true) + ")";
      }
      SQLite::Statement q(*db_, sql + " ORDER BY id LIMIT ?");
      q.bind(1, after_id);
      q.bind(bind_filter(q, *filter, 2), limit);
      std::vector<ImageRecord> out;
      while (q.executeStep()) out.push_back(read_record(q));
      tx.commit();
      return out;
    }
    SQLite::Statement q(
        *db_, std::string("SELECT ") + image_columns() + " FROM images WHERE id > ?" +
                  (filtered ? " AND " + json1_sql(*filter) : "") + " ORDER BY id LIMIT ?");
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
    if (!filter.empty() && terms_indexed()) {
      std::vector<std::int64_t> rows(filter.terms.size(), 0);
      if (filter.terms.size() > 1) rows = term_rows(*db_, filter, 0, kUnknownRows / 8);
      s.ids = resolve(*db_, filter, 0, rows);
    } else {
      SQLite::Statement q(*db_,
                          "SELECT id FROM images" +
                              (filter.empty() ? std::string() : " WHERE " + json1_sql(filter)) +
                              " ORDER BY id");
      bind_filter(q, filter, 1);
      while (q.executeStep()) s.ids.push_back(q.getColumn(0).getInt64());
    }
    tx.commit();
    return s;
  });
}

std::vector<std::pair<std::string, std::int64_t>> Catalog::facet(const std::string& field,
                                                                 int limit) const {
  check_field(field, field);
  return reading(path_, [&] {
    // The side table has one row per image and distinct value; the JSON1 rows may repeat one
    // (an array holding it twice), hence DISTINCT there.
    const std::string sql =
        terms_indexed()
            ? "SELECT value, COUNT(*) AS c FROM metadata_terms INDEXED BY metadata_terms_value "
              "WHERE field = ?1 GROUP BY value ORDER BY c DESC, value LIMIT ?2"
            : "SELECT value, COUNT(DISTINCT image_id) AS c FROM (" +
                  term_rows_sql("images AS i, ", "i.metadata", "i.id", "j.key = ?1 AND ") +
                  ") GROUP BY value ORDER BY c DESC, value LIMIT ?2";
    SQLite::Statement q(*db_, sql);
    q.bind(1, field);
    q.bind(2, limit);
    std::vector<std::pair<std::string, std::int64_t>> out;
    while (q.executeStep()) out.emplace_back(q.getColumn(0).getString(), q.getColumn(1).getInt64());
    return out;
  });
}

std::vector<std::string> Catalog::metadata_fields(int limit) const {
  return reading(path_, [&] {
    std::vector<std::string> out;
    if (limit <= 0) return out;
    if (!terms_indexed()) {
      SQLite::Statement q(*db_, "SELECT DISTINCT field FROM (" +
                                    term_rows_sql("images AS i, ", "i.metadata", "i.id", "") +
                                    ") ORDER BY field LIMIT ?1");
      q.bind(1, limit);
      while (q.executeStep()) out.push_back(q.getColumn(0).getString());
      return out;
    }
    // A skip scan by hand: the next field after the last one, one index probe each, so that the
    // cost follows the number of fields, not of rows.
    SQLite::Statement first(*db_,
                            "SELECT field FROM metadata_terms INDEXED BY metadata_terms_value "
                            "ORDER BY field LIMIT 1");
    SQLite::Statement next(*db_,
                           "SELECT field FROM metadata_terms INDEXED BY metadata_terms_value "
                           "WHERE field > ?1 ORDER BY field LIMIT 1");
    if (!first.executeStep()) return out;
    out.push_back(first.getColumn(0).getString());
    while (static_cast<int>(out.size()) < limit) {
      next.reset();
      next.bind(1, out.back());
      if (!next.executeStep()) break;
      out.push_back(next.getColumn(0).getString());
    }
    return out;
  });
}

bool Catalog::has_metadata_field(const std::string& field) const {
  return reading(path_, [&] {
    const std::string sql =
        terms_indexed()
            ? "SELECT 1 FROM metadata_terms INDEXED BY metadata_terms_value WHERE field = ?1 "
              "LIMIT 1"
            : "SELECT 1 FROM (" +
                  term_rows_sql("images AS i, ", "i.metadata", "i.id", "j.key = ?1 AND ") +
                  ") LIMIT 1";
    SQLite::Statement q(*db_, sql);
    q.bind(1, field);
    return q.executeStep();
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
    // [prefix, prefix with its last '/' made '0') is every string that starts with prefix ('0'
    // follows '/'). prefix is path + "/", or "/" itself for the root folder (every path).
    const std::string prefix = path.ends_with('/') ? path : path + "/";
    const std::string end = prefix.substr(0, prefix.size() - 1) + "0";
    SQLite::Statement q(*db_,
                        "SELECT id FROM images WHERE path = ?1 OR (path >= ?2 AND path < ?3) "
                        "ORDER BY id");
    q.bind(1, path);
    q.bind(2, prefix);
    q.bind(3, end);
    std::vector<std::int64_t> out;
    while (q.executeStep()) out.push_back(q.getColumn(0).getInt64());
    return out;
  });
}

bool Catalog::set_metadata(std::int64_t id, const std::string& metadata) {
  if (auto why = metadata_problem(metadata)) {
    throw StoreError("metadata of image " + std::to_string(id) + ": " + *why);
  }
  try {
    SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
    SQLite::Statement q(*db_, "UPDATE images SET metadata = ?, updated_at_ms = ? WHERE id = ?");
    q.bind(1, metadata);
    q.bind(2, now_ms());
    q.bind(3, id);
    if (q.exec() == 0) return false;
    write_terms(*db_, id, metadata);
    db_->exec("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'");
    tx.commit();
    return true;
  } catch (const SQLite::Exception& e) {
    throw error(path_, std::string("metadata update failed, nothing written: ") + e.what());
  }
}

std::int64_t Catalog::last_id_assigned() const {
  return reading(path_, [&] {
    SQLite::Statement q(*db_, "SELECT seq FROM sqlite_sequence WHERE name = 'images'");
    return q.executeStep() ? q.getColumn(0).getInt64() : std::int64_t{0};
  });
}

void Catalog::reserve_ids_through(std::int64_t id) {
  try {
    SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
    // sqlite_sequence is an ordinary table to write (sqlite.org/autoinc.html); its row for
    // `images` exists only once an id was assigned.
    SQLite::Statement add(*db_,
                          "INSERT INTO sqlite_sequence(name, seq) SELECT 'images', ? WHERE NOT "
                          "EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'images')");
    add.bind(1, id);
    add.exec();
    SQLite::Statement raise(*db_,
                            "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'images'");
    raise.bind(1, id);
    raise.exec();
    tx.commit();
  } catch (const SQLite::Exception& e) {
    throw error(path_, std::string("reserving ids failed, nothing written: ") + e.what());
  }
}

std::optional<CatalogConfig> Catalog::config() const {
  return reading(path_, [&]() -> std::optional<CatalogConfig> {
    auto text = meta_value(*db_, "config");
    if (!text) return std::nullopt;
    auto c = parse_config(path_, *text);
    c.search_defaults = meta_value(*db_, "search_defaults").value_or("{}");
    c.preprocess = meta_value(*db_, "preprocess").value_or("");
    c.preprocess_fingerprint = meta_value(*db_, "preprocess_fingerprint").value_or("");
    return c;
  });
}

bool Catalog::set_preprocess(const std::string& canonical, const std::string& fingerprint) {
  try {
    check_preprocess(canonical, fingerprint, /*optional=*/false);
  } catch (const StoreError& e) {
    throw error(path_, e.what());
  }
  try {
    SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
    if (!meta_value(*db_, "config")) {
      throw error(path_, "catalog has no config yet; cannot record its preprocessing");
    }
    if (auto stored = meta_value(*db_, "preprocess_fingerprint")) {
      if (*stored == fingerprint) return false;
      throw error(path_, "preprocessing fingerprint " + *stored + " is recorded already, not " +
                             fingerprint + " (" +
                             meta_value(*db_, "preprocess").value_or("no canonical text") + ")");
    }
    set_meta(*db_, "preprocess", canonical);
    set_meta(*db_, "preprocess_fingerprint", fingerprint);
    tx.commit();
    return true;
  } catch (const SQLite::Exception& e) {
    throw error(path_,
                std::string("cannot record the preprocessing, nothing written: ") + e.what());
  }
}

void Catalog::set_index_config(const std::string& factory, const std::string& search_defaults) {
  if (factory.empty()) throw error(path_, "index config: factory must not be empty");
  if (!is_json_object(search_defaults)) {
    throw error(path_, "index config: search_defaults must be a JSON object, got '" +
                           search_defaults + "'");
  }
  try {
    SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
    auto text = meta_value(*db_, "config");
    if (!text) throw error(path_, "catalog has no config yet; cannot set its index config");
    auto c = parse_config(path_, *text);
    c.factory = factory;
    c.search_defaults = search_defaults;
    write_config(*db_, c);
    db_->exec("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'");
    tx.commit();
  } catch (const SQLite::Exception& e) {
    throw error(path_, std::string("cannot write index config, nothing written: ") + e.what());
  }
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
    write_config(*db_, config);
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
    SQLite::Statement q(*db_,
                        std::string("SELECT ") + image_columns() + " FROM images WHERE id = ?");
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
    SQLite::Statement q(*db_, std::string("SELECT ") + image_columns() +
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
                        std::string("SELECT ") + image_columns() + " FROM images WHERE path = ?");
    q.bind(1, path);
    if (!q.executeStep()) return std::nullopt;
    return read_record(q);
  });
}

std::vector<ImageRecord> Catalog::find_hash(const std::string& content_hash) const {
  return reading(path_, [&] {
    SQLite::Statement q(*db_, std::string("SELECT ") + image_columns() +
                                  " FROM images WHERE content_hash = ? ORDER BY id");
    q.bind(1, content_hash);
    std::vector<ImageRecord> out;
    while (q.executeStep()) out.push_back(read_record(q));
    return out;
  });
}

std::vector<ImageRecord> Catalog::list() const {
  return reading(path_, [&] {
    SQLite::Statement q(*db_,
                        std::string("SELECT ") + image_columns() + " FROM images ORDER BY id");
    std::vector<ImageRecord> out;
    while (q.executeStep()) out.push_back(read_record(q));
    return out;
  });
}

namespace {
// Decodes and checks one stored vector blob: the vector, or why it cannot be used (a blob that
// is not dim * 4 bytes, a non-finite value, a cosine vector whose norm is not 1). A bad blob is
// a corrupt vector like any other (CorruptVector), never a failed read: it is left out of the
// index and repaired by re-indexing its file.
std::vector<float> read_vector(SQLite::Column blob, int dim, bool cosine,
                               std::optional<std::string>& problem) {
  std::vector<float> v;
  if (blob.getBytes() != dim * 4) {
    problem = "embedding has " + std::to_string(blob.getBytes()) + " bytes, not " +
              std::to_string(dim * 4) + " (" + std::to_string(dim) + " floats)";
    return v;
  }
  v.resize(static_cast<std::size_t>(dim));
  decode_vector(blob.getBlob(), v.size(), v.data());
  problem = vector_problem(v.data(), v.size(), dim, cosine);
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
    std::optional<std::string> why;
    auto v = read_vector(q.getColumn(0), cfg->dim, cfg->metric == "cosine", why);
    if (why) {
      auto rec = get(id);
      throw error(path_, "image " + std::to_string(id) + (rec ? " (" + rec->path + ")" : "") +
                             ": stored " + *why + "; re-index the file to repair it");
    }
    return v;
  });
}

void Catalog::embeddings(const std::int64_t* ids, std::int64_t n, float* out, bool* found) const {
  reading(path_, [&]() {
    auto cfg = config();
    for (std::int64_t i = 0; i < n; ++i) found[i] = false;
    if (!cfg) return 0;
    const auto dim = static_cast<std::size_t>(cfg->dim);
    SQLite::Statement q(*db_, "SELECT vector FROM embeddings WHERE image_id = ? AND model_id = ?");
    for (std::int64_t i = 0; i < n; ++i) {
      q.reset();
      q.bind(1, ids[i]);
      q.bind(2, cfg->model_id);
      if (!q.executeStep()) continue;
      auto col = q.getColumn(0);
      if (static_cast<std::size_t>(col.getBytes()) != dim * sizeof(float)) continue;
      float* row = out + static_cast<std::size_t>(i) * dim;
      std::memcpy(row, col.getBlob(), dim * sizeof(float));
      found[i] = !vector_problem(row, dim, cfg->dim, cfg->metric == "cosine");
    }
    return 0;
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
      std::optional<std::string> why;
      auto v = read_vector(q.getColumn(1), cfg->dim, cfg->metric == "cosine", why);
      if (!why) return v;
    }
    return std::nullopt;
  });
}

std::vector<std::int64_t> Catalog::write_batch(const std::vector<Put>& puts,
                                               const std::vector<std::int64_t>& removes) {
  if (puts.empty() && removes.empty()) return {};
  auto cfg = config();
  if (!cfg) throw error(path_, "catalog has no config yet; cannot add images");
  for (std::size_t i = 0; i < puts.size(); ++i) validate_put(*this, puts[i], i, *cfg);

  std::vector<std::int64_t> ids;
  try {
    SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
    SQLite::Statement del(*db_, "DELETE FROM images WHERE id = ?");
    SQLite::Statement del_terms(*db_, "DELETE FROM metadata_terms WHERE image_id = ?");
    for (auto id : removes) {
      del_terms.bind(1, id);
      del_terms.exec();
      del_terms.reset();
      del.bind(1, id);
      del.exec();
      del.reset();
    }
    SQLite::Statement add_terms(*db_, kInsertTerms);
    SQLite::Statement upsert(
        *db_,
        "INSERT INTO images(path, content_hash, bytes, width, height, mtime_ns, metadata, "
        "added_at_ms, updated_at_ms, phash, phash_95, phash_90, id) "
        "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(path) DO UPDATE SET "
        // A put without a hash keeps the stored one only while the bytes are the same.
        "phash = CASE WHEN excluded.phash IS NOT NULL THEN excluded.phash "
        "WHEN images.content_hash = excluded.content_hash THEN images.phash END, "
        "phash_95 = CASE WHEN excluded.phash IS NOT NULL THEN excluded.phash_95 "
        "WHEN images.content_hash = excluded.content_hash THEN images.phash_95 END, "
        "phash_90 = CASE WHEN excluded.phash IS NOT NULL THEN excluded.phash_90 "
        "WHEN images.content_hash = excluded.content_hash THEN images.phash_90 END, "
        "content_hash = excluded.content_hash, "
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
      if (r.picture_hash) {
        upsert.bind(10, static_cast<std::int64_t>(r.picture_hash->full));
        upsert.bind(11, static_cast<std::int64_t>(r.picture_hash->center95));
        upsert.bind(12, static_cast<std::int64_t>(r.picture_hash->center90));
      } else {
        upsert.bind(10);
        upsert.bind(11);
        upsert.bind(12);
      }
      // NULL: SQLite picks the next id (AUTOINCREMENT: never one used before).
      if (put.keep_id && r.id > 0) {
        upsert.bind(13, r.id);
      } else {
        upsert.bind(13);
      }
      upsert.executeStep();
      std::int64_t id = upsert.getColumn(0).getInt64();
      upsert.reset();
      ids.push_back(id);
      // A re-put replaces the image's rows: fields it no longer has must stop matching.
      del_terms.bind(1, id);
      del_terms.exec();
      del_terms.reset();
      add_terms.bind(1, id);
      add_terms.bind(2, r.metadata);
      add_terms.exec();
      add_terms.reset();

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

std::int64_t Catalog::set_picture_hashes(const std::vector<PictureHashUpdate>& updates) {
  if (updates.empty()) return 0;
  try {
    SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
    SQLite::Statement q(*db_,
                        "UPDATE images SET phash = ?, phash_95 = ?, phash_90 = ? WHERE id = ? "
                        "AND content_hash = ?");
    std::int64_t n = 0;
    for (const auto& u : updates) {
      q.bind(1, static_cast<std::int64_t>(u.hash.full));
      q.bind(2, static_cast<std::int64_t>(u.hash.center95));
      q.bind(3, static_cast<std::int64_t>(u.hash.center90));
      q.bind(4, u.id);
      q.bind(5, u.content_hash);
      n += q.exec();
      q.reset();
    }
    tx.commit();
    return n;
  } catch (const SQLite::Exception& e) {
    throw error(path_, std::string("cannot store perceptual hashes, nothing written: ") + e.what());
  }
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
      std::optional<std::string> why;
      auto v = read_vector(q.getColumn(1), cfg->dim, cosine, why);
      if (why) {
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
