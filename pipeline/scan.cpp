#include "pipeline/scan.h"

#include <csv.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <unordered_map>

#include "pipeline/files.h"
#include "store/catalog.h"

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
    for (auto& r : other.repeated_rows) result.repeated_rows.push_back(std::move(r));
    for (auto& m : other.unread_manifests) result.unread_manifests.push_back(std::move(m));
  }
};

std::string file_kind(fs::file_type type) {
  switch (type) {
    case fs::file_type::directory:
      return "a directory";
    case fs::file_type::fifo:
      return "a FIFO";
    case fs::file_type::socket:
      return "a socket";
    case fs::file_type::character:
      return "a character device";
    case fs::file_type::block:
      return "a block device";
    default:
      return "an unknown kind of file";
  }
}

// Why following the symlink at `p` failed (`ec` from fs::status).
std::string symlink_problem(const fs::path& p, const std::error_code& ec) {
  if (ec == std::errc::too_many_symbolic_link_levels) {
    return "symlink loop (too many levels of symbolic links)";
  }
  if (ec == std::errc::no_such_file_or_directory) {
    std::error_code ignored;
    const auto target = fs::read_symlink(p, ignored);
    return "broken symlink (its target " + (ignored ? "?" : target.string()) + " does not exist)";
  }
  return ec.message();
}

// One folder walk: entries found, folders still to read, problems met.
struct Walk {
  const ScanOptions& options;
  std::vector<fs::path> pending;
  std::vector<fs::path> found;
  std::vector<ScanProblem> problems;

  void problem(const fs::path& p, std::string reason) {
    problems.push_back({p.string(), std::move(reason)});
  }

  // Decides from lstat (and stat, for a symlink with an image name) what `entry` is.
  void visit(const fs::directory_entry& entry) {
    const fs::path& p = entry.path();
    if (!options.include_hidden && is_hidden(p)) return;
    std::error_code ec;
    const fs::file_status own = entry.symlink_status(ec);
    if (ec) return problem(p, ec.message());
    if (fs::is_directory(own)) {
      pending.push_back(p);
      return;
    }
    if (!is_image_name(p)) return;
    fs::file_status target = own;
    if (fs::is_symlink(own)) {
      target = fs::status(p, ec);
      if (ec) {
        problem(p, symlink_problem(p, ec));
        // Gone as surely as a deleted file: an indexed one is reported vanished (index_files).
        problems.back().dangling_symlink = ec == std::errc::no_such_file_or_directory;
        return;
      }
      if (fs::is_directory(target)) return;  // not followed (like fd): no loops, no escapes
    }
    if (fs::is_regular_file(target)) {
      found.push_back(normalize_path(p));
    } else {
      problem(p, "not a regular file (" + file_kind(target.type()) + ")");
      // No image file any more: an indexed one is reported vanished (index_files).
      problems.back().not_regular = true;
    }
  }

  void read_folder(const fs::path& dir) {
    std::error_code ec;
    fs::directory_iterator it(dir, ec);
    if (ec) return problem(dir, "cannot read folder: " + ec.message());
    for (const fs::directory_iterator end; it != end; it.increment(ec)) visit(*it);
    // A failed increment leaves the iterator at end: the rest of this folder is lost.
    if (ec) problem(dir, "cannot list folder: " + ec.message());
  }
};

