"""Regression tests, through the real binary, for a review of `index`'s ingestion (each section
fails on the binary before the fix): `index LIST.csv --prune` emptying a collection when the
manifest's files are gone (an unmounted drive), an indexed path that became a folder or a FIFO
never reported vanished, a re-indexed file that fails to decode keeping its old vector without
a word, unclear messages for common catalogue exports (header only, URLs, ';' or tab separated,
UTF-16, Windows paths), .jfif files skipped by folder walks, and identical files new in one run
each embedded; on clothing-small photos."""
import itertools
import os
import shutil

from harness import images, run, run_json, tempdir

work = tempdir("ingest-defects")
new_collections = itertools.count()


def reasons(summary):
    return {f["file"]: f["reason"] for f in summary["failures"]}


def copy_flat(files, dest):
    """Copies `files` into `dest` (no class subfolders); returns the copies, in order."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        shutil.copy2(f, dest / f.name)
        out.append(dest / f.name)
    return out


def search_top(coll, query, k=10):
    """`search QUERY --json`: [(id, path, score)], best first."""
    r, _ = run_json("search", query, "-k", k, collection=coll, check=0)
    return [(h["id"], h["path"], h["score"]) for h in r["results"]]


def index_new(*inputs, code):
    """`index` into a new collection; returns (stderr, the collection)."""
    coll = work / f"c-new-{next(new_collections)}"
    proc = run("index", *inputs, collection=coll, check=code)
    return proc.stderr, coll


# 1. A manifest whose files are all gone (the photos drive unmounted, an empty mount point in
#    its place): `--prune` refuses, like an empty input folder, and removes nothing (it removed
#    every image, "4 removed, 4 failed", exit 3). Each failed row keeps its image's entry.
m1 = work / "m1"
shirts = copy_flat(images("test", classes=["shirt"], per_class=4), m1 / "photos")
manifest = m1 / "list.csv"
manifest.write_text("file,cat\n" + "".join(f"photos/{p.name},shirt\n" for p in shirts))
coll = work / "c-manifest"
run("index", manifest, collection=coll, check=0)
ids = {path: i for i, path, _ in search_top(coll, shirts[0])}
assert set(ids) == {str(p) for p in shirts}, ids
(m1 / "photos").rename(m1 / "photos.off")
(m1 / "photos").mkdir()
s, proc = run_json("index", manifest, "--prune", collection=coll, check=1)
assert (s["removed"], s["count"], s["vanished"]) == (0, 4, []), s
got = reasons(s)
assert got[str(manifest)] == (
    f"none of its 4 rows could be read; the 4 indexed images under {m1} are kept (an unmounted "
    "drive?). Fix the paths, or remove images with `lookalike remove PATH...`"), got
for row, p in enumerate(shirts, 2):
    assert got[f"{manifest} row {row}"] == (
        f"{p}: file not found; its indexed entry (id {ids[str(p)]}) is kept, never pruned, while "
        "a manifest row lists it"), got
assert [(u["file"], u["images"]) for u in s["unchecked"]] == [(str(manifest), 4)], s
assert f"lookalike: error: {manifest}: none of its 4 rows could be read" in proc.stderr
# One file deleted while the others are back: its row fails, the entry stays (the row still
# lists it), nothing counts as both failed and removed.
shutil.rmtree(m1 / "photos")
(m1 / "photos.off").rename(m1 / "photos")
shirts[1].unlink()
s, _ = run_json("index", manifest, "--prune", collection=coll, check=3)
assert (s["unchanged"], s["removed"], s["count"], s["vanished"]) == (3, 0, 4, []), s
assert list(reasons(s)) == [f"{manifest} row 3"], s["failures"]
assert search_top(coll, shirts[0])[0][1] == str(shirts[0])
print("manifest --prune with its files gone: refused, exit 1, nothing removed; rows keep "
      "their entries")

# 2. An indexed path that is now a folder or a FIFO: vanished (listed, then pruned), not kept
#    with its stale vector for good.
d2 = work / "dd"
a, b, c = copy_flat(images("test", classes=["hat"], per_class=3), d2)
coll = work / "c-dir"
run("index", d2, collection=coll, check=0)
a.unlink()
a.mkdir()
c.unlink()
os.mkfifo(c)
s, _ = run_json("index", d2, collection=coll, check=0)
assert sorted(v["file"] for v in s["vanished"]) == sorted([str(a), str(c)]), s
assert (s["removed"], s["count"], s["failures"]) == (0, 3, []), s
s, _ = run_json("index", d2, "--prune", collection=coll, check=0)
assert (s["removed"], s["count"], s["failures"]) == (2, 1, []), s
assert [path for _, path, _ in search_top(coll, b)] == [str(b)]
print("indexed path now a folder or a FIFO: vanished, pruned")

# 3. A re-indexed file whose new content fails to decode (a half-written copy): the failure says
#    the earlier entry stays searchable with its earlier vector, naming its id.
d3 = work / "trunc"
x, y = copy_flat(images("test", classes=["dress"], per_class=2), d3)
original = work / "x-original.jpg"
shutil.copy2(x, original)
coll = work / "c-trunc"
run("index", d3, collection=coll, check=0)
x_id = next(i for i, path, _ in search_top(coll, x) if path == str(x))
x.write_bytes(original.read_bytes()[:3000])
s, proc = run_json("index", d3, collection=coll, check=3)
reason = reasons(s)[str(x)]
assert reason.startswith("truncated file ("), reason
assert reason.endswith(f"; its earlier entry (id {x_id}) stays searchable with the vector of "
                       "its earlier content"), reason
assert f"{x}: truncated file (" in proc.stderr and f"(id {x_id}) stays searchable" in proc.stderr
top_id, top_path, top_score = search_top(coll, original)[0]
assert (top_id, top_path) == (x_id, str(x)) and top_score > 0.999, (top_id, top_path, top_score)
print("re-indexed file that fails to decode: the failure says its old entry stays searchable")

# Catalogue exports (sections 4 to 8): each message says what is wrong with the manifest.
d4 = work / "exports"
shoes = copy_flat(images("test", classes=["shoes"], per_class=3), d4 / "photos")

# 4. A header-only export: "no rows after the header", not "no image file found in the inputs".
header_only = d4 / "header-only.csv"
header_only.write_text("file,label\n")
err, coll = index_new(header_only, code=1)
assert (f"lookalike: error: {header_only}: no rows after the header: the manifest lists no "
        "image") in err, err
assert "no image file found" not in err and not coll.exists(), err
print("header-only manifest: no rows after the header")

# 5. URLs in the file column: refused by name (they were mangled into "https:/example.com/a.jpg:
#    file not found"); a local file URL is its (%-decoded) path.
urls = d4 / "urls.csv"
spaced = d4 / "with space.jpg"
shutil.copy2(shoes[0], spaced)
urls.write_text("file,label\nhttps://example.com/a.jpg,x\n"
                f"file://{str(spaced).replace(' ', '%20')},y\nfile://otherhost/a.jpg,z\n")
s, _ = run_json("index", urls, collection=work / "c-urls", check=3)
assert (s["added"], s["count"]) == (1, 1), s
assert reasons(s) == {
    f"{urls} row 2": "https://example.com/a.jpg: a URL, and lookalike indexes local files only: "
                     "download the images and list their paths",
    f"{urls} row 4": "file://otherhost/a.jpg: a file URL of another host ('otherhost'); only a "
                     "local one (file:///path) names a file here",
}, s["failures"]
assert search_top(work / "c-urls", spaced)[0][1] == str(spaced)
print("URLs: refused by name; file:///path read as that path")

# 6. A ';'- or tab-separated file named .csv: the header's separator is named.
looked_for = "looked for file, path, image, filename, image_path, filepath"
for name, sep, said in [("semicolon.csv", ";", "';'"), ("tabs.csv", "\t", "tabs")]:
    f = d4 / name
    f.write_text(f"file{sep}label\nphotos/{shoes[0].name}{sep}shoes\n")
    err, _ = index_new(f, code=1)
    assert (f"{f}: no file column in the header ({looked_for}): the header looks separated by "
            f"{said}, and lookalike reads comma-separated CSV: export the file with commas as "
            "separators") in err, err
print("';' or tab separated manifest: the separator is named")

# 7. A UTF-16 export (Excel's "Unicode text"): named as UTF-16, not "not valid UTF-8".
utf16 = d4 / "utf16.csv"
utf16.write_text(f"file,label\nphotos/{shoes[0].name},shoes\n", encoding="utf-16")
assert utf16.read_bytes()[:2] == b"\xff\xfe"
err, _ = index_new(utf16, code=1)
assert (f"{utf16}: the file is UTF-16 (little-endian, byte order mark FF FE); lookalike reads "
        "UTF-8 CSV: save it as UTF-8 (in Excel: \"CSV UTF-8\")") in err, err
print("UTF-16 manifest: named, with the fix")

# 8. Windows separators ("photos\\s0.jpg"): "file not found" with the '/' path that exists.
windows = d4 / "windows.csv"
windows.write_text(f"file,label\nphotos\\{shoes[1].name},shoes\nphotos/{shoes[2].name},shoes\n")
s, _ = run_json("index", windows, collection=work / "c-windows", check=3)
assert reasons(s) == {
    f"{windows} row 2": f"{d4}/photos\\{shoes[1].name}: file not found (the path holds '\\', "
                        f"which is no folder separator here: with '/' it names {shoes[1]}, which "
                        "exists; write the paths with '/')"}, s["failures"]
print("'\\' in a manifest path: the '/' form that exists is named")

# 9. .jfif (and .jpe) files are images to a folder walk, as they are named directly.
d9 = work / "jfif"
coats = images("test", classes=["outwear"], per_class=3)
d9.mkdir()
shutil.copy2(coats[0], d9 / "a.jfif")
shutil.copy2(coats[1], d9 / "b.JPE")
shutil.copy2(coats[2], d9 / "c.jpg")
s, _ = run_json("index", d9, collection=work / "c-jfif", check=0)
assert (s["added"], s["count"], s["failures"]) == (3, 3, []), s
assert search_top(work / "c-jfif", d9 / "a.jfif")[0][1] == str(d9 / "a.jfif")
print(".jfif and .jpe files: found by the folder walk, indexed")

# 10. Identical files new in one run: one is embedded, the others reuse its vector (each was
#     embedded: "embedded 3, reused_embeddings 0"), also when they land in other batches, before
#     or after it (--batch-size 1, two decode threads).
d10 = work / "dups"
p, other = copy_flat(images("test", classes=["skirt"], per_class=2), d10)
shutil.copy2(p, d10 / "dupA.jpg")
shutil.copy2(p, d10 / "dupB.jpg")
same = sorted([str(p), str(d10 / "dupA.jpg"), str(d10 / "dupB.jpg")])
for name, extra in [("c-dups", []), ("c-dups-b1", ["--batch-size", 1, "--decode-threads", 2])]:
    s, _ = run_json("index", d10, *extra, collection=work / name, check=0)
    assert (s["added"], s["embedded"], s["reused_embeddings"], s["count"]) == (4, 2, 2, 4), s
    top = search_top(work / name, p, k=4)
    assert sorted(path for _, path, _ in top[:3]) == same, top
    assert all(score > 0.9999 for _, _, score in top[:3]) and top[3][1] == str(other), top
    info, _ = run_json("info", collection=work / name, model=False, check=0)
    assert info["count"] == 4, info
print("identical files new in one run: embedded once, the vector reused")
