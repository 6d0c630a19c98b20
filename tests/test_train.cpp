// train/: the augmentation `train --full` draws (image/augment.h) and the triplet losses and
// leave-one-out Recall@1 (train/head.h), on inputs small enough to check by hand; the run's
// temporary files (train/temp_files.h) on real files.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <stdexcept>
#include <vector>

#include "image/augment.h"
#include "image/preprocess.h"
#include "train/head.h"
#include "train/temp_files.h"

namespace img = lookalike::image;
namespace td = lookalike::train::detail;

namespace {

img::RgbImage noise_image(int w, int h, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  img::RgbImage im{w, h, std::vector<std::uint8_t>(std::size_t(w) * h * 3)};
  for (auto& p : im.pixels) p = static_cast<std::uint8_t>(rng() & 0xff);
  return im;
}

std::vector<float> augmented(const img::RgbImage& im, const img::AugmentDraw& d,
                             const img::AugmentSpec& spec) {
  std::vector<float> out(std::size_t(3) * spec.size * spec.size);
  img::augment(im, d, spec, img::PreprocessSpec{}, out.data());
  return out;
}

}  // namespace

TEST(Augment, CropsStayInsideTheImageAndFollowTheSpec) {
  img::AugmentSpec spec;
  std::mt19937_64 rng(1);
  for (auto [w, h] : std::vector<std::pair<int, int>>{{400, 533}, {256, 256}, {1, 1}, {3, 900}}) {
    for (int i = 0; i < 500; ++i) {
      const auto d = img::draw_augmentation(w, h, spec, rng);
      ASSERT_GE(d.x, 0);
      ASSERT_GE(d.y, 0);
      ASSERT_GT(d.width, 0);
      ASSERT_GT(d.height, 0);
      ASSERT_LE(d.x + d.width, w);
      ASSERT_LE(d.y + d.height, h);
      ASSERT_GE(d.brightness, 0.8f);
      ASSERT_LE(d.brightness, 1.2f);
      if (w ==
          400) {  // always found within 10 tries: area and ratio as drawn, give or take rounding
        const double area = double(d.width) * d.height / (400.0 * 533.0);
        EXPECT_GE(area, 0.35 * 0.97);
        EXPECT_LE(area, 1.0);
        const double ratio = double(d.width) / d.height;
        EXPECT_GE(ratio, 0.75 * 0.98);
        EXPECT_LE(ratio, 4.0 / 3.0 * 1.02);
      }
    }
  }
  // A 3 x 900 strip has no crop of an allowed ratio: torchvision's fallback, a centred crop at
  // the nearest ratio (3 / 0.75 = 4 rows high).
  const auto d = img::draw_augmentation(3, 900, spec, rng);
  EXPECT_EQ(d.width, 3);
  EXPECT_EQ(d.height, 4);
  EXPECT_EQ(d.y, (900 - 4) / 2);
}

TEST(Augment, SameSeedSameDraws) {
  img::AugmentSpec spec;
  std::mt19937_64 a(42), b(42), c(43);
  bool differs = false;
  for (int i = 0; i < 50; ++i) {
    const auto x = img::draw_augmentation(400, 533, spec, a);
    const auto y = img::draw_augmentation(400, 533, spec, b);
    const auto z = img::draw_augmentation(400, 533, spec, c);
    EXPECT_EQ(x.x, y.x);
    EXPECT_EQ(x.width, y.width);
    EXPECT_EQ(x.flip, y.flip);
    EXPECT_EQ(x.saturation, y.saturation);
    differs |= x.x != z.x || x.width != z.width;
  }
  EXPECT_TRUE(differs);
}

TEST(Augment, TheIdentityDrawIsTheModelsPreprocessing) {
  const auto im = noise_image(224, 224, 7);
  img::AugmentSpec spec;
  const img::AugmentDraw whole{0, 0, 224, 224, false, 1, 1, 1};
  const auto out = augmented(im, whole, spec);
  img::PreprocessSpec plain;
  plain.resize_shorter = 0;
  std::vector<float> ref(out.size());
  img::preprocess(im, 224, 224, plain, ref.data());
  EXPECT_EQ(out, ref);
}

TEST(Augment, FlipMirrorsEachRow) {
  const auto im = noise_image(300, 260, 3);
  img::AugmentSpec spec;
  spec.size = 64;
  img::AugmentDraw d{10, 20, 200, 180, false, 1.1f, 0.9f, 1.2f};
  const auto plain = augmented(im, d, spec);
  d.flip = true;
  const auto flipped = augmented(im, d, spec);
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 64; ++y)
      for (int x = 0; x < 64; ++x)
        ASSERT_EQ(flipped[(c * 64 + y) * 64 + x], plain[(c * 64 + y) * 64 + 63 - x]);
}

