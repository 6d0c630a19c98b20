"""`lookalike map` on 300 clothing-small photos (30 a class, indexed from a CSV manifest with a
`category` column): PCA coordinates against numpy on the stored vectors (to 1e-4, after the sign
convention), the SVG (points, legend, thumbnails) and the PNG, t-SNE's clusters (1-NN class
agreement in 2-D against chance and against the embedding space itself), determinism, and the
bad-input errors."""
import base64
import csv
import io
import sqlite3
import xml.etree.ElementTree as ET
from collections import Counter

import numpy as np
from PIL import Image

from harness import copy_images, fail, images, json_lines, label_of, run, tempdir

SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}href"

work = tempdir("map")
photos = copy_images(images("train", per_class=30), work / "photos")
with open(work / "photos" / "manifest.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file", "category", "price"])
    for i, p in enumerate(photos):
        w.writerow([p.relative_to(work / "photos"), label_of(p), 10 + i % 50])
collection = work / "collection"
run("index", work / "photos" / "manifest.csv", "-q", collection=collection, check=0)
classes = sorted({label_of(p) for p in photos})
n = len(photos)
print(f"indexed {n} photos of {len(classes)} classes")


def map_json(*args, check=0):
    proc = run("map", "--json", *args, collection=collection, model=False, check=check)
    records = json_lines(proc.stdout)
    summary = [r for r in records if r["type"] == "map"]
    points = [r for r in records if r["type"] == "point"]
    if len(summary) != 1 or len(points) + 1 != len(records):
        fail(f"expected one map record and point records: {records[:3]}")
    return summary[0], points, proc


# --- PCA against numpy on the stored vectors ---------------------------------------------------
summary, points, _ = map_json()
print("PCA summary:", {k: summary[k] for k in ("points", "explained_variance_ratio", "groups")})
if summary["points"] != n or len(points) != n or summary["method"] != "pca":
    fail(f"PCA map has {len(points)} points, expected {n}")
db = sqlite3.connect(f"file:{collection / 'catalog.db'}?mode=ro", uri=True)
rows = db.execute("SELECT image_id, vector FROM embeddings ORDER BY image_id").fetchall()
ids = [r[0] for r in rows]
x = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]).astype(np.float64)
xc = x - x.mean(axis=0)
_, s, vt = np.linalg.svd(xc, full_matrices=False)
axes = vt[:2]
for a in axes:  # the documented convention: each axis's largest-|value| loading positive
    if a[np.argmax(np.abs(a))] < 0:
        a *= -1
expected = dict(zip(ids, xc @ axes.T))
worst = max(max(abs(p["x"] - expected[p["id"]][0]), abs(p["y"] - expected[p["id"]][1]))
            for p in points)
ratio = (s[:2] ** 2) / (s ** 2).sum()
print(f"PCA: largest coordinate difference to numpy {worst:.2e}; explained variance "
      f"{summary['explained_variance_ratio']} (numpy {ratio.tolist()})")
if worst > 1e-4:
    fail(f"PCA coordinates differ from numpy by {worst}")
if not np.allclose(summary["explained_variance_ratio"], ratio, atol=1e-6):
    fail(f"explained variance {summary['explained_variance_ratio']} vs numpy {ratio}")
for p in points:
    if p["group"] != label_of(p["path"]):
        fail(f"point {p['path']} is in group {p['group']}, not its folder")
if sorted(g["name"] for g in summary["groups"]) != classes:
    fail(f"groups {summary['groups']} are not the classes {classes}")

# --color-by a metadata field, and --where
summary, points, _ = map_json("--color-by", "category")
if any(p["group"] != label_of(p["path"]) for p in points) or summary["warnings"]:
    fail("--color-by category does not give each photo its category")
_, points, _ = map_json("--where", f"category={classes[0]}")
if len(points) != 30 or {label_of(p["path"]) for p in points} != {classes[0]}:
    fail(f"--where category={classes[0]} mapped {len(points)} points")
summary, points, proc = map_json("--color-by", "colour")
if {p["group"] for p in points} != {"(none)"} or "colour" not in proc.stderr:
    fail(f"unknown --color-by field: groups {summary['groups']}, stderr {proc.stderr}")
print("unknown field warning:", proc.stderr.strip())

# --- SVG --------------------------------------------------------------------------------------
svg_path = work / "map.svg"
run("map", "--out", svg_path, "--thumbnails", 24, collection=collection, model=False, check=0)
root = ET.parse(svg_path).getroot()
circles = root.findall(f".//{SVG}circle")
legend = root.findall(f".//{SVG}g[@class='legend-entry']")
thumbs = root.findall(f".//{SVG}image")
title = root.find(f"{SVG}title").text
print(f"SVG: {len(circles)} points, {len(legend)} legend entries, {len(thumbs)} thumbnails, "
      f"title {title!r}, {svg_path.stat().st_size} bytes")
if len(circles) != n:
    fail(f"SVG has {len(circles)} points, expected {n}")
if sorted(e.get("data-group") for e in legend) != classes:
    fail(f"legend {[e.get('data-group') for e in legend]}")
