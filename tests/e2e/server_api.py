"""`lookalike serve` end to end, against the real server process on 127.0.0.1 with real
clothing-small photos: every route of docs/api.md, every error status, the API key, CORS,
concurrent searches during uploads and deletes, restart persistence, and a SIGTERM that arrives
while an upload is being received (the upload must still be acknowledged and kept)."""
import http.client
import io
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from PIL import Image

from harness import images, label_of, run_json
from server_client import STARTS_WITH_503, Server, encode_multipart, error_of, indexed_gallery


def png_bytes(w, h, color=(200, 30, 30)):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


# ---- a small gallery with categories, through a CSV manifest ----------------------------
work, collection, gallery = indexed_gallery("server", per_class=12)
queries = images("test", per_class=2)
print(f"gallery {len(gallery)} photos in {len(set(map(label_of, gallery)))} categories")

srv = Server(collection)
print("saw 503 while loading:", srv.saw_503)

# ---- process set-up (docs/api.md) -----------------------------------------------------------
# OpenMP spins briefly before sleeping (GOMP_SPINCOUNT=20000) unless the caller chose a wait
# policy or spin count: serve re-executes itself to set it (same pid).
environ = Path(f"/proc/{srv.proc.pid}/environ").read_bytes().split(b"\0")
omp = [e for e in environ if e.startswith((b"OMP", b"GOMP"))]
if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        if name in os.environ:
            assert f"{name}={os.environ[name]}".encode() in environ, omp
else:
    assert b"GOMP_SPINCOUNT=20000" in environ, omp
    assert not any(e.startswith(b"OMP_WAIT_POLICY=") for e in environ), omp
# The listen backlog is SOMAXCONN, not cpp-httplib's 5 (ss: Send-Q of a listening socket).
listening = subprocess.run(["ss", "-ltnH", f"sport = :{srv.port}"], capture_output=True,
                           text=True, check=True).stdout.split()
assert len(listening) >= 3 and int(listening[2]) >= 128, listening

# ---- routes ---------------------------------------------------------------------------------
health, _ = srv.json("GET", "/healthz")
assert health == {"status": "ok"}, health
stats, _ = srv.json("GET", "/v1/stats")
assert stats["images"] == len(gallery) and stats["model"] == "mobilenet_v2", stats
assert stats["categories"] == {c: 12 for c in set(map(label_of, gallery))}, stats["categories"]

q = queries[0]
status, res = srv.multipart("/v1/search", {"image": (q.name, q.read_bytes()), "k": "5"},
                            expect=200)
assert len(res["results"]) == 5, res
assert [r["rank"] for r in res["results"]] == [1, 2, 3, 4, 5]
scores = [r["score"] for r in res["results"]]
assert scores == sorted(scores, reverse=True) and -1 <= scores[-1] <= scores[0] <= 1, scores
for key in ("decode_ms", "embed_ms", "search_ms", "total_ms"):
    assert res["timings"][key] >= 0, res["timings"]

# serve --worker-nice N runs the HTTP workers N nice levels below the process, the threads of the
# forward pass at its own level; off by default. Field 19 of /proc/PID/task/TID/stat is a
# thread's nice value.
def thread_nices(pid):
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile
    return out


nices = thread_nices(srv.proc.pid)
assert set(nices.values()) == {nices[srv.proc.pid]}, nices  # the default: every thread alike

assert res["timings"]["embed_ms"] > 0 and res["timings"]["total_ms"] >= res["timings"]["embed_ms"]
top = res["results"][0]
assert top["metadata"]["category"] == label_of(top["path"]), top
# The same query through the CLI gives the same ranking (the server adds no logic of its own).
cli, _ = run_json("search", q, "-k", "5", collection=collection, check=0)
assert [h["id"] for h in cli["results"]] == [r["id"] for r in res["results"]], (cli, res)

