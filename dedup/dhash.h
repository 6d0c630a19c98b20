// Perceptual difference hash (dHash): Neal Krawetz, "Kind of Like That", The Hacker Factor Blog,
// 2013 (https://www.hackerfactor.com/blog/index.php?/archives/529-Kind-of-Like-That.html).
//
// The image is reduced to 8-bit luma (ITU-R BT.601 weights), box-averaged down to 9 columns x 8
// rows, and each of the 64 bits says whether a pixel is brighter than its right neighbour. Bit
// (row r, column c), r and c in 0..7, is bit 63 - (8 r + c) of the value (row-major, most
// significant first). Only the sign of horizontal gradients survives, so a re-encode, a resize, a
// uniform brightness or contrast change keep the hash (a few bits flip where neighbours are
// nearly equal); a slight crop shifts the grid and flips a few more; a different picture differs
// in about half of the bits (32 of 64 on average for unrelated images).
#pragma once

#include <cstdint>
#include <filesystem>

#include "image/image.h"

namespace lookalike::dedup {

// Hamming distances at or under this are "the same picture". Krawetz: "a distance of zero is
// likely the same image ... 1-10 is a potential variation; above 10 probably a different image".
inline constexpr int kSamePictureMaxHamming = 10;

// dHash of decoded pixels. Throws std::invalid_argument for an image under 9 x 8 pixels or whose
// pixel buffer does not hold width * height * 3 bytes.
std::uint64_t dhash(const image::RgbImage& rgb);

// dHash of an image file (any format image::decode_file reads, EXIF orientation applied; JPEGs
// are DCT-downscaled while the shorter side stays >= 64 pixels, which the 9 x 8 box average does
// not notice). Throws image::DecodeError naming `path` (its reason from decode_file, or "image
// is W x H, too small for a 9 x 8 difference hash").
std::uint64_t dhash_file(const std::filesystem::path& path);

// Number of differing bits, 0..64.
int hamming(std::uint64_t a, std::uint64_t b);

}  // namespace lookalike::dedup
