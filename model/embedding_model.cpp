// The only translation unit that includes LibTorch: its headers cost seconds per file to parse.
#include "model/embedding_model.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/script.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <set>
#include <thread>

namespace lookalike::model {
namespace fs = std::filesystem;

namespace {

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

int resolve_threads(int requested) {
  if (requested > 0) return requested;
  return std::max(1u, std::thread::hardware_concurrency());
}

bool looks_like_path(const std::string& s) {
  const fs::path p(s);
  std::error_code ec;
  return s.find('/') != std::string::npos || p.extension() == ".pt" || p.extension() == ".json" ||
         fs::is_regular_file(p, ec);
}

// Replaces every aten::conv2d of `method` whose weight is a constant channels-last bfloat16 tensor
// (the BF16 archives' convolutions, after freezing) by mkldnn_prepacked::conv2d_run on a weight
// reordered once, here, into the blocked layout oneDNN's kernels read: aten::conv2d reorders the
// weight on every call (53 reorders per ResNet-50 pass, ONEDNN_VERBOSE=1). A ReLU that is the
// convolution's only use becomes a oneDNN post-op of it. Same kernels, same arithmetic: the
// outputs are bit-identical. `batch` x 3 x `side` x `side` is the input the layouts are chosen
// for; other batch sizes run on the same weights. Returns how many convolutions it rewrote (0
// where this LibTorch lacks the op).
// Not fused, for want of a way in LibTorch 1.13 (no oneDNN Graph, no TensorExpr fuser without
// LLVM, _add_relu_ refuses bf16, mkldnn_prepacked has no sum post-op): the residual add and the
// ReLU after it, at most 10% of a ResNet-50 BF16 pass (measured by removing them, timing only).
// Calling oneDNN directly (libdnnl 2.6: the last convolution of each bottleneck with sum and ReLU
// post-ops) was tried on 2026-12-05 and ran no faster: its post-op convolutions lost what the
// add and ReLU had cost (docs/precision.md). So was a one-pass add + ReLU of our own (AVX-512,
// bit-identical to aten's two): +1.4% images/s in bench_stages, within noise; not kept.
int prepack_bf16_convolutions(torch::jit::Module& module, const std::string& method, int batch,
                              int side) {
  using namespace torch::jit;
  const auto prepack =
      c10::Dispatcher::singleton().findSchema({"mkldnn_prepacked::conv2d_prepack", ""});
  if (!prepack) return 0;
  const std::shared_ptr<Graph> graph = module.get_method(method).graph();
  const auto convolutions = [](Graph& g) {
    std::vector<Node*> out;
    for (Node* n : g.nodes())
      if (n->kind() == aten::conv2d) out.push_back(n);
    return out;
  };
  const std::vector<Node*> convs = convolutions(*graph);
  std::vector<size_t> chosen;
  for (size_t i = 0; i < convs.size(); ++i) {
    const auto w = toIValue(convs[i]->input(1));
    bool constant = w && w->isTensor();
    for (size_t k = 2; constant && k < 7; ++k) constant = toIValue(convs[i]->input(k)).has_value();
    if (constant && w->toTensor().scalar_type() == at::kBFloat16 && w->toTensor().dim() == 4 &&
        w->toTensor().is_contiguous(at::MemoryFormat::ChannelsLast))
      chosen.push_back(i);
  }
  if (chosen.empty()) return 0;

  // The layouts depend on each convolution's input size: one pass of a one-image input through a
  // copy of the graph that returns those inputs.
  const std::shared_ptr<Graph> probe = graph->copy();
  const std::vector<Node*> probe_convs = convolutions(*probe);
  std::vector<Value*> inputs;
  for (size_t i : chosen) inputs.push_back(probe_convs[i]->input(0));
  Node* tuple = probe->appendNode(probe->createTuple(inputs));
  probe->eraseOutput(0);
  probe->registerOutput(tuple->output());
  EliminateDeadCode(probe);
  GraphFunction function("conv_input_sizes", probe, nullptr);
  Stack stack{module._ivalue(), torch::zeros({1, 3, side, side})};
  function.run(stack);
  const auto sizes = stack.back().toTupleRef().elements();

  // Every context first, so that a failure leaves the graph as it was.
  std::vector<c10::IValue> contexts;
  std::vector<Node*> relus;
  for (size_t j = 0; j < chosen.size(); ++j) {
    Node* conv = convs[chosen[j]];
    Node* relu = nullptr;
    if (conv->output()->uses().size() == 1) {
      Node* user = conv->output()->uses()[0].user;
      if (user->kind() == aten::relu_ || user->kind() == aten::relu) relu = user;
    }
    std::vector<int64_t> input_size = sizes[j].toTensor().sizes().vec();
    input_size[0] = batch;
    Stack args{toIValue(conv->input(1))->toTensor(),
               *toIValue(conv->input(2)),
               *toIValue(conv->input(3)),
               *toIValue(conv->input(4)),
               *toIValue(conv->input(5)),
               *toIValue(conv->input(6)),
               c10::IValue(input_size),
               std::string(relu ? "relu" : "none")};
    prepack->callBoxed(&args);
    contexts.push_back(std::move(args.at(0)));
    relus.push_back(relu);
  }
  const auto run = c10::Symbol::fromQualString("mkldnn_prepacked::conv2d_run");
  for (size_t j = 0; j < chosen.size(); ++j) {
    Node* conv = convs[chosen[j]];
    WithInsertPoint point(conv);
    Value* context = graph->insertConstant(contexts[j]);
    Node* fused = graph->create(run, {conv->input(0), context}, 1)->insertBefore(conv);
    fused->output()->setType(c10::TensorType::get());
    if (relus[j]) {
      relus[j]->output()->replaceAllUsesWith(fused->output());
      relus[j]->destroy();
    }
    conv->output()->replaceAllUsesWith(fused->output());
    conv->destroy();
  }
  EliminateDeadCode(graph);
  return static_cast<int>(chosen.size());
}

}  // namespace

struct EmbeddingModel::Impl {
  fs::path archive;  // the FP32 archive: the model's identity
  fs::path runs;     // the archive that runs (the FP32 one or a reduced-precision one): errors
                     // name it, as the FP32 archive is not where a BF16 fault lies
  ModelCard card;
  std::string id;
  std::string preprocess;              // preprocess_canonical(card)
  std::string preprocess_fingerprint;  // of `preprocess`
  PrecisionChoice precision;
  int threads = 1;
  int max_batch = 32;
  int prepacked = 0;
  bool channels_last = false;  // input HWC per image (ModelOptions::channels_last_input)
  torch::jit::Module module;
  torch::jit::Method method() { return module.get_method(card.method); }

