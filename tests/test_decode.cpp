// Decoder tests on real files written by tools/make_test_images.py (fixture test_images) and
// tools/make_bad_inputs.py (fixture bad_inputs, with its expected.json).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "image/decode.h"
#include "image/preprocess.h"
#include "image/thumbnail.h"

namespace fs = std::filesystem;
using lookalike::image::decode_buffer;
using lookalike::image::decode_file;
using lookalike::image::Decoded;
using lookalike::image::DecodeError;
using lookalike::image::DecodeOptions;
using lookalike::image::read_header;
using lookalike::image::read_image_file;
using lookalike::image::RgbImage;
using lookalike::image::sniff_format;
using Rgb = std::array<int, 3>;

namespace {

fs::path fixture(const std::string& name) { return fs::path(LOOKALIKE_FIXTURES) / "images" / name; }

// The upright test pattern (see make_test_images.py): 64x48, one colour per quadrant.
constexpr Rgb kTopLeft{220, 30, 30}, kTopRight{30, 200, 30}, kBottomLeft{30, 30, 220},
    kBottomRight{230, 220, 40};

Rgb pixel(const RgbImage& img, int x, int y) {
  const auto* p = &img.pixels[(std::size_t(y) * img.width + x) * 3];
  return {p[0], p[1], p[2]};
}

// Colour at the centre of each quadrant, away from edges blurred by JPEG chroma subsampling.
std::array<Rgb, 4> quadrants(const RgbImage& img) {
  const int qx = img.width / 4, qy = img.height / 4;
  return {pixel(img, qx, qy), pixel(img, 3 * qx, qy), pixel(img, qx, 3 * qy),
          pixel(img, 3 * qx, 3 * qy)};
}

void expect_colour(const Rgb& got, const Rgb& want, int tolerance, const std::string& where) {
  for (int c = 0; c < 3; ++c) {
    EXPECT_LE(std::abs(got[c] - want[c]), tolerance)
        << where << " channel " << c << ": got " << got[c] << ", want " << want[c];
  }
}

void expect_pattern(const Decoded& d, int tolerance, const std::string& name) {
  ASSERT_EQ(d.rgb.width, 64) << name;
  ASSERT_EQ(d.rgb.height, 48) << name;
  ASSERT_EQ(d.rgb.pixels.size(), 64u * 48 * 3) << name;
  const auto q = quadrants(d.rgb);
  expect_colour(q[0], kTopLeft, tolerance, name + " top-left");
  expect_colour(q[1], kTopRight, tolerance, name + " top-right");
  expect_colour(q[2], kBottomLeft, tolerance, name + " bottom-left");
  expect_colour(q[3], kBottomRight, tolerance, name + " bottom-right");
}

// PIL's convert("L"): ITU-R 601-2 luma, L = (R*299 + G*587 + B*114) / 1000.
int luma(const Rgb& c) { return (c[0] * 299 + c[1] * 587 + c[2] * 114 + 500) / 1000; }

class DecodeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { lookalike::image::init_decoder(); }
};

std::string expect_decode_error(const fs::path& path, const DecodeOptions& options = {}) {
  try {
    decode_file(path, options);
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.file(), path.string());
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
    return e.reason();
  }
  ADD_FAILURE() << path << " decoded without error";
  return {};
}

}  // namespace

struct FormatCase {
  const char* file;
  const char* format;
  int tolerance;  // 0 for lossless formats
};

void PrintTo(const FormatCase& c, std::ostream* os) { *os << c.file; }

class FormatTest : public DecodeTest, public ::testing::WithParamInterface<FormatCase> {};

TEST_P(FormatTest, DecodesUprightPatternInEveryFormat) {
  const auto& c = GetParam();
  if (!fs::exists(fixture(c.file))) GTEST_SKIP() << c.file << " not generated (no libheif encoder)";
  const Decoded d = decode_file(fixture(c.file));
  EXPECT_EQ(d.format, c.format);
  EXPECT_EQ(d.shrink, 1);
  EXPECT_EQ(d.source_width, 64);
  EXPECT_EQ(d.source_height, 48);
  expect_pattern(d, c.tolerance, c.file);
}

INSTANTIATE_TEST_SUITE_P(
    Files, FormatTest,
    ::testing::Values(FormatCase{"pattern.jpg", "jpeg", 12}, FormatCase{"pattern.png", "png", 0},
                      FormatCase{"pattern.webp", "webp", 0}, FormatCase{"pattern.bmp", "bmp", 0},
                      FormatCase{"pattern.tiff", "tiff", 0},
                      // First frame of two; the second is solid magenta.
                      FormatCase{"animated.gif", "gif", 0}, FormatCase{"palette.png", "png", 0},
                      FormatCase{"cmyk.tiff", "tiff", 0}, FormatCase{"cmyk.jpg", "jpeg", 12},
                      FormatCase{"orientation_6.png", "png", 0},
                      FormatCase{"name with spaces ünïcødé 画像.jpg", "jpeg", 12},
                      // Lossy AV1 / HEVC at quality 95, through libheif (see make_test_images).
                      FormatCase{"pattern.avif", "avif", 12},
                      FormatCase{"pattern.heic", "heif", 12}),
    [](const auto& info) {
      std::string n;
      for (char ch : std::string(info.param.file)) n += std::isalnum((unsigned char)ch) ? ch : '_';
      return n + "_" + std::to_string(info.index);
    });

