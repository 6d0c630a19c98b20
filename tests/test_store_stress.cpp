// Concurrency stress on one Collection: 8 threads search while one writer applies batches
// (new images, updates, removes, metadata edits) and saves the index, for
// LOOKALIKE_STRESS_SECONDS (default 10); 2 of the 8 search through a second, Read-mode
// Collection on the same directory (as another process would). The writer records what every
// generation held; every search is checked against the generation it reports: only ids live then,
// with their vectors, paths and metadata of then, k results whenever that generation held k,
// sorted, ranked, no duplicates, scores equal to the dot product, and (every 16th search) exactly
// the best k. scripts/tsan.sh runs it under ThreadSanitizer.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "store/collection.h"
#include "tests/store_test_util.h"

namespace {

using lookalike::store::CatalogConfig;
using lookalike::store::Collection;
using lookalike::store::Put;
using lookalike::store::SearchResult;
using lookalike::testing::scratch_dir;
using lookalike::testing::seeded_vector;
using Clock = std::chrono::steady_clock;

constexpr int kDim = 64;
constexpr int kK = 10;
constexpr int kSearchers = 8;
constexpr int kReadModeSearchers = 2;      // of kSearchers
constexpr std::size_t kTargetSize = 2000;  // the writer removes more once past it

int stress_seconds() {
  const char* s = std::getenv("LOOKALIKE_STRESS_SECONDS");
  int n = s ? std::atoi(s) : 0;
  return n > 0 ? n : 10;
}

// One state of one image: live in generations [from, to).
struct Version {
  std::int64_t from = 0;
  std::int64_t to = INT64_MAX;
  std::string path;
  std::string metadata;
  std::vector<float> vector;
};

// What each generation held, written by the writer after each commit returns and read by the
// searchers. Versions of an id live in a deque: appending never moves the ones already there.
class History {
 public:
  // Under the shared lock: the version of `id` live at `generation`, if any.
  class View {
   public:
    View(const History& h, std::int64_t generation) : h_(h), lock_(h.mu_), g_(generation) {}
    const Version* at(std::int64_t id) const {
      auto it = h_.versions_.find(id);
      if (it == h_.versions_.end()) return nullptr;
      for (auto v = it->second.rbegin(); v != it->second.rend(); ++v) {
        if (v->from <= g_ && g_ < v->to) return &*v;
        if (v->to <= g_) break;  // versions are in order: older ones ended earlier
      }
      return nullptr;
    }
    std::int64_t count() const { return h_.count_.at(g_); }
    template <class F>
    void for_each_live(F&& f) const {
      for (const auto& [id, versions] : h_.versions_) {
        if (const auto* v = at(id)) f(id, *v);
      }
    }

   private:
    const History& h_;
    std::shared_lock<lookalike::store::RwLock> lock_;
    std::int64_t g_;
  };

  // The state of `generation`: `ended` ids stopped being live (removed or replaced), `started`
  // versions began. Generations are published in order, each exactly once.
  void publish(std::int64_t generation, const std::vector<std::int64_t>& ended,
               std::vector<std::pair<std::int64_t, Version>> started, std::int64_t count) {
    {
      std::unique_lock lock(mu_);
      for (auto id : ended) versions_.at(id).back().to = generation;
      for (auto& [id, v] : started) {
        auto& versions = versions_[id];
        if (!versions.empty() && versions.back().to > generation) versions.back().to = generation;
        v.from = generation;
        versions.push_back(std::move(v));
      }
      count_[generation] = count;
      published_ = generation;
    }
    { std::lock_guard lock(wait_mu_); }  // a waiter between its check and its wait gets woken
    cv_.notify_all();
  }

  // Waits until `generation` is published (a search can see a generation whose apply() has not
  // returned to the writer yet); false after `timeout`.
  bool wait_for(std::int64_t generation, std::chrono::seconds timeout) const {
    std::unique_lock lock(wait_mu_);
    return cv_.wait_for(lock, timeout, [&] {
      std::shared_lock s(mu_);
      return published_ >= generation;
    });
  }

