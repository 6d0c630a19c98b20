"""Defects a second review found in the store, through the real binary on real photos: a writer
never deletes an upload file that the catalog does not list (after a catalog restored from a
backup those files are the only copy: they are moved to uploads/orphaned/), a missing or empty
catalog.db beside the rest of a collection is refused rather than replaced, a stored vector
damaged after the index cache was written is found, listed and re-embedded (and the cache that
leaves it out is kept), a cleanly closed collection on read-only storage is read, a damaged
catalog says so and how to recover it, and a creation that fails for want of room leaves no
folder behind."""
import json
import os
import shutil
import sqlite3
import subprocess
from harness import copy_images, fail, images, run, run_json, tempdir
from server_client import Server

work = tempdir("store-defects2")
hats = copy_images(images("train", classes=["hat"], per_class=6), work / "hats")
dresses = images("train", classes=["dress"], per_class=2)
shoes = images("train", classes=["shoes"], per_class=3)
IS_ROOT = os.geteuid() == 0


def tree(folder):
    """Every file under `folder` with its bytes: what a command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def upload(srv, photo):
    status, out = srv.multipart("/v1/images", {"image": (photo.name, photo.read_bytes())})
    assert status in (200, 201), (status, out)
    return out


# 1. A catalog restored from a backup older than some uploads lists none of them: the next
#    writer moves their files to uploads/orphaned/ and says so, never deletes them (they are the
#    only copy of those photos).
coll = work / "c-restored"
run("index", work / "hats", collection=coll, check=0)
srv = Server(coll)
for photo in dresses:
    upload(srv, photo)
backup = work / "backup.db"
src = sqlite3.connect(coll / "catalog.db")
dst = sqlite3.connect(backup)
src.backup(dst)  # SQLite's online backup, what `sqlite3 catalog.db ".backup B.db"` runs
dst.close()
src.close()
for photo in shoes:
    upload(srv, photo)
srv.stop()
uploads = coll / "uploads"
assert len(list(uploads.glob("*.jpeg")) + list(uploads.glob("*.jpg"))) == 5, list(uploads.iterdir())
shutil.copy(backup, coll / "catalog.db")  # the restore
proc = run("index", work / "hats", collection=coll)
if proc.returncode != 0:
    fail(f"index after a restore: exit {proc.returncode}: {proc.stderr}")
orphaned = uploads / "orphaned"
kept = sorted(p.read_bytes() for p in orphaned.glob("*")) if orphaned.is_dir() else []
if kept != sorted(p.read_bytes() for p in shoes):
    fail(f"the 3 uploads the restored catalog does not list are not in {orphaned}: "
         f"{sorted(p.name for p in uploads.rglob('*'))}\n{proc.stderr}")
listed = sorted(p.read_bytes() for p in uploads.iterdir() if p.is_file())
assert listed == sorted(p.read_bytes() for p in dresses), "the 2 listed uploads must stay"
want = (f"{uploads}: 3 upload files that no catalog row lists were moved to {orphaned} "
        "(a catalog restored from a backup older than them")
if want not in proc.stderr or "upload them again, or restore the catalog" not in proc.stderr:
    fail(f"index after a restore does not say where the files went: {proc.stderr}")
run("index", work / "hats", collection=coll, check=0)  # the quarantine is not swept again
assert sorted(p.read_bytes() for p in orphaned.glob("*")) == kept
info, _ = run_json("info", collection=coll, model=False, check=0)
assert info["count"] == 8, info
print("catalog restored from a backup: unlisted uploads moved to uploads/orphaned, kept: OK")

# 2. A catalog.db that is missing or empty beside uploads/ and an index cache was lost: every
#    command refuses, says so and what to do, and changes nothing (`index` used to start a new
#    catalog, and its writer open then swept the uploads).
for damage in ("missing", "empty (0 bytes)"):
    lost = work / f"c-lost-{damage.split()[0]}"
    shutil.copytree(coll, lost)
    if damage == "missing":
        (lost / "catalog.db").unlink()
    else:
        os.truncate(lost / "catalog.db", 0)
    before = tree(lost)
    want = (f"{lost / 'catalog.db'}: the catalog is {damage} while the collection's other files "
            "are there (uploads/ with 5 uploaded images, index-")
    for args, model in ((("info",), False), (("search", hats[0]), True),
                        (("index", work / "hats"), True)):
        proc = run(*args, collection=lost, model=model)
        if (proc.returncode != 1 or want not in proc.stderr
                or "it was lost or damaged. Restore catalog.db from a backup" not in proc.stderr):
            fail(f"{args[0]} with the catalog {damage}: exit {proc.returncode}, expected 1 and "
                 f"'{want}'\n{proc.stderr}")
        if tree(lost) != before:
            fail(f"{args[0]} with the catalog {damage} changed the folder")
print("catalog.db missing or empty beside the collection's files: refused, nothing changed: OK")

# 3. A stored vector damaged after the index cache was written: info lists it, index re-embeds
#    it (search --id works again), and once the cache leaves a damaged vector out, later
#    commands keep that cache instead of rebuilding the index every time.
coll = work / "c-damaged"
run("index", work / "hats", collection=coll, check=0)
db = coll / "catalog.db"


def truncate(image_id):
    con = sqlite3.connect(db)
    con.execute("UPDATE embeddings SET vector = substr(vector, 1, 5116) WHERE image_id = ?",
                (image_id,))
    con.commit()
    con.close()


truncate(1)
info, proc = run_json("info", collection=coll, model=False, check=0)
want = [{"id": 1, "reason": "embedding has 5116 bytes, not 5120 (1280 floats)"}]
if info["corrupt_vectors"] != want:
    fail(f"info with a valid cache and a damaged vector: corrupt_vectors "
         f"{info['corrupt_vectors']}, expected {want}")
s, proc = run_json("index", work / "hats", collection=coll, check=0)
if s["updated"] + s["added"] != 1 or s["count"] != 6:
    fail(f"index did not re-embed the damaged vector: {s}\n{proc.stderr}")
res, proc = run_json("search", "--id", "1", "-k", "1", collection=coll)
if proc.returncode != 0 or res["query_id"] != 1 or len(res["results"]) != 1:
    fail(f"search --id 1 after index: exit {proc.returncode}: {proc.stdout}{proc.stderr}")
con = sqlite3.connect(db)
(path_1,) = con.execute("SELECT path FROM images WHERE id = 1").fetchone()
con.close()
res, _ = run_json("search", path_1, "-k", "1", collection=coll, check=0)
assert res["results"][0]["id"] == 1 and res["results"][0]["score"] > 0.9999, res
info, _ = run_json("info", collection=coll, model=False, check=0)
assert info["corrupt_vectors"] == [], info["corrupt_vectors"]
truncate(2)
for f in coll.glob("index-*.faiss"):
    f.unlink()
run("remove", "--id", "3", collection=coll, model=False, check=0)  # rebuilds and saves the cache
for args, model, code in ((("search", hats[0]), True, 0), (("info",), False, 0),
                          (("remove", "--id", "999"), False, 1), (("search", hats[0]), True, 0)):
    proc = run(*args, collection=coll, model=model, check=code)
    # A rebuild logs "rebuilding" (a cache refused) or the damaged vector "left out of the
    # index" (read while building); a kept cache logs neither.
    if "rebuilding" in proc.stderr or "left out of the index" in proc.stderr:
        fail(f"{args[0]} rebuilt the index although its cache leaves out the damaged vector "
             f"only:\n{proc.stderr}")
info, _ = run_json("info", collection=coll, model=False, check=0)
assert [c["id"] for c in info["corrupt_vectors"]] == [2] and info["count"] == 5, info
print("vector damaged under a valid cache: listed, re-embedded, the cache then kept: OK")

# 4. Read-only storage: a cleanly closed collection is read (info, search) and left as it was;
#    one whose -wal holds commits says why it cannot be read there.
if not IS_ROOT:
    print("note: not root: skipping the read-only mount case")
else:
    mnt = work / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    try:
        for name in ("clean", "unclean"):
            run("index", *hats[:3], collection=mnt / name, check=0)
        (mnt / "unclean" / "catalog.db-wal").write_bytes(b"w" * 4096)  # as a kill leaves it
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        before = tree(mnt / "clean")
        proc = run("info", "--json", collection=mnt / "clean", model=False)
        if proc.returncode != 0 or json.loads(proc.stdout)["count"] != 3:
            fail(f"info on read-only storage: exit {proc.returncode}: {proc.stderr}")
        proc = run("search", hats[1], "-k", "1", "--json", collection=mnt / "clean")
        if proc.returncode != 0 or json.loads(proc.stdout)["results"][0]["path"] != str(hats[1]):
            fail(f"search on read-only storage: exit {proc.returncode}: {proc.stderr}")
        assert tree(mnt / "clean") == before
        proc = run("info", collection=mnt / "unclean", model=False, check=1)
        if "its folder is read-only and catalog.db-wal holds commits" not in proc.stderr:
            fail(f"info on read-only storage with a -wal: {proc.stderr}")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    print("read-only storage: a clean collection is read, an unclean one says why not: OK")

# 5. A damaged catalog (a zeroed header, a truncated file) says it is damaged and how to recover.
advice = "Restore a backup, or recover the rows with `sqlite3 catalog.db .recover`"
for damage in ("zeroed", "truncated"):
    coll = work / f"c-{damage}"
    run("index", work / "hats", collection=coll, check=0)
    db = coll / "catalog.db"
    if damage == "zeroed":
        with open(db, "r+b") as f:
            f.write(b"\0" * 100)
    else:
        os.truncate(db, db.stat().st_size // 2)
    for args, model in ((("info",), False), (("search", hats[0]), True)):
        proc = run(*args, collection=coll, model=model)
        if proc.returncode == 0 or "damaged" not in proc.stderr or advice not in proc.stderr:
            fail(f"{args[0]} on a {damage} catalog: exit {proc.returncode}: {proc.stderr}")
print("zeroed or truncated catalog: 'damaged' and how to recover: OK")

# 6. A creation that fails for want of room leaves no folder and no lock file behind.
if not IS_ROOT:
    print("note: not root: skipping the full-disk case")
else:
    mnt = work / "full"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        with open(mnt / "filler", "wb") as f:
            f.write(b"f" * shutil.disk_usage(mnt).free)
        proc = run("index", work / "hats", collection=mnt / "new" / "c")
        if proc.returncode == 0:
            fail("index on a full disk succeeded")
        left = sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*"))
        if left != ["filler"]:
            fail(f"index that failed on a full disk left {left}\n{proc.stderr}")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    print("creation on a full disk: fails, leaves nothing behind: OK")
