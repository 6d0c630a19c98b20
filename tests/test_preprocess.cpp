// Preprocessing (and decoding) against the real PIL + torchvision pipeline: the cases and the
// reference outputs come from tests/preprocess_reference.py (fixture preprocess_reference).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "image/decode.h"
#include "image/preprocess.h"

namespace fs = std::filesystem;
namespace img = lookalike::image;

namespace {

const fs::path kRefDir = fs::path(LOOKALIKE_FIXTURES) / "preprocess_reference";

using Row = std::vector<std::string>;

std::vector<Row> manifest(const std::string& kind) {
  std::ifstream in(kRefDir / "manifest.tsv");
  EXPECT_TRUE(in) << "missing " << kRefDir / "manifest.tsv";
  std::vector<Row> rows;
  std::string line;
  while (std::getline(in, line)) {
    Row row;
    std::stringstream fields(line);
    std::string field;
    while (std::getline(fields, field, '\t')) row.push_back(field);
    if (!row.empty() && row[0] == kind) rows.push_back(row);
  }
  EXPECT_FALSE(rows.empty()) << "no '" << kind << "' cases in the manifest";
  return rows;
}

template <typename T>
std::vector<T> read_raw(const std::string& id, const char* ext) {
  std::ifstream in(kRefDir / (id + ext), std::ios::binary | std::ios::ate);
  EXPECT_TRUE(in) << "missing reference " << id << ext;
  std::vector<T> data(std::size_t(in.tellg()) / sizeof(T));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(data.data()), std::streamsize(data.size() * sizeof(T)));
  return data;
}

struct Diff {
  double max = 0, mean = 0;
};

template <typename A, typename B>
Diff difference(const std::vector<A>& a, const std::vector<B>& b) {
  Diff d;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const double e = std::fabs(double(a[i]) - double(b[i]));
    d.max = std::max(d.max, e);
    d.mean += e;
  }
  d.mean /= double(std::max<std::size_t>(a.size(), 1));
  return d;
}

std::vector<float> run_preprocess(const img::Decoded& d, const img::PreprocessSpec& spec) {
  std::vector<float> out(std::size_t(3) * spec.crop * spec.crop, -1e9f);
  img::preprocess(d.rgb, d.source_width, d.source_height, spec, out.data());
  return out;
}

class PreprocessTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { img::init_decoder(); }
};

}  // namespace

TEST_F(PreprocessTest, DecodedPixelsEqualPil) {
  double worst = 0;
  for (const Row& r : manifest("decode")) {
    const img::Decoded d = img::decode_file(r[1]);
    ASSERT_EQ(d.rgb.width, std::stoi(r[3])) << r[1];
    ASSERT_EQ(d.rgb.height, std::stoi(r[4])) << r[1];
    const auto want = read_raw<std::uint8_t>(r[2], ".rgb");
    ASSERT_EQ(d.rgb.pixels.size(), want.size()) << r[1];
    const Diff diff = difference(d.rgb.pixels, want);
    worst = std::max(worst, diff.max);
    EXPECT_EQ(diff.max, 0) << r[1] << ": mean abs " << diff.mean;
  }
  RecordProperty("max_abs_pixel_difference", std::to_string(worst));
}

// Compares preprocess(decode(file)) with torchvision's tensor for every manifest row; with
// `skip_rows` the decoder may skip rows preprocess never reads. Returns how many JPEGs had
// their first row skipped (left black).
int compare_with_torchvision(bool skip_rows, double& worst) {
  int skipped = 0;
  for (const Row& r : manifest("preprocess")) {
    img::PreprocessSpec spec;
    spec.resize_shorter = std::stoi(r[3]);
    spec.crop = std::stoi(r[4]);
    spec.interpolation = r[5];
    img::DecodeOptions options;
    if (skip_rows) options.rows_for = &spec;
    const img::Decoded d = img::decode_file(r[1], options);
    const auto got = run_preprocess(d, spec);
    const auto want = read_raw<float>(r[2], ".f32");
    EXPECT_EQ(got.size(), want.size()) << r[2];
    if (got.size() != want.size()) continue;
    const Diff diff = difference(got, want);
    worst = std::max(worst, diff.max);
    EXPECT_LE(diff.max, 1e-5) << r[2] << " (" << r[1] << ", " << r[5] << ")";
    const auto rows =
        img::rows_read(d.rgb.width, d.rgb.height, d.source_width, d.source_height, spec);
    const auto* row0 = d.rgb.pixels.data();
    skipped += skip_rows && d.format == "jpeg" && rows[0] > 0 &&
               std::all_of(row0, row0 + d.rgb.width * 3, [](auto v) { return v == 0; });
  }
  return skipped;
}

