"""Regression tests, through the real binary, for the defects found on review (issue 8): each
block reproduces what a new user ran and asserts the fixed outcome."""
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image

from harness import (BIN, MODEL, committed_paths, copy_images, images, json_lines, run, run_json,
                     tempdir)

work = tempdir("defects")
photos = copy_images(images("train", classes=["shoes", "hat", "pants", "dress"], per_class=10),
                     work / "photos")
assert len(photos) == 40


def embed(path):
    out, _ = run_json("embed", path, check=0)
    return np.array(out["embedding"], dtype=np.float32)


# 1. A trainable factory with too few images: committed, searchable (exactly), and the
#    collection keeps working for info, search, index and remove.
for factory in ["IVF1024,Flat", "IVF4,PQ8"]:
    coll = work / f"coll-{factory.replace(',', '-')}"
    summary, _ = run_json("index", work / "photos", "--index-factory", factory, collection=coll,
                          check=0)
    assert summary["added"] == 40, summary
    info, _ = run_json("info", collection=coll, model=False, check=0)
    assert info["count"] == 40 and info["index_factory"] == factory, info
    assert "exact" in info["index_status"], info  # says that it searches exactly until trained
    res, _ = run_json("search", photos[3], "-k", 5, collection=coll, check=0)
    assert res["results"][0]["path"] == str(photos[3]) and len(res["results"]) == 5, res
    run("index", work / "photos", collection=coll, check=0)
    out, _ = run_json("remove", photos[3], collection=coll, model=False, check=0)
    assert out["removed"] == 1 and out["count"] == 39, out
    res, _ = run_json("search", photos[3], "-k", 40, collection=coll, check=0)
    assert str(photos[3]) not in [r["path"] for r in res["results"]] and len(res["results"]) == 39
print("trainable factories on 40 images: exact search until trained, every command works")

# IVF0,Flat used to abort the process (a FAISS assertion); now refused, and nothing created.
coll = work / "coll-ivf0"
proc = run("index", work / "photos", "--index-factory", "IVF0,Flat", collection=coll, check=2)
assert "IVF0" in proc.stderr, proc.stderr
assert not (coll / "catalog.db").exists()

# 2. k: a clear range, and no allocation proportional to a huge k.
coll = work / "coll"
run("index", work / "photos", collection=coll, check=0)
for k in ["0", "2000000000", "-3"]:
    proc = run("search", photos[0], "-k", k, collection=coll, check=2)
    assert "k must be between 1 and 10000" in proc.stderr, proc.stderr
res, _ = run_json("search", photos[0], "-k", 10000, collection=coll, check=0)
assert len(res["results"]) == 40, len(res["results"])
proc = run("search", "--id", "1", photos[0], "--json", collection=coll, check=0)  # --id takes one
records = json_lines(proc.stdout)
assert [r.get("query_id") for r in records] == [1, None], records
print("k range and --id parsing OK")

# 3. Metadata from a CSV manifest survives a later index of the folder.
csv = work / "photos" / "catalogue.csv"
rows = ["file,category,price"] + [f"{p.relative_to(work / 'photos')},{p.parent.name},{i}"
                                   for i, p in enumerate(photos)]
csv.write_text("\n".join(rows) + "\n")
coll = work / "coll-meta"
run("index", csv, collection=coll, check=0)
summary, _ = run_json("index", work / "photos", collection=coll, check=0)
assert summary["unchanged"] == 40 and summary["embedded"] == 0, summary
res, _ = run_json("search", photos[5], "-k", 1, collection=coll, check=0)
assert res["results"][0]["metadata"] == {"category": photos[5].parent.name, "price": "5"}, res
print("manifest metadata survives a folder index")

# 4. Reuse by content hash, not by record: a.jpg replaced, its old bytes moved to b.jpg, with a
#    batch boundary between them: b.jpg must get the old content's vector.
reuse = work / "reuse"
reuse.mkdir()
shutil.copy2(photos[0], reuse / "a.jpg")
coll = work / "coll-reuse"
run("index", reuse, collection=coll, check=0)
shutil.move(reuse / "a.jpg", reuse / "b.jpg")
shutil.copy2(photos[20], reuse / "a.jpg")
summary, _ = run_json("index", reuse, "--batch-size", "1", collection=coll, check=0)
assert summary["added"] == 1 and summary["updated"] == 1, summary
for name, source in [("a.jpg", photos[20]), ("b.jpg", photos[0])]:
    res, _ = run_json("search", source, "-k", 1, collection=coll, check=0)
    top = res["results"][0]
    assert top["path"] == str(reuse / name) and top["score"] > 0.9999, (name, res)
print("embedding reuse follows content")

