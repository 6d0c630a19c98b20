"""`lookalike duplicates`.

Part 1: edited copies of photos (byte copy, JPEG quality 60, 50% resize, brightened, 2.5% off
each side) are grouped with their originals as the same picture, unrelated originals are not
grouped at the default threshold, and the larger image represents a resize pair. Prints the
similarities and pHash distances that justify the default threshold (dedup/duplicates.h).

Part 2 (project issue 11): four edited copies (50% resize, JPEG quality 40, 5% off every side,
+20% brightness) and a horizontal flip of 50 clothing-small test photos, mixed with 300 other
photos: the same-picture pairs found have precision and recall >= 0.95, no two different photos
(a flip counts as different) are the same picture. Prints the figures."""
import itertools
import json
import shutil
import sqlite3
from collections import defaultdict

from PIL import Image, ImageEnhance, ImageOps

from harness import fail, images, run, run_json, tempdir

work = tempdir("duplicates")
photos = work / "photos"
photos.mkdir()
originals = images("train", per_class=3)[:30]
for i, f in enumerate(originals):
    shutil.copy2(f, photos / f"orig{i:02d}.jpg")


def rgb(i):
    return Image.open(originals[i]).convert("RGB")


# 5% of the width and of the height, half from each side.
def crop5(im):
    dx, dy = int(im.width * 0.025), int(im.height * 0.025)
    return im.crop((dx, dy, im.width - dx, im.height - dy))


