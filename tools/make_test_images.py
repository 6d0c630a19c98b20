#!/usr/bin/python3
"""Writes the decoder's test images (good, odd and bad files) into OUTDIR.

Usage: /usr/bin/python3 tools/make_test_images.py OUTDIR

Everything is generated with PIL (plus hand-built PNG chunks where PIL cannot write the
case, e.g. 16-bit RGB or a lying header) so the fixtures stay out of the source tree.
AVIF and HEIC (pattern.avif, pattern.heic) are written through libheif (libheif.so.1, which
libvips-dev pulls in, with its AOM and x265 encoders) by ctypes, since Debian's PIL has no
AVIF/HEIF writer; where libheif or an encoder is missing those two files are not written and
the tests that use them skip.
The files are small: the whole set is well under 2 MB.
"""

import ctypes
import ctypes.util
import io
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image, ImageOps

# Upright test pattern: four distinct quadrant colours make every one of the 8 EXIF
# orientations distinguishable, and a non-square size makes 90-degree turns visible too.
PATTERN_W, PATTERN_H = 64, 48
QUADRANTS = {
    "top_left": (220, 30, 30),
    "top_right": (30, 200, 30),
    "bottom_left": (30, 30, 220),
    "bottom_right": (230, 220, 40),
}

# Stored = upright transformed by the inverse of what the viewer applies for each tag
# (PIL's ImageOps.exif_transpose mapping).
INVERSE_OF_EXIF_TRANSPOSE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # viewer applies ROTATE_270
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,  # viewer applies ROTATE_90
}


def pattern():
    a = np.zeros((PATTERN_H, PATTERN_W, 3), np.uint8)
    h2, w2 = PATTERN_H // 2, PATTERN_W // 2
    a[:h2, :w2] = QUADRANTS["top_left"]
    a[:h2, w2:] = QUADRANTS["top_right"]
    a[h2:, :w2] = QUADRANTS["bottom_left"]
    a[h2:, w2:] = QUADRANTS["bottom_right"]
    return Image.fromarray(a, "RGB")


def photo_like(w, h, seed):
    """Smooth gradients, rings, stripes and a little noise: texture at many frequencies,
    so resampling errors would show, yet small as JPEG."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.7)
    r = np.hypot(x - cx, y - cy)
    red = 128 + 100 * np.sin(r / (3 + 0.02 * max(w, h)))
    green = 255 * x / max(w - 1, 1)
    blue = 128 + 90 * np.sin(x / 5.0 + y / 9.0) * np.cos(y / 23.0)
    a = np.stack([red, green, blue], axis=-1) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def save_bytes(outdir, name, data):
    with open(os.path.join(outdir, name), "wb") as f:
        f.write(data)


def encoded(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png_from_rows(width, height, bit_depth, colour_type, raw_rows):
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) +
            png_chunk(b"IDAT", zlib.compress(raw_rows)) + png_chunk(b"IEND", b""))


def rgb16_png(img):
    """16-bit RGB PNG (PIL cannot write one): value v becomes v * 257 + 77, so the low byte
    is not simply a copy of the high byte and an 8-bit reduction must use the high byte."""
    a = np.asarray(img).astype(np.uint16) * 257
    a = np.minimum(a.astype(np.uint32) + 77, 65535).astype(">u2")
    rows = b"".join(b"\x00" + a[y].tobytes() for y in range(a.shape[0]))
    return png_from_rows(img.width, img.height, 16, 2, rows)


def lying_png(width, height):
    """A valid 1x1-sized stream behind an IHDR that claims width x height."""
    return png_from_rows(width, height, 8, 2, b"\x00" + b"\x80" * 3)


def lying_jpeg(data, width, height):
    """Rewrites the SOF0 frame size of a baseline JPEG; the scan data stays tiny."""
    i = data.index(b"\xff\xc0")
    return data[:i + 5] + struct.pack(">HH", height, width) + data[i + 9:]


class _HeifError(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("subcode", ctypes.c_int), ("message", ctypes.c_char_p)]


def _libheif():
    """libheif's C API (libheif/heif.h, 1.15) by ctypes, or None when it is not installed."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("heif") or "libheif.so.1")
    except OSError:
        return None
    vp, c_int = ctypes.c_void_p, ctypes.c_int
    signatures = {
        "heif_context_alloc": (vp, []),
        "heif_context_free": (None, [vp]),
        "heif_context_get_encoder_for_format": (_HeifError, [vp, c_int, ctypes.POINTER(vp)]),
        "heif_encoder_set_lossy_quality": (_HeifError, [vp, c_int]),
        "heif_encoder_release": (None, [vp]),
        "heif_image_create": (_HeifError, [c_int, c_int, c_int, c_int, ctypes.POINTER(vp)]),
        "heif_image_add_plane": (_HeifError, [vp, c_int, c_int, c_int, c_int]),
        "heif_image_get_plane": (ctypes.c_void_p, [vp, c_int, ctypes.POINTER(c_int)]),
        "heif_image_release": (None, [vp]),
        "heif_context_encode_image": (_HeifError, [vp, vp, vp, vp, ctypes.POINTER(vp)]),
        "heif_image_handle_release": (None, [vp]),
        "heif_context_write_to_file": (_HeifError, [vp, ctypes.c_char_p]),
    }
    for name, (res, args) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


