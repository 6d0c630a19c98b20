"""The Python pipeline lookalike is measured against: what the usual "find similar images" projects
do (PIL decode, torchvision transforms, a torchvision backbone, FAISS IndexFlatIP on L2-normalised
embeddings), with the same weights, batch size and thread count.

--mode eager is the TorchScript-free eager model the usual projects run; --mode optimized runs
torch.jit.trace + torch.jit.optimize_for_inference (a tuned Python pipeline), reported for honesty.
Prints one JSON object with images/s (decode + transform + embed + index add, end to end).

run with Debian's /usr/bin/python3 (torch, torchvision, faiss).
"""
import argparse
import json
import time

import faiss
import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms


def load_model(weights, mode, batch):
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(weights), strict=True)
    model.classifier = torch.nn.Identity()
    model.eval()
    if mode == "optimized":
        with torch.no_grad():
            traced = torch.jit.trace(model, torch.randn(batch, 3, 224, 224))
        model = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--files", required=True, help="text file, one image path a line")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--mode", choices=["eager", "optimized"], default="eager")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    files = [line.strip() for line in open(args.files) if line.strip()]
    model = load_model(args.weights, args.mode, args.batch_size)
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                             transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    index = faiss.IndexFlatIP(1280)
    with torch.no_grad():  # warm-up outside the timing, as lookalike loads its model first
        model(torch.randn(args.batch_size, 3, 224, 224))
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(files), args.batch_size):
            batch = torch.stack([tf(Image.open(f).convert("RGB"))
                                 for f in files[i:i + args.batch_size]])
            emb = torch.nn.functional.normalize(model(batch), dim=1).numpy()
            index.add(np.ascontiguousarray(emb, dtype=np.float32))
    seconds = time.perf_counter() - start
    print(json.dumps({"mode": args.mode, "images": len(files), "threads": torch.get_num_threads(),
                      "seconds": seconds, "images_per_s": len(files) / seconds,
                      "indexed": index.ntotal}))


if __name__ == "__main__":
    main()
