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

// Shown as "<where>: <reason>". Both hold raw bytes (paths may not be UTF-8): use
// utf8_display (files.h) before putting them in JSON.
struct ScanProblem {
  // A path; "(empty path)" for an empty input; "<manifest.csv> row N" or "<manifest.csv> row N,
  // column C", with " (line L)" after N when the row starts on another line than its number
  // (blank lines or quoted newlines before it).
  std::string where;
  std::string reason;
  // A symlink met in a folder walk whose target does not exist (stat: ENOENT): when it is in
  // the collection, index_files counts it as vanished rather than as a failure.
  bool dangling_symlink = false;
  // An entry with an image name met in a folder walk that is no regular file (a FIFO, a socket,
  // a device): when it is in the collection, index_files counts it as vanished, as it does a
  // dangling symlink (its stored vector no longer stands for any image file).
  bool not_regular = false;
  // The file a manifest row names (absolute, lexically normal) when the row fails: its stored
  // entry is kept whatever became of the file (index_files never prunes it), since the row still
  // lists it. Empty for other problems and for rows whose file cell names no path.
  std::filesystem::path listed = {};
};

// A manifest that has rows but none of whose rows could be read (every one a ScanProblem):
// what a manifest of an unmounted drive looks like. index_files keeps the stored images under
// its folder unchecked.
struct UnreadManifest {
  std::filesystem::path manifest;  // as given
  std::size_t rows = 0;            // rows after the header
};

// A manifest row that lists a path an earlier row of the same manifest lists: "row N" names
// as in ScanProblem::where ("row 4 (line 6)").
struct RepeatedRow {
  std::filesystem::path path;  // absolute, lexically normal
  std::string first_row;
  std::string repeat_row;
};

struct ScanResult {
  std::vector<SourceFile> files;  // unique paths, in input order
  std::vector<ScanProblem> problems;
  // Manifest rows that repeat a path (read_manifest; kept as scan_inputs says: first position,
  // later metadata). `index` goes by that; `eval` refuses such a manifest.
  std::vector<RepeatedRow> repeated_rows;
  // Folder inputs (as given) whose walk found no image file at all: what an unmounted drive's
  // mount point looks like. index_files keeps the stored images under them unchecked.
  std::vector<std::filesystem::path> empty_folders;
  // Manifest inputs with rows, none of which could be read (see UnreadManifest).
  std::vector<UnreadManifest> unread_manifests;
};

// The text a ScanProblem gives an empty input (an empty argument, `index ""`) as its `where`.
inline constexpr const char* kEmptyPathName = "(empty path)";

// Whether `p` is treated as a CSV manifest: its extension is ".csv" in any case (".Csv" too).
bool is_manifest_path(const std::filesystem::path& p);

struct ScanOptions {
  // Manifest column holding the image path; empty = the first of file, path, image, filename,
  // image_path, filepath (case-insensitive).
  std::string file_column;
  bool include_hidden = false;  // hidden files and folders are skipped by default, like fd
};

// File extensions treated as images when walking a folder (lower case, with the dot), matched
// case-insensitively. All decode (image/decode.h): .heic/.heif/.avif through libheif.
const std::vector<std::string>& image_extensions();

// Each input is a folder, a CSV manifest (is_manifest_path: ".csv" in any case) or an image
// file; paths may hold any bytes (they need not be UTF-8). Scanning goes on past every problem.
// An empty input is a ScanProblem named kEmptyPathName ("an empty argument names no file or
// folder"), as a missing one.
//
// A folder is walked recursively for entries with an image extension that are regular files
// or symlinks to regular files (listed under the symlink's own path). Not followed, like fd:
// symlinks to folders (so a symlink loop cannot recurse). Skipped silently: hidden entries
// (unless include_hidden), entries without an image extension, and folders, even ones named
// like an image ("x.jpg/" is walked into, never listed). Reported as a ScanProblem naming the
// path: a subfolder that cannot be read ("cannot read folder: Permission denied"; the walk goes
// on without it), and, among entries with an image extension, a broken symlink ("broken
// symlink (its target T does not exist)"), a symlink loop ("symlink loop (too many levels of
// symbolic links)") and anything not a regular file ("not a regular file (a FIFO)", ...).
// A broken symlink's problem has dangling_symlink set. A folder input whose walk finds no image
// file is listed in empty_folders. Folder results are sorted by path (bytewise); problems too.
//
// A missing input, a malformed manifest or a manifest row naming a missing file also becomes
// a ScanProblem. When the same path is listed twice, it keeps its first position and the later
// (non-empty) metadata wins.
ScanResult scan_inputs(const std::vector<std::filesystem::path>& inputs,
                       const ScanOptions& options = {});

// Parses a CSV manifest (RFC 4180 through libcsv: quoted fields may hold commas, quotes as "",
// and newlines; a UTF-8 byte order mark is skipped). The manifest must be UTF-8 and at most
// kDefaultMaxReadBytes (files.h, 256 MiB); a single field may be as large as that.
// Rows are numbered as CSV records, the header being row 1 (a newline inside a quoted field
// does not start a row; blank lines are not rows); a problem names the line a row starts on
// too when it differs ("row 3 (line 6)"). The file column's paths are resolved against the
// manifest's folder
// ("../x.jpg" and "sub/../x.jpg" included) and made lexically normal; absolute paths are kept.
// A local file URL ("file:///abs/path", or "file://localhost/abs/path"; %XX decoded) is its
// path; any other URL ("https://...") fails its row ("a URL, and lookalike indexes local files
// only ..."). A path holding '\' that is not found gets a hint when its '/' form exists.
// Every failed row's problem carries the file its file cell names (ScanProblem::listed).
// A row with a cell that is not valid UTF-8 is skipped, with the ScanProblem "<manifest> row N,
// column C: not valid UTF-8" (C counted from 1); a row with the wrong number of fields, an
// empty file cell, a file cell holding a NUL byte ("... contains a NUL byte"), or naming a
// missing or non-regular file is skipped with its problem too; the other rows load. Duplicate
// rows: as scan_inputs (first position, later metadata), each listed in repeated_rows. Every column
// other than the file column is metadata under its header name; a column with no name is ignored
// when every row leaves it empty (a trailing comma, as spreadsheets write), and refuses the
// manifest otherwise. A manifest with rows none of which loaded, some naming missing files, is
// listed in unread_manifests. Throws std::runtime_error naming the file and the cause for an
// unreadable file, a UTF-16 file (a byte order mark FF FE or FE FF: "the file is UTF-16 ..."),
// bad quoting, an empty manifest, a header and no rows ("no rows after the header"), a header
// cell that is not UTF-8, a header without a file column (saying so when it looks separated by
// ';' or tabs) or with two (case-insensitively), two metadata columns of the same name
// ("columns 2 and 3 are both named 'tag'"), or a column with no name that holds a value
// ("column 4 has no name, ...").
ScanResult read_manifest(const std::filesystem::path& csv, const ScanOptions& options = {});

}  // namespace lookalike::pipeline