class OrientationTest : public DecodeTest, public ::testing::WithParamInterface<int> {};

TEST_P(OrientationTest, ExifOrientationIsApplied) {
  const auto name = "orientation_" + std::to_string(GetParam()) + ".jpg";
  const Decoded d = decode_file(fixture(name));
  EXPECT_EQ(d.source_width, 64) << name;
  EXPECT_EQ(d.source_height, 48) << name;
  expect_pattern(d, 12, name);
  const auto header = read_header(fixture(name));
  EXPECT_EQ(header.width, 64) << name;
  EXPECT_EQ(header.height, 48) << name;
}

INSTANTIATE_TEST_SUITE_P(AllEight, OrientationTest, ::testing::Range(1, 9));

TEST_F(DecodeTest, GreyBecomesEqualRgbChannels) {
  for (const char* name : {"grey.png", "grey.jpg", "grey16.png"}) {
    const Decoded d = decode_file(fixture(name));
    const auto q = quadrants(d.rgb);
    const std::array<Rgb, 4> want = {kTopLeft, kTopRight, kBottomLeft, kBottomRight};
    const int tolerance = std::string(name).ends_with(".jpg") ? 3 : 0;
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(q[i][0], q[i][1]) << name;
      EXPECT_EQ(q[i][1], q[i][2]) << name;
      EXPECT_LE(std::abs(q[i][0] - luma(want[i])), tolerance) << name << " quadrant " << i;
    }
  }
}

TEST_F(DecodeTest, SixteenBitKeepsHighByte) {
  // grey16.png holds v * 257, so its high byte is exactly grey.png's value.
  EXPECT_EQ(decode_file(fixture("grey16.png")).rgb.pixels,
            decode_file(fixture("grey.png")).rgb.pixels);
  // rgb16.png holds v * 257 + 77: the high byte is v or v + 1, never a clipped 255.
  const Decoded d = decode_file(fixture("rgb16.png"));
  const auto q = quadrants(d.rgb);
  const std::array<Rgb, 4> want = {kTopLeft, kTopRight, kBottomLeft, kBottomRight};
  for (int i = 0; i < 4; ++i) {
    for (int c = 0; c < 3; ++c) EXPECT_EQ(q[i][c], (want[i][c] * 257 + 77) >> 8);
  }
}

TEST_F(DecodeTest, AlphaIsDroppedNotComposited) {
  // The left half of rgba.png is fully transparent; its colour must survive as stored.
  expect_pattern(decode_file(fixture("rgba.png")), 0, "rgba.png");
  EXPECT_EQ(decode_file(fixture("grey_alpha.png")).rgb.pixels,
            decode_file(fixture("grey.png")).rgb.pixels);
  // Lossless WebP may rewrite colour under alpha 0; the opaque right half is exact.
  const auto q = quadrants(decode_file(fixture("rgba.webp")).rgb);
  expect_colour(q[1], kTopRight, 0, "rgba.webp top-right");
  expect_colour(q[3], kBottomRight, 0, "rgba.webp bottom-right");
}

TEST_F(DecodeTest, ProgressiveJpeg) {
  const Decoded d = decode_file(fixture("progressive.jpg"));
  EXPECT_EQ(d.rgb.width, 120);
  EXPECT_EQ(d.rgb.height, 90);
}

TEST_F(DecodeTest, BadFilesAreRefusedWithTheCause) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"corrupt.jpg", "jpeg"},          {"truncated.jpg", "truncated"},
      {"truncated.png", "truncated"},   {"empty.jpg", "empty file"},
      {"notes.txt", "looks like text"}, {"text_named.jpg", "looks like text"},
      {"document.pdf", "PDF"},          {"drawing.svg", "SVG"},
      {"svg_named.png", "SVG"},         {"does not exist.jpg", "cannot open: No such file"},
  };
  for (const auto& [name, cause] : cases) {
    const std::string reason = expect_decode_error(fixture(name));
    EXPECT_NE(reason.find(cause), std::string::npos) << name << ": " << reason;
  }
  const std::string corrupt = expect_decode_error(fixture("corrupt.jpg"));
  EXPECT_NE(corrupt.find("Corrupt JPEG data"), std::string::npos) << corrupt;
}

