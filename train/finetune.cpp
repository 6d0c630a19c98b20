// lookalike train --full: the base model's last stage and the head, fine-tuned on augmented
// images with the triplet loss. See train/finetune.h and docs/train.md.
#include "train/finetune.h"

#include <ATen/Parallel.h>

#include <chrono>
#include <memory>
#include <optional>

#include "image/augment.h"
#include "image/decode.h"
#include "train/temp_files.h"

namespace lookalike::train::detail {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

torch::jit::Module child(const torch::jit::Module& m, const std::string& name,
                         const fs::path& archive) {
  if (!m.hasattr(name) || !m.attr(name).isModule())
    throw TrainError(archive.string() + ": --full: the archive has no submodule '" + name +
                     "' (export it with tools/export_model.py)");
  return m.attr(name).toModule();
}

torch::jit::Module optimized_trunk(const std::vector<torch::jit::Module>& frozen) {
  torch::jit::Module trunk("LookalikeTrunk");
  std::string src = "def forward(self, x: Tensor) -> Tensor:\n";
  for (std::size_t i = 0; i < frozen.size(); ++i) {
    trunk.register_module("m" + std::to_string(i), frozen[i]);
    src += "    x = self.m" + std::to_string(i) + ".forward(x)\n";
  }
  src += "    return x\n";
  trunk.define(src);
  trunk.eval();
  auto frozen_trunk = torch::jit::freeze(trunk);
  return torch::jit::optimize_for_inference(frozen_trunk);
}

// Decoded training images at the model's resize (shorter side = spec.resize_shorter), held in
// memory up to a budget so that epochs after the first decode nothing; past the budget an image
// is decoded again each time it is drawn. About 0.26 MB an image at 256 pixels.
class Pixels {
 public:
  static constexpr std::size_t kBudgetBytes = std::size_t(4) << 30;

  Pixels(const std::vector<fs::path>& files, const image::PreprocessSpec& spec,
         std::int64_t max_pixels)
      : files_(files), spec_(spec), max_pixels_(max_pixels), held_(files.size()) {}

  // The images at `idx`, decoded in parallel where not held yet. Throws TrainError naming the
  // first file that fails.
  std::vector<std::shared_ptr<const image::RgbImage>> get(const std::vector<std::int64_t>& idx) {
    const auto n = static_cast<std::int64_t>(idx.size());
    std::vector<std::shared_ptr<const image::RgbImage>> out(idx.size());
    std::vector<std::string> errors(idx.size());
    at::parallel_for(0, n, 1, [&](std::int64_t lo, std::int64_t hi) {
      for (auto i = lo; i < hi; ++i) {
        out[i] = held_[idx[i]];
        if (out[i]) continue;
        try {
          out[i] = decode(files_[idx[i]]);
        } catch (const std::exception& e) {
          errors[i] = e.what();
        }
      }
    });
    for (std::size_t i = 0; i < idx.size(); ++i) {
      if (!errors[i].empty()) throw TrainError("--full: " + errors[i]);
      auto& slot = held_[idx[i]];
      const std::size_t bytes = out[i]->pixels.size();
      if (!slot && used_ + bytes <= kBudgetBytes) {
        slot = out[i];
        used_ += bytes;
      }
    }
    return out;
  }

 private:
  std::shared_ptr<const image::RgbImage> decode(const fs::path& file) const {
    image::DecodeOptions o;
    o.max_pixels = max_pixels_;
    o.min_shorter_side = spec_.resize_shorter;
    auto d = image::decode_file(file, o);
    if (spec_.resize_shorter <= 0) return std::make_shared<image::RgbImage>(std::move(d.rgb));
    const auto [w, h] = image::resized_size(d.source_width, d.source_height, spec_.resize_shorter);
    if (w * h > (std::int64_t(1) << 26))
      throw image::DecodeError(file.string(), "too elongated to train on (" +
                                                  std::to_string(d.source_width) + " x " +
                                                  std::to_string(d.source_height) + ")");
    return std::make_shared<image::RgbImage>(
        image::resize(d.rgb, int(w), int(h), spec_.interpolation));
  }

