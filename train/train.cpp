// train_model: labels -> cached base embeddings -> head trained with the triplet loss ->
// archive + card. See train/train.h and docs/train.md.
#include "train/train.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <system_error>
#include <thread>

#include "eval/labels.h"
#include "model/embedding_model.h"
#include "pipeline/files.h"
#include "train/common.h"
#include "train/embedding_engine.h"
#include "train/finetune.h"
#include "train/head.h"
#include "train/temp_files.h"

namespace lookalike::train {
namespace fs = std::filesystem;
using nlohmann::json;

namespace detail {

void check_out_parent(const fs::path& out) {
  const fs::path dir = out.has_parent_path() ? out.parent_path() : fs::path(".");
  std::error_code ec;
  const auto st = fs::status(dir, ec);
  if (ec || !fs::exists(st)) {
    throw TrainError(out.string() + ": cannot write: folder " + dir.string() + " does not exist" +
                     (ec && ec != std::errc::no_such_file_or_directory ? " (" + ec.message() + ")"
                                                                       : std::string()));
  }
  if (!fs::is_directory(st))
    throw TrainError(out.string() + ": cannot write: " + dir.string() + " is not a folder");
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    throw TrainError(out.string() + ": cannot write in folder " + dir.string() + ": " +
                     std::strerror(errno));
  }
}

std::string first_causes(const std::vector<std::string>& failed, std::size_t count) {
  std::string out;
  for (std::size_t i = 0; i < failed.size() && i < count; ++i) out += (i ? "; " : "") + failed[i];
  if (failed.size() > count) out += fmt::format(" (and {} more)", failed.size() - count);
  return out;
}

}  // namespace detail

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

fs::path card_of(const fs::path& archive) { return fs::path(archive).replace_extension(".json"); }

// " (N of M labelled images could not be read or decoded: ...)", or "" when none failed.
std::string failure_note(const std::vector<std::string>& failed, std::size_t used) {
  if (failed.empty()) return "";
  return fmt::format(" ({} of {} labelled images could not be read or decoded: {})", failed.size(),
                     failed.size() + used, detail::first_causes(failed));
}

// Before any work: --out's folder must exist and be writable (check_out_parent); neither file
// may be a folder, so that neither rename can fail once the model is written.
void check_out_folder(const fs::path& out) {
  detail::check_out_parent(out);
  std::error_code ec;
  for (const auto& f : {out, card_of(out)})
    if (fs::is_directory(f, ec)) throw TrainError(f.string() + ": is a folder");
}

// Upper bounds, so that a typo gets a usage error instead of an allocator failure deep in
// LibTorch. A head cannot add information its input lacks: 4096 is twice the widest base
// embedding (ResNet-50's 2048). 16384 hidden units keep the MLP's weights (hidden x input)
// at most ~128 MiB for ResNet-50.
constexpr int kMaxDim = 4096;
constexpr int kMaxHidden = 16384;
// Per P x K batch the losses hold B x B distances (batch-hard) or B x B x B candidates
// (semi-hard): B = 4096 is 64 MiB, B = 512 about 0.5 GiB.
constexpr std::int64_t kMaxBatch = 4096;
constexpr std::int64_t kMaxSemiHardBatch = 512;
// Adam moves each weight by about the learning rate per step, on unit-norm inputs: rates far
// above the default 0.003 only make the loss jump, and 1e30 overflowed the weights (a model of
// all-zero embeddings was written). check_head_output catches what gets past this bound.
constexpr double kMaxLearningRate = 10;
// Distances between unit vectors lie in [0, 2], so d(a,p) - d(a,n) lies in [-2, 2]: a margin
// above 2 already makes every triplet count, and one past 4 is a typo, not a setting (inf left
// the card with "margin": null and every loss infinite).
constexpr double kMaxMargin = 4;

