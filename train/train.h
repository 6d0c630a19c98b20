// `lookalike train`: metric learning on the user's labels. A projection head on a frozen base
// model's embeddings, trained with the triplet loss over P x K batches with online mining, and
// written as a self-contained TorchScript archive plus model card that every command loads like
// any other model. `lookalike reembed` re-embeds a collection with a trained model from cached
// base embeddings. Design and figures: docs/train.md.
//
// Methods:
//  - Triplet loss: Schroff, Kalenichenko, Philbin, "FaceNet: A Unified Embedding for Face
//    Recognition and Clustering", CVPR 2015 (https://arxiv.org/abs/1503.03832); semi-hard
//    negatives as defined there (d(a,p) < d(a,n) < d(a,p) + margin).
//  - P x K batches, batch-hard mining: Hermans, Beyer, Leibe, "In Defense of the Triplet Loss
//    for Person Re-Identification", 2017 (https://arxiv.org/abs/1703.07737).
//
// Shapes: embeddings are n x d float32, row-major. Distances are Euclidean between
// L2-normalised rows (so in [0, 2]); the margin is in the same unit.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace lookalike::train {

// A request that cannot be carried out: bad labels (one class, missing label column), unknown
// base model, bad option values. what() names the file, folder or option and the cause.
// `usage` = true for an option value outside its range (CLI exit 2), else exit 1.
class TrainError : public std::runtime_error {
 public:
  explicit TrainError(const std::string& what, bool usage = false)
      : std::runtime_error(what), usage_(usage) {}
  bool usage() const { return usage_; }

 private:
  bool usage_;
};

struct TrainOptions {
  std::filesystem::path labels;  // a folder per class, or a CSV with a label column
  std::string label_column = "label";
  std::string file_column;            // CSV: the image path column (default: see pipeline/scan.h)
  std::string base = "mobilenet_v2";  // base model name or .pt path (model::resolve_model)
  std::filesystem::path out;          // PATH.pt; the card goes to PATH.json (folder must exist)
  // Replace an existing PATH.pt / PATH.json. Off by default: collections built with the old
  // model would no longer match the new one (its id changes), and the old files would be gone.
  bool force = false;
  int epochs = 30;                    // at most; early stopping may end sooner
  int dim = 256;                      // output width of the head
  std::string head = "linear";        // "linear" | "mlp" (Linear, ReLU, Linear)
  int hidden = 1024;                  // mlp: hidden width
  double margin = 0.2;                // triplet margin, Euclidean on unit vectors; (0, 4]
  std::string mining = "batch-hard";  // "batch-hard" | "semi-hard"
  int labels_per_batch = 16;          // P (capped at the number of training labels)
  int images_per_label = 8;           // K
  double learning_rate = 3e-3;        // Adam
  std::uint64_t seed = 0;
  double val_fraction = 0.1;             // 0 = no validation (all epochs run, the last kept)
  std::string val_split = "stratified";  // "stratified" | "by-label"
  // Epochs without a better validation Recall@1 before stopping; an epoch that ties the best
  // replaces it (longer training generalised better on clothing-small, docs/train.md).
  int patience = 10;
  std::filesystem::path cache_dir;  // base-embedding cache; empty = default_cache_dir()
  int threads = 0;                  // LibTorch threads; 0 = all cores
  int decode_threads = 1;
  int batch_size = 32;  // images per forward pass of the base model
  int passes = 0;       // base-model passes side by side (engine::EngineOptions); 0 = auto
  std::int64_t max_pixels = 89'478'485;
  // --full: after the head, fine-tune the base's last stage with the head on augmented images
  // (mobilenet_v2: features[14:19], resnet50: layer4; batch norm in eval mode; docs/train.md).
  bool full = false;
  int full_epochs = 4;  // epochs of fine-tuning, each one pass of P x K batches
  // Adam, the stage; the head gets 10x. 1e-4 lowered clothing-small's test Recall@1 (0.817
  // after 4 epochs against 0.860 for the head alone); 2e-5 raised it (docs/train.md).
  double full_learning_rate = 2e-5;
};

// Progress of computing base embeddings (stage "embed") and per epoch (stage "epoch").
struct EpochReport {
  std::string phase = "head";   // "head" (on cached embeddings) | "full" (--full)
  int epoch = 0;                // 1-based
  int epochs = 0;               // the most that will run
  double loss = 0;              // mean triplet loss over the epoch's batches
  double active = 0;            // share of triplets with a non-zero loss
  double val_recall_at_1 = -1;  // -1 without validation
  bool best = false;            // the best epoch so far (kept)
  double seconds = 0;           // this epoch, training and validation
  double triplets_per_s = 0;
  double eta_seconds = 0;  // if every remaining epoch runs
};

struct EmbedProgress {
  std::int64_t done = 0, total = 0;
};

struct TrainCallbacks {
  std::function<void(const EmbedProgress&)> on_embed;
  std::function<void(const EpochReport&)> on_epoch;
  // The entries of the labelled set left out before training ("<where>: <reason>": a manifest
  // row naming a missing file, an empty label, an image directly in the labels folder), as soon
  // as the set is read, so that a long run can be stopped. Not called when there are none.
  std::function<void(const std::vector<std::string>&)> on_skipped;
  // The images that could not be read or decoded ("<file>: <reason>", TrainResult::failed), once
  // the base embeddings are computed and before training: also when too few images are left to
  // train on, so that the run's error does not hide its causes. Not called when there are none.
  std::function<void(const std::vector<std::string>&)> on_failed;
};

