// Internal to train/: the projection head's parameters, the loss, and the TorchScript archive
// that wraps base + head. Only train/*.cpp include this (it pulls in LibTorch).
#pragma once

#include <torch/script.h>
#include <torch/torch.h>

#include <filesystem>
#include <string>
#include <vector>

namespace lookalike::train::detail {

// Parameters in order w0, b0[, w1, b1]; linear: w0 dim x in. mlp: w0 hidden x in, w1 dim x
// hidden. Input rows are L2-normalised inside, output rows are L2-normalised.
struct Head {
  std::string kind;  // "linear" | "mlp"
  std::vector<torch::Tensor> params;
};

Head init_head(const std::string& kind, int in, int hidden, int out);
torch::Tensor l2_normalize(const torch::Tensor& x);
torch::Tensor apply_head(const Head& head, const torch::Tensor& base_embeddings);

// Mean triplet loss of a batch of unit rows `e` (B x d) with int64 labels (B); `active`
// receives the share of triplets with a non-zero loss.
torch::Tensor batch_hard_loss(const torch::Tensor& e, const torch::Tensor& labels, double margin,
                              double* active);
torch::Tensor semi_hard_loss(const torch::Tensor& e, const torch::Tensor& labels, double margin,
                             double* active);

// Writes a TorchScript archive: `base` (the base model's archive, loaded as a submodule) and the
// head, with methods forward(images) = head(base.<base_method>(images)) and head(embeddings).
// Written to `out` + ".tmp" and renamed.
void save_archive(const std::filesystem::path& base, const std::string& base_method,
                  const Head& head, const std::filesystem::path& out);

}  // namespace lookalike::train::detail
