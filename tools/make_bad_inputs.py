#!/usr/bin/python3
"""Writes hostile and odd inputs for the decoder, the scanner and the end-to-end tests into OUTDIR,
with OUTDIR/expected.json saying what lookalike must make of each.

Usage: /usr/bin/python3 tools/make_bad_inputs.py OUTDIR

Run it with Debian's /usr/bin/python3 (PIL, numpy). Reruns overwrite; nothing else in OUTDIR is
touched. Everything is small on disk (about 1.5 MB; the 3 GiB file is sparse).

Layout (stable: tests and the e2e harness rely on these names):
  decode/    one decode case per entry:
             good, 64 x 48: cmyk.jpg, rgb16.png, grey_alpha.png, palette.gif, animated.gif,
               pattern.webp, pattern.tiff, pattern.bmp, exif_rotated.jpg (stored turned, EXIF
               orientation 6), pattern.avif and pattern.heic (only where libheif can encode);
             bad: zero.jpg, truncated.jpg, corrupt_middle.jpg, text.jpg, bomb_30000.png (an honest
               30000 x 30000 1-bit PNG of zeros, 110 KB), bad_crc.png (IDAT CRC flipped);
             elongated quadrant-pattern PNGs (tens of KB; decoding takes up to ~3 s each):
               tall_4x2000000.png, wide_2000000x4.png, tall_1x9000000.png, tall_2x10000000.png;
             special: fifo.jpg (a FIFO), x.jpg (a directory), loop.jpg (a symlink to itself),
               broken.jpg (a symlink to a missing file), link.jpg (a symlink to pattern.bmp),
               loopdir (a directory symlink to "."), sparse_3gb.jpg (3 GiB, sparse: a JPEG
               header claiming 60000 x 60000 pixels, then zeros).
  names/     the same 64 x 48 JPEG under odd names: spaces, a newline, a comma, quotes, non-ASCII,
             invalid UTF-8 bytes (0xFF 0xFE; Latin-1 0xE9).
  manifests/ CSV manifests: invalid UTF-8 cell, no file column, quoted commas/newlines, duplicate
             rows, a 1 MB field, ../ and absolute paths (paths.csv holds OUTDIR's absolute path,
             so it is valid only where it was generated).

expected.json (UTF-8):
  {"version": 1,
   "decode": [{"path": P, "outcome": "ok" | "error", "message": S, "width": W, "height": H,
               "scan": "listed" | "problem" | "ignored", "scan_message": S2, "path_bytes": B}],
   "manifests": [{"path": P, "outcome": "ok" | "error", "message": S,
                  "files": [{"path": P, "metadata": {...}}], "problems": [S3, ...]}]}
  P is relative to OUTDIR, '/'-separated. Where the raw name is not valid UTF-8, P is its display
  form (invalid bytes as U+FFFD) and "path_bytes" the base64 of the raw bytes (as lookalike's JSON
  does). "outcome" is what image::decode_file + image::preprocess (256/224 bilinear) give with the
  default DecodeOptions; "message" is a substring of the error. "width"/"height" are the upright
  source size, given for ok cases. "scan" is what walking OUTDIR/decode or OUTDIR/names does with
  the entry: listed as a file, reported as a problem (with "scan_message" a substring of its
  reason), or silently ignored. For manifests, "files" lists the files read_manifest returns in
  order ("metadata" given when it is small), "problems" a substring of each problem's
  "where: reason", in order.
"""

import base64
import json
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_test_images as mti  # noqa: E402  (reuses its patterns and PNG/JPEG builders)

PATTERN_SIZE = (mti.PATTERN_W, mti.PATTERN_H)
SPARSE_BYTES = 3 * 1024**3


def fresh(path):
    """Removes a file, link or FIFO left by an earlier run (never a directory)."""
    if os.path.lexists(path) and not os.path.isdir(path) or os.path.islink(path):
        os.unlink(path)


def write(path, data):
    fresh(path)
    with open(path, "wb") as f:
        f.write(data)