// Our own walk rather than recursive_directory_iterator: that one either skips unreadable
// folders silently (skip_permission_denied) or, on the first error, ends the whole walk.
void walk_folder(const fs::path& root, const ScanOptions& options, Collector& out) {
  Walk walk{options, {root}, {}, {}};
  while (!walk.pending.empty()) {
    const fs::path dir = std::move(walk.pending.back());
    walk.pending.pop_back();
    walk.read_folder(dir);
  }
  // Directory order is arbitrary; sorted output makes runs and ids reproducible.
  std::sort(walk.found.begin(), walk.found.end());
  std::sort(walk.problems.begin(), walk.problems.end(),
            [](const ScanProblem& a, const ScanProblem& b) { return a.where < b.where; });
  if (walk.found.empty()) out.result.empty_folders.push_back(root);
  for (auto& p : walk.found) out.add({std::move(p), nlohmann::json::object()});
  for (auto& p : walk.problems) out.result.problems.push_back(std::move(p));
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

// Where and why libcsv's strict mode refused `s` (the manifest after any BOM), by the same
// rules: a '"' inside an unquoted field, text after a closing quote, a quote that is never
// closed. Lines count LF, CRLF and lone CR. nullopt if no such fault is found.
struct CsvFault {
  std::size_t line = 1;
  std::string cause;
};
std::optional<CsvFault> find_csv_fault(std::string_view s) {
  enum class At { FieldStart, Unquoted, Quoted, AfterQuote } at = At::FieldStart;
  std::size_t line = 1, quote_line = 1;
  bool spaces = false;  // AfterQuote: spaces or tabs since the quote
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool ends_field = c == ',' || c == '\r' || c == '\n';
    switch (at) {
      case At::FieldStart:
        if (c == '"') {
          at = At::Quoted;
          quote_line = line;
        } else if (!ends_field && c != ' ' && c != '\t') {
          at = At::Unquoted;
        }
        break;
      case At::Unquoted:
        if (c == '"') {
          return CsvFault{line,
                          "a double quote inside an unquoted field (quote the whole field and "
                          "double the quotes inside it: \"say \"\"hi\"\"\")"};
        }
        if (ends_field) at = At::FieldStart;
        break;
      case At::Quoted:
        if (c == '"') {
          at = At::AfterQuote;
          spaces = false;
        }
        break;
      case At::AfterQuote:
        if (ends_field) {
          at = At::FieldStart;
        } else if (c == ' ' || c == '\t') {
          spaces = true;
        } else if (c == '"' && !spaces) {
          at = At::Quoted;  // "" inside a quoted field
        } else {
          return CsvFault{line, fmt::format("text after the closing quote of the field that "
                                            "opens on line {} (a quote inside a quoted field "
                                            "is written \"\")",
                                            quote_line)};
        }
        break;
    }
    if (c == '\n' || (c == '\r' && (i + 1 == s.size() || s[i + 1] != '\n'))) ++line;
  }
  if (at == At::Quoted) {
    return CsvFault{quote_line,
                    "unterminated quoted field: the quote that opens it on this line "
                    "is never closed"};
  }
  return std::nullopt;
}

// The line each CSV record of `s` (the manifest after any BOM, which libcsv parsed without
// error) starts on, by libcsv's rules: a record starts at the first character outside a record
// that is not a space, tab, CR or LF (blank lines are no records), and ends at a CR or LF
// outside quotes; inside a quoted field "" is a quote. Lines count LF, CRLF and lone CR.
std::vector<std::size_t> record_lines(std::string_view s) {
  std::vector<std::size_t> lines;
  std::size_t line = 1;
  bool in_record = false, quoted = false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool newline = c == '\n' || c == '\r';
    if (quoted) {
      if (c == '"') {
        if (i + 1 < s.size() && s[i + 1] == '"') {
          ++i;
        } else {
          quoted = false;
        }
      }
    } else if (!in_record) {
      if (!newline && c != ' ' && c != '\t') {
        in_record = true;
        lines.push_back(line);
        quoted = c == '"';
      }
    } else if (newline) {
      in_record = false;
    } else if (c == '"') {
      quoted = true;  // libcsv's strict mode allows a quote only where a field opens
    }
    if (c == '\n' || (c == '\r' && (i + 1 == s.size() || s[i + 1] != '\n'))) ++line;
  }
  return lines;
}

struct CsvRows {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::size_t> lines;  // the line each row starts on (empty if not known)
};

// "the header looks separated by ';' ..." when the first line of `text` has no comma but a
// semicolon or a tab: a spreadsheet's export for a locale whose decimal separator is a comma,
// or a TSV named .csv. Empty otherwise.
std::string separator_hint(std::string_view text) {
  const std::string_view line = text.substr(0, text.find_first_of("\r\n"));
  if (line.find(',') != std::string_view::npos) return "";
  const char* sep = line.find(';') != std::string_view::npos    ? "';'"
                    : line.find('\t') != std::string_view::npos ? "tabs"
                                                                : nullptr;
  if (sep == nullptr) return "";
  return fmt::format(
      "the header looks separated by {}, and lookalike reads comma-separated CSV: export the "
      "file with commas as separators",
      sep);
}

