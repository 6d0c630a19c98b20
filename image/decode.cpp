#include "image/decode.h"

#include <spdlog/spdlog.h>
#include <vips/vips.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "image/jpeg_fast.h"

namespace lookalike::image {
namespace {

enum class Format { jpeg, png, webp, gif, tiff, bmp, heif };

const char* format_name(Format f) {
  switch (f) {
    case Format::jpeg:
      return "jpeg";
    case Format::png:
      return "png";
    case Format::webp:
      return "webp";
    case Format::gif:
      return "gif";
    case Format::tiff:
      return "tiff";
    case Format::bmp:
      return "bmp";
    case Format::heif:
      return "heif";
  }
  return "?";
}

struct VipsUnref {
  void operator()(VipsImage* im) const { g_object_unref(im); }
};
using VipsPtr = std::unique_ptr<VipsImage, VipsUnref>;

using Bytes = std::span<const std::uint8_t>;

bool starts_with(Bytes b, std::string_view magic, std::size_t at = 0) {
  return b.size() >= at + magic.size() &&
         std::memcmp(b.data() + at, magic.data(), magic.size()) == 0;
}

std::uint32_t le32(Bytes b, std::size_t at) {
  return b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (std::uint32_t(b[at + 3]) << 24);
}

// ImageMagick (libvips' only BMP route) guesses formats itself, so it is handed only files
// whose BITMAPFILEHEADER is followed by a known DIB header size.
bool is_bmp(Bytes b) {
  if (!starts_with(b, "BM") || b.size() < 18) return false;
  const std::uint32_t dib = le32(b, 14);
  return dib == 12 || dib == 40 || dib == 52 || dib == 56 || dib == 64 || dib == 108 || dib == 124;
}

bool is_heif(Bytes b) {
  if (!starts_with(b, "ftyp", 4) || b.size() < 12) return false;
  static constexpr std::array<std::string_view, 8> brands = {"heic", "heix", "hevc", "hevx",
                                                             "heim", "heis", "mif1", "msf1"};
  return std::any_of(brands.begin(), brands.end(),
                     [&](std::string_view brand) { return starts_with(b, brand, 8); });
}

// Our own whitelist, so that libvips' catch-all loaders (ImageMagick, poppler, librsvg) are
// never reached by arbitrary files.
std::optional<Format> sniff(Bytes b) {
  if (starts_with(b, "\xFF\xD8\xFF")) return Format::jpeg;
  if (starts_with(b, "\x89PNG\r\n\x1A\n")) return Format::png;
  if (starts_with(b, "RIFF") && starts_with(b, "WEBP", 8)) return Format::webp;
  if (starts_with(b, "GIF87a") || starts_with(b, "GIF89a")) return Format::gif;
  if (starts_with(b, std::string_view("II*\0", 4)) || starts_with(b, std::string_view("MM\0*", 4)))
    return Format::tiff;
  if (is_bmp(b)) return Format::bmp;
  if (is_heif(b)) return Format::heif;
  return std::nullopt;
}

std::string describe_unrecognised(Bytes b) {
  if (starts_with(b, "%PDF")) return "not an image (a PDF document)";
  if (starts_with(b, "<?xml") || starts_with(b, "<svg")) return "not a raster image (XML/SVG)";
  if (starts_with(b, "%!PS")) return "not an image (PostScript)";
  const std::size_t n = std::min<std::size_t>(b.size(), 64);
  const bool text = std::all_of(b.begin(), b.begin() + n, [](std::uint8_t c) {
    return c == '\n' || c == '\r' || c == '\t' || (c >= 0x20 && c < 0x7F) || c >= 0x80;
  });
  if (text) return "not an image (looks like text)";
  return "not a supported image format (unrecognised signature)";
}

// libvips keeps one process-wide error buffer; take (and clear) its text as one line.
std::string take_vips_error() {
  char* raw = vips_error_buffer_copy();
  std::string text = raw ? raw : "";
  g_free(raw);
  std::string line;
  for (char c : text) line += (c == '\n') ? ' ' : c;
  while (!line.empty() && line.back() == ' ') line.pop_back();
  return line.empty() ? "unknown libvips error" : line;
}

VipsPtr open_lazy(Format f, Bytes bytes, int shrink) {
  // libvips does not write to the buffer; its API just lacks const.
  void* buf = const_cast<std::uint8_t*>(bytes.data());
  const std::size_t len = bytes.size();
  // Truncated files fail instead of being grey-filled.
  const VipsFailOn fail = VIPS_FAIL_ON_ERROR;
  VipsImage* out = nullptr;
  int rc = -1;
  switch (f) {
    case Format::jpeg:
      rc = vips_jpegload_buffer(buf, len, &out, "fail_on", fail, "shrink", shrink, nullptr);
      break;
    case Format::png:
      rc = vips_pngload_buffer(buf, len, &out, "fail_on", fail, nullptr);
      break;
    case Format::webp:
      rc = vips_webpload_buffer(buf, len, &out, "fail_on", fail, nullptr);
      break;
    case Format::gif:
      rc = vips_gifload_buffer(buf, len, &out, "fail_on", fail, nullptr);
      break;
    case Format::tiff:
      rc = vips_tiffload_buffer(buf, len, &out, "fail_on", fail, nullptr);
      break;
    case Format::bmp:
      rc = vips_magickload_buffer(buf, len, &out, "fail_on", fail, nullptr);
      break;
    case Format::heif:
      rc = vips_heifload_buffer(buf, len, &out, "fail_on", fail, nullptr);
      break;
  }
  return VipsPtr(rc == 0 ? out : nullptr);
}

struct Opened {
  Format format;
  VipsPtr image;  // header read, pixels not yet decoded
};

Opened open_checked(Bytes bytes, const std::string& name) {
  if (bytes.empty()) throw DecodeError(name, "empty file (0 bytes)");
  const auto format = sniff(bytes);
  if (!format) throw DecodeError(name, describe_unrecognised(bytes));
  VipsPtr image = open_lazy(*format, bytes, 1);
  if (!image) {
    throw DecodeError(
        name, std::string("cannot read ") + format_name(*format) + " header: " + take_vips_error());
  }
  return {*format, std::move(image)};
}

int upright_width(VipsImage* im) {
  return vips_image_get_orientation_swap(im) ? im->Ysize : im->Xsize;
}
int upright_height(VipsImage* im) {
  return vips_image_get_orientation_swap(im) ? im->Xsize : im->Ysize;
}

void check_pixel_limit(VipsImage* im, const DecodeOptions& options, const std::string& name) {
  if (options.max_pixels <= 0) throw std::invalid_argument("DecodeOptions::max_pixels must be > 0");
  const std::int64_t pixels = std::int64_t(im->Xsize) * im->Ysize;
  if (pixels > options.max_pixels) {
    throw DecodeError(name, "image is " + std::to_string(im->Xsize) + "x" +
                                std::to_string(im->Ysize) + " = " + std::to_string(pixels) +
                                " pixels, over the limit of " + std::to_string(options.max_pixels) +
                                " (DecodeOptions::max_pixels; a decompression-bomb guard)");
  }
}

// libjpeg-turbo scales by 1/s while decoding; the result is ceil(size / s).
int choose_shrink(int width, int height, int min_shorter_side) {
  if (min_shorter_side <= 0) return 1;
  const int shorter = std::min(width, height);
  for (int s : {8, 4, 2}) {
    if ((shorter + s - 1) / s >= 2 * min_shorter_side) return s;
  }
  return 1;
}

// The loaders are lazy: the pipeline below runs only when pixels are written out, so a
// failure there is the file's data (truncated or corrupt), not its header.
std::string data_failure(Format f, Bytes bytes, const std::string& vips_msg) {
  std::string lower = vips_msg;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  const bool said_truncated = lower.find("premature end") != std::string::npos ||
                              lower.find("truncated") != std::string::npos ||
                              lower.find("not enough data") != std::string::npos;
  static constexpr std::string_view png_end("IEND\xAE\x42\x60\x82", 8);
  const bool png_cut =
      f == Format::png &&
      (bytes.size() < png_end.size() || std::memcmp(bytes.data() + bytes.size() - png_end.size(),
                                                    png_end.data(), png_end.size()) != 0);
  const std::string what = (said_truncated || png_cut) ? "truncated file" : "corrupt image data";
  return what + " (" + format_name(f) + ": " + vips_msg + ")";
}

// Runs one libvips operation `op(VipsImage** out)` and owns its result.
template <typename Op>
VipsPtr apply(Op op, Format f, Bytes bytes, const std::string& name) {
  VipsImage* out = nullptr;
  if (op(&out) != 0) throw DecodeError(name, data_failure(f, bytes, take_vips_error()));
  return VipsPtr(out);
}

// 8-bit samples with alpha removed (like PIL's convert("RGB"), which drops rather than
// composites): 1 band (grey), 3 (RGB) or 4 (CMYK).
VipsPtr to_8bit_colour(VipsPtr im, Format f, Bytes bytes, const std::string& name) {
  const VipsInterpretation kind = im->Type;
  const bool cmyk = kind == VIPS_INTERPRETATION_CMYK && im->Bands >= 4;
  const bool grey = im->Bands <= 2;
  const bool rgb_like = kind == VIPS_INTERPRETATION_sRGB || kind == VIPS_INTERPRETATION_RGB16 ||
                        kind == VIPS_INTERPRETATION_RGB || kind == VIPS_INTERPRETATION_MULTIBAND;
  if (!cmyk && !grey && !rgb_like) {  // Lab, XYZ, ... (TIFF): let libvips convert
    im = apply(
        [&](VipsImage** out) {
          return vips_colourspace(im.get(), out, VIPS_INTERPRETATION_sRGB, nullptr);
        },
        f, bytes, name);
  }
  const int keep = cmyk ? 4 : (im->Bands <= 2 ? 1 : 3);
  if (im->Bands > keep) {
    im = apply(
        [&](VipsImage** out) { return vips_extract_band(im.get(), out, 0, "n", keep, nullptr); }, f,
        bytes, name);
  }
  if (im->BandFmt == VIPS_FORMAT_USHORT) {  // 16-bit: keep the high byte, as PIL does for RGB
    im = apply([&](VipsImage** out) { return vips_rshift_const1(im.get(), out, 8, nullptr); }, f,
               bytes, name);
  }
  if (im->BandFmt != VIPS_FORMAT_UCHAR) {
    if (vips_band_format_isfloat(im->BandFmt) || vips_band_format_iscomplex(im->BandFmt)) {
      throw DecodeError(
          name, std::string("unsupported sample format (floating point ") + format_name(f) + ")");
    }
    im = apply([&](VipsImage** out) { return vips_cast_uchar(im.get(), out, nullptr); }, f, bytes,
               name);
  }
  return im;
}

// PIL's CMYK -> RGB (no colour management: R = (255 - C) * (255 - K) / 255, rounded), so that
// CMYK files give the pixels the Python reference pipeline (and the model's training) saw.
void cmyk_to_rgb(const std::vector<std::uint8_t>& cmyk, std::vector<std::uint8_t>& rgb) {
  const std::size_t n = cmyk.size() / 4;
  rgb.resize(n * 3);
  for (std::size_t i = 0; i < n; ++i) {
    const int not_k = 255 - cmyk[i * 4 + 3];
    for (int c = 0; c < 3; ++c) {
      const int t = cmyk[i * 4 + c] * not_k + 128;
      const int ink = ((t >> 8) + t) >> 8;  // rounded division by 255
      rgb[i * 3 + c] = std::uint8_t(std::clamp(not_k - ink, 0, 255));
    }
  }
}

void grey_to_rgb(const std::vector<std::uint8_t>& grey, std::vector<std::uint8_t>& rgb) {
  rgb.resize(grey.size() * 3);
  for (std::size_t i = 0; i < grey.size(); ++i) {
    rgb[i * 3] = rgb[i * 3 + 1] = rgb[i * 3 + 2] = grey[i];
  }
}

// Runs the lazy pipeline (decoding the pixels) straight into our buffer.
RgbImage render_rgb(VipsPtr im, Format f, Bytes bytes, const std::string& name) {
  const int bands = im->Bands;
  std::vector<std::uint8_t> raw(std::size_t(im->Xsize) * im->Ysize * bands);
  VipsPtr sink(vips_image_new_from_memory(raw.data(), raw.size(), im->Xsize, im->Ysize, bands,
                                          VIPS_FORMAT_UCHAR));
  if (!sink) throw DecodeError(name, "cannot allocate pixels: " + take_vips_error());
  if (vips_image_write(im.get(), sink.get()) != 0) {
    throw DecodeError(name, data_failure(f, bytes, take_vips_error()));
  }
  RgbImage rgb{im->Xsize, im->Ysize, {}};
  if (bands == 3) {
    rgb.pixels = std::move(raw);
  } else if (bands == 4) {
    cmyk_to_rgb(raw, rgb.pixels);
  } else {
    grey_to_rgb(raw, rgb.pixels);
  }
  return rgb;
}

void forward_vips_warning(const gchar* domain, GLogLevelFlags, const gchar* message, gpointer) {
  spdlog::debug("{}: {}", domain ? domain : "glib", message ? message : "");
}

std::vector<std::uint8_t> read_all(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DecodeError(path.string(), std::string("cannot open: ") + std::strerror(errno));
  std::vector<std::uint8_t> bytes;
  std::array<char, 1 << 16> chunk;
  while (in.read(chunk.data(), chunk.size()) || in.gcount() > 0) {
    bytes.insert(bytes.end(), chunk.data(), chunk.data() + in.gcount());
    // Reject non-images after the first block instead of reading a whole video into memory.
    if (bytes.size() == chunk.size() && !sniff(bytes)) break;
  }
  if (in.bad()) throw DecodeError(path.string(), "read error");
  return bytes;
}

}  // namespace

void init_decoder() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (VIPS_INIT("lookalike") != 0) {
      throw std::runtime_error("libvips failed to start: " + take_vips_error());
    }
    vips_concurrency_set(1);
    // The operation cache would keep every decoded image's pipeline (and memory) alive.
    vips_cache_set_max(0);
    // Loader warnings (e.g. "extraneous bytes") are not errors; keep them off stderr.
    g_log_set_handler("VIPS", G_LOG_LEVEL_WARNING, forward_vips_warning, nullptr);
  });
}

