"""Defects a review found in `lookalike train` (docs/train.md), on 2 labels x 4 clothing-small
photos, one epoch each run (a few seconds in all):
- --out never replaces the base model (any spelling of its .pt, or a link to its .json), and
  replaces an existing model only with --force; the old files stay whole when refused;
- what the labelled set leaves out (a manifest row naming a missing file, an empty label, a photo
  directly in the labels folder) is warned about, counted in the summary and --json, exit 3;
- option values that would make LibTorch fail to allocate (or a learning rate that overflows
  the weights) are usage errors naming the option, exit 2, without a stack trace."""
import hashlib
import shutil
from pathlib import Path

from harness import MODEL, images, json_lines, run, tempdir

work = tempdir("train-defects")
base = work / "models" / "base.pt"
base.parent.mkdir()
shutil.copy(MODEL, base)
shutil.copy(Path(MODEL).with_suffix(".json"), base.with_suffix(".json"))
labels = work / "labels"
for f in images("train", classes=["dress", "hat"], per_class=4):
    (labels / f.parent.name).mkdir(parents=True, exist_ok=True)
    shutil.copy(f, labels / f.parent.name / f.name)
FAST = ["--epochs", 1, "--val-fraction", 0, "--cache", work / "cache"]


def digest(*paths):
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def train(out, *extra, labels_arg=labels, dim=8, check=0):
    return run("train", "--labels", labels_arg, "--base", base, "--out", out, "--dim", dim, *FAST,
               *extra, model=False, check=check)


# --- 1. --out: the base, and existing models --------------------------------------------------
first = work / "first.pt"
train(first)
before = digest(base, base.with_suffix(".json"), first, first.with_suffix(".json"))
(work / "alias.json").symlink_to(base.with_suffix(".json"))
for out in (base, work / "models" / ".." / "models" / "base.pt", work / "alias.pt"):
    for force in ([], ["--force"]):
        proc = train(out, *force, check=2)
        assert "is the base model" in proc.stderr, proc.stderr
proc = train(first, dim=16, check=2)
assert "already exists" in proc.stderr and "--force" in proc.stderr, proc.stderr
assert "no longer match" in proc.stderr, proc.stderr
# Only the card left: still an existing model.
lone = work / "lone.pt"
lone.with_suffix(".json").write_text("{}")
proc = train(lone, check=2)
assert "lone.json already exists" in proc.stderr, proc.stderr
assert digest(base, base.with_suffix(".json"), first, first.with_suffix(".json")) == before
proc = train(first, "--force", "--json", dim=16)
assert json_lines(proc.stdout)[-1]["training"]["head"]["output_dim"] == 16
assert digest(first)[0] != before[2]
# Written through temporary names beside --out, none of them left behind.
assert sorted(p.name for p in work.iterdir() if "tmp" in p.name) == [], list(work.iterdir())
print("--out: base refused (3 spellings), existing model refused without --force")

# --- 2. What the labelled set leaves out: warned, counted, exit 3 ----------------------------
photos = sorted(labels.glob("*/*.jpg"))
manifest = work / "labels.csv"
manifest.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in photos) +
                    f"{labels / 'missing.jpg'},hat\n{images('train', ['shoes'], 1)[0]},\n")
proc = train(work / "csv.pt", "--json", labels_arg=manifest, check=3)
assert "missing.jpg" in proc.stderr and "file not found" in proc.stderr, proc.stderr
assert "empty 'label'" in proc.stderr, proc.stderr
summary = json_lines(proc.stdout)[-1]
assert summary["skipped"]["unreadable"] == 1 and summary["skipped"]["empty_label"] == 1, summary
assert len(summary["skipped"]["entries"]) == 2 and summary["images"] == 8, summary
assert (work / "csv.pt").exists(), "exit 3 still writes the model"
shutil.copy(photos[0], labels / "stray.jpg")
proc = train(work / "folder.pt", labels_arg=labels, check=3)
assert "stray.jpg" in proc.stderr, proc.stderr
assert "1 left out" in proc.stdout and "no label" in proc.stdout, proc.stdout
(labels / "stray.jpg").unlink()
print("labelled set: missing file, empty label, unlabelled photo: warned, counted, exit 3")

# --- 3. Bounds: usage errors, no LibTorch allocator trace ------------------------------------
for args, option in ((["--dim", 2_000_000_000], "--dim"),
                     (["--head", "mlp", "--hidden", 2_000_000_000], "--hidden"),
                     (["--images-per-label", 300_000_000], "--images-per-label"),
                     (["--labels-per-batch", 100, "--mining", "semi-hard"], "--labels-per-batch"),
                     (["--lr", 1e30], "--lr"), (["--full-lr", 5], "--full-lr")):
    proc = run("train", "--labels", labels, "--base", base, "--out", work / "bound.pt", *args,
               model=False, check=2)
    assert option in proc.stderr and "frame #" not in proc.stderr, (args, proc.stderr)
assert not (work / "bound.pt").exists()
print("bounds: --dim, --hidden, P x K, --lr, --full-lr refused, exit 2")
