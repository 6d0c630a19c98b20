#include "pipeline/embed_files.h"

#include <algorithm>
#include <cstring>

#include "image/preprocess.h"
#include "pipeline/batch_runner.h"

namespace lookalike::pipeline {

std::size_t EmbeddedFiles::failed() const {
  return std::count_if(errors.begin(), errors.end(), [](const auto& e) { return !e.empty(); });
}

EmbeddedFiles embed_files(model::EmbeddingModel& model,
                          const std::vector<std::filesystem::path>& files,
                          const image::DecodeOptions& decode, int decode_threads, int batch_size,
                          const EmbedFn& embed, int passes) {
  const std::size_t n = files.size();
  EmbeddedFiles out;
  out.dim = model.dim();
  out.embeddings.assign(n * out.dim, 0.0f);
  out.errors.assign(n, "");
  out.widths.assign(n, 0);
  out.heights.assign(n, 0);
  const auto spec = model.preprocess_spec();

  auto prepare = [&](std::size_t job, float* input) {
    try {
      image::DecodeOptions options = decode;
      options.rows_for = &spec;  // the pixels go straight to preprocess
      auto img = image::decode_file(files[job], options);
      out.widths[job] = img.source_width;
      out.heights[job] = img.source_height;
      image::preprocess(img.rgb, img.source_width, img.source_height, spec, input,
                        files[job].string());
      return Prepared::Embed;
    } catch (const std::bad_alloc&) {
      out.errors[job] = files[job].string() + ": out of memory while decoding";
      return Prepared::Drop;
    } catch (const std::exception& e) {
      out.errors[job] = e.what();
      return Prepared::Drop;
    }
  };
  auto consume = [&](const std::vector<std::size_t>& jobs, const std::vector<Prepared>&,
                     const std::vector<float>& embeddings) {
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      std::memcpy(&out.embeddings[jobs[i] * out.dim], &embeddings[i * out.dim],
                  out.dim * sizeof(float));
    }
  };
  run_batched(n, model, {decode_threads, batch_size, nullptr, embed, passes}, prepare, consume);
  return out;
}

}  // namespace lookalike::pipeline
