#!/usr/bin/python3
"""Writes what the reference pipeline (PIL + torchvision 0.14) makes of a set of images, for
test_preprocess to compare the C++ decoder and preprocessing against.

Usage: /usr/bin/python3 tests/preprocess_reference.py IMAGES_DIR DATASET_DIR OUT_DIR

IMAGES_DIR is the output of tools/make_test_images.py, DATASET_DIR is clothing-small.
OUT_DIR gets manifest.tsv (one case a line, tab-separated, first field the kind) and:
  <id>.rgb  PIL's decoded pixels (EXIF transpose, convert("RGB")): height x width x 3 uint8
  <id>.f32  Resize -> CenterCrop -> ToTensor -> Normalize: 3 x crop x crop float32 LE
Manifest lines:
  decode      PATH ID WIDTH HEIGHT
  preprocess  PATH ID RESIZE CROP INTERPOLATION    (RESIZE 0 = no Resize)
  resize      PATH ID WIDTH HEIGHT INTERPOLATION   (PIL Image.resize; ID.rgb)
  shrink      PATH ID MIN_SHORTER_SIDE             (compare a DCT-downscaled decode to ID.f32)
  size        WIDTH HEIGHT SHORTER NEW_WIDTH NEW_HEIGHT   (torchvision's Resize output size)
"""

import os
import sys

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import _compute_resized_output_size

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def load(path):
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def transform(resize, crop, interpolation):
    steps = [T.Resize(resize, interpolation=MODES[interpolation])] if resize > 0 else []
    return T.Compose(steps + [T.CenterCrop(crop), T.ToTensor(), T.Normalize(MEAN, STD)])


def dataset_picks(dataset):
    """A few real photos, chosen deterministically: the first query of some classes plus the
    first landscape-oriented gallery photo."""
    picks = []
    for cls in ("dress", "hat", "pants", "shoes"):
        folder = os.path.join(dataset, "test", cls)
        picks.append(os.path.join(folder, sorted(os.listdir(folder))[0]))
    folder = os.path.join(dataset, "train", "shirt")
    for name in sorted(os.listdir(folder)):
        with Image.open(os.path.join(folder, name)) as im:
            if im.width > im.height:
                picks.append(os.path.join(folder, name))
                break
    return picks


class Writer:
    def __init__(self, outdir):
        self.outdir = outdir
        self.lines = []

    def decode(self, path, ident):
        img = load(path)
        np.asarray(img, np.uint8).tofile(os.path.join(self.outdir, ident + ".rgb"))
        self.lines.append(["decode", path, ident, img.width, img.height])

    def preprocess(self, path, ident, resize=256, crop=224, interpolation="bilinear"):
        tensor = transform(resize, crop, interpolation)(load(path))
        assert tensor.dtype == torch.float32 and tuple(tensor.shape) == (3, crop, crop)
        tensor.numpy().astype("<f4").tofile(os.path.join(self.outdir, ident + ".f32"))
        self.lines.append(["preprocess", path, ident, resize, crop, interpolation])

    def resize(self, path, ident, width, height, interpolation):
        out = load(path).resize((width, height), PIL_FILTERS[interpolation])
        np.asarray(out, np.uint8).tofile(os.path.join(self.outdir, ident + ".rgb"))
        self.lines.append(["resize", path, ident, width, height, interpolation])

    def shrink(self, path, ident, min_shorter_side):
        self.lines.append(["shrink", path, ident, min_shorter_side])

    def size(self, width, height, shorter):
        new_h, new_w = _compute_resized_output_size((height, width), [shorter])
        self.lines.append(["size", width, height, shorter, new_w, new_h])

    def save(self):
        with open(os.path.join(self.outdir, "manifest.tsv"), "w", encoding="utf-8") as f:
            for line in self.lines:
                f.write("\t".join(str(x) for x in line) + "\n")


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    images, dataset, outdir = sys.argv[1:]
    os.makedirs(outdir, exist_ok=True)
    w = Writer(outdir)

    real = dataset_picks(dataset)
    generated = [os.path.join(images, n) for n in (
        "odd_301x199.jpg", "odd_257x383.png", "tiny_50x30.jpg", "panorama_1200x200.jpg",
        "progressive.jpg", "orientation_6.jpg", "orientation_7.jpg", "grey.jpg", "palette.png",
        "rgba.png", "rgb16.png", "cmyk.jpg", "animated.gif", "pattern.webp", "pattern.tiff",
        "pattern.bmp", "large.jpg")]
    for i, path in enumerate(real + generated):
        ident = f"case{i:02d}"
        w.decode(path, ident)
        w.preprocess(path, ident)
    for i, path in enumerate(real[:2] + generated[:4]):
        w.preprocess(path, f"bicubic{i:02d}", interpolation="bicubic")
    # Crop larger than the resized image (torchvision pads with zeros), and no resize at all.
    w.preprocess(real[0], "pad_resize200", resize=200, crop=224)
    w.preprocess(os.path.join(images, "tiny_50x30.jpg"), "pad_noresize", resize=0, crop=224)
    w.preprocess(os.path.join(images, "panorama_1200x200.jpg"), "pad_wide", resize=0, crop=224)
    # Direct resizes: up in one axis and down in the other, both filters.
    w.resize(real[1], "resize_bilinear", 97, 600, "bilinear")
    w.resize(real[1], "resize_bicubic", 97, 600, "bicubic")
    w.resize(os.path.join(images, "odd_301x199.jpg"), "resize_up", 640, 421, "bilinear")
    # DCT downscaling on the large photo: 2400x1800 -> shrink 2 (min 256) and 4 (min 224).
    large_id = f"case{len(real) + len(generated) - 1:02d}"
    w.shrink(os.path.join(images, "large.jpg"), large_id, 256)
    w.shrink(os.path.join(images, "large.jpg"), large_id, 224)
    for width, height in ((400, 533), (533, 400), (400, 400), (301, 199), (50, 30), (1200, 200),
                          (257, 383), (3, 1000), (1000, 3), (711, 400)):
        for shorter in (256, 224, 200):
            w.size(width, height, shorter)
    w.save()


if __name__ == "__main__":
    main()
