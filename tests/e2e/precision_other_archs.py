"""ViT-B/16 and VGG-16 at BF16 against their own FP32 outputs, through the binary (issue 12: "the
same for the other exported architectures, with random weights where no real weights are at
hand"). Each is exported with random weights (seed 0) and its BF16 archive, then `lookalike
models calibrate` embeds the same clothing-small test photos at FP32 and BF16 and records the
fidelity in the card: the 0.999 cosine bar on every photo must hold. Recall@1 and mAP are
printed but not asserted (with random weights they measure nothing). Then `auto` on this CPU,
and on one masked without BF16 (LOOKALIKE_CPU_MASK)."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import DATASET, run_json

SOURCE = Path(os.environ["LOOKALIKE_SOURCE_DIR"])
DIMS = {"vit_b_16": 768, "vgg16": 4096}
PHOTOS = 60  # above calibrate's 50-photo minimum; ViT-B/16 and VGG-16 run ~5 images/s here
CPU_FLAGS = set(open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split())
HAS_BF16 = bool({"avx512_bf16", "amx_bf16"} & CPU_FLAGS)


def check(arch, tmp):
    subprocess.run(["/usr/bin/python3", str(SOURCE / "tools" / "export_model.py"), arch,
                    "--random-weights", "--out", str(tmp)], check=True, capture_output=True,
                   timeout=600)
    model = tmp / f"{arch}.pt"
    card = json.loads((tmp / f"{arch}.json").read_text())
    assert card["architecture"] == arch and card["embedding_dim"] == DIMS[arch], card
    assert card["random_weights"] and "random" in card["weights_source"], card
    assert "bf16" in card["precisions"], card["precisions"]
    rep, _ = run_json("models", "calibrate", DATASET / "test", "--limit", PHOTOS,
                      "--precisions", "bf16", model=model, check=0, timeout=1200)
    bf = rep["precisions"]["bf16"]
    print(f"{arch} (random weights), bf16 vs fp32 on {rep['images']} photos: min cosine "
          f"{bf['min_cosine']:.6f} ({Path(bf['worst_file']).name}), mean {bf['mean_cosine']:.6f}, "
          f"Recall@1 delta {bf['recall_at_1_delta']:+.4f}, mAP delta {bf['map_delta']:+.4f}, "
          f"{rep['fp32']['images_per_s']:.1f} -> {bf['images_per_s']:.1f} images/s")
    assert rep["images"] == PHOTOS and rep["failed"] == 0, rep
    assert bf["min_cosine"] >= 0.999, (arch, bf)
    card = json.loads((tmp / f"{arch}.json").read_text())
    assert card["precisions"]["bf16"]["fidelity"]["images"] == PHOTOS, card["precisions"]
    env = {"LOOKALIKE_MODELS": str(tmp)}
    masked, _ = run_json("models", env={**env, "LOOKALIKE_CPU_MASK": "avx512_bf16,amx_bf16"},
                         model=False, check=0)
    assert masked["auto_precision"]["precision"] == "fp32", masked
    if HAS_BF16:
        listed, _ = run_json("models", env=env, model=False, check=0)
        expect = ("bf16" if bf["meets_bar"] and bf["images_per_s"] > rep["fp32"]["images_per_s"]
                  else "fp32")
        assert listed["auto_precision"]["precision"] == expect, (listed, bf)
        print(f"{arch}: auto picks {expect} ({listed['auto_precision']['reason']}); fp32 on a CPU "
              f"without BF16")
    for f in tmp.iterdir():
        f.unlink()


def main():
    tmp = Path(tempfile.mkdtemp(prefix="lookalike-other-archs-"))
    try:
        for arch in ("vit_b_16", "vgg16"):
            check(arch, tmp)
        print("ok")
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    sys.exit(main())
