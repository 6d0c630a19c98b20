#include "engine/embed_batcher.h"

#include <algorithm>
#include <cstring>

namespace lookalike::engine {

EmbedBatcher::EmbedBatcher(model::EmbeddingModel& model, int max_batch,
                           std::chrono::microseconds max_wait)
    : model_(model), max_batch_(max_batch > 0 ? max_batch : 1), max_wait_(max_wait) {
  // As many workers as passes can ever run at once (1 thread each), capped: each running pass
  // holds a batch of activations.
  const int workers = std::clamp(model.threads(), 1, 16);
  has_team_.assign(workers, false);
  try {
    for (int i = 0; i < workers; ++i) workers_.emplace_back([this, i] { run(i); });
  } catch (...) {
    stop();
    throw;
  }
}

EmbedBatcher::~EmbedBatcher() { stop(); }

void EmbedBatcher::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake_worker_.notify_all();
  for (auto& w : workers_) w.join();
  workers_.clear();
}

EmbedBatcher::Expected::Expected(EmbedBatcher* b) : b_(b) {
  std::lock_guard lock(b_->mu_);
  ++b_->expected_;
}

EmbedBatcher::Expected& EmbedBatcher::Expected::operator=(Expected&& o) noexcept {
  if (this != &o) {
    release();
    b_ = std::exchange(o.b_, nullptr);
  }
  return *this;
}

void EmbedBatcher::Expected::release() {
  if (!b_) return;
  {
    std::lock_guard lock(b_->mu_);
    --b_->expected_;
  }
  b_->wake_worker_.notify_all();
  b_ = nullptr;
}

std::vector<float> EmbedBatcher::embed(const float* inputs, int n, int threads) {
  Expected none;
  return submit(inputs, n, threads, none);
}

std::vector<float> EmbedBatcher::embed(const float* inputs, int n, Expected& announced) {
  return submit(inputs, n, 0, announced);
}

std::vector<float> EmbedBatcher::submit(const float* inputs, int n, int threads,
                                        Expected& announced) {
  if (n <= 0) return {};
  const int all = model_.threads();
  Request r{inputs, n, threads > 0 && threads < all ? threads : all, {}, nullptr, false};
  std::unique_lock lock(mu_);
  if (announced.b_ == this) {
    --expected_;
    announced.b_ = nullptr;
  }
  queue_.push_back(&r);
  queued_images_ += n;
  wake_worker_.notify_all();
  wake_callers_.wait(lock, [&] { return r.done; });
  if (r.error) std::rethrow_exception(r.error);
  return std::move(r.out);
}

BatcherStats EmbedBatcher::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void EmbedBatcher::run(int worker) {
  std::unique_lock lock(mu_);
  const int all = model_.threads();
  // A pass starts only when its threads fit beside those of the passes running, and a pass on
  // all threads only on worker 0: each worker that runs a pass on n > 1 threads keeps an OpenMP
  // team of n, and two teams of all threads would outnumber the cores (docs/engine.md, "OpenMP
  // teams": a batch-1 MobileNetV2 pass went from 3-4 to 10 ms when any worker could take it).
  auto can_start = [&] {
    if (queue_.empty()) return false;
    const int threads = queue_.front()->threads;
    return (worker == 0 || threads < all) && busy_threads_ + threads <= all;
  };
  for (;;) {
    wake_worker_.wait(lock, [&] { return (stopping_ && queue_.empty()) || can_start(); });
    if (queue_.empty()) return;  // stopping, nothing left
    // The first request opened the window: wait for the callers still decoding until they have
    // queued, the window closes or a batch is full. With nobody on the way, start at once.
    const auto deadline = std::chrono::steady_clock::now() + max_wait_;
    wake_worker_.wait_until(lock, deadline, [&] {
      return stopping_ || queued_images_ >= max_batch_ || expected_ <= 0;
    });
    // Another worker may have taken the queue, or started a pass, while this one waited.
    if (!can_start()) continue;
    std::vector<Request*> batch;
    int images = 0;
    const int threads = queue_.front()->threads;
    while (!queue_.empty() && queue_.front()->threads == threads &&
           (batch.empty() || images + queue_.front()->n <= max_batch_)) {
      images += queue_.front()->n;
      batch.push_back(queue_.front());
      queue_.pop_front();
    }
    queued_images_ -= images;
    busy_threads_ += threads;
    stats_.peak_passes = std::max(stats_.peak_passes, ++running_);
    if (threads > 1 && !has_team_[worker]) {
      has_team_[worker] = true;
      ++stats_.team_workers;
    }
    lock.unlock();
    serve(batch, threads);
    lock.lock();
    busy_threads_ -= threads;
    --running_;
    stats_.requests += static_cast<std::int64_t>(batch.size());
    stats_.images += images;
    ++stats_.forward_passes;
    for (auto* r : batch) r->done = true;
    wake_callers_.notify_all();
    wake_worker_.notify_all();  // its threads are free for a waiting pass
  }
}

void EmbedBatcher::serve(std::vector<Request*>& batch, int threads) {
  const std::size_t per_image =
      3 * static_cast<std::size_t>(model_.card().input_size) * model_.card().input_size;
  const std::size_t dim = static_cast<std::size_t>(model_.dim());
  try {
    if (batch.size() == 1) {
      batch[0]->out = model_.embed(batch[0]->inputs, batch[0]->n, threads);
      return;
    }
    std::vector<float> joined;
    for (auto* r : batch) joined.insert(joined.end(), r->inputs, r->inputs + r->n * per_image);
    int total = 0;
    for (auto* r : batch) total += r->n;
    auto out = model_.embed(joined.data(), total, threads);
    std::size_t row = 0;
    for (auto* r : batch) {
      r->out.assign(out.begin() + row * dim, out.begin() + (row + r->n) * dim);
      row += r->n;
    }
  } catch (...) {
    for (auto* r : batch) r->error = std::current_exception();
  }
}

}  // namespace lookalike::engine