void check_ranges(const TrainOptions& o) {
  auto usage = [](const std::string& what) { throw TrainError(what, true); };
  if (o.epochs < 1) usage("--epochs: must be at least 1");
  if (o.dim < 1 || o.dim > kMaxDim)
    usage(
        fmt::format("--dim: {} is not in 1..{} (a head cannot add information its input lacks; "
                    "the widest base embedding is 2048)",
                    o.dim, kMaxDim));
  if (o.hidden < 1 || o.hidden > kMaxHidden)
    usage(fmt::format("--hidden: {} is not in 1..{}", o.hidden, kMaxHidden));
  if (!(std::isfinite(o.margin) && o.margin > 0 && o.margin <= kMaxMargin))
    usage(
        fmt::format("--margin: {} is not in (0, {}] (distances between unit vectors are at "
                    "most 2)",
                    o.margin, kMaxMargin));
  if (o.labels_per_batch < 2) usage("--labels-per-batch: must be at least 2");
  if (o.images_per_label < 2) usage("--images-per-label: must be at least 2");
  // In 64 bits: both values are ints, and their product is the batch size B.
  const std::int64_t batch = std::int64_t{o.labels_per_batch} * o.images_per_label;
  const std::int64_t most = o.mining == "semi-hard" ? kMaxSemiHardBatch : kMaxBatch;
  if (batch > most)
    usage(
        fmt::format("--labels-per-batch {} x --images-per-label {} = {} images per batch: at "
                    "most {} with --mining {} (its memory grows with the {} of the batch)",
                    o.labels_per_batch, o.images_per_label, batch, most, o.mining,
                    o.mining == "semi-hard" ? "cube" : "square"));
  if (!(o.learning_rate > 0 && o.learning_rate <= kMaxLearningRate))
    usage(fmt::format("--lr: {} is not in (0, {}]", o.learning_rate, kMaxLearningRate));
  if (!(o.val_fraction >= 0 && o.val_fraction < 1)) usage("--val-fraction: must be in [0, 1)");
  if (o.patience < 1) usage("--patience: must be at least 1");
  if (o.full_epochs < 1) usage("--full-epochs: must be at least 1");
  // The head gets 10x the stage's rate (train/finetune.cpp), so 1 keeps it within --lr's range.
  if (!(o.full_learning_rate > 0 && o.full_learning_rate <= kMaxLearningRate / 10))
    usage(fmt::format("--full-lr: {} is not in (0, {}]", o.full_learning_rate,
                      kMaxLearningRate / 10));
}

void check_options(const TrainOptions& o) {
  auto usage = [](const std::string& what) { throw TrainError(what, true); };
  if (o.out.empty() || o.out.extension() != ".pt") usage("--out: must name a .pt file");
  if (o.head != "linear" && o.head != "mlp") usage("--head: '" + o.head + "' (linear or mlp)");
  if (o.mining != "batch-hard" && o.mining != "semi-hard")
    usage("--mining: '" + o.mining + "' (batch-hard or semi-hard)");
  if (o.val_split != "stratified" && o.val_split != "by-label")
    usage("--val-split: '" + o.val_split + "' (stratified or by-label)");
  check_ranges(o);
  check_out_folder(o.out);
}

// The same file, through links or another spelling of the path.
bool same_file(const fs::path& a, const fs::path& b) {
  std::error_code ec;
  if (fs::equivalent(a, b, ec)) return true;
  return fs::absolute(a, ec).lexically_normal() == fs::absolute(b, ec).lexically_normal();
}

// The base model's reduced-precision archives, as its card names them (beside the card).
std::vector<fs::path> precision_archives(const fs::path& base_path) {
  const auto card = model::load_model_card(card_of(base_path));
  std::vector<fs::path> out;
  if (!card.precisions.is_object()) return out;
  for (const auto& entry : card.precisions)
    if (entry.is_object() && entry.contains("archive") && entry["archive"].is_string())
      out.push_back(base_path.parent_path() / entry["archive"].get<std::string>());
  return out;
}

