"""Reduced-precision defects a review found, through the real binary (docs/precision.md): which
collections accept which precision after a calibration changes, `info`'s two precisions, `auto`
with a missing companion archive, calibration records over too few or unlabelled photos, bad
cards in `models`, and the messages of bad arguments. Each case runs on a copy of the exported
MobileNetV2 and its card in a temporary folder, with real cards written into it."""
import json
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

from harness import DATASET, MODEL, run, run_json

SRC = Path(MODEL)
# As `lookalike models calibrate` records a precision that meets the bar, on enough photos, and
# marked as far faster than FP32 so that auto takes it wherever the CPU runs BF16.
MEETS = {"min_cosine": 0.9997, "mean_cosine": 0.9999, "images": 372, "labelled": True,
         "retrieval_measured": True, "recall_at_1_delta": 0.0027, "map_delta": 0.001,
         "meets_bar": True, "worst_file": "x.jpg", "measured_at": "2026-12-05T07:12:00Z"}
BELOW = {**MEETS, "min_cosine": 0.99, "meets_bar": False}


def copy_model(dst):
    dst.mkdir(parents=True)
    for f in SRC.parent.glob(SRC.stem + ".*"):
        if f.suffix in (".pt", ".json"):
            shutil.copy(f, dst / f.name)
    return dst / SRC.name


def card_path(model):
    return model.with_suffix(".json")


def set_fidelity(model, fidelity):
    card = json.loads(card_path(model).read_text())
    bf16 = card["precisions"]["bf16"]
    bf16.pop("fidelity", None)
    if fidelity is not None:
        bf16["fidelity"] = fidelity
        bf16["images_per_s"] = 1000.0
        card["precisions"]["fp32"] = {"images_per_s": 10.0}
    card_path(model).write_text(json.dumps(card, indent=2))


def stored_model_ids(coll):
    con = sqlite3.connect(f"file:{coll / 'catalog.db'}?mode=ro", uri=True)
    try:
        return {row[0] for row in con.execute("SELECT DISTINCT model_id FROM embeddings")}
    finally:
        con.close()


def info(coll, model, precision):
    out, _ = run_json("info", "--precision", precision, collection=coll, model=model, check=0)
    return out


def calibrated_after_bf16_index(tmp, photos):
    """Case A: built at bf16 while uncalibrated (id +bf16); a later calibration that makes bf16
    meet the bar must not lock the collection out of bf16."""
    model = copy_model(tmp / "a")
    coll = tmp / "coll-a"
    run("index", *photos[:3], "--precision", "bf16", collection=coll, model=model, check=0)
    built = info(coll, model, "bf16")["model_id"]
    assert built.endswith("+bf16"), built
    set_fidelity(model, MEETS)
    res, _ = run_json("search", photos[0], "-k", 1, "--precision", "bf16", collection=coll,
                      model=model, check=0)
    assert res["results"][0]["path"] == str(photos[0]), res
    # Added vectors are stored under the collection's id, not this run's (now without +bf16).
    run("index", *photos[3:5], "--precision", "bf16", collection=coll, model=model, check=0)
    assert stored_model_ids(coll) == {built}, stored_model_ids(coll)
    refused = run("search", photos[0], "--precision", "fp32", collection=coll, model=model,
                  check=1)
    assert "pass --precision bf16 as it was built" in refused.stderr, refused.stderr
    i = info(coll, model, "fp32")
    assert i["collection_precision"] == "bf16" and i["precision"] == "fp32", i
    assert i["precision_accepted"] is False and "--precision bf16" in i["precision_refusal"], i
    assert i["model_id"] == built and i["precision_reason"], i  # existing keys kept
    i = info(coll, model, "bf16")
    assert i["precision_accepted"] is True and i["precision_refusal"] is None, i
    human = run("info", "--precision", "fp32", collection=coll, model=model, check=0).stdout
    line = next(x for x in human.splitlines() if x.startswith("precision"))
    assert "collection: bf16" in line and "this run: fp32" in line and "refused" in line, line
    print("case A: +bf16 collection still takes --precision bf16 after calibration; info: " + line)


def fp32_collection_after_bf16_drops(tmp, photos):
    """Case B: built at fp32; bf16 interchangeable is accepted, below the bar it is refused with
    a hint that says what the collection was built at and to pass --precision fp32."""
    model = copy_model(tmp / "b")
    coll = tmp / "coll-b"
    run("index", *photos[:3], "--precision", "fp32", collection=coll, model=model, check=0)
    set_fidelity(model, MEETS)
    run("search", photos[0], "--precision", "bf16", collection=coll, model=model, check=0)
    set_fidelity(model, BELOW)
    refused = run("search", photos[0], "--precision", "bf16", collection=coll, model=model,
                  check=1)
    assert "interchangeable with it at the time" in refused.stderr, refused.stderr
    assert "pass --precision fp32" in refused.stderr, refused.stderr
    i = info(coll, model, "bf16")
    assert i["collection_precision"] == "fp32 (or a precision interchangeable with it)", i
    assert i["precision"] == "bf16" and i["precision_accepted"] is False, i
    assert "--precision fp32" in i["precision_refusal"], i
    print("case B: fp32 collection refuses a bf16 below the bar, naming --precision fp32")