TEST_F(PreprocessTest, TensorsEqualTorchvision) {
  double worst = 0;
  compare_with_torchvision(false, worst);
  RecordProperty("max_abs_tensor_difference", std::to_string(worst));
}

// The indexer lets the JPEG decoder skip rows that preprocess will not read
// (DecodeOptions::rows_for): the tensors must stay exactly torchvision's, and rows really are
// skipped for photos taller than the crop needs.
TEST_F(PreprocessTest, TensorsEqualTorchvisionWhenDecoderSkipsRows) {
  double worst = 0;
  const int skipped_somewhere = compare_with_torchvision(true, worst);
  EXPECT_GT(skipped_somewhere, 0) << "no JPEG in the manifest had rows skipped";
}

TEST_F(PreprocessTest, ResizeEqualsPil) {
  for (const Row& r : manifest("resize")) {
    const int w = std::stoi(r[3]), h = std::stoi(r[4]);
    const img::RgbImage out = img::resize(img::decode_file(r[1]).rgb, w, h, r[5]);
    ASSERT_EQ(out.width, w);
    ASSERT_EQ(out.height, h);
    const Diff diff = difference(out.pixels, read_raw<std::uint8_t>(r[2], ".rgb"));
    EXPECT_EQ(diff.max, 0) << r[2] << ": mean abs " << diff.mean;
  }
}

TEST_F(PreprocessTest, ResizedSizeFollowsTorchvision) {
  for (const Row& r : manifest("size")) {
    const auto size = img::resized_size(std::stoi(r[1]), std::stoi(r[2]), std::stoi(r[3]));
    EXPECT_EQ(size[0], std::stoi(r[4])) << r[1] << "x" << r[2] << " -> " << r[3];
    EXPECT_EQ(size[1], std::stoi(r[5])) << r[1] << "x" << r[2] << " -> " << r[3];
  }
  EXPECT_THROW(img::resized_size(0, 10, 256), std::invalid_argument);
}

// DCT-domain downscaling changes pixels slightly; the tensor must stay close to the
// full-resolution reference (normalised units: 1/255 of the range is about 0.017).
TEST_F(PreprocessTest, DctShrinkStaysCloseToFullResolution) {
  for (const Row& r : manifest("shrink")) {
    img::DecodeOptions options;
    options.min_shorter_side = std::stoi(r[3]);
    const img::Decoded d = img::decode_file(r[1], options);
    EXPECT_GT(d.shrink, 1) << "min_shorter_side " << r[3] << " did not shrink";
    const Diff diff =
        difference(run_preprocess(d, img::PreprocessSpec{}), read_raw<float>(r[2], ".f32"));
    RecordProperty("shrink" + std::to_string(d.shrink) + "_mean_abs", std::to_string(diff.mean));
    RecordProperty("shrink" + std::to_string(d.shrink) + "_max_abs", std::to_string(diff.max));
    std::cout << "DCT shrink " << d.shrink << ": mean abs " << diff.mean << ", max abs " << diff.max
              << " (normalised units)\n";
    EXPECT_LT(diff.mean, 0.05) << "shrink " << d.shrink;
    EXPECT_GT(diff.max, 0.0) << "shrink " << d.shrink << " gave identical output: not shrunk?";
  }
}

