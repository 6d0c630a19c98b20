"""Errors name the file and the cause, exit codes mean something, nothing stored is lost."""
import json
import os
import shutil
from harness import FIXTURES, MODEL, copy_images, images, json_lines, run, run_json, tempdir

work = tempdir("cli")
coll = work / "collection"
photos = copy_images(images("train", classes=["shoes"], per_class=6), work / "photos")
bad_text = work / "readme.jpg"
bad_text.write_text("hello, not an image\n")
truncated = work / "cut.jpg"
truncated.write_bytes(photos[0].read_bytes()[:1500])

# --version names the heap allocator the build links (docs/engine.md, "Memory").
proc = run("--version", model=False, check=0)
assert proc.stdout.startswith("lookalike 0.1.0 (" + os.environ["LOOKALIKE_EXPECT_ALLOCATOR"]), \
    proc.stdout

# Usage errors: exit 2.
assert run(model=False).returncode == 2
assert run("search", collection=coll, model=False).returncode == 2
assert run("search", photos[0], "-k", "0", collection=coll).returncode == 2
assert run("frobnicate", model=False).returncode == 2
proc = run("index", work / "photos", "--passes", "17", collection=coll, check=2)
assert "--passes" in proc.stderr and not coll.exists(), proc.stderr

# No collection yet: exit 1, names the folder.
proc = run("search", photos[0], collection=coll, check=1)
assert str(coll) in proc.stderr and "no collection" in proc.stderr, proc.stderr
proc = run("info", collection=coll, model=False, check=1)
assert str(coll) in proc.stderr, proc.stderr

# Unknown model: exit 1, says where it looked.
proc = run("embed", photos[0], "--model", "no_such_model", model=False, check=1)
assert "no_such_model" in proc.stderr, proc.stderr

run("index", work / "photos", collection=coll, check=0)
info, _ = run_json("info", collection=coll, model=False, check=0)
assert info["count"] == 6

# Bad query files: named, with the cause; a mix gives exit 3 and the good results.
proc = run("search", bad_text, collection=coll, check=1)
assert str(bad_text) in proc.stderr, proc.stderr
proc = run("search", truncated, photos[1], "--json", collection=coll, check=3)
assert str(truncated) in proc.stderr, proc.stderr
records = json_lines(proc.stdout)  # JSON Lines: the failed query is a record with "error"
assert [r["type"] for r in records] == ["search", "search"], records
assert records[0]["query"] == str(truncated) and str(truncated) in records[0]["error"], records
assert records[1]["query"] == str(photos[1]) and len(records[1]["results"]) == 6, records
proc = run("search", work / "absent.jpg", collection=coll, check=1)
assert "absent.jpg" in proc.stderr, proc.stderr

# embed: input order kept, failures named, zero rows for them.
import numpy as np
npy = work / "e.npy"
proc = run("embed", photos[2], bad_text, photos[3], "--npy", npy, check=3)
assert str(bad_text) in proc.stderr, proc.stderr
e = np.load(npy)
assert e.shape == (3, 1280) and np.allclose(np.linalg.norm(e[[0, 2]], axis=1), 1, atol=1e-4)
assert not e[1].any()
out, _ = run_json("embed", photos[2], check=0)
assert out["type"] == "embedding" and out["path"] == str(photos[2]), out
assert np.allclose(np.array(out["embedding"]), e[0], atol=1e-5), "json != npy"
# --json with --npy: the failures still reach stderr (they have no JSON records to go in).
proc = run("--json", "embed", photos[2], bad_text, "--npy", work / "j.npy", check=3)
assert str(bad_text) in proc.stderr, proc.stderr
# Nothing embedded: exit 1 and no file, not a file of zero rows over the one already there.
before = npy.read_bytes()
proc = run("embed", bad_text, "--npy", npy, check=1)
assert str(bad_text) in proc.stderr and "wrote" not in proc.stderr, proc.stderr
assert npy.read_bytes() == before, "a failed embed replaced the .npy"

# A different model on an existing collection is refused, naming both.
other = work / "models"
other.mkdir()
shutil.copy(MODEL, other / "other_net.pt")
card = json.loads(open(MODEL[:-3] + ".json").read())
card["name"] = "other_net"
(other / "other_net.json").write_text(json.dumps(card))
proc = run("index", work / "photos", "--model", other / "other_net.pt", collection=coll,
           model=False, check=1)
