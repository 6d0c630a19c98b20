// The engine with the real exported MobileNetV2 and real clothing-small photos: uploads,
// metadata, removal, dynamic batching, and a bounded stress run of 8 search threads while one
// writer adds and removes real embeddings (LOOKALIKE_STRESS_SECONDS, default 8).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "dedup/phash.h"
#include "engine/engine.h"
#include "image/decode.h"
#include "pipeline/batch_runner.h"

namespace {

namespace fs = std::filesystem;
using lookalike::engine::Access;
using lookalike::engine::Engine;
using lookalike::engine::EngineError;
using lookalike::engine::EngineOptions;
using lookalike::engine::SearchRequest;
using Clock = std::chrono::steady_clock;

std::vector<fs::path> photos(const std::string& split, std::size_t n) {
  std::vector<fs::path> out;
  for (const auto& cls :
       fs::directory_iterator(fs::path(LOOKALIKE_SHARED_DIR) / "datasets/clothing-small" / split)) {
    std::vector<fs::path> files;
    for (const auto& f : fs::directory_iterator(cls.path())) files.push_back(f.path());
    std::sort(files.begin(), files.end());
    for (std::size_t i = 0; i < files.size() && i < n; ++i) out.push_back(files[i]);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::uint8_t> bytes_of(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

EngineOptions options(const std::string& name) {
  EngineOptions o;
  o.collection = fs::path(LOOKALIKE_FIXTURES) / "engine" / name;
  fs::remove_all(o.collection);
  o.model = (fs::path(LOOKALIKE_FIXTURES) / "models" / "mobilenet_v2.pt").string();
  o.threads = 2;
  return o;
}

int stress_seconds() {
  const char* s = std::getenv("LOOKALIKE_STRESS_SECONDS");
  int n = s ? std::atoi(s) : 0;
  return n > 0 ? n : 8;
}

TEST(Engine, UploadsAreStoredOnceFoundAndRemovedWithTheirFile) {
  auto e = Engine::open(options("uploads"), Access::Write);
  auto files = photos("train", 2);
  auto bytes = bytes_of(files[0]);
  auto first = e->add_image(bytes, "upload.jpg", {{"category", "shoes"}});
  EXPECT_TRUE(first.created);
  EXPECT_TRUE(fs::exists(first.record.path));
  EXPECT_EQ(first.record.metadata, R"({"category":"shoes"})");
  // The upload's pHash comes from the decode that fed the model (the whole frame), as `index`
  // computes it; `duplicates` compares it.
  ASSERT_TRUE(first.record.picture_hash.has_value());
  const auto expected =
      lookalike::dedup::picture_hash(lookalike::image::decode_buffer(bytes, "x").rgb);
  EXPECT_EQ(first.record.picture_hash->full, expected.full);
  EXPECT_EQ(first.record.picture_hash->center95, expected.center95);
  EXPECT_EQ(first.record.picture_hash->center90, expected.center90);
  auto again = e->add_image(bytes, "again.jpg", nlohmann::json::object());
  EXPECT_FALSE(again.created);
  EXPECT_EQ(again.record.id, first.record.id);
  e->add_image(bytes_of(files[5]), "other.jpg", nlohmann::json::object());

  auto by_bytes = e->search_bytes(bytes, "query.jpg", {.k = 2});
  ASSERT_EQ(by_bytes.results.size(), 2u);
  EXPECT_EQ(by_bytes.results[0].image.id, first.record.id);
  EXPECT_GT(by_bytes.results[0].score, 0.9999f);
  EXPECT_GT(by_bytes.timings.embed_ms, 0);

  SearchRequest strict;
  strict.k = 10;
  strict.min_score = 0.9999f;
  EXPECT_EQ(e->search_bytes(bytes, "query.jpg", strict).results.size(), 1u);

  EXPECT_TRUE(e->update_metadata(first.record.id, {{"price", 12}}, /*merge=*/true));
  EXPECT_EQ(nlohmann::json::parse(e->get(first.record.id)->metadata),
            (nlohmann::json{{"category", "shoes"}, {"price", 12}}));
  EXPECT_FALSE(e->update_metadata(999999, {{"x", 1}}, false));
  EXPECT_THROW(e->update_metadata(first.record.id, nlohmann::json::array(), false), EngineError);

  std::vector<std::uint8_t> text = {'h', 'e', 'l', 'l', 'o'};
  EXPECT_THROW(e->add_image(text, "notes.jpg", nlohmann::json::object()),
               lookalike::image::DecodeError);
  EXPECT_EQ(e->collection().count(), 2);

  auto removed = e->remove({first.record.id}, {});
  EXPECT_EQ(removed.removed, std::vector<std::int64_t>{first.record.id});
  EXPECT_FALSE(fs::exists(first.record.path));
  EXPECT_EQ(e->list(0, 10).size(), 1u);
  EXPECT_THROW(e->list(0, 0), EngineError);
  EXPECT_THROW(e->search_id(first.record.id, {}), EngineError);
}

TEST(Engine, ConcurrentSingleImageEmbedsShareForwardPasses) {
  auto o = options("batching");
  // A cap far above a pass: announced callers all get in however loaded the machine is.
  o.batch_wait = std::chrono::seconds(2);
  auto e = Engine::open(o, Access::ModelOnly);
  auto& model = e->model();
  auto spec = model.preprocess_spec();
  auto files = photos("test", 2);
  ASSERT_GE(files.size(), 16u);
  const std::size_t per = 3ull * spec.crop * spec.crop;
  std::vector<float> inputs(16 * per);
  for (int i = 0; i < 16; ++i) {
    auto d = lookalike::image::decode_file(files[i]);
    lookalike::image::preprocess(d.rgb, d.source_width, d.source_height, spec,
                                 inputs.data() + i * per);
  }
  auto sequential = model.embed(inputs.data(), 16);
  const auto before = e->batcher().stats();
  std::vector<std::vector<float>> got(16);
  std::barrier start(16);
  std::vector<std::thread> threads;
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&, i] {
      auto announced = e->batcher().expect();  // as an upload does before decoding
      start.arrive_and_wait();
      got[i] = e->batcher().embed(inputs.data() + i * per, 1, announced);
    });
  }
  for (auto& t : threads) t.join();
  const auto after = e->batcher().stats();
  EXPECT_EQ(after.requests - before.requests, 16);
  EXPECT_LE(after.forward_passes - before.forward_passes, 2) << "16 announced requests";
  const int dim = model.dim();
  for (int i = 0; i < 16; ++i) {
    double dot = 0;
    for (int d = 0; d < dim; ++d) dot += double{got[i][d]} * sequential[i * dim + d];
    EXPECT_GT(dot, 0.9999) << "image " << i << " embedded in a batch differs from alone";
  }
}

// Requests that ask for a share of the model's threads run side by side while their threads
// add up to the model's; requests for all of them (searches, uploads) never overlap.
TEST(Engine, PassesRunSideBySideOnlyWithinTheThreadBudget) {
  auto e = Engine::open(options("side-by-side"), Access::ModelOnly);
  auto& model = e->model();
  ASSERT_EQ(model.threads(), 2);
  const auto spec = model.preprocess_spec();
  const std::size_t per = 3ull * spec.crop * spec.crop;
  auto files = photos("test", 4);
  ASSERT_GE(files.size(), 32u);
  std::vector<float> inputs(32 * per);
  for (int i = 0; i < 32; ++i) {
    auto d = lookalike::image::decode_file(files[i]);
    lookalike::image::preprocess(d.rgb, d.source_width, d.source_height, spec,
                                 inputs.data() + i * per);
  }
  const auto alone = model.embed(inputs.data(), 32);
  auto two_callers = [&](int threads) {
    std::vector<std::vector<float>> got(2);
    std::barrier start(2);
    std::vector<std::thread> callers;
    for (int c = 0; c < 2; ++c) {
      callers.emplace_back([&, c] {
        for (int rep = 0; rep < 3; ++rep) {
          start.arrive_and_wait();
          got[c] = e->batcher().embed(inputs.data(), 32, threads);
        }
      });
    }
    for (auto& t : callers) t.join();
    return got;
  };
  for (const auto& got : two_callers(0)) EXPECT_EQ(got, alone) << "all threads";
  EXPECT_EQ(e->batcher().stats().peak_passes, 1) << "passes on all threads overlapped";
  EXPECT_EQ(e->batcher().stats().team_workers, 1) << "passes on all threads ran on two workers";
  // Six passes of 32 images on one thread each, started in pairs: they overlap.
  for (const auto& got : two_callers(1)) {
    ASSERT_EQ(got.size(), alone.size());
    const int dim = model.dim();
    for (int i = 0; i < 32; ++i) {
      double dot = 0;
      for (int d = 0; d < dim; ++d) dot += double{got[i * dim + d]} * alone[i * dim + d];
      EXPECT_GT(dot, 0.99999) << "image " << i << " on one thread differs from two";
    }
  }
  EXPECT_EQ(e->batcher().stats().peak_passes, 2);
  EXPECT_EQ(e->batcher().stats().team_workers, 1);
}

// Bulk embedding with two passes in flight: the same vectors and the same per-file errors as one
// pass at a time, with a broken file among real photos.
TEST(Engine, TwoPassesInFlightEmbedFilesAsOne) {
  auto files = photos("test", 3);
  const fs::path broken = fs::path(LOOKALIKE_FIXTURES) / "engine" / "broken.jpg";
  fs::create_directories(broken.parent_path());
  {
    auto bytes = bytes_of(files.at(0));
    std::ofstream(broken, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), 600);
  }
  files.insert(files.begin() + 7, broken);
  auto one = options("passes-1");
  one.passes = 1;
  one.batch_size = 4;
  auto two = options("passes-2");
  two.passes = 2;
  two.batch_size = 4;
  auto e1 = Engine::open(one, Access::ModelOnly);
  auto e2 = Engine::open(two, Access::ModelOnly);
  const auto a = e1->embed_files(files);
  const auto b = e2->embed_files(files);
  EXPECT_EQ(e1->batcher().stats().peak_passes, 1);
  EXPECT_GE(e2->batcher().stats().forward_passes, static_cast<std::int64_t>(files.size() / 4));
  ASSERT_EQ(a.errors, b.errors);
  EXPECT_EQ(a.failed(), 1u);
  EXPECT_NE(a.errors[7].find("broken.jpg"), std::string::npos) << a.errors[7];
  const int dim = a.dim;
  for (std::size_t i = 0; i < files.size(); ++i) {
    double dot = 0;
    for (int d = 0; d < dim; ++d)
      dot += double{a.embeddings[i * dim + d]} * b.embeddings[i * dim + d];
    if (i == 7) {
      EXPECT_EQ(dot, 0.0) << "the broken file's row stays zero";
    } else {
      EXPECT_GT(dot, 0.99999) << files[i];
    }
  }
  auto bad = options("passes-bad");
  bad.passes = lookalike::pipeline::kMaxPasses + 1;
  EXPECT_THROW(Engine::open(bad, Access::ModelOnly), EngineError);
}

