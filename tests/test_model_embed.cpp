// The exported MobileNetV2 archive in C++ against eager torchvision on real clothing-small photos.
#include <gtest/gtest.h>
#include <xxhash.h>

#include <regex>
#include <thread>

#include "model/embedding_model.h"
#include "tests/model_test_util.h"

namespace lookalike::model {
namespace {

using namespace lookalike::model::testing;
using nlohmann::json;

// Each test runs in its own process (gtest_discover_tests), so the model, the reference and the
// 32-image batch are built on first use only, by the tests that need them.
class ModelEmbed : public ::testing::Test {
 protected:
  static const Reference& ref() {
    static const Reference r = load_reference();
    return r;
  }
  static EmbeddingModel& model() {
    static const auto m = EmbeddingModel::load(kMobileNetArchive, {.threads = 2});
    return *m;
  }
  // All reference images in one embed() call.
  static const std::vector<float>& batch() {
    static const std::vector<float> b = model().embed(ref().input.data(), ref().count);
    return b;
  }
  static const float* row(const std::vector<float>& v, int i) { return v.data() + i * 1280; }
};

TEST_F(ModelEmbed, MatchesEagerTorchvisionPerRow) {
  ASSERT_EQ(ref().dim, 1280);
  ASSERT_EQ(batch().size(), static_cast<size_t>(ref().count) * 1280);
  double worst = 1;
  for (int i = 0; i < ref().count; ++i) {
    const double c = cosine(row(batch(), i), ref().embedding(i), 1280);
    EXPECT_GE(c, 0.9999) << "image " << i;
    worst = std::min(worst, c);
  }
  std::cout << "over " << ref().count << " photos: 1 - min cosine vs eager = " << 1 - worst << "\n";
}

TEST_F(ModelEmbed, RowsAreL2Normalised) {
  for (int i = 0; i < ref().count; ++i)
    EXPECT_NEAR(dot(row(batch(), i), row(batch(), i), 1280), 1.0, 1e-5) << "row " << i;
  // The reference itself is not normalised, so this is the model's doing, not the archive's.
  EXPECT_GT(std::abs(dot(ref().embedding(0), ref().embedding(0), 1280) - 1.0), 0.1);
}

TEST_F(ModelEmbed, AnImageEmbedsTheSameAloneAsInABatchOf32) {
  ASSERT_EQ(ref().count, 32);
  for (int i : {0, 13, 31}) {
    const std::vector<float> alone = model().embed(ref().image(i), 1);
    ASSERT_EQ(alone.size(), 1280u);
    EXPECT_GE(cosine(alone.data(), row(batch(), i), 1280), 0.99999) << "image " << i;
    EXPECT_LT(max_abs_diff(alone.data(), row(batch(), i), 1280), 1e-5) << "image " << i;
  }
}

TEST_F(ModelEmbed, MaxBatchSplitsWithoutChangingResults) {
  auto small = EmbeddingModel::load(kMobileNetArchive, {.threads = 2, .max_batch = 5});
  const std::vector<float> out = small->embed(ref().input.data(), 12);  // 5 + 5 + 2
  ASSERT_EQ(out.size(), 12u * 1280);
  for (int i = 0; i < 12; ++i)
    EXPECT_LT(max_abs_diff(row(out, i), row(batch(), i), 1280), 1e-5) << "image " << i;
}

TEST_F(ModelEmbed, UnoptimisedModuleAgrees) {
  auto plain = EmbeddingModel::load(kMobileNetArchive, {.threads = 2, .optimize = false});
  const std::vector<float> out = plain->embed(ref().input.data(), 2);  // eager is slow
  for (int i = 0; i < 2; ++i) {
    EXPECT_GE(cosine(row(out, i), ref().embedding(i), 1280), 0.9999) << "image " << i;
    EXPECT_GE(cosine(row(out, i), row(batch(), i), 1280), 0.9999) << "image " << i;
  }
}

TEST_F(ModelEmbed, DimensionThreadsAndIdComeFromCardAndArchive) {
  EXPECT_EQ(model().dim(), 1280);
  EXPECT_EQ(model().card().embedding_dim, 1280);
  EXPECT_EQ(model().card().name, "mobilenet_v2");
  EXPECT_EQ(model().threads(), 2);
  EXPECT_EQ(model().archive(), kMobileNetArchive);
  EXPECT_TRUE(std::regex_match(model().id(), std::regex("mobilenet_v2@[0-9a-f]{16}")))
      << model().id();

  // The id's digest is XXH3-128 of the archive bytes, canonical (big-endian) hex, first 8 bytes.
  const std::string bytes = read_text(kMobileNetArchive);
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, XXH3_128bits(bytes.data(), bytes.size()));
  char hex[17];
  for (int i = 0; i < 8; ++i) std::snprintf(hex + 2 * i, 3, "%02x", canonical.digest[i]);
  EXPECT_EQ(model().id(), std::string("mobilenet_v2@") + hex);

