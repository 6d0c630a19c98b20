// dedup: union-find groups against brute-force connected components, the representative rule,
// and dHash distances on generated images written to files with libvips.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <vips/vips.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "dedup/dhash.h"
#include "dedup/duplicates.h"
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
    EXPECT_FALSE(m.same_picture);  // no content hash match and no dHash asked for
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
  static const auto dir = scratch_dir("dedup_dhash");
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

}  // namespace
}  // namespace lookalike::dedup