  const std::vector<fs::path>& files_;
  image::PreprocessSpec spec_;
  std::int64_t max_pixels_;
  std::vector<std::shared_ptr<const image::RgbImage>> held_;
  std::size_t used_ = 0;
};

// n x dim unit rows of every image: centre crop, no augmentation (as `index` embeds them).
torch::Tensor embed_all(Backbone& b, const Head& head, Pixels& pixels,
                        const image::PreprocessSpec& spec, std::int64_t n) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> parts;
  const std::int64_t chunk = 64;
  for (std::int64_t start = 0; start < n; start += chunk) {
    std::vector<std::int64_t> idx;
    for (auto i = start; i < std::min(n, start + chunk); ++i) idx.push_back(i);
    const auto imgs = pixels.get(idx);
    auto x = torch::empty({std::int64_t(idx.size()), 3, spec.crop, spec.crop});
    float* data = x.data_ptr<float>();
    const std::size_t per = std::size_t(3) * spec.crop * spec.crop;
    at::parallel_for(0, std::int64_t(idx.size()), 1, [&](std::int64_t lo, std::int64_t hi) {
      for (auto i = lo; i < hi; ++i)
        image::preprocess(*imgs[i], imgs[i]->width, imgs[i]->height, spec, data + i * per, "");
    });
    parts.push_back(apply_head(head, backbone_forward(b, x, false)));
  }
  return torch::cat(parts);
}

// A batch of augmented images: draws in order from rng (reproducible), pixels in parallel.
torch::Tensor augmented_batch(const std::vector<std::int64_t>& idx, Pixels& pixels,
                              const image::AugmentSpec& aug, const image::PreprocessSpec& spec,
                              std::mt19937_64& rng) {
  const auto imgs = pixels.get(idx);
  std::vector<image::AugmentDraw> draws;
  for (const auto& img : imgs)
    draws.push_back(image::draw_augmentation(img->width, img->height, aug, rng));
  auto x = torch::empty({std::int64_t(idx.size()), 3, aug.size, aug.size});
  float* data = x.data_ptr<float>();
  const std::size_t per = std::size_t(3) * aug.size * aug.size;
  at::parallel_for(0, std::int64_t(idx.size()), 1, [&](std::int64_t lo, std::int64_t hi) {
    for (auto i = lo; i < hi; ++i) image::augment(*imgs[i], draws[i], aug, spec, data + i * per);
  });
  return x;
}

std::vector<torch::Tensor> snapshot(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> s;
  for (const auto& p : params) s.push_back(p.detach().clone());
  return s;
}

void restore(std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& saved) {
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < params.size(); ++i) params[i].copy_(saved[i]);
}

json augmentation_json(const image::AugmentSpec& a) {
  return {{"random_resized_crop",
           {{"size", a.size},
            {"area", {a.min_area, a.max_area}},
            {"ratio", {a.min_ratio, a.max_ratio}}}},
          {"horizontal_flip", a.flip_probability},
          {"color_jitter",
           {{"brightness", a.brightness}, {"contrast", a.contrast}, {"saturation", a.saturation}}}};
}

}  // namespace

Backbone load_backbone(const fs::path& archive, const std::string& architecture) {
  Backbone b;
  try {
    b.archive = torch::jit::load(archive.string(), torch::kCPU);
  } catch (const c10::Error& e) {
    throw TrainError(archive.string() +
                     ": cannot load for fine-tuning: " + e.what_without_backtrace());
  }
  b.archive.eval();
  if (architecture == "mobilenet_v2") {
    const auto f = child(b.archive, "features", archive);
    for (int i = 0; i <= 18; ++i)
      (i < 14 ? b.frozen : b.stage).push_back(child(f, std::to_string(i), archive));
    b.stage_name = "features[14:19]";
  } else if (architecture == "resnet50") {
    for (const char* n : {"conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"})
      b.frozen.push_back(child(b.archive, n, archive));
    b.stage.push_back(child(b.archive, "layer4", archive));
    b.stage_name = "layer4";
  } else {
    throw TrainError(
        "--full: fine-tuning knows the last stage of mobilenet_v2 and resnet50; the "
        "base is '" +
            architecture + "' (train the head alone without --full)",
        true);
  }
  for (auto p : b.archive.parameters()) p.set_requires_grad(false);
  b.trunk = optimized_trunk(b.frozen);
  for (auto& m : b.stage)
    for (auto p : m.parameters()) {
      p.set_requires_grad(true);
      b.stage_params.push_back(p);
    }
  return b;
}

