"""Fixture: index clothing-small/train (3,068 photos) into a shared collection, assert the summary."""
import shutil
from harness import DATASET, GALLERY_COLLECTION, images, run_json

shutil.rmtree(GALLERY_COLLECTION, ignore_errors=True)
summary, proc = run_json("index", DATASET / "train", collection=GALLERY_COLLECTION, check=0)
n = len(images("train"))
print(proc.stdout)
assert n == 3068, n
assert summary["scanned"] == n, summary
assert summary["added"] == n and summary["embedded"] == n, summary
assert summary["failed"] == 0 and summary["updated"] == 0, summary
assert summary["count"] == n, summary
print(f"indexed {n} images at {summary['images_per_s']:.1f} images/s "
      f"({summary['model_threads']} inference threads, {summary['decode_threads']} decode threads)")