// Thumbnails (the server's /thumbnail, map's points) refuse what decode refuses, in the same
// words, and never hand a PDF or SVG to libvips' catch-all loaders.
TEST_F(DecodeTest, ThumbnailsRefuseBadFilesWithTheCause) {
  for (const auto& [name, cause] :
       std::vector<std::pair<std::string, std::string>>{{"empty.jpg", "empty file"},
                                                        {"notes.txt", "looks like text"},
                                                        {"document.pdf", "PDF"},
                                                        {"drawing.svg", "SVG"}}) {
    std::ifstream in(fixture(name), std::ios::binary);
    const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                                          std::istreambuf_iterator<char>());
    try {
      lookalike::image::thumbnail_jpeg(bytes, name, 64);
      ADD_FAILURE() << name << ": a thumbnail was made";
    } catch (const DecodeError& e) {
      EXPECT_NE(e.reason().find(cause), std::string::npos) << name << ": " << e.reason();
    }
  }
  const auto jpeg = lookalike::image::thumbnail_jpeg(
      read_image_file(fixture("progressive.jpg").string()), "p", 64);
  EXPECT_EQ(sniff_format(jpeg), "jpeg");
}

TEST_F(DecodeTest, DecompressionBombsAreRefusedBeforeDecoding) {
  for (const char* name : {"huge_header.png", "huge_header.jpg"}) {
    const auto start = std::chrono::steady_clock::now();
    const std::string reason = expect_decode_error(fixture(name));
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_NE(reason.find("--max-pixels"), std::string::npos) << reason;
    EXPECT_NE(reason.find("pixels"), std::string::npos) << reason;
    EXPECT_LT(seconds, 1.0) << name << " was decoded, not refused from its header";
  }
  // The header itself is readable: only decoding is refused.
  const auto header = read_header(fixture("huge_header.png"));
  EXPECT_EQ(header.width, 100000);
  EXPECT_EQ(header.height, 100000);
}

TEST_F(DecodeTest, MaxPixelsIsConfigurable) {
  DecodeOptions options;
  options.max_pixels = 64 * 48;
  EXPECT_EQ(decode_file(fixture("pattern.png"), options).rgb.width, 64);
  options.max_pixels = 64 * 48 - 1;
  const std::string reason = expect_decode_error(fixture("pattern.png"), options);
  EXPECT_NE(reason.find("64x48 = 3072 pixels"), std::string::npos) << reason;
  EXPECT_NE(reason.find("3071"), std::string::npos) << reason;
  options.max_pixels = 0;
  EXPECT_THROW(decode_file(fixture("pattern.png"), options), std::invalid_argument);
}

TEST_F(DecodeTest, DctShrinkFactorAndSize) {
  struct Case {
    int min_shorter_side, shrink, width, height;
  };
  // 2400x1800: the shorter side after shrinking must stay >= 2 * min_shorter_side.
  for (const Case& c : {Case{0, 1, 2400, 1800}, Case{224, 4, 600, 450}, Case{256, 2, 1200, 900},
                        Case{100, 8, 300, 225}, Case{901, 1, 2400, 1800}}) {
    DecodeOptions options;
    options.min_shorter_side = c.min_shorter_side;
    const Decoded d = decode_file(fixture("large.jpg"), options);
    EXPECT_EQ(d.shrink, c.shrink) << "min_shorter_side " << c.min_shorter_side;
    EXPECT_EQ(d.rgb.width, c.width);
    EXPECT_EQ(d.rgb.height, c.height);
    EXPECT_EQ(d.source_width, 2400);
    EXPECT_EQ(d.source_height, 1800);
  }
  DecodeOptions options;
  options.min_shorter_side = 8;
  EXPECT_EQ(decode_file(fixture("pattern.png"), options).shrink, 1) << "only JPEG shrinks";
}

TEST_F(DecodeTest, DctShrinkLooksLikeABoxDownscale) {
  const Decoded full = decode_file(fixture("large.jpg"));
  DecodeOptions options;
  options.min_shorter_side = 224;
  const Decoded small = decode_file(fixture("large.jpg"), options);
  ASSERT_EQ(small.shrink, 4);
  double total = 0;
  for (int y = 0; y < small.rgb.height; ++y) {
    for (int x = 0; x < small.rgb.width; ++x) {
      for (int c = 0; c < 3; ++c) {
        int sum = 0;
        for (int dy = 0; dy < 4; ++dy) {
          for (int dx = 0; dx < 4; ++dx) sum += pixel(full.rgb, 4 * x + dx, 4 * y + dy)[c];
        }
        total += std::abs(sum / 16.0 - pixel(small.rgb, x, y)[c]);
      }
    }
  }
  const double mean = total / (small.rgb.width * small.rgb.height * 3.0);
  RecordProperty("mean_abs_vs_box_downscale", std::to_string(mean));
  EXPECT_LT(mean, 4.0);
}

