"""Defects a second review found in `lookalike train` and `lookalike reembed` (docs/train.md), on
clothing-small photos (2 labels x 4 for training, one epoch, a few photos per collection):
- reembed never removes its source: not when the source is DIR.partial, lies inside it, or is a
  link to it (exit 2, before any work);
- train --out never replaces one of the base model's reduced-precision archives (exit 2, with or
  without --force);
- reembed where every image fails (the photos moved away) writes nothing, exit 1, naming a cause;
- train where every image fails to decode names the failures, not only "found 0";
- reembed checks --out before any work: empty, an existing file, a missing or read-only folder;
- --margin must be finite and in (0, 4] (exit 2);
- an interrupted train (SIGINT, SIGTERM) removes its temporary files, and a run sweeps the ones a
  killed run left for the same --out (and nothing else)."""
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from harness import BIN, MODEL, NOBODY, images, json_lines, run, tempdir

work = tempdir("train-defects2")
models = work / "models"
models.mkdir()
# The fixture's base with its card and its BF16 archive, under its own name (a card's name is
# its file stem).
for f in Path(MODEL).parent.glob(Path(MODEL).stem + ".*"):
    shutil.copy(f, models / f.name)
base = models / Path(MODEL).name
labels = work / "labels"
photos = images("train", classes=["dress", "hat"], per_class=4)
for f in photos:
    (labels / f.parent.name).mkdir(parents=True, exist_ok=True)
    shutil.copy(f, labels / f.parent.name / f.name)
FAST = ["--epochs", 1, "--val-fraction", 0, "--cache", work / "cache", "--dim", 8]


def digest(*paths):
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def train(out, *extra, labels_arg=labels, check=0):
    return run("train", "--labels", labels_arg, "--base", base, "--out", out, *FAST, *extra,
               model=False, check=check)


def temp_files(folder):
    return sorted(p.name for p in Path(folder).iterdir() if ".tmp" in p.name)


# --- --out: the base's reduced-precision archives ----------------------------------------------
bf16 = models / (base.stem + ".bf16.pt")
assert bf16.exists(), "the fixture's card names a BF16 archive"
before = digest(bf16)
for out in (bf16, models / ".." / "models" / bf16.name):
    for force in ([], ["--force"]):
        proc = train(out, *force, check=2)
        assert "reduced-precision archive" in proc.stderr, proc.stderr
assert digest(bf16) == before and not (models / (base.stem + ".bf16.json")).exists()
print("--out: the base's BF16 archive refused, with and without --force")

# --- --margin: finite, in (0, 4] ----------------------------------------------------------------
for margin in ("inf", "1e308", "4.5", "nan", "0", "-1"):
    proc = train(work / "margin.pt", "--margin", margin, check=2)
    assert "--margin" in proc.stderr and "frame #" not in proc.stderr, (margin, proc.stderr)
assert not (work / "margin.pt").exists()
print("--margin inf, 1e308, 4.5, nan, 0, -1 refused, exit 2")

# --- Every image fails to decode: the causes are named --------------------------------------------
broken = work / "broken"
for label in ("a", "b"):
    for i in range(3):
        (broken / label).mkdir(parents=True, exist_ok=True)
        (broken / label / f"{label}{i}.jpg").write_bytes(b"not a JPEG at all " * (i + 1))
proc = train(work / "broken.pt", labels_arg=broken, check=1)
assert "a0.jpg" in proc.stderr and "left out" in proc.stderr, proc.stderr
assert "could not be read or decoded" in proc.stderr, proc.stderr
assert not (work / "broken.pt").exists()
print("all images undecodable: each failure warned and named in the error")

# --- Stale temporary files of a killed run: swept, only ours ------------------------------------
gone = subprocess.Popen(["true"])
gone.wait()
dead = gone.pid  # a process that no longer runs
swept = work / "swept"
swept.mkdir()
stale = [f".m.tmp-{dead}.pt", f".m.tmp-{dead}.json", f".m.tmp-{dead}.backbone.pt",
         f".m.tmp-{dead}.pt.tmp", "m.pt.backbone.tmp"]
kept = [f".other.tmp-{dead}.pt", f".m.tmp-{os.getpid()}.pt", ".m.tmp-abc.pt", "m.pt.notes",
        f".m.tmp-{dead}.txt"]
for name in stale + kept:
    (swept / name).write_bytes(b"x" * 1000)
proc = train(swept / "m.pt")
left = sorted(p.name for p in swept.iterdir())
assert left == sorted(kept + ["m.pt", "m.json"]), left
assert "left by an interrupted run" in proc.stderr, proc.stderr
print(f"stale temporary files swept: {len(stale)} removed, {len(kept)} others kept")


