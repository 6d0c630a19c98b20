// Internal to train/: the model-only engine through which `train` (base model) and `reembed`
// (new model) embed images, so that their vectors are the ones `lookalike index` stores.
#pragma once

#include <memory>
#include <string>
#include <utility>

#include "engine/engine.h"

namespace lookalike::train::detail {

// From the run settings that TrainOptions and ReembedOptions share (threads, decode threads,
// batch size, passes, pixel limit); `model` a name or .pt path, `precision` as
// engine::EngineOptions::precision. The engine opens no collection. Throws
// engine::EngineError for an option out of range.
template <class Options>
std::unique_ptr<engine::Engine> open_embedding_engine(const Options& o, std::string model,
                                                      std::string precision) {
  engine::EngineOptions eo;
  eo.model = std::move(model);
  eo.precision = std::move(precision);
  eo.threads = o.threads;
  eo.decode_threads = o.decode_threads;
  eo.batch_size = o.batch_size;
  eo.passes = o.passes;
  eo.max_pixels = o.max_pixels;
  return engine::Engine::open(eo, engine::Access::ModelOnly);
}

}  // namespace lookalike::train::detail