TEST_F(PreprocessTest, PaddingUsesNormalisedZero) {
  // A 10x6 image, no resize, crop 16: torchvision pads with 0 before Normalize.
  img::RgbImage tiny{10, 6, std::vector<std::uint8_t>(10 * 6 * 3, 255)};
  img::PreprocessSpec spec;
  spec.resize_shorter = 0;
  spec.crop = 16;
  std::vector<float> out(3 * 16 * 16);
  img::preprocess(tiny, 10, 6, spec, out.data());
  for (int c = 0; c < 3; ++c) {
    const float pad = (0.0f - spec.mean[c]) / spec.std[c];
    const float white = (1.0f - spec.mean[c]) / spec.std[c];
    // Left pad (16 - 10) / 2 = 3 columns, top pad (16 - 6) / 2 = 5 rows.
    EXPECT_EQ(out[c * 256 + 0], pad);
    EXPECT_EQ(out[c * 256 + 5 * 16 + 2], pad);
    EXPECT_EQ(out[c * 256 + 5 * 16 + 3], white);
    EXPECT_EQ(out[c * 256 + 10 * 16 + 12], white);
    EXPECT_EQ(out[c * 256 + 10 * 16 + 13], pad);
    EXPECT_EQ(out[c * 256 + 11 * 16 + 3], pad);
  }
}

// spec.channels_last writes the same values HWC: a real photo (resized and cropped) and a small
// image that is padded.
TEST_F(PreprocessTest, ChannelsLastIsTheSameValuesInterleaved) {
  const auto photo = img::decode_file(
      fs::path(LOOKALIKE_SHARED_DIR) / "datasets/clothing-small/test/shoes" /
      fs::directory_iterator(fs::path(LOOKALIKE_SHARED_DIR) / "datasets/clothing-small/test/shoes")
          ->path()
          .filename());
  img::RgbImage tiny{10, 6, std::vector<std::uint8_t>(10 * 6 * 3)};
  for (std::size_t i = 0; i < tiny.pixels.size(); ++i) tiny.pixels[i] = std::uint8_t(i * 7);
  struct Case {
    const img::RgbImage* image;
    int width, height, resize, crop;
  };
  for (const Case& k : {Case{&photo.rgb, photo.source_width, photo.source_height, 256, 224},
                        Case{&tiny, 10, 6, 0, 16}}) {
    img::PreprocessSpec spec;
    spec.resize_shorter = k.resize;
    spec.crop = k.crop;
    const std::size_t plane = std::size_t(k.crop) * k.crop;
    std::vector<float> chw(3 * plane), hwc(3 * plane, -99.0f);
    img::preprocess(*k.image, k.width, k.height, spec, chw.data());
    spec.channels_last = true;
    img::preprocess(*k.image, k.width, k.height, spec, hwc.data());
    std::size_t mismatches = 0;
    for (std::size_t p = 0; p < plane; ++p) {
      for (int c = 0; c < 3; ++c) mismatches += hwc[p * 3 + c] != chw[c * plane + p];
    }
    EXPECT_EQ(mismatches, 0u) << k.width << " x " << k.height << " crop " << k.crop;
  }
}

TEST_F(PreprocessTest, BadArgumentsAreRefused) {
  img::RgbImage pixel{1, 1, {1, 2, 3}};
  std::vector<float> out(3 * 224 * 224);
  img::PreprocessSpec spec;
  spec.interpolation = "lanczos";
  EXPECT_THROW(img::preprocess(pixel, 1, 1, spec, out.data()), std::invalid_argument);
  spec = {};
  spec.crop = 0;
  EXPECT_THROW(img::preprocess(pixel, 1, 1, spec, out.data()), std::invalid_argument);
  spec = {};
  spec.std = {0.2f, 0.0f, 0.2f};
  EXPECT_THROW(img::preprocess(pixel, 1, 1, spec, out.data()), std::invalid_argument);
  img::RgbImage broken{4, 4, std::vector<std::uint8_t>(5)};
  EXPECT_THROW(img::preprocess(broken, 4, 4, {}, out.data()), std::invalid_argument);
  EXPECT_THROW(img::preprocess(pixel, 0, 1, {}, out.data()), std::invalid_argument);
  EXPECT_THROW(img::resize(pixel, 0, 5, "bilinear"), std::invalid_argument);
}

