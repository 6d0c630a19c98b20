"""Regression tests, through the real binary, for a review of the command line's manners: with
--json a failure was only in the JSON (nothing on stderr) for `index`, `embed`, `models` and
`duplicates`; CLI11's usage errors named internal positionals ("paths is required") and had no
"lookalike: error:" prefix (and some of ours had it twice); counts read "1 files", "1 images";
--help left out defaults (serve's timeouts, --decode-threads, --batch-size). On clothing-small
photos."""
import json
import re
import sqlite3

from harness import FIXTURES, MODEL, copy_images, images, run, tempdir

work = tempdir("cli-manners")
photos = copy_images(images("train", per_class=6)[:48], work / "photos")
assert len(photos) == 48
coll = work / "coll"
run("index", work / "photos", "-q", collection=coll, check=0)


def stdout_is_json(proc):
    """Every stdout line is one JSON object: nothing else goes there with --json."""
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, proc.stdout
    return [json.loads(line) for line in lines]


def on_stderr(proc, *needles, level="error"):
    """Each needle is on a "lookalike: <level>: ..." line of stderr."""
    lines = [l for l in proc.stderr.splitlines() if l.startswith(f"lookalike: {level}: ")]
    for needle in needles:
        assert any(str(needle) in l for l in lines), (needle, proc.stderr)


# 1. --json: failures, per file and fatal, reach stderr too; stdout carries only JSON.
missing = work / "no-such-photo.jpg"
not_image = work / "notes.jpg"
not_image.write_text("not a JPEG")
fresh = work / "fresh"
proc = run("index", photos[0], missing, not_image, "--json", collection=fresh, check=3)
[summary] = stdout_is_json(proc)
assert summary["failed"] == 2 and summary["added"] == 1, summary
on_stderr(proc, missing, not_image)
# Text mode: the same failures on stderr; stdout keeps the summary's count.
proc = run("index", missing, not_image, collection=fresh, check=1)
on_stderr(proc, missing, not_image)
assert str(missing) not in proc.stdout and "2 failed" in proc.stdout, proc.stdout
proc = run("index", work / "no-such-folder", "--json", collection=work / "never", check=1)
stdout_is_json(proc)
on_stderr(proc, work / "no-such-folder")

proc = run("embed", missing, "--json", check=1)
[rec] = stdout_is_json(proc)
assert "error" in rec, rec
on_stderr(proc, missing)
proc = run("embed", photos[1], not_image, "--json", check=3)
assert len(stdout_is_json(proc)) == 2
on_stderr(proc, not_image)

proc = run("search", missing, "--json", collection=coll, check=1)
stdout_is_json(proc)
on_stderr(proc, missing)
proc = run("remove", "--id", 999999, "--json", collection=coll, check=1)
stdout_is_json(proc)
on_stderr(proc, "--id 999999")

# A model archive without its card is listed (with its error) and named on stderr.
models = work / "models"
models.mkdir()
(models / "broken.pt").write_bytes(b"not an archive")
proc = run("models", "--json", model=False, env={"LOOKALIKE_MODELS": str(models)}, check=0)
recs = stdout_is_json(proc)
assert any(r.get("name") == "broken" and "error" in r for r in recs), recs
on_stderr(proc, models / "broken.pt", level="warning")
proc = run("models", model=False, env={"LOOKALIKE_MODELS": str(models)}, check=0)
on_stderr(proc, models / "broken.pt", level="warning")

# duplicates: a grouped file that can no longer be read for its perceptual hash.
dups = work / "dups"
dup_photos = copy_images(images("train", classes=["hat"], per_class=3), dups / "photos")
copy = dups / "photos" / "hat" / "copy.jpg"
copy.write_bytes(dup_photos[0].read_bytes())
run("index", dups / "photos", "-q", collection=dups / "coll", check=0)
with sqlite3.connect(dups / "coll" / "catalog.db") as db:  # computed again, from the files
    db.execute("UPDATE images SET phash = NULL, phash_95 = NULL, phash_90 = NULL")
db.close()
copy.unlink()
proc = run("duplicates", "--json", collection=dups / "coll", check=0)
[report] = stdout_is_json(proc)
notes = [m for g in report["groups"] for m in g["members"] if m.get("note")]
assert any(m["path"] == str(copy) for m in notes), report
on_stderr(proc, copy, level="warning")

# Fatal errors with --json: on stderr, nothing but JSON (here nothing) on stdout.
for args in (["info"], ["reindex", "--index-spec", "Flat"], ["duplicates"], ["map"],
             ["reembed", "--out", work / "re"]):
    proc = run(*args, "--json", collection=work / "absent", check=1)
    assert proc.stdout == "", (args, proc.stdout)
    on_stderr(proc, work / "absent")
