"""`lookalike serve` against what a third review (2026-12-06) found, each through the real server
process on clothing-small photos:
- a moved or copied collection lost its uploads: the records hold the absolute path of the
  original folder, so the moved one answered 404 and `reembed` left the uploads out, and a copy
  served the original's files; an upload's file is now found in its own collection's uploads/;
- a server started on a folder with no collection never saw the one another process (`index`)
  created there, and an upload meanwhile got 500 internal: now 503 collection_locked with
  Retry-After, and reads find the collection once it is there;
- a damaged stored upload (truncated, emptied, deleted) was served as if intact and uploading the
  same bytes did not repair it: now 409 stored_file_damaged, and the same bytes rewrite it;
- an upload on a full disk got 500 internal: now 507 insufficient_storage."""
import os
import shutil
import subprocess
import time
from pathlib import Path

from harness import BIN, DATASET, MODEL, images, run_json, tempdir
from server_client import Server, encode_multipart, error_of, expect_error

work = tempdir("server-defects3")


def upload(srv, photo, expect):
    return srv.multipart("/v1/images", {"image": (photo.name, photo.read_bytes())}, expect=expect)[1]


def get_file(srv, image_id):
    status, _, data = srv.request("GET", f"/v1/images/{image_id}/file")
    return status, data


# ---- a moved collection finds its uploads; a copy reads its own ------------------------------
orig = work / "coll"
gallery = images("train", classes=["shirt"], per_class=3)
run_json("index", *gallery, collection=orig, check=0)
mine = images("test", classes=["dress", "shoes"], per_class=1)
srv = Server(orig)
records = [upload(srv, p, 201)["image"] for p in mine]
ids, names = [r["id"] for r in records], [Path(r["path"]).name for r in records]
srv.stop()
moved = work / "coll-moved"
orig.rename(moved)
assert len(list((moved / "uploads").iterdir())) == len(mine)

srv = Server(moved)
for image_id, photo in zip(ids, mine):
    status, data = get_file(srv, image_id)
    assert status == 200 and data == photo.read_bytes(), (image_id, status, data[:300])
    status, headers, _ = srv.request("GET", f"/v1/images/{image_id}/thumbnail?size=64")
    assert status == 200 and headers["Content-Type"] == "image/jpeg", (status, headers)
print(f"moved collection: {len(ids)} uploads served from its own uploads/ (file, thumbnail)")

# A delete on the moved collection removes the file from its own uploads/ at once.
srv.json("DELETE", f"/v1/images/{ids[1]}")
assert not (moved / "uploads" / names[1]).exists(), "the deleted upload's file stayed"
srv.stop()
print("moved collection: DELETE removed the upload's file from its uploads/")

# reembed of the moved collection carries the remaining upload over.
out = work / "coll-reembedded"
summary, proc = run_json("reembed", "--out", out, collection=moved, check=0)
assert sorted(f.name for f in (out / "uploads").iterdir()) == [names[0]], list(out.iterdir())
assert not summary.get("failed"), summary
srv = Server(out)
status, data = get_file(srv, ids[0])
assert status == 200 and data == mine[0].read_bytes(), (status, data[:300])
srv.stop()
print(f"reembed of the moved collection: {summary['images']} images, the upload copied and served")

# A copy whose original exists again serves its own file, not the original's.
shutil.copytree(moved, orig)
other = images("test", classes=["hat"], per_class=1)[0].read_bytes()
(orig / "uploads" / names[0]).write_bytes(other)  # the original's file now differs
srv = Server(moved)
status, data = get_file(srv, ids[0])
assert status == 200 and data == mine[0].read_bytes(), (status, len(data))
srv.stop()
shutil.rmtree(orig)
print("copy: served from its own uploads/ while the original folder holds other bytes")