  void apply_threads(int n) const {
    if (at::get_num_threads() != n) at::set_num_threads(n);
  }

  // One forward pass of `n` images; checks the output is n x embedding_dim of finite values and
  // returns it as contiguous float32.
  torch::Tensor forward(const float* input, int n) {
    const int s = card.input_size;
    auto x = channels_last
                 ? torch::from_blob(const_cast<float*>(input), {n, 3, s, s},
                                    {3LL * s * s, 1, 3LL * s, 3}, torch::kFloat32)
                 : torch::from_blob(const_cast<float*>(input), {n, 3, s, s}, torch::kFloat32);
    torch::IValue out;
    try {
      out = method()({x});
    } catch (const c10::Error& e) {
      throw ModelError(runs.string() + ": forward pass of '" + card.method +
                       "' failed: " + first_line(e.what_without_backtrace()));
    }
    if (!out.isTensor())
      throw ModelError(runs.string() + ": '" + card.method + "' returned " + out.tagKind() +
                       ", expected a tensor of n x embedding_dim");
    torch::Tensor t = out.toTensor();
    if (t.dim() != 2 || t.size(0) != n || t.size(1) != card.embedding_dim) {
      std::string shape;
      for (auto d : t.sizes()) shape += (shape.empty() ? "" : " x ") + std::to_string(d);
      throw ModelError(runs.string() + ": '" + card.method + "' returned " + shape + " for " +
                       std::to_string(n) + " images, expected " + std::to_string(n) + " x " +
                       std::to_string(card.embedding_dim) + " (embedding_dim in the model card)");
    }
    t = t.to(torch::kFloat32).contiguous();
    check_finite(t);
    return t;
  }

