// Embedding a list of image files (queries, `lookalike embed`), in input order.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "image/decode.h"
#include "model/embedding_model.h"
#include "pipeline/batch_runner.h"

namespace lookalike::pipeline {

struct EmbeddedFiles {
  int dim = 0;
  std::vector<float> embeddings;     // n x dim row-major, L2-normalised; zero rows where failed
  std::vector<std::string> errors;   // n entries; empty string = embedded
  std::vector<int> widths, heights;  // upright full-resolution size, 0 where failed
  std::size_t failed() const;
};

// Decodes on `decode_threads` workers and embeds in batches, `passes` at once (RunOptions). A
// file that cannot be read or decoded gets its error message (naming the file and cause), never
// an exception; model failures throw ModelError.
EmbeddedFiles embed_files(model::EmbeddingModel& model,
                          const std::vector<std::filesystem::path>& files,
                          const image::DecodeOptions& decode = {}, int decode_threads = 1,
                          int batch_size = 32, const EmbedFn& embed = {}, int passes = 1);

}  // namespace lookalike::pipeline