def missing_companion(tmp, photos):
    """auto skips a precision whose archive file is gone; --precision bf16 names the file."""
    model = copy_model(tmp / "c")
    set_fidelity(model, MEETS)
    (model.parent / (SRC.stem + ".bf16.pt")).unlink()
    run("embed", photos[0], model=model, check=0)
    out, _ = run_json("models", env={"LOOKALIKE_MODELS": str(model.parent)}, model=False, check=0)
    assert out["auto_precision"]["precision"] == "fp32", out
    assert "is missing" in out["auto_precision"]["reason"], out
    assert out["missing_archives"] == [f"bf16: {SRC.stem}.bf16.pt"], out
    human = run("models", env={"LOOKALIKE_MODELS": str(model.parent)}, model=False, check=0)
    assert "ARCHIVE MISSING" in human.stdout, human.stdout
    bad = run("embed", photos[0], "--precision", "bf16", model=model, check=1)
    assert "missing bf16 archive" in bad.stderr, bad.stderr
    print("missing bf16 archive: auto runs fp32 and says why; --precision bf16 names the file")


def calibration_limits(tmp):
    """One photo cannot make a record that meets; unlabelled photos say Recall@1/mAP were not
    measured."""
    model = copy_model(tmp / "d")
    rep, proc = run_json("models", "calibrate", DATASET / "test", "--limit", "1", model=model,
                         check=0)
    assert rep["images"] == 1 and rep["precisions"]["bf16"]["meets_bar"] is False, rep
    assert "at least 50" in proc.stderr, proc.stderr
    rec = json.loads(card_path(model).read_text())["precisions"]["bf16"]["fidelity"]
    assert rec["meets_bar"] is False and "at least 50" in rec["note"], rec
    out, _ = run_json("models", env={"LOOKALIKE_MODELS": str(model.parent)}, model=False, check=0)
    assert "fewer than the 50" in out["auto_precision"]["reason"], out

    flat = tmp / "flat"
    flat.mkdir()
    for p in sorted((DATASET / "test").glob("*/*.jpg"))[:: 60][:3]:
        shutil.copy(p, flat / p.name)
    rep, proc = run_json("models", "calibrate", flat, model=model, check=0)
    assert rep["labelled"] is False, rep
    assert any("not measured" in n for n in rep["notes"]), rep["notes"]
    assert "Recall@1 and mAP not measured" in proc.stderr, proc.stderr
    rec = json.loads(card_path(model).read_text())["precisions"]["bf16"]["fidelity"]
    assert rec["retrieval_measured"] is False and "not measured" in rec["note"], rec
    print("calibrate: 1 photo is recorded below the bar; unlabelled photos say so")


def bad_cards(tmp):
    """A wrong type in a precisions entry, or a truncated card: `models` shows one BROKEN row,
    names the field, and still lists the other models."""
    cases = {"numarch": lambda c: c["precisions"]["bf16"].__setitem__("archive", 5),
             "strcos": lambda c: c["precisions"]["bf16"].__setitem__(
                 "fidelity", {"min_cosine": "high"})}
    for name, edit in cases.items():
        model = copy_model(tmp / name)
        card = json.loads(card_path(model).read_text())
        edit(card)
        card_path(model).write_text(json.dumps(card))
        shutil.copy(SRC, model.parent / "zzz.pt")
        other = json.loads((SRC.with_suffix(".json")).read_text())
        other["name"] = "zzz"
        other.pop("precisions", None)
        (model.parent / "zzz.json").write_text(json.dumps(other))
        env = {"LOOKALIKE_MODELS": str(model.parent)}
        out = run("models", env=env, model=False, check=0).stdout
        field = {"numarch": "precisions.bf16.archive",
                 "strcos": "precisions.bf16.fidelity.min_cosine"}[name]
        assert f"'{field}'" in out and "BROKEN" in out and "zzz" in out, out
        assert "json.exception" not in out, out
        bad = run("embed", next(DATASET.glob("test/*/*.jpg")), model=model, check=1)
        assert f"'{field}'" in bad.stderr and str(card_path(model)) in bad.stderr, bad.stderr
    model = copy_model(tmp / "trunc")
    text = card_path(model).read_text()
    card_path(model).write_text(text[: len(text) // 2])
    out = run("models", env={"LOOKALIKE_MODELS": str(model.parent)}, model=False, check=0).stdout
    assert out.count("BROKEN") == 1 and "not valid JSON" in out, out
    print("bad cards: one BROKEN row naming the field, the rest listed")


def messages(tmp):
    missing = run("models", "calibrate", tmp / "nonexistent", model=True, check=1)
    assert "no such file or directory" in missing.stderr, missing.stderr
    junk = tmp / "junk" / "a"
    junk.mkdir(parents=True)
    (junk / "fake.jpg").write_text("not a jpeg")
    (junk.parent / "b").mkdir()
    (junk.parent / "b" / "fake2.png").write_text("not a png")
    bad = run("models", "calibrate", junk.parent, model=True, check=1)
    assert "fake.jpg" in bad.stderr and "first failure" in bad.stderr, bad.stderr
    env = run("info", collection=tmp / "none", model=True, env={"LOOKALIKE_PRECISION": "fp16"},
              check=2)
    assert "LOOKALIKE_PRECISION" in env.stderr, env.stderr
    print("messages: missing folder, undecodable photos, LOOKALIKE_PRECISION")


def main():
    tmp = Path(tempfile.mkdtemp(prefix="lookalike-precision-defects-"))
    try:
        photos = sorted((DATASET / "test").glob("*/*.jpg"))[:: 50][:5]
        bad_cards(tmp)
        messages(tmp)
        calibrated_after_bf16_index(tmp, photos)
        fp32_collection_after_bf16_drops(tmp, photos)
        missing_companion(tmp, photos)
        calibration_limits(tmp)
        print("ok")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
