// Temporary files of `lookalike train`: names, the sweep of abandoned ones, and their removal on
// SIGINT / SIGTERM. See train/temp_files.h.
#include "train/temp_files.h"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstring>
#include <thread>

namespace lookalike::train {
namespace fs = std::filesystem;

namespace {

// Who holds the registry. A signal handler may run on any thread, also on one that is updating
// the registry, so it never waits: while the registry is busy it leaves the signal pending and
// the holder raises it again on release.
enum : int { kIdle = 0, kBusy = 1, kCleaning = 2 };
std::atomic<int> g_state{kIdle};
std::atomic<int> g_pending_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);

// Plain arrays, read by the handler only while it holds kCleaning (nothing writes them then).
struct Slot {
  bool used = false;
  char path[PATH_MAX] = {};
};
Slot g_slots[kMaxTempFiles];

void acquire() {
  for (;;) {
    int expected = kIdle;
    if (g_state.compare_exchange_weak(expected, kBusy)) return;
    if (expected == kCleaning) {
      for (;;) ::pause();  // a handler is removing the files and ends the process
    }
    std::this_thread::yield();
  }
}

void release() {
  g_state.store(kIdle);
  if (const int signal = g_pending_signal.exchange(0)) ::raise(signal);
}

const char* const kSuffixes[] = {".pt", ".json", ".backbone.pt", ".pt.tmp"};

// A process with this id exists (EPERM: it does, under another user).
bool process_alive(long pid) {
  return pid > 0 && pid <= INT_MAX && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM);
}

// `name` is `<prefix><pid><suffix>` for one of our suffixes, and that process is gone.
bool abandoned(const std::string& name, const std::string& prefix) {
  if (name.rfind(prefix, 0) != 0) return false;
  std::size_t end = prefix.size();
  while (end < name.size() && end - prefix.size() < 10 && name[end] >= '0' && name[end] <= '9')
    ++end;
  if (end == prefix.size()) return false;
  const std::string rest = name.substr(end);
  bool ours = false;
  for (const char* s : kSuffixes) ours = ours || rest == s;
  return ours && !process_alive(std::stol(name.substr(prefix.size(), end - prefix.size())));
}

}  // namespace

fs::path temp_path(const fs::path& out, const std::string& suffix) {
  return out.parent_path() /
         fmt::format(".{}.tmp-{}{}", out.stem().string(), static_cast<long>(::getpid()), suffix);
}

std::vector<fs::path> sweep_stale_temp_files(const fs::path& out) {
  const fs::path dir = out.has_parent_path() ? out.parent_path() : fs::path(".");
  const std::string prefix = fmt::format(".{}.tmp-", out.stem().string());
  const std::string legacy = out.filename().string() + ".backbone.tmp";
  std::vector<fs::path> removed;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code st;
    if (!fs::is_regular_file(it->symlink_status(st))) continue;  // never a link or a folder
    const std::string name = it->path().filename().string();
    if (name != legacy && !abandoned(name, prefix)) continue;
    if (fs::remove(it->path(), st)) removed.push_back(it->path());
  }
  return removed;
}

TempFileGuard::TempFileGuard(const fs::path& path) {
  const std::string s = fs::absolute(path).string();
  if (s.size() >= PATH_MAX) return;
  acquire();
  for (int i = 0; i < kMaxTempFiles && slot_ < 0; ++i) {
    if (g_slots[i].used) continue;
    std::memcpy(g_slots[i].path, s.c_str(), s.size() + 1);
    g_slots[i].used = true;
    slot_ = i;
  }
  release();
}

TempFileGuard::~TempFileGuard() {
  if (slot_ < 0) return;
  acquire();
  g_slots[slot_].used = false;
  release();
}

CommitGuard::CommitGuard() { acquire(); }
CommitGuard::~CommitGuard() { release(); }

bool remove_temp_files_for_signal(int signal) noexcept {
  for (;;) {
    int expected = kIdle;
    if (g_state.compare_exchange_strong(expected, kCleaning)) break;
    if (expected == kCleaning) return false;  // another thread's handler does it
    g_pending_signal.store(signal);
    // Still held: its holder sees the pending signal when it releases (sequentially
    // consistent: the store above comes before that release's exchange). Else retry.
    if (g_state.load() == kBusy) return false;
  }
  for (const auto& s : g_slots)
    if (s.used) ::unlink(s.path);
  return true;
}

}  // namespace lookalike::train
