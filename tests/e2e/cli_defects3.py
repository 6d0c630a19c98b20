"""Regression tests, through the real binary, for the third CLI review's defects: `embed` text
output that could not be parsed back (paths with spaces) nor held the exact values,
`bench-index --from-collection` on a missing collection as a usage error, an `eval` manifest that
lists a path twice, and `search --where` on a field no image has, without a hint; on
clothing-small photos."""
import csv
import json
import shutil

import numpy as np

from harness import copy_images, images, json_lines, run, run_json, tempdir
from server_client import Server

work = tempdir("cli-defects3")
photos = copy_images(images("train", classes=["shoes", "hat"], per_class=4), work / "photos")
assert len(photos) == 8

# 1. embed: the path, a tab, the values; each value reads back as the float32 in the .npy.
spaced = work / "with space" / "a photo\twith tab.jpg"
spaced.parent.mkdir()
shutil.copy(photos[0], spaced)
inputs = [spaced, photos[1]]
proc = run("embed", *inputs, check=0)
lines = proc.stdout.splitlines()
assert len(lines) == 2, proc.stdout[:500]
npy = work / "e.npy"
run("embed", *inputs, "--npy", npy, check=0)
expected = np.load(npy)
assert expected.shape == (2, 1280) and expected.dtype == np.float32, expected.shape
for i, line in enumerate(lines):
    path, values = line.rsplit("\t", 1)  # the values hold no tab; the path may
    assert path == str(inputs[i]), (path, inputs[i])
    row = np.array([np.float32(v) for v in values.split(" ")], dtype=np.float32)
    assert row.shape == (1280,), row.shape
    assert np.array_equal(row, expected[i]), np.abs(row - expected[i]).max()
# --json holds the same values.
records = json_lines(run("embed", *inputs, "--json", check=0).stdout)
for i, r in enumerate(records):
    assert r["path"] == str(inputs[i]), r["path"]
    assert np.array_equal(np.array(r["embedding"], dtype=np.float32), expected[i])
print("embed text output: tab after the path, values exactly as in the .npy")

# 2. bench-index --from-collection: a missing or non-collection folder is a runtime error (exit
#    1) naming it; a bad option value stays a usage error (exit 2).
missing = work / "no-such-collection"
proc = run("bench-index", "--from-collection", missing, "--sizes", 100, "--quick", model=False,
           check=1)
assert f"--from-collection {missing}: no such folder" in proc.stderr, proc.stderr
empty = work / "empty-folder"
empty.mkdir()
proc = run("bench-index", "--from-collection", empty, "--sizes", 100, "--quick", model=False,
           check=1)
assert f"--from-collection {empty}: no collection in this folder" in proc.stderr, proc.stderr
proc = run("bench-index", "--from-collection", photos[0], "--sizes", 100, model=False, check=1)
assert f"--from-collection {photos[0]}: not a folder" in proc.stderr, proc.stderr
proc = run("bench-index", "--from-collection", missing, "--sizes", 0, model=False, check=2)
assert "--sizes: 0 is not in 1..1000000" in proc.stderr, proc.stderr
print("bench-index: missing collection exit 1, bad option exit 2")

# 3. eval: a manifest listing a path twice (the second time with an empty label, after a blank
#    line, spelled another way) is refused, naming the manifest, both rows and lines, the path.
labels = work / "photos" / "labels.csv"
rel = [p.relative_to(work / "photos") for p in photos]
with open(labels, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file", "label"])
    for p in rel:
        w.writerow([p, p.parent.name])
    f.write("\n")
    w.writerow([f"./{rel[2].parent}/../{rel[2]}", ""])
proc = run("eval", "--gallery", labels, check=1)
assert (f"{labels}: row 4 and row 10 (line 11) both list {photos[2]}; list each image once"
        in proc.stderr), proc.stderr
# train reads labels the same way: refused before any work.
proc = run("train", "--labels", labels, "--out", work / "t.pt", "--cache", work / "cache",
           check=1)
assert f"row 4 and row 10 (line 11) both list {photos[2]}" in proc.stderr, proc.stderr
assert not (work / "cache").exists() and not (work / "t.pt").exists()
# `index` keeps its documented behaviour: one image, the later row's metadata.
summary, _ = run_json("index", labels, collection=work / "coll-dup", check=0)
assert summary["added"] == 8 and summary["failed"] == 0, summary
# Without the repeat, eval runs.
unique = work / "photos" / "unique.csv"
unique.write_text("".join(labels.read_text().splitlines(keepends=True)[:-2]))
ev, _ = run_json("eval", "--gallery", unique, check=0)
assert ev["gallery"] == 8, ev
print("eval: a repeated manifest path is refused with both rows")

# 4. search --where on a field no image has: 0 results (a valid filter) and a hint naming the
#    field and the fields present, on stderr and in --json's "warnings"; none for a present field.
manifest = work / "photos" / "all.csv"
with open(manifest, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file", "category", "description"])
    for p in rel:
        w.writerow([p, p.parent.name, f"a {p.parent.name}"])
coll = work / "coll"
summary, _ = run_json("index", manifest, collection=coll, check=0)
assert summary["added"] == 8, summary
hint = "no image has metadata field 'nosuch'; fields present: category, description"
proc = run("search", "--id", 1, "--where", "nosuch=1", "--json", collection=coll, model=False,
           check=0)
rec = json.loads(proc.stdout)
assert rec["results"] == [] and rec["plan"]["filter_matches"] == 0, rec
assert rec["warnings"] == [hint], rec
assert proc.stderr.count(hint) == 1, proc.stderr
# Text output, two queries: the hint once.
proc = run("search", photos[0], photos[1], "--where", "nosuch=1", "--where", "category=hat",
           collection=coll, check=0)
assert proc.stderr.count(hint) == 1, proc.stderr
assert "category" not in proc.stderr.replace(hint, ""), proc.stderr
# A present field whose value matches nothing, and a filter that matches: no hint.
for term in ("category=boots", "category=hat"):
    proc = run("search", "--id", 1, "--where", term, "--json", collection=coll, model=False,
               check=0)
    assert "warnings" not in json.loads(proc.stdout) and "no image has" not in proc.stderr, \
        proc.stderr
# A collection without metadata (indexed from a folder).
plain = work / "coll-plain"
run_json("index", work / "photos" / "hat", collection=plain, check=0)
proc = run("search", "--id", 1, "--where", "category=hat", "--json", collection=plain,
           model=False, check=0)
assert json.loads(proc.stdout)["warnings"] == [
    "no image has metadata field 'category'; the images have no metadata"], proc.stdout
# The HTTP API's search carries the same warnings.
server = Server(coll)
try:
    body, _ = server.json("POST", "/v1/search", {"id": 1, "where": ["nosuch=1"]})
    assert body["results"] == [] and body["warnings"] == [hint], body
    body, _ = server.json("POST", "/v1/search", {"id": 1, "where": {"category": "hat"}})
    assert "warnings" not in body and body["results"], body
finally:
    server.stop()
print("search --where on an absent field: 0 results and a hint")
print("OK")