// --out must not replace the base it is trained from (that would destroy the base archive the
// run reads, its card, or one of its reduced-precision archives, which `--precision auto` would
// then run in its place), nor, without --force, any existing model: a collection built with it
// records its id and would refuse the new one.
void check_out_target(const TrainOptions& o, const fs::path& base_path) {
  auto usage = [](const std::string& what) { throw TrainError(what, true); };
  const fs::path card = card_of(o.out);
  if (same_file(o.out, base_path) || same_file(card, card_of(base_path)))
    usage(
        fmt::format("--out {}: is the base model {} (its .pt or .json); the trained model "
                    "must be written elsewhere",
                    o.out.string(), base_path.string()));
  for (const auto& archive : precision_archives(base_path))
    if (same_file(o.out, archive))
      usage(
          fmt::format("--out {}: is the base model's reduced-precision archive {} (named in the "
                      "card's 'precisions'); the trained model must be written elsewhere",
                      o.out.string(), archive.string()));
  if (o.force) return;
  std::error_code ec;
  for (const auto& f : {o.out, card})
    if (fs::exists(fs::symlink_status(f, ec)))
      usage(
          fmt::format("--out {}: {} already exists; collections built with that model would no "
                      "longer match the new one (its id changes). Give --force to replace it, "
                      "or choose another name",
                      o.out.string(), f.string()));
}

std::string read_hash(const fs::path& file, std::string* error) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    *error = file.string() + ": cannot read";
    return {};
  }
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
  return pipeline::content_hash(bytes);
}

// The labelled images with their base embeddings (cache first, base model for the rest).
struct Dataset {
  std::vector<fs::path> files;
  std::vector<std::string> hashes;
  std::vector<std::string> label_names;  // sorted
  std::vector<std::int64_t> labels;      // index into label_names, per file
  torch::Tensor base;                    // n x base_dim, L2-normalised
};