def quadrant_png(width, height):
    """A width x height RGB PNG of the four quadrant colours, streamed through zlib so that a
    huge one (2 x 10,000,000) never exists uncompressed in memory. Constant rows compress about
    1000:1, so these stay tens of kilobytes."""
    q = mti.QUADRANTS
    left_w = max(width // 2, 1)  # a 1-pixel-wide image is all left colour

    def row(colours):
        px = np.empty((width, 3), np.uint8)
        px[:left_w], px[left_w:] = colours
        return b"\x00" + px.tobytes()

    top = row((q["top_left"], q["top_right"]))
    bottom = row((q["bottom_left"], q["bottom_right"]))
    z = zlib.compressobj(9)
    chunks = []
    half = height // 2
    for block, count in ((top, half), (bottom, height - half)):
        step = max(1, (1 << 20) // len(block))
        done = 0
        while done < count:
            n = min(step, count - done)
            chunks.append(z.compress(block * n))
            done += n
    chunks.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + mti.png_chunk(b"IHDR", ihdr) +
            mti.png_chunk(b"IDAT", b"".join(chunks)) + mti.png_chunk(b"IEND", b""))


def bomb_png(width, height):
    """1-bit greyscale zeros behind an honest IHDR: ~110 KB that decodes to width x height."""
    row = b"\x00" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    chunks = [z.compress(row * 256) for _ in range(height // 256)]
    chunks.append(z.compress(row * (height % 256)))
    chunks.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + mti.png_chunk(b"IHDR", ihdr) +
            mti.png_chunk(b"IDAT", b"".join(chunks)) + mti.png_chunk(b"IEND", b""))


def bad_crc_png():
    data = bytearray(mti.encoded(mti.photo_like(80, 60, seed=11), "PNG"))
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4:idat])[0]
    data[idat + 4 + length] ^= 0xFF  # first byte of IDAT's CRC
    return bytes(data)


def corrupt_middle_jpeg():
    """A valid JPEG whose middle third of entropy-coded data is overwritten by random bytes
    (markers included): libjpeg stops at the first impossible marker."""
    data = bytearray(mti.encoded(mti.photo_like(160, 120, seed=12), "JPEG", quality=90))
    start = data.index(b"\xff\xda")
    lo, hi = start + (len(data) - start) // 3, start + 2 * (len(data) - start) // 3
    rng = np.random.default_rng(13)
    data[lo:hi] = rng.integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    return bytes(data)


def sparse_jpeg(path):
    """SPARSE_BYTES bytes: a JPEG header claiming 60000 x 60000 pixels, then a hole."""
    head = mti.lying_jpeg(mti.encoded(mti.pattern(), "JPEG", quality=90), 60000, 60000)
    write(path, head)
    os.truncate(path, SPARSE_BYTES)


class Expected:
    def __init__(self, outdir):
        self.outdir = outdir
        self.decode = []
        self.manifests = []

    def entry(self, rel, outcome, message=None, size=None, scan="listed", scan_message=None):
        raw = rel if isinstance(rel, bytes) else rel.encode()
        e = {"path": raw.decode("utf-8", "replace"), "outcome": outcome}
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            e["path_bytes"] = base64.b64encode(raw).decode("ascii")
        if message:
            e["message"] = message
        if size:
            e["width"], e["height"] = size
        e["scan"] = scan
        if scan_message:
            e["scan_message"] = scan_message
        self.decode.append(e)

    def manifest(self, rel, outcome, message=None, files=(), problems=()):
        m = {"path": rel, "outcome": outcome}
        if message:
            m["message"] = message
        m["files"] = [f if isinstance(f, dict) else {"path": f} for f in files]
        m["problems"] = list(problems)
        self.manifests.append(m)

    def save(self):
        with open(os.path.join(self.outdir, "expected.json"), "w", encoding="utf-8") as f:
            json.dump({"version": 1, "decode": self.decode, "manifests": self.manifests}, f,
                      ensure_ascii=False, indent=1)
            f.write("\n")