HEIF_COMPRESSION = {"heic": 1, "avif": 4}  # enum heif_compression_format: HEVC, AV1


def write_heif(img, path, kind, quality=95):
    """Writes an RGB PIL image as HEIC or AVIF; returns False when libheif cannot."""
    lib = _libheif()
    if lib is None:
        return False
    vp = ctypes.c_void_p
    ctx, encoder, image, handle = lib.heif_context_alloc(), vp(), vp(), vp()
    try:
        if lib.heif_context_get_encoder_for_format(ctx, HEIF_COMPRESSION[kind],
                                                   ctypes.byref(encoder)).code:
            return False
        lib.heif_encoder_set_lossy_quality(encoder, quality)
        # heif_colorspace_RGB = 1, heif_chroma_interleaved_RGB = 10, heif_channel_interleaved = 10
        if lib.heif_image_create(img.width, img.height, 1, 10, ctypes.byref(image)).code:
            return False
        lib.heif_image_add_plane(image, 10, img.width, img.height, 8)
        stride = ctypes.c_int()
        plane = lib.heif_image_get_plane(image, 10, ctypes.byref(stride))
        rows = np.asarray(img.convert("RGB"), np.uint8)
        for y in range(img.height):
            ctypes.memmove(plane + y * stride.value, rows[y].tobytes(), img.width * 3)
        if lib.heif_context_encode_image(ctx, image, encoder, None, ctypes.byref(handle)).code:
            return False
        return lib.heif_context_write_to_file(ctx, os.fsencode(path)).code == 0
    finally:
        if handle:
            lib.heif_image_handle_release(handle)
        if image:
            lib.heif_image_release(image)
        if encoder:
            lib.heif_encoder_release(encoder)
        lib.heif_context_free(ctx)


def write_orientations(outdir, upright):
    for tag, inverse in INVERSE_OF_EXIF_TRANSPOSE.items():
        stored = upright if inverse is None else upright.transpose(inverse)
        exif = Image.Exif()
        exif[0x0112] = tag
        path = os.path.join(outdir, f"orientation_{tag}.jpg")
        stored.save(path, "JPEG", quality=95, exif=exif.tobytes())
        check = ImageOps.exif_transpose(Image.open(path))
        assert check.size == upright.size, (tag, check.size)


def write_formats(outdir, upright):
    upright.save(os.path.join(outdir, "pattern.jpg"), "JPEG", quality=95)
    upright.save(os.path.join(outdir, "pattern.png"))
    upright.save(os.path.join(outdir, "pattern.webp"), "WEBP", lossless=True)  # a VP8L chunk
    # The other two WebP layouts, whose headers read_image_file parses: VP8 (lossy), VP8X
    # (extended, here because of the EXIF block).
    upright.save(os.path.join(outdir, "pattern_lossy.webp"), "WEBP", quality=90)
    exif = Image.Exif()
    exif[0x010E] = "extended WebP"  # ImageDescription
    upright.save(os.path.join(outdir, "pattern_vp8x.webp"), "WEBP", lossless=True,
                 exif=exif.tobytes())
    upright.save(os.path.join(outdir, "pattern.bmp"))
    upright.save(os.path.join(outdir, "pattern.tiff"), compression="tiff_lzw")
    for kind in ("avif", "heic"):
        write_heif(upright, os.path.join(outdir, "pattern." + kind), kind)
    # Two frames: the decoder must return the first (the pattern), not the solid second.
    second = Image.new("RGB", upright.size, (255, 0, 255))
    upright.save(os.path.join(outdir, "animated.gif"), save_all=True,
                 append_images=[second], duration=100, loop=0)
    # EXIF orientation outside JPEG: a PNG stored turned, tagged 6.
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(
        os.path.join(outdir, "orientation_6.png"), exif=exif.tobytes())


