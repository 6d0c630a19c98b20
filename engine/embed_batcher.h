// Dynamic batching for one loaded model: callers on any thread hand in preprocessed images and
// block; a worker thread groups what is waiting into one forward pass. A pass starts when
// `max_batch` images are queued, when `max_wait` has passed since the first queued request, or
// at once when no other caller is on its way (see Expected): the window of NVIDIA Triton's
// dynamic batcher and TorchServe's batch_delay, without making a lone query pay for it. So 16
// concurrent single-image queries on 2 cores run as a few passes instead of 16 competing ones,
// and one query at a time runs with no added wait. Requests that arrive during a pass are
// grouped into the next one whatever the window.
//
// Passes side by side: a request may ask for fewer intra-op threads than the model's threads()
// (bulk work: pipeline::run_batched keeps k full batches in flight with threads() / k each).
// Passes then run at once on several workers while the threads of the running passes add up
// to at most threads(); a request for all of them (the default: a search, an upload) runs
// alone, as before, and always on worker 0, so that only one worker keeps an OpenMP team of
// all threads. docs/engine.md, "Passes side by side", has the measurements.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "model/embedding_model.h"

namespace lookalike::engine {

struct BatcherStats {
  std::int64_t requests = 0;        // embed() calls served
  std::int64_t images = 0;          // images embedded
  std::int64_t forward_passes = 0;  // model.embed calls made
  int peak_passes = 0;              // most passes that ran at once
  // Workers that have run a pass on more than one thread: each keeps an OpenMP team, and more
  // teams than fit the cores slow every pass (docs/engine.md, "OpenMP teams"). Passes on all
  // threads run on one worker only, so this stays 1 unless passes side by side use several
  // threads each.
  int team_workers = 0;
};

class EmbedBatcher {
 public:
  // max_batch > 0 images per pass (a single larger request still runs whole; the model splits
  // it into passes of its own max_batch); max_wait >= 0: how long a lone request waits for
  // company. Default 2 ms: about 1% of one MobileNetV2 image's forward pass on 2 cores.
  EmbedBatcher(model::EmbeddingModel& model, int max_batch,
               std::chrono::microseconds max_wait = std::chrono::microseconds(2000));
  ~EmbedBatcher();  // finishes queued requests, then stops the workers
  EmbedBatcher(const EmbedBatcher&) = delete;
  EmbedBatcher& operator=(const EmbedBatcher&) = delete;

  // A caller that will call embed() soon (it is decoding its image) says so, so that the worker
  // holds a pass open for it (up to max_wait) instead of starting without it. Released when
  // destroyed, or by the embed() call it is handed to. Thread-safe.
  class Expected {
   public:
    Expected() = default;
    explicit Expected(EmbedBatcher* b);
    Expected(Expected&& o) noexcept : b_(std::exchange(o.b_, nullptr)) {}
    Expected& operator=(Expected&& o) noexcept;
    ~Expected() { release(); }
    void release();

   private:
    friend class EmbedBatcher;
    EmbedBatcher* b_ = nullptr;
  };
  Expected expect() { return Expected(this); }

  // inputs: n x 3 x S x S float32 (S = the card's input_size), preprocessed; returns n x dim,
  // L2-normalised, row-major. Thread-safe; blocks until its pass is done. Rethrows the model's
  // ModelError for the pass that contained this request. threads: intra-op threads of its pass,
  // 1..model().threads(); 0 or more than that = all (see "Passes side by side" above).
  std::vector<float> embed(const float* inputs, int n, int threads = 0);
  // The same, for a caller that announced itself with expect(): its announcement ends as its
  // request is queued (under one lock, so the worker never starts a pass between the two).
  std::vector<float> embed(const float* inputs, int n, Expected& announced);
  BatcherStats stats() const;
  model::EmbeddingModel& model() { return model_; }

 private:
  struct Request {
    const float* inputs;
    int n;
    int threads;  // of its pass, 1..model_.threads()
    std::vector<float> out;
    std::exception_ptr error;
    bool done = false;
  };
  std::vector<float> submit(const float* inputs, int n, int threads, Expected& announced);
  void run(int worker);
  void stop();  // finishes queued requests, joins the workers
  void serve(std::vector<Request*>& batch, int threads);

  model::EmbeddingModel& model_;
  const int max_batch_;
  const std::chrono::microseconds max_wait_;
  mutable std::mutex mu_;
  std::condition_variable wake_worker_, wake_callers_;
  std::deque<Request*> queue_;
  int queued_images_ = 0;
  int expected_ = 0;            // callers holding an Expected (decoding, about to queue)
  int busy_threads_ = 0;        // intra-op threads of the passes running
  int running_ = 0;             // passes running
  std::vector<bool> has_team_;  // per worker: has run a pass on more than one thread
  bool stopping_ = false;
  BatcherStats stats_;
  std::vector<std::thread> workers_;  // one per thread of the model (at most 16)
};

}  // namespace lookalike::engine