TEST_F(DecodeTest, ReadHeaderWithoutDecoding) {
  const auto header = read_header(fixture("large.jpg"));
  EXPECT_EQ(header.width, 2400);
  EXPECT_EQ(header.height, 1800);
  EXPECT_EQ(header.format, "jpeg");
  EXPECT_EQ(read_header(fixture("orientation_8.jpg")).width, 64);
  EXPECT_EQ(read_header(fixture("pattern.bmp")).format, "bmp");
  EXPECT_THROW(read_header(fixture("notes.txt")), DecodeError);
  EXPECT_THROW(read_header(fixture("empty.jpg")), DecodeError);
}

TEST_F(DecodeTest, DecodeBufferNamesTheGivenSource) {
  std::ifstream in(fixture("truncated.jpg"), std::ios::binary);
  const std::vector<std::uint8_t> bytes{std::istreambuf_iterator<char>(in), {}};
  try {
    decode_buffer(bytes, "upload #7", {});
    FAIL() << "truncated buffer decoded";
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.file(), "upload #7");
    EXPECT_EQ(std::string(e.what()).rfind("upload #7: ", 0), 0u) << e.what();
  }
  EXPECT_THROW(decode_buffer({}, "nothing", {}), DecodeError);
}

TEST_F(DecodeTest, ConcurrentDecodingMatchesSerial) {
  const std::vector<std::string> names = {"pattern.jpg",   "pattern.png",       "pattern.webp",
                                          "pattern.bmp",   "pattern.tiff",      "animated.gif",
                                          "cmyk.jpg",      "orientation_5.jpg", "odd_301x199.jpg",
                                          "truncated.jpg", "notes.txt"};
  auto run = [&](std::vector<std::string>& out) {
    for (int round = 0; round < 10; ++round) {
      for (const auto& name : names) {
        try {
          const auto d = decode_file(fixture(name));
          out.push_back(
              std::to_string(d.rgb.width) + "x" + std::to_string(d.rgb.height) + ":" +
              std::to_string(std::hash<std::string_view>{}(std::string_view(
                  reinterpret_cast<const char*>(d.rgb.pixels.data()), d.rgb.pixels.size()))));
        } catch (const DecodeError& e) {
          out.push_back("error:" + e.file());
        }
      }
    }
  };
  std::vector<std::string> serial, a, b;
  run(serial);
  std::thread ta(run, std::ref(a)), tb(run, std::ref(b));
  ta.join();
  tb.join();
  EXPECT_EQ(a, serial);
  EXPECT_EQ(b, serial);
  EXPECT_EQ(serial[9], "error:" + fixture("truncated.jpg").string());
}

// ---- Hostile inputs (make_bad_inputs.py), each decoded in a child process under a memory cap.

namespace {

fs::path bad_input(const std::string& rel) {
  return fs::path(LOOKALIKE_FIXTURES) / "bad_inputs" / rel;
}

std::string from_base64(const std::string& text) {
  static const std::string alphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::uint32_t bits = 0;
  int count = 0;
  for (char c : text) {
    const auto at = alphabet.find(c);
    if (at == std::string::npos) break;  // '=' padding
    bits = (bits << 6) | std::uint32_t(at);
    if ((count += 6) >= 8) out += char((bits >> (count -= 8)) & 0xFF);
  }
  return out;
}

nlohmann::json expected_outcomes() {
  std::ifstream in(bad_input("expected.json"));
  EXPECT_TRUE(in) << "missing " << bad_input("expected.json");
  return nlohmann::json::parse(in);
}

// An expected.json entry's file: its raw bytes when the name is not UTF-8.
fs::path entry_path(const nlohmann::json& e) {
  return bad_input(e.contains("path_bytes") ? from_base64(e["path_bytes"].get<std::string>())
                                            : e["path"].get<std::string>());
}

std::int64_t statm_pages(int field) {
  std::ifstream in("/proc/self/statm");
  std::int64_t value = 0;
  for (int i = 0; i <= field; ++i) in >> value;
  return value * sysconf(_SC_PAGESIZE);
}
std::int64_t address_space_bytes() { return statm_pages(0); }
std::int64_t rss_bytes() { return statm_pages(1); }
std::int64_t peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return std::int64_t(ru.ru_maxrss) * 1024;
}

constexpr std::int64_t kMiB = 1 << 20;

// For the child of a death test: caps the address space at its current size plus `allowance`
// (RLIMIT_AS), so that a runaway allocation fails (as std::bad_alloc, which the decoder must
// turn into a DecodeError) instead of taking the machine's memory, and sets an alarm, so that
// a hang (a FIFO opened for reading) kills the child instead of stalling the run.
void limit_child(std::int64_t allowance, unsigned seconds) {
  const rlim_t cap = rlim_t(address_space_bytes() + allowance);
  const rlimit limit{cap, cap};
  setrlimit(RLIMIT_AS, &limit);
  alarm(seconds);
}

struct Outcome {
  std::string kind;  // "ok", "error" (a DecodeError) or "exception" (anything else: a bug)
  std::string text;  // "WxH" or the error's what()
  int width = 0, height = 0;
  std::vector<float> input;   // the model input, for "ok"
  std::int64_t rss_grew = 0;  // peak RSS over the RSS before decoding, bytes
};

