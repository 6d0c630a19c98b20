// The temporary files of a `lookalike train` run and their removal when the run is interrupted
// or was killed. The archive, its card and a fine-tuned backbone are written beside --out under
// temporary names (docs/train.md, "Archive and card"), 10 MB and more each; an interrupted run
// used to leave them there for good. Now:
//  - while such a file exists it is registered (TempFileGuard), and the CLI's SIGINT / SIGTERM
//    handler calls remove_temp_files_for_signal(), which unlinks them before the process exits;
//  - the renames that put a finished model in place are a commit (CommitGuard): a signal during
//    them is held until both are done, so that PATH.pt and PATH.json always belong together;
//  - a run first removes what a killed run (kill -9, power loss) left for the same --out
//    (sweep_stale_temp_files), and only files of its own name pattern whose process is gone.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace lookalike::train {

// `.<stem of out>.tmp-<pid><suffix>` beside `out`: the archive (".pt"), its card (".json"), the
// fine-tuned backbone (".backbone.pt"). Hidden, and named by the process that writes it, so that
// the sweep can tell an abandoned file from one a running process is writing.
std::filesystem::path temp_path(const std::filesystem::path& out, const std::string& suffix);

// Removes, beside `out`, the temporary files of earlier runs for the same `out` whose process no
// longer runs (`.<stem>.tmp-<pid>.pt`, `.json`, `.backbone.pt`, `.pt.tmp`) and the fixed-name
// backbone of older versions (`<name>.backbone.tmp`). Nothing else is touched. Returns the
// files removed; a file that cannot be removed is skipped (the run does not need it gone).
std::vector<std::filesystem::path> sweep_stale_temp_files(const std::filesystem::path& out);

// Registers `path` for removal on interrupt while the guard lives. At most kMaxTempFiles at
// once, each shorter than PATH_MAX; past that a file is not registered (then only the run's own
// cleanup and the next run's sweep remove it).
class TempFileGuard {
 public:
  explicit TempFileGuard(const std::filesystem::path& path);
  ~TempFileGuard();
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;

 private:
  int slot_ = -1;
};
inline constexpr int kMaxTempFiles = 8;

// Holds the signal cleanup off while it lives. A signal that arrived meanwhile is raised again
// when it ends, and then ends the process as usual (the model is written whole by then). When
// the cleanup has already started (a signal just before), the constructor never returns: the
// handler is about to end the process.
class CommitGuard {
 public:
  CommitGuard();
  ~CommitGuard();
  CommitGuard(const CommitGuard&) = delete;
  CommitGuard& operator=(const CommitGuard&) = delete;
};

// For a SIGINT / SIGTERM handler: unlinks every registered file and returns true; the handler
// then ends the process (_exit). Returns false, removing nothing, while a guard is being updated
// or a commit runs: `signal` is raised again once that ends. Async-signal-safe.
bool remove_temp_files_for_signal(int signal) noexcept;

}  // namespace lookalike::train
