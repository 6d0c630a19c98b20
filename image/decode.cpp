#include "image/decode.h"

#include <spdlog/spdlog.h>
#include <vips/vips.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "image/formats.h"
#include "image/gif_decode.h"
#include "image/jpeg_fast.h"

namespace lookalike::image {
namespace {

using detail::Bytes;
using detail::Format;
using detail::format_name;

struct VipsUnref {
  void operator()(VipsImage* im) const { g_object_unref(im); }
};
using VipsPtr = std::unique_ptr<VipsImage, VipsUnref>;

// libvips keeps one process-wide error buffer; take (and clear) its text as one line,
// prefixed "libvips: " so that the reader knows whose words these are.
std::string take_vips_error() {
  char* raw = vips_error_buffer_copy();
  std::string text = raw ? raw : "";
  g_free(raw);
  std::string line;
  for (char c : text) line += (c == '\n') ? ' ' : c;
  while (!line.empty() && line.back() == ' ') line.pop_back();
  return line.empty() ? "libvips failed without giving a reason" : "libvips: " + line;
}

// Sequential access lets the loader decode straight into the rows we pull (render_rgb, top to
// bottom). Random access, which libvips needs only to rotate, makes the loader first decode the
// whole image into a buffer of its own: a second raster, and slow for tall images (see
// pull_pixels).
VipsPtr open_lazy(Format f, Bytes bytes, int shrink, VipsAccess access = VIPS_ACCESS_SEQUENTIAL) {
  // libvips does not write to the buffer; its API just lacks const.
  void* buf = const_cast<std::uint8_t*>(bytes.data());
  const std::size_t len = bytes.size();
  // Truncated files fail instead of being grey-filled.
  const VipsFailOn fail = VIPS_FAIL_ON_ERROR;
  VipsImage* out = nullptr;
  int rc = -1;
  switch (f) {
    case Format::jpeg:
      rc = vips_jpegload_buffer(buf, len, &out, "fail_on", fail, "access", access, "shrink", shrink,
                                nullptr);
      break;
    case Format::png:
      rc = vips_pngload_buffer(buf, len, &out, "fail_on", fail, "access", access, nullptr);
      break;
    case Format::webp:
      rc = vips_webpload_buffer(buf, len, &out, "fail_on", fail, "access", access, nullptr);
      break;
    case Format::gif:  // giflib instead (gif_decode.h): libvips blackens transparent pixels
      break;
    case Format::tiff:
      rc = vips_tiffload_buffer(buf, len, &out, "fail_on", fail, "access", access, nullptr);
      break;
    case Format::bmp:
      rc = vips_magickload_buffer(buf, len, &out, "fail_on", fail, "access", access, nullptr);
      break;
    case Format::heif:
    case Format::avif:
      rc = vips_heifload_buffer(buf, len, &out, "fail_on", fail, "access", access, nullptr);
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
  const auto format = detail::sniff(bytes);
  if (!format) throw DecodeError(name, detail::describe_unrecognised(bytes));
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

using detail::check_pixel_limit;

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
  return what + " (" + format_name(f) + ", " + vips_msg + ")";
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

struct RegionUnref {
  void operator()(VipsRegion* r) const { g_object_unref(r); }
};

// Runs the lazy pipeline (decoding the pixels) into `raw`, top to bottom, in strips of about
// 1 MiB. Pulling strips through a region ourselves, rather than vips_image_write's sink, matters
// for tall narrow images: the sink asks thin-strip loaders (PNG) for one row at a time. Measured
// on a 1 x 9,000,000 PNG: 15 s through the sink, 9 s with strips but random access, 2.3 s with
// strips and sequential access.
void pull_pixels(VipsImage* im, std::vector<std::uint8_t>& raw, Format f, Bytes bytes,
                 const std::string& name) {
  const std::size_t row_bytes = std::size_t(im->Xsize) * im->Bands;
  const int strip = int(std::clamp<std::size_t>((1 << 20) / row_bytes, 1, 4096));
  std::unique_ptr<VipsRegion, RegionUnref> region(vips_region_new(im));
  if (!region) throw DecodeError(name, "cannot start decoding: " + take_vips_error());
  for (int y = 0; y < im->Ysize; y += strip) {
    VipsRect rect{0, y, im->Xsize, std::min(strip, im->Ysize - y)};
    if (vips_region_prepare(region.get(), &rect) != 0) {
      throw DecodeError(name, data_failure(f, bytes, take_vips_error()));
    }
    for (int r = 0; r < rect.height; ++r) {
      const auto* src =
          reinterpret_cast<const std::uint8_t*>(VIPS_REGION_ADDR(region.get(), 0, y + r));
      std::memcpy(raw.data() + std::size_t(y + r) * row_bytes, src, row_bytes);
    }
  }
}

// Decodes the pixels and converts them to interleaved RGB.
RgbImage render_rgb(VipsPtr im, Format f, Bytes bytes, const std::string& name) {
  const int bands = im->Bands;
  std::vector<std::uint8_t> raw(std::size_t(im->Xsize) * im->Ysize * bands);
  pull_pixels(im.get(), raw, f, bytes, name);
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

std::string out_of_memory(const char* doing, std::int64_t width, std::int64_t height,
                          std::size_t file_bytes) {
  if (width <= 0)
    return "out of memory " + std::string(doing) + " (" + std::to_string(file_bytes) +
           "-byte file)";
  const std::int64_t mib = (width * height * 3) >> 20;
  return "out of memory " + std::string(doing) + " a " + std::to_string(width) + " x " +
         std::to_string(height) + " image (" + std::to_string(mib) + " MiB of RGB pixels)";
}

Decoded decode_gif_image(Bytes bytes, const std::string& name, const DecodeOptions& options,
                         std::int64_t& width, std::int64_t& height) {
  Decoded result;
  result.format = format_name(Format::gif);
  result.rgb = detail::decode_gif(bytes, name, options, width, height);
  result.source_width = result.rgb.width;
  result.source_height = result.rgb.height;
  return result;
}

// decode_buffer's work; `width`/`height` are set as soon as the header is read, for the
// out-of-memory message.
Decoded decode_opened(Bytes bytes, const std::string& name, const DecodeOptions& options,
                      std::int64_t& width, std::int64_t& height) {
  if (detail::sniff(bytes) == Format::gif)
    return decode_gif_image(bytes, name, options, width, height);
  Opened opened = open_checked(bytes, name);
  VipsPtr im = std::move(opened.image);
  width = im->Xsize;
  height = im->Ysize;
  check_pixel_limit(im->Xsize, im->Ysize, options, name);

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
  }
  // EXIF orientations 2..8 flip or turn the image, which needs random access to the source.
  const bool turned = vips_image_get_orientation(im.get()) > 1;
  if (result.shrink > 1 || turned) {
    im = open_lazy(opened.format, bytes, result.shrink,
                   turned ? VIPS_ACCESS_RANDOM : VIPS_ACCESS_SEQUENTIAL);
    if (!im) {
      throw DecodeError(name, std::string("cannot read ") + format_name(opened.format) +
                                  " header: " + take_vips_error());
    }
  }
  im = to_8bit_colour(std::move(im), opened.format, bytes, name);
  im = apply([&](VipsImage** out) { return vips_autorot(im.get(), out, nullptr); }, opened.format,
             bytes, name);
  result.rgb = render_rgb(std::move(im), opened.format, bytes, name);
  return result;
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
  std::int64_t width = 0, height = 0;
  // Allocation failures (a huge raster, a tight RLIMIT_AS) must name the file, not escape as a
  // bare std::bad_alloc; std::length_error is what a vector size over max_size() throws.
  try {
    return decode_opened(bytes, name, options, width, height);
  } catch (const std::bad_alloc&) {
    throw DecodeError(name, out_of_memory("decoding", width, height, bytes.size()));
  } catch (const std::length_error&) {
    throw DecodeError(name, out_of_memory("decoding", width, height, bytes.size()));
  }
}

Decoded decode_file(const std::filesystem::path& path, const DecodeOptions& options) {
  const auto bytes = read_image_file(path, options);
  return decode_buffer(bytes, path.string(), options);
}

ImageHeader read_header(const std::filesystem::path& path, const DecodeOptions& options) {
  init_decoder();
  const auto bytes = detail::read_checked(path, options, false);
  if (detail::sniff(bytes) == Format::gif) {  // the canvas decode_gif gives, from giflib
    const auto canvas = detail::read_gif_canvas(bytes, path.string());
    return {canvas.width, canvas.height, format_name(Format::gif)};
  }
  Opened opened = open_checked(bytes, path.string());
  return {upright_width(opened.image.get()), upright_height(opened.image.get()),
          format_name(opened.format)};
}

}  // namespace lookalike::image