shutil.copyfile(originals[0], photos / "copy-exact-00.jpg")
rgb(1).save(photos / "copy-q60-01.jpg", quality=60)
half = rgb(2)
half.resize((half.width // 2, half.height // 2), Image.LANCZOS).save(
    photos / "copy-half-02.jpg", quality=90)
ImageEnhance.Brightness(rgb(3)).enhance(1.3).save(photos / "copy-bright-03.jpg", quality=90)
crop5(rgb(4)).save(photos / "copy-crop-04.jpg", quality=90)
copies = {"copy-exact-00.jpg": "orig00.jpg", "copy-q60-01.jpg": "orig01.jpg",
          "copy-half-02.jpg": "orig02.jpg", "copy-bright-03.jpg": "orig03.jpg",
          "copy-crop-04.jpg": "orig04.jpg"}

collection = work / "collection"
run("index", photos, "-q", collection=collection, check=0)
out, _ = run_json("duplicates", collection=collection, model=False, check=0)
summary = out["summary"]
print(f"summary: {summary}")


def name(m):
    return m["path"].rsplit("/", 1)[-1]


group_of = {}
for g in out["groups"]:
    names = [name(m) for m in g["members"]]
    for m in g["members"]:
        group_of[name(m)] = (g, m)
    if g["members"][0]["id"] != g["representative"]:
        fail(f"representative is not the first member: {g}")
    if sum(n.startswith("orig") for n in names) > 1:
        fail(f"unrelated originals grouped at the default threshold: {names}")

print(f"threshold {summary['threshold']} ({summary['threshold_source']})")
for copy, original in copies.items():
    if copy not in group_of or original not in group_of:
        fail(f"{copy} is not grouped with {original}: {out['groups']}")
    g, m = group_of[copy]
    if group_of[original][0] is not g:
        fail(f"{copy} and {original} are in different groups")
    other = m if g["representative"] != m["id"] else group_of[original][1]
    if not other["same_picture"]:
        fail(f"{copy} vs {original}: not the same picture: {other}")
    print(f"{copy:20s} vs {original}: similarity {other['similarity']:.4f}, "
          f"pHash distance {other['hamming']}, same_picture {other['same_picture']}")
    if len(g["members"]) != 2:
        fail(f"group of {copy} has {len(g['members'])} members: {g}")

g, _ = group_of["orig02.jpg"]
rep = next(m for m in g["members"] if m["id"] == g["representative"])
if name(rep) != "orig02.jpg":
    fail(f"the 50% resize represents its pair: {g}")
if summary["groups"] != 5 or summary["images_in_groups"] != 10 or summary["exact_groups"] != 1:
    fail(f"expected 5 groups of 2, one exact: {summary}")

# The nearest different photo of each original, for the threshold's margin.
nearest = []
proc = run("search", *[photos / f"orig{i:02d}.jpg" for i in range(30)], "-k", 8, "--json",
           collection=collection, check=0)
for line in proc.stdout.splitlines():
    if not line.strip():
        continue
    obj = json.loads(line)
    q = obj["query"].rsplit("/", 1)[-1]
    others = [r for r in obj["results"]
              if name(r) != q and copies.get(name(r)) != q]
    nearest.append((others[0]["score"], q, name(others[0])))
nearest.sort(reverse=True)
print("nearest different photo of each original, highest: " +
      ", ".join(f"{q}~{n} {s:.4f}" for s, q, n in nearest[:5]))
if nearest[0][0] >= summary["threshold"]:
    fail(f"a different photo scores over the threshold: {nearest[0]}")

human = run("duplicates", collection=collection, model=False, check=0).stdout
if "same picture" not in human or "5 groups" not in human:
    fail(f"human output: {human}")
bad = run("duplicates", "--threshold", "1.5", collection=collection, model=False)
if bad.returncode != 2:
    fail(f"--threshold 1.5: exit {bad.returncode}, expected 2: {bad.stderr}")

# Part 2.
gallery = work / "gallery"
gallery.mkdir()
originals = images("test")[::7][:50]
assert len(originals) == 50
EDITS = {
    "half": lambda im: im.resize((im.width // 2, im.height // 2), Image.LANCZOS),
    "q40": None,  # saved at quality 40 below
    "crop5": lambda im: im.crop((int(im.width * .05), int(im.height * .05),
                                 im.width - int(im.width * .05), im.height - int(im.height * .05))),
    "bright20": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "flip": ImageOps.mirror,
}
truth = {}  # file name -> the picture it is ("flip" copies are pictures of their own)
for i, f in enumerate(originals):
    shutil.copy2(f, gallery / f"p{i:02d}-orig.jpg")
    truth[f"p{i:02d}-orig.jpg"] = f"p{i:02d}"
    im = Image.open(f).convert("RGB")
    for edit, fn in EDITS.items():
        out = f"p{i:02d}-{edit}.jpg"
        (fn(im) if fn else im).save(gallery / out, quality=40 if edit == "q40" else 90)
        truth[out] = f"p{i:02d}-flip" if edit == "flip" else f"p{i:02d}"
chosen = set(originals)
others = [f for f in images("train")[::10] if f not in chosen][:300]
for j, f in enumerate(others):
    shutil.copy2(f, gallery / f"other{j:03d}.jpg")
    truth[f"other{j:03d}.jpg"] = f"other{j:03d}"

collection2 = work / "collection2"
run("index", gallery, "-q", collection=collection2, check=0)
out, _ = run_json("duplicates", collection=collection2, model=False, check=0)
summary = out["summary"]
print(f"part 2: {summary['images']} images, {summary['groups']} groups, "
      f"{summary['images_in_groups']} in groups; hashes computed from files "
      f"{summary['hashes_computed']} (the indexer stored them)")
if summary["images"] != len(truth):
    fail(f"expected {len(truth)} images: {summary}")
if summary["hashes_computed"] != 0:
    fail(f"the indexer should have stored every perceptual hash: {summary}")

predicted = set()
distance_of = defaultdict(list)  # "edit vs edit" -> pHash distances to the representative
for g in out["groups"]:
    sets = defaultdict(list)
    for m in g["members"]:
        sets[m["picture"]].append(name(m))
    for members in sets.values():
        predicted |= {tuple(sorted(p)) for p in itertools.combinations(members, 2)}
    rep = name(g["members"][0])
    for m in g["members"][1:]:
        n = name(m)
        if rep.startswith("p") and n.startswith(rep[:4]) and m["hamming"] is not None:
            # The representative is the oldest of the full-size ones: one of the edits.
            distance_of[f"{n[4:-4]} vs {rep[4:-4]}"].append(m["hamming"])
expected = set()
by_picture = defaultdict(list)
for n, picture in truth.items():
    by_picture[picture].append(n)
for members in by_picture.values():
    expected |= {tuple(sorted(p)) for p in itertools.combinations(members, 2)}
true_pairs = predicted & expected
false_pairs = sorted(predicted - expected)
precision = len(true_pairs) / max(len(predicted), 1)
recall = len(true_pairs) / len(expected)
flip_pairs = [p for p in false_pairs if any(x.endswith("-flip.jpg") for x in p)]
different = [p for p in false_pairs if p not in flip_pairs]
print(f"same-picture pairs: {len(expected)} expected, {len(predicted)} found, "
      f"{len(true_pairs)} right: precision {precision:.3f}, recall {recall:.3f}")
print(f"false pairs: {len(flip_pairs)} with a flip, {len(different)} of different photos")
for edit, d in sorted(distance_of.items()):
    print(f"  {edit:20s} pHash distance: min {min(d)}, max {max(d)} ({len(d)} pairs)")
missed = sorted(expected - predicted)
if missed:
    print(f"missed pairs (first 10): {missed[:10]}")
if false_pairs:
    print(f"false pairs (first 10): {false_pairs[:10]}")
if precision < 0.95 or recall < 0.95:
    fail(f"precision {precision:.3f}, recall {recall:.3f}: under 0.95")
if different:
    fail(f"different photos reported as the same picture: {different}")

# Rows written before schema 4 have no perceptual hash: `duplicates` computes those of the
# images it groups from their files and stores them (a short write-mode open beside the read
# one), so a second run computes none.
with sqlite3.connect(collection2 / "catalog.db") as db:
    db.execute("UPDATE images SET phash = NULL, phash_95 = NULL, phash_90 = NULL")
out, _ = run_json("duplicates", collection=collection2, model=False, check=0)
first = out["summary"]
again = run_json("duplicates", collection=collection2, model=False, check=0)[0]["summary"]
print(f"hashes of pre-schema-4 rows: {first['hashes_computed']} computed, "
      f"{first['hashes_stored']} stored; then {again['hashes_computed']} computed")
if not (first["hashes_computed"] > 0 and first["hashes_stored"] == first["hashes_computed"]):
    fail(f"the computed hashes should be stored: {first}")
if again["hashes_computed"] != 0 or again["groups"] != first["groups"]:
    fail(f"a second run should find them stored and the same groups: {again} after {first}")

shutil.rmtree(work)
print("duplicates: ok")
