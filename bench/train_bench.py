#!/usr/bin/python3
"""Head training speed and validation Recall@1 against epochs, in one run of `lookalike train`.

    bench/train_bench.py --bin build/cli/lookalike --base build/fixtures/models/mobilenet_v2.pt \
        --labels ../shared/datasets/clothing-small/train [--epochs 40] [--cache DIR]

Early stopping is switched off (--patience = --epochs) so every epoch is measured. Base
embeddings come from the cache (a first, unmeasured pass fills it when empty): the figures are
head training alone. Prints a table (epoch, loss, validation Recall@1, seconds) and a summary.
"""
import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mining", default="batch-hard")
    ap.add_argument("--cache", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        cache = a.cache or str(Path(tmp) / "cache")
        cmd = [a.bin, "train", "--labels", a.labels, "--base", a.base, "--out",
               str(Path(tmp) / "head.pt"), "--epochs", str(a.epochs), "--patience",
               str(a.epochs), "--mining", a.mining, "--threads", str(a.threads), "--cache",
               cache, "--json"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    summary = [r for r in records if r["type"] == "train"][0]
    epochs = [r for r in records if r["type"] == "train_epoch"]
    print(" ".join(cmd[:2] + ["..."]))
    print(f"images {summary['images']} (cached {summary['cached']}, decoded {summary['decoded']}), "
          f"threads {a.threads}, mining {a.mining}")
    print(f"{'epoch':>5} {'loss':>7} {'val R@1':>8} {'seconds':>8}")
    for r in epochs:
        print(f"{r['epoch']:>5} {r['loss']:>7.4f} {r['val_recall_at_1']:>8.3f} {r['seconds']:>8.2f}")
    secs = [r["seconds"] for r in epochs]
    best = max(epochs, key=lambda r: r["val_recall_at_1"])
    print(f"median {statistics.median(secs):.2f} s/epoch ({statistics.median(r['triplets_per_s'] for r in epochs):.0f} "
          f"triplets/s); best validation Recall@1 {best['val_recall_at_1']:.3f} at epoch {best['epoch']}")


if __name__ == "__main__":
    main()