  auto by_card =
      EmbeddingModel::load(fs::path(kMobileNetArchive).replace_extension(".json"), {.threads = 0});
  EXPECT_EQ(by_card->id(), model().id());
  EXPECT_EQ(by_card->threads(), static_cast<int>(std::thread::hardware_concurrency()));
}

TEST_F(ModelEmbed, IdFollowsContentNotLocation) {
  ScratchDir dir;
  fs::copy_file(kMobileNetArchive, dir / "mobilenet_v2.pt");
  fs::copy_file(fs::path(kMobileNetArchive).replace_extension(".json"), dir / "mobilenet_v2.json");
  EXPECT_EQ(EmbeddingModel::load(dir / "mobilenet_v2.pt", {.threads = 1})->id(), model().id());
}

TEST_F(ModelEmbed, CardThatDisagreesWithTheArchiveIsRefused) {
  ScratchDir dir;
  const fs::path archive = dir / "mislabelled.pt";
  fs::copy_file(kMobileNetArchive, archive);
  json card = json::parse(read_text(fs::path(kMobileNetArchive).replace_extension(".json")));

  card["embedding_dim"] = 1000;
  write_text(dir / "mislabelled.json", card.dump());
  try {
    EmbeddingModel::load(archive, {.threads = 1});
    ADD_FAILURE() << "a card claiming 1000-d for a 1280-d archive was accepted";
  } catch (const ModelError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(archive.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("1 x 1280"), std::string::npos) << msg;
    EXPECT_NE(msg.find("1 x 1000"), std::string::npos) << msg;
  }

  card["embedding_dim"] = 1280;
  card["method"] = "encode_image";
  write_text(dir / "mislabelled.json", card.dump());
  try {
    EmbeddingModel::load(archive, {.threads = 1});
    ADD_FAILURE() << "a card naming a missing method was accepted";
  } catch (const ModelError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(archive.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("'encode_image'"), std::string::npos) << msg;
  }
}

// `lookalike train` records the archive's digest in the card; a card whose digest is another
// archive's (a crash between train's two renames) is refused, one with its own loads.
TEST_F(ModelEmbed, CardRecordingAnotherArchivesDigestIsRefused) {
  ScratchDir dir;
  const fs::path archive = dir / "paired.pt";
  fs::copy_file(kMobileNetArchive, archive);
  json card = json::parse(read_text(fs::path(kMobileNetArchive).replace_extension(".json")));
  card.erase("precisions");
  const std::string id = model().id();
  const std::string digest = id.substr(id.find('@') + 1);
  ASSERT_EQ(digest.size(), 16U) << id;

  card["archive_digest"] = "0123456789abcdef";
  write_text(dir / "paired.json", card.dump());
  try {
    EmbeddingModel::load(archive, {.threads = 1});
    ADD_FAILURE() << "a card recording another archive's digest was accepted";
  } catch (const ModelError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find((dir / "paired.json").string() +
                       ": describes another archive (archive_digest 0123456789abcdef; " +
                       archive.string() + " is " + digest + ")"),
              std::string::npos)
        << msg;
  }
  card["archive_digest"] = digest;
  write_text(dir / "paired.json", card.dump());
  EXPECT_EQ(EmbeddingModel::load(archive, {.threads = 1})->id(), id);
}

TEST_F(ModelEmbed, BadEmbedArgumentsAreErrors) {
  EXPECT_TRUE(model().embed(ref().input.data(), 0).empty());
  EXPECT_THROW(model().embed(ref().input.data(), -1), ModelError);
  EXPECT_THROW(model().embed(nullptr, 2), ModelError);
  EXPECT_THROW(EmbeddingModel::load(kMobileNetArchive, {.max_batch = 0}), ModelError);
}

}  // namespace
}  // namespace lookalike::model