# Search by id, with a category filter: full top-k, all in that category.
by_id, _ = srv.json("POST", "/v1/search", {"id": top["id"], "k": 10, "where": {"category": "shoes"}})
assert len(by_id["results"]) == 10, by_id
assert all(r["metadata"]["category"] == "shoes" for r in by_id["results"]), by_id
assert top["id"] not in [r["id"] for r in by_id["results"]]
with_self, _ = srv.json("POST", "/v1/search", {"id": top["id"], "k": 3, "include_self": True})
assert with_self["results"][0]["id"] == top["id"] and with_self["results"][0]["score"] > 0.999
# where as repeated query parameters, min_score as a form field.
status, filtered = srv.multipart("/v1/search?where=category%3Dpants&where=category=pants",
                                 {"image": (q.name, q.read_bytes()), "min_score": "0.3"},
                                 expect=200)
assert all(r["metadata"]["category"] == "pants" and r["score"] >= 0.3
           for r in filtered["results"]), filtered

record, _ = srv.json("GET", f"/v1/images/{top['id']}")
assert record["id"] == top["id"] and record["path"] == top["path"], record
status, hdrs, data = srv.request("GET", record["file_url"])
assert status == 200 and data == Path(record["path"]).read_bytes() and \
    hdrs["Content-Type"] == "image/jpeg", (status, hdrs)
status, hdrs, data = srv.request("GET", f"/v1/images/{top['id']}/thumbnail?size=64")
thumb = Image.open(io.BytesIO(data))
assert status == 200 and hdrs["Content-Type"] == "image/jpeg" and max(thumb.size) == 64, thumb.size
status, _, data2 = srv.request("GET", f"/v1/images/{top['id']}/thumbnail?size=64")
assert data2 == data  # cached, same bytes

page1, _ = srv.json("GET", "/v1/images?limit=50")
page2, _ = srv.json("GET", f"/v1/images?limit=50&after={page1['next_after']}")
page3, _ = srv.json("GET", f"/v1/images?limit=50&after={page2['next_after']}")
ids = [r["id"] for r in page1["images"] + page2["images"] + page3["images"]]
assert len(ids) == len(gallery) == len(set(ids)) and ids == sorted(ids), len(ids)
assert page3["next_after"] is None, page3["next_after"]
hats, _ = srv.json("GET", "/v1/images?where=category%3Dhat&limit=100")
assert len(hats["images"]) == 12 and all(r["metadata"]["category"] == "hat" for r in hats["images"])

# Upload with metadata; the same bytes again return the stored image.
up_photo = queries[1]
status, up = srv.multipart("/v1/images", {"image": (up_photo.name, up_photo.read_bytes()),
                                          "description": "a test upload", "category": "test-added",
                                          "metadata": json.dumps({"sku": 42})}, expect=201)
new = up["image"]
assert up["created"] is True and new["metadata"] == {"sku": 42, "description": "a test upload",
                                                     "category": "test-added"}, up
assert Path(new["path"]).is_absolute() and Path(new["path"]).read_bytes() == up_photo.read_bytes()
status, again = srv.multipart("/v1/images", {"image": ("other-name.jpg", up_photo.read_bytes())},
                              expect=200)
assert again["created"] is False and again["image"]["id"] == new["id"], again
found, _ = srv.json("POST", "/v1/search", {"id": new["id"], "k": 1, "include_self": True})
assert found["results"][0]["id"] == new["id"]
patched, _ = srv.json("PATCH", f"/v1/images/{new['id']}", {"sku": None, "color": "blue"})
assert patched["metadata"] == {"description": "a test upload", "category": "test-added",
                               "color": "blue"}, patched
stats, _ = srv.json("GET", "/v1/stats")
assert stats["categories"]["test-added"] == 1 and stats["images"] == len(gallery) + 1, stats

# OpenAPI: every documented path and method answers (never 404/405 from routing); /docs too.
doc, _ = srv.json("GET", "/openapi.json")
assert doc["openapi"].startswith("3."), doc["openapi"]
documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item if m != "parameters"}
expected = {("POST", "/v1/search"), ("POST", "/v1/images"), ("GET", "/v1/images"),
            ("GET", "/v1/images/{id}"), ("PATCH", "/v1/images/{id}"),
            ("DELETE", "/v1/images/{id}"), ("GET", "/v1/images/{id}/file"),
            ("GET", "/v1/images/{id}/thumbnail"), ("GET", "/v1/stats"), ("GET", "/healthz"),
            ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/docs"),
            ("GET", "/"), ("GET", "/assets/{name}")}
