"""Index specs, search-time parameters, reindex and filters through the real binary.

A CSV catalogue of 120 clothing-small photos (category, a numeric price column as CSV strings,
a colour) is indexed with Flat; then:
  - search --where with equality, IN and numeric ranges returns only matching images, and a
    full top-k (min(k, matches)) that equals brute force over the stored embeddings;
  - reindex to IVF2,Flat re-embeds nothing, keeps every image, and with --nprobe 2 (all lists)
    returns the same results as Flat; info reports the spec, memory and parameters;
  - a bad spec is refused (exit 2) and leaves the collection as it was;
  - --index-spec auto on a new collection says what it picked and why;
  - the server takes the same filters as JSON (array = IN, {"lt": ..} = range) and nprobe.
"""
import csv
import json
import os
import signal
import subprocess
import time
import urllib.request

import numpy as np

from harness import BIN, MODEL, fail, images, label_of, run, run_json, tempdir

work = tempdir("indexes")
files = images("train", per_class=12)
colours = ["red", "green", "blue"]
rows = []
for i, f in enumerate(files):
    rows.append({"file": str(f), "category": label_of(f), "price": str((i * 37) % 100 + 0.5),
                 "colour": colours[i % 3]})
manifest = work / "catalogue.csv"
with open(manifest, "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=["file", "category", "price", "colour"])
    w.writeheader()
    w.writerows(rows)
by_path = {r["file"]: r for r in rows}

coll = work / "coll"
summary, _ = run_json("index", manifest, collection=coll, check=0)
if summary["added"] != len(files):
    fail(f"indexed {summary['added']} of {len(files)}")

# Stored embeddings, for brute-force ground truth.
npy = work / "emb.npy"
run("embed", *files, "--npy", npy, check=0)
emb = np.load(npy)
paths = [str(f) for f in files]


def search(*args, coll=coll):
    proc = run("search", *args, "--json", collection=coll, check=0)
    return [json.loads(l) for l in proc.stdout.splitlines() if l.strip()]


def brute(q_index, keep, k):
    scores = emb @ emb[q_index]
    order = [i for i in np.argsort(-scores) if keep(rows[i]) and i != q_index]
    return [paths[i] for i in order[:k]]


def id_of(path):
    out = search(paths[0], "-k", "120")
    for r in out[0]["results"]:
        if r["path"] == path:
            return r["id"]
    fail(f"{path} not found")


query = 5
qid = id_of(paths[query])
filters = [
    (["category=shoes"], lambda r: r["category"] == "shoes"),
    (["category IN [shoes, hat]"], lambda r: r["category"] in ("shoes", "hat")),
    (["price<20"], lambda r: float(r["price"]) < 20),
    (["price>=50", "colour=red"], lambda r: float(r["price"]) >= 50 and r["colour"] == "red"),
]
for terms, keep in filters:
    args = ["--id", qid, "-k", "15"]
    for t in terms:
        args += ["--where", t]
    res = search(*args)[0]
    got = [r["path"] for r in res["results"]]
    want = brute(query, keep, 15)
    if got != want:
        fail(f"--where {terms}: got {got[:5]}..., brute force {want[:5]}...")
    for r in res["results"]:
        if not keep(by_path[r["path"]]):
            fail(f"--where {terms}: {r['path']} does not match")
    plan = res["plan"]
    if plan["filter_matches"] != sum(1 for r in rows if keep(r)):
        fail(f"--where {terms}: plan says {plan['filter_matches']} matches")
    if plan["method"] != "exact-subset":
        fail(f"--where {terms}: a small filter should be scored exactly, plan {plan}")
    print(f"--where {' '.join(terms)}: {len(got)} results, {plan['filter_matches']} matches, "
          f"{plan['method']}, resolved in {plan['filter_ms']:.2f} ms")

bad = run("search", "--id", qid, "--where", "price<cheap", collection=coll)
if bad.returncode != 2 or "price<cheap" not in bad.stderr:
    fail(f"a bad range should exit 2 naming the term: {bad.returncode} {bad.stderr}")

flat_results = search("--id", qid, "-k", "10")[0]["results"]

# Reindex: no image is embedded again; IVF2 trains on the 120 stored vectors (78 needed).
t0 = time.time()
out, _ = run_json("reindex", "--index-spec", "IVF2,Flat", "--nprobe", "2", collection=coll,
                  check=0)
if out["vectors"] != len(files) or out["index_spec"] != "IVF2,Flat":
    fail(f"reindex: {out}")
if "trained" not in out["index_status"]:
    fail(f"reindex: IVF2 should be trained on {len(files)} vectors: {out['index_status']}")
if out["search_params"].get("nprobe") != 2:
    fail(f"reindex: nprobe default not stored: {out}")
print(f"reindex to IVF2,Flat: {out['vectors']} vectors in {out['build_seconds']:.2f} s "
      f"({time.time() - t0:.1f} s with the process)")
info, _ = run_json("info", collection=coll, check=0)
if info["index_factory"] != "IVF2,Flat" or info["count"] != len(files):
    fail(f"info after reindex: {info}")
for key in ("index_memory_bytes", "index_bytes_per_vector", "search_params", "exact_subset_limit"):
    if key not in info:
        fail(f"info lacks {key}: {info}")
# info opens read-only, so the IVF lists are memory-mapped from the index file.
if info["index_mapped_bytes"] < 4 * emb.shape[1] * len(files):
    fail(f"IVF,Flat lists should be memory-mapped in read mode: {info}")
if info["index_memory_bytes"] + info["index_mapped_bytes"] < 4 * emb.shape[1] * len(files):
    fail(f"IVF,Flat holds full vectors: {info}")
print(f"info: {info['index_memory_bytes']} bytes in memory, {info['index_mapped_bytes']} mapped")
ivf = search("--id", qid, "-k", "10")[0]
if [r["id"] for r in ivf["results"]] != [r["id"] for r in flat_results]:
    fail("IVF2 with nprobe 2 (every list) must equal Flat")
if ivf["plan"]["params"].get("nprobe") != 2:
    fail(f"plan: {ivf['plan']}")
one = search("--id", qid, "-k", "10", "--nprobe", "1")[0]
if one["plan"]["params"].get("nprobe") != 1:
    fail(f"--nprobe 1 not applied: {one['plan']}")

# A bad spec changes nothing.
bad = run("reindex", "--index-spec", "IVF0,Flat", collection=coll)
if bad.returncode != 2 or "IVF0" not in bad.stderr:
    fail(f"reindex with a bad spec: exit {bad.returncode}, {bad.stderr}")
info2, _ = run_json("info", collection=coll, check=0)
if info2["index_factory"] != "IVF2,Flat" or info2["count"] != len(files):
    fail(f"a refused reindex changed the collection: {info2}")

# index with a different spec on an existing collection points at reindex.
proc = run("index", manifest, "--index-spec", "HNSW32", collection=coll)
if proc.returncode != 2 or "reindex" not in proc.stderr:
    fail(f"index --index-spec on an existing collection: {proc.returncode} {proc.stderr}")

# auto on a new collection.
auto = work / "auto"
summary, _ = run_json("index", *files[:20], "--index-spec", "auto", collection=auto, check=0)
if "Flat" not in summary.get("index_choice", "") or "exact" not in summary["index_choice"]:
    fail(f"auto should pick Flat for 20 images and say why: {summary}")
print(summary["index_choice"])
out, _ = run_json("reindex", "--index-spec", "auto", "--memory-budget", "1KB", collection=auto,
                  check=0)
if "budget" not in out.get("reason", ""):
    fail(f"auto with a 1 KB budget should say what the budget forced: {out}")
print(f"reindex auto, 1 KB budget: {out['index_spec']}: {out['reason']}")

# The server: JSON filters and per-query parameters.
log_path = work / "serve.log"
log = open(log_path, "w")
server = subprocess.Popen([BIN, "serve", "--port", "0", "--collection", str(coll), "--model",
                           MODEL], stdout=log, stderr=subprocess.STDOUT, text=True)
try:
    port = None
    deadline = time.time() + 120
    while port is None and time.time() < deadline:
        for line in log_path.read_text().splitlines():
            if "http://" in line:
                port = int(line.split("http://")[1].split("/")[0].split(":")[1])
        if server.poll() is not None:
            fail(f"server exited: {log_path.read_text()}")
        time.sleep(0.2)
    if port is None:
        fail("server did not report its port")
    base = f"http://127.0.0.1:{port}"
    while True:
        try:
            urllib.request.urlopen(base + "/readyz", timeout=5)
            break
        except Exception:
            if time.time() > deadline:
                fail("server not ready")
            time.sleep(0.3)
    body = {"id": qid, "k": 20, "nprobe": 1,
            "where": {"category": ["shoes", "hat"], "price": {"lt": 60}}}
    req = urllib.request.Request(base + "/v1/search", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    res = json.load(urllib.request.urlopen(req, timeout=30))
    keep = lambda r: r["category"] in ("shoes", "hat") and float(r["price"]) < 60
    want = brute(query, keep, 20)
    got = [r["path"] for r in res["results"]]
    if got != want:
        fail(f"server filter: got {got[:5]}, brute force {want[:5]}")
    if res["plan"]["filter_matches"] != sum(1 for r in rows if keep(r)):
        fail(f"server plan: {res['plan']}")
    print(f"server: where IN + range: {len(got)} results, plan {res['plan']}")
finally:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
print("ok")