TEST(Augment, ColourJitterFollowsTorchvisionsDefinitions) {
  // One flat colour: contrast blends with its own grey mean, saturation with its grey.
  img::RgbImage im{8, 8, {}};
  for (int i = 0; i < 64; ++i) im.pixels.insert(im.pixels.end(), {200, 100, 50});
  img::AugmentSpec spec;
  spec.size = 8;
  img::PreprocessSpec unit;
  unit.mean = {0, 0, 0};
  unit.std = {1, 1, 1};
  std::vector<float> out(3 * 64);
  img::augment(im, {0, 0, 8, 8, false, 1.2f, 1.0f, 0.5f}, spec, unit, out.data());
  const float r = std::min(1.0f, 200 / 255.0f * 1.2f), g = 100 / 255.0f * 1.2f,
              b = 50 / 255.0f * 1.2f;
  const float grey = 0.299f * r + 0.587f * g + 0.114f * b;
  EXPECT_NEAR(out[0], 0.5f * r + 0.5f * grey, 1e-6);
  EXPECT_NEAR(out[64], 0.5f * g + 0.5f * grey, 1e-6);
  EXPECT_NEAR(out[128], 0.5f * b + 0.5f * grey, 1e-6);
  EXPECT_FLOAT_EQ(r, 200 / 255.0f * 1.2f);  // below 1: no clamp in this case
}

TEST(Augment, RejectsCropsOutsideTheImageAndEmptyImages) {
  const auto im = noise_image(50, 40, 1);
  img::AugmentSpec spec;
  std::vector<float> out(3 * 224 * 224);
  EXPECT_THROW(img::augment(im, {30, 0, 30, 10, false, 1, 1, 1}, spec, {}, out.data()),
               std::invalid_argument);
  EXPECT_THROW(img::augment(img::RgbImage{}, {0, 0, 1, 1, false, 1, 1, 1}, spec, {}, out.data()),
               std::invalid_argument);
  std::mt19937_64 rng(0);
  EXPECT_THROW(img::draw_augmentation(0, 10, spec, rng), std::invalid_argument);
}

// Four unit vectors on a circle, two labels: distances by hand.
TEST(TripletLoss, BatchHardPicksTheFarthestPositiveAndNearestNegative) {
  const double pi = std::acos(-1.0);
  auto at = [](double deg) {
    const double r = deg * std::acos(-1.0) / 180;
    return std::vector<float>{float(std::cos(r)), float(std::sin(r))};
  };
  std::vector<float> rows;
  for (double deg : {0.0, 30.0, 90.0, 100.0})
    for (float v : at(deg)) rows.push_back(v);
  const auto e = torch::from_blob(rows.data(), {4, 2}).clone();
  const auto labels = torch::tensor(std::vector<std::int64_t>{0, 0, 1, 1});
  auto chord = [&](double deg) { return 2 * std::sin(deg * pi / 360); };
  const double margin = 0.6;
  // anchor 0: pos 30 deg, nearest neg 90; anchor 1: pos 30, neg 60; anchor 2: pos 10, neg 60;
  // anchor 3: pos 10, neg 70.
  const double expected[] = {chord(30) - chord(90) + margin, chord(30) - chord(60) + margin,
                             chord(10) - chord(60) + margin, chord(10) - chord(70) + margin};
  double sum = 0;
  int positive = 0;
  for (double v : expected) {
    sum += std::max(0.0, v);
    positive += v > 0;
  }
  double active = -1;
  const double loss = td::batch_hard_loss(e, labels, margin, &active).item<double>();
  EXPECT_NEAR(loss, sum / 4, 1e-5);
  EXPECT_DOUBLE_EQ(active, positive / 4.0);
  EXPECT_GT(positive, 0);
  EXPECT_LT(positive, 4);
}

TEST(TripletLoss, SemiHardIsZeroWhenEveryNegativeIsBeyondTheMargin) {
  std::vector<float> rows = {1, 0, 0.995f, 0.0998f, -1, 0, -0.995f, -0.0998f};
  const auto e = torch::from_blob(rows.data(), {4, 2}).clone();
  const auto labels = torch::tensor(std::vector<std::int64_t>{0, 0, 1, 1});
  double active = -1;
  EXPECT_NEAR(td::semi_hard_loss(e, labels, 0.2, &active).item<double>(), 0, 1e-6);
  EXPECT_EQ(active, 0);
  // Swap two labels: every anchor's positive lies across the circle and no negative is farther,
  // so the farthest negative (0.0025 nearer than the positive) is taken: loss ~ margin.
  const auto mixed = torch::tensor(std::vector<std::int64_t>{0, 1, 0, 1});
  EXPECT_NEAR(td::semi_hard_loss(e, mixed, 0.2, &active).item<double>(), 0.2, 0.01);
  EXPECT_EQ(active, 1);
}

