// Decoding image files to upright 8-bit RGB.
//
// Formats: JPEG (libjpeg-turbo, with DCT-domain downscaling when the image is much larger than
// needed; plain JPEGs through its own API, CMYK or EXIF-rotated ones through libvips), PNG,
// WebP, BMP (libvips' ImageMagick loader), TIFF, GIF (first frame), HEIF where libvips has it.
// The format is sniffed from the bytes (never the file name) against that whitelist.
// The EXIF orientation is applied; greyscale, 16-bit and CMYK sources become 8-bit RGB, and an
// alpha channel is dropped, as PIL's Image.convert("RGB") does (the reference pipeline). For
// plain RGB/greyscale JPEGs, CMYK and 16-bit RGB the pixels are PIL's exactly; 16-bit greyscale
// keeps the high byte (PIL would clip the 16-bit value to 255).
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

#include "image/image.h"
#include "image/preprocess.h"

namespace lookalike::image {

struct DecodeOptions {
  // Refuse images with more pixels than this (width x height of the stored image, read from
  // the header before any pixel is decoded): a decompression-bomb guard. Default 89,478,485 is
  // PIL's Image.MAX_IMAGE_PIXELS. Must be > 0 (std::invalid_argument otherwise).
  std::int64_t max_pixels = 89'478'485;
  // When > 0, JPEGs may be decoded at 1/2, 1/4 or 1/8 scale (DCT-domain, libjpeg-turbo) as long
  // as the shorter side of the decoded image stays >= 2 * min_shorter_side, so a later
  // antialiased resize to min_shorter_side still sees enough pixels. 0 = always full size.
  int min_shorter_side = 0;
  // When set, JPEGs may skip the IDCT of the rows that image::preprocess(rgb, ..., *rows_for)
  // will not read; those rows are left black, so set it only when the pixels go straight to
  // preprocess. Skipped rows are still entropy-decoded: truncated files are still refused.
  // Measured: ~20% of decode time saved on 400x533 photos for a 256/224 model.
  const PreprocessSpec* rows_for = nullptr;
};

struct Decoded {
  RgbImage rgb;          // upright (EXIF orientation applied), possibly DCT-downscaled
  int source_width = 0;  // upright size of the full-resolution image, in pixels
  int source_height = 0;
  int shrink = 1;      // DCT downscale factor used: 1, 2, 4 or 8
  std::string format;  // "jpeg", "png", "webp", "bmp", "tiff", "gif", "heif"
};

// Header only: upright width and height and format, without decoding pixels.
struct ImageHeader {
  int width = 0;
  int height = 0;
  std::string format;
};

// Starts libvips (thread-safe, idempotent; the decode functions call it too). Sets libvips to
// one worker thread per call, since lookalike parallelises across images itself, and turns off
// its operation cache. All functions below may be called from several threads at once.
void init_decoder();

// Throws DecodeError naming `path` and the cause (missing file, empty file, not an image,
// truncated, corrupt, over max_pixels, unsupported format). max_pixels is checked against the
// header before any pixel is decoded.
Decoded decode_file(const std::filesystem::path& path, const DecodeOptions& options = {});
// Same for bytes already in memory; `name` is used in error messages.
Decoded decode_buffer(std::span<const std::uint8_t> bytes, const std::string& name,
                      const DecodeOptions& options = {});
ImageHeader read_header(const std::filesystem::path& path);

}  // namespace lookalike::image
