// Image embedding models: a TorchScript archive (LibTorch) plus its model card.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "model/model_card.h"
#include "model/precision.h"

namespace lookalike::model {

// Raised when a forward pass returns NaN or infinity (a damaged archive, or a reduced precision
// that overflows): what() names the archive that ran. A ModelError, so callers that do not care
// need not tell it apart; `models calibrate` records it as the precision's failure.
class NonFiniteOutput : public ModelError {
 public:
  using ModelError::ModelError;
};

struct ModelOptions {
  // Intra-op threads for LibTorch (at::set_num_threads). Debian's LibTorch starts with 1, so
  // this is always set explicitly; 0 = std::thread::hardware_concurrency().
  int threads = 0;
  // torch::jit::optimize_for_inference (freezing + oneDNN fusion) at load: 2x-10x faster on
  // Debian's build (../shared/STACK.md). Off only for debugging.
  bool optimize = true;
  // embed() runs at most this many images per forward pass, so activation memory stays bounded
  // whatever n the caller passes (VGG-16 needs about 60 MB of activations an image). > 0.
  int max_batch = 32;
  // "auto" | "fp32" | "bf16" | "int8": which archive runs (model/precision.h, choose_precision;
  // docs/precision.md). "auto" = the fastest precision this CPU supports whose recorded fidelity
  // meets the bar, else FP32.
  std::string precision = "auto";
  // With optimize (last, so that brace initialisers of the fields above still work): reorder the
  // weights of the BF16 convolutions once, at load, instead of on every forward pass, and fold the
  // ReLU after them (prepack_bf16_convolutions in the .cpp). Bit-identical outputs. Off only for
  // measuring it.
  bool prepack = true;
  // Take the input channels-last (HWC per image) where the running archive's card entry says
  // "input": "channels_last" (the exporter's whole-model BF16 archives): the archive reorders
  // its input to channels-last, which is then a no-op instead of a transpose of every batch
  // (9.7 ms of 2 threads for 32 images). Same values, bit-identical outputs. Off only for
  // measuring it.
  bool channels_last_input = true;
};

// Where a model lives: `name_or_path` is either a path to a .pt archive or a .json card, or a
// model name looked up as <dir>/<name>.pt in each of `search_dirs`.
// It is taken as a path when it names an existing file, ends in .pt/.json, or contains a '/';
// a .json path resolves to the .pt beside it. Returns the archive's path.
// Throws ModelError listing the places tried when nothing is found.
std::filesystem::path resolve_model(const std::string& name_or_path,
                                    const std::vector<std::filesystem::path>& search_dirs);
// Default model directories: $LOOKALIKE_MODELS (colon-separated), then
// $XDG_DATA_HOME/lookalike/models (default ~/.local/share/lookalike/models).
std::vector<std::filesystem::path> default_model_dirs();

struct InstalledModel {
  std::filesystem::path archive;
  ModelCard card;
};
// An installed <name>.pt whose <name>.json card is missing or cannot be read.
struct BrokenModel {
  std::filesystem::path archive;
  std::string error;  // load_model_card's ModelError text, naming the card and the cause
};
// All <name>.pt with a readable <name>.json card in `dirs`, in `dirs` order and by name within
// a directory. A name found in an earlier directory hides the same name in later ones, as it
// does for resolve_model. A .pt whose card is missing or invalid is not listed (listing must
// not fail because of it); when `broken` is given it receives those, in the same order, so that
// a listing can show them with their error. A broken one hides the same name in later
// directories too: resolve_model would pick it. Reduced-precision archives are neither: those a
// card names, and a cardless NAME.bf16.pt / NAME.int8.pt beside NAME.pt (whose own card may be
// the broken one). An archive with a card of its own is always listed, whatever another card
// names.
std::vector<InstalledModel> list_models(const std::vector<std::filesystem::path>& dirs,
                                        std::vector<BrokenModel>* broken = nullptr);

class EmbeddingModel {
 public:
  // Loads <stem>.pt and <stem>.json (archive path or card path accepted). Applies
  // optimize_for_inference, sets the thread count, and checks one forward pass (a blank image)
  // returns 1 x card.embedding_dim finite floats. Throws ModelError naming the file and the
  // cause: missing archive or card, invalid card, corrupt archive (truncated, not TorchScript),
  // the card's method missing from the archive, or an output that is not n x embedding_dim
  // float (NonFiniteOutput for NaN or infinity); for a reduced precision, also an unknown
  // precision, one the card does not list, or its archive missing. Errors about running name
  // the archive that runs (running_archive()), not the FP32 one.
  static std::unique_ptr<EmbeddingModel> load(const std::filesystem::path& archive_or_card,
                                              const ModelOptions& options = {});
  ~EmbeddingModel();
  EmbeddingModel(const EmbeddingModel&) = delete;
  EmbeddingModel& operator=(const EmbeddingModel&) = delete;