def write_formats(d, ex):
    """Good files in each format and colour layout the decoder must handle."""
    up = mti.pattern()
    cases = {
        "cmyk.jpg": lambda p: up.convert("CMYK").save(p, "JPEG", quality=95),
        "rgb16.png": lambda p: write(p, mti.rgb16_png(up)),
        "grey_alpha.png": lambda p: Image.merge(
            "LA", (up.convert("L"), Image.new("L", PATTERN_SIZE, 100))).save(p),
        "palette.gif": lambda p: up.quantize(colors=8).save(p),
        "animated.gif": lambda p: up.save(p, save_all=True, duration=100, loop=0,
                                          append_images=[Image.new("RGB", PATTERN_SIZE, "#f0f")]),
        "pattern.webp": lambda p: up.save(p, "WEBP", lossless=True),
        "pattern.tiff": lambda p: up.save(p, compression="tiff_lzw"),
        "pattern.bmp": lambda p: up.save(p),
        "exif_rotated.jpg": lambda p: up.transpose(Image.Transpose.ROTATE_90).save(
            p, "JPEG", quality=95, exif=orientation_exif(6)),
    }
    for name, make in cases.items():
        path = os.path.join(d, name)
        fresh(path)
        make(path)
        ex.entry("decode/" + name, "ok", size=PATTERN_SIZE)
    for kind in ("avif", "heic"):
        path = os.path.join(d, "pattern." + kind)
        fresh(path)
        if mti.write_heif(up, path, kind):
            ex.entry("decode/pattern." + kind, "ok", size=PATTERN_SIZE)


def orientation_exif(tag):
    exif = Image.Exif()
    exif[0x0112] = tag
    return exif.tobytes()


