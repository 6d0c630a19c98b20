// dedup: union-find groups against brute-force connected components, the representative rule,
// pHash and dHash distances on generated images written to files with libvips, the stored
// perceptual hash (schema 4: migration of an older catalog, lazy backfill, keep/clear on
// re-put), and groups at 20,000 vectors through an IVF index against a brute-force scan.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <vips/vips.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <numbers>
#include <random>
#include <set>

#include "dedup/dhash.h"
#include "dedup/duplicates.h"
#include "dedup/phash.h"
#include "image/decode.h"
#include "store/collection.h"
#include "store_test_util.h"

namespace lookalike::dedup {
namespace {

using store::Collection;
using store::ImageRecord;
using store::Put;
using testing::scratch_dir;
using testing::seeded_vector;

constexpr int kDim = 32;

store::CatalogConfig config(const std::string& metric = "cosine") {
  store::CatalogConfig c;
  c.model_id = "test@0000000000000000";
  c.model_name = "test";
  c.dim = kDim;
  c.metric = metric;
  return c;
}

std::vector<float> normalised(std::vector<float> v) {
  double sq = 0;
  for (float x : v) sq += double{x} * x;
  for (auto& x : v) x = static_cast<float>(x / std::sqrt(sq));
  return v;
}

// `bases` random directions, each with a few noisy copies at varying distances, plus loners: the
// similarity of a copy to its base spans the threshold, so some clusters chain and some split.
std::vector<Put> clustered_puts(int bases, int copies) {
  std::vector<Put> out;
  int n = 0;
  for (int b = 0; b < bases; ++b) {
    const auto base = seeded_vector(1000 + b, kDim);
    for (int c = 0; c <= copies; ++c) {
      const auto noise = seeded_vector(50'000 + n, kDim);
      const float eps = 0.15f * static_cast<float>(c);
      std::vector<float> v(kDim);
      for (int i = 0; i < kDim; ++i) v[i] = base[i] + eps * noise[i];
      Put p;
      p.record.path = "/photos/" + std::to_string(n) + ".jpg";
      p.record.content_hash = fmt::format("{:032x}", n);
      p.record.width = 100 + n;
      p.record.height = 100;
      p.embedding = normalised(v);
      out.push_back(std::move(p));
      ++n;
    }
  }
  return out;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += double{a[i]} * b[i];
  return s;
}

// Connected components of the graph "cosine >= threshold" over all pairs, as sets of paths.
std::set<std::set<std::string>> brute_force(const std::vector<Put>& puts, double threshold) {
  const auto n = puts.size();
  std::vector<std::size_t> label(n);
  for (std::size_t i = 0; i < n; ++i) label[i] = i;
  bool changed = true;
  while (changed) {  // label propagation to a fixed point: slow, obviously right
    changed = false;
    for (std::size_t i = 0; i < n; ++i) {
      for (std::size_t j = 0; j < n; ++j) {
        if (dot(puts[i].embedding, puts[j].embedding) >= threshold && label[j] < label[i]) {
          label[i] = label[j];
          changed = true;
        }
      }
    }
  }
  std::map<std::size_t, std::set<std::string>> by_label;
  for (std::size_t i = 0; i < n; ++i) by_label[label[i]].insert(puts[i].record.path);
  std::set<std::set<std::string>> out;
  for (auto& [l, paths] : by_label) {
    if (paths.size() >= 2) out.insert(paths);
  }
  return out;
}

std::set<std::set<std::string>> found(const DuplicateReport& r) {
  std::set<std::set<std::string>> out;
  for (const auto& g : r.groups) {
    std::set<std::string> paths;
    for (const auto& m : g.members) paths.insert(m.path);
    out.insert(paths);
  }
  return out;
}

TEST(DedupGroups, MatchBruteForceComponents) {
  const auto puts = clustered_puts(12, 5);
  auto c = Collection::create_or_open(scratch_dir("dedup_groups"), config());
  c->apply(puts, {});
  // k = n: every neighbour, the graph is complete; k = 10 (the default): clusters hold at most 5
  // neighbours of an image, so the top 10 still reach every link.
  for (int k : {static_cast<int>(puts.size()), kDefaultNeighbours}) {
    for (double threshold : {0.80, 0.90, 0.95}) {
      DuplicateOptions o;
      o.threshold = threshold;
      o.k = k;
      o.batch = 7;  // several batches, one ragged
      o.perceptual_hash = false;
      const auto r = find_duplicates(*c, o);
      const auto expected = brute_force(puts, threshold);
      EXPECT_GT(expected.size(), 1u) << threshold;
      EXPECT_EQ(found(r), expected) << "threshold " << threshold << ", k " << k;
      std::int64_t in_groups = 0;
      for (const auto& s : expected) in_groups += static_cast<std::int64_t>(s.size());
      EXPECT_EQ(r.images_in_groups, in_groups);
      EXPECT_EQ(r.images, static_cast<std::int64_t>(puts.size()));
      EXPECT_EQ(r.exact_groups, 0);
    }
  }
}

TEST(DedupGroups, ExactHashesGroupWhateverTheEmbedding) {
  auto puts = clustered_puts(3, 0);  // three unrelated vectors
  puts[2].record.content_hash = puts[0].record.content_hash;
  auto c = Collection::create_or_open(scratch_dir("dedup_exact"), config());
  c->apply(puts, {});
  DuplicateOptions o;
  o.threshold = 0.99;
  o.perceptual_hash = false;
  const auto r = find_duplicates(*c, o);
  ASSERT_EQ(r.groups.size(), 1u);
  EXPECT_EQ(found(r), (std::set<std::set<std::string>>{{"/photos/0.jpg", "/photos/2.jpg"}}));
  EXPECT_TRUE(r.groups[0].exact());
  EXPECT_EQ(r.exact_groups, 1);
  for (const auto& m : r.groups[0].members) EXPECT_TRUE(m.same_picture);
}

TEST(DedupGroups, RepresentativeLargestThenOldestThenSmallestId) {
  std::vector<ImageRecord> images(4);
  for (int i = 0; i < 4; ++i) {
    images[i].id = 10 + i;
    images[i].width = 100;
    images[i].height = 100;
    images[i].added_at_ms = 5000;
  }
  const std::vector<std::size_t> all = {0, 1, 2, 3};
  EXPECT_EQ(pick_representative(images, all), 0u);  // all equal: smallest id
  images[2].added_at_ms = 4000;
  EXPECT_EQ(pick_representative(images, all), 2u);  // oldest
  images[3].width = 101;
  EXPECT_EQ(pick_representative(images, all), 3u);  // largest beats oldest
  images[1].width = 50;
  images[1].height = 300;  // 15,000 pixels > 10,100
  EXPECT_EQ(pick_representative(images, all), 1u);
}

TEST(DedupGroups, RepresentativeFirstWithSimilarityToIt) {
  auto puts = clustered_puts(1, 2);
  puts[1].record.width = 4000;  // the largest image represents the group
  auto c = Collection::create_or_open(scratch_dir("dedup_rep"), config());
  const auto ids = c->apply(puts, {});
  DuplicateOptions o;
  o.threshold = 0.5;
  o.perceptual_hash = false;
  const auto r = find_duplicates(*c, o);
  ASSERT_EQ(r.groups.size(), 1u);
  const auto& g = r.groups[0];
  EXPECT_EQ(g.representative, ids[1]);
  ASSERT_EQ(g.members.size(), 3u);
  EXPECT_EQ(g.members[0].id, ids[1]);
  EXPECT_DOUBLE_EQ(g.members[0].similarity, 1.0);
  for (std::size_t i = 1; i < 3; ++i) {
    const auto& m = g.members[i];
    const auto& p = puts[m.id == ids[0] ? 0 : 2];
    EXPECT_NEAR(m.similarity, dot(p.embedding, puts[1].embedding), 1e-5);
    EXPECT_FALSE(m.same_picture);  // no content hash match and no perceptual hash asked for
  }
  EXPECT_GE(g.members[1].similarity, g.members[2].similarity);
}

TEST(DedupGroups, UnreadableFilesAreSimilarWithANote) {
  auto puts = clustered_puts(1, 1);  // paths under /photos do not exist
  auto c = Collection::create_or_open(scratch_dir("dedup_unreadable"), config());
  c->apply(puts, {});
  DuplicateOptions o;
  o.threshold = 0.5;
  const auto r = find_duplicates(*c, o);
  ASSERT_EQ(r.groups.size(), 1u);
  const auto& m = r.groups[0].members[1];
  EXPECT_FALSE(m.same_picture);
  EXPECT_EQ(m.hamming, -1);
  EXPECT_NE(m.note.find("/photos/"), std::string::npos) << m.note;
}

TEST(DedupOptions, RefusedOutOfRangeAndL2) {
  auto c = Collection::create_or_open(scratch_dir("dedup_options"), config());
  DuplicateOptions o;
  o.threshold = 1.5;
  EXPECT_THROW(find_duplicates(*c, o), DuplicateOptionError);
  o.threshold = 0.9;
  o.k = 0;
  EXPECT_THROW(find_duplicates(*c, o), DuplicateOptionError);
  auto l2 = Collection::create_or_open(scratch_dir("dedup_l2"), config("l2"));
  try {
    find_duplicates(*l2, {});
    FAIL() << "l2 accepted";
  } catch (const DuplicateError& e) {
    EXPECT_NE(std::string(e.what()).find("metric l2"), std::string::npos) << e.what();
  }
}

TEST(DedupOptions, DefaultThresholdPerModel) {
  EXPECT_DOUBLE_EQ(default_threshold("mobilenet_v2@1a2b3c4d5e6f7a8b"), 0.90);
  EXPECT_DOUBLE_EQ(default_threshold("resnet50@1a2b3c4d5e6f7a8b"), 0.90);
  EXPECT_DOUBLE_EQ(default_threshold("other@00"), kDefaultThreshold);
}

// The report says where its threshold came from, and that a model without a measured default
// (a trained head, here "test") has none.
TEST(DedupOptions, ThresholdSourceSaysWhenTheDefaultIsUnmeasured) {
  auto c = Collection::create_or_open(scratch_dir("dedup_source"), config());
  c->apply(clustered_puts(2, 2), {});
  DuplicateOptions o;
  o.perceptual_hash = false;
  auto r = find_duplicates(*c, o);
  EXPECT_NE(r.threshold_source.find("default, not measured for test"), std::string::npos)
      << r.threshold_source;
  o.threshold = 0.95;
  EXPECT_EQ(find_duplicates(*c, o).threshold_source, "--threshold");
}

// Whether the default was measured is the model card's to say, not the name's: a head trained
// with `lookalike train --out mobilenet_v2.pt` carries the measured model's name.
TEST(DedupOptions, MeasuredDefaultNeedsThePretrainedCardNotJustTheName) {
  auto cfg = config();
  cfg.model_id = "mobilenet_v2@0000000000000000";
  cfg.model_name = "mobilenet_v2";
  auto c = Collection::create_or_open(scratch_dir("dedup_measured"), cfg);
  c->apply(clustered_puts(2, 2), {});
  DuplicateOptions o;
  o.perceptual_hash = false;
  o.model_kind = dedup::ModelKind::kPretrained;
  EXPECT_EQ(find_duplicates(*c, o).threshold_source, "default for mobilenet_v2");
  o.model_kind = dedup::ModelKind::kTrained;
  auto source = find_duplicates(*c, o).threshold_source;
  EXPECT_EQ(source.rfind("default, not measured for mobilenet_v2 (a head trained", 0), 0u)
      << source;
  o.model_kind = dedup::ModelKind::kUnknown;
  o.model_note = "no model 'mobilenet_v2'";
  source = find_duplicates(*c, o).threshold_source;
  EXPECT_NE(source.find("not measured for mobilenet_v2"), std::string::npos) << source;
  EXPECT_NE(source.find("no model 'mobilenet_v2'"), std::string::npos) << source;
  EXPECT_FALSE(dedup::measured_default("mobilenet_v2@0", dedup::ModelKind::kTrained));
  EXPECT_TRUE(dedup::measured_default("resnet50@0", dedup::ModelKind::kPretrained));
  EXPECT_FALSE(dedup::measured_default("vit_b_16@0", dedup::ModelKind::kPretrained));
}

TEST(DisjointSets, UnionsAndSizes) {
  DisjointSets s(6);
  EXPECT_TRUE(s.unite(0, 1));
  EXPECT_TRUE(s.unite(2, 3));
  EXPECT_TRUE(s.unite(1, 3));
  EXPECT_FALSE(s.unite(0, 2));
  EXPECT_EQ(s.find(0), s.find(3));
  EXPECT_NE(s.find(0), s.find(4));
  EXPECT_EQ(s.size_of(2), 4u);
  EXPECT_EQ(s.size_of(5), 1u);
}

// A smooth pattern (sum of two sinusoids, phase by `seed`), scaled by `gain` and offset by
// `offset` (clipped to 0..255), of w x h pixels.
image::RgbImage pattern(int w, int h, int seed, double gain = 1.0, double offset = 0.0) {
  image::RgbImage img{w, h, std::vector<std::uint8_t>(static_cast<std::size_t>(w) * h * 3)};
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      const double u = static_cast<double>(x) / w, v = static_cast<double>(y) / h;
      const double s = std::sin(6.1 * u * (1 + seed % 3) + seed) +
                       std::cos(5.3 * v * (1 + seed % 2) + 2.0 * u * seed + 0.7 * seed);
      const double luma = std::clamp(offset + gain * (127.5 + 60.0 * s), 0.0, 255.0);
      auto* p = &img.pixels[(static_cast<std::size_t>(y) * w + x) * 3];
      p[0] = static_cast<std::uint8_t>(luma);
      p[1] = static_cast<std::uint8_t>(std::clamp(luma * 0.9, 0.0, 255.0));
      p[2] = static_cast<std::uint8_t>(std::clamp(luma * 1.1, 0.0, 255.0));
    }
  }
  return img;
}

std::filesystem::path write(const image::RgbImage& img, const std::string& name) {
  // One folder per test: ctest runs the tests of this file as parallel processes, and
  // scratch_dir empties the folder it is given.
  static const auto dir =
      scratch_dir(std::string("dedup_dhash_") +
                  ::testing::UnitTest::GetInstance()->current_test_info()->name());
  image::init_decoder();
  VipsImage* v = vips_image_new_from_memory_copy(img.pixels.data(), img.pixels.size(), img.width,
                                                 img.height, 3, VIPS_FORMAT_UCHAR);
  EXPECT_NE(v, nullptr);
  const auto path = dir / name;
  const int rc = vips_image_write_to_file(v, path.c_str(), nullptr);
  g_object_unref(v);
  EXPECT_EQ(rc, 0) << vips_error_buffer();
  return path;
}

// A crop of `fraction` off every side.
image::RgbImage crop(const image::RgbImage& img, double fraction) {
  const int dx = static_cast<int>(img.width * fraction),
            dy = static_cast<int>(img.height * fraction);
  image::RgbImage out{img.width - 2 * dx, img.height - 2 * dy, {}};
  for (int y = dy; y < img.height - dy; ++y) {
    const auto* row = &img.pixels[(static_cast<std::size_t>(y) * img.width + dx) * 3];
    out.pixels.insert(out.pixels.end(), row, row + out.width * 3);
  }
  return out;
}

TEST(DHash, EditsOfOnePictureAreCloseOthersFar) {
  const auto original = dhash_file(write(pattern(640, 480, 1), "original.png"));
  const auto jpeg = dhash_file(write(pattern(640, 480, 1), "reencoded.jpg"));
  const auto half = dhash_file(write(pattern(320, 240, 1), "half.png"));
  const auto bright = dhash_file(write(pattern(640, 480, 1, 1.1, 20), "bright.png"));
  const auto cropped = dhash_file(write(crop(pattern(640, 480, 1), 0.05), "crop.png"));
  for (auto [name, h] :
       {std::pair{"jpeg", jpeg}, {"half", half}, {"bright", bright}, {"crop", cropped}}) {
    EXPECT_LE(hamming(original, h), kSamePictureMaxHamming) << name;
  }
  EXPECT_EQ(hamming(original, original), 0);
  for (int seed : {2, 3, 4, 5}) {
    const auto other = dhash_file(write(pattern(640, 480, seed), fmt::format("o{}.png", seed)));
    EXPECT_GT(hamming(original, other), 2 * kSamePictureMaxHamming) << "seed " << seed;
  }
}

TEST(DHash, BitsFollowKrawetz) {
  // Brightness falling left to right: every pixel is brighter than its right neighbour.
  image::RgbImage falling{90, 80, std::vector<std::uint8_t>(90 * 80 * 3)};
  for (int y = 0; y < 80; ++y) {
    for (int x = 0; x < 90; ++x) {
      for (int c = 0; c < 3; ++c) falling.pixels[(y * 90 + x) * 3 + c] = 250 - 2 * x;
    }
  }
  EXPECT_EQ(dhash(falling), ~std::uint64_t{0});
  EXPECT_EQ(hamming(0, ~std::uint64_t{0}), 64);
  EXPECT_THROW(dhash(image::RgbImage{8, 8, std::vector<std::uint8_t>(8 * 8 * 3)}),
               std::invalid_argument);
}

TEST(DHash, UnreadableFileNamesIt) {
  const auto path = scratch_dir("dedup_bad") / "not-an-image.jpg";
  { std::ofstream(path) << "hello"; }
  try {
    dhash_file(path);
    FAIL() << "no error";
  } catch (const image::DecodeError& e) {
    EXPECT_NE(std::string(e.what()).find("not-an-image.jpg"), std::string::npos) << e.what();
  }
}

// Something closer to a photo for pHash than two sinusoids (whose few strong DCT coefficients
// leave the median among near-zero ones, where noise decides the bits): 16 soft blobs of
// random place, size and brightness over a gradient, luma in about 40..200 times `gain`.
image::RgbImage blobs(int w, int h, int seed, double gain = 1.0) {
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::uniform_real_distribution<double> u(0.0, 1.0);
  struct Blob {
    double x, y, r, a;
  };
  std::vector<Blob> bs;
  for (int i = 0; i < 16; ++i) bs.push_back({u(rng), u(rng), 0.05 + 0.2 * u(rng), u(rng) - 0.5});
  image::RgbImage img{w, h, std::vector<std::uint8_t>(static_cast<std::size_t>(w) * h * 3)};
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      const double px = static_cast<double>(x) / w, py = static_cast<double>(y) / h;
      double v = 0.3 * px;
      for (const auto& b : bs) {
        const double d2 = (px - b.x) * (px - b.x) + (py - b.y) * (py - b.y);
        v += b.a * std::exp(-d2 / (b.r * b.r));
      }
      const double luma = std::clamp(gain * (120.0 + 80.0 * std::tanh(v)), 0.0, 255.0);
      auto* p = &img.pixels[(static_cast<std::size_t>(y) * w + x) * 3];
      p[0] = p[1] = p[2] = static_cast<std::uint8_t>(luma);
    }
  }
  return img;
}

