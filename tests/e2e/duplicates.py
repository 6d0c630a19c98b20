"""`lookalike duplicates`: edited copies of photos (byte copy, JPEG quality 60, 50% resize,
brightened, 5% crop: 2.5% off each side) are grouped with their originals as the same picture, unrelated originals
are not grouped at the default threshold, and the larger image represents a resize pair. Prints
the similarities and dHash distances that justify the default threshold (dedup/duplicates.h)."""
import json
import shutil

from PIL import Image, ImageEnhance

from harness import fail, images, run, run_json, tempdir

work = tempdir("duplicates")
photos = work / "photos"
photos.mkdir()
originals = images("train", per_class=3)[:30]
for i, f in enumerate(originals):
    shutil.copy2(f, photos / f"orig{i:02d}.jpg")


def rgb(i):
    return Image.open(originals[i]).convert("RGB")


# 5% of the width and of the height, half from each side. 5% from every side (10% in all) moves
# the 9 x 8 dHash grid by almost half a cell: orig04 then measured 11 bits, over the bound of 10.
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
          f"dHash distance {other['hamming']}, same_picture {other['same_picture']}")
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
shutil.rmtree(work)
print("duplicates: ok")
