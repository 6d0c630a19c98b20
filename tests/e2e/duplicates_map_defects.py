"""Defects a review found in `lookalike duplicates` and `lookalike map`, on clothing-small photos:
- a head trained with `lookalike train` and saved as `mobilenet_v2.pt` is not the measured
  MobileNetV2: the default threshold is reported as not measured for it (decided by the model
  card's `training` section, not the name), while the pretrained model's stays "default for
  mobilenet_v2";
- the text summary prints --threshold 0.999 as 0.999 (as --json does), not rounded to 1.00;
- `map --method tsne` on fewer than 4 points says t-SNE needs 4 and to use --method pca, instead
  of suggesting a perplexity that then needs 4 points itself."""
import json
import shutil

from harness import MODEL, images, run, run_json, tempdir

work = tempdir("duplicates-map-defects")
photos = images("train", classes=["dress", "hat", "shoes"], per_class=2)
base_collection = work / "base"
run("index", *photos, "-q", collection=base_collection, check=0)

# --- A trained head named like the base is not the measured model ----------------------------
labels = work / "labels"
for f in images("train", classes=["dress", "hat"], per_class=4):
    (labels / f.parent.name).mkdir(parents=True, exist_ok=True)
    shutil.copy(f, labels / f.parent.name / f.name)
head = work / "heads" / "mobilenet_v2.pt"
head.parent.mkdir()
run("train", "--labels", labels, "--base", MODEL, "--out", head, "--epochs", 1, "--dim", 8,
    "--val-fraction", 0, "--cache", work / "cache", model=False, check=0)
assert json.loads(head.with_suffix(".json").read_text())["training"], "a trained head's card"
head_collection = work / "head"
run("index", *photos, "-q", collection=head_collection, model=head, check=0)

out, _ = run_json("duplicates", collection=head_collection, model=False, check=0)
source = out["summary"]["threshold_source"]
assert source.startswith("default, not measured for mobilenet_v2"), source
assert "trained by lookalike train" in source, source
out, _ = run_json("duplicates", collection=base_collection, model=False, check=0)
assert out["summary"]["threshold_source"] == "default for mobilenet_v2", out["summary"]
print(f"trained head named mobilenet_v2: {source!r}; the pretrained one: measured")

# --- The text summary prints the threshold as given -------------------------------------------
proc = run("duplicates", "--threshold", 0.999, collection=base_collection, model=False, check=0)
assert "threshold 0.999," in proc.stdout, proc.stdout
out, _ = run_json("duplicates", "--threshold", 0.999, collection=base_collection, model=False,
                  check=0)
assert out["summary"]["threshold"] == 0.999, out["summary"]
print("--threshold 0.999: 'threshold 0.999' in the text summary, as in --json")

# --- t-SNE on fewer than 4 points ------------------------------------------------------------
few = work / "few"
run("index", *photos[:3], "-q", collection=few, check=0)
proc = run("map", "--method", "tsne", "--out", work / "few.svg", collection=few, model=False,
           check=2)
assert "at least 4 points" in proc.stderr and "--method pca" in proc.stderr, proc.stderr
assert "--perplexity" not in proc.stderr, proc.stderr
assert not (work / "few.svg").exists()
run("map", "--out", work / "few.svg", collection=few, model=False, check=0)
print("map --method tsne on 3 points: 'needs at least 4 points; use --method pca'; PCA draws it")
