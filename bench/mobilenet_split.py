"""Which MobileNetV2 blocks must stay FP32 for its mixed BF16 archive to meet the fidelity bar
(docs/precision.md): for each split A:B (features[:A] FP32, features[A:B] bfloat16 channels-last,
features[B:] FP32, tools/export_model.py's MobileNetV2MixedBF16), the embeddings of all
clothing-small test (queries) and train (gallery) photos against FP32 of the same weights: min
cosine similarity, and Recall@1 and mAP (query vs gallery, relevant = same class folder, cosine
ranking) as deltas to FP32. Python's pipeline (PIL + torchvision transforms, which lookalike's
preprocessing matches bit for bit; TorchScript frozen + optimize_for_inference), so a split can be
chosen without exporting; `lookalike models calibrate` and tests/e2e/precision_fidelity.py check
the chosen archive through the binary. Rates are not measured here (bench_stages does that).

usage: /usr/bin/python3 bench/mobilenet_split.py --weights FILE [--splits 2:18,7:18] [--threads 2]
Prints one JSON object per line: FP32 first, then one per split.
"""
import argparse
import copy
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import int8_probe as ip  # noqa: E402  (photo listing, batched inference)
import python_precision as pp  # noqa: E402  (weights loading, transforms, the exporter)

BATCH = 32


def photos(split):
    """N x 3 x 224 x 224 preprocessed photos and their N class names (folders), sorted by path."""
    files = ip.photo_files(split)
    x = torch.stack([pp.TF(Image.open(f).convert("RGB")) for f in files])
    return x, np.array([os.path.basename(os.path.dirname(f)) for f in files])


def embed(model, x):
    """Unit-length N x d embeddings: traced, frozen and optimized as the Python pipeline is."""
    out = ip.run(pp.script(model, "fp32", BATCH), x, BATCH)
    return torch.nn.functional.normalize(out, dim=1).numpy()


def retrieval(q, yq, g, yg):
    """Recall@1 and mAP of queries q against gallery g (rows unit length), same-class relevant."""
    order = np.argsort(-(q @ g.T), axis=1, kind="stable")
    rel = yg[order] == yq[:, None]
    precision_at = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    ap = (precision_at * rel).sum(1) / rel.sum(1)
    return float(rel[:, 0].mean()), float(ap.mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--splits", default="2:18,7:18")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    splits = [tuple(int(v) for v in s.split(":")) for s in args.splits.split(",")]

    xq, yq = photos("test")
    xg, yg = photos("train")
    model = pp.load("mobilenet_v2", args.weights)
    q0, g0 = embed(copy.deepcopy(model), xq), embed(copy.deepcopy(model), xg)
    r0, m0 = retrieval(q0, yq, g0, yg)
    print(json.dumps({"precision": "fp32", "queries": len(q0), "gallery": len(g0),
                      "recall@1": r0, "mAP": m0}), flush=True)
    for a, b in splits:
        mixed = pp.export_model.MobileNetV2MixedBF16(copy.deepcopy(model), (a, b))
        q, g = embed(mixed, xq), embed(mixed, xg)
        r, m = retrieval(q, yq, g, yg)
        cos = np.concatenate([(q * q0).sum(1), (g * g0).sum(1)])
        print(json.dumps({"precision": "bf16", "split": f"{a}:{b}",
                          "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                          "recall@1_delta": r - r0, "mAP_delta": m - m0,
                          "meets_bar": bool(cos.min() >= 0.999 and abs(r - r0) <= 0.005
                                            and abs(m - m0) <= 0.005)}), flush=True)


if __name__ == "__main__":
    main()
