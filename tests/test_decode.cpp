// Decoder tests on real files written by tools/make_test_images.py (fixture test_images).
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "image/decode.h"

namespace fs = std::filesystem;
using lookalike::image::decode_buffer;
using lookalike::image::decode_file;
using lookalike::image::Decoded;
using lookalike::image::DecodeError;
using lookalike::image::DecodeOptions;
using lookalike::image::read_header;
using lookalike::image::RgbImage;
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
                      FormatCase{"name with spaces ünïcødé 画像.jpg", "jpeg", 12}),
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
      {"svg_named.png", "SVG"},         {"does not exist.jpg", "cannot open"},
  };
  for (const auto& [name, cause] : cases) {
    const std::string reason = expect_decode_error(fixture(name));
    EXPECT_NE(reason.find(cause), std::string::npos) << name << ": " << reason;
  }
  const std::string corrupt = expect_decode_error(fixture("corrupt.jpg"));
  EXPECT_NE(corrupt.find("Corrupt JPEG data"), std::string::npos) << corrupt;
}

TEST_F(DecodeTest, DecompressionBombsAreRefusedBeforeDecoding) {
  for (const char* name : {"huge_header.png", "huge_header.jpg"}) {
    const auto start = std::chrono::steady_clock::now();
    const std::string reason = expect_decode_error(fixture(name));
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_NE(reason.find("max_pixels"), std::string::npos) << reason;
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