TEST(Validation, LeaveOneOutRecallAtOneSkipsTheQueryItself) {
  // Rows 0 and 1 close together (label 0), row 2 near row 1 but label 1, row 3 alone (label 2).
  std::vector<float> rows = {1, 0, 0.99f, 0.141f, 0.978f, 0.208f, -1, 0};
  auto all = torch::from_blob(rows.data(), {4, 2}).clone();
  all = all / all.norm(2, 1, true);
  const std::vector<std::int64_t> labels = {0, 0, 1, 2};
  EXPECT_DOUBLE_EQ(td::leave_one_out_recall_at_1(all, labels, 3, {0}), 1.0);
  EXPECT_DOUBLE_EQ(td::leave_one_out_recall_at_1(all, labels, 3, {1}), 0.0);  // row 2 nearer
  // Label 2 has no other image: skipped; label 1 likewise. Only row 0 and row 1 count.
  EXPECT_DOUBLE_EQ(td::leave_one_out_recall_at_1(all, labels, 3, {0, 1, 2, 3}), 0.5);
  EXPECT_DOUBLE_EQ(td::leave_one_out_recall_at_1(all, labels, 3, {3}), -1);
}

// train/temp_files.h: the sweep removes only abandoned files of our own pattern for that --out;
// a signal removes the registered files, and waits for a commit to end first.
namespace {

std::filesystem::path fresh_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() /
             ("lookalike-test-train-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

void touch(const std::filesystem::path& p) { std::ofstream(p) << "x"; }

// A process id that no longer runs: a child that has exited and been reaped.
pid_t gone_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  ::waitpid(pid, nullptr, 0);
  return pid;
}

}  // namespace

TEST(TempFiles, SweepRemovesOnlyAbandonedFilesOfTheSameOut) {
  namespace fs = std::filesystem;
  const auto dir = fresh_dir("sweep");
  const auto dead = std::to_string(gone_pid());
  const auto alive = std::to_string(::getpid());
  const std::vector<std::string> stale = {".m.tmp-" + dead + ".pt", ".m.tmp-" + dead + ".json",
                                          ".m.tmp-" + dead + ".backbone.pt",
                                          ".m.tmp-" + dead + ".pt.tmp", "m.pt.backbone.tmp"};
  const std::vector<std::string> kept = {".m.tmp-" + alive + ".pt",
                                         ".other.tmp-" + dead + ".pt",
                                         ".m.tmp-.pt",
                                         ".m.tmp-12x.pt",
                                         ".m.tmp-" + dead + ".jpg",
                                         "m.pt",
                                         "m.json"};
  for (const auto& n : stale) touch(dir / n);
  for (const auto& n : kept) touch(dir / n);
  // Named like ours, but a folder and a link: never removed (only regular files are ours).
  const auto other_dead = std::to_string(gone_pid());
  fs::create_directory(dir / (".m.tmp-" + other_dead + ".json"));
  fs::create_symlink(dir / "m.pt", dir / (".m.tmp-" + other_dead + ".pt"));
  const auto removed = lookalike::train::sweep_stale_temp_files(dir / "m.pt");
  EXPECT_EQ(removed.size(), stale.size());
  for (const auto& n : stale) EXPECT_FALSE(fs::exists(dir / n)) << n;
  for (const auto& n : kept) EXPECT_TRUE(fs::exists(dir / n)) << n;
  EXPECT_TRUE(fs::is_directory(dir / (".m.tmp-" + other_dead + ".json")));
  EXPECT_TRUE(fs::is_symlink(dir / (".m.tmp-" + other_dead + ".pt")));
  EXPECT_EQ(lookalike::train::temp_path(dir / "m.pt", ".json"),
            dir / (".m.tmp-" + alive + ".json"));
  fs::remove_all(dir);
}

namespace {

// In a child process (the cleanup ends it): a handler as the CLI installs it.
extern "C" void remove_and_exit(int signal) {
  if (lookalike::train::remove_temp_files_for_signal(signal)) ::_exit(42);
}

int child_status(const std::function<void()>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::signal(SIGUSR1, remove_and_exit);
    body();
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST(TempFiles, ASignalRemovesRegisteredFilesAfterACommitEnds) {
  namespace fs = std::filesystem;
  using lookalike::train::CommitGuard;
  using lookalike::train::TempFileGuard;
  const auto dir = fresh_dir("signal");
  // Registered, then a signal: removed, the process ends.
  EXPECT_EQ(child_status([&] {
              touch(dir / "a.tmp");
              TempFileGuard guard(dir / "a.tmp");
              ::raise(SIGUSR1);
            }),
            42);
  EXPECT_FALSE(fs::exists(dir / "a.tmp"));
  // No longer registered: kept.
  EXPECT_EQ(child_status([&] {
              touch(dir / "b.tmp");
              { TempFileGuard guard(dir / "b.tmp"); }
              ::raise(SIGUSR1);
            }),
            42);
  EXPECT_TRUE(fs::exists(dir / "b.tmp"));
  // During a commit the signal waits: the rename completes, then the process ends.
  EXPECT_EQ(child_status([&] {
              touch(dir / "c.tmp");
              TempFileGuard guard(dir / "c.tmp");
              {
                CommitGuard commit;
                ::raise(SIGUSR1);
                if (!fs::exists(dir / "c.tmp")) ::_exit(1);  // removed mid-commit
                fs::rename(dir / "c.tmp", dir / "c.pt");
              }
              ::_exit(2);  // the held signal must have ended the process
            }),
            42);
  EXPECT_TRUE(fs::exists(dir / "c.pt"));
  fs::remove_all(dir);
}