// A UTF-16 file (a byte order mark FF FE or FE FF: Excel's "Unicode text", PowerShell's
// Export-Csv) would fail later as "not valid UTF-8" with no hint of why.
void refuse_utf16(const std::vector<std::uint8_t>& bytes, const fs::path& csv) {
  if (bytes.size() < 2) return;
  const bool le = bytes[0] == 0xFF && bytes[1] == 0xFE, be = bytes[0] == 0xFE && bytes[1] == 0xFF;
  if (!le && !be) return;
  throw std::runtime_error(
      fmt::format("{}: the file is UTF-16 ({} byte order mark {}); lookalike reads UTF-8 CSV: "
                  "save it as UTF-8 (in Excel: \"CSV UTF-8\")",
                  csv.string(), le ? "little-endian," : "big-endian,", le ? "FF FE" : "FE FF"));
}

CsvRows parse_csv(const fs::path& csv) {
  auto bytes = read_file(csv);
  refuse_utf16(bytes, csv);
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
  const int status = ok ? CSV_SUCCESS : csv_error(&parser);
  std::string error = ok ? "" : csv_strerror(status);
  csv_free(&parser);
  if (!ok) {
    // The row being read when it failed; a newline inside a quoted field does not start one.
    const std::size_t row = state.rows.size() + 1;
    if (status == CSV_EPARSE) {
      const auto fault =
          find_csv_fault(std::string_view(reinterpret_cast<const char*>(bytes.data()) + start, n));
      if (fault) {
        const std::string hint = fault->line == 1
                                     ? separator_hint(std::string_view(
                                           reinterpret_cast<const char*>(bytes.data()) + start, n))
                                     : "";
        throw std::runtime_error(fmt::format("{}: malformed CSV in row {} (line {}): {}{}{}",
                                             csv.string(), row, fault->line, fault->cause,
                                             hint.empty() ? "" : "; ", hint));
      }
    }
    throw std::runtime_error(
        fmt::format("{}: malformed CSV in row {}: {}", csv.string(), row, error));
  }
  CsvRows out{std::move(state.rows), record_lines(std::string_view(
                                         reinterpret_cast<const char*>(bytes.data()) + start, n))};
  if (out.lines.size() != out.rows.size()) out.lines.clear();  // not expected; rows only then
  return out;
}

std::size_t find_file_column(const std::vector<std::string>& header, const fs::path& csv,
                             const ScanOptions& options) {
  std::vector<std::string> wanted = {"file", "path", "image", "filename", "image_path", "filepath"};
  if (!options.file_column.empty()) wanted = {lower(options.file_column)};
  for (const auto& w : wanted) {
    for (std::size_t i = 0; i < header.size(); ++i) {
      if (lower(header[i]) != w) continue;
      // A second column of that name would be stored as metadata under the file column's name.
      for (std::size_t j = i + 1; j < header.size(); ++j) {
        if (lower(header[j]) == w) {
          throw std::runtime_error(fmt::format(
              "{}: columns {} and {} are both named '{}': which one holds the image paths is "
              "ambiguous; rename one",
              csv.string(), i + 1, j + 1, header[j]));
        }
      }
      return i;
    }
  }
  // A one-column header "file;label" is a file separated by something other than commas.
  if (const auto hint = header.size() == 1 ? separator_hint(header.front()) : ""; !hint.empty()) {
    throw std::runtime_error(fmt::format("{}: no file column in the header (looked for {}): {}",
                                         csv.string(), fmt::join(wanted, ", "), hint));
  }
  throw std::runtime_error(
      fmt::format("{}: no file column in the header (looked for {}); name it with --file-column",
                  csv.string(), fmt::join(wanted, ", ")));
}