# 5. index of a missing path into a new folder creates nothing.
coll = work / "coll-typo"
proc = run("index", work / "no-such-folder", collection=coll, check=1)
assert "no-such-folder" in proc.stderr + proc.stdout, proc.stderr
assert not (coll / "catalog.db").exists(), list(coll.iterdir()) if coll.exists() else None
run("index", work / "photos", "--metric", "l2", collection=coll, check=0)  # config not fixed
info, _ = run_json("info", collection=coll, model=False, check=0)
assert info["metric"] == "l2", info
print("a typo creates no collection")

# 6. remove DIR/ and DIR/. work like remove DIR.
coll = work / "coll"
for spelling in [str(work / "photos" / "shoes") + "/", str(work / "photos" / "hat") + "/."]:
    out, _ = run_json("remove", spelling, collection=coll, model=False, check=0)
    assert out["removed"] == 10, (spelling, out)
print("remove DIR/ and DIR/. OK")

# 7. A FIFO named x.jpg is never opened for reading; SIGTERM stops a run promptly.
fifo = work / "x.jpg"
os.mkfifo(fifo)
for args in [("index", fifo), ("search", fifo), ("embed", fifo)]:
    start = time.time()
    proc = run(*args, collection=work / "coll", timeout=60)
    assert proc.returncode in (1, 3), (args, proc.returncode, proc.stderr)
    assert "x.jpg" in proc.stderr + proc.stdout and "regular file" in proc.stderr + proc.stdout, \
        proc.stderr
    assert time.time() - start < 30, args
many = copy_images(images("train", per_class=150), work / "many")
proc = subprocess.Popen([BIN, "index", str(work / "many"), "--collection", str(work / "coll-term"),
                         "--model", MODEL, "--batch-size", "8"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
# Mid-run, by what it has committed rather than a fixed wait (a fast machine could finish first).
term = work / "coll-term"
deadline = time.time() + 300
while proc.poll() is None and len(committed_paths(term)) < 64 and time.time() < deadline:
    time.sleep(0.02)
start = time.time()
proc.send_signal(signal.SIGTERM)
out, err = proc.communicate(timeout=60)
assert proc.returncode == 130, (proc.returncode, err)
assert time.time() - start < 10, time.time() - start
assert len(committed_paths(term)) < len(many), "the run finished before SIGTERM; proves nothing"
print(f"FIFO refused; SIGTERM stopped index in {time.time() - start:.1f} s")

# 8. Bounds: --decode-threads is a usage error past 64.
proc = run("index", work / "photos", "--decode-threads", "5000", collection=work / "coll", check=2)
assert "decode-threads" in proc.stderr, proc.stderr

# 9. Invalid UTF-8 in a file name: --json stays valid JSON, with the raw name in path_bytes.
odd = work / "odd"
odd.mkdir()
raw = os.fsencode(str(odd)) + b"/caf\xe9.jpg"
shutil.copy2(photos[1], raw)
coll = work / "coll-odd"
proc = run("index", odd, "--json", collection=coll, check=0)
assert json_lines(proc.stdout)[0]["added"] == 1, proc.stdout
proc = run("search", photos[1], "-k", 1, "--json", collection=coll, check=0)
hit = json_lines(proc.stdout)[0]["results"][0]
import base64
assert base64.b64decode(hit["path_bytes"]) == raw and "\ufffd" in hit["path"], hit
print("invalid UTF-8 names round-trip through path_bytes")

# 10. A full disk mid-run: the committed batches are kept, exit code 4 says so.
mnt = work / "small-disk"
mnt.mkdir()
if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)]).returncode == 0:
    try:
        proc = run("index", work / "many", "--batch-size", "8", "--json", collection=mnt / "c",
                   timeout=600)
        # 4 when a batch could not be committed; 0 with a cache_warning when every batch was and
        # only the index cache could not be saved (it is rebuilt from the catalog).
        assert proc.returncode in (0, 4), (proc.returncode, proc.stderr[-2000:])
        summary = json_lines(proc.stdout)[0]
        assert summary["count"] > 0, summary
        assert ("error" in summary) == (proc.returncode == 4), summary
        assert proc.returncode == 4 or "cache_warning" in summary, summary
        kept = summary["count"]
        info, _ = run_json("info", collection=mnt / "c", model=False, check=0)
        assert info["count"] == kept, (info, kept)
        print(f"full disk: exit 4 with {kept} images committed and kept")
    finally:
        subprocess.run(["umount", str(mnt)])
else:
    print("SKIP full-disk check: cannot mount a tmpfs here")

# 11. JSON Lines everywhere: every record parses and has a type.
coll = work / "coll"
for args in [("info",), ("models",), ("search", photos[30], "-k", 2), ("embed", photos[30])]:
    proc = run(*args, "--json", collection=coll, model=args[0] not in ("info", "models"), check=0)
    for rec in json_lines(proc.stdout):
        assert "type" in rec, (args, rec)
print("defect regression checks passed")