// Images not in the cache are embedded by `engine` (the base model at FP32), as `index` would.
Dataset embed_dataset(const eval::LabelledSet& set, engine::Engine& engine,
                      const fs::path& cache_dir, TrainResult& r, const TrainCallbacks& cb) {
  auto& base = engine.model();
  std::vector<fs::path> files;
  std::vector<std::string> hashes, labels;
  for (std::size_t i = 0; i < set.files.size(); ++i) {
    std::string error;
    std::string h = read_hash(set.files[i], &error);
    if (!error.empty()) {
      r.failed.push_back(error);
      continue;
    }
    files.push_back(set.files[i]);
    hashes.push_back(std::move(h));
    labels.push_back(set.labels[i]);
  }
  const int dim = base.dim();
  auto cached = cache_lookup(cache_dir, base.id(), hashes);
  if (cached.dim && cached.dim != dim) cached = {{}, {}, std::vector<bool>(hashes.size(), false)};
  std::vector<fs::path> missing;
  std::vector<std::string> missing_hashes;
  for (std::size_t i = 0; i < files.size(); ++i)
    if (!cached.found[i]) {
      missing.push_back(files[i]);
      missing_hashes.push_back(hashes[i]);
    }
  r.cached = static_cast<std::int64_t>(files.size() - missing.size());
  if (cb.on_embed) cb.on_embed({r.cached, static_cast<std::int64_t>(files.size())});

  std::vector<float> fresh;
  std::vector<std::string> errors;
  if (!missing.empty()) {
    // In chunks, so progress shows and a failure late in a long run keeps what was cached.
    const std::size_t chunk = 256;
    for (std::size_t start = 0; start < missing.size(); start += chunk) {
      const std::size_t end = std::min(missing.size(), start + chunk);
      std::vector<fs::path> part(missing.begin() + start, missing.begin() + end);
      auto e = engine.embed_files(part);
      std::vector<std::string> ok_hashes;
      std::vector<float> ok_rows;
      for (std::size_t i = 0; i < part.size(); ++i) {
        errors.push_back(e.errors[i]);
        fresh.insert(fresh.end(), e.embeddings.begin() + i * dim,
                     e.embeddings.begin() + (i + 1) * dim);
        if (!e.errors[i].empty()) continue;
        ok_hashes.push_back(missing_hashes[start + i]);
        ok_rows.insert(ok_rows.end(), e.embeddings.begin() + i * dim,
                       e.embeddings.begin() + (i + 1) * dim);
      }
      cache_store(cache_dir, base.id(), ok_hashes, ok_rows, dim);
      // Only the images that decoded and embedded: the rest are listed in r.failed.
      r.decoded += static_cast<std::int64_t>(ok_hashes.size());
      if (cb.on_embed)
        cb.on_embed(
            {r.cached + static_cast<std::int64_t>(end), static_cast<std::int64_t>(files.size())});
    }
  }

  Dataset d;
  std::vector<float> rows;
  std::size_t next_cached = 0, next_fresh = 0;
  for (std::size_t i = 0; i < files.size(); ++i) {
    const float* row;
    if (cached.found[i]) {
      row = cached.rows.data() + (next_cached++) * dim;
    } else {
      const std::size_t k = next_fresh++;
      if (!errors[k].empty()) {
        r.failed.push_back(errors[k]);
        continue;
      }
      row = fresh.data() + k * dim;
    }
    rows.insert(rows.end(), row, row + dim);
    d.files.push_back(files[i]);
    d.hashes.push_back(hashes[i]);
    d.label_names.push_back(labels[i]);  // names for now, indices below
  }
  std::set<std::string> names(d.label_names.begin(), d.label_names.end());
  std::vector<std::string> sorted(names.begin(), names.end());
  for (const auto& n : d.label_names)
    d.labels.push_back(std::lower_bound(sorted.begin(), sorted.end(), n) - sorted.begin());
  d.label_names = sorted;
  const auto n = static_cast<std::int64_t>(d.files.size());
  d.base = torch::from_blob(rows.data(), {n, dim}, torch::kFloat32).clone();
  return d;
}

// Hash of what the head was trained on: (content hash, label) pairs, order-independent, so the
// same photos and labels give the same hash wherever the files live.
std::string labels_hash(const Dataset& d) {
  std::vector<std::string> lines;
  for (std::size_t i = 0; i < d.files.size(); ++i)
    lines.push_back(d.hashes[i] + "\t" + d.label_names[d.labels[i]] + "\n");
  std::sort(lines.begin(), lines.end());
  std::string all;
  for (const auto& l : lines) all += l;
  return pipeline::content_hash({reinterpret_cast<const std::uint8_t*>(all.data()), all.size()});
}

struct Split {
  std::vector<std::int64_t> train, val;
};