// Which columns hold metadata: every column but the file column and those with no name whose
// cells are all empty (a trailing comma). Throws for a column with no name that holds a value
// (its values would be stored under the key "") and for two columns of the same name (one
// value of each row would be lost).
std::vector<std::size_t> metadata_columns(const std::vector<std::vector<std::string>>& rows,
                                          std::size_t file_col, const fs::path& csv,
                                          const std::function<std::string(std::size_t)>& row_name) {
  const auto& header = rows.front();
  std::vector<std::size_t> out;
  for (std::size_t c = 0; c < header.size(); ++c) {
    if (c == file_col) continue;
    if (header[c].empty()) {
      for (std::size_t r = 1; r < rows.size(); ++r) {
        if (rows[r].size() == header.size() && !rows[r][c].empty()) {
          throw std::runtime_error(fmt::format(
              "{}: column {} has no name, yet {} has a value in it; name the column in the "
              "header or delete it",
              csv.string(), c + 1, row_name(r)));
        }
      }
      continue;  // empty in every row: ignored
    }
    for (std::size_t prev : out) {
      if (header[prev] == header[c]) {
        throw std::runtime_error(
            fmt::format("{}: columns {} and {} are both named '{}': each row's metadata could "
                        "keep only one of them; rename one",
                        csv.string(), prev + 1, c + 1, header[c]));
      }
    }
    out.push_back(c);
  }
  return out;
}

std::optional<std::size_t> first_invalid_cell(const std::vector<std::string>& row) {
  for (std::size_t c = 0; c < row.size(); ++c) {
    if (!is_valid_utf8(row[c])) return c;
  }
  return std::nullopt;
}

// Why `p` cannot be listed as an image file, or nullopt when it is a regular file (or a
// symlink to one).
std::optional<std::string> not_a_file(const fs::path& p) {
  std::error_code ec, link_ec;
  const fs::file_status st = fs::status(p, ec);
  if (ec) {
    if (fs::is_symlink(fs::symlink_status(p, link_ec))) return symlink_problem(p, ec);
    if (ec == std::errc::no_such_file_or_directory) return "file not found";
    return ec.message();
  }
  if (!fs::is_regular_file(st)) return "not a regular file (" + file_kind(st.type()) + ")";
  return std::nullopt;
}

// Whether nothing exists at `p` (ENOENT, ENOTDIR; a symlink to such a path too): what every
// row of a manifest whose drive is unmounted looks like.
bool is_missing(const fs::path& p) {
  std::error_code ec;
  return fs::status(p, ec).type() == fs::file_type::not_found;
}

// The scheme of `cell` (lower case) when it starts like a URL, "scheme://"; empty otherwise.
// At least two characters, so that a drive letter ("C://photos") is no scheme.
std::string url_scheme(std::string_view cell) {
  std::size_t i = 0;
  auto scheme_char = [](unsigned char c) {
    return std::isalnum(c) || c == '+' || c == '-' || c == '.';
  };
  while (i < cell.size() && scheme_char(cell[i])) ++i;
  if (i < 2 || !std::isalpha(static_cast<unsigned char>(cell[0])) || cell.substr(i, 3) != "://") {
    return "";
  }
  return lower(std::string(cell.substr(0, i)));
}

// `s` with each %XX replaced by its byte (RFC 3986); nullopt for a '%' not followed by two hex
// digits.
std::optional<std::string> percent_decode(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size() || !std::isxdigit(static_cast<unsigned char>(s[i + 1])) ||
        !std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      return std::nullopt;
    }
    out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
    i += 2;
  }
  return out;
}

// What a manifest's file cell names: a path (resolved against `base`, lexically normal), or
// why it names none. Catalogue exports often hold URLs: read as paths they would be mangled
// ("https:/example.com/a.jpg", "file not found"), so they are refused by name, except a local
// file URL (RFC 8089: "file:///abs/path" or "file://localhost/abs/path"), which is its path.
struct CellTarget {
  fs::path path;        // set when the cell names a local file
  std::string problem;  // set otherwise
};
CellTarget cell_target(const std::string& cell, const fs::path& base) {
  const std::string scheme = url_scheme(cell);
  if (scheme.empty()) {
    const fs::path p = cell;
    return {normalize_path(p.is_absolute() ? p : base / p), ""};
  }
  if (scheme != "file") {
    return {{},
            fmt::format("{}: a URL, and lookalike indexes local files only: download the "
                        "images and list their paths",
                        cell)};
  }
  const std::string_view rest = std::string_view(cell).substr(std::string_view("file://").size());
  const auto slash = rest.find('/');
  const std::string host(rest.substr(0, slash));
  if (slash == std::string_view::npos || (!host.empty() && lower(host) != "localhost")) {
    return {{},
            fmt::format("{}: a file URL of another host ('{}'); only a local one "
                        "(file:///path) names a file here",
                        cell, host)};
  }
  const auto path = percent_decode(rest.substr(slash));
  if (!path || path->find('\0') != std::string::npos) {
    return {{},
            fmt::format("{}: a file URL with a malformed %-escape (or one of a NUL byte)", cell)};
  }
  return {normalize_path(*path), ""};
}

