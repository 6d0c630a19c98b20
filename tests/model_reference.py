#!/usr/bin/python3
"""Writes the eager-PyTorch reference that test_model_embed checks the C++ EmbeddingModel against.

Builds MobileNetV2 straight from torchvision (independently of tools/export_model.py), loads the
given weights, and embeds N real clothing-small photos preprocessed by torchvision itself:

  OUT/input.f32       N x 3 x 224 x 224 float32, little-endian, C order (the model input)
  OUT/embeddings.f32  N x 1280 float32, the eager model's un-normalised output
  OUT/reference.json  shapes, the image paths in order, the weights file
"""

import argparse
import json
import os

import torch
import torchvision
from PIL import Image
from torchvision import transforms


def pick_images(dataset, count):
    """The first images of each class folder of test/, round-robin, so every class appears."""
    root = os.path.join(dataset, "test")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    files = {c: sorted(os.listdir(os.path.join(root, c))) for c in classes}
    picked = []
    i = 0
    while len(picked) < count:
        for c in classes:
            if i < len(files[c]) and len(picked) < count:
                picked.append(os.path.join(root, c, files[c][i]))
        i += 1
    return picked


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--dataset", required=True, help="clothing-small folder")
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(2)

    prep = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    paths = pick_images(args.dataset, args.count)
    batch = torch.stack([prep(Image.open(f).convert("RGB")) for f in paths])

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(args.weights, map_location="cpu"), strict=True)
    model.classifier = torch.nn.Identity()
    model.eval()
    with torch.no_grad():
        emb = model(batch)

    os.makedirs(args.out, exist_ok=True)
    batch.contiguous().numpy().astype("<f4").tofile(os.path.join(args.out, "input.f32"))
    emb.contiguous().numpy().astype("<f4").tofile(os.path.join(args.out, "embeddings.f32"))
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump({"count": len(paths), "input_shape": list(batch.shape),
                   "embedding_shape": list(emb.shape), "images": paths,
                   "weights": os.path.abspath(args.weights)}, f, indent=2)
    print(f"wrote reference for {len(paths)} images to {args.out}")


if __name__ == "__main__":
    main()
