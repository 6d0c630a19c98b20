// store::check_wal on real SQLite write-ahead logs: a WAL copied while its writer still held it
// (as a crash leaves it), then damaged the ways a disk or a copy damages files.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "store/wal_check.h"

namespace fs = std::filesystem;
using lookalike::store::check_wal;

namespace {

constexpr int kCommits = 12;

struct ScratchDir {
  fs::path path;
  ScratchDir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("lookalike-wal-" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void exec(sqlite3* db, const std::string& sql) {
  char* err = nullptr;
  ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << err;
}

// kCommits committed transactions in a WAL no checkpoint has touched, copied to `out` (db and
// -wal) while the writer is still open: what a kill -9 leaves. Returns the page size.
int crashed_catalog(const fs::path& dir, const fs::path& out) {
  sqlite3* db = nullptr;
  const auto live = dir / "live.db";
  EXPECT_EQ(sqlite3_open(live.c_str(), &db), SQLITE_OK);
  exec(db, "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;");
  exec(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
  for (int i = 0; i < kCommits; ++i)
    exec(db, "INSERT INTO t(v) VALUES ('row " + std::to_string(i) + "')");
  fs::copy_file(live, out);
  fs::copy_file(live.string() + "-wal", out.string() + "-wal");
  sqlite3_close(db);
  return 4096;
}

int rows(const fs::path& db_path) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(db_path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* q = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, "SELECT count(*) FROM t", -1, &q, nullptr), SQLITE_OK);
  EXPECT_EQ(sqlite3_step(q), SQLITE_ROW);
  const int n = sqlite3_column_int(q, 0);
  sqlite3_finalize(q);
  sqlite3_close(db);
  return n;
}

void flip_byte(const fs::path& file, std::uintmax_t offset) {
  std::fstream f(file, std::ios::binary | std::ios::in | std::ios::out);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x40);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

std::uintmax_t frame_offset(int frame, int page_size) {
  return 32 + static_cast<std::uintmax_t>(frame) * (24 + page_size);
}

}  // namespace

TEST(WalCheck, AnIntactWalAfterACrashIsNotDamage) {
  ScratchDir dir;
  const auto db = dir.path / "catalog.db";
  crashed_catalog(dir.path, db);
  EXPECT_FALSE(check_wal(db.string() + "-wal"));
  EXPECT_EQ(rows(db), kCommits);
}

TEST(WalCheck, ADamagedFrameBeforeCommitsIsFoundWithTheCommitsSqliteDrops) {
  ScratchDir dir;
  const auto db = dir.path / "catalog.db";
  const int page = crashed_catalog(dir.path, db);
  const fs::path wal = db.string() + "-wal";
  const auto frames = static_cast<int>((fs::file_size(wal) - 32) / (24 + page));
  ASSERT_GE(frames, kCommits);
  const int damaged = frames / 2;
  flip_byte(wal, frame_offset(damaged, page) + 24 + 100);  // in the page, not the header
  const auto d = check_wal(wal);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->frame, damaged);
  EXPECT_EQ(d->frames, frames);
  EXPECT_EQ(d->lost_frames, frames - damaged - 1);
  EXPECT_GE(d->lost_commits, 1);
  // What the check warns about: SQLite opens the file without an error and the commits from the
  // damaged frame on are gone.
  EXPECT_EQ(rows(db), kCommits - d->lost_commits);
}

TEST(WalCheck, ATornWriteAtTheEndLosesNoCommitAndIsNotDamage) {
  ScratchDir dir;
  const auto db = dir.path / "catalog.db";
  const int page = crashed_catalog(dir.path, db);
  const fs::path wal = db.string() + "-wal";
  const auto frames = static_cast<int>((fs::file_size(wal) - 32) / (24 + page));
  fs::resize_file(wal, frame_offset(frames - 1, page) + 24 + page / 2);
  EXPECT_FALSE(check_wal(wal));
  // A damaged last frame is the same to SQLite: its transaction was never acknowledged whole.
  fs::resize_file(wal, frame_offset(frames, page));
  flip_byte(wal, frame_offset(frames - 1, page) + 24 + 7);
  EXPECT_FALSE(check_wal(wal));
}

// The last transaction spans several frames (a row with overflow pages). A power loss can leave
// its commit frame on disk and an earlier frame of it not: SQLite drops that transaction, which
// was never acknowledged, so this is no damage; the same bad frame followed by one more whole
// transaction is.
TEST(WalCheck, ABadFrameInsideTheLastTransactionIsNotDamageUntilAnotherCommitFollows) {
  ScratchDir dir;
  sqlite3* db = nullptr;
  const auto live = dir.path / "live.db";
  ASSERT_EQ(sqlite3_open(live.c_str(), &db), SQLITE_OK);
  exec(db, "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;");
  exec(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
  exec(db, "INSERT INTO t(v) VALUES ('small')");
  const auto frames_before = static_cast<int>((fs::file_size(live.string() + "-wal") - 32) / 4120);
  exec(db, "INSERT INTO t(v) VALUES (printf('%.*c', 20000, 'x'))");
  const auto copy = [&](const std::string& name) {
    auto out = dir.path / name;
    fs::copy_file(live, out);
    fs::copy_file(live.string() + "-wal", out.string() + "-wal");
    flip_byte(out.string() + "-wal", frame_offset(frames_before, 4096) + 24 + 100);
    return out;
  };
  const auto last = copy("last.db");
  exec(db, "INSERT INTO t(v) VALUES ('after')");
  const auto followed = copy("followed.db");
  sqlite3_close(db);
  const auto frames = static_cast<int>((fs::file_size(last.string() + "-wal") - 32) / 4120);
  ASSERT_GE(frames - frames_before, 3);  // the big row's pages, then its commit frame
  EXPECT_FALSE(check_wal(last.string() + "-wal"));
  const auto d = check_wal(followed.string() + "-wal");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->frame, frames_before);
  EXPECT_EQ(d->lost_commits, 2);
  EXPECT_EQ(rows(followed), 1);
}

TEST(WalCheck, MissingEmptyOrForeignFilesAreNotJudged) {
  ScratchDir dir;
  EXPECT_FALSE(check_wal(dir.path / "absent.db-wal"));
  const auto empty = dir.path / "empty.db-wal";
  std::ofstream(empty).close();
  EXPECT_FALSE(check_wal(empty));
  const auto foreign = dir.path / "foreign.db-wal";
  std::ofstream(foreign) << std::string(5000, 'x');
  EXPECT_FALSE(check_wal(foreign));
}
