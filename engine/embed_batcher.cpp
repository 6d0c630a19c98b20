#include "engine/embed_batcher.h"

#include <cstring>

namespace lookalike::engine {

EmbedBatcher::EmbedBatcher(model::EmbeddingModel& model, int max_batch,
                           std::chrono::microseconds max_wait)
    : model_(model), max_batch_(max_batch > 0 ? max_batch : 1), max_wait_(max_wait) {
  worker_ = std::thread([this] { run(); });
}

EmbedBatcher::~EmbedBatcher() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake_worker_.notify_all();
  worker_.join();
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

std::vector<float> EmbedBatcher::embed(const float* inputs, int n) {
  Expected none;
  return embed(inputs, n, none);
}

std::vector<float> EmbedBatcher::embed(const float* inputs, int n, Expected& announced) {
  if (n <= 0) return {};
  Request r{inputs, n, {}, nullptr, false};
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

void EmbedBatcher::run() {
  std::unique_lock lock(mu_);
  for (;;) {
    wake_worker_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, nothing left
    // The first request opened the window: wait for the callers still decoding until they have
    // queued, the window closes or a batch is full. With nobody on the way, start at once.
    const auto deadline = std::chrono::steady_clock::now() + max_wait_;
    wake_worker_.wait_until(lock, deadline, [&] {
      return stopping_ || queued_images_ >= max_batch_ || expected_ <= 0;
    });
    std::vector<Request*> batch;
    int images = 0;
    while (!queue_.empty() && (batch.empty() || images + queue_.front()->n <= max_batch_)) {
      images += queue_.front()->n;
      batch.push_back(queue_.front());
      queue_.pop_front();
    }
    queued_images_ -= images;
    lock.unlock();
    serve(batch);
    lock.lock();
    stats_.requests += static_cast<std::int64_t>(batch.size());
    stats_.images += images;
    ++stats_.forward_passes;
    for (auto* r : batch) r->done = true;
    wake_callers_.notify_all();
  }
}

void EmbedBatcher::serve(std::vector<Request*>& batch) {
  const std::size_t per_image =
      3 * static_cast<std::size_t>(model_.card().input_size) * model_.card().input_size;
  const std::size_t dim = static_cast<std::size_t>(model_.dim());
  try {
    if (batch.size() == 1) {
      batch[0]->out = model_.embed(batch[0]->inputs, batch[0]->n);
      return;
    }
    std::vector<float> joined;
    for (auto* r : batch) joined.insert(joined.end(), r->inputs, r->inputs + r->n * per_image);
    int total = 0;
    for (auto* r : batch) total += r->n;
    auto out = model_.embed(joined.data(), total);
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
