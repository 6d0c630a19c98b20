// Internal to lookalike_image: the format whitelist (signature sniffing) and header sizes read
// from a file's first bytes, shared by the file reader and the decoder.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "image/decode.h"

namespace lookalike::image::detail {

enum class Format { jpeg, png, webp, gif, tiff, bmp, heif, avif };

using Bytes = std::span<const std::uint8_t>;

// "jpeg", "png", ... as in Decoded::format.
const char* format_name(Format f);

// Our own whitelist, so that libvips' catch-all loaders (ImageMagick, poppler, librsvg) are
// never reached by arbitrary files. Needs the first kSniffBytes (decode.h) bytes.
std::optional<Format> sniff(Bytes head);

// Why `head` is not one of ours: "not an image (looks like text)", "... (a PDF document)", ...
std::string describe_unrecognised(Bytes head);

// Stored width and height (pixels, before any EXIF rotation) from the header, when it lies
// within `head`: PNG (IHDR), GIF (logical screen), BMP (DIB header), WebP (VP8/VP8L/VP8X) and
// JPEG (the first SOFn marker). nullopt when the header is not in `head`, or for TIFF and
// HEIF/AVIF, whose size sits anywhere in the file. Only for an early max_pixels refusal; the
// decoder checks again with libvips' reading of the whole file.
std::optional<std::array<std::int64_t, 2>> head_dimensions(Format f, Bytes head);
// True for a GIF whose logical screen is 0 pixels wide or high: libvips pads it to 1 x 1, PIL
// refuses it; so do we ("zero size").
bool gif_zero_screen(Bytes b);

// Throws std::invalid_argument for a non-positive max_pixels or max_file_bytes.
void check_options(const DecodeOptions& options);
// Throws DecodeError naming `name` when width x height is over options.max_pixels.
void check_pixel_limit(std::int64_t width, std::int64_t height, const DecodeOptions& options,
                       const std::string& name);

// read_image_file (read_image.cpp), with the head's max_pixels check only when `check_pixels`.
std::vector<std::uint8_t> read_checked(const std::filesystem::path& path,
                                       const DecodeOptions& options, bool check_pixels);

}  // namespace lookalike::image::detail