Split split_dataset(const Dataset& d, const TrainOptions& o, std::mt19937_64& rng) {
  const auto n_labels = static_cast<std::int64_t>(d.label_names.size());
  std::vector<std::vector<std::int64_t>> by_label(n_labels);
  for (std::size_t i = 0; i < d.labels.size(); ++i)
    by_label[d.labels[i]].push_back(static_cast<std::int64_t>(i));
  Split s;
  if (o.val_fraction <= 0) {
    for (std::size_t i = 0; i < d.labels.size(); ++i)
      s.train.push_back(static_cast<std::int64_t>(i));
    return s;
  }
  if (o.val_split == "by-label") {
    std::vector<std::int64_t> order(n_labels);
    for (std::int64_t i = 0; i < n_labels; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    const auto held = std::max<std::int64_t>(1, std::llround(o.val_fraction * n_labels));
    if (n_labels - held < 2)
      throw TrainError(o.labels.string() + ": --val-split by-label holds out " +
                       std::to_string(held) + " of " + std::to_string(n_labels) +
                       " labels, leaving fewer than two to train on");
    for (std::int64_t k = 0; k < n_labels; ++k)
      for (auto i : by_label[order[k]]) (k < held ? s.val : s.train).push_back(i);
  } else {
    for (auto& members : by_label) {
      std::shuffle(members.begin(), members.end(), rng);
      const auto count = static_cast<std::int64_t>(members.size());
      auto held = std::llround(o.val_fraction * count);
      if (held == 0 && count >= 3) held = 1;
      held = std::min<std::int64_t>(held, std::max<std::int64_t>(0, count - 2));
      for (std::int64_t k = 0; k < count; ++k) (k < held ? s.val : s.train).push_back(members[k]);
    }
  }
  std::sort(s.train.begin(), s.train.end());
  std::sort(s.val.begin(), s.val.end());
  return s;
}

double val_recall_at_1(const detail::Head& head, const Dataset& d, const Split& s) {
  if (s.val.empty()) return -1;
  torch::NoGradGuard no_grad;
  return detail::leave_one_out_recall_at_1(detail::apply_head(head, d.base), d.labels,
                                           static_cast<std::int64_t>(d.label_names.size()), s.val);
}

struct Trained {
  detail::Head head;
  std::vector<EpochReport> epochs;
  int best_epoch = 0;
  double best_recall = -1;
};

// `failed`: the images left out because they could not be read or decoded, named when too few
// are left to train on (they are the likely cause).
Trained fit(const Dataset& d, const Split& s, const TrainOptions& o, std::mt19937_64& rng,
            const TrainCallbacks& cb, const std::vector<std::string>& failed) {
  const auto pool = detail::batch_pool(d.labels, s.train);
  if (pool.size() < 2)
    throw TrainError(o.labels.string() +
                     ": needs at least two labels with two or more training images each, found " +
                     std::to_string(pool.size()) + failure_note(failed, d.files.size()));
  const int p = std::min<int>(o.labels_per_batch, static_cast<int>(pool.size()));
  const int k = o.images_per_label;
  const auto batches =
      std::max<std::int64_t>(1, static_cast<std::int64_t>(s.train.size()) / (std::int64_t{p} * k));

  Trained t;
  t.head = detail::init_head(o.head, static_cast<int>(d.base.size(1)), o.hidden, o.dim);
  torch::optim::Adam adam(t.head.params, torch::optim::AdamOptions(o.learning_rate));
  const auto labels = torch::tensor(d.labels, torch::kInt64);
  std::vector<torch::Tensor> best_params;
  int stale = 0;
  for (int epoch = 1; epoch <= o.epochs; ++epoch) {
    const auto start = Clock::now();
    double loss_sum = 0, active_sum = 0;
    for (std::int64_t b = 0; b < batches; ++b) {
      const auto idx = torch::tensor(detail::sample_batch(pool, p, k, rng), torch::kInt64);
      const auto e = detail::apply_head(t.head, d.base.index_select(0, idx));
      const auto y = labels.index_select(0, idx);
      double active = 0;
      loss_sum += detail::triplet_step(adam, e, y, o.mining, o.margin, &active);
      active_sum += active;
    }
    EpochReport r;
    r.epoch = epoch;
    r.epochs = o.epochs;
    r.loss = loss_sum / batches;
    r.active = active_sum / batches;
    r.val_recall_at_1 = val_recall_at_1(t.head, d, s);
    r.best = r.val_recall_at_1 < 0 || r.val_recall_at_1 >= t.best_recall;
    if (r.best) {
      t.best_recall = r.val_recall_at_1;
      t.best_epoch = epoch;
      best_params.clear();
      for (const auto& q : t.head.params) best_params.push_back(q.detach().clone());
      stale = 0;
    } else {
      ++stale;
    }
    r.seconds = seconds_since(start);
    r.triplets_per_s = static_cast<double>(batches) * p * k / std::max(r.seconds, 1e-9);
    r.eta_seconds = r.seconds * (o.epochs - epoch);
    t.epochs.push_back(r);
    if (cb.on_epoch) cb.on_epoch(r);
    if (stale >= o.patience) break;
  }
  t.head.params = best_params;
  return t;
}

json epoch_json(const EpochReport& r) {
  return {{"phase", r.phase},
          {"epoch", r.epoch},
          {"loss", r.loss},
          {"active_triplets", r.active},
          {"val_recall_at_1", r.val_recall_at_1 < 0 ? json(nullptr) : json(r.val_recall_at_1)}};
}

json training_json(const TrainOptions& o, const model::EmbeddingModel& base,
                   const eval::LabelledSet& set, const Dataset& d, const Split& s, const Trained& t,
                   int threads) {
  json per_epoch = json::array();
  for (const auto& r : t.epochs) per_epoch.push_back(epoch_json(r));
  const int in = static_cast<int>(d.base.size(1));
  return {{"base_model",
           {{"name", base.card().name},
            {"id", base.id()},
            {"archive", fs::absolute(base.archive()).lexically_normal().string()},
            {"embedding_dim", in}}},
          {"head",
           {{"type", o.head},
            {"method", "head"},
            {"input_dim", in},
            {"hidden_dim", o.head == "mlp" ? json(o.hidden) : json(nullptr)},
            {"output_dim", o.dim},
            {"input", "the base model's embedding (L2-normalised inside the head)"},
            {"output", "L2-normalised"}}},
          {"fine_tuned", false},
          {"loss", "triplet"},
          {"margin", o.margin},
          {"mining", o.mining},
          {"batch",
           {{"labels_per_batch", std::min<int>(o.labels_per_batch, d.label_names.size())},
            {"images_per_label", o.images_per_label}}},
          {"optimizer", {{"name", "adam"}, {"learning_rate", o.learning_rate}}},
          {"epochs", o.epochs},
          {"epochs_run", std::count_if(t.epochs.begin(), t.epochs.end(),
                                       [](const EpochReport& r) { return r.phase == "head"; })},
          {"best_epoch", t.best_epoch},
          {"patience", o.patience},
          {"seed", o.seed},
          {"threads", threads},
          {"labels",
           {{"source", fs::absolute(set.source).lexically_normal().string()},
            {"images", d.files.size()},
            {"classes", d.label_names.size()},
            {"hash", labels_hash(d)},
            {"hash_of", "XXH3-128 of the sorted lines '<content hash>\\t<label>\\n'"}}},
          {"validation",
           {{"split", o.val_split},
            {"fraction", o.val_fraction},
            {"train_images", s.train.size()},
            {"images", s.val.size()},
            {"recall_at_1", t.best_recall < 0 ? json(nullptr) : json(t.best_recall)},
            {"per_epoch", per_epoch}}},
          {"papers",
           {"Schroff, Kalenichenko, Philbin, FaceNet, CVPR 2015, https://arxiv.org/abs/1503.03832",
            "Hermans, Beyer, Leibe, In Defense of the Triplet Loss, 2017, "
            "https://arxiv.org/abs/1703.07737"}}};
}

model::ModelCard trained_card(const model::ModelCard& base, const TrainOptions& o, json training) {
  model::ModelCard c = base;
  c.name = o.out.stem().string();
  const bool fine_tuned = training.value("fine_tuned", false);
  c.weights_source = "lookalike train: a " + o.head + " head on " + base.name +
                     (fine_tuned ? " (last stage fine-tuned)" : "") + " trained on the labels of " +
                     training["labels"]["source"].get<std::string>();
  c.weights_sha256.clear();
  c.embedding_dim = o.dim;
  c.normalized = true;
  c.embedding_output = std::to_string(o.dim) + "-d L2-normalised output of a " + o.head +
                       " head (method 'head') on " + base.name + "'s embedding";
  c.method = "forward";
  c.exported_by = "lookalike train (LibTorch " TORCH_VERSION ")";
  // Reduced-precision archives belong to the base archive; a trained model runs FP32 until it
  // is calibrated itself (docs/precision.md).
  c.precisions = nullptr;
  c.training = std::move(training);
  return c;
}

// The labelled set, with what it left out (rows naming missing files, empty labels, images
// outside a label folder) reported and counted as `eval` does, not silently dropped.
eval::LabelledSet load_labels(const TrainOptions& o, TrainResult& r, const TrainCallbacks& cb) {
  eval::LabelledSet set;
  try {
    set = eval::load_labelled_set(o.labels, o.label_column, o.file_column);
  } catch (const eval::LabelError& e) {
    throw TrainError(e.what());
  }
  r.skipped = set.skipped;
  r.unlabelled = set.unlabelled;
  r.empty_labels = set.empty_labels;
  r.unreadable = set.unreadable;
  if (cb.on_skipped && !set.skipped.empty()) cb.on_skipped(set.skipped);
  return set;
}

// Unit rows, as the head promises. Weights that overflowed (too high a --lr) give NaN rows, or
// rows of zeros once x * x overflows inside l2_normalize: a model that would store them is
// useless and must not replace anything.
bool unit_rows(const torch::Tensor& e) {
  const auto norms = e.to(torch::kFloat64).norm(2, 1);
  return e.isfinite().all().item<bool>() && ((norms - 1).abs() < 1e-3).all().item<bool>();
}

void check_head_output(const detail::Head& head, const Dataset& d, const TrainOptions& o) {
  torch::NoGradGuard no_grad;
  if (!unit_rows(detail::apply_head(head, d.base)))
    throw TrainError(
        fmt::format("training diverged: the trained head's embeddings of {} are not "
                    "finite unit vectors (--lr {} too high?); nothing written",
                    o.labels.string(), o.learning_rate));
}

// A zero image through the loaded archive: it must give a finite unit row like any image.
void check_loaded(const fs::path& archive, const TrainOptions& o) {
  auto m = model::EmbeddingModel::load(archive, {o.threads, true, o.batch_size, "fp32"});
  const int side = m->card().input_size;
  std::vector<float> zero(3 * static_cast<std::size_t>(side) * side, 0.f);
  auto row = m->embed(zero.data(), 1);
  if (!unit_rows(torch::from_blob(row.data(), {1, m->dim()}, torch::kFloat32)))
    throw TrainError(
        fmt::format("training diverged: {} gives embeddings that are not finite unit "
                    "vectors (--lr {}, --full-lr {} too high?); nothing written",
                    o.out.string(), o.learning_rate, o.full_learning_rate));
}

// Archive and card go to temporary names beside --out, are loaded as a model, and only then
// renamed over it: a failure (disk full, a model that does not load) leaves any old files whole,
// and so does SIGINT / SIGTERM (the guards remove the temporary files; the renames finish first).
// A crash between the two renames (power loss, kill -9) pairs the new archive with the old card:
// the card's archive_digest makes the loader refuse that pair instead of using it.
void write_model(const fs::path& base_archive, const std::string& base_method,
                 const detail::Head& head, const model::ModelCard& card, const TrainOptions& o) {
  const fs::path tmp = temp_path(o.out, ".pt");
  const TempFileGuard archive_guard(tmp), card_guard(card_of(tmp));
  auto cleanup = [&] {
    std::error_code ec;
    fs::remove(tmp, ec);
    fs::remove(card_of(tmp), ec);
  };
  try {
    detail::save_archive(base_archive, base_method, head, tmp);
    model::ModelCard written = card;
    written.archive_digest = model::archive_digest(tmp);  // pairs the card with this archive
    model::save_model_card(written, card_of(tmp));
    check_loaded(tmp, o);
    const CommitGuard commit;
    fs::rename(tmp, o.out);
    fs::rename(card_of(tmp), card_of(o.out));
  } catch (...) {
    cleanup();
    throw;
  }
}

}  // namespace

