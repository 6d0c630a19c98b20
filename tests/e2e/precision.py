"""Reduced precision through the real binary (docs/precision.md): calibrate a copy of the exported
MobileNetV2 on clothing-small test photos, check the recorded fidelity, and check what auto picks
with and without the CPU's BF16 features (LOOKALIKE_CPU_MASK simulates a CPU without them)."""
import json
import shutil
import sys
import tempfile
from pathlib import Path

from harness import DATASET, MODEL, run, run_json

CPU_FLAGS = set(open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split())
HAS_BF16 = bool({"avx512_bf16", "amx_bf16"} & CPU_FLAGS)
MASK = {"LOOKALIKE_CPU_MASK": "avx512_bf16,amx_bf16"}


def main():
    tmp = Path(tempfile.mkdtemp(prefix="lookalike-precision-"))
    try:
        src = Path(MODEL)
        for f in src.parent.glob(src.stem + ".*"):
            shutil.copy(f, tmp / f.name)
        model = tmp / src.name
        card = json.loads((tmp / (src.stem + ".json")).read_text())
        assert card["precisions"]["bf16"]["archive"] == src.stem + ".bf16.pt", card

        # Not calibrated yet: auto stays on fp32 and says why.
        out, _ = run_json("models", env={"LOOKALIKE_MODELS": str(tmp)}, model=False, check=0)
        assert out["auto_precision"]["precision"] == "fp32", out
        assert "not measured" in out["auto_precision"]["reason"], out

        rep, _ = run_json("models", "calibrate", DATASET / "test", "--limit", "160", model=model,
                          check=0, timeout=900)
        bf = rep["precisions"]["bf16"]
        print(f"calibrate on {rep['images']} photos: fp32 {rep['fp32']['images_per_s']:.1f} "
              f"images/s, bf16 {bf['images_per_s']:.1f} images/s, min cosine {bf['min_cosine']:.6f}, "
              f"mean {bf['mean_cosine']:.6f}, Recall@1 delta {bf['recall_at_1_delta']:+.4f}, "
              f"mAP delta {bf['map_delta']:+.4f}, meets bar {bf['meets_bar']}")
        assert rep["images"] == 160 and rep["labelled"], rep
        assert 0.99 < bf["min_cosine"] <= bf["mean_cosine"] <= 1.0 + 1e-6, bf
        assert bf["meets_bar"] == (bf["min_cosine"] >= 0.999 and abs(bf["recall_at_1_delta"]) <= 0.005
                                   and abs(bf["map_delta"]) <= 0.005), bf
        written = json.loads((tmp / (src.stem + ".json")).read_text())
        assert written["precisions"]["bf16"]["fidelity"]["images"] == 160, written

        # A CPU without BF16 features: auto picks fp32 whatever the card says.
        info, _ = run_json("models", env={"LOOKALIKE_MODELS": str(tmp), **MASK}, model=False,
                           check=0)
        assert info["auto_precision"]["precision"] == "fp32", info
        assert "CPU lacks" in info["auto_precision"]["reason"] or not bf["meets_bar"], info
        if HAS_BF16 and bf["meets_bar"]:
            unmasked, _ = run_json("models", env={"LOOKALIKE_MODELS": str(tmp)}, model=False,
                                   check=0)
            expect = "bf16" if bf["images_per_s"] > rep["fp32"]["images_per_s"] else "fp32"
            assert unmasked["auto_precision"]["precision"] == expect, (unmasked, rep)

        # Same photo through fp32 and bf16: the embeddings agree to the recorded bar.
        photo = sorted((DATASET / "test").glob("*/*.jpg"))[0]
        npy = {}
        for p in ("fp32", "bf16"):
            npy[p] = tmp / f"{p}.npy"
            run("embed", photo, "--npy", npy[p], "--precision", p, model=model, check=0)
        import numpy as np
        a, b = np.load(npy["fp32"])[0], np.load(npy["bf16"])[0]
        cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        print(f"{photo.name}: fp32 vs bf16 cosine {cos:.6f}")
        assert cos >= bf["min_cosine"] - 1e-6, cos

        # A precision the card does not list: a clear error naming the card and the fix.
        bad = run("embed", photo, "--precision", "int8", model=model, check=1)
        assert "no int8 archive" in bad.stderr and "not offered" in bad.stderr, bad.stderr
        assert "docs/precision.md" in bad.stderr, bad.stderr
        bad = run("embed", photo, "--precision", "fp16", model=model, check=2)
        print("ok")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
