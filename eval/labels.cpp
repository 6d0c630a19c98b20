#include "eval/labels.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>
#include <optional>
#include <system_error>

#include "pipeline/files.h"
#include "pipeline/scan.h"

namespace fs = std::filesystem;

namespace lookalike::eval {

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

void add_problems(const std::vector<pipeline::ScanProblem>& problems, LabelledSet& out) {
  for (const auto& p : problems) {
    ++out.unreadable;
    out.skipped.push_back(p.where + ": " + p.reason);
  }
}

// Without the trailing separator, "DIR/" would keep an empty last element and lexically_relative
// would not treat DIR/x as below it.
fs::path folder_root(const fs::path& source) {
  fs::path root = pipeline::normalize_path(source);
  while (root.has_parent_path() && root.filename().empty()) root = root.parent_path();
  return root;
}

LabelledSet from_folder(const fs::path& source) {
  LabelledSet out;
  out.source = source;
  const fs::path root = folder_root(source);
  const auto scan = pipeline::scan_inputs({root});
  add_problems(scan.problems, out);
  for (const auto& f : scan.files) {
    const fs::path rel = f.path.lexically_relative(root);
    if (std::distance(rel.begin(), rel.end()) < 2) {
      ++out.unlabelled;
      out.skipped.push_back(f.path.string() +
                            ": directly in the gallery folder, not in a class subfolder");
      continue;
    }
    out.files.push_back(f.path);
    out.labels.push_back(rel.begin()->string());
  }
  if (out.files.empty()) {
    throw LabelError(fmt::format(
        "{}: no images in class subfolders (expected {}/<label>/<image>{})", source.string(),
        source.string(),
        out.unlabelled > 0
            ? fmt::format("; {} image(s) directly in the folder have no label", out.unlabelled)
            : ""));
  }
  return out;
}

// The metadata key holding the label: exact name first, then a unique case-insensitive match.
std::optional<std::string> find_label_key(const nlohmann::json& metadata,
                                          const std::string& label_column) {
  if (metadata.contains(label_column)) return label_column;
  std::optional<std::string> found;
  for (const auto& [key, value] : metadata.items()) {
    if (lower(key) != lower(label_column)) continue;
    if (found) return std::nullopt;  // ambiguous: Label and LABEL
    found = key;
  }
  return found;
}

[[noreturn]] void missing_column(const fs::path& csv, const std::string& label_column,
                                 const nlohmann::json& metadata) {
  std::vector<std::string> columns;
  for (const auto& [key, value] : metadata.items()) columns.push_back("'" + key + "'");
  throw LabelError(
      fmt::format("{}: no label column '{}' (columns besides the file column: {}); name it with "
                  "--label-column",
                  csv.string(), label_column,
                  columns.empty() ? "none" : fmt::format("{}", fmt::join(columns, ", "))));
}

LabelledSet from_manifest(const fs::path& csv, const std::string& label_column,
                          const std::string& file_column) {
  pipeline::ScanResult scan;
  try {
    scan = pipeline::read_manifest(csv, {file_column, false});
  } catch (const std::exception& e) {
    throw LabelError(e.what());
  }
  // One image, one label: read_manifest keeps a repeated path once, with the later row's
  // metadata (what `index` wants), which would silently drop the first row's label.
  if (!scan.repeated_rows.empty()) {
    const auto& d = scan.repeated_rows.front();
    const auto more = scan.repeated_rows.size() - 1;
    throw RepeatedImageError(fmt::format(
        "{}: {} and {} both list {}; list each image once, with its label{}", csv.string(),
        d.first_row, d.repeat_row, d.path.string(),
        more > 0 ? fmt::format(" ({} more rows repeat an earlier row's path)", more) : ""));
  }
  LabelledSet out;
  out.source = csv;
  add_problems(scan.problems, out);
  if (scan.files.empty()) {
    throw LabelError(fmt::format(
        "{}: no usable rows ({} skipped{}{})", csv.string(), out.unreadable,
        out.skipped.empty() ? "" : "; first: ", out.skipped.empty() ? "" : out.skipped.front()));
  }
  // read_manifest keeps every non-file column of every row, so the first row shows the header.
  const auto key = find_label_key(scan.files.front().metadata, label_column);
  if (!key) missing_column(csv, label_column, scan.files.front().metadata);
  for (const auto& f : scan.files) {
    const std::string label = f.metadata.value(*key, std::string());
    if (label.empty()) {
      ++out.empty_labels;
      out.skipped.push_back(f.path.string() + ": empty '" + *key + "' field in " + csv.string());
      continue;
    }
    out.files.push_back(f.path);
    out.labels.push_back(label);
  }
  if (out.files.empty()) {
    throw LabelError(fmt::format("{}: every row has an empty '{}' field", csv.string(), *key));
  }
  return out;
}

}  // namespace

LabelledSet load_labelled_set(const fs::path& source, const std::string& label_column,
                              const std::string& file_column) {
  std::error_code ec;
  const auto status = fs::status(source, ec);
  if (ec || !fs::exists(status)) {
    throw LabelError(fmt::format("{}: no such file or folder", source.string()));
  }
  if (fs::is_directory(status)) return from_folder(source);
  if (lower(source.extension().string()) == ".csv") {
    return from_manifest(source, label_column, file_column);
  }
  throw LabelError(fmt::format(
      "{}: not a folder or a CSV manifest (give a folder with a subfolder per class, or a .csv "
      "with a file and a label column)",
      source.string()));
}

}  // namespace lookalike::eval