def write_broken(d, ex):
    jpeg = mti.encoded(mti.photo_like(160, 120, seed=1), "JPEG", quality=90)
    write(os.path.join(d, "zero.jpg"), b"")
    ex.entry("decode/zero.jpg", "error", "empty file")
    write(os.path.join(d, "truncated.jpg"), jpeg[: len(jpeg) // 2])
    ex.entry("decode/truncated.jpg", "error", "truncated")
    write(os.path.join(d, "corrupt_middle.jpg"), corrupt_middle_jpeg())
    ex.entry("decode/corrupt_middle.jpg", "error", "corrupt image data")
    write(os.path.join(d, "text.jpg"), b"I am a text file with a .jpg name\n")
    ex.entry("decode/text.jpg", "error", "looks like text")
    write(os.path.join(d, "bomb_30000.png"), bomb_png(30000, 30000))
    ex.entry("decode/bomb_30000.png", "error", "--max-pixels")
    write(os.path.join(d, "bad_crc.png"), bad_crc_png())
    ex.entry("decode/bad_crc.png", "error", "corrupt image data")
    sparse_jpeg(os.path.join(d, "sparse_3gb.jpg"))
    ex.entry("decode/sparse_3gb.jpg", "error", "file size limit")


def write_elongated(d, ex):
    for w, h in ((4, 2_000_000), (2_000_000, 4), (1, 9_000_000), (2, 10_000_000)):
        name = f"{'tall' if h > w else 'wide'}_{w}x{h}.png"
        write(os.path.join(d, name), quadrant_png(w, h))
        ex.entry("decode/" + name, "ok", size=(w, h))


def write_special(d, ex):
    fifo = os.path.join(d, "fifo.jpg")
    fresh(fifo)
    os.mkfifo(fifo)
    ex.entry("decode/fifo.jpg", "error", "not a regular file (a FIFO)", scan="problem",
             scan_message="not a regular file (a FIFO)")
    os.makedirs(os.path.join(d, "x.jpg"), exist_ok=True)
    ex.entry("decode/x.jpg", "error", "not a regular file (a directory)", scan="ignored")
    for name, target, message in (("loop.jpg", "loop.jpg", "symlink loop"),
                                  ("broken.jpg", "missing.jpg", "broken symlink"),
                                  ("link.jpg", "pattern.bmp", None),
                                  ("loopdir", ".", "not a regular file (a directory)")):
        path = os.path.join(d, name)
        fresh(path)
        os.symlink(target, path)
        if name == "link.jpg":
            ex.entry("decode/" + name, "ok", size=PATTERN_SIZE)
        elif name == "loopdir":
            ex.entry("decode/" + name, "error", message, scan="ignored")
        else:
            ex.entry("decode/" + name, "error", message, scan="problem", scan_message=message)


ODD_NAMES = ["with space.jpg", "new\nline.jpg", "with, comma.jpg", 'with "quotes".jpg',
             "ünïcødé 画像.jpg", b"invalid \xff\xfe utf8.jpg", b"latin1 caf\xe9.jpg"]


def write_names(d, ex):
    data = mti.encoded(mti.pattern(), "JPEG", quality=95)
    for name in ODD_NAMES:
        raw = name if isinstance(name, bytes) else name.encode()
        write(os.path.join(os.fsencode(d), raw), data)
        ex.entry(b"names/" + raw, "ok", size=PATTERN_SIZE)


def csv_cell(text):
    return '"' + text.replace('"', '""') + '"'


def write_manifests(outdir, d, ex):
    def put(name, text_or_bytes):
        data = text_or_bytes if isinstance(text_or_bytes, bytes) else text_or_bytes.encode()
        write(os.path.join(d, name), data)
        return "manifests/" + name

    rel = put("invalid_utf8.csv", b"file,caption\n../decode/pattern.webp,fine\n"
                                  b"../decode/pattern.tiff,caf\xe9\n../decode/pattern.bmp,ok\n")
    ex.manifest(rel, "ok", files=[{"path": "decode/pattern.webp", "metadata": {"caption": "fine"}},
                                  {"path": "decode/pattern.bmp", "metadata": {"caption": "ok"}}],
                problems=["invalid_utf8.csv row 3, column 2: not valid UTF-8"])
    rel = put("no_file_column.csv", "name,caption\n../decode/pattern.webp,x\n")
    ex.manifest(rel, "error", "no file column")
    caption = 'line one\nline "two", with a comma'
    rows = [("../names/with, comma.jpg", caption), ('../names/with "quotes".jpg', "plain")]
    rel = put("quoted.csv", "file,caption\n" +
              "".join(f"{csv_cell(f)},{csv_cell(c)}\n" for f, c in rows))
    ex.manifest(rel, "ok", files=[
        {"path": "names/with, comma.jpg", "metadata": {"caption": caption}},
        {"path": 'names/with "quotes".jpg', "metadata": {"caption": "plain"}}])
    rel = put("duplicates.csv", "file,caption\n../decode/pattern.webp,first\n"
                                "../decode/pattern.bmp,other\n../decode/pattern.webp,second\n")
    ex.manifest(rel, "ok", files=[
        {"path": "decode/pattern.webp", "metadata": {"caption": "second"}},
        {"path": "decode/pattern.bmp", "metadata": {"caption": "other"}}])
    # A 1 MB field: the row is left out (metadata is at most 64 KiB as JSON), the run goes on.
    rel = put("big_field.csv", "file,caption\n../decode/pattern.webp," + "x" * 1_000_000 + "\n")
    ex.manifest(rel, "ok", files=[],
                problems=["big_field.csv row 2: metadata: 1000014 bytes as JSON, at most 65536"])
    absolute = os.path.join(os.path.abspath(outdir), "decode", "pattern.tiff")
    rel = put("paths.csv", "file\n../decode/pattern.webp\n" + csv_cell(absolute) + "\n" +
              "sub/../../decode/pattern.bmp\nmissing.jpg\n")
    ex.manifest(rel, "ok", files=["decode/pattern.webp", "decode/pattern.tiff",
                                  "decode/pattern.bmp"],
                problems=["missing.jpg: file not found"])


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    outdir = sys.argv[1]
    dirs = {k: os.path.join(outdir, k) for k in ("decode", "names", "manifests")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    ex = Expected(outdir)
    write_formats(dirs["decode"], ex)
    write_broken(dirs["decode"], ex)
    write_elongated(dirs["decode"], ex)
    write_special(dirs["decode"], ex)
    write_names(dirs["names"], ex)
    write_manifests(outdir, dirs["manifests"], ex)
    ex.save()


if __name__ == "__main__":
    main()
