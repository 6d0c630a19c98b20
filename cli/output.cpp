#include "cli/output.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
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

void write_npy(const std::filesystem::path& path, const std::vector<float>& data, std::size_t n,
               std::size_t dim) {
  // NumPy format spec (numpy.lib.format): magic, version 1.0, header length, a Python dict
  // literal padded with spaces to a multiple of 64 bytes and ended by '\n'.
  std::string header =
      fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", n, dim);
  std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  auto tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(fmt::format("{}: cannot write", tmp.string()));
    const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    out.write(reinterpret_cast<const char*>(magic), 8);
    std::uint16_t len = static_cast<std::uint16_t>(header.size());
    out.put(static_cast<char>(len & 0xff)).put(static_cast<char>(len >> 8));
    out << header;
    out.write(reinterpret_cast<const char*>(data.data()),
              static_cast<std::streamsize>(n * dim * sizeof(float)));
    if (!out.flush()) throw std::runtime_error(fmt::format("{}: write failed", tmp.string()));
  }
  std::filesystem::rename(tmp, path);
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
    out += key + "=" + (value.is_string() ? value.get<std::string>() : value.dump());
  }
  return out;
}

}  // namespace lookalike::cli
