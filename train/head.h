// Internal to train/: the projection head's parameters, the loss, and the TorchScript archive
// that wraps base + head. Only train/*.cpp include this (it pulls in LibTorch).
#pragma once

#include <torch/script.h>
#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <random>
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

// One optimiser step on the triplet loss of a batch (`mining`: "batch-hard" | "semi-hard"):
// zero_grad, backward, step. Returns the batch's loss; `active` as for the losses above.
double triplet_step(torch::optim::Optimizer& optimizer, const torch::Tensor& e,
                    const torch::Tensor& labels, const std::string& mining, double margin,
                    double* active);

// Leave-one-out Recall@1 of the rows `val` of `all` (n x d unit rows, one per labelled image,
// labels in [0, n_labels)) against every other row: the training images are gallery too, as
// they will be once indexed with the trained model. Queries whose label has no other image are
// skipped. -1 when there is no query.
double leave_one_out_recall_at_1(const torch::Tensor& all, const std::vector<std::int64_t>& labels,
                                 std::int64_t n_labels, const std::vector<std::int64_t>& val);

// The training images grouped by label (labels in ascending order), leaving out labels with
// fewer than two images: the pool P x K batches are drawn from.
std::vector<std::vector<std::int64_t>> batch_pool(const std::vector<std::int64_t>& labels,
                                                  const std::vector<std::int64_t>& train);

// One P x K batch: P distinct labels, K images each (with repeats when a label has fewer).
std::vector<std::int64_t> sample_batch(const std::vector<std::vector<std::int64_t>>& pool, int p,
                                       int k, std::mt19937_64& rng);

// Writes a TorchScript archive: `base` (the base model's archive, loaded as a submodule) and the
// head, with methods forward(images) = head(base.<base_method>(images)) and head(embeddings).
// Written to `out` directly: the caller writes to a temporary name and renames it.
void save_archive(const std::filesystem::path& base, const std::string& base_method,
                  const Head& head, const std::filesystem::path& out);

}  // namespace lookalike::train::detail
