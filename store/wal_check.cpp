#include "store/wal_check.h"

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace lookalike::store {
namespace {

constexpr std::size_t kWalHeaderBytes = 32;
constexpr std::size_t kFrameHeaderBytes = 24;
// The two magic numbers: their low bit says the byte order of the checksum's 32-bit words.
constexpr std::uint32_t kMagicLittleEndian = 0x377f0682;
constexpr std::uint32_t kMagicBigEndian = 0x377f0683;

std::uint32_t be32(const unsigned char* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

std::uint32_t le32(const unsigned char* p) {
  return (std::uint32_t{p[3]} << 24) | (std::uint32_t{p[2]} << 16) | (std::uint32_t{p[1]} << 8) |
         std::uint32_t{p[0]};
}

using Checksum = std::array<std::uint32_t, 2>;

// SQLite's walChecksumBytes: Fletcher-like sums over pairs of 32-bit words, seeded.
Checksum checksum(const unsigned char* p, std::size_t n, bool big_endian, Checksum s) {
  for (std::size_t i = 0; i + 8 <= n; i += 8) {
    const std::uint32_t x0 = big_endian ? be32(p + i) : le32(p + i);
    const std::uint32_t x1 = big_endian ? be32(p + i + 4) : le32(p + i + 4);
    s[0] += x0 + s[1];
    s[1] += x1 + s[0];
  }
  return s;
}

Checksum stored_checksum(const unsigned char* header_end) {
  return {be32(header_end), be32(header_end + 4)};
}

struct Wal {
  std::vector<unsigned char> bytes;
  bool big_endian = false;
  std::uint32_t page_size = 0;
  std::array<std::uint32_t, 2> salt{};
  Checksum header_checksum{};

  std::size_t frame_bytes() const { return kFrameHeaderBytes + page_size; }
  std::int64_t frames() const {
    return static_cast<std::int64_t>((bytes.size() - kWalHeaderBytes) / frame_bytes());
  }
  const unsigned char* frame(std::int64_t i) const {
    return bytes.data() + kWalHeaderBytes + static_cast<std::size_t>(i) * frame_bytes();
  }
  bool current(std::int64_t i) const {
    return be32(frame(i) + 8) == salt[0] && be32(frame(i) + 12) == salt[1];
  }
  // Frame i checks out against `seed` (the checksum stored in the frame before it, or the
  // header's for the first frame).
  bool valid(std::int64_t i, Checksum seed) const {
    const unsigned char* f = frame(i);
    Checksum s = checksum(f, 8, big_endian, seed);
    s = checksum(f + kFrameHeaderBytes, page_size, big_endian, s);
    return current(i) && s == stored_checksum(f + 16);
  }
  Checksum seed_for(std::int64_t i) const {
    return i == 0 ? header_checksum : stored_checksum(frame(i - 1) + 16);
  }
  bool commit(std::int64_t i) const { return be32(frame(i) + 4) != 0; }
};

std::vector<unsigned char> read_all(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path.string() + ": cannot read: " + std::strerror(errno));
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The header, or nullopt where SQLite would not take the file as a WAL at all.
std::optional<Wal> parse(std::vector<unsigned char> bytes) {
  if (bytes.size() < kWalHeaderBytes) return std::nullopt;
  Wal w;
  const std::uint32_t magic = be32(bytes.data());
  if (magic != kMagicLittleEndian && magic != kMagicBigEndian) return std::nullopt;
  w.big_endian = magic == kMagicBigEndian;
  w.page_size = be32(bytes.data() + 8);
  if (w.page_size < 512 || w.page_size > 65536 || (w.page_size & (w.page_size - 1)) != 0)
    return std::nullopt;
  w.salt = {be32(bytes.data() + 16), be32(bytes.data() + 20)};
  w.header_checksum = checksum(bytes.data(), 24, w.big_endian, {0, 0});
  if (w.header_checksum != stored_checksum(bytes.data() + 24)) return std::nullopt;
  w.bytes = std::move(bytes);
  return w;
}

}  // namespace

std::optional<WalDamage> check_wal(const std::filesystem::path& wal) {
  std::error_code ec;
  if (!std::filesystem::exists(wal, ec)) return std::nullopt;
  const auto w = parse(read_all(wal));
  if (!w) return std::nullopt;
  const std::int64_t n = w->frames();
  std::int64_t first_bad = 0;
  while (first_bad < n && w->valid(first_bad, w->seed_for(first_bad))) ++first_bad;
  if (first_bad == n) return std::nullopt;
  WalDamage d;
  d.frame = first_bad;
  d.frames = n;
  std::int64_t valid_commits_after = 0;
  for (std::int64_t i = first_bad + 1; i < n; ++i) {
    if (!w->valid(i, w->seed_for(i))) continue;
    ++d.lost_frames;
    if (w->commit(i)) ++valid_commits_after;
  }
  // The catalog commits with synchronous = FULL: a transaction is written only after the one
  // before it reached the disk. So frames of a later transaction prove the bad frame's own
  // transaction was whole on disk once (damage), while a power loss can still leave the last
  // transaction's commit frame written and an earlier frame of it not (no damage: that commit
  // was never acknowledged). The bad frame's commit flag is read from a frame that failed its
  // checksum: trusted only with the current salts.
  const bool bad_is_commit = w->current(first_bad) && w->commit(first_bad);
  if (valid_commits_after < (bad_is_commit ? 1 : 2)) return std::nullopt;
  d.lost_commits = valid_commits_after + (bad_is_commit ? 1 : 0);
  return d;
}

}  // namespace lookalike::store
