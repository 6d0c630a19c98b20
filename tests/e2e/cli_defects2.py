"""Regression tests, through the real binary, for the second CLI review's defects (--where
operators, FAISS's text in spec errors, duplicates --json "type", malformed and ambiguous CSV
manifests, reembed's counts, train --out in a missing folder), on clothing-small photos."""
import csv
import json
import shutil
import sqlite3
import time
from pathlib import Path

from harness import FIXTURES, MODEL, copy_images, images, json_lines, run, run_json, tempdir

work = tempdir("cli-defects2")
photos = copy_images(images("train", classes=["shoes", "hat"], per_class=10), work / "photos")
assert len(photos) == 20

manifest = work / "photos" / "all.csv"
with open(manifest, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file", "category"])
    for p in photos:
        w.writerow([p.relative_to(work / "photos"), p.parent.name])
coll = work / "coll"
summary, _ = run_json("index", manifest, collection=coll, check=0)
assert summary["added"] == 20, summary

# 1. --where: spaces around '=' are trimmed; ==, != and =< are refused naming the term (exit 2).
def where(term, check):
    return run("search", "--id", 1, "-k", 30, "--where", term, "--json", collection=coll,
               model=False, check=check)


shoes = json.loads(where("category=shoes", 0).stdout)
assert len(shoes["results"]) == 10, shoes  # id 1, the query, is the first row: a hat
spaced = json.loads(where("category = shoes", 0).stdout)
assert [r["id"] for r in spaced["results"]] == [r["id"] for r in shoes["results"]], spaced
assert all("/shoes/" in r["path"] for r in spaced["results"]), spaced
for term, says in [("category==shoes", "== is not supported"),
                   ("category!=shoes", "!= (not equal) is not supported"),
                   ("price=<5", "=< is not supported")]:
    proc = where(term, 2)
    assert f"filter '{term}'" in proc.stderr and says in proc.stderr, proc.stderr
    assert "supported: field=value" in proc.stderr, proc.stderr
# An unknown field is not an error: metadata is schemaless.
assert json.loads(where("nosuchfield=x", 0).stdout)["results"] == []

# 2. A spec FAISS refuses: its cause, without "Error in <C++ signature> at <file>:<line>".
for spec, says in [("bogus", "could not parse index string bogus"),
                   ("Flat,Flat", "could not parse index string")]:
    proc = run("reindex", "--index-spec", spec, collection=coll, model=False, check=2)
    assert f"factory '{spec}'" in proc.stderr and says in proc.stderr, proc.stderr
    for internal in ("Error in", "faiss::", "std::", ".cpp:"):
        assert internal not in proc.stderr, proc.stderr

# 3. duplicates --json: the record has its "type" like every other JSON record.
dup, _ = run_json("duplicates", collection=coll, model=False, check=0)
assert dup["type"] == "duplicates" and "groups" in dup and "summary" in dup, dup

# 4. A malformed CSV names the file, row, line and cause; a second `file` column is refused.
bad = work / "photos" / "badquote.csv"
first, second = (p.relative_to(work / "photos") for p in photos[:2])
bad.write_text(f'file,category\n{first},shoes\n{second},"never closed\n')
proc = run("index", bad, collection=work / "coll-bad", check=1)
said = proc.stdout + proc.stderr  # the failure list is on stdout
assert f"{bad}: malformed CSV in row 3 (line 3): unterminated quoted field" in said, said
assert "strict checking" not in said, said
dupcol = work / "photos" / "dupcol.csv"
dupcol.write_text(f"file,category,file\n{first},shoes,{second}\n")
proc = run("index", dupcol, collection=work / "coll-dup", check=1)
said = proc.stdout + proc.stderr
assert f"{dupcol}: columns 1 and 3 are both named 'file'" in said, said
assert not (work / "coll-dup").exists()

# 6. reembed with one source file missing and one truncated: the counts add up to what was
#    written, and both failures are named with their cause.
src = work / "coll-src"
run_json("index", work / "photos" / "hat", collection=src, check=0)
hats = sorted((work / "photos" / "hat").glob("*.jpg"))
hats[0].unlink()
data = hats[1].read_bytes()
hats[1].write_bytes(data[: len(data) // 3])
out = work / "coll-reembed"
proc = run("reembed", "--out", out, "--json", collection=src, check=3)
r = json_lines(proc.stdout)[-1]
assert r["images"] == 10 and r["from_cache"] == 0, r
assert r["decoded"] == 8 and len(r["failed"]) == 2, r
assert r["from_cache"] + r["decoded"] + len(r["failed"]) == r["images"], r
assert any(str(hats[0]) in f for f in r["failed"]) and any(str(hats[1]) in f for f in r["failed"]), r
info, _ = run_json("info", collection=out, model=False, check=0)
assert info["count"] == 8, info
proc = run("reembed", "--out", work / "coll-reembed2", collection=src, check=3)
assert "10 images" in proc.stdout and "8 decoded" in proc.stdout and "2 left out" in proc.stdout, \
    proc.stdout
assert str(hats[0]) in proc.stderr and str(hats[1]) in proc.stderr, proc.stderr

# 7. train --out in a folder that does not exist: refused before any work, nothing created.
labels = work / "labels.csv"
with open(labels, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file", "label"])
    for p in photos:
        w.writerow([p, p.parent.name])
missing = work / "no-such-folder" / "deeper"
started = time.monotonic()
proc = run("train", "--labels", labels, "--out", missing / "t.pt", "--cache", work / "cache",
           check=1)
assert f"folder {missing} does not exist" in proc.stderr, proc.stderr
assert not (work / "no-such-folder").exists()
assert not (work / "cache").exists()  # nothing embedded: refused before the work
print(f"train refused in {time.monotonic() - started:.1f} s")

# `models` lists an archive whose card is broken or missing, with the cause (it hid them).
mods = work / "models"
mods.mkdir()
shutil.copy(MODEL, mods / "good.pt")
shutil.copy(Path(MODEL).with_suffix(".json"), mods / "good.json")
(mods / "broken.pt").write_bytes(b"x")
(mods / "broken.json").write_text("{not json")
(mods / "nocard.pt").write_bytes(b"y")
proc = run("models", "--json", model=False, env={"LOOKALIKE_MODELS": str(mods)}, check=0)
listed = {r["name"]: r for r in json_lines(proc.stdout)}
assert {"broken", "nocard"} <= set(listed), listed.keys()
assert "not valid JSON" in listed["broken"]["error"], listed["broken"]
assert "cannot read model card" in listed["nocard"]["error"], listed["nocard"]
# Every row is named by the file stem, which --model takes (good ones showed the card's name).
assert "error" not in listed["good"] and listed["good"]["card_name"] == "mobilenet_v2", listed
proc = run("models", model=False, env={"LOOKALIKE_MODELS": str(mods)}, check=0)
assert "BROKEN" in proc.stdout and "nocard" in proc.stdout, proc.stdout
print("models lists broken archives with the cause")

# A --metric or --index-spec that differs from the collection's: the message says which (it
# advised `reindex --index-spec "Flat"` for a metric on a Flat collection).
proc = run("index", manifest, "--metric", "l2", collection=coll, check=2)
assert "uses metric cosine, not l2" in proc.stderr and "reindex" not in proc.stderr, proc.stderr
proc = run("index", manifest, "--index-spec", "HNSW32", collection=coll, check=2)
assert 'uses index factory "Flat", not "HNSW32"' in proc.stderr, proc.stderr
assert "another --collection" not in proc.stderr, proc.stderr
# A valid PQ for the 1280-d model at creation (was refused against a stand-in dimension).
summary, _ = run_json("index", work / "photos" / "shoes", "--index-spec", "IVF4,PQ128",
                      collection=work / "pq", check=0)
assert summary["added"] >= 9, summary
print("metric / factory mismatch messages; PQ128 at creation")

# An index cache that cannot be saved after `index` or `reindex` is a warning, exit 0: everything
# is committed, and the next open rebuilds the index from the catalog. Non-empty folders where
# the cache's temp files go make the save fail (the writer's sweep cannot remove them either).
db = sqlite3.connect(coll / "catalog.db")
gen = int(db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
db.close()
for g in range(gen, gen + 200):
    blocker = coll / f"index-{g}.faiss.tmp"
    blocker.mkdir()
    (blocker / "x").write_text("in the way")
before = run_json("info", collection=coll, model=False, check=0)[0]["count"]
dresses = copy_images(images("train", classes=["dress"], per_class=4), work / "more")
summary, proc = run_json("index", work / "more", collection=coll, check=0)
assert summary["added"] == 4 and ".faiss" in summary["cache_warning"], summary
assert "everything is committed" in proc.stderr, proc.stderr
res = json.loads(run("search", dresses[0], "-k", 3, "--json", collection=coll, check=0).stdout)
assert res["results"][0]["path"] == str(dresses[0].resolve()), res["results"][0]
out, proc = run_json("reindex", "--index-spec", "HNSW16", collection=coll, check=0)
assert ".faiss" in out["cache_warning"], out
assert "the new index is committed" in proc.stderr, proc.stderr
after = run_json("info", collection=coll, model=False, check=0)[0]
assert after["count"] == before + 4 and after["index_factory"] == "HNSW16", after
print("cache that cannot be saved: cache_warning, exit 0, committed:", summary["cache_warning"])

# reembed checks the collection's index spec against the new model's dimension before it
# embeds anything (PQ10 splits MobileNetV2's 1280 dims, not ResNet-50's 2048).
resnet = FIXTURES / "models-resnet50" / "resnet50.pt"
small = work / "pq-small"
run("index", work / "photos" / "shoes", collection=small, check=0)
run("reindex", "--index-spec", "PQ10x4", collection=small, model=False, check=0)
t0 = time.time()
proc = run("reembed", "--model", resnet, "--out", work / "pq-resnet", collection=small,
           model=False, check=1)
assert 'index spec "PQ10x4" does not fit the new model\'s 2048-d vectors' in proc.stderr, proc.stderr
assert "reindex" in proc.stderr and not (work / "pq-resnet").exists(), proc.stderr
print(f"reembed with a spec that does not fit: refused in {time.time() - t0:.1f} s")

# reembed's summary names the cache only for a trained head, and says why this precision.
proc = run("reembed", "--out", work / "re-human", collection=small, check=0)
count = run_json("info", collection=small, model=False, check=0)[0]["count"]
assert "cached" not in proc.stdout and f"{count} images, {count} decoded" in proc.stdout, proc.stdout

# eval loads every model before embedding: a bad second model fails before the first runs
# (it used to embed the whole gallery with the first, then fail and print nothing).
proc = run("eval", "--gallery", work / "photos", "--model", MODEL, "--model",
           work / "no-such-model.pt", "--json", model=False, check=1)
assert "no-such-model" in proc.stderr and "embedded" not in proc.stderr, proc.stderr
assert proc.stdout == "", proc.stdout
print("eval with a missing second model: refused before embedding")

# A damaged embedding cache only costs time: train warns, computes, and finishes (it stopped
# with "embedding cache: file is not a database").
labels = copy_images(images("train", classes=["shoes", "hat"], per_class=8), work / "labels")
(work / "bad-cache").mkdir()
(work / "bad-cache" / "base-embeddings.sqlite").write_bytes(b"not a database" * 100)
proc = run("train", "--labels", work / "labels", "--base", MODEL, "--out", work / "head.pt",
           "--epochs", 1, "--cache", work / "bad-cache", model=False, check=0)
assert "the embedding cache cannot be read" in proc.stderr, proc.stderr
assert "cannot write the embedding cache" in proc.stderr and (work / "head.pt").exists()
print("damaged embedding cache: warnings, the head is trained")

# A manifest row whose metadata is over 64 KiB as JSON is refused alone, naming the row (the
# server refuses such metadata too; a stored one made every later PATCH of it fail).
big_csv = work / "labels" / "big.csv"
with open(big_csv, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file", "notes"])
    w.writerow([labels[0].relative_to(work / "labels"), "x" * 70_000])
    w.writerow([labels[1].relative_to(work / "labels"), "fine"])
summary, proc = run_json("index", big_csv, collection=work / "big-meta", check=3)
assert summary["added"] == 1 and len(summary["failures"]) == 1, summary
bad = summary["failures"][0]
assert bad["file"].endswith("big.csv row 2") and "at most 65536" in bad["reason"], bad
print("manifest row with 70 KB of metadata: refused alone")

print("cli_defects2: all passed")
