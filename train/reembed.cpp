// reembed_collection: a new collection with a new model's vectors. A trained head over a known
// base reads base embeddings from the cache and runs only the head on them.
#include <fmt/format.h>
#include <torch/script.h>

#include <algorithm>

#include "index/vector_index.h"
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

// The source's index spec must fit the new model's vectors (PQ16 needs a dimension divisible
// by 16): found before anything is embedded, not after.
void check_index_spec(const store::CatalogConfig& config, int dim, const fs::path& collection) {
  try {
    index::VectorIndex::validate_factory(dim, index::parse_metric(config.metric), config.factory);
  } catch (const index::IndexError& e) {
    throw TrainError(fmt::format(
        "{}: its index spec \"{}\" does not fit the new model's {}-d vectors ({}); reindex the "
        "collection with another --index-spec first (`lookalike reindex --index-spec Flat`)",
        collection.string(), config.factory, dim, e.what()));
  }
}

// Uploaded images live inside the source collection (<dir>/uploads, engine::Engine::add_image):
// the new collection gets its own copies, so that deleting the old one after the switch keeps
// them. Points the records at `out`/uploads, where the copies end up; returns the files to copy.
std::vector<fs::path> retarget_uploads(const fs::path& source_dir, const fs::path& out,
                                       std::vector<store::ImageRecord>& records) {
  const auto prefix = (fs::absolute(source_dir) / "uploads").lexically_normal().string() + "/";
  std::vector<fs::path> files;
  for (auto& rec : records) {
    if (rec.path.rfind(prefix, 0) != 0) continue;
    files.emplace_back(rec.path);
    rec.path = (out / "uploads" / files.back().filename()).string();
  }
  return files;
}

// After the catalog holds their rows: a writer's open removes upload files no row holds.
void copy_uploads(const std::vector<fs::path>& files, const fs::path& dir) {
  std::error_code ec;
  if (!files.empty()) fs::create_directories(dir, ec);
  for (const auto& f : files) {
    fs::copy_file(f, dir / f.filename(), fs::copy_options::overwrite_existing, ec);
    if (ec) throw TrainError(f.string() + ": cannot copy the uploaded image: " + ec.message());
    // The record's mtime_ns stays the file's: the copy keeps the time, as `cp -p` would.
    fs::last_write_time(dir / f.filename(), fs::last_write_time(f, ec), ec);
  }
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
  auto records = source->list();
  r.images = static_cast<std::int64_t>(records.size());
  const int dim = model->dim();
  check_index_spec(source->config(), dim, o.collection);

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
  // Built beside `out` and renamed into place once whole: an interrupted reembed leaves no
  // half collection at `out` (a rerun would refuse it), only a folder the next run replaces.
  const auto out = fs::absolute(o.out).lexically_normal();
  const auto partial = fs::path(out.string() + ".partial");
  fs::remove_all(partial, ec);
  const auto uploads = retarget_uploads(o.collection, out, records);
  {
    auto target = store::Collection::create_or_open(partial, config);
    std::vector<store::Put> puts;
    for (std::size_t i = 0; i < records.size(); ++i) {
      if (!done[i]) continue;
      puts.push_back(
          {records[i],
           std::vector<float>(vectors.begin() + i * dim, vectors.begin() + (i + 1) * dim),
           true});  // the same ids as the source
      if (puts.size() == 512) {
        target->apply(puts, {});
        puts.clear();
      }
    }
    if (!puts.empty()) target->apply(puts, {});
    target->reserve_ids_through(source->last_id_assigned());  // ids deleted there stay unused
    target->save_index();
  }
  copy_uploads(uploads, partial / "uploads");
  fs::rename(partial, out, ec);  // replaces an empty folder at `out`
  if (ec)
    throw TrainError(out.string() + ": cannot move the new collection into place from " +
                     partial.string() + ": " + ec.message());
  return r;
}

}  // namespace lookalike::train
