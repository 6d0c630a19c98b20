// eval/metrics.h on hand-computed rankings, and eval/labels.h on small folders and manifests.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "eval/labels.h"
#include "eval/metrics.h"

namespace fs = std::filesystem;
using namespace lookalike::eval;

namespace {

using Ranking = std::vector<std::uint8_t>;

TEST(EvalMetrics, RecallIsHitWithinTopK) {
  const Ranking r = {0, 0, 1, 0};
  EXPECT_EQ(recall_at_k(r, 1), 0.0);
  EXPECT_EQ(recall_at_k(r, 2), 0.0);
  EXPECT_EQ(recall_at_k(r, 3), 1.0);
  EXPECT_EQ(recall_at_k(r, 10), 1.0);  // k beyond the ranking
  EXPECT_EQ(recall_at_k(Ranking{}, 5), 0.0);
  EXPECT_THROW(recall_at_k(r, 0), std::invalid_argument);
}

TEST(EvalMetrics, PrecisionDividesByK) {
  const Ranking r = {1, 0, 1, 1, 0};
  EXPECT_DOUBLE_EQ(precision_at_k(r, 1), 1.0);
  EXPECT_DOUBLE_EQ(precision_at_k(r, 2), 0.5);
  EXPECT_DOUBLE_EQ(precision_at_k(r, 4), 0.75);
  // Fewer than k ranked: still divided by k (trec_eval's P_k).
  EXPECT_DOUBLE_EQ(precision_at_k(r, 10), 0.3);
  EXPECT_THROW(precision_at_k(r, -1), std::invalid_argument);
}

TEST(EvalMetrics, AveragePrecisionHandComputed) {
  EXPECT_DOUBLE_EQ(average_precision(Ranking{1, 0, 1, 0}, 2), (1.0 + 2.0 / 3.0) / 2.0);
  EXPECT_DOUBLE_EQ(average_precision(Ranking{0, 1, 0, 0, 1}, 2), (1.0 / 2.0 + 2.0 / 5.0) / 2.0);
  EXPECT_DOUBLE_EQ(average_precision(Ranking{1, 1, 1}, 3), 1.0);
  EXPECT_DOUBLE_EQ(average_precision(Ranking{0, 0, 0}, 2), 0.0);
  // A relevant item the ranking never reached counts 0: truncation lowers AP.
  EXPECT_DOUBLE_EQ(average_precision(Ranking{1, 0}, 2), 0.5);
  EXPECT_DOUBLE_EQ(average_precision(Ranking{0, 0}, 0), 0.0);
  EXPECT_THROW(average_precision(Ranking{1, 1}, 1), std::invalid_argument);
  EXPECT_THROW(average_precision(Ranking{}, -1), std::invalid_argument);
}

// AP by its other textbook form: the mean over relevant items of precision at their rank,
// written independently of metrics.cpp, on random rankings.
TEST(EvalMetrics, AveragePrecisionMatchesMeanOfPrecisionAtRelevantRanks) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 40);
    Ranking r(static_cast<std::size_t>(n));
    int relevant = 0;
    for (auto& x : r) relevant += (x = rng() % 3 == 0 ? 1 : 0);
    if (relevant == 0) continue;
    double sum = 0;
    for (int rank = 1; rank <= n; ++rank) {
      if (r[rank - 1]) sum += precision_at_k(r, rank);
    }
    EXPECT_NEAR(average_precision(r, relevant), sum / relevant, 1e-12);
  }
}