// With passes in flight, batches are consumed in the order they were taken, and a failed pass
// stops the run after every batch before it was consumed, never one after it.
TEST(Engine, PassesInFlightAreConsumedInOrderUpToAFailure) {
  auto e = Engine::open(options("run-order"), Access::ModelOnly);
  auto& model = e->model();
  const int dim = model.dim();
  const std::size_t per = 3ull * model.card().input_size * model.card().input_size;
  namespace pl = lookalike::pipeline;
  std::mt19937 rng(7);
  std::mutex rng_mu;
  auto embed = [&](const float* in, int n) {
    int pause;
    {
      std::lock_guard lock(rng_mu);
      pause = static_cast<int>(rng() % 5);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(pause));  // finish out of order
    std::vector<float> out(static_cast<std::size_t>(n) * dim, 0.0f);
    for (int r = 0; r < n; ++r) {
      if (in[r * per] == 60.0f) throw std::runtime_error("pass failed at job 60");
      out[r * dim] = in[r * per];
    }
    return out;
  };
  auto prepare = [&](std::size_t job, float* input) {
    input[0] = static_cast<float>(job);
    return pl::Prepared::Embed;
  };
  std::vector<std::size_t> consumed;
  auto consume = [&](const std::vector<std::size_t>& jobs, const std::vector<pl::Prepared>&,
                     const std::vector<float>& embeddings) {
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      EXPECT_EQ(embeddings[i * dim], static_cast<float>(jobs[i]));
      consumed.push_back(jobs[i]);
    }
  };
  pl::RunOptions o{1, 8, nullptr, embed, 2};
  EXPECT_THROW(pl::run_batched(100, model, o, prepare, consume), std::runtime_error);
  ASSERT_EQ(consumed.size(), 56u) << "the seven batches before job 60's";
  for (std::size_t i = 0; i < consumed.size(); ++i) EXPECT_EQ(consumed[i], i);

  consumed.clear();
  auto fine = [&](const float* in, int n) {
    std::vector<float> out(static_cast<std::size_t>(n) * dim, 0.0f);
    for (int r = 0; r < n; ++r) out[r * dim] = in[r * per];
    return out;
  };
  pl::run_batched(100, model, {2, 8, nullptr, fine, 3}, prepare, consume);
  std::vector<std::size_t> sorted = consumed;
  std::sort(sorted.begin(), sorted.end());
  ASSERT_EQ(sorted.size(), 100u);
  for (std::size_t i = 0; i < sorted.size(); ++i) EXPECT_EQ(sorted[i], i);
  EXPECT_THROW(pl::run_batched(1, model, {1, 8, nullptr, fine, 0}, prepare, consume),
               std::invalid_argument);
  EXPECT_THROW(
      pl::run_batched(1, model, {1, 8, nullptr, fine, pl::kMaxPasses + 1}, prepare, consume),
      std::invalid_argument);
}

