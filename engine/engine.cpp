#include "engine/engine.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <malloc.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <thread>

#include "dedup/phash.h"
#include "image/decode.h"
#include "image/preprocess.h"
#include "pipeline/files.h"
#include "pipeline/scan.h"

namespace lookalike::engine {

int json_depth(const nlohmann::json& value) {
  int deepest = 0;
  std::vector<std::pair<const nlohmann::json*, int>> todo{{&value, 0}};
  while (!todo.empty()) {
    auto [v, depth] = todo.back();
    todo.pop_back();
    if (!v->is_structured()) continue;
    deepest = std::max(deepest, depth + 1);
    for (const auto& child : *v) todo.emplace_back(&child, depth + 1);
  }
  return deepest;
}

void check_min_score(std::optional<float> min_score, const std::string& metric) {
  if (!min_score) return;
  const float v = *min_score;
  const bool cosine = metric == "cosine";
  if (!std::isfinite(v) || (cosine && (v < -1.0f || v > 1.0f)) || (!cosine && v < 0.0f)) {
    throw EngineError(EngineError::Kind::Invalid,
                      fmt::format("min_score must be {} for a {} collection, got {}",
                                  cosine ? "a cosine similarity in [-1, 1]"
                                         : "an L2 distance >= 0 (the largest kept)",
                                  metric, v));
  }
}

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using Kind = EngineError::Kind;

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int resolve_threads(int threads) {
  if (threads > 0) return threads;
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// "DIR", "DIR/" and "DIR/." name the same folder.
std::string remove_target(const fs::path& p) {
  auto t = pipeline::normalize_path(p);
  while (!t.empty() && t.filename().empty() && t != t.root_path()) t = t.parent_path();
  return t.string();
}

std::string dump_metadata(const nlohmann::json& metadata) {
  return metadata.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Throws EngineError Invalid unless `metadata` is an object nested at most kMaxMetadataDepth
// deep. Returns it as stored, after checking its length against kMaxMetadataBytes.
std::string checked_metadata(const nlohmann::json& metadata) {
  if (!metadata.is_object()) {
    throw EngineError(Kind::Invalid,
                      "metadata must be a JSON object, got " + std::string(metadata.type_name()));
  }
  if (const int depth = json_depth(metadata); depth > kMaxMetadataDepth) {
    throw EngineError(Kind::Invalid, fmt::format("metadata: nested {} levels deep, at most {}",
                                                 depth, kMaxMetadataDepth));
  }
  auto text = dump_metadata(metadata);
  if (auto why = store::metadata_problem(text))
    throw EngineError(Kind::Invalid, "metadata: " + *why);
  if (text.size() > kMaxMetadataBytes) {
    throw EngineError(Kind::Invalid,
                      fmt::format("metadata: {} bytes as JSON, at most {} (keep large values in "
                                  "your own store and put their key here)",
                                  text.size(), kMaxMetadataBytes));
  }
  return text;
}

// A write that failed because the disk or the quota is full. The file and catalog layers
// throw the system's words (strerror, SQLite's SQLITE_FULL message), so they are told by those.
bool out_of_space(const std::string& what) {
  return what.find(std::strerror(ENOSPC)) != std::string::npos ||
         what.find(std::strerror(EDQUOT)) != std::string::npos ||
         what.find("database or disk is full") != std::string::npos;
}

// Rethrows `e` as EngineError NoSpace when it is a full disk; returns otherwise.
void rethrow_if_full(const std::exception& e, const fs::path& where) {
  if (!out_of_space(e.what())) return;
  throw EngineError(Kind::NoSpace,
                    fmt::format("{}: no space left to store the image (the disk or the quota is "
                                "full: ENOSPC/EDQUOT); free some space and retry",
                                where.string()));
}

}  // namespace

std::string allocator_name() {
  // Looked up at run time: the engine library is linked into programs with and without
  // jemalloc (lookalike_allocator), and only the program knows.
  using Mallctl = int (*)(const char*, void*, std::size_t*, void*, std::size_t);
  auto* mallctl = reinterpret_cast<Mallctl>(dlsym(RTLD_DEFAULT, "mallctl"));
  if (mallctl == nullptr) return "glibc malloc";
  const char* version = nullptr;
  std::size_t size = sizeof(version);
  if (mallctl("version", static_cast<void*>(&version), &size, nullptr, 0) != 0 || !version)
    return "jemalloc";
  return std::string("jemalloc ") + version;
}

void setup_process(int threads) {
  static std::once_flag once;
  std::call_once(once, [&] {
    // With jemalloc (the programs' default, engine/jemalloc_conf.cpp has its settings) the
    // glibc settings below would tune a heap nobody uses.
    if (allocator_name().starts_with("jemalloc")) {
      omp_set_num_threads(resolve_threads(threads));
      return;
    }
    // LibTorch frees each batch's activation buffers (tens of MB) after the forward pass; glibc
    // serves chunks over 32 MB with mmap and returns them with munmap, so every batch
    // page-faults its activations in again. Measured on 640 clothing-small images at batch 32:
    // 2.4 M page faults, a third of CPU time in the kernel, 98 images/s; with reuse 158.
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    // The two settings above hold for glibc's main arena only. Forward passes run on the
    // EmbedBatcher's worker thread, whose own arena takes memory in 64 MB mmap'd heaps and
    // unmaps each as it empties, so activations page-faulted in again every batch: 27% of
    // `lookalike index`'s CPU samples were page faults (perf, 512 clothing-small photos,
    // MobileNetV2). One arena for every thread keeps the reuse; threads then share its lock,
    // which glibc's per-thread cache (tcache) keeps off the path of small allocations.
    // Measured in one run each, interleaved, load average ~6: 84 -> 131 and 85 -> 100 images/s.
    mallopt(M_ARENA_MAX, 1);
    // FAISS and OpenBLAS share the cores with LibTorch (../shared/STACK.md: don't oversubscribe).
    omp_set_num_threads(resolve_threads(threads));
  });
}

namespace {
// Sets name=value and re-executes this program (libgomp reads its variables only at load),
// unless `name` or OMP_WAIT_POLICY is set already (the user's word, or the re-execution).
// Returns only when nothing was done or the re-execution failed (logged; the process then runs
// as it is).
void reexecute_with(const char* name, const char* value, char** argv) {
  if (std::getenv(name) != nullptr || std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  if (::setenv(name, value, 1) != 0) return;
  ::execv("/proc/self/exe", argv);
  std::fprintf(stderr, "lookalike: warning: cannot re-execute with %s=%s: %s\n", name, value,
               std::strerror(errno));
}
}  // namespace

void use_passive_omp_wait(char** argv) { reexecute_with("OMP_WAIT_POLICY", "PASSIVE", argv); }

void use_short_omp_spin(char** argv) { reexecute_with("GOMP_SPINCOUNT", kServeSpinCount, argv); }

void run_on_own_thread(const std::function<void()>& work) {
  std::exception_ptr failed;
  std::thread worker([&] {
    try {
      work();
    } catch (...) {
      failed = std::current_exception();
    }
  });
  worker.join();
  if (failed) std::rethrow_exception(failed);
}

std::unique_ptr<Engine> Engine::open(const EngineOptions& options, Access access,
                                     const NewCollection& fresh) {
  if (options.decode_threads < 1 || options.decode_threads > pipeline::kMaxDecodeThreads) {
    throw EngineError(Kind::Invalid,
                      fmt::format("decode threads must be between 1 and {}, got {}",
                                  pipeline::kMaxDecodeThreads, options.decode_threads));
  }
  if (options.batch_size < 1 || options.batch_size > 1024) {
    throw EngineError(Kind::Invalid, fmt::format("batch size must be between 1 and 1024, got {}",
                                                 options.batch_size));
  }
  if (options.passes < 0 || options.passes > pipeline::kMaxPasses) {
    throw EngineError(Kind::Invalid,
                      fmt::format("passes must be between 1 and {} (0 = auto), got {}",
                                  pipeline::kMaxPasses, options.passes));
  }
  if (options.threads < 0 || options.threads > 1024) {
    throw EngineError(Kind::Invalid,
                      fmt::format("threads must be between 0 and 1024, got {}", options.threads));
  }
  setup_process(options.threads);
  std::unique_ptr<Engine> e(new Engine());
  e->options_ = options;
  e->access_ = access;
  e->fresh_ = fresh;
  // No folder, no collection (a model-only engine): not whatever catalog the working folder holds.
  // A folder that cannot be looked into throws StoreError ("DIR: cannot read the collection:
  // Permission denied") rather than pass for one without a collection.
  const bool exists = !options.collection.empty() && store::Collection::exists(options.collection);
  if (access == Access::Read && !exists && !options.collection.empty() &&
      store::Collection::unfinished(options.collection)) {
    throw EngineError(Kind::NotFound,
                      fmt::format("{}: no collection here: its creation was interrupted "
                                  "(catalog.db has no config and no images); `lookalike index "
                                  "PATH` creates it again",
                                  options.collection.string()));
  }
  if (access == Access::Read && !exists) {
    throw EngineError(Kind::NotFound,
                      fmt::format("{}: no collection here; create one with `lookalike index PATH` "
                                  "(or set --collection / LOOKALIKE_COLLECTION)",
                                  options.collection.string()));
  }
  if (exists && access != Access::ModelOnly) {
    e->collection_ = store::Collection::open(
        options.collection,
        access == Access::Write ? store::Collection::Mode::Write : store::Collection::Mode::Read);
    const auto& c = e->collection_->config();
    if (fresh.metric_given && fresh.metric != c.metric) {
      throw EngineError(
          Kind::Invalid,
          fmt::format("{}: the collection uses metric {}, not {}; the metric is fixed "
                      "when a collection is created (use another --collection for "
                      "{})",
                      options.collection.string(), c.metric, fresh.metric, fresh.metric));
    }
    if (fresh.factory_given && fresh.factory != "auto" && fresh.factory != c.factory) {
      throw EngineError(
          Kind::Invalid,
          fmt::format("{}: the collection uses index factory \"{}\", not \"{}\"; "
                      "change it with `lookalike reindex --index-spec \"{}\"`",
                      options.collection.string(), c.factory, fresh.factory, fresh.factory));
    }
  } else if (exists) {
    e->collection_ = store::Collection::open(options.collection, store::Collection::Mode::Read);
  } else if (access == Access::Write) {
    // Refuse a bad factory or metric now, before any file is scanned. A given factory is checked
    // with the model's dimension (a PQ's sub-quantizer count must divide it: PQ128 holds for
    // 1280-d, PQ48 does not), so the model is loaded first; indexing needs it anyway.
    const bool given = fresh.factory_given && fresh.factory != "auto";
    const int dim = given ? e->model().dim() : 1;
    store::Collection::validate_config(
        options.collection, {"probe", "probe", dim, fresh.metric, given ? fresh.factory : "Flat"});
  }
  return e;
}

Engine::~Engine() {
  batcher_.reset();  // before the model it serves
}

const store::Collection& Engine::collection() const {
  if (!collection_) {
    throw EngineError(Kind::NotFound, options_.collection.string() + ": no collection here (yet)");
  }
  return *collection_;
}

namespace {

// A model id split at its precision suffix: {"name@digest", "bf16"}; {"name@digest", ""} for
// FP32's id, which precisions interchangeable with FP32 share. The suffix is the last '+' after
// the last '@' (the digest is hex): a name with a '+' in it, which cards now refuse but older
// collections may carry, must not be read as a precision.
std::pair<std::string, std::string> split_model_id(const std::string& id) {
  const auto at = id.rfind('@');
  const auto plus = id.rfind('+');
  if (plus == std::string::npos || (at != std::string::npos && plus < at)) return {id, ""};
  return {id.substr(0, plus), id.substr(plus + 1)};
}

// The precision a collection's vectors were embedded at, from its model id.
std::string collection_precision(const std::string& model_id) {
  const std::string built = split_model_id(model_id).second;
  return built.empty() ? "fp32 (or a precision interchangeable with it)" : built;
}

// Why vectors embedded as `run` may not join a collection built under `collection_id` (the base
// ids being equal); empty when they may. It goes by what the collection was built with, not by
// today's calibration, so that calibrating never locks a collection out (docs/precision.md,
// "Which vectors mix"): a "+p" collection takes precision p whatever its record says now; one
// without a suffix takes FP32 and any precision interchangeable with it now.
std::string precision_refusal(const std::string& collection_id, const model::PrecisionChoice& run) {
  const std::string built = split_model_id(collection_id).second;
  const std::string ran = model::to_string(run.precision);
  const std::string reembed = fmt::format(
      "or re-embed a copy at this one (`lookalike --precision {} reembed --out DIR`, "
      "docs/precision.md)",
      ran);
  if (!built.empty()) {
    if (built == ran) return "";
    return fmt::format(
        "its vectors come from another precision (this run: {}): pass --precision {} as it was "
        "built, {}",
        run.reason, built, reembed);
  }
  if (run.interchangeable) return "";
  return fmt::format(
      "it was built at fp32 or at a precision interchangeable with it at the time, and this "
      "run's {} is not interchangeable with fp32 (this run: {}): pass --precision fp32, {}",
      ran, run.reason, reembed);
}

// Throws when `m`'s vectors may not join the collection built under `collection_id`.
void check_collection_model(const model::EmbeddingModel& m, const std::string& collection_id,
                            const std::filesystem::path& path,
                            const std::filesystem::path& collection) {
  const bool same_model = split_model_id(m.id()).first == split_model_id(collection_id).first;
  const std::string refusal = same_model ? precision_refusal(collection_id, m.precision())
                                         : "use that model or another --collection";
  if (refusal.empty()) return;
  throw model::ModelError(
      fmt::format("{}: model {} does not match the collection {}, which was built with {}; {}",
                  path.string(), m.id(), collection.string(), collection_id, refusal));
}

// Why vectors preprocessed as `canonical` (fingerprint `fingerprint`, from `card`) may not join
// `collection`, which recorded `config`'s preprocessing; empty when they may, or when nothing
// is recorded (a collection older than schema 5: not refused, docs/collection-format.md).
std::string preprocess_refusal(const store::CatalogConfig& config, const std::string& canonical,
                               const std::string& fingerprint, const std::string& card,
                               const std::string& model) {
  if (config.preprocess_fingerprint.empty() || config.preprocess_fingerprint == fingerprint) {
    return "";
  }
  std::string differ = model::preprocess_differences(config.preprocess, canonical);
  if (differ.empty()) {  // a fingerprint without its text: show both texts whole
    differ = fmt::format("recorded \"{}\", now \"{}\"",
                         config.preprocess.empty() ? "(unknown)" : config.preprocess, canonical);
  }
  return fmt::format(
      "the model card {} preprocesses images differently from the collection's stored vectors "
      "(recorded -> this card: {}; preprocessing fingerprint {} -> {}), so their vectors would "
      "not compare: restore the card's preprocessing, or re-embed the collection with this "
      "card (`lookalike reembed --model {} --out NEW_DIR`)",
      card, differ, config.preprocess_fingerprint, fingerprint, model);
}

// Refuses `m` when `c` recorded another preprocessing; records `m`'s when `c` recorded none and
// is open for writing (the migration of a collection from before schema 5: its first writer's).
void check_collection_preprocess(const model::EmbeddingModel& m, store::Collection& c,
                                 const std::string& model_reference) {
  const auto card = fs::path(m.archive()).replace_extension(".json").string();
  const auto refusal = preprocess_refusal(c.config(), m.preprocess_canonical(),
                                          m.preprocess_fingerprint(), card, model_reference);
  if (!refusal.empty()) {
    throw model::ModelError(fmt::format("{}: {}", c.dir().string(), refusal));
  }
  if (c.config().preprocess_fingerprint.empty() && c.mode() == store::Collection::Mode::Write) {
    c.record_preprocess(m.preprocess_canonical(), m.preprocess_fingerprint());
  }
}

}  // namespace

bool Engine::has_collection() const { return collection_ != nullptr; }

namespace {

// Collection::lock's refusal when another process writes the collection. The store throws it as
// a plain StoreError, so it is told by its words.
bool locked_by_another(const store::StoreError& e) {
  return std::strstr(e.what(), "is locked by another lookalike process") != nullptr;
}

[[noreturn]] void throw_busy(const fs::path& dir) {
  throw EngineError(Kind::Busy,
                    fmt::format("{}: another lookalike process (an `index` or `reindex` run?) is "
                                "writing the collection; retry when it has finished",
                                dir.string()));
}

}  // namespace

bool Engine::adopt_collection() {
  if (collection_) return true;
  if (access_ == Access::ModelOnly || options_.collection.empty() ||
      !store::Collection::exists(options_.collection)) {
    return false;
  }
  auto& m = model();  // before model_mu_, which model() and model_reference() take
  const auto reference = model_reference();
  std::lock_guard lock(model_mu_);
  if (collection_) return true;
  const auto mode =
      access_ == Access::Write ? store::Collection::Mode::Write : store::Collection::Mode::Read;
  std::unique_ptr<store::Collection> c;
  try {
    c = store::Collection::open(options_.collection, mode);
  } catch (const store::StoreError& e) {
    if (locked_by_another(e)) return false;  // still being written: seen once it is done
    throw;
  }
  // The other process chose the model: its vectors must be this engine's.
  check_collection_model(m, c->config().model_id, m.archive(), options_.collection);
  check_collection_preprocess(m, *c, reference);
  creation_ = {};  // not this engine's creation: index() must never take it back
  collection_ = std::move(c);
  return true;
}

model::EmbeddingModel& Engine::model() {
  std::lock_guard lock(model_mu_);
  if (model_) return *model_;
  const store::CatalogConfig* config = collection_ ? &collection_->config() : nullptr;
  // A collection's model is used unless --model says otherwise (embed with --model needs none).
  std::string name = !options_.model.empty() ? options_.model
                     : config                ? config->model_name
                                             : kDefaultModel;
  auto path = model::resolve_model(name, model::default_model_dirs());
  // Loading runs parallel regions (freezing, the probe pass): bench_server loading on its main
  // thread measured batch-1 MobileNetV2 passes at 8-13 ms, not 3-4.
  std::unique_ptr<model::EmbeddingModel> m;
  run_on_own_thread([&] {
    m = model::EmbeddingModel::load(
        path, {options_.threads, true, options_.batch_size, options_.precision});
  });
  // Embeddings are stored under the collection's model id (config), not m->id(), so a model
  // that passes this check adds vectors the collection already counts as its own.
  if (config != nullptr && access_ != Access::ModelOnly) {
    check_collection_model(*m, config->model_id, path, options_.collection);
    check_collection_preprocess(*m, *collection_, name);
  }
  model_ = std::move(m);
  batcher_ = std::make_unique<EmbedBatcher>(*model_, options_.batch_size, options_.batch_wait);
  return *model_;
}

std::optional<model::PrecisionChoice> Engine::model_precision() const {
  std::lock_guard lock(model_mu_);
  if (!model_) return std::nullopt;
  return model_->precision();
}

EmbedBatcher& Engine::batcher() {
  model();
  return *batcher_;
}

void Engine::ensure_collection() {
  if (collection_) return;
  if (access_ != Access::Write) {
    throw EngineError(Kind::ReadOnly, options_.collection.string() + ": opened read-only");
  }
  // One another process made meanwhile is opened as it is (its config, not fresh_'s).
  if (adopt_collection()) return;
  auto& m = model();
  const auto reference = model_reference();
  std::lock_guard lock(model_mu_);
  if (collection_) return;
  store::CatalogConfig config{m.id(), reference, m.dim(), fresh_.metric, fresh_.factory};
  config.search_defaults = store::search_defaults_json(fresh_.defaults);
  config.preprocess = m.preprocess_canonical();
  config.preprocess_fingerprint = m.preprocess_fingerprint();
  try {
    collection_ = store::Collection::create_or_open(options_.collection, config, &creation_);
  } catch (const store::StoreError& e) {
    if (locked_by_another(e)) throw_busy(options_.collection);
    rethrow_if_full(e, options_.collection);
    throw;
  }
  // Another process may have created it meanwhile, with its own card.
  check_collection_preprocess(m, *collection_, reference);
}

std::string Engine::model_reference() {
  const auto& m = model();
  if (options_.model.empty()) return m.card().name;
  // A path given by the user is kept absolute: the collection may be used from another folder.
  const bool is_path = options_.model.find('/') != std::string::npos || fs::exists(options_.model);
  return is_path ? pipeline::normalize_path(m.archive()).string() : options_.model;
}

store::Collection& Engine::writable() {
  if (access_ != Access::Write ||
      (collection_ && collection_->mode() != store::Collection::Mode::Write)) {
    throw EngineError(Kind::ReadOnly, options_.collection.string() + ": opened read-only");
  }
  ensure_collection();
  return *collection_;
}

image::DecodeOptions Engine::decode_options() {
  const auto& card = model().card();
  image::DecodeOptions d;
  d.max_pixels = options_.max_pixels;
  d.max_aspect_ratio = options_.max_aspect_ratio;
  d.min_shorter_side = card.resize_shorter > 0 ? card.resize_shorter : card.input_size;
  return d;
}

pipeline::IndexSummary Engine::index(const IndexRequest& r) {
  if (access_ != Access::Write) {
    throw EngineError(Kind::ReadOnly, options_.collection.string() + ": opened read-only");
  }
  auto& m = model();  // before the scan: a missing model fails before any work
  auto scan = pipeline::scan_inputs(r.inputs, {r.file_column, r.include_hidden});
  if (!collection_ && scan.files.empty()) {
    // Nothing to store: a typo must not create a collection whose config is then fixed.
    pipeline::IndexSummary s;
    for (const auto& p : scan.problems) s.failures.push_back({p.where, p.reason});
    return s;
  }
  std::string choice;
  if (!collection_ && fresh_.factory == "auto") {
    // Sized by what this run brings: a later `reindex --index-spec auto` re-decides.
    IndexSpec spec{"auto", fresh_.memory_budget_bytes, fresh_.defaults};
    const auto picked =
        resolve_index_spec(spec, static_cast<std::int64_t>(scan.files.size()), m.dim());
    fresh_.factory = picked.factory;
    fresh_.defaults = picked.defaults;
    choice = fmt::format("--index-spec auto picked \"{}\": {}", picked.factory, picked.reason);
  } else if (collection_ && (fresh_.defaults.nprobe > 0 || fresh_.defaults.ef_search > 0 ||
                             fresh_.defaults.rerank > 0)) {
    // Given fields replace the stored ones; the others stay.
    auto merged = store::parse_search_defaults(writable().config().search_defaults);
    if (fresh_.defaults.nprobe > 0) merged.nprobe = fresh_.defaults.nprobe;
    if (fresh_.defaults.ef_search > 0) merged.ef_search = fresh_.defaults.ef_search;
    if (fresh_.defaults.rerank > 0) merged.rerank = fresh_.defaults.rerank;
    writable().set_search_defaults(merged);
  }
  const bool created = !collection_;  // by writable(), now
  auto& c = writable();
  pipeline::IndexOptions o;
  o.inputs = r.inputs;  // the vanished check and --prune look under these only
  o.prune = r.prune;
  o.batch_size = options_.batch_size;
  o.decode_threads = options_.decode_threads;
  o.decode = decode_options();
  o.cancel = r.cancel;
  o.on_progress = r.on_progress;
  o.passes = bulk_passes(scan.files.size());
  o.embed = bulk_embed(o.passes);
  pipeline::IndexSummary summary;
  try {
    summary = pipeline::index_files(c, m, scan, o);
  } catch (...) {
    if (created) store::Collection::undo_creation(collection_, creation_);  // does not throw
    throw;
  }
  // A collection this run created and stored nothing in (every file failed, or a Ctrl-C before
  // the first commit) is taken back: its metric, model and index spec were never used, and a
  // later run must be free to choose them (docs/cli.md).
  if (created && store::Collection::undo_creation(collection_, creation_)) {
    summary.index_choice.clear();
    return summary;
  }
  summary.index_choice = choice;
  return summary;
}

std::vector<float> Engine::embed_buffer(std::span<const std::uint8_t> bytes,
                                        const std::string& name, Timings& t,
                                        store::ImageRecord* shape, std::string* format) {
  auto& m = model();
  const auto spec = m.preprocess_spec();
  auto start = Clock::now();
  // Announced before decoding, so a pass that opens meanwhile waits for this image (batching
  // concurrent uploads), while a lone request never waits for company that is not coming.
  auto announced = batcher().expect();
  auto options = decode_options();
  // An upload (shape given) takes its pHash from these pixels, so it needs the whole frame; a
  // query only the rows preprocess reads.
  if (shape == nullptr) options.rows_for = &spec;
  auto decoded = image::decode_buffer(bytes, name, options);
  std::vector<float> input(3 * static_cast<std::size_t>(spec.crop) * spec.crop);
  image::preprocess(decoded.rgb, decoded.source_width, decoded.source_height, spec, input.data(),
                    name);
  if (shape) {
    shape->width = decoded.source_width;
    shape->height = decoded.source_height;
    // `duplicates` compares it; an image too small to hash is still added (and reported there).
    // From the pixels at hand, as `index` does, instead of a second decode.
    try {
      const auto h = dedup::picture_hash(decoded.rgb);
      shape->picture_hash = store::StoredPictureHash{h.full, h.center95, h.center90};
    } catch (const std::exception&) {
    }
  }
  if (format) *format = decoded.format;
  t.decode_ms = ms_since(start);
  start = Clock::now();
  auto out = batcher().embed(input.data(), 1, announced);
  t.embed_ms = ms_since(start);
  return out;
}

namespace {
fs::path uploads_dir(const fs::path& collection_dir) {
  return (fs::absolute(collection_dir) / "uploads").lexically_normal();
}
}  // namespace

bool is_upload(const store::ImageRecord& rec) {
  const fs::path p(rec.path);
  return !rec.content_hash.empty() && p.parent_path().filename() == "uploads" &&
         p.filename().string().starts_with(rec.content_hash + ".");
}

fs::path image_file(const fs::path& collection_dir, const store::ImageRecord& rec) {
  if (!is_upload(rec)) return rec.path;
  return uploads_dir(collection_dir) / fs::path(rec.path).filename();
}

std::optional<std::string> upload_damage(const fs::path& collection_dir,
                                         const store::ImageRecord& rec) {
  if (!is_upload(rec)) return std::nullopt;
  std::error_code ec;
  const auto size = fs::file_size(image_file(collection_dir, rec), ec);
  if (ec) return ec == std::errc::no_such_file_or_directory ? "missing" : ec.message();
  if (static_cast<std::int64_t>(size) == rec.bytes) return std::nullopt;
  return fmt::format("{} bytes where the record says {}", size, rec.bytes);
}

fs::path Engine::image_file(const store::ImageRecord& rec) const {
  return engine::image_file(collection().dir(), rec);
}

void Engine::check_stored_file(const store::ImageRecord& rec) const {
  if (auto why = upload_damage(collection().dir(), rec)) {
    throw EngineError(Kind::Damaged,
                      fmt::format("image {}: its stored upload {} is damaged ({}); uploading the "
                                  "same image again repairs it",
                                  rec.id, fs::path(rec.path).filename().string(), *why));
  }
}

namespace {

// Writes `bytes` to the uploaded file `path` (atomically, creating uploads/ when needed);
// EngineError NoSpace on a full disk.
void write_upload(const fs::path& path, std::span<const std::uint8_t> bytes) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  if (ec == std::errc::no_space_on_device || ec.value() == EDQUOT) {
    rethrow_if_full(std::runtime_error(std::strerror(ENOSPC)), path.parent_path());
  }
  if (ec)
    throw std::runtime_error(path.parent_path().string() + ": cannot create: " + ec.message());
  try {
    pipeline::write_file_atomically(path, {bytes});
  } catch (const std::exception& e) {
    rethrow_if_full(e, path.parent_path());
    throw;
  }
}

}  // namespace

std::optional<AddResult> Engine::stored_copy(store::Collection& c, const std::string& hash,
                                             std::span<const std::uint8_t> bytes) {
  auto same = c.find_hash(hash);
  if (same.empty()) return std::nullopt;
  AddResult out{same.front(), false, {}};
  // An upload's file can only be rewritten from its own bytes, which these are (same hash).
  if (upload_damage(c.dir(), out.record)) {
    write_upload(engine::image_file(c.dir(), out.record), bytes);
    out.repaired = true;
  }
  return out;
}

AddResult Engine::add_image(std::span<const std::uint8_t> bytes, const std::string& name,
                            const nlohmann::json& metadata) {
  auto metadata_text = checked_metadata(metadata);
  auto& c = writable();
  const auto hash = pipeline::content_hash(bytes);
  // Without the lock first: the common repeat of intact bytes needs no write.
  if (auto same = c.find_hash(hash); !same.empty() && !upload_damage(c.dir(), same.front())) {
    return AddResult{same.front(), false, {}};
  }
  Timings t;
  store::Put put;
  std::string format;
  put.embedding = embed_buffer(bytes, name, t, &put.record, &format);  // refuses non-images
  put.record.metadata = std::move(metadata_text);
  // Absolute: catalog paths always are (the collection may have been given as a relative path).
  const auto path = uploads_dir(c.dir()) / (hash + "." + format);
  std::lock_guard lock(upload_mu_);
  // A concurrent upload of these bytes won, or they were stored with a damaged file (repaired).
  if (auto existing = stored_copy(c, hash, bytes)) return *existing;
  write_upload(path, bytes);
  put.record.path = path.string();
  put.record.content_hash = hash;
  put.record.bytes = static_cast<std::int64_t>(bytes.size());
  put.record.mtime_ns = pipeline::mtime_ns(path);
  put.record.added_at_ms = now_ms();
  std::vector<std::int64_t> ids;
  try {
    ids = c.apply({put}, {});
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove(path, ec);  // refused: no file without its record
    rethrow_if_full(e, c.dir());
    throw;
  }
  auto stored = c.get(ids.at(0));
  return {stored.value_or(put.record), true, t};
}

void Engine::check_k(int k) const {
  if (k < 1 || k > store::kMaxTopK) {
    throw EngineError(Kind::Invalid,
                      fmt::format("k must be between 1 and {}, got {}", store::kMaxTopK, k));
  }
}

SearchResponse Engine::run_search(const float* embedding, const SearchRequest& r,
                                  std::vector<std::int64_t> exclude) {
  check_k(r.k);
  const auto& c = collection();
  check_min_score(r.min_score, c.config().metric);
  auto start = Clock::now();
  SearchResponse out;
  exclude.insert(exclude.end(), r.exclude_ids.begin(), r.exclude_ids.end());
  if (r.params.nprobe < 0 || r.params.ef_search < 0 || r.params.rerank < 0) {
    throw EngineError(Kind::Invalid, "nprobe, ef_search and rerank must not be negative");
  }
  store::SearchSpec spec;
  spec.exclude_ids = std::move(exclude);
  spec.filter = &r.where;
  spec.params = r.params;
  auto results = c.search(embedding, 1, r.k, spec, &out.report);
  out.generation = out.report.generation;
  out.results = std::move(results.at(0));
  if (r.min_score) {
    const bool similarity = c.config().metric == "cosine";
    std::erase_if(out.results, [&](const store::SearchResult& h) {
      return similarity ? h.score < *r.min_score : h.score > *r.min_score;
    });
  }
  if (!r.where.empty() && out.report.filter_matches == 0) out.warnings = filter_warnings(r.where);
  out.timings.search_ms = ms_since(start);
  return out;
}

std::vector<std::string> Engine::filter_warnings(const store::MetadataFilter& where) const {
  const auto& c = collection();
  std::vector<std::string> missing;
  for (const auto& term : where.terms) {
    if (std::find(missing.begin(), missing.end(), term.field) != missing.end()) continue;
    if (!c.has_metadata_field(term.field)) missing.push_back(term.field);
  }
  std::vector<std::string> out;
  if (missing.empty()) return out;
  auto fields = c.metadata_fields(kMaxFieldsListed + 1);
  std::string present;
  if (fields.empty()) {
    present = "the images have no metadata";
  } else {
    const bool more = fields.size() > static_cast<std::size_t>(kMaxFieldsListed);
    if (more) fields.resize(kMaxFieldsListed);
    present = fmt::format("fields present: {}{}", fmt::join(fields, ", "), more ? ", ..." : "");
  }
  for (const auto& field : missing) {
    out.push_back(fmt::format("no image has metadata field '{}'; {}", field, present));
  }
  return out;
}

SearchResponse Engine::search_vector(const float* embedding, const SearchRequest& r) {
  auto start = Clock::now();
  auto out = run_search(embedding, r, {});
  out.timings.total_ms = ms_since(start);
  return out;
}

SearchResponse Engine::search_id(std::int64_t id, const SearchRequest& r) {
  check_k(r.k);
  auto start = Clock::now();
  const auto& c = collection();
  auto rec = c.get(id);
  std::optional<std::vector<float>> vec;
  if (rec) vec = c.embedding(id);
  if (!rec || !vec) {
    throw EngineError(Kind::NotFound, fmt::format("no image with id {} in the collection", id));
  }
  std::vector<std::int64_t> exclude;
  if (!r.include_self) exclude.push_back(id);
  auto out = run_search(vec->data(), r, exclude);
  out.query = rec->path;
  out.query_id = id;
  out.timings.total_ms = ms_since(start);
  return out;
}

SearchResponse Engine::search_bytes(std::span<const std::uint8_t> bytes, const std::string& name,
                                    const SearchRequest& r) {
  check_k(r.k);
  collection();
  model();  // loaded (once, lazily) before the clock starts: timings are per query, not start-up
  auto start = Clock::now();
  Timings t;
  auto embedding = embed_buffer(bytes, name, t);
  auto out = run_search(embedding.data(), r, {});
  out.query = name;
  out.timings.decode_ms = t.decode_ms;
  out.timings.embed_ms = t.embed_ms;
  out.timings.total_ms = ms_since(start);
  return out;
}

std::vector<SearchResponse> Engine::search_files(const std::vector<fs::path>& images,
                                                 const SearchRequest& r) {
  check_k(r.k);
  collection();
  model();  // loaded (once, lazily) before the clock starts: timings are per query, not start-up
  auto start = Clock::now();
  auto embedded = embed_files(images);
  const double embed_total = ms_since(start);
  std::vector<SearchResponse> out;
  const auto dim = static_cast<std::size_t>(embedded.dim);
  for (std::size_t i = 0; i < images.size(); ++i) {
    SearchResponse resp;
    if (!embedded.errors[i].empty()) {
      resp.error = embedded.errors[i];
    } else {
      resp = run_search(embedded.embeddings.data() + i * dim, r, {});
    }
    resp.query = images[i].string();
    // Decode and embed ran as one pipelined pass over all queries: each gets its share.
    resp.timings.embed_ms = embed_total / static_cast<double>(images.size());
    resp.timings.total_ms = resp.timings.embed_ms + resp.timings.search_ms;
    out.push_back(std::move(resp));
  }
  return out;
}

pipeline::EmbeddedFiles Engine::embed_files(const std::vector<fs::path>& images) {
  auto& m = model();
  const int passes = bulk_passes(images.size());
  return pipeline::embed_files(m, images, decode_options(), options_.decode_threads,
                               options_.batch_size, bulk_embed(passes), passes);
}

int Engine::bulk_passes(std::size_t images) {
  if (options_.passes > 0) return options_.passes;
  // Auto: two passes where there are two batches to share the cores (one pass of a lone batch
  // on half the threads would only take longer).
  const std::size_t batches = (images + options_.batch_size - 1) / options_.batch_size;
  return static_cast<int>(std::clamp<std::size_t>(batches, 1, std::min(2, model().threads())));
}

pipeline::EmbedFn Engine::bulk_embed(int passes) {
  const int threads = pipeline::threads_per_pass(model().threads(), passes);
  return [this, threads](const float* in, int n) { return batcher().embed(in, n, threads); };
}

std::optional<store::ImageRecord> Engine::get(std::int64_t id) const {
  return collection().get(id);
}

std::vector<store::ImageRecord> Engine::list(std::int64_t after_id, int limit,
                                             const store::MetadataFilter& where) const {
  if (limit < 1 || limit > 10'000) {
    throw EngineError(Kind::Invalid,
                      fmt::format("limit must be between 1 and 10000, got {}", limit));
  }
  return collection().list_page(after_id, limit, &where);
}

std::vector<std::pair<std::string, std::int64_t>> Engine::facet(const std::string& field,
                                                                int limit) const {
  if (limit < 1 || limit > 10'000) {
    throw EngineError(Kind::Invalid,
                      fmt::format("limit must be between 1 and 10000, got {}", limit));
  }
  try {
    return collection().facet(field, limit);
  } catch (const store::StoreError& e) {
    throw EngineError(Kind::Invalid, e.what());
  }
}

store::MetadataFilter parse_where(const std::vector<std::string>& terms) {
  try {
    return store::parse_where(terms);
  } catch (const store::StoreError& e) {
    throw EngineError(EngineError::Kind::Invalid, e.what());
  }
}

bool Engine::update_metadata(std::int64_t id, const nlohmann::json& metadata, bool merge) {
  auto text = checked_metadata(metadata);
  auto& c = writable();
  // Read, merge and write as one step: two merges that both read the old record would each
  // write back without the other's keys.
  std::lock_guard lock(metadata_mu_);
  auto rec = c.get(id);
  if (!rec) return false;
  if (merge) {
    auto next = nlohmann::json::parse(rec->metadata, nullptr, false);
    if (!next.is_object()) next = nlohmann::json::object();
    next.merge_patch(metadata);  // RFC 7396: null deletes a key
    text = checked_metadata(next);
  }
  return c.set_metadata(id, text);
}

RemoveResult Engine::remove(const std::vector<std::int64_t>& ids,
                            const std::vector<fs::path>& paths) {
  auto& c = writable();
  // With add_image's lock from the first lookup: an upload of the same bytes between this commit
  // and the unlink would store its file under the same name, and the unlink would take the new
  // image's file; and two removes of one id would both report it removed.
  std::lock_guard lock(upload_mu_);
  RemoveResult out;
  for (std::int64_t id : ids) {
    if (c.get(id)) {
      out.removed.push_back(id);
    } else {
      out.missing_ids.push_back(id);
    }
  }
  for (const auto& p : paths) {
    auto found = c.ids_under(remove_target(p));
    if (found.empty()) out.missing_paths.push_back(p.string());
    out.removed.insert(out.removed.end(), found.begin(), found.end());
  }
  std::sort(out.removed.begin(), out.removed.end());
  out.removed.erase(std::unique(out.removed.begin(), out.removed.end()), out.removed.end());
  if (out.removed.empty()) return out;
  std::vector<store::ImageRecord> uploads;
  for (auto& rec : c.get_many(out.removed)) {
    if (is_upload(rec)) uploads.push_back(std::move(rec));
  }
  c.apply({}, out.removed);
  // After the commit: a crash in between leaves an orphan file, never a row without its file.
  // A file another row still holds (the same bytes, by name) stays.
  std::error_code ec;
  for (const auto& rec : uploads) {
    const auto file = engine::image_file(c.dir(), rec);
    const auto others = c.find_hash(rec.content_hash);
    const bool held = std::any_of(others.begin(), others.end(), [&](const auto& other) {
      return is_upload(other) && engine::image_file(c.dir(), other) == file;
    });
    if (!held) fs::remove(file, ec);
  }
  return out;
}

index::SpecChoice resolve_index_spec(const IndexSpec& spec, std::int64_t vectors, int dim) {
  index::SpecChoice c;
  if (spec.spec == "auto") {
    c = index::choose_index_spec(vectors, dim, spec.memory_budget_bytes);
  } else {
    try {
      index::VectorIndex::validate_factory(dim, index::Metric::Cosine, spec.spec);
    } catch (const index::IndexError& e) {
      throw EngineError(Kind::Invalid, fmt::format("--index-spec: {}", e.what()));
    }
    c.factory = spec.spec;
  }
  auto take = [](int asked, int& out) {
    if (asked > 0) out = asked;
  };
  take(spec.defaults.nprobe, c.defaults.nprobe);
  take(spec.defaults.ef_search, c.defaults.ef_search);
  take(spec.defaults.rerank, c.defaults.rerank);
  return c;
}

namespace {

// What the collection's model is, from its installed card (found as the model is: by name, or
// the path a collection stores); kUnknown with the reason when the card cannot be read.
dedup::ModelKind model_kind(const std::string& model_name, std::string* note) {
  try {
    const auto archive = model::resolve_model(model_name, model::default_model_dirs());
    const auto card = model::load_model_card(fs::path(archive).replace_extension(".json"));
    return card.training.is_null() ? dedup::ModelKind::kPretrained : dedup::ModelKind::kTrained;
  } catch (const model::ModelError& e) {
    *note = e.what();
    return dedup::ModelKind::kUnknown;
  }
}

}  // namespace

DuplicatesResult Engine::duplicates(dedup::DuplicateOptions options) {
  const auto& c = collection();
  // The model the vectors came from, not --model: duplicates embeds nothing.
  options.model_kind = model_kind(c.config().model_name, &options.model_note);
  DuplicatesResult r;
  r.report = dedup::find_duplicates(c, options);
  r.hashes_computed = static_cast<std::int64_t>(r.report.computed_hashes.size());
  if (r.hashes_computed == 0) return r;
  try {
    if (access_ == Access::Write) {
      r.hashes_stored = dedup::store_computed_hashes(writable(), r.report);
    } else {
      auto writer = store::Collection::open(options_.collection, store::Collection::Mode::Write);
      r.hashes_stored = dedup::store_computed_hashes(*writer, r.report);
    }
  } catch (const store::StoreError& e) {
    r.hashes_not_stored = fmt::format("not stored: {}", e.what());
  }
  return r;
}

ReindexResult Engine::reindex(const IndexSpec& spec) {
  auto& c = writable();
  const auto choice = resolve_index_spec(spec, c.index_size(), c.config().dim);
  ReindexResult r;
  r.choice_reason = choice.reason;
  r.defaults = choice.defaults;
  try {
    r.summary = c.reindex(choice.factory, choice.defaults);
  } catch (const store::StoreError& e) {
    throw EngineError(Kind::Invalid, e.what());
  }
  try {
    c.save_index();
  } catch (const std::exception& e) {
    r.cache_warning = e.what();  // committed: a failure here must not read as "nothing changed"
  }
  return r;
}

void Engine::set_search_defaults(const index::SearchParams& defaults) {
  writable().set_search_defaults(defaults);
}

EngineInfo Engine::info() const {
  EngineInfo i;
  i.collection = collection().info();
  i.threads = resolve_threads(options_.threads);
  if (batcher_) i.batcher = batcher_->stats();
  i.collection_precision = collection_precision(i.collection.config.model_id);
  if (model_) {
    i.precision = model::to_string(model_->precision().precision);
    i.precision_reason = model_->precision().reason;
    i.precision_refusal = precision_refusal(i.collection.config.model_id, model_->precision());
    i.model_preprocess = model_->preprocess_canonical();
    i.model_preprocess_fingerprint = model_->preprocess_fingerprint();
    i.preprocess_refusal = preprocess_refusal(
        i.collection.config, i.model_preprocess, i.model_preprocess_fingerprint,
        fs::path(model_->archive()).replace_extension(".json").string(),
        !options_.model.empty() ? options_.model : i.collection.config.model_name);
  } else {
    // Resolved from the card alone: info should not pay for loading LibTorch weights.
    const std::string name =
        !options_.model.empty() ? options_.model : i.collection.config.model_name;
    std::filesystem::path archive;
    try {
      archive = model::resolve_model(name, model::default_model_dirs());
    } catch (const model::ModelError&) {
      return i;  // the model is not installed here: info still describes the collection
    }
    // Anything else (a card that cannot be read, a precision it cannot run, e.g. int8) is what
    // every command that runs the model would fail with: no precision, and the error as the
    // reason (shown as "precision null" with no reason, it read as if nothing were wrong). Not
    // thrown: info also reports on collections (reindex, damage) that need no model.
    try {
      const auto card = model::load_model_card(fs::path(archive).replace_extension(".json"));
      const auto c = model::choose_precision(options_.precision, card.precisions,
                                             model::cpu_flags(), name, archive.parent_path());
      i.precision = model::to_string(c.precision);
      i.precision_reason = c.reason;
      i.precision_refusal = precision_refusal(i.collection.config.model_id, c);
      i.model_preprocess = model::preprocess_canonical(card);
      i.model_preprocess_fingerprint = model::preprocess_fingerprint(i.model_preprocess);
      i.preprocess_refusal = preprocess_refusal(
          i.collection.config, i.model_preprocess, i.model_preprocess_fingerprint,
          fs::path(archive).replace_extension(".json").string(), name);
    } catch (const model::ModelError& e) {
      i.precision_reason = e.what();
    }
  }
  return i;
}

void Engine::checkpoint() {
  if (collection_ && collection_->mode() == store::Collection::Mode::Write) {
    collection_->save_index();
  }
}

}  // namespace lookalike::engine