// 1 x 9,000,000 resizes to 256 x 2,304,000,000: past int, which overflowed before.
TEST_F(PreprocessTest, ResizedSizeIsSixtyFourBit) {
  EXPECT_EQ(img::resized_size(1, 9'000'000, 256),
            (std::array<std::int64_t, 2>{256, 2'304'000'000}));
  EXPECT_EQ(img::resized_size(9'000'000, 1, 256),
            (std::array<std::int64_t, 2>{2'304'000'000, 256}));
  EXPECT_EQ(img::resized_size(4, 2'000'000, 256), (std::array<std::int64_t, 2>{256, 128'000'000}));
}

namespace {

// A w x h image of smooth, position-dependent colours (every tap weight matters).
img::RgbImage ramp(int w, int h) {
  img::RgbImage im{w, h, std::vector<std::uint8_t>(std::size_t(w) * h * 3)};
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      auto* p = &im.pixels[(std::size_t(y) * w + x) * 3];
      p[0] = std::uint8_t((x * 37 + y * 11) % 256);
      p[1] = std::uint8_t((y * 3) % 256);
      p[2] = std::uint8_t(128 + 100 * std::sin(x * 0.7 + y * 0.05));
    }
  }
  return im;
}

// torchvision's pipeline spelled out with the (PIL-exact, ResizeEqualsPil) full resize: what
// the windowed preprocess must equal.
std::vector<float> via_full_resize(const img::RgbImage& src, const img::PreprocessSpec& spec) {
  const auto [rw, rh] = img::resized_size(src.width, src.height, spec.resize_shorter);
  const img::RgbImage full = img::resize(src, int(rw), int(rh), spec.interpolation);
  const int x0 = int(std::nearbyint((rw - spec.crop) / 2.0));
  const int y0 = int(std::nearbyint((rh - spec.crop) / 2.0));
  std::vector<float> out(std::size_t(3) * spec.crop * spec.crop);
  for (int c = 0; c < 3; ++c) {
    for (int y = 0; y < spec.crop; ++y) {
      for (int x = 0; x < spec.crop; ++x) {
        const int v = full.pixels[(std::size_t(y0 + y) * full.width + x0 + x) * 3 + c];
        out[(std::size_t(c) * spec.crop + y) * spec.crop + x] =
            (float(v) / 255.0f - spec.mean[c]) / spec.std[c];
      }
    }
  }
  return out;
}

}  // namespace

// Only the crop window's taps are computed now (at their offset in the resized image); the
// result must be the full resize's crop bit for bit, for long images both ways and both filters.
TEST_F(PreprocessTest, WindowEqualsCropOfTheFullResizeForElongatedImages) {
  for (const auto& [w, h] : {std::pair{5, 600}, std::pair{600, 5}, std::pair{7, 401},
                             std::pair{2600, 301}, std::pair{1, 120}}) {
    for (const char* filter : {"bilinear", "bicubic"}) {
      img::PreprocessSpec spec;
      spec.interpolation = filter;
      const img::RgbImage src = ramp(w, h);
      std::vector<float> got(std::size_t(3) * spec.crop * spec.crop);
      img::preprocess(src, w, h, spec, got.data());
      EXPECT_EQ(got, via_full_resize(src, spec)) << w << "x" << h << " " << filter;
    }
  }
}

// 27 MB of pixels; the old code wanted 2.3e9 x 3 taps (27 GB) and overflowed int first.
// 1 x 90,000 has the same geometry around the crop (scale 1/256, the colour change 0.4375
// source rows below the crop's first row), with every size within int: the same tensor.
TEST_F(PreprocessTest, OneByNineMillionPreprocessesLikeItsSmallAnalogue) {
  auto tensor = [](int h) {
    img::RgbImage tall{1, h, std::vector<std::uint8_t>(std::size_t(h) * 3)};
    for (int y = 0; y < h; ++y) tall.pixels[std::size_t(y) * 3] = y < h / 2 ? 200 : 20;
    std::vector<float> out(3 * 224 * 224);
    img::preprocess(tall, 1, h, {}, out.data(), "tall.png");
    return out;
  };
  const auto start = std::chrono::steady_clock::now();
  const auto huge = tensor(9'000'000);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 1.0);
  const auto small = tensor(90'000);
  EXPECT_EQ(huge, small);
  EXPECT_GT(huge[0], huge[223 * 224]) << "the crop should straddle the colour change";
}