  const ModelCard& card() const;
  int dim() const;
  int threads() const;
  // Identifies the network and weights: "<name>@<first 16 hex of XXH3-128 of the FP32 archive>".
  // Stored with every embedding so a collection never mixes models. A reduced precision whose
  // recorded fidelity meets the bar keeps this id (its vectors are interchangeable with FP32
  // ones); one that does not appends "+<precision>", so the collection refuses to mix them.
  const std::string& id() const;
  // The card's preprocessing as canonical text (model::preprocess_canonical) and its 16-hex-digit
  // digest (model::preprocess_fingerprint): not part of id(), which names the archive only, so
  // a hand-edited card (mean, std, sizes, interpolation, colour order) keeps its id but changes
  // these. A collection records the fingerprint and refuses a model whose fingerprint differs
  // (engine::Engine; docs/model-card.md, "Preprocessing fingerprint"). Fixed at load.
  const std::string& preprocess_canonical() const;
  const std::string& preprocess_fingerprint() const;
  // The FP32 archive (the model's identity), whatever precision runs.
  const std::filesystem::path& archive() const;
  // The archive that runs: archive(), or the reduced-precision archive precision() chose.
  const std::filesystem::path& running_archive() const;
  // What runs, and why (ModelOptions::precision resolved against the card and this CPU).
  const PrecisionChoice& precision() const;
  // Convolutions whose weights were prepacked at load (ModelOptions::prepack): 0 for FP32 and
  // with prepack off; every convolution of a whole-BF16 ResNet-50 (53).
  int prepacked_convolutions() const;
  // How to preprocess images for embed(): the card's spec (model::preprocess_spec), with
  // channels_last set where the archive takes its input channels-last (ModelOptions).
  image::PreprocessSpec preprocess_spec() const;

  // input: n images of 3 x input_size x input_size float32, normalised as the card says, each
  // CHW (NCHW, row-major) or HWC where preprocess_spec().channels_last: what image::preprocess
  // writes with preprocess_spec(). Returns n x dim float32, row-major, each row L2-normalised.
  // n = 0 returns an empty vector. Throws ModelError for n < 0, a null input, or a forward pass
  // that fails or returns the wrong shape, and NonFiniteOutput (naming running_archive()) when
  // any output is NaN or infinite: nothing non-finite is ever returned. Sets the calling thread's
  // intra-op thread count (at::set_num_threads, which sets OpenMP's per-thread count) to `threads`,
  // or threads() when threads <= 0, first. Thread-safe: passes may run side by side, each on its
  // calling thread's own OpenMP threads (TorchScript's graph executor takes a lock only to build
  // its plan; the weights are only read). Side by side passes with threads() / k threads each are
  // how pipeline::run_batched keeps k passes in flight (docs/engine.md, "Passes side by side").
  std::vector<float> embed(const float* input, int n, int threads = 0);

 private:
  struct Impl;
  explicit EmbeddingModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lookalike::model
