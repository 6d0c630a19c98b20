"""kill -9 at any moment leaves a collection that opens, is consistent, and has lost no committed
image; Ctrl-C stops cleanly (exit 130) keeping what was committed; a rerun completes with exactly
one entry per file."""
import json
import os
import signal
import sqlite3
import subprocess
import time
import harness
from harness import BIN, MODEL, copy_images, images, run, run_json, tempdir

work = tempdir("crash")
folder = work / "photos"
coll = work / "collection"
files = copy_images(images("train", per_class=24), folder)
n = len(files)
assert n == 240, n


def committed_paths():
    return harness.committed_paths(coll)  # coll: the collection under test at the time


def start_index():
    return subprocess.Popen([BIN, "index", str(folder), "--collection", str(coll), "--model", MODEL,
                             "--batch-size", "16", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_consistent(seen_before):
    info, _ = run_json("info", collection=coll, model=False, check=0)
    now = committed_paths()
    lost = seen_before - now
    assert not lost, f"{len(lost)} committed images lost, e.g. {sorted(lost)[:3]}"
    assert info["count"] == len(now), (info["count"], len(now))
    con = sqlite3.connect(f"file:{coll / 'catalog.db'}?mode=ro", uri=True)
    n_emb = con.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    n_dup = con.execute("SELECT COUNT(*) - COUNT(DISTINCT path) FROM images").fetchone()[0]
    some_id = con.execute("SELECT MIN(id) FROM images").fetchone()[0]
    con.close()
    assert n_emb == len(now) and n_dup == 0, (n_emb, len(now), n_dup)
    if some_id is not None:
        res, _ = run_json("search", "--id", some_id, "-k", 3, "--include-self",
                          collection=coll, model=False, check=0)
        assert res["results"][0]["id"] == some_id, res
        assert len(res["results"]) == min(3, len(now)), res
    return len(now)


# kill -9: before anything is committed, after the first batches, mid-run, near the end.
for target in (0, 16, 100, 200, 232):
    proc = start_index()
    seen = set()
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        seen = committed_paths()
        if len(seen) >= target:
            break
        time.sleep(0.02)
    if target == 0:
        time.sleep(0.5)  # mid model load
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    seen = committed_paths() if proc.returncode != -signal.SIGKILL else seen
    if not (coll / "catalog.db").exists():
        print(f"kill at target {target}: before the collection was created")
        continue
    count = check_consistent(seen)
    print(f"kill -9 with >= {target} committed: reopened consistent with {count} images, "
          f"none of the {len(seen)} seen committed lost")

# Ctrl-C (SIGINT) on a fresh collection: clean stop, exit 130, summary says interrupted,
# committed work kept; the interrupted collection then completes like the killed one.
killed_coll, coll = coll, work / "collection-sigint"
proc = start_index()
while proc.poll() is None and len(committed_paths()) < 32:
    time.sleep(0.02)
seen = committed_paths()
proc.send_signal(signal.SIGINT)
out, err = proc.communicate(timeout=120)
assert proc.returncode == 130, (proc.returncode, err)
summary = json.loads(out)
assert summary["interrupted"] is True and summary["count"] >= len(seen), summary
assert summary["count"] < n, "the run finished before SIGINT; the check proves nothing"
assert check_consistent(seen) == summary["count"]
kept = summary["count"]
print(f"SIGINT: exit 130 with {kept} of {n} images committed and kept")
summary, _ = run_json("index", folder, collection=coll, check=0)
assert summary["added"] == n - kept and summary["unchanged"] == kept, summary
assert summary["count"] == n, summary
coll = killed_coll

# A rerun completes: exactly one entry per file; another run embeds nothing.
summary, _ = run_json("index", folder, collection=coll, check=0)
assert summary["count"] == n and summary["failed"] == 0, summary
assert check_consistent(committed_paths()) == n
assert committed_paths() == {str(f) for f in files}
summary, _ = run_json("index", folder, collection=coll, check=0)
assert summary["embedded"] == 0 and summary["unchanged"] == n, summary
print("crash checks passed")
