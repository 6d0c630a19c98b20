// Model cards: the JSON file next to each TorchScript archive that says what the network is,
// where its weights come from and exactly how to feed it. Format: docs/model-card.md.
#pragma once

#include <array>
#include <filesystem>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "image/preprocess.h"

namespace lookalike::model {

// Raised for a missing/unreadable archive or card, a card with a missing or invalid field
// (what() names the file and the field), or a network that fails to load or run.
class ModelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline constexpr int kModelCardFormat = 1;

struct ModelCard {
  int format = kModelCardFormat;
  std::string name;           // e.g. "mobilenet_v2"; also the file stem of the archive
  std::string architecture;   // torchvision builder, e.g. "mobilenet_v2", "resnet50"
  std::string variant;        // e.g. "v1" for the original ResNet-50 stride layout; may be empty
  std::string weights_source; // URL or description of where the weights came from
  std::string weights_sha256; // of the weights file the archive was exported from
  std::string paper;          // citation or URL of the architecture's paper
  std::string license;        // licence of the weights
  int input_size = 224;       // crop size, pixels
  int resize_shorter = 256;   // shorter side before the center crop, pixels
  std::string resize_policy = "resize_shorter_center_crop";
  std::string interpolation = "bilinear";
  bool antialias = true;
  std::array<float, 3> mean = {0.485f, 0.456f, 0.406f};
  std::array<float, 3> std = {0.229f, 0.224f, 0.225f};
  std::string color_order = "RGB";
  int embedding_dim = 0;
  bool normalized = false;     // whether the archive's output is already L2-normalised
  std::string embedding_output;  // which output gives the embedding, in words
  std::string method = "forward";  // TorchScript method that returns n x embedding_dim
  std::string tower = "image";     // modality of this archive; a text tower comes later
  std::string exported_by;         // tool and versions that wrote the archive
};

// Throws ModelError naming `path` and the field for any missing or invalid field.
ModelCard load_model_card(const std::filesystem::path& path);
ModelCard model_card_from_json(const nlohmann::json& j, const std::string& source);
nlohmann::json model_card_to_json(const ModelCard& card);
image::PreprocessSpec preprocess_spec(const ModelCard& card);

}  // namespace lookalike::model
