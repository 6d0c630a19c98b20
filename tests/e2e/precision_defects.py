"""Reduced-precision defects a review found, through the real binary (docs/precision.md): which
collections accept which precision after a calibration changes, `info`'s two precisions, `auto`
with a missing companion archive, calibration records over too few or unlabelled photos, bad
cards in `models` (impossible figures, wrapped integers, unknown precision keys, an archive that
is not the precision's own, names with '+'), the file stem in `models`, the messages of bad
arguments, LOOKALIKE_CPU_MASK's spelling, `info --precision int8`, and a damaged BF16 archive whose
output is NaN (run, calibrated, replaced: the record's digest). Each case runs on a copy of the
exported MobileNetV2 and its card in a temporary folder, with real cards written into it."""
import json
import os
import shutil
import sqlite3
import struct
import sys
import tempfile
import zipfile
from pathlib import Path

from harness import DATASET, MODEL, json_lines, run, run_json

SRC = Path(MODEL)
# As `lookalike models calibrate` records a precision that meets the bar, on enough photos, and
# marked as far faster than FP32 so that auto takes it wherever the CPU runs BF16.
MEETS = {"min_cosine": 0.9997, "mean_cosine": 0.9999, "images": 372, "labelled": True,
         "retrieval_measured": True, "recall_at_1_delta": 0.0027, "map_delta": 0.001,
         "meets_bar": True, "worst_file": "x.jpg", "measured_at": "2026-12-05T07:12:00Z"}
BELOW = {**MEETS, "min_cosine": 0.99, "meets_bar": False}
CPU_FLAGS = set(open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split())
HAS_BF16 = bool({"avx512_bf16", "amx_bf16"} & CPU_FLAGS)


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


def damage(archive):
    """Overwrites the largest tensor of a TorchScript archive with 0xFF bytes (NaN in float32 and
    bfloat16), as a bad disk or download might: it still loads (the zip's CRC is not checked) and
    computes NaN."""
    with zipfile.ZipFile(archive) as z:
        big = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(archive.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[big.header_offset + 26:big.header_offset + 30])
    start = big.header_offset + 30 + name_len + extra_len
    data[start:start + big.file_size] = b"\xff" * big.file_size
    archive.write_bytes(bytes(data))


def auto_of(model, env=None):
    out, _ = run_json("models", env={"LOOKALIKE_MODELS": str(model.parent), **(env or {})},
                      model=False, check=0)
    return out["auto_precision"]