if not 10 <= len(thumbs) <= 24:
    fail(f"SVG has {len(thumbs)} thumbnails, expected 10 to 24")
for t in thumbs:
    href = t.get(XLINK)
    if not href.startswith("data:image/jpeg;base64,"):
        fail(f"thumbnail is not a data: URI: {href[:40]}")
    im = Image.open(io.BytesIO(base64.b64decode(href.split(",", 1)[1])))
    if im.format != "JPEG" or max(im.size) > 56:
        fail(f"thumbnail {im.format} {im.size}")
for word in (collection.name, "mobilenet_v2", "PCA", f"{n} points"):
    if word not in title:
        fail(f"title {title!r} lacks {word!r}")

# --- PNG --------------------------------------------------------------------------------------
png_path = work / "map.png"
run("map", "--out", png_path, "--width", 1000, "--height", 700, collection=collection,
    model=False, check=0)
im = Image.open(png_path).convert("RGB")
a = np.asarray(im).astype(np.int32)
colours = len(np.unique(a.reshape(-1, 3), axis=0))
non_white = float((a.sum(axis=2) < 750).mean())
print(f"PNG: {im.size}, {colours} distinct colours, {non_white:.1%} non-white pixels")
if im.size != (1000, 700):
    fail(f"PNG is {im.size}, expected (1000, 700)")
if colours < 100 or not 0.02 < non_white < 0.9:
    fail("PNG looks blank")

# --- t-SNE on a sample ------------------------------------------------------------------------
args = ("--method", "tsne", "--sample", 200, "--seed", 3, "--perplexity", 20)
summary, points, _ = map_json(*args)
_, again, _ = map_json(*args)
if [(p["id"], p["x"], p["y"]) for p in points] != [(p["id"], p["x"], p["y"]) for p in again]:
    fail("t-SNE with the same seed gave different maps")
if len(points) != 200 or summary["matching"] != n:
    fail(f"t-SNE sample has {len(points)} points of {summary['matching']}")
labels = [label_of(p["path"]) for p in points]
y = np.array([[p["x"], p["y"]] for p in points])


def nn_agreement(v, metric):
    d = metric(v)
    np.fill_diagonal(d, np.inf)
    return float(np.mean([labels[j] == labels[i] for i, j in enumerate(d.argmin(axis=1))]))


euclid = lambda v: ((v[:, None, :] - v[None, :, :]) ** 2).sum(axis=2)
by_id = dict(zip(ids, x))
emb = np.stack([by_id[p["id"]] for p in points])
agree_2d = nn_agreement(y, euclid)
agree_nd = nn_agreement(emb, lambda v: -v @ v.T)
chance = sum((c / len(labels)) ** 2 for c in Counter(labels).values())
d2 = np.sqrt(euclid(y))
same = np.array([[a == b for b in labels] for a in labels])
np.fill_diagonal(same, False)
diff = ~same
np.fill_diagonal(diff, False)
within, between = d2[same].mean(), d2[diff].mean()
print(f"t-SNE ({summary['kl_divergence']:.3f} KL, learning rate {summary['learning_rate']:.0f}): "
      f"1-NN class agreement {agree_2d:.3f} in 2-D, {agree_nd:.3f} in the embedding space, "
      f"chance {chance:.3f}; mean distance within classes {within:.2f}, between {between:.2f}")
if agree_2d < 3 * chance or agree_2d < 0.8 * agree_nd:
    fail("t-SNE does not keep the classes together")
if not within < between:
    fail("t-SNE: classes are not closer within than between")

# --- bad input --------------------------------------------------------------------------------
checks = [
    (("map", "--out", work / "map.jpg"), 2, "map.jpg"),
    (("map", "--out", work / "no-such-dir" / "m.svg"), 1, "no-such-dir"),
    (("map", "--json", "--method", "tsne", "--sample", 6000), 2, "5000"),
    (("map", "--json", "--method", "tsne", "--perplexity", 200), 2, "perplexity"),
    (("map", "--json", "--where", "category=nothing"), 1, "matches"),
    (("map",), 2, "--out"),
    (("map", "--json", "--sample", -1), 2, "--sample: must be 0 or more, got -1"),
    (("map", "--json", "--sample", 1), 1, "--sample 1 of"),
]
for args, code, word in checks:
    proc = run(*args, collection=collection, model=False, check=code)
    if word not in proc.stderr:
        fail(f"{args}: stderr does not name {word!r}: {proc.stderr}")
    print(f"{' '.join(map(str, args[1:]))}: exit {code}, {proc.stderr.strip()}")
proc = run("map", "--json", collection=work / "nothing-here", model=False, check=1)
empty = work / "empty"
run("index", photos[0], "-q", collection=empty, check=0)
run("remove", photos[0], collection=empty, model=False, check=0)
proc = run("map", "--json", collection=empty, model=False, check=1)
if "no images" not in proc.stderr:
    fail(f"empty collection: {proc.stderr}")
print("empty collection:", proc.stderr.strip())
print("map: all checks passed")