// decode_file + preprocess (256/224 bilinear), as the indexer does. Never throws.
Outcome decode_and_preprocess(const fs::path& path, const DecodeOptions& options = {}) {
  Outcome o;
  const std::int64_t before = rss_bytes();
  try {
    const Decoded d = decode_file(path, options);
    o.input.assign(3 * 224 * 224, NAN);
    lookalike::image::preprocess(d.rgb, d.source_width, d.source_height, {}, o.input.data(),
                                 path.string());
    o.kind = "ok";
    o.width = d.source_width;
    o.height = d.source_height;
    o.text = std::to_string(o.width) + "x" + std::to_string(o.height);
    if (!std::all_of(o.input.begin(), o.input.end(), [](float v) { return std::isfinite(v); })) {
      o.kind = "exception";
      o.text += " but the model input has non-finite values";
    }
  } catch (const DecodeError& e) {
    o.kind = "error";
    o.text = e.what();
  } catch (const std::exception& e) {
    o.kind = "exception";
    o.text = e.what();
  }
  o.rss_grew = peak_rss_bytes() - before;
  return o;
}

// What differs between `o` and the expected.json entry `e`; empty when they agree.
std::string mismatch(const nlohmann::json& e, const Outcome& o, const fs::path& path) {
  if (o.kind != e["outcome"].get<std::string>()) return "; expected " + e["outcome"].dump();
  if (e.contains("message") && o.text.find(e["message"].get<std::string>()) == std::string::npos) {
    return "; expected the message to contain " + e["message"].dump();
  }
  if (o.kind == "error" && o.text.find(path.string()) == std::string::npos) {
    return "; the message does not name the file";
  }
  if (e.contains("width") && (o.width != e["width"] || o.height != e["height"])) {
    return "; expected " + e["width"].dump() + "x" + e["height"].dump();
  }
  return "";
}

// The child's side of EachBadInputHasItsExpectedOutcome: exits 0 when the outcome is the
// expected one and the peak RSS stayed within the decoded raster's size three times over
// plus 64 MiB (the raster, libvips' strip buffers, preprocess's window footprint).
[[noreturn]] void check_in_child(const nlohmann::json& e) {
  limit_child(std::int64_t(1) << 30, 30);
  const fs::path path = entry_path(e);
  const Outcome o = decode_and_preprocess(path);
  std::string problem = mismatch(e, o, path);
  const std::int64_t bound = 64 * kMiB + 9 * std::int64_t(o.width) * o.height;
  if (o.rss_grew > bound) problem += "; peak RSS over " + std::to_string(bound >> 20) + " MiB";
  std::fprintf(stderr, "%s -> %s: %s (peak RSS +%lld MiB)%s\n", path.c_str(), o.kind.c_str(),
               o.text.c_str(), static_cast<long long>(o.rss_grew >> 20), problem.c_str());
  std::_Exit(problem.empty() ? 0 : 1);
}

// Pixel (0,0), (223,0), (0,223), (223,223) of the 224 x 224 crop, per channel, normalised.
std::array<std::array<float, 3>, 4> crop_corners(const std::vector<float>& input) {
  std::array<std::array<float, 3>, 4> corners{};
  const std::array<int, 4> at = {0, 223, 223 * 224, 223 * 224 + 223};
  for (int k = 0; k < 4; ++k) {
    for (int c = 0; c < 3; ++c) corners[k][c] = input[c * 224 * 224 + at[k]];
  }
  return corners;
}

float normalised(int v, int c) {
  const lookalike::image::PreprocessSpec spec;
  return (float(v) / 255.0f - spec.mean[c]) / spec.std[c];
}

class BadInputTest : public DecodeTest {
 protected:
  // Children re-execute this binary rather than fork it: libvips' worker threads (and the
  // locks they may hold) do not survive a plain fork.
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

}  // namespace

// The expected.json entries of more than 1M pixels (the elongated PNGs, seconds each), or the
// others: two tests, so that CTest runs them side by side.
std::vector<nlohmann::json> bad_inputs(bool big) {
  std::vector<nlohmann::json> out;
  const nlohmann::json expected = expected_outcomes();
  for (const auto& e : expected["decode"]) {
    const bool is_big = e.value("width", 0) * std::int64_t(e.value("height", 0)) > 1'000'000;
    if (is_big == big) out.push_back(e);
  }
  return out;
}

TEST_F(BadInputTest, EachBadInputHasItsExpectedOutcomeInBoundedMemory) {
  const auto entries = bad_inputs(false);
  ASSERT_GE(entries.size(), 30u);
  for (const auto& e : entries) {
    EXPECT_EXIT(check_in_child(e), ::testing::ExitedWithCode(0), "") << e["path"];
  }
}

