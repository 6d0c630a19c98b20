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


def switch_precision(tmp, model):
    """A collection's precision changes by `reembed` (docs/precision.md, "Which vectors mix"):
    on the uncalibrated card BF16 gets its own model id, so the copy refuses FP32 queries and
    says which --precision it needs; reembed without --model keeps the collection's model."""
    photos = sorted((DATASET / "test").glob("*/*.jpg"))[:: 40][:8]
    coll, coll_bf16, back = tmp / "coll", tmp / "coll-bf16", tmp / "coll-back"
    run("index", *photos, "--precision", "fp32", collection=coll, model=model, check=0)
    r, _ = run_json("reembed", "--out", coll_bf16, "--precision", "bf16", collection=coll,
                    model=False, check=0)
    assert r["precision"] == "bf16" and r["model_id"].endswith("+bf16"), r
    assert r["images"] == r["decoded"] == len(photos) and r["failed"] == [], r
    bad = run("search", photos[0], collection=coll_bf16, model=False, check=1)
    assert "--precision bf16" in bad.stderr and "reembed" in bad.stderr, bad.stderr
    res, _ = run_json("search", photos[0], "-k", 1, "--precision", "bf16", collection=coll_bf16,
                      model=False, check=0)
    hit = res["results"][0]
    assert hit["path"] == str(photos[0]) and hit["score"] > 0.9999, hit
    r, _ = run_json("reembed", "--out", back, "--precision", "fp32", collection=coll_bf16,
                    model=False, check=0)
    assert r["precision"] == "fp32" and "+" not in r["model_id"], r
    info, _ = run_json("info", collection=back, model=False, check=0)
    assert info["model_id"] == r["model_id"] and info["count"] == len(photos), info
    print(f"precision switch by reembed: {len(photos)} images fp32 -> bf16 (its own model id; "
          f"an FP32 search is refused: 'pass --precision bf16 as it was built') -> fp32 again")


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

        switch_precision(tmp, model)

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

        # The record names the archive it measured by the content hash model ids use (a replaced
        # archive voids it): the BF16 archive loaded as a model of its own has that digest.
        digest = written["precisions"]["bf16"]["fidelity"]["archive_digest"]
        probe = tmp / "probe"
        probe.mkdir()
        shutil.copy(tmp / (src.stem + ".bf16.pt"), probe / "probe.pt")
        (probe / "probe.json").write_text(json.dumps(
            {**{k: v for k, v in card.items() if k != "precisions"}, "name": "probe"}))
        out, _ = run_json("embed", photo, model=probe / "probe.pt", check=0)
        assert out["model"] == "probe@" + digest, (out["model"], digest)

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
