// Image embedding models: a TorchScript archive (LibTorch) plus its model card.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "model/model_card.h"

namespace lookalike::model {

struct ModelOptions {
  // Intra-op threads for LibTorch (at::set_num_threads). Debian's LibTorch starts with 1, so
  // this is always set explicitly; 0 = std::thread::hardware_concurrency().
  int threads = 0;
  // torch::jit::optimize_for_inference (freezing + oneDNN fusion) at load: 2x-10x faster on
  // Debian's build (../shared/STACK.md). Off only for debugging.
  bool optimize = true;
};

// Where a model lives: `name_or_path` is either a path to a .pt archive or a .json card, or a
// model name looked up as <dir>/<name>.pt in each of `search_dirs`.
// Throws ModelError listing the places tried when nothing is found.
std::filesystem::path resolve_model(const std::string& name_or_path,
                                    const std::vector<std::filesystem::path>& search_dirs);
// Default model directories: $LOOKALIKE_MODELS (colon-separated), then
// $XDG_DATA_HOME/lookalike/models (default ~/.local/share/lookalike/models).
std::vector<std::filesystem::path> default_model_dirs();

struct InstalledModel {
  std::filesystem::path archive;
  ModelCard card;
};
// All <name>.pt with a readable <name>.json card in `dirs` (unreadable cards are skipped).
std::vector<InstalledModel> list_models(const std::vector<std::filesystem::path>& dirs);

class EmbeddingModel {
 public:
  // Loads <stem>.pt and <stem>.json (archive path or card path accepted). Applies
  // optimize_for_inference, sets the thread count, and checks one forward pass returns
  // n x card.embedding_dim. Throws ModelError naming the file and the cause.
  static std::unique_ptr<EmbeddingModel> load(const std::filesystem::path& archive_or_card,
                                              const ModelOptions& options = {});
  ~EmbeddingModel();
  EmbeddingModel(const EmbeddingModel&) = delete;
  EmbeddingModel& operator=(const EmbeddingModel&) = delete;

  const ModelCard& card() const;
  int dim() const;
  int threads() const;
  // Identifies the network and weights: "<name>@<first 16 hex of XXH3-128 of the archive>".
  // Stored with every embedding so a collection never mixes models.
  const std::string& id() const;
  const std::filesystem::path& archive() const;

  // input: n x 3 x input_size x input_size float32, row-major (NCHW), preprocessed as the card
  // says (image::preprocess). Returns n x dim float32, row-major, each row L2-normalised.
  // Not thread-safe: one caller at a time.
  std::vector<float> embed(const float* input, int n);

 private:
  struct Impl;
  explicit EmbeddingModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lookalike::model
