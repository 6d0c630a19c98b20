// Internal to train/: `lookalike train --full`, fine-tuning the base model's last stage together
// with the head on augmented images (docs/train.md). Only train/*.cpp include this (LibTorch).
#pragma once

#include <torch/script.h>
#include <torch/torch.h>

#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "image/preprocess.h"
#include "train/head.h"
#include "train/temp_files.h"
#include "train/train.h"

namespace lookalike::train::detail {

// The base model's FP32 archive split in two: `frozen` submodules run without gradients, the
// `stage` ones are fine-tuned. The archive is the exporter's trace, whose submodules keep
// torchvision's names (tools/export_model.py).
struct Backbone {
  torch::jit::Module archive;
  std::vector<torch::jit::Module> frozen, stage;
  // The frozen submodules as one module, frozen and optimised for inference (oneDNN fusion):
  // about 3x faster than running them as traced (measured on MobileNetV2, docs/train.md).
  torch::jit::Module trunk;
  std::string stage_name;  // e.g. "features[14:19]", "layer4"
  std::vector<torch::Tensor> stage_params;
};

// Architectures with a known last stage: mobilenet_v2 (features[14:19], the 7 x 7 blocks and
// the final 1 x 1 convolution) and resnet50 (layer4). Throws TrainError for any other
// architecture or an archive without those submodules.
Backbone load_backbone(const std::filesystem::path& archive, const std::string& architecture);

// images: n x 3 x H x W float32, preprocessed. Returns the pooled, unnormalised n x dim
// embedding; gradients flow into stage_params only when `grad` is set.
torch::Tensor backbone_forward(Backbone& b, const torch::Tensor& images, bool grad);

struct FineTuneData {
  const std::vector<std::filesystem::path>& files;
  const std::vector<std::int64_t>& labels;  // per file, index into n_labels
  std::int64_t n_labels = 0;
  const std::vector<std::int64_t>& train;  // indices into files
  const std::vector<std::int64_t>& val;
};

struct FineTuned {
  Head head;
  std::vector<EpochReport> epochs;  // phase "full"
  int best_epoch = 0;               // 0 = none beat the head-only model on validation
  double best_recall = -1;
  std::filesystem::path backbone;  // the fine-tuned base archive (a temporary file to embed)
  std::unique_ptr<TempFileGuard> backbone_guard;  // removes it on SIGINT / SIGTERM
  nlohmann::json info;                            // the card's training.fine_tune object
};

// Fine-tunes b's stage and `head` (trained head-only first) for options.full_epochs epochs of
// P x K batches of augmented images (image/augment.h), Adam at options.full_learning_rate for
// the stage and 10x that for the head; batch norm stays in eval mode. With validation, the
// epoch with the best validation Recall@1 is kept, and the head-only model (head_recall) when no
// epoch beats it. Writes the kept backbone next to `out` (temp_path(out, ".backbone.pt"),
// registered for removal on interrupt; the caller removes it). Throws TrainError
// naming a file that no longer decodes.
FineTuned fine_tune(Backbone& b, const FineTuneData& data, const image::PreprocessSpec& spec,
                    Head head, double head_recall, const TrainOptions& options,
                    std::mt19937_64& rng, const TrainCallbacks& callbacks);

}  // namespace lookalike::train::detail