TEST_F(BadInputTest, EachElongatedInputHasItsExpectedOutcomeInBoundedMemory) {
  const auto entries = bad_inputs(true);
  ASSERT_EQ(entries.size(), 4u);
  for (const auto& e : entries) {
    EXPECT_EXIT(check_in_child(e), ::testing::ExitedWithCode(0), "") << e["path"];
  }
}

// The defect: taps for the whole 256 x 128,000,000 resize took 2.8 GB. Now the decode (24 MB of
// pixels) dominates, and the crop is exact: the quadrant colours reach its corners unblended.
TEST_F(BadInputTest, ElongatedPngsPreprocessExactlyInBoundedMemory) {
  for (const char* name : {"tall_4x2000000.png", "wide_2000000x4.png"}) {
    auto child = [name] {
      limit_child(std::int64_t(1) << 30, 30);
      const Outcome o = decode_and_preprocess(bad_input(std::string("decode/") + name));
      const std::int64_t raster = 3 * std::int64_t(o.width) * o.height;
      bool ok = o.kind == "ok" && o.rss_grew <= 2 * raster + 96 * kMiB;
      const std::array<Rgb, 4> want = {kTopLeft, kTopRight, kBottomLeft, kBottomRight};
      for (int k = 0; ok && k < 4; ++k) {
        for (int c = 0; c < 3; ++c)
          ok = ok && crop_corners(o.input)[k][c] == normalised(want[k][c], c);
      }
      std::fprintf(stderr, "%s: %s, peak RSS +%lld MiB\n", name, o.text.c_str(),
                   static_cast<long long>(o.rss_grew >> 20));
      std::_Exit(ok ? 0 : 1);
    };
    EXPECT_EXIT(child(), ::testing::ExitedWithCode(0), "") << name;
  }
}

// Sparse: 3 GiB of which only the JPEG header (claiming 60000 x 60000) is real. With the size
// limit out of the way, the pixel limit refuses it from the first 64 KiB, never reading the rest.
TEST_F(BadInputTest, SparseFileIsRefusedFromItsHeaderNotRead) {
  const fs::path sparse = bad_input("decode/sparse_3gb.jpg");
  auto child = [&] {
    limit_child(512 * kMiB, 10);
    DecodeOptions options;
    options.max_file_bytes = std::int64_t(4) << 30;
    const auto start = std::chrono::steady_clock::now();
    const Outcome o = decode_and_preprocess(sparse, options);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "%s (%.3f s, +%lld MiB)\n", o.text.c_str(), seconds,
                 static_cast<long long>(o.rss_grew >> 20));
    std::_Exit(o.kind == "error" && o.text.find("60000x60000") != std::string::npos &&
                       o.text.find("--max-pixels") != std::string::npos && seconds < 1.0 &&
                       o.rss_grew < 16 * kMiB
                   ? 0
                   : 1);
  };
  EXPECT_EXIT(child(), ::testing::ExitedWithCode(0), "");
  // With the defaults the file's size alone refuses it.
  const std::string reason = expect_decode_error(sparse);
  EXPECT_NE(reason.find("file is 3221225472 bytes, over the limit of 268435456"), std::string::npos)
      << reason;
}

// A failed allocation is a DecodeError naming the file and the image size, not std::bad_alloc.
TEST_F(BadInputTest, OutOfMemoryNamesTheFileAndTheImageSize) {
  const fs::path bomb = bad_input("decode/bomb_30000.png");
  auto child = [&] {
    limit_child(256 * kMiB, 20);
    DecodeOptions options;
    options.max_pixels = 1'000'000'000;  // let the 30000 x 30000 bomb through to the allocator
    const Outcome o = decode_and_preprocess(bomb, options);
    std::fprintf(stderr, "%s\n", o.text.c_str());
    std::_Exit(o.kind == "error" && o.text.rfind(bomb.string() + ": ", 0) == 0 &&
                       o.text.find("out of memory decoding a 30000 x 30000 image") !=
                           std::string::npos
                   ? 0
                   : 1);
  };
  EXPECT_EXIT(child(), ::testing::ExitedWithCode(0), "");
}

// All in the child: a re-executed child runs the test body again up to the death test, so
// files made outside it would be made (and left) twice.
TEST_F(BadInputTest, FifoIsRefusedWithoutBlocking) {
  auto child = [] {
    alarm(5);  // opening a FIFO for reading blocks until a writer comes
    std::string dir = (fs::temp_directory_path() / "lookalike_fifo_XXXXXX").string();
    if (mkdtemp(dir.data()) == nullptr) std::_Exit(2);
    const fs::path fifo = fs::path(dir) / "x.jpg";
    if (mkfifo(fifo.c_str(), 0600) != 0) std::_Exit(2);
    const Outcome o = decode_and_preprocess(fifo);
    fs::remove_all(dir);
    std::fprintf(stderr, "%s\n", o.text.c_str());
    std::_Exit(o.text == fifo.string() + ": not a regular file (a FIFO)" ? 0 : 1);
  };
  EXPECT_EXIT(child(), ::testing::ExitedWithCode(0), "");
}

