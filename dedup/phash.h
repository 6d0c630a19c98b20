// Perceptual DCT hash (pHash) of a picture, stored per image in the catalog (images.phash,
// phash_95, phash_90) and compared by Hamming distance to tell "the same picture" (re-encoded,
// resized, slightly cropped, brightened) from a merely similar one.
//
// Method: pHash's ph_dct_imagehash (Evan Klinger and David Starkweather, pHash.org, 2010;
// described in Christoph Zauner, "Implementation and Benchmarking of Perceptual Image Hash
// Functions", master's thesis, Upper Austria University of Applied Sciences, 2010, section
// 3.1.2): luma (ITU-R BT.601 weights) area-averaged to 32 x 32, a 2-D DCT-II, the 8 x 8 block of
// lowest frequencies without the DC row and column (coefficients [1..8] x [1..8]), and one bit
// per coefficient: above the block's median. Bit (row r, column c), r and c in 0..7, is bit
// 63 - (8 r + c) (row-major, most significant first). pHash.org also blurs with a 7 x 7 mean
// filter first; the 32 x 32 area average already removes the detail that filter is for.
//
// Crops: a global 64-bit hash moves with the frame. On 50 clothing-small photos a crop of 5%
// off every side moved the full-frame pHash 6-24 bits (mean 15), 2.5% a side 2-14, while a
// different photo came as close as 8: no bound separates them. So hashes of the central
// 95% x 95% and 90% x 90% of the frame are stored too, and distance() takes the smallest of
// full/full, centre/full and full/centre: a crop of A by up to about 5% a side is then 0-2 bits
// from A (its full frame against one of A's centres). Extra frames cost some precision:
// different photos within 10 bits went from 4 to 9 of 17,205 pairs.
// Why pHash and not dHash (dedup/dhash.h): on the same photos with the same multi-frame distance
// a horizontal flip came as close as 4 dHash bits (symmetric garments) against 24 pHash bits,
// +20% brightness up to 12 dHash bits against 6, and different photos fell within 10 bits 4x as
// often (38 against 9 of 17,205 pairs). Figures: tests/e2e/duplicates.py prints the pHash ones for
// its 50 photos; the dHash comparison and the different-photo rates are from
// bench/phash_vs_dhash.py.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

#include "image/decode.h"
#include "image/image.h"

namespace lookalike::dedup {

// Hamming distances (distance() below) at or under this are "the same picture". Measured with
// bench/phash_vs_dhash.py (50 clothing-small photos): re-encode at quality 40, 50% resize, +20%
// brightness and crops of 2.5% or 5% a side 0-6 bits from the original; a horizontal flip >= 24;
// 9 of 17,205 pairs of different photos within 10. tests/e2e/duplicates.py, 50 photos with four
// edits and a flip among 300 others: every edit pair found, no flip, no different photos.
// pHash.org's own examples use a threshold of 10 as well.
inline constexpr int kSamePictureMaxDistance = 10;

struct PictureHash {
  std::uint64_t full = 0;      // pHash of the whole upright frame
  std::uint64_t center95 = 0;  // of the central 95% x 95% (2.5% off every side)
  std::uint64_t center90 = 0;  // of the central 90% x 90% (5% off every side)
};

// Smallest Hamming distance of full/full and of either centre of one against the other's full
// frame: 0..64. Symmetric.
int distance(const PictureHash& a, const PictureHash& b);

// pHash of decoded pixels (upright RGB). Throws std::invalid_argument for an image under
// 32 x 32 pixels (the 32 x 32 average would repeat pixels) or whose buffer does not hold
// width * height * 3 bytes. One pass over the pixels for all three frames (about 0.2 ms for
// 400 x 533 on one core); memory beyond the image: about 80 bytes per pixel of width.
PictureHash picture_hash(const image::RgbImage& rgb);

// The decode options picture_hash_bytes/file use: `base` (its limits) with JPEG DCT-domain
// downscaling while the shorter side stays >= 64, and no row skipping (rows_for null).
image::DecodeOptions picture_hash_decode_options(const image::DecodeOptions& base = {});

// pHash of an encoded image in memory (any format image::decode_buffer reads, EXIF orientation
// applied). A 400 x 533 JPEG is decoded at 1/4 scale (100 x 134); against a full-size decode
// at most 2 bits apart (tests/test_dedup.cpp, ThumbnailDecodeMatchesFullDecode). Throws
// image::DecodeError
// naming `name` and the cause (decode_buffer's, or "image is W x H, too small for a 32 x 32
// perceptual hash").
PictureHash picture_hash_bytes(std::span<const std::uint8_t> bytes, const std::string& name,
                               const image::DecodeOptions& base = {});
// The same for a file (read and checked as image::read_image_file does).
PictureHash picture_hash_file(const std::filesystem::path& path,
                              const image::DecodeOptions& base = {});

}  // namespace lookalike::dedup
