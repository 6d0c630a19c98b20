// Model input preparation that reproduces torchvision's
//   Resize(resize_shorter) -> CenterCrop(crop) -> ToTensor -> Normalize(mean, std)
// on a PIL image, where Resize is PIL's bilinear filter with antialiasing (the triangle filter
// widened by the downscale factor, Pillow's ImagingResample) and CenterCrop rounds offsets with
// Python's round-half-to-even.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "image/image.h"

namespace lookalike::image {

struct PreprocessSpec {
  int resize_shorter = 256;  // pixels; the shorter side is resized to this (0 = no resize)
  int crop = 224;            // pixels; square center crop
  std::string interpolation = "bilinear";  // "bilinear" or "bicubic" (Pillow's filters)
  std::array<float, 3> mean = {0.485f, 0.456f, 0.406f};  // ImageNet, on 0..1 RGB
  std::array<float, 3> std = {0.229f, 0.224f, 0.225f};
  // Output layout: false = CHW (planar R, G, B), true = HWC (R, G, B interleaved per pixel; the
  // memory of an NCHW tensor in channels-last format, which a channels-last model takes without
  // a reorder: model::EmbeddingModel::preprocess_spec()).
  bool channels_last = false;
};

// torchvision's output size {width, height} for Resize(shorter) of a width x height image: the
// shorter side becomes `shorter`, the longer int(shorter * long / short) (truncation, as
// torchvision does). 64-bit: the long side can pass 2^31 (1 x 9,000,000 -> 256 x 2.3e9).
// Throws std::invalid_argument unless all three are > 0.
std::array<std::int64_t, 2> resized_size(int width, int height, int shorter);

// Pillow-compatible separable resample (8-bit intermediate, as Pillow does) to w x h: the same
// bytes as PIL's Image.resize((width, height), BILINEAR or BICUBIC). Throws
// std::invalid_argument for an empty image, a non-positive size or another interpolation.
RgbImage resize(const RgbImage& src, int width, int height, const std::string& interpolation);

// Rows [first, last) of a width x height image (a decode of a source_width x source_height
// image, possibly DCT-downscaled) that preprocess(spec) reads; decoders may skip the others.
std::array<int, 2> rows_read(int width, int height, int source_width, int source_height,
                             const PreprocessSpec& spec);

// Writes the model input: 3 x crop x crop float32, CHW (planar R, G, B), row-major, normalised;
// crop x crop x 3 HWC with spec.channels_last (the same values). `out` must hold 3 * crop * crop
// floats. `source_width`/`source_height` are the full-resolution
// upright size (the decoder may have DCT-downscaled `img`); torchvision's sizes are computed
// from them so that downscaled and full decodes resize to the same geometry. Bit-identical to
// torchvision 0.14 on PIL for full-size decodes (test_preprocess).
// Only the cropped window is resampled, and only its filter taps are computed, so any image
// the decoder returns can be preprocessed, however elongated (a 4 x 2,000,000 image resizes to
// 256 x 128,000,000; torchvision would produce that whole image, we only its 224 x 224 crop).
// Memory: 3 bytes for each input pixel the crop's filter taps reach (at most the image again;
// for 256/224 on a 4000 x 3000 photo about 3500 x 3000 of it), 6 x crop bytes for each input
// row they reach, and 12 x crop x (filter width) bytes of taps; it does not grow with the
// resized size.
// Throws std::invalid_argument for an empty or inconsistent image, a non-positive source size,
// crop <= 0, resize_shorter < 0, a zero std or an unknown interpolation, and DecodeError
// naming `name` ("out of memory preprocessing a W x H image") for an allocation failure.
void preprocess(const RgbImage& img, int source_width, int source_height,
                const PreprocessSpec& spec, float* out, const std::string& name = {});

}  // namespace lookalike::image
