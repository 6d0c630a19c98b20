"""`lookalike serve` against the requests a review of 2026-12-05 found it mishandled, each
through the real server process with real clothing-small photos: JSON nested deep enough to
overflow the stack, a second server on the same port, a chunked body past the upload limit,
concurrent uploads of the same bytes, bytes already indexed from a file, byte ranges on JSON,
unbounded metric labels, out-of-range parameters, OPTIONS, and clients that trickle a request
(they must not hold a worker, nor hold up a SIGTERM)."""
import json
import re
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from harness import BIN, MODEL, images
from server_client import Server, encode_multipart, error_of, expect_error, indexed_gallery

work, collection, gallery = indexed_gallery("server-hardening", per_class=4)
uploads = collection / "uploads"


def upload_files():
    return sorted(uploads.iterdir()) if uploads.exists() else []


srv = Server(collection, "--request-timeout-s", "3", "--workers", "4")
stats0, _ = srv.json("GET", "/v1/stats")
JSON = {"Content-Type": "application/json"}

# ---- JSON nested deep enough to overflow the stack (it killed the server) ---------------------
deep = '{"a":' * 100_000 + "1" + "}" * 100_000
err, _ = expect_error(srv, 400, "bad_request", "PATCH", f"/v1/images/{stats0['images']}", deep, JSON)
assert "nested more than 64 levels" in err["message"], err
err, _ = expect_error(srv, 400, "bad_request", "PATCH", "/v1/images/1",
                      '{"a":' * 40 + "1" + "}" * 40, JSON)