def non_finite_archive(tmp, photos):
    """A damaged BF16 archive whose output is NaN. Running it fails naming that archive (`embed`
    printed null and `search` found nothing, with exit status 0; errors named the FP32 archive).
    Calibrating it records a failure below the bar (it recorded min cosine 2.0, mean null and
    meets_bar true, and the card then failed to load for every command, fp32 included). The
    record names the archive's digest: with the good archive back, it is void."""
    model = copy_model(tmp / "nan")
    bf16 = model.parent / (SRC.stem + ".bf16.pt")
    coll = tmp / "coll-nan"
    run("index", *photos[:2], "--precision", "fp32", collection=coll, model=model, check=0)
    damage(bf16)
    for args, kw in ((["embed", photos[0]], {}), (["search", photos[0]], {"collection": coll})):
        bad = run(*args, "--precision", "bf16", model=model, check=1, **kw)
        assert f"{bf16}: 'forward' returned NaN or infinity" in bad.stderr, bad.stderr
        assert f"{model}:" not in bad.stderr, bad.stderr  # the FP32 archive did not run
    run("embed", photos[0], "--precision", "fp32", model=model, check=0)

    rep, proc = run_json("models", "calibrate", DATASET / "test", "--limit", "50", model=model,
                         check=0)
    assert rep["images"] == 50 and rep["precisions"]["bf16"]["meets_bar"] is False, rep
    assert any(str(bf16) in n and "NaN" in n for n in rep["notes"]), rep["notes"]
    assert str(bf16) in proc.stderr, proc.stderr
    text = card_path(model).read_text()
    assert "null" not in text, text  # how nlohmann writes NaN, which the card then refused
    rec = json.loads(text)["precisions"]["bf16"]["fidelity"]
    assert rec["meets_bar"] is False and str(bf16) in rec["failure"], rec
    assert "min_cosine" not in rec and "mean_cosine" not in rec, rec
    assert len(rec["archive_digest"]) == 16, rec
    run("embed", photos[0], "--precision", "fp32", model=model, check=0)  # the card loads
    run("embed", photos[0], model=model, check=0)  # auto passes over the failed bf16
    auto = auto_of(model)
    assert auto["precision"] == "fp32", auto
    assert "calibration failed" in auto["reason"] or not HAS_BF16, auto
    human = run("models", env={"LOOKALIKE_MODELS": str(model.parent)}, model=False, check=0)
    assert "bf16 (calibration failed, below the bar" in human.stdout, human.stdout

    # The good archive back, under a record that meets the bar but names the damaged archive's
    # digest: the record is void (not calibrated), and `models` says why.
    shutil.copy(SRC.parent / bf16.name, bf16)
    set_fidelity(model, {**MEETS, "archive_digest": rec["archive_digest"]})
    auto = auto_of(model)
    assert auto["precision"] == "fp32", auto
    assert "changed since it was calibrated" in auto["reason"] or not HAS_BF16, auto
    human = run("models", env={"LOOKALIKE_MODELS": str(model.parent)}, model=False, check=0)
    assert f"bf16 (not calibrated: its archive {bf16.name} changed" in human.stdout, human.stdout
    refused = run("search", photos[0], "--precision", "bf16", collection=coll, model=model,
                  check=1)
    assert "not interchangeable" in refused.stderr, refused.stderr
    # The same record without a digest (a card calibrated before digests): taken as before.
    set_fidelity(model, MEETS)
    if HAS_BF16:
        assert auto_of(model)["precision"] == "bf16"
    run("search", photos[0], "--precision", "bf16", collection=coll, model=model, check=0)
    print("NaN bf16 archive: embed/search fail naming it; calibrate records the failure; "
          "a replaced archive voids its record")


def cpu_mask_spelling(tmp):
    """LOOKALIKE_CPU_MASK entries are trimmed and lower-cased ("amx_bf16, avx512_bf16" did not
    mask avx512_bf16)."""
    model = copy_model(tmp / "mask")
    set_fidelity(model, MEETS)
    for mask in ("amx_bf16, avx512_bf16", " AVX512_BF16 ,AMX_BF16"):
        auto = auto_of(model, {"LOOKALIKE_CPU_MASK": mask})
        assert auto["precision"] == "fp32" and "CPU lacks" in auto["reason"], (mask, auto)
    if HAS_BF16:
        assert auto_of(model)["precision"] == "bf16"
    print("LOOKALIKE_CPU_MASK: spaces and capitals mask as the flags are spelt")


def info_impossible_precision(tmp, photos):
    """`info --precision int8` on a model without int8 said precision null with an empty reason."""
    coll = tmp / "coll-int8"
    run("index", photos[0], "--precision", "fp32", collection=coll, check=0)
    i, _ = run_json("info", "--precision", "int8", collection=coll, check=0)
    assert i["precision"] is None and "no int8 archive" in i["precision_reason"], i
    assert i["collection_precision"].startswith("fp32"), i
    text = run("info", "--precision", "int8", collection=coll, check=0).stdout
    line = next(l for l in text.splitlines() if l.startswith("precision"))
    assert "cannot run" in line and "no int8 archive" in line, text
    print("info --precision int8: " + i["precision_reason"][:80] + "...")