TEST_F(DecodeTest, ReadImageFileChecksBeforeReading) {
  const auto bytes = read_image_file(fixture("pattern.bmp"));
  EXPECT_EQ(bytes.size(), fs::file_size(fixture("pattern.bmp")));
  DecodeOptions options;
  options.max_file_bytes = 1000;
  try {
    read_image_file(fixture("pattern.bmp"), options);
    ADD_FAILURE() << "over max_file_bytes, read anyway";
  } catch (const DecodeError& e) {
    EXPECT_NE(e.reason().find("over the limit of 1000 (the file size limit)"), std::string::npos)
        << e.what();
  }
  options.max_file_bytes = 0;
  EXPECT_THROW(read_image_file(fixture("pattern.bmp"), options), std::invalid_argument);
  // The pixel limit applies from the header in the first block; read_header does not apply it.
  options = {};
  options.max_pixels = 100;
  EXPECT_THROW(read_image_file(fixture("pattern.png"), options), DecodeError);
  EXPECT_EQ(read_header(fixture("pattern.png"), options).width, 64);
  EXPECT_NE(expect_decode_error(fixture("")).find("not a regular file (a directory)"),
            std::string::npos);
}

TEST_F(DecodeTest, SymlinksAreFollowedAndTheirFaultsNamed) {
  const fs::path dir = fs::temp_directory_path() / ("lookalike_links_" + std::to_string(getpid()));
  fs::create_directories(dir);
  fs::create_symlink(fixture("pattern.png"), dir / "good.png");
  fs::create_symlink(dir / "gone.png", dir / "broken.png");
  fs::create_symlink(dir / "b.png", dir / "a.png");
  fs::create_symlink(dir / "a.png", dir / "b.png");
  EXPECT_EQ(decode_file(dir / "good.png").rgb.width, 64);
  EXPECT_EQ(expect_decode_error(dir / "broken.png"), "cannot open: broken symlink (its target " +
                                                         (dir / "gone.png").string() +
                                                         " does not exist)");
  EXPECT_EQ(expect_decode_error(dir / "a.png"),
            "cannot open: symlink loop (too many levels of symbolic links)");
  fs::remove_all(dir);
}

TEST_F(DecodeTest, SniffFormatFromTheFirstBytes) {
  auto head = [](const std::string& name) {
    std::ifstream in(fixture(name), std::ios::binary);
    std::vector<std::uint8_t> bytes(lookalike::image::kSniffBytes);
    in.read(reinterpret_cast<char*>(bytes.data()), std::streamsize(bytes.size()));
    bytes.resize(std::size_t(in.gcount()));
    return bytes;
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"pattern.jpg", "jpeg"}, {"pattern.png", "png"},   {"pattern.webp", "webp"},
      {"animated.gif", "gif"}, {"pattern.tiff", "tiff"}, {"pattern.bmp", "bmp"},
      {"notes.txt", ""},       {"document.pdf", ""},     {"svg_named.png", ""},
      {"empty.jpg", ""},       {"pattern.heic", "heif"}, {"pattern.avif", "avif"}};
  for (const auto& [name, format] : cases) {
    if (!fs::exists(fixture(name))) continue;  // HEIC/AVIF need libheif's encoders
    EXPECT_EQ(sniff_format(head(name)), format) << name;
  }
  const std::vector<std::uint8_t> two = {0xFF, 0xD8};
  EXPECT_EQ(sniff_format(two), "");
}

// read_image_file never calls libvips: a max_pixels refusal from it proves the header was
// parsed from the first block. TIFF and HEIF keep their sizes anywhere in the file: those
// are checked by the decoder instead.
TEST_F(DecodeTest, HeaderSizeIsReadFromTheFirstBlockOfEachFormat) {
  const std::vector<std::pair<std::string, int>> cases = {
      {"pattern.jpg", 64 * 48},        {"progressive.jpg", 120 * 90},
      {"orientation_6.jpg", 64 * 48},  {"cmyk.jpg", 64 * 48},
      {"pattern.png", 64 * 48},        {"pattern.webp", 64 * 48},
      {"pattern_lossy.webp", 64 * 48}, {"pattern_vp8x.webp", 64 * 48},
      {"animated.gif", 64 * 48},       {"pattern.bmp", 64 * 48}};
  for (const auto& [name, pixels] : cases) {
    DecodeOptions options;
    options.max_pixels = pixels - 1;
    try {
      read_image_file(fixture(name), options);
      ADD_FAILURE() << name << ": size not read from its header";
    } catch (const DecodeError& e) {
      EXPECT_NE(e.reason().find(" = " + std::to_string(pixels) + " pixels"), std::string::npos)
          << e.what();
    }
  }
  DecodeOptions options;
  options.max_pixels = 100;
  for (const char* name : {"pattern.tiff", "pattern.heic", "pattern.avif"}) {
    if (fs::exists(fixture(name))) {
      EXPECT_NO_THROW(read_image_file(fixture(name), options)) << name;
    }
  }
  for (const char* name : {"pattern_lossy.webp", "pattern_vp8x.webp"}) {
    EXPECT_EQ(decode_file(fixture(name)).rgb.width, 64) << name;
  }
}

