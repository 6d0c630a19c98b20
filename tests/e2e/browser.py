"""The web page in a real browser: indexes 80 clothing-small photos with a category (CSV
manifest), starts `lookalike serve`, and runs tests/browser/browser.mjs (Debian's chromium through
playwright-core) against it: search by file, drag and drop, paste, more-like-this by click and
Enter, category filter, min-score slider, k, add an image, browse by page, an API error, a phone
layout, the API key (401/403 shown, key kept in localStorage); then, restarted with --private,
thumbnails and searches with the key; then a 12-photo collection with metric l2 (scores shown as
distances, the slider a maximum distance, browse totals with an exactly full last page); then a
folder with no collection yet (the page says the collection is empty, shows no timings).
Screenshots go to <build>/test-artifacts/browser/. Skips
(exit 77) without chromium, node or tests/browser/node_modules/playwright-core."""
import csv
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from harness import BIN, FIXTURES, MODEL, fail, images, label_of, run_json, tempdir

SOURCE = Path(os.environ["LOOKALIKE_SOURCE_DIR"])
BROWSER_DIR = SOURCE / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
NODE = shutil.which("node")
ARTIFACTS = FIXTURES.parent / "test-artifacts" / "browser"
READY_TIMEOUT_S = 120

missing = [what for what, ok in [
    (str(CHROMIUM), CHROMIUM.exists()),
    ("node (Node.js)", NODE is not None),
    (str(BROWSER_DIR / "node_modules" / "playwright-core"),
     (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").exists()),
] if not ok]
if missing:
    print(f"SKIP: the browser test needs {', '.join(missing)} "
          "(apt-get install chromium nodejs; cd tests/browser && npm ci)")
    sys.exit(77)

work = tempdir("browser")
coll = work / "collection"

# 8 photos of each of the 10 classes, with their class as the category, through a manifest.
gallery = images("train", per_class=8)
assert len(gallery) == 80, len(gallery)
manifest = work / "catalogue.csv"
with open(manifest, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file", "category", "description"])
    for p in gallery:
        w.writerow([p, label_of(p), f"{label_of(p)} photo from clothing-small"])
summary, _ = run_json("index", manifest, collection=coll, check=0)
assert summary["added"] == 80 and summary["failed"] == 0, summary

query = images("test", classes=["dress"], per_class=1)[0]
added = images("test", classes=["shoes"], per_class=1)[0]  # not in the collection
# What the page's first search must show: the CLI's ranking of the same query.
expected, _ = run_json("search", query, "-k", 10, collection=coll, check=0)
expect = ",".join(f"{r['id']}:{r['score']:.6f}" for r in expected["results"])
assert len(expected["results"]) == 10, expected

# A collection with metric l2: 12 photos (one page of 12 exactly), for distances and totals.
coll_l2 = work / "collection-l2"
gallery_l2 = images("train", per_class=2)[:12]
summary, _ = run_json("index", "--metric", "l2", *gallery_l2, collection=coll_l2, check=0)
assert summary["added"] == 12 and summary["failed"] == 0, summary
expected_l2, _ = run_json("search", query, "-k", 10, collection=coll_l2, check=0)
expect_l2 = ",".join(f"{r['id']}:{r['score']:.6f}" for r in expected_l2["results"])
assert len(expected_l2["results"]) == 10, expected_l2

API_KEY = secrets.token_urlsafe(16)
if ARTIFACTS.exists():
    shutil.rmtree(ARTIFACTS)
ARTIFACTS.mkdir(parents=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_drive(name, serve_args, browser_args, collection=coll):
    """Starts `lookalike serve` on a free port, waits for /readyz, runs browser.mjs, stops the
    server with SIGTERM and checks that it exits 0. Returns the seconds browser.mjs took."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server_log = ARTIFACTS / f"server-{name}.log"
    cmd = [BIN, "serve", "--port", str(port), "--collection", str(collection), "--model", MODEL,
           *serve_args]
    if os.environ.get("LOOKALIKE_WEB_DIR"):  # development: the page from a folder, not the binary
        cmd += ["--web-dir", os.environ["LOOKALIKE_WEB_DIR"]]
    log = open(server_log, "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def tail():
        log.flush()
        return f"server log ({server_log}):\n" + server_log.read_text(errors="replace")[-4000:]

    try:
        start = time.monotonic()
        while True:
            if server.poll() is not None:
                fail(f"lookalike serve exited with {server.returncode} before it was ready\n"
                     f"{' '.join(map(str, cmd))}\n{tail()}")
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or 503 while loading
            if time.monotonic() - start > READY_TIMEOUT_S:
                fail(f"GET /readyz was not 200 within {READY_TIMEOUT_S} s\n{tail()}")
            time.sleep(0.2)
        print(f"[{name}] server ready in {time.monotonic() - start:.1f} s at {base}", flush=True)

        start = time.monotonic()
        node_cmd = [NODE, str(BROWSER_DIR / "browser.mjs"), "--base", base, "--query", str(query),
                    "--out", str(ARTIFACTS), *browser_args]
        try:
            proc = subprocess.run(node_cmd, cwd=BROWSER_DIR, capture_output=True, text=True,
                                  timeout=400)
        except subprocess.TimeoutExpired as e:
            fail(f"[{name}] browser.mjs ran past 400 s\n{e.stdout or ''}\n{e.stderr or ''}\n{tail()}")
        print(proc.stdout, end="")
        print(proc.stderr, end="", file=sys.stderr, flush=True)
        if proc.returncode != 0:
            fail(f"[{name}] browser.mjs exited {proc.returncode} (screenshots in {ARTIFACTS})\n"
                 f"{' '.join(node_cmd)}\n{tail()}")
        seconds = time.monotonic() - start
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
                fail(f"[{name}] lookalike serve did not exit within 60 s of SIGTERM\n{tail()}")
    log.close()
    if server.returncode != 0:
        fail(f"[{name}] lookalike serve exited {server.returncode} after SIGTERM, expected 0\n"
             f"{tail()}")
    print(f"[{name}] browser checks passed in {seconds:.1f} s; server exited 0 on SIGTERM")
    return seconds


# Writes need the key (--api-key): the page must show the 401/403 and send the saved key.
serve_and_drive("main", ["--api-key", API_KEY],
                ["--add", str(added), "--k", "10", "--api-key", API_KEY, "--expect", expect])
# Everything under /v1 needs it (--private): thumbnails and searches with the saved key.
serve_and_drive("private", ["--api-key", API_KEY, "--private"],
                ["--mode", "private", "--api-key", API_KEY])
# Metric l2: distances, not similarities; the slider is a maximum distance.
serve_and_drive("l2", [], ["--mode", "l2", "--expect", expect_l2, "--total", "12"],
                collection=coll_l2)
# No collection yet (the first upload would create it): "empty", not "no match", no timings.
serve_and_drive("empty", [], ["--mode", "empty"], collection=work / "not-yet")

shots = sorted(p.name for p in ARTIFACTS.glob("*.png"))
assert len(shots) >= 10 and not any(n.startswith("failure") for n in shots), shots
shutil.rmtree(work)
print(f"{len(shots)} screenshots in {ARTIFACTS}: {', '.join(shots)}")
