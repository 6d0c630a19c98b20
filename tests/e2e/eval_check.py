"""`lookalike eval` against an independent computation.

The binary's figures (eval on clothing-small: gallery train/, queries test/, Flat and IVF64,Flat)
are recomputed here from `lookalike embed --npy` of the same files with FAISS IndexFlatIP and this
file's own Recall@k / Precision@10 / AP code, and must agree to 3 decimals (Flat). Also: a
leave-one-out run over a CSV manifest of 200 test photos, the global `-m` and the repeated
`--model` forms, the human table, and bad inputs (exit code and a message naming the file).
"""
import csv
import json
import math
from collections import Counter

import faiss
import numpy as np

from harness import (DATASET, MODEL, copy_images, fail, images, json_lines, label_of, run,
                     tempdir)

TOL = 5e-4  # "to 3 decimals"
METRICS = ["recall@1", "recall@5", "recall@10", "precision@10", "mAP"]


def embed(files, out):
    run("embed", *files, "--npy", out, "-q", check=0)
    x = np.load(out)
    assert x.shape[0] == len(files), x.shape
    return np.ascontiguousarray(x, dtype=np.float32)


def reference_metrics(rankings, query_labels, gallery_labels, n_relevant):
    """rankings: per query, gallery positions best first. Definitions as eval/metrics.h."""
    r = {1: 0.0, 5: 0.0, 10: 0.0}
    p10, aps = 0.0, []
    for ranking, label, n_rel in zip(rankings, query_labels, n_relevant):
        rel = [gallery_labels[i] == label for i in ranking]
        for k in r:
            r[k] += 1.0 if any(rel[:k]) else 0.0
        p10 += sum(rel[:10]) / 10.0
        if n_rel:
            hits, total = 0, 0.0
            for rank, h in enumerate(rel, 1):
                if h:
                    hits += 1
                    total += hits / rank
            aps.append(total / n_rel)
    nq = len(rankings)
    return {"recall@1": r[1] / nq, "recall@5": r[5] / nq, "recall@10": r[10] / nq,
            "precision@10": p10 / nq, "mAP": sum(aps) / len(aps) if aps else None}


def flat_rankings(gallery, queries, k):
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery)
    _, ids = index.search(queries, k)
    return [[int(i) for i in row if i >= 0] for row in ids]


def compare(name, got, want, tol=TOL):
    for key in METRICS:
        g, w = got[key], want[key]
        if abs(g - w) > tol:
            fail(f"{name}: {key} {g:.4f} from lookalike eval, {w:.4f} computed here")
    print(f"{name}: agrees with the independent computation within {tol}")


def show(name, m):
    return f"{name:<31}" + "  ".join(f"{k} {m[k]:.3f}" for k in METRICS)


def expect_error(args, code, *needles, model=True):
    proc = run(*args, model=model)
    if proc.returncode != code:
        fail(f"{args}: exit {proc.returncode}, expected {code}\n{proc.stderr}")
    for n in needles:
        if str(n) not in proc.stderr:
            fail(f"{args}: stderr does not name {n!r}:\n{proc.stderr}")


def write_manifest(path, files):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "category"])
        for p in files:
            w.writerow([str(p), label_of(p)])


tmp = tempdir("eval")
train, test = images("train"), images("test")
assert (len(train), len(test)) == (3068, 372), (len(train), len(test))

# 1. Query-vs-gallery on the full split, both specs in one run.
proc = run("eval", "--gallery", DATASET / "train", "--queries", DATASET / "test",
           "--index-spec", "Flat", "--index-spec", "IVF64,Flat", "--json", check=0)
rows = json_lines(proc.stdout)
assert [r["index_spec"] for r in rows] == ["Flat", "IVF64,Flat"], rows
for r in rows:
    assert r["type"] == "eval" and r["mode"] == "query-vs-gallery", r
    assert (r["gallery"], r["queries"]) == (3068, 372), r
    assert r["model"] == MODEL and r["model_id"], r
    assert r["skipped"]["queries_without_relevant"] == 0, r
flat, ivf = rows[0]["metrics"], rows[1]["metrics"]
assert "trained" in rows[1]["index_status"], rows[1]["index_status"]

g_emb = embed(train, tmp / "train.npy")
q_emb = embed(test, tmp / "test.npy")
g_labels = [label_of(p) for p in train]
q_labels = [label_of(p) for p in test]
per_label = Counter(g_labels)
n_rel = [per_label[l] for l in q_labels]
want_flat = reference_metrics(flat_rankings(g_emb, q_emb, len(train)), q_labels, g_labels, n_rel)