def bad_cards(tmp):
    """A wrong type in a precisions entry, or a truncated card: `models` shows one BROKEN row,
    names the field, and still lists the other models."""
    def put(key, value, where=lambda c: c["precisions"]["bf16"]):
        return lambda c: where(c).__setitem__(key, value)

    def rename_bf16(key):
        return lambda c: c["precisions"].__setitem__(key, c["precisions"].pop("bf16"))

    cases = {"numarch": put("archive", 5),
             "strcos": put("fidelity", {"min_cosine": "high"}),
             # impossible figures, wrapped integers and unknown keys (they were accepted)
             "cos25": put("fidelity", {**MEETS, "min_cosine": 2.5}),
             "dimwrap": put("embedding_dim", 4294968576, where=lambda c: c),
             "bigcrop": put("input_size", 2000000, where=lambda c: c),
             "fp16key": rename_bf16("fp16"),
             "BF16key": rename_bf16("BF16"),
             # an archive that is not the precision's own (it hid models from `models`)
             "ownarch": put("archive", SRC.name),
             "otherarch": put("archive", "zzz.pt")}
    fields = {"numarch": "precisions.bf16.archive", "strcos": "precisions.bf16.fidelity.min_cosine",
              "cos25": "precisions.bf16.fidelity.min_cosine", "dimwrap": "embedding_dim",
              "bigcrop": "input_size", "fp16key": "precisions.fp16", "BF16key": "precisions.BF16",
              "ownarch": "precisions.bf16.archive", "otherarch": "precisions.bf16.archive"}
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
        field = fields[name]
        assert f"'{field}'" in out and "BROKEN" in out and "zzz" in out, out
        assert "json.exception" not in out, out
        listed = json_lines(run("models", "--json", env=env, model=False, check=0).stdout)
        assert {m["name"] for m in listed} == {SRC.stem, "zzz"}, listed
        assert "error" not in next(m for m in listed if m["name"] == "zzz"), listed
        bad = run("embed", next(DATASET.glob("test/*/*.jpg")), model=model, check=1)
        assert f"'{field}'" in bad.stderr and str(card_path(model)) in bad.stderr, bad.stderr
    model = copy_model(tmp / "trunc")
    text = card_path(model).read_text()
    card_path(model).write_text(text[: len(text) // 2])
    out = run("models", env={"LOOKALIKE_MODELS": str(model.parent)}, model=False, check=0).stdout
    assert out.count("BROKEN") == 1 and "not valid JSON" in out, out
    names_and_stems(tmp)
    print("bad cards: one BROKEN row naming the field, the rest listed")


def names_and_stems(tmp):
    """The file stem selects a model (--model NAME): `models` shows it for every model, as it did
    for broken ones (it showed the card's name for good ones), and the card's name, the model id's
    first part, as card_name. A name with '+' or '@' is refused (a '+' in the name locked a
    collection out of its own model)."""
    d = tmp / "stems"
    d.mkdir()
    card = json.loads(SRC.with_suffix(".json").read_text())
    card.pop("precisions")
    for stem, name in (("renamed", SRC.stem), ("my+net", "my+net"), ("my@net", "my@net")):
        shutil.copy(SRC, d / f"{stem}.pt")
        (d / f"{stem}.json").write_text(json.dumps({**card, "name": name}))
    env = {"LOOKALIKE_MODELS": str(d)}
    listed = {m["name"]: m for m in json_lines(
        run("models", "--json", env=env, model=False, check=0).stdout)}
    assert set(listed) == {"renamed", "my+net", "my@net"}, listed
    assert "error" not in listed["renamed"], listed["renamed"]
    assert listed["renamed"]["card_name"] == SRC.stem, listed["renamed"]
    for bad in ("+", "@"):
        err = listed[f"my{bad}net"]["error"]
        assert "'name'" in err and f"contains '{bad}'" in err, err
    human = run("models", env=env, model=False, check=0).stdout
    assert human.count("BROKEN") == 2, human
    assert any(line.startswith("renamed ") for line in human.splitlines()), human
    assert f"card name: {SRC.stem}" in human, human
    out, _ = run_json("embed", next(DATASET.glob("test/*/*.jpg")), "--model", "renamed", env=env,
                      model=False, check=0)
    assert out["model"].startswith(SRC.stem + "@"), out  # the same model as the original


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
        cpu_mask_spelling(tmp)
        info_impossible_precision(tmp, photos)
        non_finite_archive(tmp, photos)
        calibrated_after_bf16_index(tmp, photos)
        fp32_collection_after_bf16_drops(tmp, photos)
        missing_companion(tmp, photos)
        calibration_limits(tmp)
        print("ok")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
