"""Defects a review found in `index` (each reproduced with the real binary before the fix):
an empty path argument, a manifest named list.Csv, duplicate or unnamed metadata columns, a
dangling symlink in the collection, manifest rows named by record instead of line, `--prune` on
an input folder that is now empty (an unmounted drive), a NUL byte in a manifest's file cell,
and rewritten metadata counted as nothing."""
import os
import shutil
from harness import committed_paths, copy_images, images, run, run_json, tempdir

work = tempdir("index-defects")
dresses = copy_images(images("train", classes=["dress"], per_class=3), work / "p1")
hats = copy_images(images("train", classes=["hat"], per_class=3), work / "p2")


def count(coll):
    info, _ = run_json("info", collection=coll, model=False, check=0)
    return info["count"]


def reasons(summary):
    return {f["file"]: f["reason"] for f in summary["failures"]}


# 1. An empty argument is a failed input named as such: the summary is printed, exit 3 (some
#    done), and the vanished check after the commits does not throw.
coll = work / "c-empty"
s, proc = run_json("index", work / "p1" / "dress", "", collection=coll, check=3)
assert s["added"] == 3 and s["count"] == 3, s
assert "empty" in reasons(s).get("(empty path)", ""), s["failures"]
assert "filesystem error" not in proc.stderr, proc.stderr
proc = run("index", work / "p1" / "dress", "", "--prune", collection=coll, check=3)
# The failures are on stderr (in every mode), the counts on stdout.
assert "3 unchanged" in proc.stdout, proc.stdout
assert "lookalike: error: (empty path): an empty argument" in proc.stderr, proc.stderr
proc = run("remove", "", collection=coll, model=False, check=1)
assert "empty" in proc.stderr and "filesystem error" not in proc.stderr, proc.stderr
assert count(coll) == 3
print("empty path: a failed input, summary printed, exit 3; remove says it is empty: OK")

# 2. A manifest named list.Csv gets the vanished check like list.csv: --prune removes the file
#    it names that is gone once no row lists it (while a row does, the row fails and the entry
#    stays).
coll = work / "c-case"
m2 = work / "m2"
m2.mkdir()
for f in hats[:2]:
    shutil.copy2(f, m2 / f.name)
manifest = m2 / "list.Csv"
manifest.write_text("file,tag\n" + "".join(f"{f.name},t{i}\n" for i, f in enumerate(hats[:2])))
run("index", manifest, collection=coll, check=0)
(m2 / hats[0].name).unlink()
# While a row lists it the entry is kept (the row fails); with the row deleted it is pruned.
s, _ = run_json("index", manifest, "--prune", collection=coll, check=3)
assert (s["removed"], s["count"], s["vanished"]) == (0, 2, []), s
manifest.write_text("file,tag\n" + f"{hats[1].name},t1\n")
s, _ = run_json("index", manifest, "--prune", collection=coll, check=0)
assert [v["file"] for v in s["vanished"]] == [str(m2 / hats[0].name)], s
assert s["removed"] == 1 and s["count"] == 1, s
print("list.Csv: vanished file reported and pruned: OK")

# 3. Two metadata columns of one name, or a column with no name that holds values: the manifest
#    is refused naming the columns; a trailing empty column (trailing commas) is ignored.
coll = work / "c-columns"
m3 = work / "m3"
m3.mkdir()
shutil.copy2(dresses[0], m3 / "a.jpg")
dup = m3 / "dup.csv"
dup.write_text("file,tag,tag,\na.jpg,x,y,\n")
s, _ = run_json("index", dup, collection=coll, check=1)
assert "columns 2 and 3 are both named 'tag'" in reasons(s).get(str(dup), ""), s["failures"]
assert not coll.exists(), "a refused manifest created the collection"
unnamed = m3 / "unnamed.csv"
unnamed.write_text("file,tag,\na.jpg,x,z\n")
s, _ = run_json("index", unnamed, collection=coll, check=1)
assert "column 3 has no name" in reasons(s).get(str(unnamed), ""), s["failures"]
trailing = m3 / "trailing.csv"
trailing.write_text("file,tag,\na.jpg,x,\n")
run("index", trailing, collection=coll, check=0)
res, _ = run_json("search", m3 / "a.jpg", "-k", 1, collection=coll, check=0)
assert res["results"][0]["metadata"] == {"tag": "x"}, res
print("duplicate and unnamed metadata columns refused, trailing empty column ignored: OK")

