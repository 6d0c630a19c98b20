#include "pipeline/files.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include "image/decode.h"

namespace lookalike::pipeline {
namespace {

struct Utf8Step {
  std::size_t length;  // bytes of the sequence, or of its maximal ill-formed subpart
  bool valid;
};

// The UTF-8 sequence at bytes[i]. Second-byte ranges per RFC 3629 / Unicode table 3-7: E0 needs
// A0..BF (no overlongs), ED 80..9F (no surrogates), F0 90..BF, F4 80..8F (<= U+10FFFF).
Utf8Step utf8_step(std::string_view bytes, std::size_t i) {
  const auto lead = static_cast<std::uint8_t>(bytes[i]);
  if (lead < 0x80) return {1, true};
  int need = 0;
  std::uint8_t lo = 0x80, hi = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 1;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 2;
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 3;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  } else {
    return {1, false};  // a continuation byte, C0/C1 (overlong) or F5..FF
  }
  std::size_t n = 1;
  for (int k = 0; k < need; ++k, ++n, lo = 0x80, hi = 0xBF) {
    if (i + n >= bytes.size()) return {n, false};
    const auto b = static_cast<std::uint8_t>(bytes[i + n]);
    if (b < lo || b > hi) return {n, false};
  }
  return {n, true};
}

}  // namespace

namespace {

std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

void check_file(const struct stat& st, std::int64_t max_bytes, const std::string& name) {
  if (!S_ISREG(st.st_mode)) {
    throw std::runtime_error(
        fmt::format("{}: not a regular file ({})", name, image::file_kind(st.st_mode)));
  }
  if (st.st_size > max_bytes) {
    throw std::runtime_error(
        fmt::format("{}: file is {} bytes, over the limit of {}", name, st.st_size, max_bytes));
  }
}

struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

std::vector<std::uint8_t> read_file(const std::filesystem::path& path, std::int64_t max_bytes) {
  const std::string name = path.string();
  struct stat st {};
  // stat() first: a FIFO or device is refused without being opened (opening one can block).
  if (::stat(path.c_str(), &st) != 0) {
    throw std::runtime_error(fmt::format("{}: {}", name, image::stat_failure(path, errno)));
  }
  check_file(st, max_bytes, name);
  Fd f{::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)};
  if (f.fd < 0) throw std::runtime_error(fmt::format("{}: {}", name, errno_text(errno)));
  if (::fstat(f.fd, &st) != 0) {
    throw std::runtime_error(fmt::format("{}: {}", name, errno_text(errno)));
  }
  check_file(st, max_bytes, name);  // the path may name another file by now
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(st.st_size));
  std::size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t r = ::read(f.fd, bytes.data() + got, bytes.size() - got);
    if (r == 0) break;  // shrank since fstat: keep what is there
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw std::runtime_error(fmt::format("{}: read error: {}", name, errno_text(errno)));
    got += static_cast<std::size_t>(r);
  }
  bytes.resize(got);
  return bytes;
}

bool is_valid_utf8(std::string_view bytes) {
  std::size_t i = 0;
  while (i < bytes.size()) {
    const Utf8Step step = utf8_step(bytes, i);
    if (!step.valid) return false;
    i += step.length;
  }
  return true;
}

std::string utf8_display(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  std::size_t i = 0;
  while (i < bytes.size()) {
    const Utf8Step step = utf8_step(bytes, i);
    if (step.valid) {
      out.append(bytes.substr(i, step.length));
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD REPLACEMENT CHARACTER
    }
    i += step.length;
  }
  return out;
}

std::string base64(std::string_view bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (std::size_t i = 0; i < bytes.size(); i += 3) {
    const std::size_t n = std::min<std::size_t>(3, bytes.size() - i);
    std::uint32_t group = 0;
    for (std::size_t k = 0; k < 3; ++k) {
      group = (group << 8) | (k < n ? static_cast<std::uint8_t>(bytes[i + k]) : 0u);
    }
    for (std::size_t k = 0; k < 4; ++k) {
      out += k <= n ? kAlphabet[(group >> (18 - 6 * k)) & 0x3F] : '=';
    }
  }
  return out;
}

std::string content_hash(std::span<const std::uint8_t> bytes) {
  XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  return fmt::format("{:016x}{:016x}", h.high64, h.low64);
}

std::int64_t mtime_ns(const std::filesystem::path& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return 0;
  return static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

std::filesystem::path normalize_path(const std::filesystem::path& path) {
  // fs::absolute("") throws "cannot make absolute path: Invalid argument []": say what it is.
  if (path.empty()) throw std::invalid_argument("an empty path names no file or folder");
  return std::filesystem::absolute(path).lexically_normal();
}

std::string markup_text(std::string_view raw) {
  std::string s = pipeline::utf8_display(raw), out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        if (static_cast<unsigned char>(c) >= 0x20 || c == '\t' || c == '\n') out += c;
    }
  }
  return out;
}

void write_file_atomically(const std::filesystem::path& path,
                           std::initializer_list<std::span<const std::uint8_t>> parts,
                           const std::string& tmp_suffix) {
  auto tmp = path;
  tmp += tmp_suffix;
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(tmp.string() + ": cannot create: " + std::strerror(errno));
  auto fail = [&](const char* what, int err) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw std::runtime_error(tmp.string() + ": " + what + ": " + std::strerror(err));
  };
  for (const auto& part : parts) {
    std::size_t done = 0;
    while (done < part.size()) {
      const auto n = ::write(fd, part.data() + done, part.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("write failed", n < 0 ? errno : EIO);
      done += static_cast<std::size_t>(n);
    }
  }
  if (::fsync(fd) != 0) fail("fsync failed", errno);
  ::close(fd);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    ::unlink(tmp.c_str());
    throw std::runtime_error(tmp.string() + ": cannot rename to " + path.string() + ": " +
                             ec.message());
  }
  const auto dir = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace lookalike::pipeline