 private:
  // Prefers the writer: with 8 searchers holding it in turn, a reader-preferring lock (glibc's
  // default) could keep publish() waiting for ever.
  mutable lookalike::store::RwLock mu_;
  mutable std::mutex wait_mu_;
  mutable std::condition_variable_any cv_;
  std::unordered_map<std::int64_t, std::deque<Version>> versions_;
  std::unordered_map<std::int64_t, std::int64_t> count_;
  std::int64_t published_ = -1;
};

// Failures seen on any thread, reported by the main thread (the first few in full).
class Failures {
 public:
  void add(std::string what) {
    std::lock_guard lock(mu_);
    if (messages_.size() < 20) messages_.push_back(std::move(what));
    ++count_;
  }
  int count() const {
    std::lock_guard lock(mu_);
    return count_;
  }
  std::string report() const {
    std::lock_guard lock(mu_);
    std::string out;
    for (const auto& m : messages_) out += "  " + m + "\n";
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> messages_;
  int count_ = 0;
};

float dot(const float* a, const float* b) {
  double s = 0;
  for (int d = 0; d < kDim; ++d) s += double{a[d]} * b[d];
  return static_cast<float>(s);
}

std::string metadata_of(std::uint64_t n) { return "{\"v\":" + std::to_string(n) + "}"; }

// The writer's own view of the collection (only the writer thread touches it).
struct Model {
  std::vector<std::int64_t> live;                       // ids, any order
  std::unordered_map<std::int64_t, std::size_t> where;  // id -> index in live
  std::unordered_map<std::int64_t, std::string> path;   // live id -> path

