"""Regression tests, through the real binary, for defects left open by earlier reviews and found
by the sixth: `models calibrate` on a manifest that lists a photo twice (it fell back to
unlabelled photos and dropped every label instead of refusing), and metadata holding a NUL
character (stored cut short in the filter table, so filters matched the wrong image), and a
damaged write-ahead log (SQLite dropped the commits after the damage without a word); on
clothing-small photos."""
import csv
import json
import shutil
import subprocess
from pathlib import Path

from harness import MODEL, copy_images, images, json_lines, run, run_json, tempdir
from server_client import Server, error_of

work = tempdir("cli-defects4")
photos = copy_images(images("test", classes=["shoes", "hat"], per_class=3), work / "photos")
assert len(photos) == 6

# 1. models calibrate: a manifest that repeats a path is refused like eval's and train's, naming
#    both rows; the card is left as it was. Without the repeat it calibrates, labelled.
models = work / "models"
models.mkdir()
src = Path(MODEL)
for f in src.parent.glob(src.stem + ".*"):  # the archive, its BF16 companion and the card
    shutil.copy(f, models / f.name)
model = models / src.name
card_before = model.with_suffix(".json").read_bytes()
labels = work / "photos" / "labels.csv"
rel = [p.relative_to(work / "photos") for p in photos]
with open(labels, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file", "label"])
    for p in rel:
        w.writerow([p, p.parent.name])
    w.writerow([rel[1], "hat"])
proc = run("models", "calibrate", labels, model=model, check=1)
assert f"{labels}: row 3 and row 8 both list {photos[1]}; list each image once" in \
    proc.stderr, proc.stderr
assert model.with_suffix(".json").read_bytes() == card_before
unique = work / "photos" / "unique.csv"
unique.write_text("".join(labels.read_text().splitlines(keepends=True)[:-1]))
proc = run("models", "calibrate", unique, "--dry-run", model=model, check=0)
assert "(labelled, leave-one-out)" in proc.stdout, proc.stdout
assert model.with_suffix(".json").read_bytes() == card_before
print("models calibrate: a repeated manifest path is refused with both rows; the card unchanged")

# 2. A NUL character in metadata: SQLite's JSON functions cut the text at it, so the filter
#    table held "a" for "a\0b" and `--where note=a` matched that image. Refused wherever
#    metadata enters: a manifest cell (that row fails, the others are indexed), an upload's and
#    an edit's metadata (400), with the field named.
nul_csv = work / "photos" / "nul.csv"
nul_csv.write_bytes(b"file,note\n" + str(rel[0]).encode() + b",a\0b\n" + str(rel[1]).encode()
                    + b",ab\n")
coll = work / "coll-nul"
proc = run("index", nul_csv, collection=coll, check=3)
assert f"{nul_csv} row 2: metadata: field 'note': text holds a NUL character (U+0000)" in \
    proc.stderr, proc.stderr
records = json_lines(run("search", photos[1], "--where", "note=a", "-k", 5, "--json",
                         collection=coll, check=0).stdout)
assert records[0]["results"] == [], records
records = json_lines(run("search", photos[1], "--where", "note=ab", "-k", 5, "--json",
                         collection=coll, check=0).stdout)
assert [h["path"] for h in records[0]["results"]] == [str(photos[1])], records
srv = Server(coll)
try:
    status, body = srv.multipart("/v1/images", {"image": (photos[2].name, photos[2].read_bytes()),
                                                "metadata": json.dumps({"note": "a\u0000b"})})
    assert status == 400 and error_of(body)["code"] == "bad_request", body
    assert "field 'note': text holds a NUL character (U+0000)" in body["error"]["message"], body
    status, _, data = srv.request("PATCH", "/v1/images/1", json.dumps({"tags": ["x", "\u0000"]}),
                                  {"Content-Type": "application/json"})
    assert status == 400 and b"field 'tags': text holds a NUL character" in data, (status, data)
    assert srv.json("GET", "/v1/images/1")[0]["metadata"] == {"note": "ab"}
finally:
    srv.stop()
print("metadata with a NUL character: refused from a manifest row, an upload and an edit")

# 3. A damaged write-ahead log: SQLite replays it up to the first frame that fails its checksum
#    and silently drops the commits after it, acknowledged uploads included. Every command now
#    refuses such a catalog, naming the frame and the commits at stake, and says how to accept
#    the loss; after that, the commits before the damage are kept.
coll = work / "coll-wal"
run("index", *photos[:2], collection=coll, check=0)
srv = Server(coll)
for p in images("train", classes=["dress"], per_class=8):
    srv.multipart("/v1/images", {"image": (p.name, p.read_bytes())}, expect=201)
srv.kill()  # kill -9: the WAL is left as it is, not checkpointed
wal = coll / "catalog.db-wal"
size = wal.stat().st_size
assert size > 8 * 4096, size
with open(wal, "r+b") as f:
    f.seek(size // 2)
    byte = f.read(1)
    f.seek(size // 2)
    f.write(bytes([byte[0] ^ 0x5A]))
before = wal.read_bytes()
for cmd in (["info"], ["search", photos[0], "-k", 3], ["index", photos[3]]):
    proc = run(*cmd, collection=coll, check=1)
    assert f"{wal}: frame " in proc.stderr and "fails its checksum, and SQLite would drop the " \
        in proc.stderr and f"run `sqlite3 {coll / 'catalog.db'} 'PRAGMA wal_checkpoint(TRUNCATE)'`" \
        in proc.stderr, proc.stderr
    assert wal.read_bytes() == before  # nothing opened, nothing replayed or checkpointed
lost = int(proc.stderr.split("would drop the ")[1].split()[0])
assert 1 <= lost <= 8, proc.stderr
subprocess.run(["sqlite3", str(coll / "catalog.db"), "PRAGMA wal_checkpoint(TRUNCATE)"],
               check=True, capture_output=True)
info, _ = run_json("info", collection=coll, check=0)
assert info["count"] == 2 + 8 - lost, (info["count"], lost)
print(f"damaged WAL: refused by info, search and index ({lost} commits named); accepted with "
      f"sqlite3's checkpoint, {info['count']} images kept")
