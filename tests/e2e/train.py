"""`lookalike train` and `lookalike reembed` through the real binary, on clothing-small.

- Bad input: a labels folder with one class, a CSV without the label column, an unknown base
  model: exit 1 with a message naming the folder, file or model.
- A linear head with batch-hard mining on MobileNetV2, trained on `train`: `lookalike eval` of
  the 372 test queries against the 3,068-photo `train` gallery must reach Recall@1 >= 0.83
  (pretrained MobileNetV2: 0.753); both figures are printed.
- Caching: a second run with the same seed decodes nothing and records the same metrics
  (determinism).
- --full (the same head, then MobileNetV2's last stage fine-tuned on augmented images) must
  score a higher Recall@1 than the head alone, by the same `lookalike eval`.
- reembed: a small collection indexed with the base model is re-embedded from the cache
  without decoding; an image missing from the cache is decoded and counted.
"""
import json
import shutil

from harness import (DATASET, FIXTURES, MODEL, copy_images, images, json_lines, run, run_json,
                     tempdir)

work = tempdir("train")
FULL_EPOCHS = 3
cache = work / "cache"


def train(*args, check=0):
    proc = run("train", *args, "--cache", cache, "--json", model=False, check=check)
    return json_lines(proc.stdout), proc


def summary(records):
    done = [r for r in records if r["type"] == "train"]
    assert len(done) == 1, records
    return done[0]


# --- Bad input -------------------------------------------------------------------------------
one_class = work / "one-class"
copy_images(images("train", classes=["dress"], per_class=5), one_class)
_, proc = train("--labels", one_class, "--base", MODEL, "--out", work / "x.pt", check=1)
assert str(one_class) in proc.stderr and "two labels" in proc.stderr, proc.stderr

csv = work / "no-label.csv"
csv.write_text("file,category\n" + "".join(f"{p},{p.parent.name}\n" for p in images("train", per_class=2)))
_, proc = train("--labels", csv, "--base", MODEL, "--out", work / "x.pt", check=1)
assert str(csv) in proc.stderr and "label" in proc.stderr and "category" in proc.stderr, proc.stderr

_, proc = train("--labels", DATASET / "train", "--base", "no_such_model", "--out", work / "x.pt",
                check=1)
assert "no_such_model" in proc.stderr and "not found" in proc.stderr, proc.stderr

_, proc = train("--labels", DATASET / "train", "--base", MODEL, "--out", work / "x.pt",
                "--mining", "hardest", check=2)
assert "--mining" in proc.stderr, proc.stderr
assert not (work / "x.pt").exists()
print("bad input: one class, missing label column, unknown base model, bad --mining refused")

# --- Training, caching, determinism -----------------------------------------------------------
out = work / "clothing_head.pt"
records, proc = train("--labels", DATASET / "train", "--base", MODEL, "--out", out, "--seed", 7,
                      "--epochs", 8)
first = summary(records)
epochs = [r for r in records if r["type"] == "train_epoch"]
assert first["images"] == 3068 and first["decoded"] == 3068 and first["cached"] == 0, first
assert epochs and all(0 <= r["val_recall_at_1"] <= 1 for r in epochs), epochs
card = json.loads(out.with_suffix(".json").read_text())
t = card["training"]
assert card["embedding_dim"] == 256 and card["normalized"] is True and "precisions" not in card
assert t["base_model"]["name"] == "mobilenet_v2" and t["head"]["type"] == "linear", t
assert t["loss"] == "triplet" and t["mining"] == "batch-hard" and t["margin"] == 0.2, t
assert len(t["labels"]["hash"]) == 32 and t["labels"]["classes"] == 10, t["labels"]
assert t["validation"]["recall_at_1"] == max(r["val_recall_at_1"] for r in epochs), t
assert t["best_epoch"] == max(r["epoch"] for r in epochs if r["best"]), t
print(f"trained in {first['seconds']:.1f} s ({len(epochs)} epochs, best {t['best_epoch']}), "
      f"validation Recall@1 {t['validation']['recall_at_1']:.3f}")

again_out = work / "clothing_head_again.pt"
records, _ = train("--labels", DATASET / "train", "--base", MODEL, "--out", again_out, "--seed", 7,
                   "--epochs", 8)
again = summary(records)
assert again["decoded"] == 0 and again["cached"] == 3068, again
t2 = json.loads(again_out.with_suffix(".json").read_text())["training"]
assert t2["validation"] == t["validation"] and t2["labels"] == t["labels"], (t2, t)
print("second run: 0 images decoded, 3068 from the cache, identical validation metrics")

# --- Quality, measured by lookalike eval ------------------------------------------------------
# The model a user keeps: every labelled image, the default 30 epochs (validation above showed
# they do not overfit; per-epoch validation Recall@1 on 10% is too noisy to pick an epoch by).
final = work / "clothing_final.pt"
records, _ = train("--labels", DATASET / "train", "--base", MODEL, "--out", final, "--seed", 7,
                   "--val-fraction", 0)