def write_colour_modes(outdir, upright):
    grey = upright.convert("L")
    grey.save(os.path.join(outdir, "grey.png"))
    grey.save(os.path.join(outdir, "grey.jpg"), quality=95)
    la = Image.merge("LA", (grey, Image.new("L", upright.size, 100)))
    la.save(os.path.join(outdir, "grey_alpha.png"))
    rgba = upright.copy()
    alpha = Image.new("L", upright.size, 0)  # fully transparent left half
    alpha.paste(255, (PATTERN_W // 2, 0, PATTERN_W, PATTERN_H))
    rgba.putalpha(alpha)
    rgba.save(os.path.join(outdir, "rgba.png"))
    rgba.save(os.path.join(outdir, "rgba.webp"), lossless=True)
    grey16 = Image.fromarray((np.asarray(grey).astype(np.uint16) * 257), "I;16")
    grey16.save(os.path.join(outdir, "grey16.png"))
    save_bytes(outdir, "rgb16.png", rgb16_png(upright))
    upright.convert("CMYK").save(os.path.join(outdir, "cmyk.jpg"), quality=95)
    upright.convert("CMYK").save(os.path.join(outdir, "cmyk.tiff"))
    upright.quantize(colors=8).save(os.path.join(outdir, "palette.png"))
    progressive = photo_like(120, 90, seed=5)
    progressive.save(os.path.join(outdir, "progressive.jpg"), quality=90, progressive=True)


def write_bad_files(outdir, upright):
    jpeg = encoded(photo_like(160, 120, seed=1), "JPEG", quality=90)
    png = encoded(photo_like(160, 120, seed=2), "PNG")
    rng = np.random.default_rng(3)
    garbage = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    save_bytes(outdir, "corrupt.jpg", jpeg[:20] + garbage)
    save_bytes(outdir, "truncated.jpg", jpeg[: len(jpeg) // 2])
    save_bytes(outdir, "truncated.png", png[: len(png) // 2])
    save_bytes(outdir, "empty.jpg", b"")
    save_bytes(outdir, "notes.txt", b"just some text, not an image\n")
    save_bytes(outdir, "text_named.jpg", b"hello, I only pretend to be a JPEG\n")
    save_bytes(outdir, "document.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n")
    svg = (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" '
           b'height="48"><rect width="64" height="48" fill="red"/></svg>\n')
    save_bytes(outdir, "drawing.svg", svg)
    save_bytes(outdir, "svg_named.png", svg)  # an extension is not evidence
    save_bytes(outdir, "huge_header.png", lying_png(100_000, 100_000))
    small = encoded(upright, "JPEG", quality=90)
    save_bytes(outdir, "huge_header.jpg", lying_jpeg(small, 60_000, 60_000))


def write_sizes(outdir):
    photo_like(2400, 1800, seed=4).save(os.path.join(outdir, "large.jpg"), quality=85)
    photo_like(301, 199, seed=6).save(os.path.join(outdir, "odd_301x199.jpg"), quality=92)
    photo_like(257, 383, seed=7).save(os.path.join(outdir, "odd_257x383.png"))
    photo_like(50, 30, seed=8).save(os.path.join(outdir, "tiny_50x30.jpg"), quality=92)
    photo_like(1200, 200, seed=9).save(os.path.join(outdir, "panorama_1200x200.jpg"), quality=90)
    pattern().save(os.path.join(outdir, "name with spaces ünïcødé 画像.jpg"), quality=95)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    upright = pattern()
    write_orientations(outdir, upright)
    write_formats(outdir, upright)
    write_colour_modes(outdir, upright)
    write_bad_files(outdir, upright)
    write_sizes(outdir)


if __name__ == "__main__":
    main()
