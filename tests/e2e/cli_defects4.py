"""Regression tests, through the real binary, for defects left open by earlier reviews and found
by the sixth: `models calibrate` on a manifest that lists a photo twice (it fell back to
unlabelled photos and dropped every label instead of refusing); on clothing-small photos."""
import csv
import shutil
from pathlib import Path

from harness import MODEL, copy_images, images, run, tempdir

work = tempdir("cli-defects4")
photos = copy_images(images("test", classes=["shoes", "hat"], per_class=3), work / "photos")
assert len(photos) == 6

# 1. models calibrate: a manifest that repeats a path is refused like eval's and train's, naming
#    both rows; the card is left as it was. Without the repeat it calibrates, labelled.
models = work / "models"
models.mkdir()
src = Path(MODEL)
for f in src.parent.glob(src.stem + ".*"):  # the archive, its BF16 companion and the card
    shutil.copy(f, models / f.name)
model = models / src.name
card_before = model.with_suffix(".json").read_bytes()
labels = work / "photos" / "labels.csv"
rel = [p.relative_to(work / "photos") for p in photos]
with open(labels, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file", "label"])
    for p in rel:
        w.writerow([p, p.parent.name])
    w.writerow([rel[1], "hat"])
proc = run("models", "calibrate", labels, model=model, check=1)
assert f"{labels}: row 3 and row 8 both list {photos[1]}; list each image once" in \
    proc.stderr, proc.stderr
assert model.with_suffix(".json").read_bytes() == card_before
unique = work / "photos" / "unique.csv"
unique.write_text("".join(labels.read_text().splitlines(keepends=True)[:-1]))
proc = run("models", "calibrate", unique, "--dry-run", model=model, check=0)
assert "(labelled, leave-one-out)" in proc.stdout, proc.stdout
assert model.with_suffix(".json").read_bytes() == card_before
print("models calibrate: a repeated manifest path is refused with both rows; the card unchanged")