assert documented == expected, documented ^ expected
# No --api-key here: no operation asks for one; writes may still answer 403 (cross_origin).
assert not any("security" in op for item in doc["paths"].values() for op in item.values()
               if isinstance(op, dict)), "security on a server without --api-key"
assert "401" not in doc["paths"]["/v1/images"]["post"]["responses"]
assert "403" in doc["paths"]["/v1/images"]["post"]["responses"]
# Statuses any route of its kind can answer before its handler runs are listed too: 503 while
# loading (/v1), 403 host_not_allowed (this server is on 127.0.0.1: every route but the probes),
# and with a body the checks made before reading it (411, 413, 415).
for method, path in sorted(documented):
    responses = doc["paths"][path][method.lower()]["responses"]
    if path.startswith("/v1/"):
        assert "503" in responses, (method, path, sorted(responses))
    if path not in ("/healthz", "/readyz"):
        assert "host_not_allowed" in responses["403"]["description"], (method, path)
    if method in ("POST", "PATCH"):
        assert {"411", "413", "415"} <= set(responses), (method, path, sorted(responses))
for method, path in sorted(documented):
    target = path.replace("{id}", str(top["id"])).replace("{name}", "app.js")
    if path not in ("/healthz", "/readyz"):  # as documented: 403 on another Host, before the body
        status, _, data = srv.request(method, target, headers={"Host": "rebound.example"})
        assert status == 403 and error_of(data)["code"] == "host_not_allowed", (method, path)
    if method in ("PATCH", "POST"):  # the checks before the body is read, as documented
        for headers, want in (({"Transfer-Encoding": "chunked"}, 411),
                              ({"Content-Length": str(1 << 40)}, 413),
                              ({"Content-Length": "2", "Content-Encoding": "gzip"}, 415)):
            status, _, _ = srv.request(method, target, b"{}" if "Content-Length" in headers
                                       else iter([b"{}"]), headers)
            assert status == want, (method, path, headers, status)
    if method in ("PATCH", "DELETE", "POST"):
        continue  # exercised above and below with real bodies
    status, _, _ = srv.request(method, target)
    assert status == 200, (method, path, status)
status, hdrs, page = srv.request("GET", "/docs")
assert b"/v1/search" in page and hdrs["Content-Type"].startswith("text/html")
assert b"<code>include_self</code>" in page and b"multipart/form-data" in page, page[:2000]
status, hdrs, page = srv.request("GET", "/")
assert status == 200 and b"/assets/app.js" in page, page[:300]

# ---- errors ---------------------------------------------------------------------------------
def expect_error(status_code, code, method, path, body=None, headers=None):
    status, hdrs, data = srv.request(method, path, body, headers)
    err = error_of(data)
    assert (status, err["code"]) == (status_code, code), (method, path, status, err)
    return err, hdrs

expect_error(400, "bad_request", "POST", "/v1/search", b"{not json", {"Content-Type": "application/json"})
expect_error(400, "bad_request", "POST", "/v1/search", b'{"k": 3}', {"Content-Type": "application/json"})
e, _ = expect_error(400, "bad_request", "POST", "/v1/search", json.dumps({"id": 1, "k": 0}).encode(),
                    {"Content-Type": "application/json"})
assert "k" in e["message"], e
expect_error(400, "bad_request", "POST", "/v1/search", json.dumps({"id": 1, "where": "category"}).encode(),
             {"Content-Type": "application/json"})