Decoded decode_buffer(std::span<const std::uint8_t> bytes, const std::string& name,
                      const DecodeOptions& options) {
  init_decoder();
  Opened opened = open_checked(bytes, name);
  VipsPtr im = std::move(opened.image);
  check_pixel_limit(im.get(), options, name);

  Decoded result;
  result.format = format_name(opened.format);
  result.source_width = upright_width(im.get());
  result.source_height = upright_height(im.get());
  if (opened.format == Format::jpeg) {
    result.shrink = choose_shrink(im->Xsize, im->Ysize, options.min_shorter_side);
    if (vips_image_get_orientation(im.get()) == 1) {
      detail::RowRange rows;
      if (options.rows_for != nullptr) {
        rows = [&](int w, int h) {
          return rows_read(w, h, result.source_width, result.source_height, *options.rows_for);
        };
      }
      if (auto rgb = detail::decode_plain_jpeg(bytes, result.shrink, name, rows)) {
        result.rgb = std::move(*rgb);
        return result;
      }
    }
    if (result.shrink > 1) {
      im = open_lazy(opened.format, bytes, result.shrink);
      if (!im) throw DecodeError(name, "cannot read jpeg header: " + take_vips_error());
    }
  }
  im = to_8bit_colour(std::move(im), opened.format, bytes, name);
  im = apply([&](VipsImage** out) { return vips_autorot(im.get(), out, nullptr); }, opened.format,
             bytes, name);
  result.rgb = render_rgb(std::move(im), opened.format, bytes, name);
  return result;
}

Decoded decode_file(const std::filesystem::path& path, const DecodeOptions& options) {
  const auto bytes = read_all(path);
  return decode_buffer(bytes, path.string(), options);
}

ImageHeader read_header(const std::filesystem::path& path) {
  init_decoder();
  const auto bytes = read_all(path);
  Opened opened = open_checked(bytes, path.string());
  return {upright_width(opened.image.get()), upright_height(opened.image.get()),
          format_name(opened.format)};
}

}  // namespace lookalike::image
