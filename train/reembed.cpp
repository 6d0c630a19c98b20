// reembed_collection: a new collection with a new model's vectors. A trained head over a known
// base reads base embeddings from the cache and runs only the head on them.
#include <torch/script.h>

#include <algorithm>

#include "model/embedding_model.h"
#include "store/collection.h"
#include "train/embedding_engine.h"
#include "train/train.h"

namespace lookalike::train {
namespace fs = std::filesystem;

namespace {

// The archive's own `head` method on cached base rows (n x in), in batches; n x out, unit rows.
std::vector<float> run_head(const fs::path& archive, const std::vector<float>& base, int in,
                            int out) {
  auto module = torch::jit::load(archive.string(), torch::kCPU);
  module.eval();
  auto head = module.get_method("head");
  c10::InferenceMode guard;
  const auto n = static_cast<std::int64_t>(base.size() / in);
  std::vector<float> result(static_cast<std::size_t>(n) * out);
  const std::int64_t batch = 4096;
  for (std::int64_t s = 0; s < n; s += batch) {
    const auto m = std::min(batch, n - s);
    auto x = torch::from_blob(const_cast<float*>(base.data()) + s * in, {m, in}, torch::kFloat32);
    auto y = head({x}).toTensor().to(torch::kFloat32).contiguous();
    if (y.dim() != 2 || y.size(0) != m || y.size(1) != out)
      throw model::ModelError(archive.string() + ": method 'head' returned the wrong shape");
    std::copy_n(y.data_ptr<float>(), m * out, result.begin() + s * out);
  }
  return result;
}

}  // namespace

ReembedResult reembed_collection(const ReembedOptions& o,
                                 const std::function<void(const EmbedProgress&)>& on_progress) {
  if (!store::Collection::exists(o.collection))
    throw TrainError(o.collection.string() + ": no collection here");
  std::error_code ec;
  if (fs::exists(o.out, ec) && !fs::is_empty(o.out, ec))
    throw TrainError(o.out.string() + ": --out already exists; reembed writes a new collection");
  auto source = store::Collection::open(o.collection, store::Collection::Mode::Read);

  // The vectors come out as `index` would compute them with this model and these options
  // (decode options from its card, --precision, passes side by side).
  auto engine = detail::open_embedding_engine(
      o, o.model.empty() ? source->config().model_name : o.model, o.precision);
  auto* model = &engine->model();
  const auto& training = model->card().training;
  ReembedResult r;
  r.model_id = model->id();
  r.precision = model::to_string(model->precision().precision);
  r.precision_reason = model->precision().reason;
  const auto records = source->list();
  r.images = static_cast<std::int64_t>(records.size());
  const int dim = model->dim();

  std::vector<std::string> hashes;
  for (const auto& rec : records) hashes.push_back(rec.content_hash);
  std::vector<bool> done(records.size(), false);
  std::vector<float> vectors(records.size() * dim, 0.f);
  // A fine-tuned backbone (train --full) changes the base embeddings themselves: the cached
  // vectors of the original base no longer feed the head, so every image is decoded.
  if (training.is_object() && training.contains("base_model") &&
      training["base_model"].contains("id") && !training.value("fine_tuned", false)) {
    r.head_only = true;
    const auto base_id = training["base_model"]["id"].get<std::string>();
    const int in = training["base_model"].value("embedding_dim", 0);
    auto cached =
        cache_lookup(o.cache_dir.empty() ? default_cache_dir() : o.cache_dir, base_id, hashes);
    if (cached.dim == in && in > 0 && !cached.rows.empty()) {
      const auto projected = run_head(model->archive(), cached.rows, in, dim);
      std::size_t k = 0;
      for (std::size_t i = 0; i < records.size(); ++i) {
        if (!cached.found[i]) continue;
        std::copy_n(projected.begin() + (k++) * dim, dim, vectors.begin() + i * dim);
        done[i] = true;
      }
      r.from_cache = static_cast<std::int64_t>(k);
    }
  }
  if (on_progress) on_progress({r.from_cache, r.images});

  std::vector<std::size_t> missing;
  for (std::size_t i = 0; i < records.size(); ++i)
    if (!done[i]) missing.push_back(i);
  if (!missing.empty()) {
    std::vector<fs::path> files;
    for (auto i : missing) files.emplace_back(records[i].path);
    auto e = engine->embed_files(files);
    for (std::size_t k = 0; k < missing.size(); ++k) {
      if (!e.errors[k].empty()) {
        r.failed.push_back(e.errors[k]);
        continue;
      }
      std::copy_n(e.embeddings.begin() + k * dim, dim, vectors.begin() + missing[k] * dim);
      done[missing[k]] = true;
    }
    // Only the images that decoded and embedded: the rest are listed in r.failed.
    r.decoded = static_cast<std::int64_t>(missing.size() - r.failed.size());
    if (on_progress) on_progress({r.images, r.images});
  }

  store::CatalogConfig config = source->config();
  config.model_id = model->id();
  config.model_name = engine->model_reference();
  config.dim = dim;
  auto target = store::Collection::create_or_open(o.out, config);
  std::vector<store::Put> puts;
  for (std::size_t i = 0; i < records.size(); ++i) {
    if (!done[i]) continue;
    puts.push_back({records[i], std::vector<float>(vectors.begin() + i * dim,
                                                   vectors.begin() + (i + 1) * dim)});
    if (puts.size() == 512) {
      target->apply(puts, {});
      puts.clear();
    }
  }
  if (!puts.empty()) target->apply(puts, {});
  target->save_index();
  return r;
}

}  // namespace lookalike::train
