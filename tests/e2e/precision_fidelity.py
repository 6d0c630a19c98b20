"""Every reduced-precision archive against the FP32 archive of the same weights, through the real
binary, on all 372 clothing-small test photos (issue 12; docs/precision.md):
  - cosine similarity of `lookalike embed --precision P` to `--precision fp32`, per photo: >= 0.999
    on every photo;
  - Recall@1 and mAP of `lookalike eval --precision P` (gallery train, queries test, Flat) within
    0.005 of FP32.
For MobileNetV2 (fixture model_mobilenet_v2) and ResNet-50 v1 (fixture model_resnet50).

A path that misses the bar is not offered by `auto` (the issue's rule): for every path, the
measured figures are written into a copy of the card, as `lookalike models calibrate` records
them, and `lookalike models --json` must then show `auto` passing over a path that misses and
allowing one that meets it (made the fastest, so only the bar can stop it). Which paths must meet
the bar outright is MUST_MEET: ResNet-50's whole-model BF16, the path the speed-up comes from, and
MobileNetV2's mixed BF16 (features[0:7] and [18] in FP32, chosen with bench/mobilenet_split.py:
the earlier split with only features[0:2] in FP32 missed on Recall@1, +0.0108).

The FP32 figures come from the galleries other tests already indexed at FP32 (e2e_index_gallery's
collection, ranked here through `lookalike search`; e2e_retrieval_resnet50's eval-fp32.json), so
the 3,068 gallery photos are embedded at FP32 only once per suite. That those search-based figures
and `lookalike eval`'s are the same measure is checked here on MobileNetV2, where an FP32 eval
costs little: both must agree to 1e-3.
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from harness import (DATASET, FIXTURES, GALLERY_COLLECTION, MODEL, evaluate, images, json_lines,
                     run)

COSINE_BAR = 0.999   # model/precision.h kMinCosineBar
METRIC_BAR = 0.005   # model/precision.h kMaxMetricDelta
MUST_MEET = {("resnet50", "bf16"), ("mobilenet_v2", "bf16")}


def auto_choice(model, precision, fidelity, tmp):
    """What `auto` picks for `model` once `fidelity` is recorded for `precision` (and it is the
    fastest), with this CPU's BF16 flags taken as present: a copy of the card beside links to the
    archives."""
    model = Path(model)
    card = json.loads(model.with_suffix(".json").read_text())
    d = tmp / f"auto-{model.stem}-{precision}"
    d.mkdir()
    for f in model.parent.glob(model.stem + ".*pt"):
        (d / f.name).symlink_to(f.resolve())
    entry = card["precisions"][precision]
    entry["fidelity"] = fidelity
    entry["images_per_s"] = 1e9       # the fastest by far: only the bar can pass it over
    entry["requires"] = []            # on any CPU
    card["precisions"]["fp32"] = {"images_per_s": 1.0}
    (d / model.with_suffix(".json").name).write_text(json.dumps(card))
    proc = run("models", "--json", model=False, env={"LOOKALIKE_MODELS": str(d)}, check=0)
    rows = [r for r in json_lines(proc.stdout) if r.get("name") == card["name"]]
    assert len(rows) == 1, proc.stdout
    return rows[0]["auto_precision"]


def eval_metrics(model, precision):
    proc = run("eval", "--gallery", DATASET / "train", "--queries", DATASET / "test",
               "--precision", precision, "--json", model=model, check=0, timeout=1500)
    rows = [r for r in json_lines(proc.stdout) if r.get("type") == "eval"]
    assert len(rows) == 1, proc.stdout
    row = rows[0]
    assert row["gallery"] == 3068 and row["queries"] == 372, row
    return row


def embed(model, files, precision, out):
    run("embed", *files, "--npy", out, "--precision", precision, model=model, check=0,
        timeout=1500)
    e = np.load(out)
    assert e.shape[0] == len(files), e.shape
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def check_model(name, model, fp32, tmp):
    """fp32: {"recall@1", "mAP"} of the FP32 archive. Returns the printed rows."""
    card = json.loads(Path(model).with_suffix(".json").read_text())
    reduced = sorted(card.get("precisions", {}))
    reduced = [p for p in reduced if p != "fp32" and "archive" in card["precisions"][p]]
    assert reduced, f"{name}: the card lists no reduced-precision archive: {card}"
    queries = images("test")
    assert len(queries) == 372, len(queries)
    ref = embed(model, queries, "fp32", tmp / f"{name}-fp32.npy")
    rows, failures = [], []
    for p in reduced:
        e = embed(model, queries, p, tmp / f"{name}-{p}.npy")
        cos = np.sum(ref * e, axis=1)
        worst = int(np.argmin(cos))
        row = eval_metrics(model, p)
        # Uncalibrated, a reduced precision must carry its own model id (docs/precision.md).
        assert row["model_id"].endswith("+" + p), row["model_id"]
        m = row["metrics"]
        d_r1, d_map = m["recall@1"] - fp32["recall@1"], m["mAP"] - fp32["mAP"]
        rows.append((name, p, float(cos.min()), float(cos.mean()), m["recall@1"], m["mAP"],
                     d_r1, d_map, row["embed_images_per_s"]))
        print(f"{name} {p}: cosine to fp32 over {len(cos)} test photos: min {cos.min():.6f} "
              f"({queries[worst].parent.name}/{queries[worst].name}), mean {cos.mean():.6f}; "
              f"Recall@1 {m['recall@1']:.4f} ({d_r1:+.4f}), mAP {m['mAP']:.4f} ({d_map:+.4f}); "
              f"eval embedded {row['embed_images_per_s']:.1f} images/s", flush=True)
        misses = []
        if not cos.min() >= COSINE_BAR:
            misses.append(f"min cosine {cos.min():.6f} < {COSINE_BAR}")
        if not abs(d_r1) <= METRIC_BAR:
            misses.append(f"Recall@1 delta {d_r1:+.4f}")
        if not abs(d_map) <= METRIC_BAR:
            misses.append(f"mAP delta {d_map:+.4f}")
        if (name, p) in MUST_MEET:
            failures += [f"{name} {p}: {m}" for m in misses]
        fidelity = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                    "recall_at_1_delta": d_r1, "map_delta": d_map}
        chosen = auto_choice(model, p, fidelity, tmp)
        expect = "fp32" if misses else p
        print(f"{name} {p}: {'misses the bar (' + '; '.join(misses) + ')' if misses else 'meets the bar'}"
              f"; auto with these figures recorded: {chosen['precision']} ({chosen['reason']})",
              flush=True)
        if chosen["precision"] != expect:
            failures.append(f"{name} {p}: auto picked {chosen['precision']}, expected {expect} "
                            f"({chosen['reason']})")
    return rows, failures


def fp32_mobilenet_v2():
    """FP32 through search over the shared FP32 gallery, and through eval: the same measure."""
    recall, m_ap, _ = evaluate(GALLERY_COLLECTION)
    via_eval = eval_metrics(MODEL, "fp32")
    assert "+" not in via_eval["model_id"], via_eval["model_id"]
    print(f"mobilenet_v2 fp32: Recall@1 {recall[1]:.4f}, mAP {m_ap:.4f} (search over the gallery "
          f"fixture); eval: Recall@1 {via_eval['metrics']['recall@1']:.4f}, mAP "
          f"{via_eval['metrics']['mAP']:.4f}", flush=True)
    assert abs(via_eval["metrics"]["recall@1"] - recall[1]) <= 1e-3, (via_eval, recall)
    assert abs(via_eval["metrics"]["mAP"] - m_ap) <= 1e-3, (via_eval, m_ap)
    return via_eval["metrics"]


def fp32_resnet50():
    """FP32 from e2e_retrieval_resnet50 (gallery_resnet50 fixture)."""
    saved = json.loads((FIXTURES / "gallery-resnet50" / "eval-fp32.json").read_text())
    assert saved["precision"] == "fp32" and saved["queries"] == 372, saved
    print(f"resnet50 fp32: Recall@1 {saved['recall']['1']:.4f}, mAP {saved['mAP']:.4f} "
          f"(e2e_retrieval_resnet50)", flush=True)
    return {"recall@1": saved["recall"]["1"], "mAP": saved["mAP"]}


MODELS = {
    "mobilenet_v2": (lambda: MODEL, fp32_mobilenet_v2),
    "resnet50": (lambda: FIXTURES / "models-resnet50" / "resnet50.pt", fp32_resnet50),
}


def main(models):
    tmp = Path(tempfile.mkdtemp(prefix="lookalike-precision-fidelity-", dir=FIXTURES))
    try:
        all_rows, failures = [], []
        for name in models:
            archive, fp32 = MODELS[name]
            rows, bad = check_model(name, archive(), fp32(), tmp)
            all_rows += rows
            failures += bad
        print("\nmodel         precision  min cos   mean cos  Recall@1 (delta)   mAP (delta)"
              "        eval img/s")
        for n, p, mn, mean, r1, mp, dr, dm, rate in all_rows:
            print(f"{n:<13} {p:<9}  {mn:.6f}  {mean:.6f}  {r1:.4f} ({dr:+.4f})  "
                  f"{mp:.4f} ({dm:+.4f})   {rate:.1f}")
        if failures:
            print("FAIL:\n  " + "\n  ".join(failures), file=sys.stderr)
            return 1
        print("ok")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    # Arguments: the models to check (default both), e.g. to rerun one by hand.
    sys.exit(main(sys.argv[1:] or ["mobilenet_v2", "resnet50"]))