struct TrainResult {
  std::filesystem::path archive;    // the .pt written
  std::filesystem::path card;       // the .json written
  nlohmann::json training;          // the card's "training" object
  std::int64_t images = 0;          // labelled images used
  std::int64_t cached = 0;          // base embeddings read from the cache
  std::int64_t decoded = 0;         // images decoded and embedded by the base model (not the
                                    // failed ones: cached + decoded + failed = images tried)
  std::vector<std::string> failed;  // "<file>: <reason>" for images left out
  // Left out of the labelled set before any image was read (eval::LabelledSet): "<where>:
  // <reason>" for each, and the counts by cause. The CLI exits 3 when this or `failed` is not
  // empty, as `eval` warns for the same input.
  std::vector<std::string> skipped;
  std::int64_t unlabelled = 0, empty_labels = 0, unreadable = 0;
  std::vector<EpochReport> epochs;
  int best_epoch = 0;
  double seconds = 0;
};

// $XDG_CACHE_HOME/lookalike (default ~/.cache/lookalike).
std::filesystem::path default_cache_dir();

// Trains and writes options.out (+ .json). Throws TrainError for bad input (see above; usage()
// for an out-of-range option, an `out` that is the base model's archive or card or one of the
// reduced-precision archives its card names, or an existing one without `force`; not usage()
// for a run whose weights diverged), model::ModelError for a base model that cannot be loaded,
// std::runtime_error for write failures naming the file. The files are written under temporary
// names, loaded as a model, then renamed over `out`, so a failure leaves older files whole; the
// temporary files are removed on SIGINT / SIGTERM (train/temp_files.h), and those an earlier,
// killed run left for the same `out` at the start. Deterministic for a given seed and thread
// count.
TrainResult train_model(const TrainOptions& options, const TrainCallbacks& callbacks = {});

// --- Base-embedding cache -------------------------------------------------------------------
// A SQLite file (<dir>/base-embeddings.sqlite) keyed by (base model id, XXH3-128 content hash),
// holding the L2-normalised base embedding (dim float32). Thread-compatible, one user at a time.
struct CachedEmbeddings {
  int dim = 0;
  std::vector<float> rows;  // found.size() x dim, row-major, for the found entries in order
  std::vector<bool> found;  // per requested hash
};
CachedEmbeddings cache_lookup(const std::filesystem::path& dir, const std::string& model_id,
                              const std::vector<std::string>& content_hashes);
// rows: hashes.size() x dim. A cache that cannot be written (damaged, disk full) is a warning
// naming the file, not an error: the run has its embeddings. cache_lookup treats an unreadable
// cache as empty, with a warning.
void cache_store(const std::filesystem::path& dir, const std::string& model_id,
                 const std::vector<std::string>& content_hashes, const std::vector<float>& rows,
                 int dim);

// --- Re-embedding a collection ---------------------------------------------------------------
struct ReembedOptions {
  std::filesystem::path collection;  // the source collection (read only)
  std::filesystem::path out;         // the new collection (must not exist yet)
  std::string model;                 // the new model, name or .pt; empty = the collection's
  std::filesystem::path cache_dir;   // empty = default_cache_dir()
  int threads = 0;
  int decode_threads = 1;
  int batch_size = 32;
  // Images that are decoded run through engine::Engine (the same decode options, batcher and
  // passes as `lookalike index`), so these mean what engine::EngineOptions says.
  std::string precision = "auto";  // "auto" | "fp32" | "bf16" | "int8" (docs/precision.md)
  int passes = 0;                  // forward passes side by side; 0 = auto
  std::int64_t max_pixels = 89'478'485;
};
struct ReembedResult {
  std::int64_t images = 0;
  std::int64_t from_cache = 0;      // head applied to cached base embeddings
  std::int64_t decoded = 0;         // decoded and embedded in full (not in the cache)
  std::vector<std::string> failed;  // "<path>: <reason>", left out of the new collection
                                    // (images = from_cache + decoded + failed.size())
  std::string model_id;
  bool head_only = false;        // the new model is a trained head over a base (cache usable)
  std::string precision;         // what ran (model::PrecisionChoice), e.g. "bf16"
  std::string precision_reason;  // and why
};
// Writes a new collection at options.out holding every image of options.collection (same
// paths, metadata, metric and index spec) embedded by options.model. When the model is a
// trained head (card.training.base_model.id), cached base embeddings are projected by its
// `head` method and only images missing from the cache are decoded. A precision switch is a
// reembed with the same model and another `precision` (docs/precision.md, "Which vectors mix").
// `out` is checked before the source or the model is opened: TrainError for an empty one or one
// whose `out`.partial (which the run replaces) is the source or holds it (usage()), for a file,
// a folder with something in it, or a folder above it that is missing or not writable. Also
// TrainError for a missing source collection, and when not one image could be embedded (nothing
// is written; what() names the first causes); model::ModelError for the model,
// engine::EngineError for a bad option (passes, batch size, threads).
ReembedResult reembed_collection(const ReembedOptions& options,
                                 const std::function<void(const EmbedProgress&)>& on_progress = {});

}  // namespace lookalike::train
