// A labelled image set for `lookalike eval`: image files and one class label each.
//
// From a folder: the label is the name of the first-level subfolder, and every image below it
// (recursively, as pipeline::scan_inputs walks folders: hidden entries skipped, sorted by path)
// belongs to that class: DIR/dress/a.jpg and DIR/dress/summer/b.jpg are both "dress". Images
// directly in DIR have no class: they are skipped with a warning (LabelledSet::unlabelled and
// `skipped`), not an error, so that a stray README.png or cover image does not stop a run; a
// folder where nothing is labelled is an error.
//
// From a CSV manifest (".csv"): pipeline::read_manifest reads it (file column: --file-column,
// else the first of file, path, image, ...; paths relative to the manifest's folder) and the
// label is the column `label_column` (exact name, else the one name matching it
// case-insensitively). Rows with an empty label are skipped and counted (empty_labels); rows
// that read_manifest refuses (missing file, wrong field count, ...) are skipped and listed. A
// path listed by two rows (however spelled: the paths are compared resolved and lexically
// normal) refuses the manifest, naming both rows and the path.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace lookalike::eval {

// A set that cannot be used: what() names the file or folder and the cause.
class LabelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A manifest that lists one image twice: its labels contradict or repeat each other, so no
// command may read it as unlabelled photos instead (`models calibrate` falls back to that for
// other label errors).
class RepeatedImageError : public LabelError {
 public:
  using LabelError::LabelError;
};

struct LabelledSet {
  std::filesystem::path source;              // the folder or manifest given
  std::vector<std::filesystem::path> files;  // absolute, lexically normal, unique
  std::vector<std::string> labels;           // labels[i] is the class of files[i]
  std::int64_t unlabelled = 0;               // folder: images directly in the root
  std::int64_t empty_labels = 0;             // manifest: rows with an empty label
  std::int64_t unreadable = 0;               // scan or manifest problems (missing files, ...)
  std::vector<std::string> skipped;          // "<where>: <reason>" for each of the above
};

// Throws LabelError (naming `source`) when it does not exist, is neither a folder nor a ".csv"
// file, has no labelled image, or (manifest) lacks the label column (the message lists the
// columns it has); RepeatedImageError when a manifest repeats a path (naming both rows and the
// path). Manifest parse errors come from read_manifest (std::runtime_error naming the file) and
// are rethrown as LabelError.
LabelledSet load_labelled_set(const std::filesystem::path& source,
                              const std::string& label_column = "label",
                              const std::string& file_column = "");

}  // namespace lookalike::eval
