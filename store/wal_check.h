// Damage in a catalog's write-ahead log, found before SQLite opens it.
//
// SQLite replays a WAL frame by frame and stops at the first frame whose checksum fails: a torn
// write at the end (a crash while a transaction was being written) is dropped, as it should be,
// but so is everything after a damaged frame in the middle, commits that were acknowledged
// included, silently. The WAL's layout is SQLite's documented file format
// (https://www.sqlite.org/fileformat2.html#the_write_ahead_log): a 32-byte header, then frames
// of a 24-byte header and one page. Frame checksums are cumulative, each seeded with the stored
// checksum of the frame before, so a frame after a damaged one can still be checked against its
// predecessor's stored checksum: a valid frame of the current WAL generation (same salts) after
// an invalid one is damage, not a torn tail.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>

namespace lookalike::store {

struct WalDamage {
  std::int64_t frame = 0;         // 0-based index of the first frame SQLite will not replay
  std::int64_t frames = 0;        // frames in the file (whole ones)
  std::int64_t lost_frames = 0;   // valid frames of the current generation after `frame`
  std::int64_t lost_commits = 0;  // committed transactions SQLite will drop: the commit frames
                                  // among those, and `frame`'s own if it was a commit

  bool operator==(const WalDamage&) const = default;
};

// Reads `wal` (a catalog's "-wal" file) and returns the damage SQLite's recovery would silently
// drop: committed transactions after a frame that fails its checksum. nullopt when the file is
// missing, empty, or loses no commit (a torn write at the end: the transaction being written). A
// header that is not a WAL header (bad magic or header checksum) is not judged (SQLite ignores such
// a file as a whole): nullopt. Throws std::runtime_error naming the file when it exists but cannot
// be read. Reads the file once, O(size).
std::optional<WalDamage> check_wal(const std::filesystem::path& wal);

}  // namespace lookalike::store