TrainResult train_model(const TrainOptions& o, const TrainCallbacks& cb) {
  const auto started = Clock::now();
  check_options(o);
  const fs::path base_path = model::resolve_model(o.base, model::default_model_dirs());
  check_out_target(o, base_path);
  // What an earlier run for this --out left when it was killed (kill -9, power loss).
  for (const auto& f : sweep_stale_temp_files(o.out))
    spdlog::warn("removed {}, left by an interrupted run", f.string());
  TrainResult r;
  const eval::LabelledSet set = load_labels(o, r, cb);
  std::set<std::string> distinct(set.labels.begin(), set.labels.end());
  if (distinct.size() < 2)
    throw TrainError(o.labels.string() + ": needs at least two labels to learn from, found " +
                     std::to_string(distinct.size()) +
                     (distinct.empty() ? "" : " ('" + *distinct.begin() + "')"));

  // At FP32: cached base vectors must be the ones the archive reproduces.
  auto engine = detail::open_embedding_engine(o, base_path.string(), "fp32");
  auto* base = &engine->model();
  if (!base->card().training.is_null())
    throw TrainError(base_path.string() +
                     ": is itself a trained model (card field 'training'); "
                     "train from its base model '" +
                     base->card().training["base_model"].value("name", std::string("?")) + "'");

  const fs::path cache_dir = o.cache_dir.empty() ? default_cache_dir() : o.cache_dir;
  Dataset d = embed_dataset(set, *engine, cache_dir, r, cb);
  r.images = static_cast<std::int64_t>(d.files.size());
  // Before training, so that the causes show even when too few images are left to train on.
  if (cb.on_failed && !r.failed.empty()) cb.on_failed(r.failed);

  at::set_num_threads(base->threads());
  torch::manual_seed(o.seed);
  std::mt19937_64 rng(o.seed);
  const Split s = split_dataset(d, o, rng);
  Trained t = fit(d, s, o, rng, cb, r.failed);
  std::optional<detail::FineTuned> ft;
  if (o.full) {
    auto backbone = detail::load_backbone(base_path, base->card().architecture);
    const detail::FineTuneData data{
        d.files, d.labels, static_cast<std::int64_t>(d.label_names.size()), s.train, s.val};
    ft = detail::fine_tune(backbone, data, model::preprocess_spec(base->card()), t.head,
                           t.best_recall, o, rng, cb);
    t.head = ft->head;
    t.best_recall = ft->best_recall;
    t.epochs.insert(t.epochs.end(), ft->epochs.begin(), ft->epochs.end());
  }

  json training = training_json(o, *base, set, d, s, t, base->threads());
  // Kept only when an epoch of fine-tuning won: otherwise the base is unchanged and its cached
  // embeddings still feed the head (reembed).
  const bool fine_tuned = ft && ft->best_epoch > 0;
  training["fine_tuned"] = fine_tuned;
  if (ft) training["fine_tune"] = ft->info;
  const model::ModelCard card = trained_card(base->card(), o, training);
  // The fine-tuned backbone is a temporary file beside --out, removed whatever happens.
  auto remove_backbone = [&] {
    std::error_code ec;
    if (!ft) return;
    fs::remove(ft->backbone, ec);
    ft->backbone_guard.reset();
  };
  try {
    check_head_output(t.head, d, o);
    write_model(fine_tuned ? ft->backbone : base_path, base->card().method, t.head, card, o);
  } catch (...) {
    remove_backbone();
    throw;
  }
  remove_backbone();

  r.archive = o.out;
  r.card = card_of(o.out);
  r.training = std::move(training);
  r.epochs = t.epochs;
  r.best_epoch = t.best_epoch;
  r.seconds = seconds_since(started);
  return r;
}

}  // namespace lookalike::train
