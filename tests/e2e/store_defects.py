"""Defects a review found in the store, through the real binary: catalog.db alone holds every
commit after a clean close (the WAL is checkpointed), a config-less catalog.db left by an
interrupted creation is replaced by `index`, a stored vector of the wrong size is a corrupt
vector (listed, left out, repaired or removed) rather than the end of every command, a folder
that cannot be read says so, `remove /` removes everything, and an `index` run that stores
nothing leaves no collection behind."""
import os
import shutil
import sqlite3
import subprocess
from harness import NOBODY, BIN, MODEL, copy_images, fail, images, run, run_json, tempdir

work = tempdir("store-defects")
os.chmod(work, 0o755)  # mkdtemp makes it 0700; the unprivileged run below needs to enter it
photos = copy_images(images("train", classes=["shoes"], per_class=10), work / "photos")
assert len(photos) == 10, photos


def count(coll):
    info, _ = run_json("info", collection=coll, model=False, check=0)
    return info["count"]


def immutable_count(db):
    """Rows of catalog.db read alone: immutable=1 makes SQLite ignore any -wal beside it."""
    con = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    try:
        return con.execute("SELECT count(*) FROM images").fetchone()[0]
    finally:
        con.close()


# 1. A clean close checkpoints the WAL: catalog.db alone is the collection (a backup or a copy of
#    it is complete), the -wal is empty or gone.
coll = work / "c-wal"
run("index", work / "photos", collection=coll, check=0)
wal = coll / "catalog.db-wal"
if wal.exists() and wal.stat().st_size:
    fail(f"catalog.db-wal holds {wal.stat().st_size} bytes after `index` ended")
n = immutable_count(coll / "catalog.db")
if n != 10:
    fail(f"catalog.db alone holds {n} images after indexing 10")
run("search", photos[0], collection=coll, check=0)  # a reader leaves it so too
assert immutable_count(coll / "catalog.db") == 10
copy = work / "c-wal-copy"
copy.mkdir()
shutil.copy2(coll / "catalog.db", copy / "catalog.db")
assert count(copy) == 10
res, _ = run_json("search", photos[3], "-k", "1", collection=copy, check=0)
assert res["results"][0]["path"] == str(photos[3]), res
print("clean close: catalog.db alone holds all 10 images: OK")

# 2. A catalog.db without config (an interrupted creation by an older version) holding no images
#    is no collection: read commands say so and how to fix it, `index` replaces it (it failed
#    the same way forever, its message pointing at itself).
coll = work / "c-configless"
run("index", *photos[:2], collection=coll, check=0)
con = sqlite3.connect(coll / "catalog.db")
con.execute("DELETE FROM meta WHERE key IN ('config', 'search_defaults')")
con.execute("DELETE FROM embeddings")
con.execute("DELETE FROM metadata_terms")
con.execute("DELETE FROM images")
con.commit()
con.close()
for f in coll.glob("index-*.faiss"):
    f.unlink()
for args, model in ((("search", photos[0]), True), (("info",), False)):
    proc = run(*args, collection=coll, model=model, check=1)
    if "creation was interrupted" not in proc.stderr or "lookalike index" not in proc.stderr:
        fail(f"{args[0]} on a config-less catalog: {proc.stderr}")
s, _ = run_json("index", work / "photos", "--metric", "l2", collection=coll, check=0)
assert s["added"] == 10 and s["count"] == 10, s
info, _ = run_json("info", collection=coll, model=False, check=0)
assert info["metric"] == "l2", info
print("config-less catalog.db: replaced by index, explained by search and info: OK")

# 3. A stored vector of the wrong size (5116 bytes for 1280 floats) is a corrupt vector: every
#    command still works, info lists it, search leaves it out, the next index re-embeds it, and
#    remove --id removes another one.
coll = work / "c-short"
run("index", work / "photos", collection=coll, check=0)
db = coll / "catalog.db"


def truncate_blob(path):
    con = sqlite3.connect(db)
    (image_id,) = con.execute("SELECT id FROM images WHERE path = ?", (str(path),)).fetchone()
    con.execute("UPDATE embeddings SET vector = substr(vector, 1, length(vector) - 4) "
                "WHERE image_id = ?", (image_id,))
    con.commit()
    (size,) = con.execute("SELECT length(vector) FROM embeddings WHERE image_id = ?",
                          (image_id,)).fetchone()
    con.close()
    assert size == 5116, size
    for f in coll.glob("index-*.faiss"):  # the next open rebuilds the index from the catalog
        f.unlink()
    return image_id