  // NaN or infinity in an embedding would be stored, searched and printed as if it were one
  // (`embed` printed null, `search` found nothing, both with exit status 0): a damaged archive or
  // an overflowing precision must fail here, naming the archive that ran.
  void check_finite(const torch::Tensor& t) const {
    const torch::Tensor bad_rows = torch::isfinite(t).all(1).logical_not().nonzero();
    if (bad_rows.numel() == 0) return;
    throw NonFiniteOutput(runs.string() + ": '" + card.method + "' returned NaN or infinity for " +
                          std::to_string(bad_rows.size(0)) + " of " + std::to_string(t.size(0)) +
                          " images (first: image " +
                          std::to_string(bad_rows[0][0].item<int64_t>()) +
                          " of the pass): the archive is damaged, or its precision overflows on "
                          "this input; run it at --precision fp32 or re-export it");
  }
};

fs::path resolve_model(const std::string& name_or_path, const std::vector<fs::path>& search_dirs) {
  std::error_code ec;
  if (looks_like_path(name_or_path)) {
    fs::path p(name_or_path);
    if (p.extension() == ".json") p.replace_extension(".pt");
    if (fs::is_regular_file(p, ec)) return p;
    throw ModelError(name_or_path + ": no model archive at " + p.string());
  }
  std::string tried;
  for (const auto& dir : search_dirs) {
    fs::path p = dir / (name_or_path + ".pt");
    if (fs::is_regular_file(p, ec)) return p;
    tried += "\n  " + p.string();
  }
  throw ModelError("model '" + name_or_path + "' not found; tried:" +
                   (tried.empty() ? std::string(" (no model directories)") : tried));
}

std::vector<fs::path> default_model_dirs() {
  std::vector<fs::path> dirs;
  if (const char* env = std::getenv("LOOKALIKE_MODELS")) {
    std::string list = env;
    size_t start = 0;
    while (start <= list.size()) {
      size_t end = list.find(':', start);
      if (end == std::string::npos) end = list.size();
      if (end > start) dirs.emplace_back(list.substr(start, end - start));
      start = end + 1;
    }
  }
  const char* xdg = std::getenv("XDG_DATA_HOME");
  const char* home = std::getenv("HOME");
  if (xdg && *xdg)
    dirs.push_back(fs::path(xdg) / "lookalike" / "models");
  else if (home && *home)
    dirs.push_back(fs::path(home) / ".local" / "share" / "lookalike" / "models");
  return dirs;
}

namespace {

// "NAME.bf16.pt" without a card of its own beside "NAME.pt": a reduced-precision archive of
// NAME, even when NAME's card cannot be read to say so (that card is listed as broken once).
bool looks_like_companion(const fs::path& archive, const std::vector<fs::path>& archives) {
  std::error_code ec;
  if (fs::exists(fs::path(archive).replace_extension(".json"), ec)) return false;
  const fs::path stem = archive.stem();  // "NAME.bf16"
  const std::string precision = stem.extension().string();
  if (precision != ".bf16" && precision != ".int8" && precision != ".fp32") return false;
  const fs::path owner = archive.parent_path() / (stem.stem().string() + ".pt");
  return std::find(archives.begin(), archives.end(), owner) != archives.end();
}

}  // namespace

std::vector<InstalledModel> list_models(const std::vector<fs::path>& dirs,
                                        std::vector<BrokenModel>* broken) {
  std::vector<InstalledModel> out;
  std::set<std::string> seen;
  for (const auto& dir : dirs) {
    std::error_code ec;
    std::vector<fs::path> archives;
    for (const auto& entry : fs::directory_iterator(dir, ec))
      if (entry.path().extension() == ".pt" && entry.is_regular_file(ec))
        archives.push_back(entry.path());
    std::sort(archives.begin(), archives.end());
    // The reduced-precision archives a card names ("mobilenet_v2.bf16.pt") belong to that model
    // and have no card of their own: neither models nor broken ones.
    std::set<fs::path> companions;
    struct Found {
      fs::path archive;
      std::optional<ModelCard> card;
      std::string error;  // why there is no card
    };
    std::vector<Found> found;
    for (const auto& archive : archives) {
      try {
        auto card = load_model_card(fs::path(archive).replace_extension(".json"));
        if (card.precisions.is_object()) {
          for (const auto& [name, entry] : card.precisions.items()) {
            // An archive with a card of its own is a model, whatever another card says
            // (load_model_card refuses such a card; this keeps the listing safe regardless).
            if (entry.is_object() && entry.contains("archive") && entry["archive"].is_string()) {
              const fs::path companion = dir / entry["archive"].get<std::string>();
              if (!fs::exists(fs::path(companion).replace_extension(".json"), ec))
                companions.insert(companion);
            }
          }
        }
        found.push_back({archive, std::move(card), {}});
      } catch (const ModelError& e) {
        found.push_back({archive, std::nullopt, e.what()});
      }
    }
    for (auto& [archive, card, error] : found) {
      const std::string stem = archive.stem().string();
      if (seen.count(stem) || companions.count(archive)) continue;
      if (!card && looks_like_companion(archive, archives)) continue;
      if (card) {
        out.push_back({archive, std::move(*card)});
      } else if (broken) {
        // A half-installed or foreign file is not a model; listing must not fail because of it,
        // but the caller may show it with its error.
        broken->push_back({archive, error});
      }
      seen.insert(stem);  // as for resolve_model, which would pick this broken one
    }
  }
  return out;
}

std::unique_ptr<EmbeddingModel> EmbeddingModel::load(const fs::path& archive_or_card,
                                                     const ModelOptions& options) {
  auto impl = std::make_unique<Impl>();
  fs::path archive = archive_or_card;
  if (archive.extension() == ".json") archive.replace_extension(".pt");
  const fs::path card_path = fs::path(archive).replace_extension(".json");
  std::error_code ec;
  if (!fs::is_regular_file(archive, ec))
    throw ModelError(archive.string() + ": missing model archive (no such file)");
  if (!fs::is_regular_file(card_path, ec))
    throw ModelError(card_path.string() + ": missing model card for " + archive.string());
  if (options.max_batch <= 0)
    throw ModelError(archive.string() + ": ModelOptions.max_batch must be > 0");

  impl->archive = archive;
  impl->card = load_model_card(card_path);
  if (impl->card.tower != "image")
    throw ModelError(card_path.string() + ": model card field 'tower': '" + impl->card.tower +
                     "' is not an image model");
  const auto digest = archive_digest(archive);
  if (!impl->card.archive_digest.empty() && impl->card.archive_digest != digest) {
    throw ModelError(card_path.string() + ": describes another archive (archive_digest " +
                     impl->card.archive_digest + "; " + archive.string() + " is " + digest +
                     "): the two files were not written together (a `lookalike train` stopped "
                     "between its two renames, or one of them was copied over); write both "
                     "again");
  }
  impl->id = impl->card.name + "@" + digest;
  impl->preprocess = model::preprocess_canonical(impl->card);
  impl->preprocess_fingerprint = model::preprocess_fingerprint(impl->preprocess);
  impl->precision = choose_precision(options.precision, impl->card.precisions, cpu_flags(),
                                     card_path.string(), archive.parent_path());
  if (!impl->precision.interchangeable) impl->id += "+" + to_string(impl->precision.precision);
  if (options.channels_last_input && !impl->precision.archive.empty()) {
    const auto& all = impl->card.precisions;
    const auto entry = all.is_object() ? all.find(to_string(impl->precision.precision)) : all.end();
    impl->channels_last =
        entry != all.end() && entry->is_object() && entry->value("input", "") == "channels_last";
  }
  // The reduced-precision archive takes and returns float32 like the FP32 one (the exporter's
  // wrapper casts), so everything after this point is the same for every precision.
  impl->runs =
      impl->precision.archive.empty() ? archive : archive.parent_path() / impl->precision.archive;
  const fs::path& runs = impl->runs;
  if (!fs::is_regular_file(runs, ec))
    throw ModelError(runs.string() + ": missing " + to_string(impl->precision.precision) +
                     " archive named by " + card_path.string() + " (no such file)");
  impl->threads = resolve_threads(options.threads);
  impl->max_batch = options.max_batch;
  impl->apply_threads(impl->threads);

  try {
    impl->module = torch::jit::load(runs.string(), torch::kCPU);
  } catch (const c10::Error& e) {
    throw ModelError(runs.string() +
                     ": not a loadable TorchScript archive (corrupt, truncated, or not written by "
                     "torch.jit.save): " +
                     first_line(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    throw ModelError(runs.string() + ": cannot load TorchScript archive: " + first_line(e.what()));
  }
  const std::string& method = impl->card.method;
  if (!impl->module.find_method(method))
    throw ModelError(runs.string() + ": has no TorchScript method '" + method +
                     "' (model card field 'method' in " + card_path.string() + ")");

  impl->module.eval();
  if (options.optimize) {
    try {
      // Freezing keeps only forward unless told otherwise, so a non-forward method is preserved.
      if (method == "forward") {
        impl->module = torch::jit::optimize_for_inference(impl->module);
      } else {
        auto frozen = torch::jit::freeze(impl->module, std::vector<std::string>{method});
        impl->module = torch::jit::optimize_for_inference(frozen, {method});
      }
    } catch (const c10::Error& e) {
      throw ModelError(runs.string() + ": optimize_for_inference failed: " +
                       first_line(e.what_without_backtrace()));
    }
    if (options.prepack) {
      try {
        c10::InferenceMode guard;
        impl->prepacked =
            prepack_bf16_convolutions(impl->module, method, impl->max_batch, impl->card.input_size);
      } catch (const c10::Error& e) {
        throw ModelError(runs.string() + ": prepacking the BF16 convolutions failed: " +
                         first_line(e.what_without_backtrace()));
      }
    }
  }

  // A zero image is enough to prove the card's shape promise, and that the archive computes
  // finite numbers (a damaged one gives NaN for every input), before anyone relies on it.
  c10::InferenceMode guard;
  std::vector<float> probe(3 * static_cast<size_t>(impl->card.input_size) * impl->card.input_size);
  impl->forward(probe.data(), 1);
  return std::unique_ptr<EmbeddingModel>(new EmbeddingModel(std::move(impl)));
}

EmbeddingModel::EmbeddingModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
EmbeddingModel::~EmbeddingModel() = default;

const ModelCard& EmbeddingModel::card() const { return impl_->card; }
int EmbeddingModel::dim() const { return impl_->card.embedding_dim; }
int EmbeddingModel::threads() const { return impl_->threads; }
const std::string& EmbeddingModel::id() const { return impl_->id; }
const std::string& EmbeddingModel::preprocess_canonical() const { return impl_->preprocess; }
const std::string& EmbeddingModel::preprocess_fingerprint() const {
  return impl_->preprocess_fingerprint;
}
const fs::path& EmbeddingModel::archive() const { return impl_->archive; }
const fs::path& EmbeddingModel::running_archive() const { return impl_->runs; }
const PrecisionChoice& EmbeddingModel::precision() const { return impl_->precision; }

int EmbeddingModel::prepacked_convolutions() const { return impl_->prepacked; }

image::PreprocessSpec EmbeddingModel::preprocess_spec() const {
  image::PreprocessSpec spec = model::preprocess_spec(impl_->card);
  spec.channels_last = impl_->channels_last;
  return spec;
}

std::vector<float> EmbeddingModel::embed(const float* input, int n, int threads) {
  if (n < 0) throw ModelError(impl_->runs.string() + ": embed: negative image count");
  if (n == 0) return {};
  if (!input) throw ModelError(impl_->runs.string() + ": embed: null input");
  const size_t dim = static_cast<size_t>(impl_->card.embedding_dim);
  const size_t image_floats =
      3 * static_cast<size_t>(impl_->card.input_size) * impl_->card.input_size;
  std::vector<float> out(static_cast<size_t>(n) * dim);
  impl_->apply_threads(threads > 0 ? threads : impl_->threads);
  c10::InferenceMode guard;
  for (int start = 0; start < n; start += impl_->max_batch) {
    const int count = std::min(impl_->max_batch, n - start);
    torch::Tensor t = impl_->forward(input + start * image_floats, count);
    // The archive may or may not normalise (card.normalized); doing it here always is cheap and
    // makes every model's output ready for inner-product search.
    t = t.div(t.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12));
    std::copy_n(t.data_ptr<float>(), count * dim, out.begin() + start * dim);
  }
  return out;
}

}  // namespace lookalike::model
