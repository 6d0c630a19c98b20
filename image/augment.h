// Training-time augmentation for `lookalike train --full` (docs/train.md): torchvision's usual
// recipe for fine-tuning on images, RandomResizedCrop, RandomHorizontalFlip and ColorJitter, on
// 8-bit RGB pixels, writing the same normalised CHW model input that image::preprocess writes.
//
// The random choices are drawn separately (draw_augmentation) from a caller's generator, so a
// training run is reproducible for a seed whatever thread applies them.
#pragma once

#include <cstdint>
#include <random>
#include <string>

#include "image/image.h"
#include "image/preprocess.h"

namespace lookalike::image {

struct AugmentSpec {
  int size = 224;  // output side, pixels (the model's crop)
  // RandomResizedCrop: the crop's area as a share of the image, and its aspect ratio (w / h),
  // drawn log-uniformly as torchvision does. torchvision's default area range (0.08, 1) is
  // meant for classification from scratch; retrieval keeps most of the object: 0.35.
  double min_area = 0.35, max_area = 1.0;
  double min_ratio = 3.0 / 4.0, max_ratio = 4.0 / 3.0;
  double flip_probability = 0.5;
  // ColorJitter: each factor is drawn uniformly from [1 - x, 1 + x].
  double brightness = 0.2, contrast = 0.2, saturation = 0.2;
  std::string interpolation = "bilinear";  // resampling of the crop (Pillow's filter)
};

// One draw of the random choices for a width x height image.
struct AugmentDraw {
  int x = 0, y = 0, width = 0, height = 0;  // the crop, in pixels of the image
  bool flip = false;
  float brightness = 1, contrast = 1, saturation = 1;
};

// torchvision 0.14 RandomResizedCrop.get_params: up to 10 tries for a crop of the drawn area
// and ratio inside the image, else the whole image's centre at the nearest allowed ratio.
// Throws std::invalid_argument for an empty image or a spec out of range.
AugmentDraw draw_augmentation(int width, int height, const AugmentSpec& spec, std::mt19937_64& rng);

// Writes 3 x spec.size x spec.size float32, CHW (planar R, G, B), row-major: the crop resized
// (Pillow-compatible, antialiased), flipped, colour-jittered in the order brightness, contrast,
// saturation (torchvision's functional definitions: blend with black, with the mean grey level,
// with the grey image; ITU-R 601-2 luma weights), clamped to [0, 1] after each, then normalised
// with `normalise`'s mean and std. `out` must hold 3 * size * size floats. Throws
// std::invalid_argument for an empty image or a crop outside it.
void augment(const RgbImage& img, const AugmentDraw& draw, const AugmentSpec& spec,
             const PreprocessSpec& normalise, float* out);

}  // namespace lookalike::image
