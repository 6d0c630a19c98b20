// Thumbnails for display (the web page's result tiles): libvips' vips_thumbnail_buffer, which
// shrinks on load (JPEG DCT scaling, WebP/HEIF reduced decodes) and applies the EXIF
// orientation, then a baseline JPEG.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace lookalike::image {

inline constexpr int kMinThumbnailSize = 16;
inline constexpr int kMaxThumbnailSize = 1024;

// A JPEG (quality 80, sRGB) whose longest side is min(size, the image's longest side): never
// enlarged. bytes: a whole image file in a supported format (see decode.h). Throws
// std::invalid_argument for size outside [kMinThumbnailSize, kMaxThumbnailSize], DecodeError
// naming `name` with libvips' message when the image cannot be read.
std::vector<std::uint8_t> thumbnail_jpeg(std::span<const std::uint8_t> bytes,
                                         const std::string& name, int size);

}  // namespace lookalike::image