# --- SIGINT / SIGTERM while the model is being written --------------------------------------------
def interrupted(folder, sig, *extra):
    """Trains into `folder`, sends `sig` as soon as a temporary file appears there; returns the
    exit status, or None when the run ended before the file was seen."""
    folder.mkdir()
    cmd = [BIN, "train", "--labels", labels, "--base", base, "--out", folder / "m.pt",
           *map(str, FAST), *extra]
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if temp_files(folder):
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=120)
            return proc.returncode, err
        time.sleep(0.002)
    proc.communicate()
    return None, ""


for sig, extra in ((signal.SIGINT, []), (signal.SIGTERM, ["--full", "--full-epochs", 1])):
    for attempt in range(3):
        folder = work / f"sig-{sig.name}-{attempt}"
        code, err = interrupted(folder, sig, *extra)
        if code is not None:
            break
    assert code == 130, (sig.name, code, err)
    assert temp_files(folder) == [], (sig.name, temp_files(folder), err)
    # A signal during the final renames lets them finish: both files, or neither.
    assert (folder / "m.pt").exists() == (folder / "m.json").exists(), list(folder.iterdir())
    print(f"{sig.name} while writing ({' '.join(map(str, extra)) or 'head'}): exit 130, "
          "no temporary file left")

# --- reembed: the source is never DIR.partial, nor inside it -----------------------------------
source_photos = images("train", classes=["shoes", "pants"], per_class=3)
lib_partial = work / "lib.partial"
run("index", *source_photos, "-q", collection=lib_partial, model=base, check=0)
catalog = lib_partial / "catalog.db"
assert catalog.exists()
nested = work / "nest.partial" / "inner"
nested.parent.mkdir()
shutil.copytree(lib_partial, nested)
(work / "alias").symlink_to(lib_partial)
for src, out in ((lib_partial, work / "lib"), (nested, work / "nest"),
                 (work / "alias", work / "lib"), (lib_partial, work / "x" / ".." / "lib")):
    proc = run("reembed", "--out", out, collection=src, model=base, check=2)
    assert "source collection" in proc.stderr, proc.stderr
    assert catalog.exists() and (nested / "catalog.db").exists(), "the source was removed"
    assert not (work / "lib").exists() and not (work / "nest").exists()
proc = run("info", "--json", collection=lib_partial, model=False, check=0)
assert json_lines(proc.stdout)[-1]["count"] == len(source_photos), proc.stdout
print("reembed: DIR.partial as the source, holding it, or a link to it refused, source kept")

# --- reembed --out checked before any work --------------------------------------------------------
(work / "afile").write_text("keep me")
for out, code, message in (("", 2, "--out"), (work / "afile", 1, "is a file"),
                           (work / "missing" / "dir" / "x", 1, "does not exist")):
    proc = run("reembed", "--out", out, collection=lib_partial, model=base, check=code)
    assert message in proc.stderr and "filesystem error" not in proc.stderr, (out, proc.stderr)
assert (work / "afile").read_text() == "keep me" and not (work / "afile.partial").exists()
assert not (work / "missing").exists(), "--out's parents must not be created"
readonly = work / "ro"
readonly.mkdir(mode=0o555)
readonly.chmod(0o555)
if os.geteuid() != 0 or NOBODY:
    # Root writes anywhere: the check is made as `nobody`, who can read the collection.
    for p in (work, lib_partial, models):
        p.chmod(0o755)
    for p in [*lib_partial.iterdir(), *models.iterdir()]:
        p.chmod(0o644 if p.is_file() else 0o755)
    cmd = [*(NOBODY if os.geteuid() == 0 else []), BIN, "--collection", lib_partial, "--model",
           base, "reembed", "--out", readonly / "x"]
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "cannot write in folder" in proc.stderr, proc.stderr
    assert not (readonly / "x.partial").exists()
    print("reembed --out: empty, a file, a missing folder, a read-only folder: refused up front")
else:
    print("reembed --out: empty, a file, a missing folder refused up front (read-only: skipped, "
          "root without setpriv)")

# --- reembed where every image fails: nothing written, exit 1 -----------------------------------
moved = work / "moved-photos"
moving = [shutil.copy(f, work / f"m{i}.jpg") for i, f in enumerate(source_photos[:4])]
moved_src = work / "moved-src"
run("index", *moving, "-q", collection=moved_src, model=base, check=0)
moved.mkdir()
for f in moving:
    shutil.move(f, moved / Path(f).name)
proc = run("reembed", "--out", work / "moved-out", collection=moved_src, model=base, check=1)
assert "none of its 4 images" in proc.stderr and "m0.jpg" in proc.stderr, proc.stderr
assert not (work / "moved-out").exists() and not (work / "moved-out.partial").exists()
print("reembed with every photo gone: exit 1, the cause named, nothing written")