image::RgbImage mirror(const image::RgbImage& img) {
  auto out = img;
  for (int y = 0; y < img.height; ++y) {
    for (int x = 0; x < img.width; ++x) {
      for (int c = 0; c < 3; ++c) {
        out.pixels[(static_cast<std::size_t>(y) * img.width + x) * 3 + c] =
            img.pixels[(static_cast<std::size_t>(y) * img.width + (img.width - 1 - x)) * 3 + c];
      }
    }
  }
  return out;
}

TEST(PHash, EditsOfOnePictureAreCloseFlipsAndOthersFar) {
  const auto original = picture_hash_file(write(blobs(640, 480, 1), "p-original.png"));
  const auto jpeg = picture_hash_file(write(blobs(640, 480, 1), "p-reencoded.jpg"));
  const auto half = picture_hash_file(write(blobs(320, 240, 1), "p-half.png"));
  const auto bright = picture_hash_file(write(blobs(640, 480, 1, 1.2), "p-bright.png"));
  // 5% off every side: the case the centre hash is for.
  const auto cropped = picture_hash_file(write(crop(blobs(640, 480, 1), 0.05), "p-crop.png"));
  for (auto [name, h] :
       {std::pair{"jpeg", jpeg}, {"half", half}, {"bright", bright}, {"crop", cropped}}) {
    EXPECT_LE(distance(original, h), kSamePictureMaxDistance) << name;
    EXPECT_EQ(distance(original, h), distance(h, original)) << name;
  }
  EXPECT_LE(distance(original, cropped), 3);
  EXPECT_EQ(distance(original, original), 0);
  const auto flipped = picture_hash_file(write(mirror(blobs(640, 480, 1)), "p-flip.png"));
  EXPECT_GT(distance(original, flipped), kSamePictureMaxDistance);
  for (int seed : {2, 3, 4, 5}) {
    const auto other =
        picture_hash_file(write(blobs(640, 480, seed), fmt::format("p-o{}.png", seed)));
    EXPECT_GT(distance(original, other), kSamePictureMaxDistance) << "seed " << seed;
  }
}

