#include "pipeline/scan.h"

#include <csv.h>
#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <stdexcept>
#include <system_error>
#include <unordered_map>

#include "pipeline/files.h"

namespace lookalike::pipeline {
namespace fs = std::filesystem;

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

bool is_image_name(const fs::path& p) {
  const auto& exts = image_extensions();
  return std::find(exts.begin(), exts.end(), lower(p.extension().string())) != exts.end();
}

bool is_hidden(const fs::path& p) {
  auto name = p.filename().string();
  return name.size() > 1 && name[0] == '.';
}

// Appends, keeping paths unique; a later entry's metadata replaces an earlier one's.
struct Collector {
  ScanResult result;
  std::unordered_map<std::string, std::size_t> seen;

  void add(SourceFile f) {
    auto [it, inserted] = seen.emplace(f.path.string(), result.files.size());
    if (inserted) {
      result.files.push_back(std::move(f));
    } else if (!f.metadata.empty()) {
      result.files[it->second].metadata = std::move(f.metadata);
    }
  }
  void merge(ScanResult&& other) {
    for (auto& f : other.files) add(std::move(f));
    for (auto& p : other.problems) result.problems.push_back(std::move(p));
  }
};

void walk_folder(const fs::path& root, const ScanOptions& options, Collector& out) {
  std::error_code ec;
  auto it =
      fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied, ec);
  if (ec) {
    out.result.problems.push_back({root.string(), ec.message()});
    return;
  }
  std::vector<fs::path> found;
  for (auto end = fs::recursive_directory_iterator(); it != end; it.increment(ec)) {
    if (ec) {
      out.result.problems.push_back({root.string(), ec.message()});
      break;
    }
    const auto& entry = *it;
    if (!options.include_hidden && is_hidden(entry.path())) {
      if (entry.is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if (entry.is_regular_file(ec) && is_image_name(entry.path())) {
      found.push_back(normalize_path(entry.path()));
    }
  }
  // Directory order is arbitrary; sorted input makes runs and ids reproducible.
  std::sort(found.begin(), found.end());
  for (auto& p : found) out.add({std::move(p), nlohmann::json::object()});
}

// libcsv callbacks collect rows of fields.
struct CsvState {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
};

void on_field(void* data, size_t len, void* state) {
  auto* s = static_cast<CsvState*>(state);
  s->row.emplace_back(static_cast<const char*>(data), len);
}

void on_row(int /*terminator*/, void* state) {
  auto* s = static_cast<CsvState*>(state);
  s->rows.push_back(std::move(s->row));
  s->row.clear();
}

std::vector<std::vector<std::string>> parse_csv(const fs::path& csv) {
  auto bytes = read_file(csv);
  csv_parser parser;
  if (csv_init(&parser, CSV_STRICT | CSV_STRICT_FINI) != 0) {
    throw std::runtime_error(fmt::format("{}: cannot initialise the CSV parser", csv.string()));
  }
  CsvState state;
  std::size_t start = 0;
  if (bytes.size() >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF) start = 3;
  std::size_t n = bytes.size() - start;
  bool ok = csv_parse(&parser, bytes.data() + start, n, on_field, on_row, &state) == n &&
            csv_fini(&parser, on_field, on_row, &state) == 0;
  std::string error = ok ? "" : csv_strerror(csv_error(&parser));
  csv_free(&parser);
  if (!ok) {
    throw std::runtime_error(fmt::format("{}: malformed CSV after row {}: {}", csv.string(),
                                         state.rows.size() + 1, error));
  }
  return state.rows;
}

std::size_t find_file_column(const std::vector<std::string>& header, const fs::path& csv,
                             const ScanOptions& options) {
  std::vector<std::string> wanted = {"file", "path", "image", "filename", "image_path", "filepath"};
  if (!options.file_column.empty()) wanted = {lower(options.file_column)};
  for (const auto& w : wanted) {
    for (std::size_t i = 0; i < header.size(); ++i) {
      if (lower(header[i]) == w) return i;
    }
  }
  throw std::runtime_error(
      fmt::format("{}: no file column in the header (looked for {}); name it with --file-column",
                  csv.string(), fmt::join(wanted, ", ")));
}

}  // namespace

const std::vector<std::string>& image_extensions() {
  static const std::vector<std::string> exts = {".jpg", ".jpeg", ".jpe", ".png",  ".webp", ".bmp",
                                                ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif"};
  return exts;
}

ScanResult read_manifest(const fs::path& csv, const ScanOptions& options) {
  auto rows = parse_csv(csv);
  if (rows.empty()) throw std::runtime_error(fmt::format("{}: empty manifest", csv.string()));
  const auto& header = rows.front();
  std::size_t file_col = find_file_column(header, csv, options);
  fs::path base = normalize_path(csv).parent_path();

  Collector out;
  for (std::size_t r = 1; r < rows.size(); ++r) {
    const auto& row = rows[r];
    std::string where = fmt::format("{} row {}", csv.string(), r + 1);
    if (row.size() == 1 && row[0].empty()) continue;  // blank line
    if (row.size() != header.size()) {
      out.result.problems.push_back(
          {where, fmt::format("{} fields, the header has {}", row.size(), header.size())});
      continue;
    }
    if (row[file_col].empty()) {
      out.result.problems.push_back({where, fmt::format("empty '{}' field", header[file_col])});
      continue;
    }
    fs::path p = row[file_col];
    p = normalize_path(p.is_absolute() ? p : base / p);
    std::error_code ec;
    if (!fs::is_regular_file(p, ec)) {
      out.result.problems.push_back({where, fmt::format("{}: file not found", p.string())});
      continue;
    }
    nlohmann::json meta = nlohmann::json::object();
    for (std::size_t c = 0; c < header.size(); ++c) {
      if (c != file_col) meta[header[c]] = row[c];
    }
    out.add({p, std::move(meta)});
  }
  return std::move(out.result);
}

ScanResult scan_inputs(const std::vector<fs::path>& inputs, const ScanOptions& options) {
  Collector out;
  for (const auto& input : inputs) {
    std::error_code ec;
    auto status = fs::status(input, ec);
    if (ec || !fs::exists(status)) {
      out.result.problems.push_back({input.string(), "no such file or folder"});
    } else if (fs::is_directory(status)) {
      walk_folder(input, options, out);
    } else if (lower(input.extension().string()) == ".csv") {
      try {
        out.merge(read_manifest(input, options));
      } catch (const std::exception& e) {
        out.result.problems.push_back({input.string(), e.what()});
      }
    } else {
      out.add({normalize_path(input), nlohmann::json::object()});
    }
  }
  return std::move(out.result);
}

}  // namespace lookalike::pipeline
