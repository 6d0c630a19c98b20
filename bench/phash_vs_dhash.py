"""Which perceptual hash `lookalike duplicates` stores (dedup/phash.h): pHash (DCT) against dHash
on clothing-small, both on one frame and on three (full, central 95%, central 90%, the smallest
distance of full/full and centre/full either way, as dedup::distance does).

For 50 test photos (every 7th): Hamming distance of each edit to its original (50% resize,
JPEG quality 40, 5% and 2.5% off every side, +20% brightness, horizontal flip); for every
second test photo (186, 17,205 pairs): how many pairs of different photos fall within 8, 10
and 12 bits. A numpy re-implementation (PIL box resize for the area average); the C++ one is
dedup/phash.cpp. Run: /usr/bin/python3 bench/phash_vs_dhash.py (about 2 minutes)."""
import glob
import io
import itertools
import os

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                    "datasets", "clothing-small", "test")
files = sorted(glob.glob(os.path.join(root, "*", "*.jpg")))
FRAMES = (1.0, 0.95, 0.90)


def grid(im, w, h, keep):
    g = im.convert("L")  # ITU-R 601 luma, as the C++
    if keep < 1:
        dx, dy = g.width * (1 - keep) / 2, g.height * (1 - keep) / 2
        g = g.crop((round(dx), round(dy), round(g.width - dx), round(g.height - dy)))
    return np.asarray(g.resize((w, h), Image.BOX), dtype=np.float64)


def dhash(im, keep):
    g = grid(im, 9, 8, keep)
    return (g[:, :-1] > g[:, 1:]).flatten()


N = 32
k = np.arange(N)
D = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * N))


def phash(im, keep):
    c = D @ grid(im, N, N, keep) @ D.T
    low = c[1:9, 1:9].flatten()
    return low > np.median(low)


def jpeg(im, q):
    b = io.BytesIO()
    im.save(b, "JPEG", quality=q)
    b.seek(0)
    return Image.open(b).convert("RGB")


def crop(im, f):
    dx, dy = int(im.width * f), int(im.height * f)
    return im.crop((dx, dy, im.width - dx, im.height - dy))


EDITS = {
    "50% resize": lambda im: jpeg(im.resize((im.width // 2, im.height // 2), Image.LANCZOS), 90),
    "quality 40": lambda im: jpeg(im, 40),
    "crop 5% a side": lambda im: jpeg(crop(im, .05), 90),
    "crop 2.5% a side": lambda im: jpeg(crop(im, .025), 90),
    "+20% brightness": lambda im: jpeg(ImageEnhance.Brightness(im).enhance(1.2), 90),
    "horizontal flip": lambda im: jpeg(ImageOps.mirror(im), 90),
}


def hashes(h, im):
    return [h(im, f) for f in FRAMES]


def multi(a, b):
    return min(min(int((a[i] != b[0]).sum()), int((a[0] != b[i]).sum())) for i in range(len(a)))


def single(a, b):
    return int((a[0] != b[0]).sum())


def load(f):
    return Image.open(f).convert("RGB")


chosen = files[::7][:50]
for name, h in (("pHash", phash), ("dHash", dhash)):
    base = {f: hashes(h, load(f)) for f in chosen}
    for edit, fn in EDITS.items():
        pairs = [(base[f], hashes(h, fn(load(f)))) for f in chosen]
        m = [multi(a, b) for a, b in pairs]
        s = [single(a, b) for a, b in pairs]
        print(f"{name} {edit:17s} three frames min/mean/max {min(m)} {np.mean(m):.1f} {max(m)}"
              f" | one frame {min(s)} {np.mean(s):.1f} {max(s)}", flush=True)
    others = [hashes(h, load(f)) for f in files[::2]]
    md = np.array([multi(a, b) for a, b in itertools.combinations(others, 2)])
    sd = np.array([single(a, b) for a, b in itertools.combinations(others, 2)])
    for bound in (8, 10, 12):
        print(f"{name} different photos within {bound} bits: three frames {(md <= bound).sum()},"
              f" one frame {(sd <= bound).sum()} of {len(md)} pairs", flush=True)
