"""INT8 through Debian's torch 1.13, measured against FP32 and BF16 of the same weights
(docs/precision.md, "INT8"). Post-training static quantization in FX graph mode with the `onednn`
quantized engine (oneDNN 2.6.3; FBGEMM is not compiled into Debian's build), calibrated on the
first --calibrate photos of the clothing-small gallery, the user's own kind of photos. Then, on the
clothing-small test photos: cosine similarity of each embedding to FP32 (min, mean), and
model-only images/s (TorchScript traced + frozen, batch 32, preprocessed input) of FP32
(optimize_for_inference), whole-model BF16 channels-last (optimize_for_inference) and INT8
(frozen; optimize_for_inference does not apply to quantized graphs), measured one after another
in this one process.

--exclude MODULE[,MODULE...] keeps those modules in FP32 (FX qconfig None), e.g. conv1,layer4.

usage: /usr/bin/python3 bench/int8_probe.py --arch resnet50 --weights FILE [--calibrate 256]
       [--photos 372] [--threads 2] [--exclude conv1,layer4]
Prints one JSON object.
"""
import argparse
import copy
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import python_precision as pp  # noqa: E402  (weights loading, transforms)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "datasets",
                    "clothing-small")


def photo_files(split, limit=0):
    """The split's photos sorted by path, `limit` of them spread evenly (0 = all)."""
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(DATA, split))
                   for f in fs if f.endswith(".jpg"))
    if limit and limit < len(files):
        step = len(files) / limit
        files = [files[int(i * step)] for i in range(limit)]
    return files


def photos(split, limit):
    return torch.stack([pp.TF(Image.open(f).convert("RGB")) for f in photo_files(split, limit)])


def run(model, x, batch, prep=lambda t: t):
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model(prep(x[i:i + batch])).float())
    return torch.cat(out)


def rate(model, x, batch, prep=lambda t: t, reps=2):
    xb = prep(x[:batch])
    with torch.no_grad():
        model(xb)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(xb)
    return reps * batch / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["mobilenet_v2", "resnet50"], required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--calibrate", type=int, default=256)
    ap.add_argument("--photos", type=int, default=372)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--exclude", default="", help="modules kept in FP32, comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "onednn"
    b = args.batch_size

    model = pp.load(args.arch, args.weights)
    test = photos("test", args.photos)
    cal = photos("train", args.calibrate)
    example = (test[:b],)

    fp32 = pp.script(copy.deepcopy(model), "fp32", b)
    bf16 = pp.script(copy.deepcopy(model), "bf16", b)
    to_bf16 = lambda t: t.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)

    t0 = time.perf_counter()
    qconfig = get_default_qconfig_mapping("onednn")
    excluded = [m for m in args.exclude.split(",") if m]
    for name in excluded:
        qconfig = qconfig.set_module_name(name, None)
    prepared = prepare_fx(copy.deepcopy(model), qconfig, example)
    with torch.no_grad():
        for i in range(0, len(cal), b):
            prepared(cal[i:i + b])
    quant = convert_fx(prepared)
    with torch.no_grad():
        int8 = torch.jit.freeze(torch.jit.trace(quant, example[0], check_trace=False).eval())
    quantize_s = time.perf_counter() - t0

    ref = torch.nn.functional.normalize(run(fp32, test, b), dim=1)
    result = {"arch": args.arch, "threads": args.threads, "batch_size": b,
              "calibration_photos": len(cal), "test_photos": len(test),
              "quantize_seconds": quantize_s, "engine": torch.backends.quantized.engine,
              "fp32_modules": excluded}
    for name, m, prep in (("bf16", bf16, to_bf16), ("int8", int8, lambda t: t)):
        e = torch.nn.functional.normalize(run(m, test, b, prep), dim=1)
        cos = (ref * e).sum(1).numpy()
        result[name] = {"min_cosine": float(np.min(cos)), "mean_cosine": float(np.mean(cos))}
    # Speed last, round-robin twice, so that load drift on a shared machine hits each alike.
    speeds = {"fp32": [], "bf16": [], "int8": []}
    for _ in range(2):
        speeds["fp32"].append(rate(fp32, test, b))
        speeds["bf16"].append(rate(bf16, test, b, to_bf16))
        speeds["int8"].append(rate(int8, test, b))
    for name, s in speeds.items():
        result.setdefault(name, {})["images_per_s"] = max(s)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
