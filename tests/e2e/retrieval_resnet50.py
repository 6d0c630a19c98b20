"""The quality model end to end: export the original ResNet-50 (v1) from ../shared with
tools/export_model.py, index the clothing-small gallery, query with every test photo.

Measured here through the binary: v1 Recall@1 0.758, mAP 0.490; the same weights in torchvision's
v1.5 layout Recall@1 0.723, mAP 0.389. SOURCE.md reports 0.796 / 0.488 (v1) and 0.720 / 0.394
(v1.5): mAP and the v1.5 figures agree, v1's Recall@1 does not, although the C++ embeddings match
the PyTorch v1 reference pipeline (PIL, Resize(256), CenterCrop(224), strides moved as SOURCE.md
says) with cosine >= 0.9999998. mAP >= 0.47 is what proves the exporter applied v1.

The model is the model_resnet50 fixture (tests/model.cmake). The indexed gallery is kept as the
fixture gallery_resnet50 (FIXTURES/gallery-resnet50, built at --precision fp32), with the FP32
figures in its eval-fp32.json, so e2e_precision_fidelity compares BF16 against them without
embedding the 3,068 gallery photos at FP32 again.
"""
import json
import shutil
from pathlib import Path
from harness import FIXTURES, SHARED, evaluate, images, run_json

models = FIXTURES / "models-resnet50"
coll = FIXTURES / "gallery-resnet50"
shutil.rmtree(coll, ignore_errors=True)
card = json.loads((models / "resnet50.json").read_text())
assert card["variant"] == "v1" and card["embedding_dim"] == 2048, card
model = models / "resnet50.pt"

summary, _ = run_json("index", SHARED / "datasets/clothing-small/train", "--precision", "fp32",
                      collection=coll, model=model, check=0, timeout=2400)
assert summary["added"] == len(images("train")) == 3068 and summary["failed"] == 0, summary
print(f"indexed 3068 images with ResNet-50 at {summary['images_per_s']:.1f} images/s")
recall, m_ap, _ = evaluate(coll, model=model)
print(f"clothing-small, ResNet-50 v1: Recall@1 {recall[1]:.3f}  Recall@5 {recall[5]:.3f}  "
      f"Recall@10 {recall[10]:.3f}  mAP {m_ap:.3f}")
print("Python reference (SOURCE.md): Recall@1 0.758  Recall@5 0.935  Recall@10 0.968  mAP 0.490")
assert recall[1] >= 0.74, f"Recall@1 {recall[1]:.3f} < 0.74"
assert m_ap >= 0.47, f"mAP {m_ap:.3f} < 0.47: is the v1 stride layout applied?"
(coll / "eval-fp32.json").write_text(json.dumps(
    {"precision": "fp32", "recall": {str(k): v for k, v in recall.items()}, "mAP": m_ap,
     "queries": len(images("test")), "gallery": summary["added"]}))
