// Turning the user's inputs (folders, image files, CSV manifests) into the list of files to index.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace lookalike::pipeline {

struct SourceFile {
  std::filesystem::path path;                          // absolute, lexically normal
  nlohmann::json metadata = nlohmann::json::object();  // manifest columns, as strings
};

struct ScanProblem {
  std::string where;  // a file path, or "<manifest.csv> row N"
  std::string reason;
};

struct ScanResult {
  std::vector<SourceFile> files;  // unique paths, in input order
  std::vector<ScanProblem> problems;
};

struct ScanOptions {
  // Manifest column holding the image path; empty = the first of file, path, image, filename,
  // image_path, filepath (case-insensitive).
  std::string file_column;
  bool include_hidden = false;  // hidden files and folders are skipped by default, like fd
};

// File extensions treated as images when walking a folder (lower case, with the dot).
const std::vector<std::string>& image_extensions();

// Each input is a folder (walked recursively; files with an image extension), a CSV manifest
// (".csv": header row, one image per row; paths relative to the manifest's folder; the other
// columns become metadata), or an image file. A missing input, an unreadable folder, a
// malformed manifest or a manifest row naming a missing file becomes a ScanProblem; scanning
// goes on. When the same path is listed twice, the later metadata wins.
ScanResult scan_inputs(const std::vector<std::filesystem::path>& inputs,
                       const ScanOptions& options = {});

// Parses a CSV manifest (RFC 4180 through libcsv). Throws std::runtime_error naming the file
// and the cause for an unreadable file, bad quoting, or a header without a file column.
ScanResult read_manifest(const std::filesystem::path& csv, const ScanOptions& options = {});

}  // namespace lookalike::pipeline
