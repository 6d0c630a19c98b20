// `lookalike index`: bring a collection up to date with a set of files.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "image/decode.h"
#include "model/embedding_model.h"
#include "pipeline/batch_runner.h"
#include "pipeline/scan.h"
#include "store/collection.h"

namespace lookalike::pipeline {

struct Progress {
  std::int64_t done = 0;   // files examined so far
  std::int64_t total = 0;  // files to examine
  std::int64_t embedded = 0;
  double elapsed_s = 0;
  double files_per_s = 0;
  double eta_s = 0;  // estimated seconds left, at the current rate
};

struct IndexOptions {
  // The inputs given to scan_inputs, as given. The vanished check (IndexSummary::vanished) and
  // `prune` cover only the stored images under them (see find_vanished); empty: no vanished
  // check at all, and nothing is pruned.
  std::vector<std::filesystem::path> inputs;
  bool prune = false;      // remove the stored images find_vanished finds gone (under `inputs`)
  int batch_size = 32;     // images per forward pass and per catalog transaction
  int decode_threads = 1;  // workers decoding while the calling thread embeds
  image::DecodeOptions decode;
  const std::atomic<bool>* cancel = nullptr;         // Ctrl-C: stop, keep what is committed
  std::function<void(const Progress&)> on_progress;  // called after each committed batch
  EmbedFn embed;   // empty = model.embed (the engine passes its batcher)
  int passes = 1;  // forward passes in flight (RunOptions::passes)
};

struct Failure {
  std::string where;  // file path, or "<manifest> row N"
  std::string reason;
  // For a manifest row: the file it names (catalog form; ScanProblem::listed). Its stored
  // entry is never reported vanished nor pruned in this run, since the manifest still lists it.
  std::string kept_path = {};  // defaulted: a Failure is mostly built as {where, reason}
};

// A path that failed in this run (a missing input, an unreadable folder or manifest, ...) and
// how many stored images lie under it: not checked for the vanished report, never pruned.
struct Unchecked {
  std::string where;  // as in the Failure that names it
  std::int64_t images = 0;
};

struct IndexSummary {
  std::int64_t scanned = 0;    // files found in the inputs
  std::int64_t added = 0;      // new paths
  std::int64_t updated = 0;    // known paths whose content changed (re-embedded)
  std::int64_t unchanged = 0;  // same content hash as stored (metadata/mtime may be refreshed)
  std::int64_t metadata_updated = 0;  // of unchanged: metadata rewritten (a manifest's changed)
  std::int64_t reused = 0;            // of added+updated: embedding copied from identical content
  std::int64_t removed = 0;           // vanished files removed (--prune)
  std::vector<std::string> vanished;  // catalog paths whose file is gone (find_vanished)
  std::vector<Unchecked> unchecked;   // find_vanished's `skipped`: kept, not checked
  std::vector<Failure> failures;
  // The index cache could not be saved at the end (disk full, no write permission): every
  // committed batch is in the catalog, and the next open rebuilds the cache from it.
  std::string cache_warning;
  std::int64_t embedded = 0;  // images that went through the network
  double seconds = 0;         // wall time of the whole run (the model is loaded before it)
  double images_per_s = 0;    // embedded / seconds
  // Where the time went, for benchmarks (bench/precision.sh). Seconds, summed over threads:
  double prepare_seconds = 0;  // decode workers: read, hash, decode, preprocess, pHash
  double embed_seconds = 0;    // the forward passes, summed over the passes in flight
  double commit_seconds = 0;   // catalog and index writes of the batches
  // Steady state: images embedded after the first batch of each of the k passes in flight
  // (the k-th commit with embedded images), over the wall time from that commit to the last
  // one. It leaves out what does not grow with the number of images: the first forward pass at
  // the batch size (TorchScript's profiling run and oneDNN's kernel creation), filling the
  // decode queue, opening and saving the collection. 0 when k or fewer batches embedded images.
  double first_batch_seconds = 0;  // run start to the first commit with embedded images
  double steady_images_per_s = 0;
  bool interrupted = false;
  int decode_threads = 0;
  int model_threads = 0;
  int passes = 0;  // forward passes in flight (IndexOptions::passes)
  std::int64_t committed_batches = 0;
  // Set when a collection or model failure stopped the run after some batches were committed
  // (they are kept); a failure before the first commit is thrown instead.
  std::string fatal_error;
  // Set by the engine when it created the collection with `--index-spec auto`: what it picked
  // and why.
  std::string index_choice;
};

// Scans nothing itself: `scan` comes from scan_inputs(). Catalog writes are committed one batch
// at a time, so an interrupted or killed run keeps every batch it reported. A bad image file
// becomes a Failure and the run goes on; when its path is indexed already, the failure says
// that the earlier entry (its id) stays searchable with the vector of the earlier content (a
// half-written copy must not lose its image). A collection or model failure throws when nothing was
// committed yet, else ends the run with summary.fatal_error set.
// Metadata: a file that comes with none (from a folder, not a manifest) keeps what is stored.
// Embeddings are reused by content hash from whatever image holds that content at the time
// (never from a record whose content may have changed in the same run); an image whose stored
// vector is corrupt (Collection::corrupt_ids) is embedded again.
// With options.inputs, the run ends (unless interrupted or stopped by a failure) with
// find_vanished over the stored images and, with options.prune, removes the vanished ones;
// stored images it could not check become failures and are kept. Two cases are decided here:
// - a folder walk's broken symlink (ScanProblem::dangling_symlink) or entry that is no regular
//   file (ScanProblem::not_regular: a FIFO, a socket) that is in the collection is no failure:
//   find_vanished sees it gone, so it is reported vanished and pruned;
// - a manifest row that fails keeps the stored entry of the file it names (Failure::kept_path),
//   whatever became of the file: the failure says so, with the entry's id;
// - a manifest with rows none of which could be read, some naming missing files
//   (ScanResult::unread_manifests), while the collection holds images under its folder, becomes
//   a failure naming it ("none of its N rows could be read ...; the M indexed images under DIR
//   are kept (an unmounted drive?)"), so that nothing under its folder is checked or pruned;
// - a folder input whose walk found no image file (ScanResult::empty_folders) while the
//   collection holds images under it becomes a failure naming it ("holds no image files now;
//   its N indexed images are kept (an unmounted drive?) ..."), so that those images are kept
//   and listed as unchecked, never pruned; `lookalike remove DIR` removes them.
IndexSummary index_files(store::Collection& collection, model::EmbeddingModel& model,
                         const ScanResult& scan, const IndexOptions& options);

struct VanishedCheck {
  std::vector<std::int64_t> ids;    // stored images whose file is gone, in `records` order
  std::vector<std::string> paths;   // their paths
  std::vector<Failure> unreadable;  // stored images whose file could not be checked: kept
  std::vector<Unchecked> skipped;   // failed paths with stored images under them: kept
};

// Which of `records` have vanished, for `index --prune`. Only the stored images under this
// run's `inputs` are looked at (a folder: everything under it; an image file: that file; a CSV
// manifest: everything under the manifest's folder, where its relative paths point), so that
// `index A --prune` never touches what was indexed from B. Never looked at (`skipped`, with the
// count of stored images under each path): everything under an input that failed (a `failures`
// entry names it exactly: missing, unreadable, a manifest that cannot be read; a typo or an
// unmounted drive must not wipe a collection) and under any path a failure names (a subfolder
// that cannot be read, a broken symlink). Never vanished either: a failure's kept_path (a
// manifest row still lists it). A file counts as vanished when stat() says it does not exist
// (ENOENT or ENOTDIR) or that it is no regular file now (a directory, a FIFO, a socket, ...:
// symlinks followed); any other error (EACCES, EIO, ...) keeps it, as an `unreadable` failure
// with the cause. Input paths are compared lexically (normalize_path), as
// the catalog stores them.
VanishedCheck find_vanished(const std::vector<store::ImageRecord>& records,
                            const std::vector<std::filesystem::path>& inputs,
                            const std::vector<Failure>& failures);

}  // namespace lookalike::pipeline
