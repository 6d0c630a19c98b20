// Terminal and file output shared by the commands.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "pipeline/indexer.h"

namespace lookalike::cli {

// Writes an n x dim float32 little-endian array in NumPy's .npy format (version 1.0), atomically
// (a temp file beside it, then a rename; the temp file is removed on failure). Throws
// std::runtime_error "--npy PATH: cannot write: <cause>" (PATH as given; the cause: "it is a
// folder", "folder D does not exist", the OS error).
void write_npy(const std::filesystem::path& path, const std::vector<float>& data, std::size_t n,
               std::size_t dim);

// The same errors as write_npy, found before any work: PATH is a folder, its folder is missing,
// or a file cannot be created there (tried, and removed).
void check_npy_target(const std::filesystem::path& path);

// A progress bar with rate and ETA on a terminal (stderr), else a plain line every 5 s.
class ProgressPrinter {
 public:
  explicit ProgressPrinter(bool enabled);
  void update(const pipeline::Progress& p);
  void finish();

 private:
  bool enabled_;
  bool tty_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_;
};

// Sets obj[key] to a file name. JSON strings are Unicode, file names are bytes: a name that is
// not valid UTF-8 is written as its display form (invalid bytes as U+FFFD) under `key` and,
// losslessly, as base64 of the raw bytes under key + "_bytes" (as ripgrep's --json does).
void set_path(nlohmann::json& obj, const std::string& key, const std::string& name);
// Prints one JSON Lines record (one object, one line) on stdout.
void print_record(const nlohmann::json& record);

// "1 image", "2 images", "0 images": a count and its noun, plural unless the count is 1 (nouns
// whose plural is not noun + "s" give it: plural(n, "entry", "entries")).
std::string plural(std::int64_t n, std::string_view noun, std::string_view plural_noun = {});

std::string human_bytes(std::int64_t bytes);
std::string format_seconds(double s);
// "key=value  key=value" for a JSON object of metadata (strings unquoted), each key and value
// through terminal_text.
std::string metadata_line(const nlohmann::json& metadata);

// User data (paths, metadata, messages that quote them) made safe to print on a terminal, for
// human (non --json) output: one value stays on one line and no control sequence reaches the
// terminal. Invalid UTF-8 becomes U+FFFD (pipeline::utf8_display); C0 controls and DEL become
// \n, \t, \r or \xNN (ESC: \x1b), C1 controls (U+0080..U+009F) \u00NN. Everything else,
// a backslash included, is kept: this is for reading, --json is the exact form.
std::string terminal_text(std::string_view raw);

}  // namespace lookalike::cli