// A hint for a file cell holding '\' whose file is not found: when the same path with '/'
// names a file, it was written on Windows. '\' may be part of a file name here, so the cell
// is not rewritten, only explained. Empty otherwise.
std::string backslash_hint(const std::string& cell, const fs::path& base) {
  if (cell.find('\\') == std::string::npos) return "";
  std::string slashed = cell;
  std::replace(slashed.begin(), slashed.end(), '\\', '/');
  const fs::path alt = cell_target(slashed, base).path;
  if (alt.empty() || not_a_file(alt)) return "";
  return fmt::format(
      " (the path holds '\\', which is no folder separator here: with '/' it names {}, which "
      "exists; write the paths with '/')",
      alt.string());
}

// The file a manifest row names, as far as its file cell tells (the row may be malformed
// otherwise); empty when it names none. A failed row keeps this file's stored entry.
fs::path listed_path(const std::vector<std::string>& row, std::size_t file_col,
                     const fs::path& base) {
  if (file_col >= row.size() || row[file_col].empty()) return {};
  if (row[file_col].find('\0') != std::string::npos) return {};
  return cell_target(row[file_col], base).path;
}

// Rows after the header, leaving out lines holding only "" (no record of any use).
std::size_t data_rows(const std::vector<std::vector<std::string>>& rows) {
  return static_cast<std::size_t>(std::count_if(rows.begin() + 1, rows.end(), [](const auto& row) {
    return !(row.size() == 1 && row[0].empty());
  }));
}

}  // namespace

const std::vector<std::string>& image_extensions() {
  // .jfif and .jpe: JPEG files as some browsers and cameras name them (decoding goes by
  // content, not by name).
  static const std::vector<std::string> exts = {".jpg",  ".jpeg", ".jpe", ".jfif", ".png",
                                                ".webp", ".bmp",  ".tif", ".tiff", ".gif",
                                                ".heic", ".heif", ".avif"};
  return exts;
}

bool is_manifest_path(const fs::path& p) { return lower(p.extension().string()) == ".csv"; }

