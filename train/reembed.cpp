// reembed_collection: a new collection with a new model's vectors. A trained head over a known
// base reads base embeddings from the cache and runs only the head on them.
#include <fmt/format.h>
#include <torch/script.h>

#include <algorithm>

#include "engine/engine.h"
#include "index/vector_index.h"
#include "model/embedding_model.h"
#include "store/collection.h"
#include "train/common.h"
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
// them. An upload's file is found where engine::image_file says (the source's own uploads/,
// also when the source was moved or copied since the upload and its records name the old
// folder). Points the records at `out`/uploads, where the copies end up; returns the files to
// copy.
std::vector<fs::path> retarget_uploads(const fs::path& source_dir, const fs::path& out,
                                       std::vector<store::ImageRecord>& records) {
  std::vector<fs::path> files;
  for (auto& rec : records) {
    if (!engine::is_upload(rec)) continue;
    files.push_back(engine::image_file(source_dir, rec));
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

// Links and ".." resolved as far as the path exists (the lexical form where that fails).
fs::path canonical_or_lexical(const fs::path& p) {
  std::error_code ec;
  auto c = fs::weakly_canonical(p, ec);
  return ec ? fs::absolute(p).lexically_normal() : c;
}

// `inner` is `outer` or lies inside it (both canonical).
bool within(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin();
  for (auto o = outer.begin(); o != outer.end(); ++o, ++i)
    if (i == inner.end() || *i != *o) return false;
  return true;
}

// The run removes and rebuilds `partial` (an earlier run's leftover): never when that is the
// source collection or holds it (`-c lib.partial reembed --out lib` deleted the source), by any
// spelling or link.
void check_partial(const fs::path& partial, const fs::path& collection) {
  const auto part = canonical_or_lexical(partial);
  const auto source = canonical_or_lexical(collection);
  if (!within(source, part)) return;
  throw TrainError(
      fmt::format("--out: the run would remove and rebuild {}, which {} the source collection {}; "
                  "choose another --out (or move the source first)",
                  partial.string(), source == part ? "is" : "holds", collection.string()),
      true);
}

// --out, before the source or the model is opened (a bad one used to fail only after every
// image was embedded): a name, not a file, not a folder with something in it, in a folder that
// exists and can be written (as train and map require), and clear of the source. Returns it
// absolute, without a trailing '/'.
fs::path checked_out(const ReembedOptions& o) {
  if (o.out.empty()) throw TrainError("--out: must name the new collection's folder", true);
  auto out = fs::absolute(o.out).lexically_normal();
  if (!out.has_filename()) out = out.parent_path();  // "new/"
  if (out.filename().empty() || out == out.root_path())
    throw TrainError("--out " + o.out.string() + ": must name the new collection's folder", true);
  std::error_code ec;
  const auto st = fs::status(out, ec);
  if (fs::exists(st) && !fs::is_directory(st))
    throw TrainError(out.string() + ": --out is a file; reembed writes a new collection folder");
  if (fs::exists(st) && !fs::is_empty(out, ec))
    throw TrainError(out.string() + ": --out already exists; reembed writes a new collection");
  detail::check_out_parent(out);
  check_partial(fs::path(out.string() + ".partial"), o.collection);
  return out;
}

// Every image failed (the source's files moved away, say): an empty collection would stand in
// for the source, so nothing is written, and the first causes are named.
void check_something_embedded(const ReembedOptions& o, const ReembedResult& r,
                              const std::vector<bool>& done, const fs::path& out) {
  if (done.empty() || std::find(done.begin(), done.end(), true) != done.end()) return;
  throw TrainError(fmt::format(
      "{}: none of its {} images could be embedded, nothing written at {}: {}",
      o.collection.string(), done.size(), out.string(), detail::first_causes(r.failed)));
}

}  // namespace

ReembedResult reembed_collection(const ReembedOptions& o,
                                 const std::function<void(const EmbedProgress&)>& on_progress) {
  if (!store::Collection::exists(o.collection))
    throw TrainError(o.collection.string() + ": no collection here");
  const fs::path out = checked_out(o);
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
    for (auto i : missing) files.push_back(engine::image_file(o.collection, records[i]));
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
  check_something_embedded(o, r, done, out);

  store::CatalogConfig config = source->config();
  config.model_id = model->id();
  config.model_name = engine->model_reference();
  config.dim = dim;
  // The new vectors' preprocessing, not the source's (the collection refuses any other card).
  config.preprocess = model->preprocess_canonical();
  config.preprocess_fingerprint = model->preprocess_fingerprint();
  // Built beside `out` and renamed into place once whole: an interrupted reembed leaves no
  // half collection at `out` (a rerun would refuse it), only a folder the next run replaces.
  const auto partial = fs::path(out.string() + ".partial");
  std::error_code ec;
  fs::remove_all(partial, ec);
  if (ec)
    throw TrainError(partial.string() +
                     ": cannot remove what an earlier run left there: " + ec.message());
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