TEST(EvalMetrics, AccumulatorMeansAndQueriesWithoutRelevant) {
  MetricsAccumulator acc;
  acc.add(Ranking{1, 0, 1, 0}, 2);                    // AP 5/6, hit at 1
  acc.add(Ranking{0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, 1);  // AP 1/7, hit at 10 only
  acc.add(Ranking{0, 0, 0}, 0);                       // no relevant item: a miss, not in mAP
  const Metrics m = acc.result();
  EXPECT_EQ(m.queries, 3);
  EXPECT_EQ(m.queries_without_relevant, 1);
  EXPECT_EQ(m.queries_with_relevant(), 2);
  EXPECT_DOUBLE_EQ(m.recall_at_1, 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(m.recall_at_5, 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(m.recall_at_10, 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(m.precision_at_10, (0.2 + 0.1 + 0.0) / 3.0);
  EXPECT_DOUBLE_EQ(m.mean_ap, (5.0 / 6.0 + 1.0 / 7.0) / 2.0);
}

TEST(EvalMetrics, EmptyAccumulatorIsZero) {
  const Metrics m = MetricsAccumulator().result();
  EXPECT_EQ(m.queries, 0);
  EXPECT_EQ(m.mean_ap, 0.0);
}

class EvalLabels : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("lookalike-test-eval-" +
            std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path touch(const fs::path& rel) {
    const fs::path p = dir_ / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << "x";
    return p;
  }
  void write(const fs::path& rel, const std::string& text) { std::ofstream(dir_ / rel) << text; }
  fs::path dir_;
};

TEST_F(EvalLabels, FolderLabelIsFirstLevelSubfolder) {
  touch("set/dress/a.jpg");
  touch("set/dress/summer/b.png");
  touch("set/hat/c.jpg");
  touch("set/hat/notes.txt");  // not an image: ignored
  touch("set/cover.jpg");      // no class: skipped with a warning
  const LabelledSet s = load_labelled_set(dir_ / "set/");
  ASSERT_EQ(s.files.size(), 3u);
  EXPECT_EQ(s.files[0], dir_ / "set/dress/a.jpg");
  EXPECT_EQ(s.labels, (std::vector<std::string>{"dress", "dress", "hat"}));
  EXPECT_EQ(s.unlabelled, 1);
  ASSERT_EQ(s.skipped.size(), 1u);
  EXPECT_NE(s.skipped[0].find("cover.jpg"), std::string::npos);
}

TEST_F(EvalLabels, EmptyFolderAndMissingPathNameThePath) {
  fs::create_directories(dir_ / "empty");
  touch("flat/only.jpg");
  for (const auto& p : {dir_ / "empty", dir_ / "missing", dir_ / "flat"}) {
    try {
      load_labelled_set(p);
      ADD_FAILURE() << p << " loaded";
    } catch (const LabelError& e) {
      EXPECT_NE(std::string(e.what()).find(p.string()), std::string::npos) << e.what();
    }
  }
}

TEST_F(EvalLabels, ManifestLabelColumnAndEmptyLabels) {
  touch("img/a.jpg");
  touch("img/b.jpg");
  touch("img/c.jpg");
  write("m.csv",
        "file,Class,other\nimg/a.jpg,dress,1\nimg/b.jpg,,2\nimg/c.jpg,hat,3\nimg/gone.jpg,hat,4\n");
  const LabelledSet s = load_labelled_set(dir_ / "m.csv", "class");  // case-insensitive match
  EXPECT_EQ(s.labels, (std::vector<std::string>{"dress", "hat"}));
  EXPECT_EQ(s.files[1], dir_ / "img/c.jpg");
  EXPECT_EQ(s.empty_labels, 1);
  EXPECT_EQ(s.unreadable, 1);  // the missing file's row
}

TEST_F(EvalLabels, MissingLabelColumnListsColumns) {
  touch("a.jpg");
  write("m.csv", "path,category\na.jpg,dress\n");
  try {
    load_labelled_set(dir_ / "m.csv");
    FAIL() << "loaded without a label column";
  } catch (const LabelError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find((dir_ / "m.csv").string()), std::string::npos) << what;
    EXPECT_NE(what.find("'label'"), std::string::npos) << what;
    EXPECT_NE(what.find("'category'"), std::string::npos) << what;
  }
}

}  // namespace