# 5. A symlink in the collection whose target was deleted is vanished, not a failure: reported,
#    pruned with --prune, exit 0. A dangling symlink not in the collection stays a failure.
coll = work / "c-link"
d5, targets = work / "d5", work / "targets"
d5.mkdir()
targets.mkdir()
shutil.copy2(dresses[1], d5 / "a.jpg")
shutil.copy2(dresses[2], targets / "t.jpg")
os.symlink(targets / "t.jpg", d5 / "link.jpg")
s, _ = run_json("index", d5, collection=coll, check=0)
assert s["added"] == 2, s
(targets / "t.jpg").unlink()
s, _ = run_json("index", d5, collection=coll, check=0)
assert s["failures"] == [] and [v["file"] for v in s["vanished"]] == [str(d5 / "link.jpg")], s
s, _ = run_json("index", d5, "--prune", collection=coll, check=0)
assert s["removed"] == 1 and s["count"] == 1 and s["failures"] == [], s
# Out of the collection now, the link left on disk is a broken symlink like any other: a failure
# (exit 3) until it is deleted or its target comes back.
s, _ = run_json("index", d5, "--prune", collection=coll, check=3)
assert s["vanished"] == [] and s["count"] == 1, s
assert "broken symlink" in reasons(s).get(str(d5 / "link.jpg"), ""), s["failures"]
(d5 / "link.jpg").unlink()
s, _ = run_json("index", d5, "--prune", collection=coll, check=0)
assert s["vanished"] == [] and s["failures"] == [] and s["count"] == 1, s
print("dangling symlink in the collection: vanished and pruned, exit 0: OK")

# 6. A manifest row's problem names its line when blank lines or quoted newlines come before it.
coll = work / "c-lines"
m6 = work / "m6"
m6.mkdir()
shutil.copy2(hats[1], m6 / "a.jpg")
b = m6 / "b.csv"
b.write_text('file,note\n\na.jpg,"two\nlines"\n\nmissing.jpg,x\n')
s, _ = run_json("index", b, collection=coll, check=3)
[(where, why)] = reasons(s).items()
assert where == f"{b} row 3 (line 6)" and why.endswith("missing.jpg: file not found"), (where, why)
print("manifest row problems name the line: OK")

# 7. An input folder that now holds no image file (an unmounted drive's mount point) keeps its
#    images: listed as unchecked with the cause, never pruned; exit as for a failed input.
coll = work / "c-drive"
drive = work / "drive"
copy_images(images("train", classes=["shorts"], per_class=3), drive)
run("index", drive, collection=coll, check=0)
shutil.move(drive / "shorts", work / "drive-away")
s, _ = run_json("index", drive, "--prune", collection=coll, check=1)  # nothing done
assert s["removed"] == 0 and s["vanished"] == [] and s["count"] == 3, s
assert [(u["file"], u["images"]) for u in s["unchecked"]] == [(str(drive), 3)], s
why = reasons(s).get(str(drive), "")
assert "holds no image files now" in why and f"lookalike remove {drive}" in why, s["failures"]
s, _ = run_json("index", drive, work / "p2", "--prune", collection=coll, check=3)
assert s["removed"] == 0 and s["added"] == 3 and s["count"] == 6, s
proc = run("index", drive, "--prune", collection=coll, check=1)
assert "an unmounted drive?" in proc.stderr, proc.stderr
assert f"{drive}: 3 indexed files" in proc.stdout, proc.stdout
shutil.move(work / "drive-away", drive / "shorts")
s, _ = run_json("index", drive, "--prune", collection=coll, check=0)
assert (s["unchanged"], s["removed"], s["count"]) == (3, 0, 6), s
out, _ = run_json("remove", drive, collection=coll, model=False, check=0)
assert out["removed"] == 3 and out["count"] == 3, out
print("empty input folder: its images kept as unchecked, not pruned: OK")

# 8. A NUL byte in a manifest's file cell: the row is left out (the system would read the name
#    only up to the NUL, and a folder index would then add a second entry).
coll = work / "c-nul"
m8 = work / "m8"
m8.mkdir()
shutil.copy2(dresses[0], m8 / "x.jpg")
shutil.copy2(dresses[1], m8 / "y.jpg")
n = m8 / "n.csv"
n.write_bytes(b"file,tag\nx.jpg\x00junk,a\ny.jpg,b\n")
s, _ = run_json("index", n, collection=coll, check=3)
assert "contains a NUL byte" in reasons(s).get(f"{n} row 2", ""), s["failures"]
assert s["added"] == 1 and all("\x00" not in p for p in committed_paths(coll)), s
s, _ = run_json("index", m8, collection=coll, check=0)
assert s["added"] == 1 and s["count"] == 2, s
print("NUL byte in a file cell: row left out: OK")

# 4. Metadata rewritten by a manifest is counted (metadata_updated, of unchanged), not only
#    "unchanged". Last: the count is printed by cli/commands.cpp.
coll = work / "c-meta"
m4 = work / "m4"
m4.mkdir()
shutil.copy2(hats[2], m4 / "a.jpg")
meta = m4 / "meta.csv"
meta.write_text("file,tag\na.jpg,red\n")
run("index", meta, collection=coll, check=0)
meta.write_text("file,tag\na.jpg,blue\n")
s, _ = run_json("index", meta, collection=coll, check=0)
res, _ = run_json("search", m4 / "a.jpg", "-k", 1, collection=coll, check=0)
assert res["results"][0]["metadata"] == {"tag": "blue"}, res
assert (s["unchanged"], s["embedded"], s.get("metadata_updated")) == (1, 0, 1), s
s, _ = run_json("index", meta, collection=coll, check=0)
assert (s["unchanged"], s["metadata_updated"]) == (1, 0), s
human = run("index", meta, collection=coll, check=0).stdout
assert "1 unchanged" in human, human
print("rewritten metadata counted: OK")
print("index defect checks passed")
