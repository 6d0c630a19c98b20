// The crash test's child: opens a collection for writing and applies batches until killed,
// reporting on stdout after each batch is durable. Batch n puts /crash/b<n>/i<j> (j < 8) with
// vector crash_vector(n, j) and removes /crash/b<n-1>/i0. Usage: crash_writer DIR FIRST_BATCH
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "store/collection.h"
#include "tests/crash_test_util.h"

namespace {

void say(const std::string& line) {
  std::string text = line + "\n";
  // Unbuffered: a line is in the pipe before anything that follows it can be killed.
  if (::write(STDOUT_FILENO, text.data(), text.size()) < 0) std::exit(3);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace lookalike;
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s DIR FIRST_BATCH\n", argv[0]);
    return 2;
  }
  try {
    auto c = store::Collection::create_or_open(argv[1], testing::crash_config());
    // Opening recovered: the index was loaded from its cache or rebuilt (and saved).
    say("opened");
    for (int n = std::atoi(argv[2]);; ++n) {
      std::vector<std::int64_t> removes;
      if (auto prev = c->find_path(testing::crash_path(n - 1, 0))) {
        removes.push_back(prev->id);
      }
      c->apply(testing::crash_batch(n), removes);
      say("committed " + std::to_string(n));
      if (n % 3 == 0) {
        say("saving");
        c->save_index();
        say("saved");
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crash_writer: %s\n", e.what());
    return 1;
  }
}