expect_error(400, "bad_request", "GET", "/v1/images?limit=100000")
expect_error(400, "bad_request", "GET", "/v1/images?after=abc")
expect_error(400, "bad_request", "GET", "/v1/images?where=nofield")
expect_error(400, "bad_request", "GET", f"/v1/images/{top['id']}/thumbnail?size=5")
expect_error(400, "bad_request", "PATCH", f"/v1/images/{top['id']}", b"[1,2]")
body, ctype = encode_multipart({"k": "3"})
expect_error(400, "bad_request", "POST", "/v1/search", body, {"Content-Type": ctype})
body, ctype = encode_multipart({"image": ("x.jpg", b"")})
expect_error(400, "bad_request", "POST", "/v1/images", body, {"Content-Type": ctype})
body, ctype = encode_multipart({"image": ("x.jpg", q.read_bytes()), "metadata": "[1]"})
expect_error(400, "bad_request", "POST", "/v1/images", body, {"Content-Type": ctype})
expect_error(404, "not_found", "GET", "/v1/images/999999")
expect_error(404, "not_found", "GET", "/v1/images/999999/file")
expect_error(404, "not_found", "DELETE", "/v1/images/999999")
expect_error(404, "not_found", "PATCH", "/v1/images/999999", b"{}")
expect_error(404, "not_found", "POST", "/v1/search", b'{"id": 999999}', {"Content-Type": "application/json"})
expect_error(404, "not_found", "GET", "/v2/nothing")
expect_error(404, "not_found", "GET", "/assets/..%2Fserver.cpp")
_, hdrs = expect_error(405, "method_not_allowed", "PUT", "/v1/search")
assert hdrs["Allow"] == "POST", hdrs
_, hdrs = expect_error(405, "method_not_allowed", "DELETE", "/v1/images")
assert hdrs["Allow"] == "GET, POST", hdrs
body, ctype = encode_multipart({"image": ("passwd.jpg", b"root:x:0:0:root:/root:/bin/bash\n" * 4)})
expect_error(415, "unsupported_media_type", "POST", "/v1/search", body, {"Content-Type": ctype})
expect_error(415, "unsupported_media_type", "POST", "/v1/images", body, {"Content-Type": ctype})
truncated = q.read_bytes()[: len(q.read_bytes()) // 3]
body, ctype = encode_multipart({"image": ("cut.jpg", truncated)})
e, _ = expect_error(422, "unprocessable_image", "POST", "/v1/images", body, {"Content-Type": ctype})
assert "cut.jpg" in e["message"], e
body, ctype = encode_multipart({"image": ("thin.png", png_bytes(6000, 1))})
e, _ = expect_error(422, "unprocessable_image", "POST", "/v1/search", body, {"Content-Type": ctype})
print("extreme aspect ratio:", e["message"])
stats_after_errors, _ = srv.json("GET", "/v1/stats")
assert stats_after_errors["images"] == len(gallery) + 1, stats_after_errors  # nothing stored

# ---- concurrent searches while uploads and deletes land -------------------------------------
errors, search_count = [], [0]
stop_flag = threading.Event()
query_bytes = [p.read_bytes() for p in queries[:6]]


def searcher(i):
    n = 0
    while not stop_flag.is_set():
        try:
            if n % 2:
                status, res = srv.multipart("/v1/search", {"image": ("q.jpg", query_bytes[(i + n) % 6]),
                                                           "k": "10"})
            else:
                obj, _ = srv.json("POST", "/v1/search", {"id": ids[(i * 7 + n) % len(ids)], "k": 10})
                status, res = 200, obj
            if status != 200 or len(res["results"]) != 10:
                errors.append((status, str(res)[:300]))
        except Exception as ex:  # noqa: BLE001 - any failure is a test failure
            errors.append(repr(ex))
        n += 1
    search_count[0] += n


threads = [threading.Thread(target=searcher, args=(i,)) for i in range(6)]
for t in threads:
    t.start()
uploads = images("test", classes=["shoes", "hat"], per_class=6)
added_ids = []
for p in uploads:
    status, up = srv.multipart("/v1/images", {"image": (p.name, p.read_bytes()), "category": "concurrent"})
    assert status in (200, 201), (status, up)
    added_ids.append(up["image"]["id"])
deleted = ids[:5]
for i in deleted:
    srv.json("DELETE", f"/v1/images/{i}")
stop_flag.set()
for t in threads:
    t.join()
assert not errors, errors[:5]
print(f"{search_count[0]} searches ran during {len(uploads)} uploads and {len(deleted)} deletes")
after, _ = srv.json("GET", "/v1/images?limit=1000")
live = {r["id"] for r in after["images"]}
assert not (set(deleted) & live) and set(added_ids) <= live, "deletes or uploads lost"
res, _ = srv.json("POST", "/v1/search", {"id": added_ids[0], "k": 100})
assert not (set(deleted) & {r["id"] for r in res["results"]}), "a deleted image is still found"

metrics = srv.request("GET", "/metrics")[2].decode()
for pattern in [r'lookalike_http_requests_total\{method="POST",route="/v1/search",status="200"\} \d+',
                r'lookalike_http_request_duration_seconds_bucket\{route="/v1/search",le="0.1"\} \d+',
                r'lookalike_embed_duration_seconds_count \d+', r'lookalike_index_search_duration_seconds_count \d+',
                r'lookalike_collection_images \d+', r'lookalike_build_info\{.*version="[0-9.]+"\} 1']:
    assert re.search(pattern, metrics), (pattern, metrics[:2000])
# The heap allocator the build links (docs/engine.md, "Memory"), in build_info.
allocator = re.search(r'lookalike_build_info\{[^}]*allocator="([^"]+)"', metrics)
assert allocator and allocator.group(1).startswith(os.environ["LOOKALIKE_EXPECT_ALLOCATOR"]), \
    (allocator and allocator.group(1), os.environ["LOOKALIKE_EXPECT_ALLOCATOR"])

# ---- SIGTERM while an upload is being received: acknowledged, then kept ---------------------
slow_photo = images("test", classes=["skirt"], per_class=1)[0]
body, ctype = encode_multipart({"image": (slow_photo.name, slow_photo.read_bytes()), "category": "in-flight"})
conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
conn.putrequest("POST", "/v1/images")
conn.putheader("Content-Type", ctype)
conn.putheader("Content-Length", str(len(body)))
conn.endheaders()
conn.send(body[: len(body) // 2])
time.sleep(0.5)
srv.proc.send_signal(signal.SIGTERM)
time.sleep(0.5)
conn.send(body[len(body) // 2:])
resp = conn.getresponse()
in_flight = json.loads(resp.read())
assert resp.status == 201, (resp.status, in_flight)
out, err = srv.proc.communicate(timeout=60)
assert srv.proc.returncode == 0, err
assert "SIGTERM" in err, err

# ---- restart: everything acknowledged is there ----------------------------------------------
srv = Server(collection, "--worker-nice", "10")
rec, _ = srv.json("GET", f"/v1/images/{in_flight['image']['id']}")
nices = thread_nices(srv.proc.pid)
base = nices[srv.proc.pid]
assert min(19, base + 10) in nices.values(), nices  # the worker that answered
assert list(nices.values()).count(base) >= 2, nices  # the main thread, and the model's
assert rec["metadata"]["category"] == "in-flight", rec
rec, _ = srv.json("GET", f"/v1/images/{new['id']}")
assert rec["metadata"]["color"] == "blue", rec
after_restart, _ = srv.json("GET", "/v1/images?limit=1000")
assert {r["id"] for r in after_restart["images"]} == live | {in_flight["image"]["id"]}
srv.stop()

# ---- API key, --private, CORS, upload limit ---------------------------------------------------
srv = Server(collection, "--api-key", "s3cret", "--cors-origin", "http://shop.example",
             "--max-upload-mb", "1")
photo = images("test", classes=["t-shirt"], per_class=1)[0]
body, ctype = encode_multipart({"image": (photo.name, photo.read_bytes())})
expect_error(401, "unauthorized", "POST", "/v1/images", body, {"Content-Type": ctype})
expect_error(403, "forbidden", "POST", "/v1/images", body, {"Content-Type": ctype, "Authorization": "Bearer nope"})
expect_error(401, "unauthorized", "DELETE", f"/v1/images/{ids[10]}")
status, up = srv.multipart("/v1/images", {"image": (photo.name, photo.read_bytes())},
                           headers={"X-API-Key": "s3cret"})
assert status == 201, (status, up)
srv.json("GET", "/v1/images?limit=1")  # reads are open without --private
status, hdrs, _ = srv.request("GET", "/v1/stats", headers={"Origin": "http://shop.example"})
assert hdrs.get("Access-Control-Allow-Origin") == "http://shop.example", hdrs
status, hdrs, _ = srv.request("GET", "/v1/stats", headers={"Origin": "http://evil.example"})
assert "Access-Control-Allow-Origin" not in hdrs and hdrs.get("Vary") == "Origin", hdrs
status, hdrs, _ = srv.request("GET", "/v1/stats")  # a cache must not reuse it for shop.example
assert hdrs.get("Vary") == "Origin", hdrs
# The Bearer scheme in any case (RFC 9110 11.1).
status, hdrs, data = srv.request("DELETE", f"/v1/images/{up['image']['id']}",
                                 headers={"Authorization": "bearer s3cret"})
assert status == 200, (status, data)
# Writes from another site's page (a multipart POST needs no preflight) are refused even with
# the key; the configured origin, the server's own and clients without Origin pass.
with_key = {"Content-Type": ctype, "X-API-Key": "s3cret"}
body, ctype = encode_multipart({"image": (photo.name, photo.read_bytes())})
with_key["Content-Type"] = ctype
err, _ = expect_error(403, "cross_origin", "POST", "/v1/images", body,
                   {**with_key, "Origin": "http://evil.example"})
assert "http://evil.example" in err["message"] and "--cors-origin" in err["message"], err
for origin in ("http://shop.example", f"http://127.0.0.1:{srv.port}"):
    status, _, data = srv.request("POST", "/v1/images", body, {**with_key, "Origin": origin})
    assert status in (200, 201), (origin, status, data)
status, _, data = srv.request("POST", "/v1/images", body,
                              {**with_key, "Origin": "https://public.example",
                               "X-Forwarded-Host": "public.example"})
assert status == 200, (status, data)  # behind a proxy that rewrites Host
status, hdrs, _ = srv.request("OPTIONS", "/v1/images", headers={"Origin": "http://shop.example",
                                                                "Access-Control-Request-Method": "POST"})
assert status == 204 and "POST" in hdrs["Access-Control-Allow-Methods"], (status, hdrs)
big = os.urandom(3 << 20)
body, ctype = encode_multipart({"image": ("big.jpg", b"\xff\xd8\xff" + big)})
expect_error(413, "payload_too_large", "POST", "/v1/search", body, {"Content-Type": ctype})
srv.stop()

srv = Server(collection, "--api-key", "s3cret", "--private", "--allowed-host", "127.0.0.1",
             "--allowed-host", "photos.example")
expect_error(401, "unauthorized", "GET", "/v1/images")
status, _, _ = srv.request("GET", "/v1/images", headers={"Authorization": "Bearer s3cret",
                                                         "Host": "photos.example"})
assert status == 200, status
expect_error(403, "host_not_allowed", "GET", "/v1/images",
             headers={"Authorization": "Bearer s3cret", "Host": "localhost"})  # replaced
doc, _ = srv.json("GET", "/openapi.json")  # needs no key, and says which routes do
for path, method in [("/v1/images", "get"), ("/v1/search", "post"), ("/v1/stats", "get"),
                     ("/v1/images/{id}", "delete")]:
    op = doc["paths"][path][method]
    assert {"bearer": []} in op["security"] and "401" in op["responses"], (path, method, op)
status, _, _ = srv.request("GET", "/v1/images", headers={"Authorization": "Bearer s3cret"})
assert status == 200
status, _, _ = srv.request("GET", "/healthz")
assert status == 200
srv.stop()

# 503 while loading: each start is polled from its first moment; loading the model takes about
# a second, so the polls see 503 (and /healthz 200) before 200.
assert STARTS_WITH_503, "no start answered 503 while loading"
print("PASS")
