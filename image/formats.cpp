#include "image/formats.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string_view>

namespace lookalike::image::detail {
namespace {

bool starts_with(Bytes b, std::string_view magic, std::size_t at = 0) {
  return b.size() >= at + magic.size() &&
         std::memcmp(b.data() + at, magic.data(), magic.size()) == 0;
}

std::uint32_t le16(Bytes b, std::size_t at) { return b[at] | (b[at + 1] << 8); }
std::uint32_t be16(Bytes b, std::size_t at) { return (b[at] << 8) | b[at + 1]; }
std::uint32_t le24(Bytes b, std::size_t at) { return le16(b, at) | (b[at + 2] << 16); }
std::uint32_t le32(Bytes b, std::size_t at) {
  return le24(b, at) | (std::uint32_t(b[at + 3]) << 24);
}
std::uint32_t be32(Bytes b, std::size_t at) { return (be16(b, at) << 16) | be16(b, at + 2); }

// ImageMagick (libvips' only BMP route) guesses formats itself, so it is handed only files
// whose BITMAPFILEHEADER is followed by a known DIB header size.
bool is_bmp(Bytes b) {
  if (!starts_with(b, "BM") || b.size() < 18) return false;
  const std::uint32_t dib = le32(b, 14);
  return dib == 12 || dib == 40 || dib == 52 || dib == 56 || dib == 64 || dib == 108 || dib == 124;
}

// ISO BMFF: the major brand follows "ftyp" (bytes 8..11). HEIF brands from ISO/IEC 23008-12
// (Annex B), AVIF's from the AV1 Image File Format spec; "mif1"/"msf1" files are generic HEIF
// image/sequence files (libheif picks the codec from the item type).
std::optional<Format> heif_kind(Bytes b) {
  if (!starts_with(b, "ftyp", 4) || b.size() < 12) return std::nullopt;
  static constexpr std::array<std::string_view, 8> heif = {"heic", "heix", "hevc", "hevx",
                                                           "heim", "heis", "mif1", "msf1"};
  auto brand_is = [&](std::string_view brand) { return starts_with(b, brand, 8); };
  if (brand_is("avif") || brand_is("avis")) return Format::avif;
  if (std::any_of(heif.begin(), heif.end(), brand_is)) return Format::heif;
  return std::nullopt;
}

using Size = std::optional<std::array<std::int64_t, 2>>;

Size known(std::int64_t w, std::int64_t h) {
  if (w <= 0 || h <= 0) return std::nullopt;  // e.g. a JPEG height deferred to a DNL marker
  return std::array<std::int64_t, 2>{w, h};
}

// SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size (ITU-T T.81 B.2.2).
bool is_sof(std::uint8_t m) {
  return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
}

Size jpeg_size(Bytes b) {
  std::size_t at = 2;  // after SOI
  while (at + 4 <= b.size()) {
    if (b[at] != 0xFF) return std::nullopt;
    const std::uint8_t marker = b[at + 1];
    if (marker == 0xFF) {  // fill byte
      ++at;
      continue;
    }
    if (marker == 0xD8 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) {
      at += 2;  // no length field
      continue;
    }
    if (is_sof(marker)) {
      if (at + 9 > b.size()) return std::nullopt;
      return known(be16(b, at + 7), be16(b, at + 5));
    }
    if (marker == 0xDA || marker == 0xD9) return std::nullopt;  // scan data before any frame
    at += 2 + be16(b, at + 2);
  }
  return std::nullopt;
}

Size webp_size(Bytes b) {
  if (b.size() < 30) return std::nullopt;
  if (starts_with(b, "VP8X", 12)) return known(le24(b, 24) + 1, le24(b, 27) + 1);
  if (starts_with(b, "VP8L", 12) && b[20] == 0x2F) {  // RFC 9649 5.2: 14-bit width-1, height-1
    const std::uint32_t bits = le32(b, 21);
    return known((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1);
  }
  if (starts_with(b, "VP8 ", 12)) return known(le16(b, 26) & 0x3FFF, le16(b, 28) & 0x3FFF);
  return std::nullopt;
}

Size bmp_size(Bytes b) {
  if (le32(b, 14) == 12) return b.size() >= 22 ? known(le16(b, 18), le16(b, 20)) : std::nullopt;
  if (b.size() < 26) return std::nullopt;
  const auto height = std::int32_t(le32(b, 22));  // negative: rows stored top-down
  return known(std::int32_t(le32(b, 18)), height < 0 ? -std::int64_t(height) : height);
}

}  // namespace

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
    case Format::avif:
      return "avif";
  }
  return "?";
}

std::optional<Format> sniff(Bytes b) {
  if (starts_with(b, "\xFF\xD8\xFF")) return Format::jpeg;
  if (starts_with(b, "\x89PNG\r\n\x1A\n")) return Format::png;
  if (starts_with(b, "RIFF") && starts_with(b, "WEBP", 8)) return Format::webp;
  if (starts_with(b, "GIF87a") || starts_with(b, "GIF89a")) return Format::gif;
  if (starts_with(b, std::string_view("II*\0", 4)) || starts_with(b, std::string_view("MM\0*", 4)))
    return Format::tiff;
  if (is_bmp(b)) return Format::bmp;
  return heif_kind(b);
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

std::optional<std::array<std::int64_t, 2>> head_dimensions(Format f, Bytes b) {
  switch (f) {
    case Format::png:  // IHDR must be the first chunk (PNG spec 5.6)
      return b.size() >= 24 && starts_with(b, "IHDR", 12) ? known(be32(b, 16), be32(b, 20))
                                                          : std::nullopt;
    case Format::gif:
      return b.size() >= 10 ? known(le16(b, 6), le16(b, 8)) : std::nullopt;
    case Format::bmp:
      return bmp_size(b);
    case Format::webp:
      return webp_size(b);
    case Format::jpeg:
      return jpeg_size(b);
    default:
      return std::nullopt;
  }
}

bool gif_zero_screen(Bytes b) {
  return sniff(b) == Format::gif && b.size() >= 10 && (le16(b, 6) == 0 || le16(b, 8) == 0);
}

void check_options(const DecodeOptions& options) {
  if (options.max_pixels <= 0) throw std::invalid_argument("DecodeOptions::max_pixels must be > 0");
  if (options.max_file_bytes <= 0) {
    throw std::invalid_argument("DecodeOptions::max_file_bytes must be > 0");
  }
}

void check_pixel_limit(std::int64_t width, std::int64_t height, const DecodeOptions& options,
                       const std::string& name) {
  check_options(options);
  const std::int64_t pixels = width * height;
  if (pixels > options.max_pixels) {
    throw DecodeError(name, "image is " + std::to_string(width) + "x" + std::to_string(height) +
                                " = " + std::to_string(pixels) + " pixels, over the limit of " +
                                std::to_string(options.max_pixels) +
                                " (--max-pixels; a decompression-bomb guard)");
  }
  const auto longer = std::max(width, height), shorter = std::min(width, height);
  if (options.max_aspect_ratio > 0 && shorter > 0 &&
      static_cast<double>(longer) > options.max_aspect_ratio * static_cast<double>(shorter)) {
    char limit[32];
    std::snprintf(limit, sizeof limit, "%g", options.max_aspect_ratio);
    throw DecodeError(name, "image is " + std::to_string(width) + "x" + std::to_string(height) +
                                ", an aspect ratio over the limit of " + limit +
                                ":1 (--max-aspect-ratio)");
  }
}

}  // namespace lookalike::image::detail
