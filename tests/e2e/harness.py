"""Shared helpers for the end-to-end tests: run the real binary, read its JSON, score rankings."""
import atexit
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = os.environ["LOOKALIKE_BIN"]
MODEL = os.environ["LOOKALIKE_TEST_MODEL"]
FIXTURES = Path(os.environ["LOOKALIKE_FIXTURES"])
SHARED = Path(os.path.normpath(os.path.abspath(os.environ["LOOKALIKE_SHARED_DIR"])))
DATASET = SHARED / "datasets" / "clothing-small"
GALLERY_COLLECTION = FIXTURES / "gallery-collection"


# Runs a command as unprivileged user `nobody` (root reads anything, so permission cases need
# it): the argv prefix, or None where this process cannot switch users (not root, no setpriv).
NOBODY = (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
          if os.geteuid() == 0 and shutil.which("setpriv") is not None else None)


def run(*args, check=None, collection=None, model=True, timeout=900, env=None):
    """Runs lookalike; returns CompletedProcess. check=int asserts the exit code.
    model: True = the exported MobileNetV2 fixture, False = none, a path = that model."""
    cmd = [BIN, *map(str, args)]
    if collection is not None:
        cmd += ["--collection", str(collection)]
    if model:
        cmd += ["--model", MODEL if model is True else str(model)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check is not None and proc.returncode != check:
        raise AssertionError(f"{' '.join(cmd)}\nexit {proc.returncode}, expected {check}\n"
                             f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def run_json(*args, **kw):
    proc = run(*args, "--json", **kw)
    return json.loads(proc.stdout), proc


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def label_of(path):
    return Path(path).parent.name


def images(split, classes=None, per_class=None):
    out = []
    for cls in sorted(os.listdir(DATASET / split)):
        if classes and cls not in classes:
            continue
        files = sorted((DATASET / split / cls).glob("*.jpg"))
        out += files[:per_class] if per_class else files
    return out


def average_precision(hits, n_relevant):
    """hits: 0/1 relevance of the full ranking, best first."""
    found, total = 0, 0.0
    for rank, h in enumerate(hits, 1):
        if h:
            found += 1
            total += found / rank
    return total / n_relevant if n_relevant else 0.0


def committed_paths(collection):
    """Paths the collection's catalog holds right now, read beside a running writer (WAL): the
    images it has committed. Empty before the catalog or its schema exists."""
    db = Path(collection) / "catalog.db"
    if not db.exists():
        return set()
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return {row[0] for row in con.execute("SELECT path FROM images")}
        finally:
            con.close()
    except sqlite3.Error:
        return set()  # created but no schema yet


_tempdirs = []
_failed = False


def _note_failure(kind, value, tb):
    global _failed
    _failed = True
    sys.__excepthook__(kind, value, tb)


sys.excepthook = _note_failure


@atexit.register
def _remove_tempdirs():
    """A passing test leaves nothing behind; a failing one keeps its folders to look at (their
    paths are printed), as does LOOKALIKE_KEEP_TEST_DIRS=1."""
    keep = _failed or os.environ.get("LOOKALIKE_KEEP_TEST_DIRS") == "1"
    for d in _tempdirs:
        if keep:
            print(f"kept {d}", file=sys.stderr)
        else:
            shutil.rmtree(d, ignore_errors=True)


def tempdir(name):
    """A fresh folder under the fixtures folder, removed when the test passes."""
    d = Path(tempfile.mkdtemp(prefix=f"lookalike-{name}-", dir=FIXTURES))
    _tempdirs.append(d)
    return d


def copy_images(files, dest):
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        target = dest / label_of(f) / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
        out.append(target)
    return out


def fail(msg):
    global _failed
    _failed = True
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)


def evaluate(collection, model=True, chunk=93):
    """Queries `collection` with every clothing-small test photo through `lookalike search`,
    ranking the whole gallery. Returns ({k: Recall@k for k in 1, 5, 10}, mAP, results by query)."""
    from collections import Counter
    queries = images("test")
    gallery_labels = Counter(label_of(p) for p in images("train"))
    n_gallery = sum(gallery_labels.values())
    results = {}
    for start in range(0, len(queries), chunk):
        proc = run("search", *queries[start:start + chunk], "-k", n_gallery, "--json",
                   collection=collection, model=model, check=0)
        for obj in json_lines(proc.stdout):
            results[obj["query"]] = obj["results"]
    assert len(results) == len(queries), (len(results), len(queries))
    hits_at = {1: 0, 5: 0, 10: 0}
    aps = []
    for q in queries:
        ranking = results[str(q)]
        assert len(ranking) == n_gallery, len(ranking)
        hits = [label_of(r["path"]) == label_of(q) for r in ranking]
        for k in hits_at:
            hits_at[k] += any(hits[:k])
        aps.append(average_precision(hits, gallery_labels[label_of(q)]))
    recall = {k: v / len(queries) for k, v in hits_at.items()}
    return recall, sum(aps) / len(aps), results
