"""A model card's preprocessing is recorded with the collection (meta.preprocess_fingerprint,
docs/model-card.md "Preprocessing fingerprint"): a hand-edited card (here its mean) keeps the
model id but is refused by `index` and `search` with an error naming the collection, the field
that differs and what to do, and the collection is left as it was; the restored card works again,
and `reembed` with the edited card makes a collection of its own. A catalog from before schema 5
(no fingerprint) is read with any card and records the card of its first writer."""
import json
import re
import shutil
import sqlite3
from pathlib import Path
from harness import MODEL, copy_images, fail, images, run, run_json, tempdir

work = tempdir("preprocess-fingerprint")
models = work / "models"
models.mkdir()
# The test model and its card, with the BF16 archive the card names.
for suffix in (".pt", ".json", ".bf16.pt"):
    f = Path(MODEL).with_name(Path(MODEL).stem + suffix)
    if f.exists():
        shutil.copy2(f, models / f.name)
model = models / "mobilenet_v2.pt"
card = models / "mobilenet_v2.json"
original_card = card.read_text()
edited = json.loads(original_card)
edited["mean"] = [0.5, 0.5, 0.5]
edited_card = json.dumps(edited, indent=2)

photos = copy_images(images("train", per_class=1)[:7], work / "photos")
assert len(photos) == 7, photos
first, extra = photos[:6], photos[6]


def snapshot(coll):
    """Everything the catalog holds, read without a -wal's help being needed (mode=ro)."""
    con = sqlite3.connect(f"file:{coll / 'catalog.db'}?mode=ro", uri=True)
    try:
        return {
            "meta": sorted(con.execute("SELECT key, value FROM meta")),
            "images": sorted(con.execute("SELECT id, path, content_hash FROM images")),
            "vectors": sorted(con.execute("SELECT image_id, model_id, vector FROM embeddings")),
        }
    finally:
        con.close()


def meta(coll, key):
    con = sqlite3.connect(f"file:{coll / 'catalog.db'}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None
    finally:
        con.close()


def expect_refused(proc, what, coll, fingerprint):
    err = proc.stderr
    for needle in (str(coll), "mean 0.485,0.456,0.406 -> 0.5,0.5,0.5", fingerprint, str(card),
                   "reembed", "restore the card"):
        if needle not in err:
            fail(f"{what} with the edited card: {needle!r} missing from the error:\n{err}")


# 1. A new collection records the card's preprocessing; info shows it.
coll = work / "c"
s, _ = run_json("index", *first, collection=coll, model=model, check=0)
assert s["added"] == 6, s
info, _ = run_json("info", collection=coll, model=model, check=0)
fp = info["preprocess_fingerprint"]
if not isinstance(fp, str) or not re.fullmatch(r"[0-9a-f]{16}", fp):
    fail(f"info --json: preprocess_fingerprint {fp!r}, expected 16 hex digits")
if "mean=0.485,0.456,0.406" not in (info["preprocess"] or "") or \
        "std=0.229,0.224,0.225" not in info["preprocess"]:
    fail(f"info --json: preprocess {info['preprocess']!r}")
assert info["model_preprocess_fingerprint"] == fp and info["preprocess_accepted"] is True, info
assert info["preprocess_refusal"] is None, info
assert meta(coll, "preprocess_fingerprint") == fp and meta(coll, "schema_version") == "5"
text = run("info", collection=coll, model=model, check=0).stdout
if f"preprocess  {fp} (preprocess/1;" not in text:
    fail(f"info: no preprocess line with {fp}:\n{text}")
before = snapshot(coll)
print(f"new collection: preprocessing {fp} recorded, shown by info: OK")

# 2. The card's mean edited by hand: same archive, same model id, other vectors. index and search
#    refuse it, naming the collection, the field, both fingerprints and the way out; nothing
#    changes; info says why.
card.write_text(edited_card)
proc = run("index", extra, collection=coll, model=model, check=1)
expect_refused(proc, "index", coll, fp)
proc = run("search", first[0], collection=coll, model=model, check=1)
expect_refused(proc, "search", coll, fp)
if proc.stdout.strip():
    fail(f"search with the edited card printed results:\n{proc.stdout}")
info, _ = run_json("info", collection=coll, model=model, check=0)
assert info["preprocess_fingerprint"] == fp, info
assert info["model_preprocess_fingerprint"] not in (None, fp), info
assert info["preprocess_accepted"] is False, info
assert "mean 0.485,0.456,0.406 -> 0.5,0.5,0.5" in info["preprocess_refusal"], info
if snapshot(coll) != before:
    fail("the collection changed while the edited card was refused")
print("edited card: index and search refused with the differing field, collection unchanged: OK")

# 3. The card restored: everything works again.
card.write_text(original_card)
s, _ = run_json("index", extra, collection=coll, model=model, check=0)
assert s["added"] == 1 and s["count"] == 7, s
res, _ = run_json("search", extra, "-k", "1", collection=coll, model=model, check=0)
assert res["results"][0]["path"] == str(extra), res
assert meta(coll, "preprocess_fingerprint") == fp
print("restored card: index and search work: OK")

# 4. The way out the message names: reembed with the edited card makes a collection of its own,
#    which records the edited preprocessing and takes that card.
card.write_text(edited_card)
out = work / "c-edited"
r, _ = run_json("reembed", "--out", out, collection=coll, model=model, check=0)
info, _ = run_json("info", collection=out, model=model, check=0)
assert info["count"] == 7 and info["preprocess_accepted"] is True, info
assert info["preprocess_fingerprint"] not in (None, fp), info
assert "mean=0.5,0.5,0.5" in info["preprocess"], info
res, _ = run_json("search", extra, "-k", "1", collection=out, model=model, check=0)
assert res["results"][0]["path"] == str(extra), res
card.write_text(original_card)
print("reembed with the edited card: a collection with its own fingerprint: OK")

# 5. A catalog from before schema 5 (no fingerprint): read with any card, and the first model
#    that opens it for writing records its own; from then on it is checked.
old = work / "c-old"
shutil.copytree(coll, old)
con = sqlite3.connect(old / "catalog.db")
con.execute("DELETE FROM meta WHERE key IN ('preprocess', 'preprocess_fingerprint')")
con.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
con.commit()
con.close()
info, _ = run_json("info", collection=old, model=False, check=0)
assert info["count"] == 7, info
assert info["preprocess_fingerprint"] is None and info["preprocess"] is None, info
text = run("info", collection=old, model=False, check=0).stdout
if "preprocess  not recorded" not in text:
    fail(f"info on an old catalog:\n{text}")
card.write_text(edited_card)
res, _ = run_json("search", first[1], "-k", "3", collection=old, model=model, check=0)
assert len(res["results"]) == 3, res
assert meta(old, "preprocess_fingerprint") is None and meta(old, "schema_version") == "4"
card.write_text(original_card)
s, _ = run_json("index", *photos, collection=old, model=model, check=0)
assert s["unchanged"] == 7 and s["count"] == 7, s
assert meta(old, "schema_version") == "5", meta(old, "schema_version")
assert meta(old, "preprocess_fingerprint") == fp, meta(old, "preprocess_fingerprint")
assert "mean=0.485,0.456,0.406" in meta(old, "preprocess")
card.write_text(edited_card)
proc = run("search", first[0], collection=old, model=model, check=1)
expect_refused(proc, "search (old catalog, after its first writer)", old, fp)
card.write_text(original_card)
print("catalog without a fingerprint: read with any card, recorded by its first writer: OK")
