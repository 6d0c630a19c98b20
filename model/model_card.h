// Model cards: the JSON file next to each TorchScript archive that says what the network is,
// where its weights come from and exactly how to feed it. Format: docs/model-card.md.
#pragma once

#include <array>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "image/preprocess.h"

namespace lookalike::model {

// Raised for a missing/unreadable archive or card, a card with a missing or invalid field
// (what() names the file and the field), or a network that fails to load or run.
class ModelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bumped when a card's meaning changes; cards with a newer format are refused, not guessed at.
inline constexpr int kModelCardFormat = 1;
// Largest input_size and resize_shorter a card may ask for, pixels. Past them a card is a typo,
// not a network: a 1024 x 1024 crop is already 12 MB of float32 an image (400 MB for a batch of
// 32), and larger values ended in a bare "out of memory" at the first forward pass.
inline constexpr int kMaxInputSize = 1024;
inline constexpr int kMaxResizeShorter = 2048;
// The precisions a card's "precisions" object may list (docs/precision.md).
inline constexpr const char* kCardPrecisions[] = {"fp32", "bf16", "int8"};

// Fields marked (optional) may be absent from the JSON and then take the default shown; every
// other field is required. docs/model-card.md has the format and an example.
struct ModelCard {
  int format = kModelCardFormat;
  // e.g. "mobilenet_v2": the first part of the model id, NAME@DIGEST[+PRECISION], so no '+',
  // '@' or '/'. Written equal to the file stem (exporter, train); the stem is what selects a
  // model (--model NAME) and what `models` shows, and a copy under another stem keeps this name.
  std::string name;
  std::string architecture;     // torchvision builder, e.g. "mobilenet_v2", "resnet50"
  std::string variant;          // (optional) e.g. "v1" / "v1.5" for ResNet-50's stride layout
  std::string weights_source;   // URL or description of where the weights came from
  std::string weights_sha256;   // (optional) of the weights file the archive was exported from
  bool random_weights = false;  // (optional) untrained weights: for tests only, not for search
  std::string paper;            // (optional) citation or URL of the architecture's paper
  std::string license;          // licence of the weights
  int input_size = 224;         // crop size, pixels, 1..kMaxInputSize
  int resize_shorter = 256;     // shorter side before the center crop, pixels (0 = no resize,
                                // else input_size..kMaxResizeShorter)
  std::string resize_policy = "resize_shorter_center_crop";  // the only policy so far
  std::string interpolation = "bilinear";                    // "bilinear" or "bicubic"
  bool antialias = true;
  std::array<float, 3> mean = {0.485f, 0.456f, 0.406f};  // per channel, on 0..1 values
  std::array<float, 3> std = {0.229f, 0.224f, 0.225f};   // per channel, > 0
  std::string color_order = "RGB";  // "RGB" or "BGR"; image::preprocess feeds RGB only
  int embedding_dim = 0;            // > 0
  bool normalized = false;          // whether the archive's output is already L2-normalised
  std::string embedding_output;     // (optional) which output gives the embedding, in words
  std::string method = "forward";   // TorchScript method that returns n x embedding_dim
  std::string tower = "image";      // (optional) modality of this archive
  std::string exported_by;          // (optional) tool and versions that wrote the archive
  // (optional, "" when absent) model::archive_digest of the archive this card was written with
  // (`lookalike train` records it). The loader refuses a card whose digest is not its archive's:
  // the two files are renamed into place one after the other, and a crash between the renames
  // would otherwise pair a new archive with the old card.
  std::string archive_digest;
  // (optional, null when absent) How a trained model was made (`lookalike train`): base model,
  // head, loss, margin, mining, epochs, a hash of the training labels, validation metrics.
  // docs/model-card.md lists its keys.
  nlohmann::json training;
  // (optional, null when absent) Reduced-precision paths measured for this archive: an object
  // keyed by precision name ("fp32", "bf16", "int8"; kCardPrecisions), each with its measured
  // fidelity against FP32 (docs/model-card.md, docs/precision.md). Figures are range-checked
  // (cosines in [-1, 1], Recall@1 and mAP in [0, 1], counts and rates >= 0); an entry's archive
  // is a file name next to the card, neither the FP32 archive nor another model's archive.
  nlohmann::json precisions;

  bool operator==(const ModelCard&) const = default;
};

// Throws ModelError naming `path` (and the field, for a missing or invalid field) when the file
// is missing, unreadable, not JSON, or not a valid card; also when a precision's archive has a
// card of its own (another model's archive).
ModelCard load_model_card(const std::filesystem::path& path);
// `source` names the card in error messages (usually its path). Checks everything that does not
// need the card's location (load_model_card checks that too).
ModelCard model_card_from_json(const nlohmann::json& j, const std::string& source);
nlohmann::json model_card_to_json(const ModelCard& card);
// Writes the card as indented JSON. Throws ModelError naming `path` when it cannot be written.
void save_model_card(const ModelCard& card, const std::filesystem::path& path);
// The image::preprocess settings the card asks for. Throws ModelError (naming the card and the
// field) for settings image::preprocess cannot reproduce, e.g. antialias = false.
image::PreprocessSpec preprocess_spec(const ModelCard& card);

// The card's preprocessing as canonical text: every field that changes what the network is fed
// (so what vectors come out), in this fixed order, ';'-separated, numbers in their shortest
// round-trip form (std::to_chars of the float the card's number was read as):
//   preprocess/1;resize_policy=resize_shorter_center_crop;resize_shorter=256;input_size=224;
//   interpolation=bilinear;antialias=true;color_order=RGB;mean=0.485,0.456,0.406;
//   std=0.229,0.224,0.225
// (one line). Not in it: what does not change the values (channels_last, precision, threads) and
// what the model id already covers (the archive). docs/model-card.md, "Preprocessing
// fingerprint". O(1); never throws for a card load_model_card accepted.
std::string preprocess_canonical(const ModelCard& card);
// A short stable digest of a canonical text: 16 lowercase hex digits, XXH3-64 (seed 0) of its
// bytes, big-endian. Stored in a collection's catalog (meta.preprocess_fingerprint) so that
// vectors made with a hand-edited card's preprocessing are not mixed with the collection's.
std::string preprocess_fingerprint(const std::string& canonical);
// The fields whose values differ between two canonical texts, "mean 0.485,0.456,0.406 ->
// 0.5,0.5,0.5; input_size 224 -> 256" (`before` -> `after`, in canonical order, a field missing
// from one side shown as "(none)"); empty when they agree field for field. For error messages.
std::string preprocess_differences(const std::string& before, const std::string& after);

}  // namespace lookalike::model