assert "nested 40 levels deep, at most 32" in err["message"], err
err, _ = expect_error(srv, 400, "bad_request", "POST", "/v1/search",
                      '{"id": 1, "where": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}", JSON)
photo = images("test", classes=["dress"], per_class=3)
body, ctype = encode_multipart({"image": (photo[0].name, photo[0].read_bytes()),
                                "metadata": '{"a":' * 200_000 + "1" + "}" * 200_000})
expect_error(srv, 400, "bad_request", "POST", "/v1/images", body, {"Content-Type": ctype})
assert srv.proc.poll() is None, "the server died"
assert srv.json("GET", "/v1/stats")[0]["images"] == stats0["images"]
assert upload_files() == [], upload_files()  # nothing written for a refused upload
print("deep JSON: 400, server alive, nothing stored")

# ---- a second server on the same port must fail, not share the port ---------------------------
second = subprocess.run([BIN, "--collection", str(work / "other"), "--model", MODEL, "serve",
                         "--port", str(srv.port)], capture_output=True, text=True, timeout=60)
assert second.returncode != 0 and "cannot listen" in second.stderr, (second.returncode,
                                                                     second.stderr[-500:])
print("second server on the port:", second.stderr.strip().splitlines()[-1])

# ---- a chunked body is refused before it is read (the upload limit applied to Content-Length) --
with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
    s.sendall(b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * (1 << 20)
    try:
        for _ in range(40):  # 40 MB offered, twice the default limit
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except OSError:
        pass  # the server answered and closed
    reply = s.recv(65536).decode(errors="replace")
assert reply.startswith("HTTP/1.1 411"), reply[:200]
assert '"length_required"' in reply, reply
print("chunked body:", reply.splitlines()[0])

# ---- concurrent uploads of the same bytes: one record, every request answered -----------------
same = photo[1].read_bytes()
answers = [None] * 8


def post_same(i):
    answers[i] = srv.multipart("/v1/images", {"image": (f"u{i}.jpg", same), "category": "dress"})


threads = [threading.Thread(target=post_same, args=(i,)) for i in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
statuses = sorted(a[0] for a in answers)
assert statuses == [200] * 7 + [201], [(a[0], a[1]) for a in answers]
assert len({a[1]["image"]["id"] for a in answers}) == 1, answers
assert len(upload_files()) == 1, upload_files()
print("8 concurrent uploads of one photo: one 201, seven 200, one file")

# ---- bytes that `index` stored from a file are the same image --------------------------------
indexed = gallery[5]
status, res = srv.multipart("/v1/images", {"image": ("again.jpg", indexed.read_bytes())})
assert status == 200 and not res["created"], (status, res)
assert res["image"]["path"] == str(indexed), res["image"]
print("upload of an indexed photo's bytes: 200, id", res["image"]["id"])

# ---- byte ranges apply to files only ----------------------------------------------------------
status, hdrs, data = srv.request("GET", "/v1/images/99999", headers={"Range": "bytes=0-3"})
assert status == 404 and "Content-Range" not in hdrs, (status, hdrs)
error_of(data)  # a whole JSON body
status, hdrs, data = srv.request("GET", "/v1/stats", headers={"Range": "bytes=0-3,5-9"})
assert status == 200 and json.loads(data)["images"] >= stats0["images"], (status, data[:100])
status, hdrs, data = srv.request("GET", "/v1/images/1/file", headers={"Range": "bytes=0-3"})
assert status == 206 and data == b"\xff\xd8\xff\xe0"[:len(data)] and len(data) == 4, (status, data)
assert hdrs["Content-Range"].startswith("bytes 0-3/"), hdrs
err, hdrs = expect_error(srv, 416, "range_not_satisfiable", "GET", "/v1/images/1/file",
                         headers={"Range": "bytes=99999999-"})
assert hdrs["Content-Range"].startswith("bytes */"), hdrs
print("ranges: JSON whole, file 206, unsatisfiable 416")

# ---- metrics: no label per made-up method; uploads count as embeds ----------------------------
for m in ("ZZZ1", "ZZZ2"):
    srv.request(m, "/v1/stats")
metrics = srv.request("GET", "/metrics")[2].decode()
assert "ZZZ" not in metrics, [line for line in metrics.splitlines() if "ZZZ" in line]
assert 'method="other"' in metrics


def embed_count():
    text = srv.request("GET", "/metrics")[2].decode()
    return float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith("lookalike_embed_duration_seconds_count")))


before = embed_count()
srv.multipart("/v1/images", {"image": (photo[2].name, photo[2].read_bytes())}, expect=201)
assert embed_count() == before + 1, (before, embed_count())
print("metrics: method label bounded, uploads observed")

# ---- parameters -------------------------------------------------------------------------------
res, _ = srv.json("POST", "/v1/search?include_self=true", {"id": 3, "k": 1})
assert res["results"][0]["id"] == 3, res["results"]
for bad in (2, -1.5):
    err, _ = expect_error(srv, 400, "bad_request", "POST", "/v1/search",
                          json.dumps({"id": 3, "min_score": bad}), JSON)
    assert "min_score" in err["message"], err
status, hdrs, _ = srv.request("OPTIONS", "/v1/images")
assert status == 204 and "POST" in hdrs["Allow"] and "GET" in hdrs["Allow"], (status, hdrs)
expect_error(srv, 404, "not_found", "OPTIONS", "/nothing")
expect_error(srv, 414, "uri_too_long", "GET", "/v1/images?" + "a" * 20000)
# A GIF whose screen and frame are 0 x 0 (libvips pads it to 1 x 1; PIL refuses it).
zero_gif = bytes.fromhex("474946383961000000000000002c00000000000000000002024401003b")
body, ctype = encode_multipart({"image": ("zero.gif", zero_gif)})
err, _ = expect_error(srv, 422, "unprocessable_image", "POST", "/v1/images", body,
                      {"Content-Type": ctype})
assert "zero size" in err["message"], err
# Ids that name no image are 404 alike (0 and past int64 were 400).
for bad_id in ("0", "99999999999999999999"):
    expect_error(srv, 404, "not_found", "GET", f"/v1/images/{bad_id}")
# A JSON number matches the stored value whatever its type: 4.0 is 4.
srv.json("PATCH", "/v1/images/2", {"price": 4})
res, _ = srv.json("POST", "/v1/search", {"id": 3, "k": 50, "where": {"price": 4.0}})
assert [h["id"] for h in res["results"]] == [2], res["results"]
print("include_self, min_score range, OPTIONS, 414, zero-size GIF 422, ids, numbers")

# ---- many ranges: one response of the whole file, not one part per range -----------------------
status, hdrs, data = srv.request("GET", "/v1/images/1/file")
whole = data
status, hdrs, data = srv.request("GET", "/v1/images/1/file",
                                 headers={"Range": "bytes=" + ",".join(["0-"] * 300)})
assert status == 200 and data == whole, (status, len(data), len(whole))
status, hdrs, data = srv.request("GET", "/v1/images/1/file", headers={"Range": "bytes=5-99999999"})
assert status == 206 and data == whole[5:], (status, len(data))
assert hdrs["Content-Range"] == f"bytes 5-{len(whole) - 1}/{len(whole)}", hdrs
print("300 ranges: 200 with the file once; a range past the end names the last byte sent")

# ---- concurrent PATCHes of one image all land; DELETEs of one id remove it once ---------------
def patch_key(i):
    srv.json("PATCH", "/v1/images/4", {f"k{i}": i})


threads = [threading.Thread(target=patch_key, args=(i,)) for i in range(24)]
[t.start() for t in threads]
[t.join() for t in threads]
meta = srv.json("GET", "/v1/images/4")[0]["metadata"]
assert all(meta.get(f"k{i}") == i for i in range(24)), meta
fresh = images("test", classes=["skirt"], per_class=1)[0]
status, res = srv.multipart("/v1/images", {"image": (fresh.name, fresh.read_bytes())}, expect=201)
victim = res["image"]["id"]
deletes = [None] * 6


def delete_one(i):
    deletes[i] = srv.request("DELETE", f"/v1/images/{victim}")[0]


threads = [threading.Thread(target=delete_one, args=(i,)) for i in range(6)]
[t.start() for t in threads]
[t.join() for t in threads]
assert sorted(deletes) == [200] + [404] * 5, deletes
print("24 concurrent PATCHes: every key kept; 6 concurrent DELETEs: one 200, five 404")

# ---- metadata is bounded (64 KiB as JSON): by upload and by a PATCH that merges past it ---------
body, ctype = encode_multipart({"image": (fresh.name, fresh.read_bytes()),
                                "metadata": json.dumps({"notes": "x" * 70_000})})
err, _ = expect_error(srv, 400, "bad_request", "POST", "/v1/images", body, {"Content-Type": ctype})
assert "at most 65536" in err["message"], err
srv.json("PATCH", "/v1/images/4", {"a": "x" * 40_000})
err, _ = expect_error(srv, 400, "bad_request", "PATCH", "/v1/images/4",
                      json.dumps({"b": "y" * 40_000}), JSON)
assert "at most 65536" in err["message"], err
meta = srv.json("GET", "/v1/images/4")[0]["metadata"]
assert "b" not in meta and len(meta["a"]) == 40_000, list(meta)
print("metadata over 64 KiB: 400, by upload and by merge; the stored record unchanged")

# ---- DNS rebinding: on 127.0.0.1 only loopback names may be in Host --------------------------
for host, want in [("evil.example", 403), (f"evil.example:{srv.port}", 403),
                   (f"localhost:{srv.port}", 200), (f"LOCALHOST:{srv.port}", 200),
                   (f"[::1]:{srv.port}", 200), ("127.0.0.1", 200)]:
    for path in ("/v1/stats", "/", "/v1/images/1/file"):
        status, _, data = srv.request("GET", path, headers={"Host": host})
        assert status == want, (host, path, status, data[:200])
        if want == 403:
            err = error_of(data)
            assert err["code"] == "host_not_allowed" and "--allowed-host" in err["message"], err
status, _, _ = srv.request("GET", "/healthz", headers={"Host": "evil.example"})
assert status == 200, status  # probes name the address they were given
print("Host guard: other names 403 host_not_allowed, loopback names 200, /healthz open")

# ---- a 500 names no server-side path; the log has the cause under the incident id ------------
count = srv.json("GET", "/v1/stats")[0]["images"]
moved = collection / "uploads.moved"
uploads.rename(moved)
uploads.write_text("a file where the uploads folder belongs")
body, ctype = encode_multipart({"image": (photo[0].name, photo[0].read_bytes())})
err, _ = expect_error(srv, 500, "internal", "POST", "/v1/images", body, {"Content-Type": ctype})
assert str(collection) not in err["message"] and "uploads" not in err["message"], err
incident = re.fullmatch(r"internal error; the server log has the cause under incident "
                        r"([0-9a-f]{8})", err["message"]).group(1)
uploads.unlink()
moved.rename(uploads)
assert srv.json("GET", "/v1/stats")[0]["images"] == count  # nothing stored
print("500: incident", incident, "and no path in the response")

# ---- clients that trickle a request must not hold the workers ---------------------------------
# 4 workers, 8 connections each sending a header line every 0.5 s: without a request deadline
# they held every worker and /healthz waited forever.
trickling = []
for _ in range(8):
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    trickling.append(s)
stop = threading.Event()
closed_after = {}


def closed_by_server(s):
    """True once the server has closed `s` (EOF or a reset on a non-blocking read)."""
    try:
        return s.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def trickle():
    t0 = time.time()
    while not stop.is_set() and len(closed_after) < len(trickling):
        for i, s in enumerate(trickling):
            if i in closed_after:
                continue
            if closed_by_server(s):
                closed_after[i] = time.time() - t0
                continue
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed_after[i] = time.time() - t0
        time.sleep(0.5)


th = threading.Thread(target=trickle)
th.start()
t0 = time.time()
status, _, _ = srv.request("GET", "/healthz", timeout=60)
waited = time.time() - t0
th.join(timeout=30)  # until the server has closed every trickling connection
stop.set()
th.join()
for s in trickling:
    s.close()
assert status == 200 and waited < 25, (status, waited)
assert len(closed_after) == len(trickling) and max(closed_after.values()) < 25, closed_after
print(f"8 trickling clients, 4 workers: /healthz answered after {waited:.1f} s; "
      f"the server closed {len(closed_after)} of them after "
      f"{min(closed_after.values()):.1f}-{max(closed_after.values()):.1f} s")
first_log = srv.stop()
logged = [line for line in first_log.splitlines() if f"incident {incident}" in line]
assert len(logged) == 1 and str(uploads) in logged[0] and "cannot create" in logged[0], logged

# ---- SIGTERM while a client trickles: the server stops after --shutdown-timeout-s --------------
# An upload killed mid-write leaves uploads/<hash>.<format>.tmp: the next writer removes it.
stray = uploads / "0123456789abcdef0123456789abcdef.jpeg.tmp"
stray.write_bytes(b"\xff\xd8\xff" + b"\0" * 1000)
srv = Server(collection, "--shutdown-timeout-s", "2")
assert not stray.exists(), "a half-written upload was left in uploads/"
s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
stop = threading.Event()


def trickle_one():
    while not stop.is_set():
        try:
            s.sendall(b"X-Slow: 1\r\n")
        except OSError:
            return
        time.sleep(0.5)


th = threading.Thread(target=trickle_one)
th.start()
time.sleep(1)
t0 = time.time()
err = srv.stop()
took = time.time() - t0
stop.set()
th.join()
s.close()
assert took < 15, took
assert "closing them" in err, err[-1000:]
print(f"SIGTERM with a trickling client: stopped in {took:.1f} s")
assert Path(collection / "catalog.db").exists()

# ---- reembed copies uploaded images into the new collection (they lived only in the old) -----
new_coll = work / "reembedded"
proc = subprocess.run([BIN, "--collection", str(collection), "--model", MODEL, "reembed",
                       "--out", str(new_coll), "--json"], capture_output=True, text=True,
                      timeout=600)
assert proc.returncode == 0, proc.stderr[-2000:]
assert not Path(str(new_coll) + ".partial").exists()
kept = sorted(p.name for p in upload_files())
assert kept and sorted(p.name for p in (new_coll / "uploads").iterdir()) == kept, kept
before_ids, after_ids = {}, {}
for db_path, out in ((collection / "catalog.db", before_ids), (new_coll / "catalog.db", after_ids)):
    db = sqlite3.connect(db_path)
    out.update({Path(p).name: i for i, p in db.execute("SELECT id, path FROM images")})
    db.close()
assert before_ids == after_ids, "reembed changed image ids"
sequences = []
for db_path in (collection / "catalog.db", new_coll / "catalog.db"):
    db = sqlite3.connect(db_path)
    sequences.append(db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'images'").fetchone())
    db.close()
assert sequences[0] == sequences[1] and sequences[0][0] > max(after_ids.values()), sequences
moved = collection.with_name("old-collection")
collection.rename(moved)  # the old one goes away
srv = Server(new_coll)
listed, _ = srv.json("GET", "/v1/images?limit=1000")
ups = [r for r in listed["images"] if "/uploads/" in r["path"]]
assert len(ups) == len(kept) and all(r["path"].startswith(str(new_coll)) for r in ups), ups
for r in ups:
    status, _, data = srv.request("GET", f"/v1/images/{r['id']}/file")
    assert status == 200 and data == (new_coll / "uploads" / Path(r["path"]).name).read_bytes()
srv.stop()
moved.rename(collection)
print(f"reembed: {len(kept)} uploaded images copied, served from the new collection")
print("PASS")