assert summary(records)["decoded"] == 0
# --full: the same head (same seed and options, from the cache), then the last stage fine-tuned
# on augmented images.
full = work / "clothing_full.pt"
records, _ = train("--labels", DATASET / "train", "--base", MODEL, "--out", full, "--seed", 7,
                   "--val-fraction", 0, "--full", "--full-epochs", FULL_EPOCHS)
full_summary = summary(records)
full_epochs = [r for r in records if r["type"] == "train_epoch" and r["phase"] == "full"]
assert full_summary["decoded"] == 0 and len(full_epochs) == FULL_EPOCHS, full_summary
assert full_summary["training"]["fine_tuned"], full_summary["training"]
print(f"--full: {FULL_EPOCHS} epochs fine-tuning {full_summary['training']['fine_tune']['stage']} "
      f"in {sum(r['seconds'] for r in full_epochs):.0f} s")

proc = run("eval", "--gallery", DATASET / "train", "--queries", DATASET / "test",
           "--model", MODEL, "--model", final, "--model", full, "--json", model=False, check=0,
           timeout=2400)
rows = {r["model"]: r["metrics"] for r in json_lines(proc.stdout) if r["type"] == "eval"}
base_r1, head_r1 = rows[str(MODEL)]["recall@1"], rows[str(final)]["recall@1"]
full_r1 = rows[str(full)]["recall@1"]
print(f"clothing-small, 372 test queries x 3068 train gallery: MobileNetV2 Recall@1 {base_r1:.3f} "
      f"mAP {rows[str(MODEL)]['mAP']:.3f}; + trained linear head Recall@1 {head_r1:.3f} "
      f"mAP {rows[str(final)]['mAP']:.3f}; + --full Recall@1 {full_r1:.3f} "
      f"mAP {rows[str(full)]['mAP']:.3f}")
assert head_r1 >= 0.83, f"trained Recall@1 {head_r1:.3f} < 0.83"
assert head_r1 > base_r1, (head_r1, base_r1)
assert full_r1 > head_r1, f"--full Recall@1 {full_r1:.3f} not above the head alone's {head_r1:.3f}"

# --- reembed ----------------------------------------------------------------------------------
small = images("train", classes=["dress", "shoes"], per_class=20)
coll = work / "coll"
run("index", *small, collection=coll, check=0)
proc = run("reembed", "--out", work / "coll-new", "--cache", cache, "--json", collection=coll,
           model=final, check=0)
r = json_lines(proc.stdout)[-1]
assert r["type"] == "reembed" and r["head_only"] and r["images"] == 40, r
assert r["from_cache"] == 40 and r["decoded"] == 0, r
# An image the cache has never seen (a test photo) is decoded, and said so.
extra = images("test", classes=["dress"], per_class=1)
run("index", *extra, collection=coll, check=0)
proc = run("reembed", "--out", work / "coll-new2", "--cache", cache, "--json", collection=coll,
           model=final, check=0)
r = json_lines(proc.stdout)[-1]
assert r["from_cache"] == 40 and r["decoded"] == 1 and r["failed"] == [], r
# The re-embedded vectors are the model's own: a file queries itself at similarity ~1.
for q in (small[0], extra[0]):
    proc = run("search", q, "-k", 1, "--json", collection=work / "coll-new2", model=final, check=0)
    hit = json_lines(proc.stdout)[0]["results"][0]
    assert hit["path"] == str(q) and hit["score"] > 0.9999, hit
print("reembed: 40 images from cached base embeddings, 0 decoded; 1 new image decoded")

# --- The card names its archive -----------------------------------------------------------------
# train records the archive's digest in the card (the id's DIGEST), so a crash between its two
# renames, which pairs the new archive with the old card, is refused at load, not run.
info, _ = run_json("info", collection=work / "coll-new2", model=final, check=0)
final_card = json.loads(final.with_suffix(".json").read_text())
assert info["model_id"] == f"{final_card['name']}@{final_card['archive_digest']}", (
    info["model_id"], final_card.get("archive_digest"))
assert card["archive_digest"] != final_card["archive_digest"], card["archive_digest"]
torn = work / "torn"
torn.mkdir()
shutil.copy(final, torn / "clothing_final.pt")
shutil.copy(out.with_suffix(".json"), torn / "clothing_final.json")  # the older run's card
proc = run("embed", small[0], model=torn / "clothing_final.pt", check=1)
assert (f"{torn / 'clothing_final.json'}: describes another archive (archive_digest "
        f"{card['archive_digest']}; {torn / 'clothing_final.pt'} is "
        f"{final_card['archive_digest']})") in proc.stderr, proc.stderr
shutil.copy(final.with_suffix(".json"), torn / "clothing_final.json")
run("embed", small[0], model=torn / "clothing_final.pt", check=0)
print("the card records its archive's digest; an older run's card beside it is refused")

shutil.rmtree(work, ignore_errors=True)
