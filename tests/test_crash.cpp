// kill -9 at random moments: a writer child applies batches until SIGKILLed; after every kill
// the collection must open, hold every batch the child reported as committed (exact vectors),
// nothing half-written, and an index that agrees with the catalog.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <string>
#include <vector>

#include "store/collection.h"
#include "tests/crash_test_util.h"

namespace {

using lookalike::store::Collection;
using namespace lookalike::testing;
using Clock = std::chrono::steady_clock;

struct Round {
  std::vector<int> committed;
  bool opened = false;                        // the child finished recovery and started writing
  bool in_save = false;                       // killed between "saving" and "saved"
  bool killed = false;                        // died of our SIGKILL, not of an error
  std::chrono::microseconds opened_after{0};  // from the fork to "opened", when it opened
};

// Starts the writer; kills it `delay` after spawning it, or, with `after_saving`, `delay` after
// it announces a save_index() call.
Round run_and_kill(const std::string& dir, int first, std::chrono::microseconds delay,
                   bool after_saving) {
  const std::string writer = LOOKALIKE_CRASH_WRITER, first_arg = std::to_string(first);
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::execl(writer.c_str(), writer.c_str(), dir.c_str(), first_arg.c_str(), nullptr);
    ::_exit(127);
  }
  ::close(fds[1]);
  const auto spawned = Clock::now();
  Round round;
  std::string buffer;
  bool saving = false;
  auto handle = [&](const std::string& line) {
    if (line == "opened") {
      round.opened = true;
      round.opened_after =
          std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - spawned);
    }
    if (line == "saving") saving = true;
    if (line == "saved") saving = false;
    if (line.rfind("committed ", 0) == 0) round.committed.push_back(std::stoi(line.substr(10)));
  };
  auto read_some = [&](int timeout_ms) {
    pollfd p{fds[0], POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return true;
    char chunk[4096];
    auto n = ::read(fds[0], chunk, sizeof chunk);
    if (n <= 0) return false;  // EOF
    buffer.append(chunk, static_cast<std::size_t>(n));
    for (auto nl = buffer.find('\n'); nl != std::string::npos; nl = buffer.find('\n')) {
      handle(buffer.substr(0, nl));
      buffer.erase(0, nl + 1);
    }
    return true;
  };
  const auto give_up = Clock::now() + std::chrono::seconds(20);
  auto deadline = after_saving ? give_up : Clock::now() + delay;
  bool alive = true;
  while (alive && Clock::now() < deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    alive = read_some(static_cast<int>(std::max<std::int64_t>(0, left.count())));
    if (after_saving && saving && deadline == give_up) deadline = Clock::now() + delay;
  }
  round.in_save = saving;
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  round.killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
  while (read_some(1000)) {
  }  // lines already in the pipe were reported before the kill
  ::close(fds[0]);
  return round;
}

// Everything up to batch `last` was reported committed; batch last + 1 may or may not be.
void verify(const std::string& dir, int last, Collection::Mode mode) {
  auto c = Collection::open(dir, mode);
  std::vector<std::pair<std::int64_t, std::vector<float>>> samples;
  for (int n = 0; n <= last; ++n) {
    for (int j = 0; j < kCrashBatch; ++j) {
      auto r = c->find_path(crash_path(n, j));
      if (j == 0 && n < last) {
        EXPECT_FALSE(r) << crash_path(n, j) << " was removed by a committed batch";
        continue;
      }
      if (j == 0 && !r) continue;  // removed by batch last + 1, committed but not reported
      ASSERT_TRUE(r) << crash_path(n, j) << " lost; batch " << n << " was reported committed";
      auto v = c->embedding(r->id);
      ASSERT_TRUE(v) << crash_path(n, j);
      ASSERT_EQ(*v, crash_vector(n, j)) << crash_path(n, j);
      if (j == 1 && n % 7 == 0) samples.push_back({r->id, *v});
    }
  }
  int next = 0;  // images of batch last + 1: all or nothing
  for (int j = 0; j < kCrashBatch; ++j) {
    if (auto r = c->find_path(crash_path(last + 1, j))) {
      ++next;
      EXPECT_EQ(*c->embedding(r->id), crash_vector(last + 1, j));
      samples.push_back({r->id, crash_vector(last + 1, j)});
    }
  }
  ASSERT_TRUE(next == 0 || next == kCrashBatch) << "batch " << last + 1 << " half applied";
  std::int64_t expected = next;
  if (last >= 0) {
    expected = std::int64_t{last + 1} * (kCrashBatch - 1) + (next ? kCrashBatch : 1);
    EXPECT_EQ(c->find_path(crash_path(last, 0)).has_value(), next == 0);
  }
  EXPECT_EQ(c->count(), expected) << "duplicates or strays in the catalog";
  EXPECT_EQ(c->index_size(), expected) << "index out of step with the catalog";
  EXPECT_EQ(c->info().index_vectors, expected);
  EXPECT_TRUE(c->corrupt_ids().empty()) << "a vector was damaged by a kill";
  for (const auto& [id, v] : samples) {
    auto hits = c->search(v.data(), 1, 1)[0];
    ASSERT_EQ(hits.size(), 1u);
    EXPECT_EQ(hits[0].image.id, id);
    EXPECT_NEAR(hits[0].score, 1.0f, 1e-4);
  }
}

