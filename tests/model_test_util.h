// Helpers shared by the model tests: scratch directories under the build tree, files, the
// documented example card and the eager-PyTorch reference written by tests/model_reference.py.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace lookalike::model::testing {
namespace fs = std::filesystem;

inline const fs::path kFixtures = LOOKALIKE_FIXTURES;
inline const fs::path kShared = LOOKALIKE_SHARED_DIR;
inline const fs::path kMobileNetArchive = kFixtures / "models" / "mobilenet_v2.pt";
inline const fs::path kMobileNetWeights =
    kShared / "models" / "mobilenet_v2" / "mobilenet_v2_imagenet_float.pth";

// A fresh, empty directory named after the running test, removed again by the destructor.
struct ScratchDir {
  fs::path path;
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path =
        kFixtures / "model_scratch" / (std::string(info->test_suite_name()) + "." + info->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path operator/(const std::string& name) const { return path / name; }
};

inline std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + p.string());
}

// The ```json block of docs/model-card.md: the format's own example is what the tests start from.
inline nlohmann::json documented_card() {
  const std::string doc = read_text(fs::path(LOOKALIKE_SOURCE_DIR) / "docs" / "model-card.md");
  const auto start = doc.find("```json\n");
  const auto end = doc.find("```", start + 8);
  if (start == std::string::npos || end == std::string::npos)
    throw std::runtime_error("docs/model-card.md has no ```json block");
  return nlohmann::json::parse(doc.substr(start + 8, end - start - 8));
}

inline std::vector<float> read_floats(const fs::path& p) {
  const std::string bytes = read_text(p);
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

struct Reference {
  int count = 0;
  int dim = 0;
  int size = 0;
  std::vector<float> input;       // count x 3 x size x size
  std::vector<float> embeddings;  // count x dim, eager PyTorch, not normalised
  const float* image(int i) const {
    return input.data() + static_cast<size_t>(i) * 3 * size * size;
  }
  const float* embedding(int i) const { return embeddings.data() + static_cast<size_t>(i) * dim; }
};

inline Reference load_reference() {
  const fs::path dir = kFixtures / "model_reference";
  const auto meta = nlohmann::json::parse(read_text(dir / "reference.json"));
  Reference r;
  r.count = meta["count"];
  r.size = meta["input_shape"][2];
  r.dim = meta["embedding_shape"][1];
  r.input = read_floats(dir / "input.f32");
  r.embeddings = read_floats(dir / "embeddings.f32");
  if (r.input.size() != static_cast<size_t>(r.count) * 3 * r.size * r.size ||
      r.embeddings.size() != static_cast<size_t>(r.count) * r.dim)
    throw std::runtime_error("reference files in " + dir.string() + " do not match their shapes");
  return r;
}

inline double dot(const float* a, const float* b, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

inline double cosine(const float* a, const float* b, int n) {
  return dot(a, b, n) / std::sqrt(dot(a, a, n) * dot(b, b, n));
}

inline double max_abs_diff(const float* a, const float* b, int n) {
  double m = 0;
  for (int i = 0; i < n; ++i) m = std::max(m, std::abs(static_cast<double>(a[i]) - b[i]));
  return m;
}

}  // namespace lookalike::model::testing
