"""The best Python indexing pipeline lookalike's reduced-precision paths are measured against
(bench/precision.sh, docs/precision.md): PIL decode + torchvision transforms in a DataLoader worker
process (decoding overlaps the forward pass, as lookalike's decode thread does), a TorchScript
model (torch.jit.trace + freeze + optimize_for_inference), L2-normalised embeddings added to
faiss.IndexFlatIP. Same weights, batch size and thread count as the lookalike rows.

--mode fp32       the model in float32
--mode autocast   torch.cpu.amp.autocast(bfloat16), channels-last input and weights
--mode bf16       the whole model in bfloat16, channels-last (what NAME.bf16.pt holds for
                  ResNet-50)

Prints one JSON object: images/s end to end (first batch requested to last vector added; the
model is traced and warmed up before), and steady_images_per_s: the images after the first
batch over the time from its vectors' add to the last add (as `lookalike index` reports its
steady state: without the DataLoader's start and first batch). Run with Debian's
/usr/bin/python3.
"""
import argparse
import json
import os
import sys
import time

import faiss
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import models, transforms

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import export_model  # noqa: E402  (the exporter's weight loading and ResNet-50 v1 layout)

TF = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                         transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


class Photos(Dataset):
    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return TF(Image.open(self.files[i]).convert("RGB"))


def load(arch, weights):
    model = getattr(models, arch)()
    state = export_model.load_state_dict(weights)
    model.load_state_dict(state, strict=True)
    if arch == "resnet50" and export_model.sha256_of(weights) == export_model.RESNET50_V1_SHA256:
        export_model.apply_variant(model, "v1")
    export_model.ARCHITECTURES[arch]["head"](model)
    return model.eval()


def script(model, mode, batch):
    x = torch.randn(batch, 3, 224, 224)
    if mode == "bf16":
        model = model.to(torch.bfloat16)
        x = x.to(torch.bfloat16)
    if mode in ("bf16", "autocast"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.cpu.amp.autocast(enabled=mode == "autocast",
                                                 dtype=torch.bfloat16):
        traced = torch.jit.trace(model, x, check_trace=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        for _ in range(2):
            frozen(x)
    return frozen


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["mobilenet_v2", "resnet50"], required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--files", required=True, help="text file, one image path a line")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    ap.add_argument("--mode", choices=["fp32", "autocast", "bf16"], default="fp32")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    files = [line.strip() for line in open(args.files) if line.strip()]
    model = script(load(args.arch, args.weights), args.mode, args.batch_size)
    index = faiss.IndexFlatIP(export_model.ARCHITECTURES[args.arch]["dim"])
    loader = DataLoader(Photos(files), batch_size=args.batch_size, num_workers=args.workers)
    start = time.perf_counter()
    first_done, first_images = None, 0
    with torch.no_grad(), torch.cpu.amp.autocast(enabled=args.mode == "autocast",
                                                 dtype=torch.bfloat16):
        for batch in loader:
            n_batch = batch.shape[0]
            if args.mode == "bf16":
                batch = batch.to(torch.bfloat16)
            if args.mode != "fp32":
                batch = batch.contiguous(memory_format=torch.channels_last)
            emb = torch.nn.functional.normalize(model(batch).float(), dim=1).numpy()
            index.add(np.ascontiguousarray(emb, dtype=np.float32))
            if first_done is None:
                first_done, first_images = time.perf_counter(), n_batch
    end = time.perf_counter()
    seconds = end - start
    steady = (len(files) - first_images) / (end - first_done) if end > first_done else 0.0
    print(json.dumps({"arch": args.arch, "mode": args.mode, "images": len(files),
                      "threads": torch.get_num_threads(), "workers": args.workers,
                      "batch_size": args.batch_size, "seconds": seconds,
                      "images_per_s": len(files) / seconds,
                      "first_batch_s": first_done - start, "steady_images_per_s": steady,
                      "indexed": index.ntotal}))


if __name__ == "__main__":
    main()
