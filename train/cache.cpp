// The base-embedding cache: one SQLite file so that reruns of `train` and `reembed` never decode
// an image whose base embedding is known. Keyed by content, not path: a moved file stays cached.
#include <SQLiteCpp/SQLiteCpp.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <cstring>

#include "train/train.h"

namespace lookalike::train {
namespace fs = std::filesystem;

namespace {

constexpr const char* kFile = "base-embeddings.sqlite";

SQLite::Database open_cache(const fs::path& dir, bool write) {
  const fs::path path = dir / kFile;
  if (write) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec)
      throw std::runtime_error(dir.string() +
                               ": cannot create the embedding cache folder: " + ec.message());
  }
  try {
    SQLite::Database db(path.string(), write ? SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE
                                             : SQLite::OPEN_READONLY);
    db.setBusyTimeout(5000);
    if (write) {
      db.exec("PRAGMA journal_mode=WAL");
      db.exec(
          "CREATE TABLE IF NOT EXISTS embeddings (model_id TEXT NOT NULL, content_hash TEXT NOT "
          "NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (model_id, "
          "content_hash)) WITHOUT ROWID");
    }
    return db;
  } catch (const SQLite::Exception& e) {
    throw std::runtime_error(path.string() + ": embedding cache: " + e.what());
  }
}

}  // namespace

fs::path default_cache_dir() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg && *xdg) return fs::path(xdg) / "lookalike";
  const char* home = std::getenv("HOME");
  return fs::path(home && *home ? home : ".") / ".cache" / "lookalike";
}

CachedEmbeddings cache_lookup(const fs::path& dir, const std::string& model_id,
                              const std::vector<std::string>& hashes) {
  CachedEmbeddings out;
  out.found.assign(hashes.size(), false);
  std::error_code ec;
  if (!fs::is_regular_file(dir / kFile, ec)) return out;
  try {
    auto db = open_cache(dir, false);
    if (!db.tableExists("embeddings")) return out;
    SQLite::Statement q(
        db, "SELECT dim, vector FROM embeddings WHERE model_id = ? AND content_hash = ?");
    for (std::size_t i = 0; i < hashes.size(); ++i) {
      q.reset();
      q.bind(1, model_id);
      q.bind(2, hashes[i]);
      if (!q.executeStep()) continue;
      const int dim = q.getColumn(0).getInt();
      const auto blob = q.getColumn(1);
      // A row of another width or a damaged blob is a miss, not an error: it is recomputed.
      if (dim <= 0 || (out.dim && dim != out.dim) ||
          blob.getBytes() != static_cast<int>(dim * sizeof(float)))
        continue;
      out.dim = dim;
      const auto* p = static_cast<const float*>(blob.getBlob());
      out.rows.insert(out.rows.end(), p, p + dim);
      out.found[i] = true;
    }
  } catch (const std::exception& e) {
    // An unreadable cache only costs time: everything is recomputed (cache_store says so).
    spdlog::warn(
        "{}: the embedding cache cannot be read ({}): base embeddings are computed "
        "again; delete the file to start a new cache",
        (dir / kFile).string(), e.what());
    out = {};
    out.found.assign(hashes.size(), false);
  }
  return out;
}

void cache_store(const fs::path& dir, const std::string& model_id,
                 const std::vector<std::string>& hashes, const std::vector<float>& rows, int dim) {
  if (hashes.empty()) return;
  try {
    auto db = open_cache(dir, true);
    SQLite::Transaction tx(db);
    SQLite::Statement q(db, "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)");
    for (std::size_t i = 0; i < hashes.size(); ++i) {
      q.reset();
      q.bind(1, model_id);
      q.bind(2, hashes[i]);
      q.bind(3, dim);
      q.bind(4, rows.data() + i * dim, static_cast<int>(dim * sizeof(float)));
      q.exec();
    }
    tx.commit();
  } catch (const std::exception& e) {
    // The cache saves time on the next run; the run itself has what it needs.
    spdlog::warn(
        "{}: cannot write the embedding cache ({}): the next run computes these {} "
        "base embeddings again; delete the file if it is damaged",
        (dir / kFile).string(), e.what(), hashes.size());
  }
}

}  // namespace lookalike::train