assert "does not match" in proc.stderr and "other_net" in proc.stderr, proc.stderr

# CSV manifest without a file column: reported naming the CSV; nothing else changes. Its only
# input failed, so nothing was done: exit 1, as for a new collection.
csv = work / "bad.csv"
csv.write_text("name,category\nfoo,shoes\n")
summary, proc = run_json("index", csv, collection=coll, check=1)
assert summary["failed"] == 1 and summary["failures"][0]["file"].endswith("bad.csv"), summary
assert "file column" in summary["failures"][0]["reason"], summary
assert summary["count"] == 6

# A corrupt catalog is refused with its path, and left untouched.
broken = work / "broken"
broken.mkdir()
(broken / "catalog.db").write_bytes(b"garbage " * 100)
before = (broken / "catalog.db").read_bytes()
proc = run("search", photos[0], collection=broken, check=1)
assert "catalog.db" in proc.stderr, proc.stderr
assert (broken / "catalog.db").read_bytes() == before

# An L2 collection: the factory string and metric are stored, scores are distances, ascending.
l2 = work / "l2-collection"
run("index", work / "photos", "--metric", "l2", "--index-factory", "Flat", collection=l2, check=0)
info, _ = run_json("info", collection=l2, model=False, check=0)
assert info["metric"] == "l2" and info["index_factory"] == "Flat", info
res, _ = run_json("search", photos[0], "-k", 6, collection=l2, check=0)
dists = [r["score"] for r in res["results"]]
assert res["results"][0]["path"] == str(photos[0]) and dists[0] < 1e-3, res
assert dists == sorted(dists) and 0 < dists[1] <= 2.0, dists  # unit vectors: distance <= 2
human = run("search", photos[0], "-k", 2, collection=l2, check=0).stdout
assert "distance" in human, human
proc = run("index", work / "photos", "--metric", "cosine", collection=l2, check=2)
assert "metric l2" in proc.stderr and str(l2) in proc.stderr, proc.stderr
# A spec FAISS refuses is a usage error (2), as at reindex and eval; nothing is created.
proc = run("index", work / "photos", "--metric", "cosine", "--index-factory", "NotAFactory",
           collection=work / "bad-factory", check=2)
assert "NotAFactory" in proc.stderr and not (work / "bad-factory").exists(), proc.stderr

# A mistyped command is named, with the closest command and the list (CLI11 alone said "A
# subcommand is required").
proc = run("serch", photos[0], model=False, check=2)
assert "'serch' is not a command; did you mean 'search'?" in proc.stderr, proc.stderr
assert "Commands: index, search" in proc.stderr, proc.stderr
proc = run("list", collection=coll, model=False, check=2)
assert "'list' is not a command" in proc.stderr and "did you mean" not in proc.stderr, proc.stderr

# remove: a missing id is reported as an id, not as a path; an index cache that cannot be saved
# after the removal is committed is a warning (cache_warning), not "nothing changed".
rm_coll = work / "remove-collection"
run("index", work / "photos", collection=rm_coll, check=0)
info, _ = run_json("info", collection=rm_coll, model=False, check=0)
blocker = rm_coll / f"index-{info['generation'] + 1}.faiss.tmp"
(blocker / "in-the-way").mkdir(parents=True)  # the cache's temporary file cannot be created
out, proc = run_json("remove", photos[0], "--id", 999999, collection=rm_coll, model=False, check=3)
assert out["removed"] == 1 and out["count"] == 5, out
assert out["not_found"] == [{"id": 999999}], out
assert str(blocker) in out["cache_warning"] and "warning" in proc.stderr, (out, proc.stderr)
shutil.rmtree(blocker)
info, _ = run_json("info", collection=rm_coll, model=False, check=0)
assert info["count"] == 5 and info["index_vectors"] == 5, info  # cache rebuilt from the catalog

# models lists the exported model with its card.
models = json_lines(run("models", "--json", model=False, check=0).stdout)
assert all(m["type"] == "model" for m in models), models
names = {m["name"]: m for m in models}
assert "mobilenet_v2" in names and names["mobilenet_v2"]["embedding_dim"] == 1280, models
print("CLI error checks passed")
