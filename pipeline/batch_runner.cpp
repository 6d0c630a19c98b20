#include "pipeline/batch_runner.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>

namespace lookalike::pipeline {
namespace {

struct Item {
  std::size_t job;
  Prepared kind;
  std::vector<float> input;
};

// Bounded queue between decode workers and the embedding thread.
class Queue {
 public:
  explicit Queue(std::size_t capacity) : capacity_(capacity) {}

  // Returns false when the consumer has stopped.
  bool push(Item item) {
    std::unique_lock lock(mu_);
    not_full_.wait(lock, [&] { return items_.size() < capacity_ || stopped_; });
    if (stopped_) return false;
    items_.push_back(std::move(item));
    not_empty_.notify_one();
    return true;
  }

  // Takes up to `max` items, waiting until it has `embed_target` Embed items, `max` items in
  // all, or every producer is done. Returns an empty vector when nothing is left or stopped.
  std::vector<Item> pop_batch(std::size_t max, std::size_t embed_target) {
    std::unique_lock lock(mu_);
    not_empty_.wait(lock, [&] {
      return stopped_ || producers_done_ || items_.size() >= max || count_embed() >= embed_target;
    });
    std::vector<Item> out;
    if (stopped_) return out;
    std::size_t embeds = 0;
    while (!items_.empty() && out.size() < max && embeds < embed_target) {
      if (items_.front().kind == Prepared::Embed) ++embeds;
      out.push_back(std::move(items_.front()));
      items_.pop_front();
    }
    not_full_.notify_all();
    return out;
  }

  void producers_done() {
    std::lock_guard lock(mu_);
    producers_done_ = true;
    not_empty_.notify_all();
  }

  void stop() {
    std::lock_guard lock(mu_);
    stopped_ = true;
    not_full_.notify_all();
    not_empty_.notify_all();
  }

 private:
  std::size_t count_embed() const {
    return std::count_if(items_.begin(), items_.end(),
                         [](const Item& i) { return i.kind == Prepared::Embed; });
  }

  std::mutex mu_;
  std::condition_variable not_full_, not_empty_;
  std::deque<Item> items_;
  std::size_t capacity_;
  bool producers_done_ = false;
  bool stopped_ = false;
};

// Model-input buffers (3 x S x S floats each) handed back after their batch is copied out, for
// the decode workers to fill again. Allocating one per image and freeing it on another thread
// left the single malloc arena (engine::setup_process) fragmented among LibTorch's activations:
// indexing 3,068 photos grew the heap to 1.4 GB with 52 MB in use, 390,000 page faults.
class BufferPool {
 public:
  std::vector<float> take(std::size_t floats) {
    {
      std::lock_guard lock(mu_);
      if (!free_.empty()) {
        std::vector<float> v = std::move(free_.back());
        free_.pop_back();
        v.resize(floats);
        return v;
      }
    }
    return std::vector<float>(floats);
  }
  void give(std::vector<float> v) {
    if (v.capacity() == 0) return;
    std::lock_guard lock(mu_);
    free_.push_back(std::move(v));
  }