// GIFs decode as Pillow 9.4's Image.open(f).convert("RGB"): the byte strings below were written
// by tests/e2e/decode_defects.py's write_gif (palette 0 = 10,20,30, 1 = 40,50,60, 2 = 70,80,90,
// 3 = 100,110,120) and the expected pixels are PIL's for them.
namespace {

std::vector<std::uint8_t> from_hex(const std::string& hex) {
  std::vector<std::uint8_t> out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(std::uint8_t(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

std::vector<Rgb> all_pixels(const RgbImage& img) {
  std::vector<Rgb> out;
  for (int y = 0; y < img.height; ++y) {
    for (int x = 0; x < img.width; ++x) out.push_back(pixel(img, x, y));
  }
  return out;
}

// A 4 x 3 screen, a 2 x 1 frame at (1, 1) of indices 1, 2; with and without transparent index 2.
const std::string kGifHead = "474946383961040003009100000a141e28323c46505a646e78";
const std::string kGifFrame = "2c01000100020001000008050003080808003b";

}  // namespace

TEST(GifDecodeTest, TransparentPixelsAndUncoveredCanvasTakeTheTransparentIndexColour) {
  const auto bytes = from_hex(kGifHead + "21f904010a000200" + kGifFrame);
  const Decoded d = decode_buffer(bytes, "t.gif", {});
  EXPECT_EQ(d.format, "gif");
  ASSERT_EQ(d.rgb.width, 4);
  ASSERT_EQ(d.rgb.height, 3);
  const Rgb t{70, 80, 90};
  const std::vector<Rgb> want = {t, t, t, t, t, {40, 50, 60}, t, t, t, t, t, t};
  EXPECT_EQ(all_pixels(d.rgb), want);
}

TEST(GifDecodeTest, UncoveredCanvasOfAnOpaqueFrameTakesIndexZeroColour) {
  const Decoded d = decode_buffer(from_hex(kGifHead + kGifFrame), "o.gif", {});
  const Rgb z{10, 20, 30};
  const std::vector<Rgb> want = {z, z, z, z, z, {40, 50, 60}, {70, 80, 90}, z, z, z, z, z};
  EXPECT_EQ(all_pixels(d.rgb), want);
}

// A 2 x 2 screen, a 2 x 2 frame at (1, 1): the canvas grows to 3 x 3 (as in Pillow), and that is
// the size max_pixels judges and read_header reports.
TEST(GifDecodeTest, FramePastTheScreenWidensTheCanvasWithinTheLimits) {
  const auto bytes = from_hex(
      "474946383961020002009100000a141e28323c46505a646e782c010001000200020000080700030818002020"
      "003b");
  const Decoded d = decode_buffer(bytes, "past.gif", {});
  const Rgb z{10, 20, 30};
  const std::vector<Rgb> want = {z, z, z, z, {40, 50, 60}, {70, 80, 90}, z, {100, 110, 120}, z};
  EXPECT_EQ(all_pixels(d.rgb), want);
  EXPECT_EQ(d.source_width, 3);
  EXPECT_EQ(d.source_height, 3);
  DecodeOptions small;
  small.max_pixels = 8;
  try {
    decode_buffer(bytes, "past.gif", small);
    FAIL() << "a 3 x 3 canvas passed max_pixels 8";
  } catch (const DecodeError& e) {
    EXPECT_EQ(std::string(e.what()),
              "past.gif: image is 3x3 = 9 pixels, over the limit of 8 (--max-pixels; a "
              "decompression-bomb guard)");
  }
  const fs::path file = fs::temp_directory_path() / ("past-" + std::to_string(::getpid()) + ".gif");
  std::ofstream(file, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  const auto header = read_header(file);
  EXPECT_EQ(header.width, 3);
  EXPECT_EQ(header.height, 3);
  EXPECT_EQ(header.format, "gif");
  fs::remove(file);
}

TEST(GifDecodeTest, TruncatedAndFramelessGifsNameTheCause) {
  auto bytes = from_hex(kGifHead + kGifFrame);
  bytes.resize(bytes.size() - 8);  // inside the image data
  try {
    decode_buffer(bytes, "cut.gif", {});
    FAIL() << "a truncated GIF decoded";
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.reason().rfind("truncated file (gif, giflib: ", 0), 0u) << e.what();
  }
  try {
    decode_buffer(from_hex(kGifHead + "3b"), "empty.gif", {});
    FAIL() << "a GIF without a frame decoded";
  } catch (const DecodeError& e) {
    EXPECT_EQ(std::string(e.what()), "empty.gif: corrupt image data (gif, no image in the file)");
  }
}
