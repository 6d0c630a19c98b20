"""A second `index` run of the same folder embeds nothing; info and --id queries agree with it."""
from harness import DATASET, GALLERY_COLLECTION, run_json

summary, _ = run_json("index", DATASET / "train", collection=GALLERY_COLLECTION, check=0)
assert summary["embedded"] == 0, summary
assert summary["unchanged"] == 3068 and summary["added"] == 0 and summary["updated"] == 0, summary
assert summary["count"] == 3068, summary
info, _ = run_json("info", collection=GALLERY_COLLECTION, model=False, check=0)
assert info["count"] == 3068 and info["dim"] == 1280, info
assert info["metric"] == "cosine" and info["index_factory"] == "Flat", info
assert info["total_bytes"] >= info["catalog_bytes"] + info["index_bytes"] > 3068 * 1280 * 4, info
print(f"re-index: {summary['unchanged']} unchanged, 0 embedded, in {summary['seconds']:.1f} s")