 private:
  std::mutex mu_;
  std::vector<std::vector<float>> free_;
};

}  // namespace

void run_batched(std::size_t n, model::EmbeddingModel& model, const RunOptions& options,
                 const PrepareFn& prepare, const ConsumeFn& consume) {
  const std::size_t batch = static_cast<std::size_t>(std::max(1, options.batch_size));
  const int side = model.card().input_size;
  const std::size_t input_floats = 3ull * side * side;
  const int dim = model.dim();

  if (options.passes < 1 || options.passes > kMaxPasses) {
    throw std::invalid_argument("passes must be between 1 and " + std::to_string(kMaxPasses) +
                                ", got " + std::to_string(options.passes));
  }
  Queue queue((options.passes + 1) * batch);
  BufferPool pool;
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr worker_error;
  std::mutex error_mu;

  auto cancelled = [&] {
    return failed.load() || (options.cancel != nullptr && options.cancel->load());
  };
  auto worker = [&] {
    try {
      for (std::size_t job; !cancelled() && (job = next.fetch_add(1)) < n;) {
        std::vector<float> input = pool.take(input_floats);
        Prepared kind = prepare(job, input.data());
        if (kind != Prepared::Embed) {
          pool.give(std::move(input));  // nothing to embed: the buffer goes back unused
          if (kind != Prepared::Drop && !queue.push({job, kind, {}})) return;
          continue;
        }
        if (!queue.push({job, kind, std::move(input)})) return;
      }
    } catch (...) {
      std::lock_guard lock(error_mu);
      if (!worker_error) worker_error = std::current_exception();
      failed = true;
    }
  };

  const int n_workers = options.workers;
  if (n_workers < 1 || n_workers > kMaxDecodeThreads) {
    throw std::invalid_argument("decode threads must be between 1 and " +
                                std::to_string(kMaxDecodeThreads) + ", got " +
                                std::to_string(n_workers));
  }
  std::vector<std::thread> threads;
  std::atomic<int> running{n_workers};
  for (int i = 0; i < n_workers; ++i) {
    try {
      threads.emplace_back([&] {
        worker();
        if (--running == 0) queue.producers_done();
      });
    } catch (const std::system_error& e) {
      failed = true;
      queue.stop();
      for (auto& t : threads) t.join();
      throw std::runtime_error("cannot start decode thread " + std::to_string(i + 1) + " of " +
                               std::to_string(n_workers) + ": " + e.what());
    }
  }

  // Pass threads take batches off the queue in turn (a ticket each, in queue order), embed
  // them, and leave the result for the calling thread, which consumes tickets in order. Up to
  // `passes` passes run at once, and one more batch may wait embedded while the calling thread
  // commits the one before: so commits overlap the next pass.
  const int passes = options.passes;
  const int pass_threads = threads_per_pass(model.threads(), passes);
  struct Result {
    std::vector<std::size_t> jobs;
    std::vector<Prepared> kinds;
    std::vector<float> embeddings;
    std::exception_ptr error;
  };
  std::mutex pop_mu, result_mu;
  std::condition_variable result_ready, turn_moved;
  std::map<std::size_t, Result> results;
  std::size_t next_ticket = 0, turn = 0;
  int passes_running = passes;
  bool stop_passes = false;  // set by the calling thread when it stops consuming

  // `inputs` is the pass's own buffer, kept across its batches: sized once, never regrown.
  auto embed_batch = [&](std::vector<Item>& items, Result& r, std::vector<float>& inputs) {
    std::vector<std::size_t> embed_rows;
    for (auto& item : items) {
      if (item.kind == Prepared::Embed) embed_rows.push_back(r.jobs.size());
      r.jobs.push_back(item.job);
      r.kinds.push_back(item.kind);
    }
    inputs.resize(embed_rows.size() * input_floats);
    for (std::size_t row = 0; row < embed_rows.size(); ++row) {
      std::vector<float>& one = items[embed_rows[row]].input;
      std::memcpy(&inputs[row * input_floats], one.data(), input_floats * sizeof(float));
      pool.give(std::move(one));
    }
    r.embeddings.assign(r.jobs.size() * dim, 0.0f);
    if (embed_rows.empty()) return;
    const int rows = static_cast<int>(embed_rows.size());
    auto out = options.embed ? options.embed(inputs.data(), rows)
                             : model.embed(inputs.data(), rows, pass_threads);
    for (std::size_t row = 0; row < embed_rows.size(); ++row) {
      std::memcpy(&r.embeddings[embed_rows[row] * dim], &out[row * dim], dim * sizeof(float));
    }
  };
  auto pass_loop = [&] {
    std::vector<float> inputs;
    for (;;) {
      std::vector<Item> items;
      std::size_t ticket = 0;
      {
        std::unique_lock order(pop_mu);
        {
          // At most passes + 1 batches taken and not yet consumed.
          std::unique_lock lock(result_mu);
          turn_moved.wait(lock, [&] { return stop_passes || next_ticket < turn + passes + 1; });
          if (stop_passes) break;
        }
        items = queue.pop_batch(2 * batch, batch);
        // After Ctrl-C: stop without embedding what was queued; everything consumed so far
        // stays. Checked under the pop lock, so no later ticket is embedded after a dropped one.
        if (items.empty() || failed || (options.cancel != nullptr && options.cancel->load())) break;
        ticket = next_ticket++;
      }
      Result r;
      try {
        embed_batch(items, r, inputs);
      } catch (...) {
        r.error = std::current_exception();
      }
      std::lock_guard lock(result_mu);
      const bool error = r.error != nullptr;
      results.emplace(ticket, std::move(r));
      result_ready.notify_all();
      if (error) break;  // the calling thread rethrows it in its turn
    }
    std::lock_guard lock(result_mu);
    --passes_running;
    result_ready.notify_all();
  };

  // One pass at a time on the model itself: on the calling thread, as the caller's OpenMP team
  // is then the only one (docs/engine.md, "OpenMP teams"); commits do not overlap passes.
  const bool inline_passes = passes == 1 && !options.embed;
  std::vector<std::thread> pass_pool;
  std::exception_ptr consumer_error;
  try {
    std::vector<float> inline_inputs;
    while (inline_passes && !failed) {
      auto items = queue.pop_batch(2 * batch, batch);
      if (items.empty() || (options.cancel != nullptr && options.cancel->load())) break;
      Result r;
      embed_batch(items, r, inline_inputs);
      consume(r.jobs, r.kinds, r.embeddings);
    }
    for (int i = 0; i < (inline_passes ? 0 : passes); ++i) pass_pool.emplace_back(pass_loop);
    while (!inline_passes) {
      Result r;
      {
        std::unique_lock lock(result_mu);
        result_ready.wait(lock,
                          [&] { return failed || results.count(turn) > 0 || passes_running == 0; });
        auto it = results.find(turn);
        if (failed || it == results.end()) break;
        r = std::move(it->second);
        results.erase(it);
        ++turn;
        turn_moved.notify_all();
      }
      if (r.error) std::rethrow_exception(r.error);
      consume(r.jobs, r.kinds, r.embeddings);
    }
  } catch (...) {
    consumer_error = std::current_exception();
  }
  failed = failed || consumer_error != nullptr;
  {
    std::lock_guard lock(result_mu);
    stop_passes = true;
    turn_moved.notify_all();
  }
  queue.stop();
  for (auto& t : pass_pool) t.join();
  for (auto& t : threads) t.join();
  if (consumer_error) std::rethrow_exception(consumer_error);
  if (worker_error) std::rethrow_exception(worker_error);
}

}  // namespace lookalike::pipeline
