#include "cli/output.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <stdexcept>

#include "pipeline/files.h"

namespace lookalike::cli {

void set_path(nlohmann::json& obj, const std::string& key, const std::string& name) {
  if (pipeline::is_valid_utf8(name)) {
    obj[key] = name;
    return;
  }
  obj[key] = pipeline::utf8_display(name);
  obj[key + "_bytes"] = pipeline::base64(name);
}

void print_record(const nlohmann::json& record) {
  // replace: a stray invalid byte in metadata becomes U+FFFD instead of failing the output.
  std::cout << record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
}

namespace {

namespace fs = std::filesystem;

// The temporary file beside the target ("<path>.tmp-<pid>", so that the rename is atomic) is
// never a user's file.
std::string temp_suffix() { return fmt::format(".tmp-{}", ::getpid()); }

// Printed on stderr as is: the path (and the system's text, which may quote it) made safe.
[[noreturn]] void refuse_npy(const fs::path& path, const std::string& why) {
  throw std::runtime_error(
      fmt::format("--npy {}: cannot write: {}", terminal_text(path.string()), terminal_text(why)));
}

// The escape for one control character: \n, \t, \r by name, other C0 and DEL as \xNN.
void escape_ascii_control(unsigned char c, std::string& out) {
  switch (c) {
    case '\n':
      out += "\\n";
      return;
    case '\t':
      out += "\\t";
      return;
    case '\r':
      out += "\\r";
      return;
    default:
      out += fmt::format("\\x{:02x}", c);
  }
}

}  // namespace

std::string terminal_text(std::string_view raw) {
  const std::string text = pipeline::utf8_display(raw);
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7F) {
      escape_ascii_control(c, out);
    } else if (c == 0xC2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) < 0xA0) {
      // U+0080..U+009F (C1: U+009B is CSI, U+009D OSC on terminals that honour them); the text
      // is valid UTF-8 here, so 0xC2 is followed by a continuation byte.
      out += fmt::format("\\u{:04x}", static_cast<unsigned char>(text[++i]));
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

void check_npy_target(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) refuse_npy(path, "it is a folder");
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  if (!fs::is_directory(dir, ec)) {
    refuse_npy(path, fs::exists(dir, ec) ? fmt::format("{} is not a folder", dir.string())
                                         : fmt::format("folder {} does not exist", dir.string()));
  }
  // What only trying tells (permissions, a read-only file system, ...): create the temp file.
  auto tmp = path;
  tmp += temp_suffix();
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) refuse_npy(path, std::strerror(errno));
  ::close(fd);
  fs::remove(tmp, ec);
}

void write_npy(const fs::path& path, const std::vector<float>& data, std::size_t n,
               std::size_t dim) {
  // NumPy format spec (numpy.lib.format): magic, version 1.0, header length, a Python dict
  // literal padded with spaces to a multiple of 64 bytes and ended by '\n'.
  std::string header =
      fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", n, dim);
  std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::error_code ec;
  if (fs::is_directory(path, ec)) refuse_npy(path, "it is a folder");
  const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  const auto len = static_cast<std::uint16_t>(header.size());
  const unsigned char len_le[2] = {static_cast<unsigned char>(len & 0xff),
                                   static_cast<unsigned char>(len >> 8)};
  auto bytes = [](const void* p, std::size_t n) {
    return std::span<const std::uint8_t>(static_cast<const std::uint8_t*>(p), n);
  };
  try {
    pipeline::write_file_atomically(
        path,
        {bytes(magic, sizeof magic), bytes(len_le, sizeof len_le),
         bytes(header.data(), header.size()), bytes(data.data(), n * dim * sizeof(float))},
        temp_suffix());
  } catch (const std::runtime_error& e) {
    refuse_npy(path, e.what());
  }
}

ProgressPrinter::ProgressPrinter(bool enabled)
    : enabled_(enabled),
      tty_(isatty(STDERR_FILENO) == 1),
      last_(std::chrono::steady_clock::now()) {}

void ProgressPrinter::update(const pipeline::Progress& p) {
  if (!enabled_ || p.total == 0) return;
  auto now = std::chrono::steady_clock::now();
  double pct = 100.0 * p.done / p.total;
  if (tty_) {
    constexpr int kWidth = 30;
    int filled = static_cast<int>(kWidth * p.done / p.total);
    std::fprintf(stderr, "\r[%s%s] %lld/%lld %3.0f%%  %.1f files/s  ETA %s   ",
                 std::string(filled, '#').c_str(), std::string(kWidth - filled, '.').c_str(),
                 static_cast<long long>(p.done), static_cast<long long>(p.total), pct,
                 p.files_per_s, format_seconds(p.eta_s).c_str());
    drawn_ = true;
  } else if (now - last_ >= std::chrono::seconds(5)) {
    std::fprintf(stderr, "lookalike: %lld/%lld files (%.0f%%), %.1f files/s, ETA %s\n",
                 static_cast<long long>(p.done), static_cast<long long>(p.total), pct,
                 p.files_per_s, format_seconds(p.eta_s).c_str());
    last_ = now;
  }
  std::fflush(stderr);
}

void ProgressPrinter::finish() {
  if (drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

std::string plural(std::int64_t n, std::string_view noun, std::string_view plural_noun) {
  if (n == 1) return fmt::format("1 {}", noun);
  if (plural_noun.empty()) return fmt::format("{} {}s", n, noun);
  return fmt::format("{} {}", n, plural_noun);
}

std::string human_bytes(std::int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", v, units[u]);
}

std::string format_seconds(double s) {
  if (!(s >= 0) || s > 1e7) return "?";
  const long long t = std::llround(s);
  return t >= 3600 ? fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
                   : fmt::format("{}:{:02}", t / 60, t % 60);
}

std::string metadata_line(const nlohmann::json& metadata) {
  std::string out;
  for (const auto& [key, value] : metadata.items()) {
    if (!out.empty()) out += "  ";
    // replace: an invalid byte nested in an array or object becomes U+FFFD instead of throwing.
    const std::string shown =
        value.is_string() ? value.get<std::string>()
                          : value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    out += terminal_text(key) + "=" + terminal_text(shown);
  }
  return out;
}

}  // namespace lookalike::cli
