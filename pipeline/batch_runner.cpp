#include "pipeline/batch_runner.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
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
  // all, or every producer is done. Returns an empty vector when nothing is left.
  std::vector<Item> pop_batch(std::size_t max, std::size_t embed_target) {
    std::unique_lock lock(mu_);
    not_empty_.wait(lock, [&] {
      return producers_done_ || items_.size() >= max || count_embed() >= embed_target;
    });
    std::vector<Item> out;
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

}  // namespace

void run_batched(std::size_t n, model::EmbeddingModel& model, const RunOptions& options,
                 const PrepareFn& prepare, const ConsumeFn& consume) {
  const std::size_t batch = static_cast<std::size_t>(std::max(1, options.batch_size));
  const int side = model.card().input_size;
  const std::size_t input_floats = 3ull * side * side;
  const int dim = model.dim();

  Queue queue(2 * batch);
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
        std::vector<float> input(input_floats);
        Prepared kind = prepare(job, input.data());
        if (kind == Prepared::Drop) continue;
        if (kind == Prepared::NoEmbed) input = {};
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

  std::exception_ptr consumer_error;
  try {
    std::vector<float> inputs, embeddings;
    while (!failed) {
      auto items = queue.pop_batch(2 * batch, batch);
      if (items.empty()) break;
      // After Ctrl-C: stop without embedding what was queued; everything consumed so far stays.
      if (options.cancel != nullptr && options.cancel->load()) break;
      std::vector<std::size_t> jobs;
      std::vector<Prepared> kinds;
      std::vector<std::size_t> embed_rows;
      inputs.clear();
      for (auto& item : items) {
        if (item.kind == Prepared::Embed) {
          embed_rows.push_back(jobs.size());
          inputs.insert(inputs.end(), item.input.begin(), item.input.end());
        }
        jobs.push_back(item.job);
        kinds.push_back(item.kind);
      }
      embeddings.assign(jobs.size() * dim, 0.0f);
      if (!embed_rows.empty()) {
        const int rows = static_cast<int>(embed_rows.size());
        auto out =
            options.embed ? options.embed(inputs.data(), rows) : model.embed(inputs.data(), rows);
        for (std::size_t r = 0; r < embed_rows.size(); ++r) {
          std::memcpy(&embeddings[embed_rows[r] * dim], &out[r * dim], dim * sizeof(float));
        }
      }
      consume(jobs, kinds, embeddings);
    }
  } catch (...) {
    consumer_error = std::current_exception();
  }
  failed = failed || consumer_error != nullptr;
  queue.stop();
  for (auto& t : threads) t.join();
  if (consumer_error) std::rethrow_exception(consumer_error);
  if (worker_error) std::rethrow_exception(worker_error);
}

}  // namespace lookalike::pipeline