torch::Tensor backbone_forward(Backbone& b, const torch::Tensor& images, bool grad) {
  torch::Tensor x = images;
  {
    torch::NoGradGuard no_grad;
    x = b.trunk.forward({x}).toTensor();
  }
  std::optional<torch::NoGradGuard> no_grad;
  if (!grad) no_grad.emplace();
  for (auto& m : b.stage) x = m.forward({x}).toTensor();
  return torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
}

FineTuned fine_tune(Backbone& b, const FineTuneData& data, const image::PreprocessSpec& spec,
                    Head head, double head_recall, const TrainOptions& o, std::mt19937_64& rng,
                    const TrainCallbacks& cb) {
  Pixels pixels(data.files, spec, o.max_pixels);
  const auto pool = batch_pool(data.labels, data.train);
  const int p = std::min<int>(o.labels_per_batch, static_cast<int>(pool.size()));
  const int k = o.images_per_label;
  const auto batches =
      std::max<std::int64_t>(1, static_cast<std::int64_t>(data.train.size()) / (p * k));
  image::AugmentSpec aug;
  aug.size = spec.crop;
  aug.interpolation = spec.interpolation;
  const double head_lr = 10 * o.full_learning_rate;

  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(b.stage_params,
                      std::make_unique<torch::optim::AdamOptions>(o.full_learning_rate));
  groups.emplace_back(head.params, std::make_unique<torch::optim::AdamOptions>(head_lr));
  torch::optim::Adam adam(std::move(groups), torch::optim::AdamOptions(o.full_learning_rate));
  const auto labels = torch::tensor(data.labels, torch::kInt64);
  const auto n = static_cast<std::int64_t>(data.files.size());

  FineTuned ft;
  ft.best_recall = head_recall;
  auto best_stage = snapshot(b.stage_params);
  auto best_head = snapshot(head.params);
  for (int epoch = 1; epoch <= o.full_epochs; ++epoch) {
    const auto start = Clock::now();
    double loss_sum = 0, active_sum = 0;
    for (std::int64_t i = 0; i < batches; ++i) {
      const auto idx = sample_batch(pool, p, k, rng);
      const auto x = augmented_batch(idx, pixels, aug, spec, rng);
      const auto e = apply_head(head, backbone_forward(b, x, true));
      const auto y = labels.index_select(0, torch::tensor(idx, torch::kInt64));
      double active = 0;
      loss_sum += triplet_step(adam, e, y, o.mining, o.margin, &active);
      active_sum += active;
    }
    EpochReport r;
    r.phase = "full";
    r.epoch = epoch;
    r.epochs = o.full_epochs;
    r.loss = loss_sum / batches;
    r.active = active_sum / batches;
    if (!data.val.empty())
      r.val_recall_at_1 = leave_one_out_recall_at_1(embed_all(b, head, pixels, spec, n),
                                                    data.labels, data.n_labels, data.val);
    // Without validation the last epoch is kept; with it, the best one if it beats head-only.
    r.best = data.val.empty() || r.val_recall_at_1 > ft.best_recall;
    if (r.best) {
      ft.best_recall = r.val_recall_at_1;
      ft.best_epoch = epoch;
      best_stage = snapshot(b.stage_params);
      best_head = snapshot(head.params);
    }
    r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    r.triplets_per_s = static_cast<double>(batches) * p * k / std::max(r.seconds, 1e-9);
    r.eta_seconds = r.seconds * (o.full_epochs - epoch);
    ft.epochs.push_back(r);
    if (cb.on_epoch) cb.on_epoch(r);
  }
  restore(b.stage_params, best_stage);
  restore(head.params, best_head);
  for (auto& q : b.stage_params) q.set_requires_grad(false);
  ft.head = std::move(head);

  // Registered before it exists, so that an interrupt during the save removes it too.
  ft.backbone = temp_path(o.out, ".backbone.pt");
  ft.backbone_guard = std::make_unique<TempFileGuard>(ft.backbone);
  b.archive.save(ft.backbone.string());
  ft.info = {{"stage", b.stage_name},
             {"batch_norm", "eval mode (running statistics kept)"},
             {"epochs", o.full_epochs},
             {"best_epoch", ft.best_epoch},
             {"optimizer",
              {{"name", "adam"},
               {"stage_learning_rate", o.full_learning_rate},
               {"head_learning_rate", head_lr}}},
             {"augmentation", augmentation_json(aug)},
             {"starts_from", "the head trained alone; epochs in validation.per_epoch"}};
  return ft;
}

}  // namespace lookalike::train::detail