# IVF64,Flat as VectorIndex builds it: trained on the whole gallery, searching the nprobe lists
# it reports (tuned when it trained: the smallest power of two reaching Recall@10 0.99 on the
# vectors it trained on, which index_status states). k-means may settle differently, so this one
# is compared loosely; the Flat comparison is the exact one.
assert rows[0]["search_params"] == {}, rows[0]
nprobe = rows[1]["search_params"]["nprobe"]
assert 1 <= nprobe <= 64 and nprobe & (nprobe - 1) == 0, rows[1]
assert f"nprobe {nprobe} (Recall@10 " in rows[1]["index_status"], rows[1]
ivf_index = faiss.index_factory(g_emb.shape[1], "IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
ivf_index.train(g_emb)
ivf_index.add(g_emb)
ivf_index.nprobe = nprobe
_, ivf_ids = ivf_index.search(q_emb, len(train))
want_ivf = reference_metrics([[int(i) for i in row if i >= 0] for row in ivf_ids],
                             q_labels, g_labels, n_rel)

print("clothing-small, MobileNetV2, 372 queries x 3068 gallery")
print(show("lookalike eval, Flat", flat))
print(show("Python FAISS, IndexFlatIP", want_flat))
print(show("lookalike eval, IVF64,Flat", ivf))
print(show(f"Python FAISS, IVF64 np={nprobe}", want_ivf))
print("SOURCE.md reference:           recall@1 0.753  recall@5 0.930  recall@10 0.965  mAP 0.452")
compare("Flat", flat, want_flat)
compare("IVF64,Flat", ivf, want_ivf, tol=0.02)
if flat["recall@1"] < 0.72:
    fail(f"Flat Recall@1 {flat['recall@1']:.3f} < 0.72 (reference 0.753)")
# IVF ranks only the lists it visits: it cannot beat exact search on mAP.
assert ivf["mAP"] <= flat["mAP"] + 1e-9, (ivf, flat)

# 2. Leave-one-out over a CSV manifest of 200 test photos, model given globally (-m before eval).
subset = [test[i * len(test) // 200] for i in range(200)]
manifest = tmp / "subset.csv"
write_manifest(manifest, subset)
proc = run("-m", MODEL, "eval", "--gallery", manifest, "--label-column", "category", "--json",
           model=False, check=0)
(loo,) = json_lines(proc.stdout)
assert loo["mode"] == "leave-one-out" and loo["gallery"] == 200 and loo["queries"] == 200, loo
assert loo["model"] == MODEL, loo
pos = {p: i for i, p in enumerate(test)}
s_emb = q_emb[[pos[p] for p in subset]]
s_labels = [label_of(p) for p in subset]
s_count = Counter(s_labels)
s_rankings = [[j for j in row if j != i] for i, row in enumerate(flat_rankings(s_emb, s_emb, 200))]
want_loo = reference_metrics(s_rankings, s_labels, s_labels, [s_count[l] - 1 for l in s_labels])
print(show("lookalike eval, leave-one-out", loo["metrics"]))
print(show("Python FAISS, leave-one-out", want_loo))
singletons = sum(1 for l in s_labels if s_count[l] == 1)
assert loo["skipped"]["queries_without_relevant"] == singletons, loo
compare("leave-one-out", loo["metrics"], want_loo)

# 3. Repeated --model (the same weights by name and by path) and specs: rows model-major.
small = tmp / "small.csv"
write_manifest(small, subset[::5])
proc = run("eval", "--gallery", small, "--label-column", "category", "--model", "mobilenet_v2",
           "--model", MODEL, "--index-spec", "Flat", "--index-spec", "HNSW32", "--json",
           model=False, check=0)
rows = json_lines(proc.stdout)
assert [(r["model"], r["index_spec"]) for r in rows] == [
    ("mobilenet_v2", "Flat"), ("mobilenet_v2", "HNSW32"), (MODEL, "Flat"), (MODEL, "HNSW32")], rows
for a, b in ((rows[0], rows[2]), (rows[1], rows[3])):
    for key in METRICS:
        assert math.isclose(a["metrics"][key], b["metrics"][key], abs_tol=1e-9), (a, b)

# Human output: the table header and one row per (model, spec).
proc = run("eval", "--gallery", small, "--label-column", "category", "-q", check=0)
lines = proc.stdout.splitlines()
assert lines[0].split()[:4] == ["model", "index", "spec", "queries"], lines
assert "R@1" in lines[0] and "mAP" in lines[0] and MODEL in lines[1] and "Flat" in lines[1], lines
print(proc.stdout)

# 4. Bad input: exit 1 and a message naming the file; usage errors exit 2.
expect_error(["eval", "--gallery", manifest], 1, manifest, "'label'", "'category'")
empty = tmp / "empty"
empty.mkdir()
expect_error(["eval", "--gallery", empty], 1, empty)
missing = tmp / "no-such-folder"
expect_error(["eval", "--gallery", missing], 1, missing)
expect_error(["eval", "--gallery", DATASET / "train", "--queries", missing], 1, missing)
expect_error(["eval", "--queries", small], 2, "--gallery")
expect_error(["eval", "--gallery", small, "--label-column", "category", "--index-spec", "IVF0,Flat"],
             2, "IVF0,Flat")

# 5. Skipped files: an image that does not decode (left out, exit 3 "partial") and one directly
# in the gallery folder (no class: a warning), both counted.
folder = tmp / "folder"
copied = copy_images(subset[::40], folder)
(copied[0].parent / "broken.jpg").write_bytes(b"not a jpeg")
(folder / "cover.jpg").write_bytes(copied[1].read_bytes())
proc = run("eval", "--gallery", folder, "--json", "-q")
if proc.returncode != 3:
    fail(f"eval with a broken image: exit {proc.returncode}, expected 3\n{proc.stderr}")
(row,) = json_lines(proc.stdout)
assert row["gallery"] == len(copied), row
assert row["skipped"]["gallery"]["failed"] == 1 and row["skipped"]["gallery"]["unlabelled"] == 1, row
assert "broken.jpg" in proc.stderr and "cover.jpg" in proc.stderr, proc.stderr
print("eval checks passed")
