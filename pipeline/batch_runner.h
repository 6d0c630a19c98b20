// The decode -> embed pipeline: worker threads decode and preprocess images while pass threads
// embed full batches and the calling thread consumes them in order, so that the cores stay busy
// (decode is ~10-20% of the work).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <functional>
#include <vector>

#include "model/embedding_model.h"

namespace lookalike::pipeline {

enum class Prepared {
  Embed,    // the worker wrote the model input; embed it
  NoEmbed,  // hand the job to the consumer without an embedding (e.g. reuse a stored one)
  Drop,     // nothing more to do for this job (unchanged, or failed and recorded)
};

// embed(inputs, n): n x 3 x S x S floats in, n x dim L2-normalised floats out.
using EmbedFn = std::function<std::vector<float>(const float* inputs, int n)>;

// Decode threads beyond this are refused: each holds a batch of decoded inputs, and more than
// a few per core only adds memory.
inline constexpr int kMaxDecodeThreads = 64;

// Passes in flight beyond this are refused: each holds a batch of inputs and activations.
inline constexpr int kMaxPasses = 16;

// Intra-op threads of each of `passes` passes side by side on a model of `model_threads`: an
// equal share, at least 1 (all of them for one pass).
inline int threads_per_pass(int model_threads, int passes) {
  return std::max(1, model_threads / std::max(1, passes));
}

struct RunOptions {
  int workers = 1;                            // decode threads, 1..kMaxDecodeThreads
  int batch_size = 32;                        // images per forward pass
  const std::atomic<bool>* cancel = nullptr;  // when set, no new job starts
  EmbedFn embed;  // empty = model.embed (else e.g. the engine's batcher, with as many passes)
  // Forward passes in flight at once, 1..kMaxPasses: each on threads() / passes intra-op
  // threads when `embed` is empty. More than one keeps the cores busy while decoding preempts
  // a pass (docs/engine.md, "Passes side by side").
  int passes = 1;
};

// prepare(job, input): runs on a worker thread for each job in [0, n); `input` holds
// 3 x input_size x input_size floats (CHW, or HWC per the model's preprocess_spec) to fill when
// returning Prepared::Embed.
using PrepareFn = std::function<Prepared(std::size_t job, float* input)>;
// consume(jobs, embeddings): runs on the calling thread with up to batch_size jobs, batches in
// the order they were prepared (while the next batches' passes run on pass threads); `embeddings`
// is jobs.size() x dim row-major, with rows of NoEmbed jobs left as zeros. Exceptions thrown here
// stop the workers and propagate out of run_batched.
using ConsumeFn =
    std::function<void(const std::vector<std::size_t>& jobs, const std::vector<Prepared>& kinds,
                       const std::vector<float>& embeddings)>;

// Throws std::invalid_argument for workers outside [1, kMaxDecodeThreads] or passes outside
// [1, kMaxPasses], and
// std::runtime_error "cannot start decode thread N of M: <cause>" when the system refuses a
// thread (the threads already started are stopped and joined first).
void run_batched(std::size_t n, model::EmbeddingModel& model, const RunOptions& options,
                 const PrepareFn& prepare, const ConsumeFn& consume);

}  // namespace lookalike::pipeline
