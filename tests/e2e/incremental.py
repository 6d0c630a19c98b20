"""Incremental indexing through the real binary: unchanged files are skipped by content hash,
changed files re-embedded, identical content reuses its embedding, vanished files reported and
removed with --prune, CSV manifests attach metadata, bad files are reported and never stop a run."""
import shutil
from PIL import Image
from harness import copy_images, images, run, run_json, tempdir

work = tempdir("incremental")
folder = work / "photos"
coll = work / "collection"
files = copy_images(images("train", classes=["shoes", "hat", "pants", "dress"], per_class=10), folder)
assert len(files) == 40


def index(*args, code=0):
    summary, _ = run_json("index", *args, collection=coll, check=code)
    return summary


s = index(folder, "--batch-size", "8")
assert (s["added"], s["embedded"], s["unchanged"], s["failed"]) == (40, 40, 0, 0), s
# Stage timings (docs/cli.md): 40 images at a batch of 8 commit five batches with two passes in
# flight (auto, two threads), so a steady-state rate exists (the 24 after the second commit);
# one decode worker fits in the run's wall time, the passes in twice it.
st = s["stages"]
assert s["passes"] == min(2, s["model_threads"]), s
assert 0 < st["prepare_s"] <= s["seconds"] and 0 < st["embed_s"] <= 2 * s["seconds"], s
assert 0 < st["first_batch_s"] <= s["seconds"] and st["steady_images_per_s"] > 0, s

s = index(folder)
assert (s["added"], s["updated"], s["embedded"], s["unchanged"]) == (0, 0, 0, 40), s
# Nothing embedded: no first batch, no steady state.
assert s["stages"]["first_batch_s"] == 0 and s["stages"]["steady_images_per_s"] == 0, s

# One new file: exactly one embedding.
extra = images("train", classes=["skirt"], per_class=1)[0]
shutil.copy2(extra, folder / "skirt-new.jpg")
s = index(folder)
assert (s["added"], s["embedded"], s["unchanged"]) == (1, 1, 40), s

# Same bytes under a new name: added, embedding reused, nothing embedded.
shutil.copy2(files[0], folder / "copy-of-first.jpg")
s = index(folder)
assert (s["added"], s["embedded"], s["reused_embeddings"]) == (1, 0, 1), s

# Changed content at a known path: updated and re-embedded, same id.
before, _ = run_json("search", files[1], "-k", 1, collection=coll, check=0)
old_id = before["results"][0]["id"]
Image.open(files[1]).convert("RGB").rotate(90, expand=True).save(files[1], quality=70)
s = index(folder)
assert (s["updated"], s["embedded"], s["added"]) == (1, 1, 0), s
after, _ = run_json("search", files[1], "-k", 1, collection=coll, check=0)
assert after["results"][0]["id"] == old_id and after["results"][0]["score"] > 0.9999, after

# A vanished file is reported, kept without --prune, removed with it.
files[2].unlink()
s = index(folder)
assert [v["file"] for v in s["vanished"]] == [str(files[2])] and s["removed"] == 0 and s["count"] == 42, s
s = index(folder, "--prune")
assert s["removed"] == 1 and s["count"] == 41, s
res, _ = run_json("search", files[3], "-k", 41, collection=coll, check=0)
assert all(r["path"] != str(files[2]) for r in res["results"])

# Bad files are reported with their reasons; the good ones still land; exit code 3.
(folder / "truncated.jpg").write_bytes(files[4].read_bytes()[:2000])
(folder / "notes.jpg").write_text("this is not a picture\n")
(folder / "empty.png").write_bytes(b"")
good = images("train", classes=["shorts"], per_class=1)[0]
shutil.copy2(good, folder / "shorts-new.jpg")
s = index(folder, code=3)
reasons = {f["file"].split("/")[-1]: f["reason"] for f in s["failures"]}
assert set(reasons) == {"truncated.jpg", "notes.jpg", "empty.png"}, s["failures"]
assert s["added"] == 1 and s["embedded"] == 1 and s["count"] == 42, s
print("failure reasons:", reasons)

# A CSV manifest (as e-commerce catalogues have): metadata attached, quoted fields kept,
# a row naming a missing file reported with its row number.
manifest = work / "catalogue.csv"
rel = [f.relative_to(work) for f in files[5:8]]
manifest.write_text(
    "file,product_name,category,description\n"
    f"{rel[0]},Trail runner,shoes,\"Light, breathable\nmesh\"\n"
    f"{rel[1]},Sun hat,hats,Straw\n"
    f"photos/missing.jpg,Ghost,none,gone\n"
    f"{rel[2]},Chinos,pants,\"Said \"\"slim\"\" fit\"\n")
s = index(manifest, code=3)
assert s["failed"] == 1 and "row 4" in s["failures"][0]["file"], s["failures"]
assert "missing.jpg" in s["failures"][0]["reason"], s["failures"]
assert s["embedded"] == 0 and s["unchanged"] == 3, s
res, _ = run_json("search", files[5], "-k", 1, collection=coll, check=0)
meta = res["results"][0]["metadata"]
assert meta == {"product_name": "Trail runner", "category": "shoes",
                "description": "Light, breathable\nmesh"}, meta
res, _ = run_json("search", files[7], "-k", 1, collection=coll, check=0)
assert res["results"][0]["metadata"]["description"] == 'Said "slim" fit', res
human = run("search", files[5], "-k", 1, collection=coll, check=0).stdout
assert "similarity" in human and "product_name=Trail runner" in human and str(files[5]) in human, human

# remove: by path, by folder, unknown id.
out, _ = run_json("remove", files[5], collection=coll, model=False, check=0)
assert out["removed"] == 1 and out["count"] == 41, out
out, _ = run_json("remove", folder / "hat", collection=coll, model=False, check=0)
assert out["removed"] == 10 and out["count"] == 31, out
out, proc = run_json("remove", "--id", 999999, collection=coll, model=False, check=1)
assert out["removed"] == 0 and "999999" in proc.stderr, proc.stderr
print("incremental indexing checks passed")