bad = truncate_blob(photos[4])
info, proc = run_json("info", collection=coll, model=False)
if proc.returncode != 0:
    fail(f"info with a 5116-byte vector: exit {proc.returncode}: {proc.stderr}")
corrupt = {c["id"]: c["reason"] for c in info["corrupt_vectors"]}
assert list(corrupt) == [bad] and "5116 bytes" in corrupt[bad], info["corrupt_vectors"]
res, proc = run_json("search", photos[4], "-k", "10", collection=coll)
if proc.returncode != 0:
    fail(f"search with a 5116-byte vector: exit {proc.returncode}: {proc.stderr}")
assert len(res["results"]) == 9 and bad not in [r["id"] for r in res["results"]], res
s, proc = run_json("index", work / "photos", collection=coll)
if proc.returncode != 0:
    fail(f"index with a 5116-byte vector: exit {proc.returncode}: {proc.stderr}")
assert s["updated"] + s["added"] == 1 and s["count"] == 10, s
info, _ = run_json("info", collection=coll, model=False, check=0)
assert info["corrupt_vectors"] == [], info["corrupt_vectors"]
res, _ = run_json("search", photos[4], "-k", "1", collection=coll, check=0)
assert res["results"][0]["id"] == bad and res["results"][0]["score"] > 0.9999, res
other = truncate_blob(photos[6])
out, proc = run_json("remove", "--id", other, collection=coll, model=False)
if proc.returncode != 0:
    fail(f"remove --id of a 5116-byte vector: exit {proc.returncode}: {proc.stderr}")
assert out["removed_ids"] == [other] and out["count"] == 9, out
info, _ = run_json("info", collection=coll, model=False, check=0)
assert info["count"] == 9 and info["corrupt_vectors"] == [], info
print("wrong-size vector: listed, left out, re-embedded by index, removable: OK")

# 4. A folder that exists but cannot be read is not "no collection here": the system's words, as
#    unprivileged user `nobody` (root reads anything).
if NOBODY is None:
    print("note: not root (or no setpriv): skipping the unreadable-folder case")
else:
    coll = work / "c-private"
    run("index", *photos[:2], collection=coll, check=0)
    os.chmod(coll, 0o700)  # owned by root
    for args in (("search", photos[0]), ("info",), ("index", photos[2])):
        cmd = [*NOBODY, BIN, *map(str, args), "--collection", str(coll), "--model", MODEL]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        want = f"{coll}: cannot read the collection: Permission denied"
        if proc.returncode != 1 or want not in proc.stderr or "no collection here" in proc.stderr:
            fail(f"{' '.join(cmd)}: exit {proc.returncode}, expected 1 and '{want}'\n"
                 f"{proc.stderr}")
    os.chmod(coll, 0o755)
    assert count(coll) == 2
    print("unreadable collection folder: 'Permission denied', not 'no collection': OK")

# 5. `remove /` removes every image (its prefix was "//", which matches nothing).
coll = work / "c-root"
run("index", work / "photos", collection=coll, check=0)
out, proc = run_json("remove", "/", collection=coll, model=False)
if proc.returncode != 0 or out["removed"] != 10 or out["count"] != 0 or out["not_found"]:
    fail(f"remove /: exit {proc.returncode}: {out}\n{proc.stderr}")
assert count(coll) == 0
print("remove /: every image removed: OK")

# 6. An index run that stores nothing creates no collection: not in a new folder (which is not
#    left behind either), nor in a folder that was there (whose own files stay), so a later run
#    may pick another metric.
readme = work / "readme.txt"
readme.write_text("not an image\n")
coll = work / "c-new" / "nested"
proc = run("index", readme, "--metric", "l2", collection=coll, check=1)
if (work / "c-new").exists():
    fail(f"index of no image left {sorted(p.name for p in (work / 'c-new').rglob('*'))}")
s, _ = run_json("index", work / "photos", "--metric", "cosine", collection=coll, check=0)
assert s["count"] == 10, s
coll = work / "c-kept"
coll.mkdir()
(coll / "notes.txt").write_text("mine")
proc = run("index", readme, "--metric", "l2", collection=coll, check=1)
left = sorted(p.name for p in coll.iterdir())
if left != ["notes.txt"]:
    fail(f"index of no image left {left} in a folder that held notes.txt only")
assert "no collection was created" in proc.stdout, proc.stdout
s, _ = run_json("index", work / "photos", "--metric", "cosine", collection=coll, check=0)
assert s["count"] == 10 and (coll / "notes.txt").read_text() == "mine", s
print("index that stores nothing: no collection, a later run picks its metric: OK")
