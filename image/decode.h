// Decoding image files to upright 8-bit RGB.
//
// Formats: JPEG (libjpeg-turbo, with DCT-domain downscaling when the image is much larger than
// needed; plain JPEGs through its own API, CMYK or EXIF-rotated ones through libvips), PNG,
// WebP, BMP (libvips' ImageMagick loader), TIFF, GIF (first frame, through giflib: see
// gif_decode.h), HEIF/HEIC and AVIF (libvips' heifload: Debian's libheif 1.15 decodes HEVC
// through libde265 and AV1 through dav1d/AOM).
// The format is sniffed from the bytes (never the file name) against that whitelist.
// The EXIF orientation is applied; greyscale, 16-bit and CMYK sources become 8-bit RGB, and an
// alpha channel is dropped, as PIL's Image.convert("RGB") does (the reference pipeline). For
// plain RGB/greyscale JPEGs decoded at full size, CMYK, 16-bit RGB and GIFs (transparent pixels
// keep their palette colour, a first frame smaller than the screen is placed on a canvas of the
// transparent index's colour, else index 0's, as Pillow 9.4 does) the pixels are PIL's exactly;
// 16-bit greyscale keeps the high byte (PIL would clip the 16-bit value to 255).
//
// Not exact: a JPEG decoded at 1/2, 1/4 or 1/8 scale is downscaled in the DCT domain, which PIL
// does not do. The commands set DecodeOptions::min_shorter_side to the model's resize, so this
// is every JPEG whose shorter side is at least 4 x that - 1 (1,023 px for the shipped 256-px
// models). Measured embedding cosine to PIL + torchvision (MobileNetV2, FP32): 1100x1466
// 0.99930, 2400x3204 0.99976, 3000x4000 0.99971; smaller JPEGs 1.00000. To reproduce:
// tests/e2e/decode_defects.py (section large_jpeg) measures a 2000x2668 JPEG made from a
// clothing-small photo (0.99995) and requires >= 0.999.
//
// Memory per image: the file's bytes (<= max_file_bytes, default 256 MiB) plus the decoded
// raster, 3 bytes a pixel (<= max_pixels, default 89.5 M pixels, so <= 256 MiB). Images that
// go through libvips (all but plain JPEGs and GIFs) transiently hold up to about 8 bytes a
// pixel more: the loader's samples (4 bytes a pixel for CMYK, 1 for grey) and, when an EXIF
// rotation is applied, a second copy. Worst case with the defaults: about 256 MiB + 11 x 89.5 M
// = 1.2 GiB; a plain JPEG or a GIF costs its file plus 3 bytes a pixel (a GIF's canvas: its
// logical screen, widened to hold the first frame, checked against max_pixels). Width and
// height are each at most 10,000,000 (libvips' VIPS_MAX_COORD) whatever max_pixels says. An
// allocation failure becomes a DecodeError ("out of memory decoding a W x H image"), never
// std::bad_alloc.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "image/image.h"
#include "image/preprocess.h"

namespace lookalike::image {

struct DecodeOptions {
  // Refuse images with more pixels than this (width x height of the stored image, read from
  // the header before any pixel is decoded): a decompression-bomb guard. Default 89,478,485 is
  // PIL's Image.MAX_IMAGE_PIXELS. Must be > 0 (std::invalid_argument otherwise).
  std::int64_t max_pixels = 89'478'485;
  // When > 0, refuse images whose longer side is more than this many times the shorter one
  // (read from the header, like max_pixels). 0 = no limit (the default: `index` accepts a
  // 1 x 9,000,000 strip, see docs/bad-input.md); the server sets 100 for uploads and queries.
  double max_aspect_ratio = 0;
  // Refuse files larger than this many bytes, from their size before any byte is read (the
  // whole file is held in memory while decoding). Default 256 MiB (268,435,456): a 16-bit RGB
  // TIFF at the default max_pixels needs more and is refused; raise it for such files.
  // Must be > 0 (std::invalid_argument otherwise).
  std::int64_t max_file_bytes = std::int64_t(256) << 20;
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
  std::string format;  // "jpeg", "png", "webp", "bmp", "tiff", "gif", "heif", "avif"
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

// The format that a file starting with `head` holds: "jpeg", "png", "webp", "gif", "tiff", "bmp",
// "heif" or "avif" (ISO BMFF "ftyp" with a HEIF or AVIF major brand), or "" for anything else.
// Needs the first kSniffBytes bytes (fewer only when the file is shorter). Signatures: the
// formats' own specifications (JFIF/JPEG SOI FF D8 FF, PNG's 8-byte signature, RIFF....WEBP,
// GIF87a/GIF89a, TIFF II*\0 / MM\0*, BMP "BM" plus a known DIB header size, ISO/IEC 23008-12
// and AV1-ISOBMFF brands).
inline constexpr std::size_t kSniffBytes = 32;
std::string sniff_format(std::span<const std::uint8_t> head);

// For messages about files that are not what they seem (shared with pipeline/files.h):
// "a directory", "a FIFO", "a socket", ... for a stat() st_mode that is not a regular file.
const char* file_kind(unsigned mode);
// Why stat() of `path` failed with errno `err`: "symlink loop (...)", "broken symlink (its
// target T does not exist)", or the system's message.
std::string stat_failure(const std::filesystem::path& path, int err);

// An image file's bytes, checked before they are read: `path` (symlinks followed) must be a
// regular file (a folder, FIFO, socket or device is refused from stat(), never opened, so a
// FIFO cannot block), of at most options.max_file_bytes, starting with a supported signature;
// when the image header lies within the first 64 KiB (PNG, GIF, BMP, WebP, most JPEGs), its
// width x height must be within options.max_pixels. Only then is the rest read.
// Throws DecodeError naming `path`, the reason starting with one of: "cannot open: <errno
// text>", "cannot open: broken symlink", "cannot open: symlink loop", "not a regular file (a
// FIFO|directory|socket|character device|block device)", "empty file (0 bytes)", "file is N
// bytes, over the limit", "not an image", "not a supported image format", "image is WxH",
// "read error". decode_file is read_image_file + decode_buffer; callers that also need the
// bytes (to hash them) call the two themselves.
std::vector<std::uint8_t> read_image_file(const std::filesystem::path& path,
                                          const DecodeOptions& options = {});

// read_image_file + decode_buffer. Throws DecodeError naming `path` and the cause (see
// read_image_file; then truncated, corrupt, over max_pixels, unsupported sample format,
// "<format>: libvips: <libvips' message>", out of memory). max_pixels is checked against the
// header before any pixel is decoded.
Decoded decode_file(const std::filesystem::path& path, const DecodeOptions& options = {});
// Same for bytes already in memory; `name` is used in error messages.
Decoded decode_buffer(std::span<const std::uint8_t> bytes, const std::string& name,
                      const DecodeOptions& options = {});
// The file is read (and checked) as read_image_file does, with `options`' limits; max_pixels is
// not applied, so a bomb's size can be reported.
ImageHeader read_header(const std::filesystem::path& path, const DecodeOptions& options = {});

}  // namespace lookalike::image
