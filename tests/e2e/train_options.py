"""`lookalike train` options on a small CSV-labelled set (4 labels x 15 clothing-small photos):
semi-hard mining, the MLP head, --val-split by-label, and the card and JSON records they leave;
--full's mechanics (its card, JSON records, reembed decoding in full, refusals: an architecture
without a known last stage, --full-epochs 0). Quality is e2e_train's business; here the
held-out labels' Recall@1 must only show that the embedding did not collapse (4 labels: chance
is about 0.25 for the held-out label's images among all 60)."""
import json
import shutil
from pathlib import Path

from harness import MODEL, images, json_lines, run, tempdir

work = tempdir("train-options")
files = images("train", classes=["dress", "hat", "shoes", "shorts"], per_class=15)
manifest = work / "labels.csv"
manifest.write_text("path,kind\n" + "".join(f"{p},{p.parent.name}\n" for p in files))
out = work / "small.pt"
proc = run("train", "--labels", manifest, "--label-column", "kind", "--base", MODEL, "--out", out,
           "--mining", "semi-hard", "--head", "mlp", "--hidden", 64, "--dim", 32,
           "--val-split", "by-label", "--val-fraction", 0.25, "--epochs", 3,
           "--labels-per-batch", 3, "--images-per-label", 4, "--cache", work / "cache", "--json",
           model=False, check=0)
records = json_lines(proc.stdout)
assert [r["type"] for r in records][-1] == "train", records
epochs = [r for r in records if r["type"] == "train_epoch"]
assert len(epochs) == 3 and all(r["loss"] >= 0 for r in epochs), epochs
t = json.loads(out.with_suffix(".json").read_text())["training"]
assert t["mining"] == "semi-hard" and t["head"]["type"] == "mlp" and t["head"]["hidden_dim"] == 64, t
v = t["validation"]
assert v["split"] == "by-label" and v["images"] == 15 and v["train_images"] == 45, v
assert v["recall_at_1"] > 0.5, v
emb = json_lines(run("embed", files[0], "--json", model=out, check=0).stdout)[0]
assert emb["dim"] == 32 and abs(sum(x * x for x in emb["embedding"]) - 1) < 1e-4, emb
print(f"semi-hard, mlp head, by-label split: held-out label Recall@1 {v['recall_at_1']:.3f}")

# --- --full on the same small set: mechanics only (e2e_train measures quality) ---------------
full = work / "full.pt"
proc = run("train", "--labels", manifest, "--label-column", "kind", "--base", MODEL, "--out", full,
           "--full", "--full-epochs", 2, "--epochs", 2, "--val-fraction", 0.25,
           "--labels-per-batch", 3, "--images-per-label", 4, "--cache", work / "cache", "--json",
           model=False, check=0)
records = json_lines(proc.stdout)
phases = [(r["phase"], r["epoch"]) for r in records if r["type"] == "train_epoch"]
assert phases == [("head", 1), ("head", 2), ("full", 1), ("full", 2)], phases
card = json.loads(full.with_suffix(".json").read_text())
t = card["training"]
ft = t["fine_tune"]
assert ft["stage"] == "features[14:19]" and ft["epochs"] == 2, ft
assert ft["augmentation"]["horizontal_flip"] == 0.5 and "color_jitter" in ft["augmentation"], ft
assert t["fine_tuned"] == (ft["best_epoch"] > 0), t
assert [e["phase"] for e in t["validation"]["per_epoch"]] == ["head", "head", "full", "full"], t
assert t["validation"]["recall_at_1"] == max(e["val_recall_at_1"] for e in t["validation"]["per_epoch"])
emb = json_lines(run("embed", files[0], "--json", model=full, check=0).stdout)[0]
assert emb["dim"] == 256 and abs(sum(x * x for x in emb["embedding"]) - 1) < 1e-4, emb
if t["fine_tuned"]:
    # A changed backbone makes the cached base embeddings stale: reembed decodes every image.
    coll = work / "coll"
    run("index", *files[:6], collection=coll, check=0)
    r = json_lines(run("reembed", "--out", work / "coll-full", "--cache", work / "cache", "--json",
                       collection=coll, model=full, check=0).stdout)[-1]
    assert not r["head_only"] and r["from_cache"] == 0 and r["decoded"] == 6, r
print(f"--full: 2 head + 2 fine-tuning epochs of {ft['stage']}, kept epoch {ft['best_epoch']}, "
      f"validation Recall@1 {t['validation']['recall_at_1']:.3f}")

# An architecture whose last stage lookalike does not know, and a bad --full-epochs: exit 2.
other = work / "models"
other.mkdir()
shutil.copy(MODEL, other / "other.pt")
other_card = json.loads(Path(MODEL).with_suffix(".json").read_text())
other_card["name"], other_card["architecture"] = "other", "vit_b_16"
(other / "other.json").write_text(json.dumps(other_card))
proc = run("train", "--labels", manifest, "--label-column", "kind", "--base", other / "other.pt",
           "--out", work / "x.pt", "--full", "--epochs", 1, "--cache", work / "cache", model=False,
           check=2)
assert "--full" in proc.stderr and "vit_b_16" in proc.stderr, proc.stderr
proc = run("train", "--labels", manifest, "--label-column", "kind", "--base", MODEL, "--out",
           work / "x.pt", "--full", "--full-epochs", 0, model=False, check=2)
assert "--full-epochs" in proc.stderr, proc.stderr
assert not (work / "x.pt").exists()
shutil.rmtree(work, ignore_errors=True)