ScanResult read_manifest(const fs::path& csv, const ScanOptions& options) {
  auto [rows, lines] = parse_csv(csv);
  if (rows.empty()) throw std::runtime_error(fmt::format("{}: empty manifest", csv.string()));
  const auto& header = rows.front();
  if (auto bad = first_invalid_cell(header)) {
    throw std::runtime_error(
        fmt::format("{}: header, column {}: not valid UTF-8", csv.string(), *bad + 1));
  }
  // "row 3", or "row 3 (line 6)" when blank lines or quoted newlines come before it.
  auto row_name = [&lines](std::size_t r) {
    if (r >= lines.size() || lines[r] == r + 1) return fmt::format("row {}", r + 1);
    return fmt::format("row {} (line {})", r + 1, lines[r]);
  };
  std::size_t file_col = find_file_column(header, csv, options);
  const std::size_t n_rows = data_rows(rows);
  if (n_rows == 0) {
    // An export with the header only: say so, not "no image file found in the inputs".
    throw std::runtime_error(
        fmt::format("{}: no rows after the header: the manifest lists no image", csv.string()));
  }
  const auto meta_cols = metadata_columns(rows, file_col, csv, row_name);
  fs::path base = normalize_path(csv).parent_path();

  Collector out;
  std::unordered_map<std::string, std::size_t> first_row;  // path -> row index
  std::size_t missing_rows = 0;                            // rows naming a file that does not exist
  for (std::size_t r = 1; r < rows.size(); ++r) {
    const auto& row = rows[r];
    std::string where = fmt::format("{} {}", csv.string(), row_name(r));
    if (row.size() == 1 && row[0].empty()) continue;  // a line holding only ""
    const fs::path listed = listed_path(row, file_col, base);
    auto fail = [&](std::string at, std::string reason) {
      out.result.problems.push_back(
          ScanProblem{.where = std::move(at), .reason = std::move(reason), .listed = listed});
    };
    if (row.size() != header.size()) {
      fail(where, fmt::format("{} fields, the header has {}", row.size(), header.size()));
      continue;
    }
    // nlohmann::json refuses to serialise invalid UTF-8 (type_error.316), which would fail the
    // whole run later: such a row is refused here, alone.
    if (auto bad = first_invalid_cell(row)) {
      fail(fmt::format("{}, column {}", where, *bad + 1), "not valid UTF-8");
      continue;
    }
    if (row[file_col].empty()) {
      fail(where, fmt::format("empty '{}' field", header[file_col]));
      continue;
    }
    if (row[file_col].find('\0') != std::string::npos) {
      // The system would read the name only up to the NUL: another file than the one stored.
      fail(where, fmt::format("the '{}' field contains a NUL byte, which no file name can hold",
                              header[file_col]));
      continue;
    }
    const CellTarget target = cell_target(row[file_col], base);
    if (!target.problem.empty()) {
      fail(where, target.problem);
      continue;
    }
    const fs::path& p = target.path;
    if (auto why = not_a_file(p)) {
      const bool missing = is_missing(p);
      missing_rows += missing;
      fail(where, fmt::format("{}: {}{}", p.string(), *why,
                              missing ? backslash_hint(row[file_col], base) : ""));
      continue;
    }
    nlohmann::json meta = nlohmann::json::object();
    for (std::size_t c : meta_cols) meta[header[c]] = row[c];
    const auto text = meta.dump();
    if (text.size() > store::kMaxMetadataBytes) {
      fail(where, fmt::format("metadata: {} bytes as JSON, at most {}", text.size(),
                              store::kMaxMetadataBytes));
      continue;
    }
    if (auto why = store::metadata_problem(text)) {  // e.g. a NUL byte in a cell
      fail(where, "metadata: " + *why);
      continue;
    }
    if (auto [it, fresh] = first_row.emplace(p.string(), r); !fresh) {
      out.result.repeated_rows.push_back({p, row_name(it->second), row_name(r)});
    }
    out.add({p, std::move(meta)});
  }
  // Not one file there, some of them missing: an unmounted drive, or a folder moved away.
  if (out.result.files.empty() && missing_rows > 0) {
    out.result.unread_manifests.push_back({csv, n_rows});
  }
  return std::move(out.result);
}

ScanResult scan_inputs(const std::vector<fs::path>& inputs, const ScanOptions& options) {
  Collector out;
  for (const auto& input : inputs) {
    if (input.empty()) {
      // fs::absolute("") throws: an empty argument fails here, as a missing path does.
      out.result.problems.push_back({kEmptyPathName, "an empty argument names no file or folder"});
      continue;
    }
    std::error_code ec, link_ec;
    auto status = fs::status(input, ec);
    if (ec || !fs::exists(status)) {
      const bool link = ec && fs::is_symlink(fs::symlink_status(input, link_ec));
      out.result.problems.push_back(
          {input.string(), link ? symlink_problem(input, ec) : "no such file or folder"});
    } else if (fs::is_directory(status)) {
      walk_folder(input, options, out);
    } else if (is_manifest_path(input)) {
      try {
        out.merge(read_manifest(input, options));
      } catch (const std::exception& e) {
        // read_manifest's messages start with the manifest's path, which `where` already is.
        std::string reason = e.what();
        const std::string prefix = input.string() + ": ";
        if (reason.starts_with(prefix)) reason.erase(0, prefix.size());
        out.result.problems.push_back({input.string(), std::move(reason)});
      }
    } else {
      out.add({normalize_path(input), nlohmann::json::object()});
    }
  }
  return std::move(out.result);
}

}  // namespace lookalike::pipeline