proc = run("reindex", "--index-spec", "NotAFactory", "--json", collection=coll, check=2)
assert proc.stdout == "", proc.stdout
on_stderr(proc, "NotAFactory")
proc = run("eval", "--gallery", work / "absent", "--json", check=1)
assert proc.stdout == "", proc.stdout
on_stderr(proc, work / "absent")
proc = run("train", "--labels", work / "absent", "--out", work / "m.pt", "--json", check=1)
assert proc.stdout == "", proc.stdout
on_stderr(proc, work / "absent")
proc = run("models", "calibrate", work / "absent", "--json", check=1)
assert proc.stdout == "", proc.stdout
on_stderr(proc, work / "absent")
proc = run("bench-index", "--from-collection", work / "absent", "--sizes", 100, "--json",
           model=False, check=1)
assert proc.stdout == "", proc.stdout
on_stderr(proc, work / "absent")
print("--json: every failure also on stderr, stdout only JSON")

# 2. Usage errors: "lookalike: error: ..." once, positionals as the docs name them, conversions
#    in words; exit 2.
def usage_error(*args, expect, collection=coll):
    proc = run(*args, collection=collection, check=2)
    first = proc.stderr.splitlines()[0] if proc.stderr else ""
    assert first == f"lookalike: error: {expect}", (args, proc.stderr)
    assert "lookalike: error: lookalike" not in proc.stderr, proc.stderr
    return proc


usage_error("index", expect="PATH is required")
usage_error("embed", expect="IMAGE is required")
usage_error("models", "calibrate", expect="PHOTOS is required")
usage_error("search", "--id", "abc", expect="--id: 'abc' is not an integer")
usage_error("search", "-k", "ten", photos[0], expect="--top-k: 'ten' is not an integer")
usage_error("--threads", "many", "info", expect="--threads: 'many' is not an integer")
usage_error("search", expect="give a query IMAGE or --id ID")
usage_error("remove", expect="give a PATH or --id ID")
usage_error("serch", expect="'serch' is not a command; did you mean 'search'?")
usage_error("map", "--method", "tsne", "--json",
            expect="--perplexity 30 needs at least 91 points and the map has 48: use --perplexity "
            "15 or less")
usage_error("map", expect="give --out FILE.svg|FILE.png, or --json for the coordinates")
usage_error("duplicates", "-k", "0", expect="-k: 0 is out of range (1 to 9999)")
print("usage errors: one prefix, PATH/IMAGE/PHOTOS, conversions in words")

# 3. Counts agree with their nouns.
one = work / "one"
proc = run("index", photos[0], collection=one, check=0)
assert proc.stdout.startswith("indexed 1 file in "), proc.stdout
assert "embedded 1 image at " in proc.stdout and "now holds 1 image\n" in proc.stdout, proc.stdout
proc = run("reindex", "--index-spec", "Flat", collection=one, check=0)
assert proc.stdout.startswith("reindexed 1 vector from "), proc.stdout
proc = run("remove", photos[0], collection=one, check=0)
assert proc.stdout.startswith("removed 1 image; ") and proc.stdout.endswith("now holds 0 images\n"), \
    proc.stdout
proc = run("index", photos[0], photos[1], collection=one, check=0)
assert proc.stdout.startswith("indexed 2 files in ") and "now holds 2 images" in proc.stdout
print("plurals: 1 file, 1 image, 1 vector; 2 files, 0 images")

# 4. --help shows every default (no "[]", no CLI11 "INT=10"), once.
def option_help(*command):
    """{option names: description} of `lookalike COMMAND --help`."""
    text = run(*command, "--help", model=False, check=0).stdout
    section = text.split("Options:\n", 1)[1].split("\n\n", 1)[0]
    blocks, out = re.split(r"\n(?=  -)", section), {}
    for block in blocks:
        first, _, more = block.partition("\n")
        head, _, rest = first.strip().partition("  ")
        out[head.split(" ")[0]] = " ".join((rest + " " + more).split())
    return text, out


text, top = option_help()
assert top["--decode-threads"].endswith("(default 1)"), top["--decode-threads"]
assert top["--batch-size"].endswith("(default 32)"), top["--batch-size"]
_, serve = option_help("serve")
for name, value in (("--read-timeout-s", 10), ("--write-timeout-s", 10),
                    ("--request-timeout-s", 60), ("--shutdown-timeout-s", 30)):
    assert serve[name].endswith(f"(default {value})"), (name, serve[name])
_, search = option_help("search")
assert "default: the collection's" in search["--nprobe"], search["--nprobe"]
for command in ([], ["index"], ["search"], ["reindex"], ["embed"], ["info"], ["remove"], ["models"],
                ["models", "calibrate"], ["serve"], ["eval"], ["bench-index"], ["duplicates"],
                ["map"], ["train"], ["reembed"]):
    text, options = option_help(*command)
    assert "[]" not in text and "(default )" not in text, (command, text)
    # CLI11's own form, after the type: "INT=10", "INT:INT in [1 - 3600]=10", "TEXT:{a,b}=a".
    assert not re.search(r"(\]|\}|\b(INT|FLOAT|TEXT|UINT))=", text), (command, text)
    for name, desc in options.items():
        assert desc.lower().count("(default") <= 1, (command, name, desc)
print("--help: defaults shown once, in words")