TEST(PHash, MedianSplitsTheBlockAndSmallImagesAreRefused) {
  const auto h = picture_hash(pattern(64, 48, 3));
  // Bits above the median of 64 distinct coefficients: exactly half.
  EXPECT_EQ(std::popcount(h.full), 32);
  EXPECT_EQ(std::popcount(h.center95), 32);
  EXPECT_EQ(std::popcount(h.center90), 32);
  EXPECT_THROW(picture_hash(image::RgbImage{31, 40, std::vector<std::uint8_t>(31 * 40 * 3)}),
               std::invalid_argument);
  EXPECT_THROW(picture_hash(image::RgbImage{40, 40, std::vector<std::uint8_t>(10)}),
               std::invalid_argument);
  const auto small = write(pattern(20, 20, 1), "p-small.png");
  try {
    picture_hash_file(small);
    FAIL() << "no error";
  } catch (const image::DecodeError& e) {
    EXPECT_NE(std::string(e.what()).find("p-small.png"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("too small"), std::string::npos) << e.what();
  }
}

// The header's definition computed the plain way: every pixel weighted by the area it shares
// with each cell, luma with BT.601 weights, then the DCT-II block and the median. picture_hash
// sums the same areas through running integrals, one pass for all three frames
// (dedup/phash.cpp); sizes that put cell edges at odd fractions, one under a pixel a cell
// (center90 of a 33-pixel side), and colour so that the luma weights count.
std::uint64_t reference_hash(const image::RgbImage& img, double keep) {
  const double w = img.width, h = img.height;
  const double x0 = w * (1 - keep) / 2, y0 = h * (1 - keep) / 2;
  const double sx = (w - 2 * x0) / 32, sy = (h - 2 * y0) / 32;
  std::vector<double> g(32 * 32, 0.0);
  for (int y = 0; y < img.height; ++y) {
    for (int x = 0; x < img.width; ++x) {
      const auto* p = &img.pixels[(static_cast<std::size_t>(y) * img.width + x) * 3];
      const double luma = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
      for (int r = 0; r < 32; ++r) {
        const double oy = std::min(y + 1.0, y0 + (r + 1) * sy) - std::max<double>(y, y0 + r * sy);
        if (oy <= 0) continue;
        for (int c = 0; c < 32; ++c) {
          const double ox = std::min(x + 1.0, x0 + (c + 1) * sx) - std::max<double>(x, x0 + c * sx);
          if (ox > 0) g[r * 32 + c] += ox * oy * luma / (sx * sy);
        }
      }
    }
  }
  std::vector<double> coeff;
  for (int u = 1; u <= 8; ++u) {
    for (int v = 1; v <= 8; ++v) {
      double sum = 0;
      for (int y = 0; y < 32; ++y) {
        for (int x = 0; x < 32; ++x) {
          sum += g[y * 32 + x] * std::cos(std::numbers::pi * (2 * y + 1) * u / 64.0) *
                 std::cos(std::numbers::pi * (2 * x + 1) * v / 64.0);
        }
      }
      coeff.push_back(sum);
    }
  }
  auto sorted = coeff;
  std::sort(sorted.begin(), sorted.end());
  const double median = (sorted[31] + sorted[32]) / 2;
  std::uint64_t bits = 0;
  for (double c : coeff) bits = (bits << 1) | (c > median ? 1u : 0u);
  return bits;
}

TEST(PHash, AreaAveragesMatchThePlainDefinition) {
  for (auto [w, h] : {std::pair{37, 45}, {101, 67}, {33, 700}, {400, 533}}) {
    auto img = blobs(w, h, w);
    const auto tint = blobs(w, h, h);  // another picture in the red channel
    for (std::size_t i = 0; i < img.pixels.size(); i += 3) img.pixels[i] = tint.pixels[i + 1];
    const auto hash = picture_hash(img);
    EXPECT_EQ(hash.full, reference_hash(img, 1.0)) << w << " x " << h;
    EXPECT_EQ(hash.center95, reference_hash(img, 0.95)) << w << " x " << h;
    EXPECT_EQ(hash.center90, reference_hash(img, 0.90)) << w << " x " << h;
  }
}

// A DCT-downscaled decode (what uploads and `duplicates` hash) and a full-size one (what the
// indexer hashes for photos whose shorter side is under twice the model's resize) give nearly
// one hash.
TEST(PHash, ThumbnailDecodeMatchesFullDecode) {
  const auto path = write(blobs(800, 600, 7), "p-large.jpg");
  image::DecodeOptions full;
  const auto from_full = picture_hash(image::decode_file(path, full).rgb);
  const auto from_thumb = picture_hash_file(path);
  EXPECT_LE(distance(from_full, from_thumb), 2);
}

store::StoredPictureHash stored(const PictureHash& h) { return {h.full, h.center95, h.center90}; }

// Groups judge "same picture" from the stored hashes (the files here do not exist), set by set:
// a flipped copy is a picture of its own even when it represents the group.
TEST(DedupPictures, StoredHashesNumberTheSamePictureSets) {
  auto puts = clustered_puts(1, 3);  // one base and three close copies
  const auto base = picture_hash(blobs(640, 480, 1));
  const auto edit = picture_hash(blobs(640, 480, 1, 1.2));
  const auto flip = picture_hash(mirror(blobs(640, 480, 1)));
  puts[0].record.picture_hash = stored(base);
  puts[1].record.picture_hash = stored(edit);
  puts[2].record.picture_hash = stored(flip);
  puts[2].record.width = 5000;                 // the flip represents the group
  puts[3].record.picture_hash = std::nullopt;  // no hash, no file: a picture of its own
  auto c = Collection::create_or_open(scratch_dir("dedup_pictures"), config());
  const auto ids = c->apply(puts, {});
  DuplicateOptions o;
  o.threshold = 0.3;
  const auto r = find_duplicates(*c, o);
  ASSERT_EQ(r.groups.size(), 1u);
  const auto& g = r.groups[0];
  EXPECT_EQ(g.representative, ids[2]);
  std::map<std::int64_t, DuplicateMember> by_id;
  for (const auto& m : g.members) by_id[m.id] = m;
  EXPECT_EQ(by_id[ids[2]].picture, 0);
  EXPECT_TRUE(by_id[ids[2]].same_picture);
  EXPECT_NE(by_id[ids[0]].picture, 0);
  EXPECT_EQ(by_id[ids[0]].picture, by_id[ids[1]].picture);  // base and its edit: one picture
  EXPECT_FALSE(by_id[ids[0]].same_picture);
  EXPECT_GT(by_id[ids[0]].hamming, kSamePictureMaxDistance);  // distance to the flip
  EXPECT_NE(by_id[ids[3]].picture, by_id[ids[0]].picture);
  EXPECT_NE(by_id[ids[3]].picture, 0);
  EXPECT_EQ(by_id[ids[3]].hamming, -1);
  EXPECT_NE(by_id[ids[3]].note.find("/photos/"), std::string::npos) << by_id[ids[3]].note;
  EXPECT_TRUE(r.computed_hashes.empty());
}

// Rows without a hash are hashed from their files once, then stored; the next run reads them.
TEST(DedupPictures, MissingHashesAreComputedAndStored) {
  auto puts = clustered_puts(1, 1);
  puts[0].record.path = write(blobs(640, 480, 1), "b-original.png").string();
  puts[1].record.path = write(blobs(640, 480, 1, 1.2), "b-bright.png").string();
  auto c = Collection::create_or_open(scratch_dir("dedup_backfill"), config());
  c->apply(puts, {});
  DuplicateOptions o;
  o.threshold = 0.5;
  const auto first = find_duplicates(*c, o);
  ASSERT_EQ(first.groups.size(), 1u);
  EXPECT_TRUE(first.groups[0].members[1].same_picture);
  ASSERT_EQ(first.computed_hashes.size(), 2u);
  EXPECT_EQ(store_computed_hashes(*c, first), 2);
  for (const auto& r : c->list()) ASSERT_TRUE(r.picture_hash) << r.path;
  const auto second = find_duplicates(*c, o);
  EXPECT_TRUE(second.computed_hashes.empty());
  EXPECT_EQ(second.groups[0].members[1].hamming, first.groups[0].members[1].hamming);
}

void raw_sql(const std::filesystem::path& db, const std::string& sql) {
  sqlite3* h = nullptr;
  ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
  char* err = nullptr;
  const int rc = sqlite3_exec(h, sql.c_str(), nullptr, nullptr, &err);
  EXPECT_EQ(rc, SQLITE_OK) << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(h);
}

// A schema-3 catalog (no phash columns) is read as it is by a read-only connection, and
// migrated with every row kept by a writer; a put without a hash keeps the stored one only for
// the same content.
TEST(CatalogSchema4, OlderCatalogReadsAndMigrates) {
  using store::Catalog;
  const auto path = scratch_dir("dedup_schema3") / "catalog.db";
  {
    auto c = Catalog::open(path, true);
    c->set_config(config());
    auto puts = clustered_puts(2, 0);
    puts[0].record.picture_hash = store::StoredPictureHash{1, 2, 3};
    c->write_batch(puts, {});
  }
  raw_sql(path,
          "ALTER TABLE images DROP COLUMN phash; ALTER TABLE images DROP COLUMN phash_95;"
          "ALTER TABLE images DROP COLUMN phash_90;"
          "UPDATE meta SET value = '3' WHERE key = 'schema_version';");
  {
    auto ro = Catalog::open_read_only(path);
    const auto rows = ro->list();
    ASSERT_EQ(rows.size(), 2u);
    EXPECT_FALSE(rows[0].picture_hash);
    EXPECT_EQ(ro->get(rows[1].id)->path, "/photos/1.jpg");
    EXPECT_THROW(ro->set_picture_hashes({{rows[0].id, rows[0].content_hash, {1, 2, 3}}}),
                 store::StoreError);
  }
  auto c = Catalog::open(path, false);  // migrates to 4
  auto rows = c->list();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_FALSE(rows[0].picture_hash);
  EXPECT_EQ(c->embedding(rows[0].id)->size(), static_cast<std::size_t>(kDim));
  // A stale content hash is not overwritten; the current one is.
  EXPECT_EQ(c->set_picture_hashes({{rows[0].id, "stale", {7, 8, 9}},
                                   {rows[1].id, rows[1].content_hash, {~0ull, 5, 6}}}),
            1);
  rows = c->list();
  EXPECT_FALSE(rows[0].picture_hash);
  ASSERT_TRUE(rows[1].picture_hash);
  EXPECT_EQ(rows[1].picture_hash->full, ~0ull);  // all 64 bits survive SQLite's signed integer
  EXPECT_EQ(rows[1].picture_hash->center95, 5u);
  EXPECT_EQ(rows[1].picture_hash->center90, 6u);
  // Re-put without a hash: same bytes keep it, new bytes clear it.
  auto puts = clustered_puts(2, 0);
  c->write_batch({puts[1]}, {});
  EXPECT_TRUE(c->get(rows[1].id)->picture_hash);
  puts[1].record.content_hash = "changed";
  c->write_batch({puts[1]}, {});
  EXPECT_FALSE(c->get(rows[1].id)->picture_hash);
  c.reset();
  // Opening again does not migrate twice (the columns are there).
  EXPECT_NO_THROW(Catalog::open(path, false));
}

// 20,000 generated vectors with planted near-duplicate pairs, through IVF with every list
// probed: the same groups as a brute-force scan of all pairs above the threshold.
TEST(DedupScale, IvfGroupsEqualBruteForceAt20k) {
  constexpr int n = 20'000, dim = 16, planted = 500;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<Put> puts;
  std::vector<std::vector<float>> vecs;
  for (int i = 0; i < n; ++i) {
    std::vector<float> v(dim);
    if (i >= n - planted) {
      v = vecs[static_cast<std::size_t>(i - (n - planted)) * 7];
      for (auto& x : v) x += 0.02f * normal(rng);
    } else {
      for (auto& x : v) x = normal(rng);
    }
    v = normalised(v);
    vecs.push_back(v);
    Put p;
    p.record.path = "/gen/" + std::to_string(i);
    p.record.content_hash = fmt::format("{:032x}", i);
    p.embedding = v;
    puts.push_back(std::move(p));
  }
  auto cfg = config();
  cfg.dim = dim;
  cfg.factory = "IVF64,Flat";
  auto c = Collection::create_or_open(scratch_dir("dedup_scale"), cfg);
  for (std::size_t b = 0; b < puts.size(); b += 5000) {
    c->apply(std::vector<Put>(puts.begin() + b, puts.begin() + b + 5000), {});
  }
  const double threshold = 0.97;
  // Brute force over all pairs, by blocks of rows: label propagation through union-find.
  DisjointSets truth(n);
  for (int i = 0; i < n; ++i) {
    for (int j = i + 1; j < n; ++j) {
      double s = 0;
      for (int d = 0; d < dim; ++d) s += double{vecs[i][d]} * vecs[j][d];
      if (s >= threshold) truth.unite(i, j);
    }
  }
  std::map<std::size_t, std::set<std::string>> by_root;
  for (int i = 0; i < n; ++i) {
    if (truth.size_of(i) > 1) by_root[truth.find(i)].insert(puts[i].record.path);
  }
  std::set<std::set<std::string>> expected;
  for (auto& [root, paths] : by_root) expected.insert(paths);
  DuplicateOptions o;
  o.threshold = threshold;
  o.k = 50;  // 16-d random vectors crowd: generous k so top-k holds every link
  o.perceptual_hash = false;
  o.params.nprobe = 64;
  const auto r = find_duplicates(*c, o);
  EXPECT_GE(expected.size(), static_cast<std::size_t>(planted) / 2);
  EXPECT_EQ(found(r), expected);
}

}  // namespace
}  // namespace lookalike::dedup