// A lone request, announced or not, starts its pass at once instead of waiting out the window
// for company that is not coming; an announcement dropped without a request (a failed decode)
// does not hold others back either.
TEST(Engine, ALoneRequestDoesNotWaitForTheBatchWindow) {
  auto o = options("lone");
  o.batch_wait = std::chrono::seconds(20);
  auto e = Engine::open(o, Access::ModelOnly);
  auto spec = e->model().preprocess_spec();
  auto d = lookalike::image::decode_file(photos("test", 1).at(0));
  std::vector<float> input(3ull * spec.crop * spec.crop);
  lookalike::image::preprocess(d.rgb, d.source_width, d.source_height, spec, input.data());
  e->batcher().embed(input.data(), 1);  // warm-up (first pass allocates)
  auto timed = [&](auto&& call) {
    const auto t0 = Clock::now();
    call();
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  EXPECT_LT(timed([&] { e->batcher().embed(input.data(), 1); }), 10.0) << "unannounced";
  EXPECT_LT(timed([&] {
              auto a = e->batcher().expect();
              e->batcher().embed(input.data(), 1, a);
            }),
            10.0)
      << "announced";
  EXPECT_LT(timed([&] {
              { auto dropped = e->batcher().expect(); }
              e->batcher().embed(input.data(), 1);
            }),
            10.0)
      << "after a dropped announcement";
  EXPECT_EQ(e->batcher().stats().forward_passes, 4);
}

// 8 threads search by id and by bytes while one writer uploads and removes real photos. Every
// result must be an image that the generation the search reports held.
TEST(Engine, SearchesWhileOneWriterAddsAndRemoves) {
  auto e = Engine::open(options("stress"), Access::Write);
  auto gallery = photos("train", 12);
  auto queries = photos("test", 2);
  std::vector<std::vector<std::uint8_t>> gallery_bytes, query_bytes;
  for (const auto& p : gallery) gallery_bytes.push_back(bytes_of(p));
  for (const auto& p : queries) query_bytes.push_back(bytes_of(p));
  for (std::size_t i = 0; i < 40; ++i) e->add_image(gallery_bytes[i], "seed", {{"i", i}});

  // generation -> ids live in it, published by the writer after each write returns.
  std::mutex mu;
  std::map<std::int64_t, std::set<std::int64_t>> live;
  auto publish = [&] {
    std::set<std::int64_t> ids;
    for (const auto& r : e->list(0, 10'000)) ids.insert(r.id);
    std::lock_guard lock(mu);
    live[e->collection().generation()] = std::move(ids);
  };
  publish();

  std::atomic<bool> stop{false};
  std::atomic<std::int64_t> searches{0}, writes{0};
  std::vector<std::string> problems;
  auto problem = [&](const std::string& p) {
    std::lock_guard lock(mu);
    if (problems.size() < 20) problems.push_back(p);
  };
  auto check = [&](const lookalike::engine::SearchResponse& r, int k) {
    for (std::size_t i = 0; i < r.results.size(); ++i) {
      if (r.results[i].rank != static_cast<int>(i) + 1) problem("ranks not 1..n");
      if (i > 0 && r.results[i].score > r.results[i - 1].score + 1e-6f) problem("not sorted");
    }
    for (int wait = 0;; ++wait) {  // the writer publishes just after its write returns
      std::unique_lock lock(mu);
      auto it = live.find(r.generation);
      if (it == live.end()) {
        lock.unlock();
        if (wait > 2000) {
          problem("generation never published");
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      const auto& ids = it->second;
      for (const auto& h : r.results) {
        if (!ids.count(h.image.id)) problem("id " + std::to_string(h.image.id) + " not live");
      }
      const std::size_t want = std::min<std::size_t>(k, ids.size() - (r.query_id ? 1 : 0));
      if (r.results.size() != want) problem("fewer than k results");
      return;
    }
  };
  std::vector<std::thread> searchers;
  for (int t = 0; t < 8; ++t) {
    searchers.emplace_back([&, t] {
      std::mt19937 rng(t);
      while (!stop) {
        try {
          if (t % 2 == 0) {
            auto r = e->search_bytes(query_bytes[rng() % query_bytes.size()], "q", {.k = 10});
            check(r, 10);
          } else {
            auto page = e->list(0, 10'000);
            if (page.empty()) continue;
            auto id = page[rng() % page.size()].id;
            auto r = e->search_id(id, {.k = 5});
            check(r, 5);
          }
        } catch (const EngineError& err) {
          // search_id of an image removed between the list and the search: expected.
          if (err.kind() != EngineError::Kind::NotFound) problem(err.what());
        } catch (const std::exception& err) {
          problem(err.what());
        }
        ++searches;
      }
    });
  }
  std::thread writer([&] {
    std::mt19937 rng(99);
    std::size_t next = 40;
    const auto end = Clock::now() + std::chrono::seconds(stress_seconds());
    while (Clock::now() < end) {
      try {
        if (rng() % 3 != 0 || e->collection().count() < 20) {
          e->add_image(gallery_bytes[next++ % gallery_bytes.size()], "w", {{"n", next}});
        } else {
          auto page = e->list(0, 10'000);
          e->remove({page[rng() % page.size()].id}, {});
        }
        publish();
        ++writes;
      } catch (const std::exception& err) {
        problem(std::string("writer: ") + err.what());
      }
    }
    stop = true;
  });
  writer.join();
  for (auto& t : searchers) t.join();
  for (const auto& p : problems) ADD_FAILURE() << p;
  EXPECT_GT(writes.load(), 5);
  EXPECT_GT(searches.load(), 50);
  std::printf("%lld searches and %lld writes in %d s\n", static_cast<long long>(searches.load()),
              static_cast<long long>(writes.load()), stress_seconds());
}

}  // namespace