# ---- another process creates the collection: the server sees it ------------------------------
fresh = work / "fresh"
srv = Server(fresh)
hats = sorted((DATASET / "train" / "hat").glob("*.jpg"))
indexer = subprocess.Popen([BIN, "--collection", str(fresh), "--model", MODEL, "index",
                            str(DATASET / "train" / "hat"), "--batch-size", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
deadline = time.time() + 60
while not (fresh / "catalog.db").exists():
    assert indexer.poll() is None and time.time() < deadline, indexer.communicate()
    time.sleep(0.05)
time.sleep(0.3)
dress = images("train", classes=["dress"], per_class=1)[0]
body, ctype = encode_multipart({"image": (dress.name, dress.read_bytes())})
err, headers = expect_error(srv, 503, "collection_locked", "POST", "/v1/images", body,
                            {"Content-Type": ctype})
assert indexer.poll() is None, "index finished before the upload: the case was not exercised"
assert headers.get("Retry-After") == "5", headers
assert "another lookalike process" in err["message"] and str(fresh) not in err["message"], err
print(f"upload while another process indexes: 503 {err['code']}, Retry-After 5: {err['message']}")
assert indexer.wait(timeout=600) == 0, indexer.stderr.read()
stats, _ = srv.json("GET", "/v1/stats")
assert stats["images"] == len(hats) and stats["generation"] > 0, (stats["images"], len(hats))
res, _ = srv.json("POST", "/v1/search", {"id": 1, "k": 3})
assert res["query"]["id"] == 1 and len(res["results"]) == 3, res
listed, _ = srv.json("GET", "/v1/images?limit=1000")
assert len(listed["images"]) == len(hats), len(listed["images"])
added = upload(srv, dress, 201)
assert added["image"]["id"] == len(hats) + 1, added["image"]["id"]
srv.stop()
print(f"after the index run: stats {stats['images']} images, search by id 1, list, upload 201")

# ---- a damaged stored upload: 409, and the same bytes repair it ------------------------------
dam = work / "damaged"
srv = Server(dam)
photo = images("test", classes=["skirt"], per_class=1)[0]
want = photo.read_bytes()
rec = upload(srv, photo, 201)
image_id, stored = rec["image"]["id"], Path(rec["image"]["path"])
assert stored.stat().st_size == len(want) > 5000


def damaged(cause):
    for path in (f"/v1/images/{image_id}/file", f"/v1/images/{image_id}/thumbnail?size=200"):
        err, _ = expect_error(srv, 409, "stored_file_damaged", "GET", path)
        assert err["message"] == (f"image {image_id}: its stored upload {stored.name} is damaged "
                                  f"({cause}); uploading the same image again repairs it"), err
        assert str(dam) not in err["message"], err


def repaired():
    res = upload(srv, photo, 200)
    assert res["created"] is False and res["repaired"] is True, res
    assert res["image"]["id"] == image_id and stored.read_bytes() == want
    status, data = get_file(srv, image_id)
    assert status == 200 and data == want, (status, len(data))


with open(stored, "r+b") as f:
    f.truncate(5000)
damaged(f"5000 bytes where the record says {len(want)}")
repaired()
stored.write_bytes(b"")
damaged(f"0 bytes where the record says {len(want)}")
repaired()
stored.unlink()
damaged("missing")
repaired()
status, headers, _ = srv.request("GET", f"/v1/images/{image_id}/thumbnail?size=200")
assert status == 200 and headers["Content-Type"] == "image/jpeg", status
again = upload(srv, photo, 200)  # intact: nothing to repair
assert again["created"] is False and again["repaired"] is False, again
print("damaged upload (truncated, empty, deleted): 409 stored_file_damaged; re-upload repaired")

doc, _ = srv.json("GET", "/openapi.json")
assert "409" in doc["paths"]["/v1/images/{id}/file"]["get"]["responses"]
assert "409" in doc["paths"]["/v1/images/{id}/thumbnail"]["get"]["responses"]
post = doc["paths"]["/v1/images"]["post"]["responses"]
assert "507" in post and "collection_locked" in post["503"]["description"], sorted(post)
srv.stop()
print("OpenAPI lists 409 (file, thumbnail), 503 collection_locked and 507 (upload)")

# ---- a full disk: 507 insufficient_storage ---------------------------------------------------
disk = work / "small-disk"
disk.mkdir()
if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs",
                                        str(disk)], capture_output=True).returncode != 0:
    print("full disk: skipped (mounting a tmpfs needs root)")
else:
    srv = None
    try:
        coll = disk / "coll"
        srv = Server(coll)
        first, second = images("test", classes=["shorts", "pants"], per_class=1)
        upload(srv, first, 201)
        count = srv.json("GET", "/v1/stats")[0]["images"]
        filler = disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        assert os.statvfs(disk).f_bavail == 0, "the disk did not fill"
        body, ctype = encode_multipart({"image": (second.name, second.read_bytes())})
        err, _ = expect_error(srv, 507, "insufficient_storage", "POST", "/v1/images", body,
                              {"Content-Type": ctype})
        assert "ENOSPC" in err["message"] and str(disk) not in err["message"], err
        assert srv.json("GET", "/v1/stats")[0]["images"] == count
        assert not [f for f in (coll / "uploads").iterdir() if f.name.endswith(".tmp")]
        filler.unlink()
        upload(srv, second, 201)
        log = srv.stop()
        assert "no space left to store the image" in log, log[-2000:]
        print(f"full disk: 507 {err['code']}: {err['message']}; after freeing space 201")
    finally:
        if srv is not None:
            srv.kill()  # a failed check must not keep the mount busy
        subprocess.run(["umount", str(disk)], check=True)