// After a kill during creation: either no catalog (nothing was reported) or a complete one.
void expect_no_half_collection(const std::string& dir) {
  const auto db = std::filesystem::path(dir) / "catalog.db";
  if (!Collection::exists(dir)) {
    EXPECT_FALSE(std::filesystem::exists(db) && std::filesystem::file_size(db) > 0);
    return;
  }
  std::string files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    files += " " + e.path().filename().string() + "(" +
             std::to_string(e.is_regular_file() ? e.file_size() : 0) + ")";
  }
  SCOPED_TRACE("left:" + files);
  std::unique_ptr<lookalike::store::Catalog> catalog;
  ASSERT_NO_THROW(catalog = lookalike::store::Catalog::open_read_only(db));
  ASSERT_TRUE(catalog->config()) << "a catalog without config was left behind";
  EXPECT_EQ(catalog->config()->model_id, crash_config().model_id);
  auto c = Collection::open(dir, Collection::Mode::Read);
  EXPECT_EQ(c->index_size(), c->count());
}

// kill -9 while create_or_open creates the collection (delays spread over the writer's start-up,
// creation included): never half a collection, and the next run creates or opens it.
TEST(CrashSafety, KillDuringCreationLeavesNoHalfCollection) {
  const auto probe = scratch_dir("crash_create_probe").string();
  // How long the writer takes from fork to "opened" when it creates the collection.
  auto timing = run_and_kill(probe, 0, std::chrono::microseconds(0), /*after_saving=*/true);
  ASSERT_TRUE(timing.opened) << "the writer never opened a collection";
  const auto span = timing.opened_after;
  const int rounds = 16;
  int created = 0, none = 0;
  for (int r = 0; r < rounds; ++r) {
    const auto dir = scratch_dir("crash_create").string();
    auto delay = span * r / rounds;
    SCOPED_TRACE("kill " + std::to_string(delay.count()) + " us after the fork");
    auto round = run_and_kill(dir, 0, delay, false);
    ASSERT_TRUE(round.killed) << "the writer died on its own (see stderr)";
    expect_no_half_collection(dir);
    if (HasFatalFailure()) return;
    (Collection::exists(dir) ? created : none) += 1;
    // The next writer gets on with it, whatever the kill left.
    int last = round.committed.empty() ? -1 : round.committed.back();
    auto next = run_and_kill(dir, last + 1, std::chrono::microseconds(0), true);
    ASSERT_TRUE(next.opened) << "the collection could not be created or opened after the kill";
    if (!next.committed.empty()) last = next.committed.back();
    verify(dir, last, Collection::Mode::Read);
    if (HasFatalFailure()) return;
  }
  std::printf("%d kills during start-up (%lld us): %d left a collection, %d nothing\n", rounds,
              static_cast<long long>(span.count()), created, none);
}

TEST(CrashSafety, KillNineAtRandomMomentsLosesNothingReported) {
  const auto dir = scratch_dir("crash").string();
  std::mt19937 rng(20240611);
  int last = -1, in_save = 0, before_open = 0;
  const int rounds = 20;
  for (int r = 0; r < rounds; ++r) {
    const bool after_saving = r % 3 == 2;
    auto delay = after_saving ? std::chrono::microseconds(rng() % 3000)
                              : std::chrono::microseconds(rng() % 250000);
    auto round = run_and_kill(dir, last + 1, delay, after_saving);
    ASSERT_TRUE(round.killed) << "round " << r << ": the writer died on its own (see stderr)";
    for (int n : round.committed) {
      ASSERT_GT(n, last) << "round " << r << ": batches out of order";
      last = n;
    }
    in_save += round.in_save;
    before_open += !round.opened;
    SCOPED_TRACE("round " + std::to_string(r) + ", last committed batch " + std::to_string(last));
    if (last < 0 && !Collection::exists(dir)) {
      expect_no_half_collection(dir);  // killed while creating it: nothing to verify yet
      continue;
    }
    verify(dir, last, r % 2 ? Collection::Mode::Read : Collection::Mode::Write);
    if (HasFatalFailure()) return;
  }
  std::printf("%d rounds: %d batches committed, %d kills inside save_index, %d during recovery\n",
              rounds, last + 1, in_save, before_open);
  EXPECT_GT(last, 20) << "the writer made too little progress to test anything";
  EXPECT_GE(in_save, 1) << "no kill landed inside save_index";
}

}  // namespace