  void add(std::int64_t id, const std::string& p) {
    if (where.emplace(id, live.size()).second) live.push_back(id);
    path[id] = p;
  }
  void remove(std::int64_t id) {
    auto it = where.find(id);
    if (it == where.end()) return;
    auto i = it->second;
    where[live.back()] = i;
    std::swap(live[i], live.back());
    live.pop_back();
    where.erase(id);
    path.erase(id);
  }
};

struct Stats {
  std::atomic<std::int64_t> searches{0}, read_mode_searches{0}, exact_checks{0}, waited{0},
      excluded{0};
  std::atomic<std::int64_t> batches{0}, puts{0}, removes{0}, metadata_edits{0}, saves{0},
      compactions{0};
  std::atomic<std::int64_t> max_id{0};
};

void check_search(const Collection& c, const History& history, Failures& failures, Stats& stats,
                  std::mt19937_64& rng, std::int64_t& last_seen, bool exact) {
  auto q = seeded_vector(rng(), kDim);
  std::vector<std::int64_t> exclude;
  if (rng() % 4 == 0) {
    exclude.push_back(1 + static_cast<std::int64_t>(rng() % stats.max_id.load()));
    ++stats.excluded;
  }
  std::int64_t g = -1;
  auto all = c.search(q.data(), 1, kK, exclude, &g);
  ++stats.searches;
  auto fail = [&](const std::string& what) {
    failures.add("search at generation " + std::to_string(g) + ": " + what);
  };
  if (all.size() != 1) return fail("expected 1 result list, got " + std::to_string(all.size()));
  const auto& results = all[0];
  if (g < last_seen) {
    fail("generation went back from " + std::to_string(last_seen));
  }
  last_seen = g;
  if (!history.wait_for(g, std::chrono::seconds(0))) {
    ++stats.waited;
    if (!history.wait_for(g, std::chrono::seconds(60))) return fail("generation never published");
  }
  History::View view(history, g);
  std::int64_t held = view.count();
  if (!exclude.empty() && view.at(exclude[0])) --held;
  const auto want = static_cast<std::size_t>(std::min<std::int64_t>(kK, held));
  if (results.size() != want) {
    fail(std::to_string(results.size()) + " results, the generation held " + std::to_string(held) +
         " (k " + std::to_string(kK) + ")");
  }
  std::unordered_set<std::int64_t> seen;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    const auto id = r.image.id;
    const std::string who = "rank " + std::to_string(i + 1) + " id " + std::to_string(id) + ": ";
    if (r.rank != static_cast<int>(i) + 1) fail(who + "rank field " + std::to_string(r.rank));
    if (i > 0 && r.score > results[i - 1].score) fail(who + "scores not descending");
    if (!seen.insert(id).second) fail(who + "duplicate id");
    if (!exclude.empty() && id == exclude[0]) fail(who + "excluded id returned");
    const auto* v = view.at(id);
    if (!v) {
      fail(who + "not live at this generation");
      continue;
    }
    if (r.image.path != v->path) fail(who + "path " + r.image.path + ", expected " + v->path);
    if (r.image.metadata != v->metadata) {
      fail(who + "metadata " + r.image.metadata + ", at this generation " + v->metadata);
    }
    const float expected = dot(q.data(), v->vector.data());
    if (std::abs(r.score - expected) > 1e-4f) {
      fail(who + "score " + std::to_string(r.score) + ", its vector gives " +
           std::to_string(expected));
    }
  }
  if (exact && !results.empty()) {
    // Flat is exact: nothing live at g (and not excluded) beats the last result.
    ++stats.exact_checks;
    const float floor = results.back().score;
    view.for_each_live([&](std::int64_t id, const Version& v) {
      if (seen.count(id) || (!exclude.empty() && id == exclude[0])) return;
      const float s = dot(q.data(), v.vector.data());
      if (s > floor + 1e-4f) {
        fail("id " + std::to_string(id) + " (score " + std::to_string(s) +
             ") missing from the results (last score " + std::to_string(floor) + ")");
      }
    });
  }
}

TEST(StoreStress, SearchesDuringWritesSeeOneConsistentGeneration) {
  const int seconds = stress_seconds();
  auto dir = scratch_dir("stress");
  auto c = Collection::create_or_open(
      dir, CatalogConfig{"stress-model@0000000000000000", "stress-model", kDim, "cosine", "Flat"});
  History history;
  Failures failures;
  Stats stats;
  Model model;
  std::uint64_t next_put = 0;  // numbers paths, vectors and metadata

  auto make_put = [&](const std::string& path) {
    Put p;
    p.record.path = path;
    p.record.content_hash = std::to_string(next_put);
    p.record.metadata = metadata_of(next_put);
    p.embedding = seeded_vector(1'000'000'000 + next_put, kDim);
    ++next_put;
    return p;
  };
  // Applies a batch and publishes the generation it made.
  std::int64_t generation = c->generation();
  auto apply = [&](const std::vector<Put>& puts, const std::vector<std::int64_t>& removes) {
    auto ids = c->apply(puts, removes);
    const auto g = c->generation();
    if (g != generation + 1) {
      failures.add("apply made generation " + std::to_string(g) + " after " +
                   std::to_string(generation));
    }
    generation = g;
    std::vector<std::pair<std::int64_t, Version>> started;
    for (auto id : removes) model.remove(id);
    for (std::size_t i = 0; i < puts.size(); ++i) {
      model.add(ids[i], puts[i].record.path);
      started.push_back({ids[i], Version{g, INT64_MAX, puts[i].record.path, puts[i].record.metadata,
                                         puts[i].embedding}});
      stats.max_id = std::max(stats.max_id.load(), ids[i]);
    }
    history.publish(g, removes, std::move(started), static_cast<std::int64_t>(model.live.size()));
  };

  {
    std::vector<Put> initial;
    for (int i = 0; i < 500; ++i) initial.push_back(make_put("/stress/" + std::to_string(i)));
    apply(initial, {});
  }

  // The last searchers use a second, Read-mode Collection on the same directory, as another
  // process would: it reloads or rebuilds its index when a search finds the catalog ahead.
  auto reader = Collection::open(dir, Collection::Mode::Read);
  std::atomic<bool> stop{false};
  std::vector<std::thread> searchers;
  for (int t = 0; t < kSearchers; ++t) {
    searchers.emplace_back([&, t] {
      // Searchers run at a lower priority so that, on a small machine (or under TSan, which
      // makes every search several times slower), 8 of them do not starve the writer: the point
      // is many generations going by while they search.
      ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10);
      const Collection& col = t < kSearchers - kReadModeSearchers ? *c : *reader;
      std::mt19937_64 rng(1000 + t);
      std::int64_t last_seen = 0;
      try {
        for (int n = 0; !stop.load(); ++n) {
          check_search(col, history, failures, stats, rng, last_seen, n % 16 == 0);
          if (&col == reader.get()) ++stats.read_mode_searches;
          if (n % 50 == 0 && (t == 0 || t == kSearchers - 1)) {
            // info() reads the index's size and generation together.
            auto info = col.info();
            history.wait_for(info.generation, std::chrono::seconds(60));
            History::View view(history, info.generation);
            if (info.index_vectors != view.count()) {
              failures.add("info at generation " + std::to_string(info.generation) + ": " +
                           std::to_string(info.index_vectors) + " vectors, the generation held " +
                           std::to_string(view.count()));
            }
            if (!info.corrupt.empty()) failures.add("info reports corrupt vectors");
          }
        }
      } catch (const std::exception& e) {
        failures.add(std::string("searcher threw: ") + e.what());
      }
    });
  }

  std::mt19937_64 rng(42);
  std::int64_t deleted_before = 0;
  Clock::duration apply_time{};
  const auto deadline = Clock::now() + std::chrono::seconds(seconds);
  try {
    while (Clock::now() < deadline) {
      std::vector<Put> puts;
      const int n = 1 + static_cast<int>(rng() % 32);
      for (int i = 0; i < n; ++i) {
        if (!model.live.empty() && rng() % 2 == 0) {  // update an existing path
          auto id = model.live[rng() % model.live.size()];
          puts.push_back(make_put(model.path.at(id)));
        } else {
          puts.push_back(make_put("/stress/" + std::to_string(next_put)));
        }
      }
      std::vector<std::int64_t> removes;
      // Random live ids; one of them may be a path this batch also puts: it comes back as a
      // new image with a new id (removes go first).
      const std::size_t n_remove = model.live.size() > kTargetSize ? rng() % 24 : rng() % 4;
      std::unordered_set<std::int64_t> chosen;
      for (std::size_t i = 0; i < n_remove && !model.live.empty(); ++i) {
        auto id = model.live[rng() % model.live.size()];
        if (chosen.insert(id).second) removes.push_back(id);
      }
      const auto t0 = Clock::now();
      apply(puts, removes);
      apply_time += Clock::now() - t0;
      ++stats.batches;
      stats.puts += static_cast<std::int64_t>(puts.size());
      stats.removes += static_cast<std::int64_t>(removes.size());

      const auto deleted = c->info().index_deleted;
      if (deleted < deleted_before) ++stats.compactions;
      deleted_before = deleted;
      if (stats.batches % 5 == 0 && !model.live.empty()) {
        // A metadata edit: a new generation with the same vectors.
        auto id = model.live[rng() % model.live.size()];
        auto metadata = metadata_of(next_put++);
        if (!c->set_metadata(id, metadata)) failures.add("set_metadata: live id not found");
        const auto g = c->generation();
        if (g != generation + 1) failures.add("set_metadata did not bump the generation");
        generation = g;
        auto old = *c->get(id);
        auto vec = c->embedding(id);
        history.publish(g, {}, {{id, Version{g, INT64_MAX, old.path, metadata, *vec}}},
                        static_cast<std::int64_t>(model.live.size()));
        ++stats.metadata_edits;
      }
      if (stats.batches % 10 == 0) {
        c->save_index();  // searches go on while it writes
        ++stats.saves;
      }
    }
  } catch (const std::exception& e) {
    failures.add(std::string("writer threw: ") + e.what());
  }
  stop = true;
  for (auto& t : searchers) t.join();
  reader.reset();

  std::printf(
      "%d s: %lld batches (%lld puts, %lld removes, %lld metadata edits, %lld saves, %lld "
      "compactions), %lld searches (%lld in Read mode, %lld exact-checked, %lld with an "
      "exclusion, %lld saw a generation before it was published), final size %zu, generation "
      "%lld\n",
      seconds, static_cast<long long>(stats.batches.load()),
      static_cast<long long>(stats.puts.load()), static_cast<long long>(stats.removes.load()),
      static_cast<long long>(stats.metadata_edits.load()),
      static_cast<long long>(stats.saves.load()), static_cast<long long>(stats.compactions.load()),
      static_cast<long long>(stats.searches.load()),
      static_cast<long long>(stats.read_mode_searches.load()),
      static_cast<long long>(stats.exact_checks.load()),
      static_cast<long long>(stats.excluded.load()), static_cast<long long>(stats.waited.load()),
      model.live.size(), static_cast<long long>(generation));
  std::printf("writer: %.1f ms per apply (commit, index update, publish)\n",
              std::chrono::duration<double, std::milli>(apply_time).count() /
                  static_cast<double>(std::max<std::int64_t>(1, stats.batches.load())));
  EXPECT_EQ(failures.count(), 0) << failures.report();
  EXPECT_GE(stats.batches.load(), 10) << "the writer made too little progress";
  EXPECT_GE(stats.searches.load(), 100) << "the searchers made too little progress";

  // What is left agrees with the model, in this process and after a reload from the cache.
  const auto live = static_cast<std::int64_t>(model.live.size());
  EXPECT_EQ(c->count(), live);
  EXPECT_EQ(c->index_size(), live);
  c->save_index();
  c.reset();
  auto r = Collection::open(dir, Collection::Mode::Read);
  EXPECT_TRUE(r->index_from_cache());
  EXPECT_EQ(r->index_size(), live);
  EXPECT_EQ(r->generation(), generation);
}

}  // namespace
