"""`lookalike serve` against the requests a second review (2026-12-06) found it mishandled, each
through the real server process: compressed bodies past the upload limit, slow downloads cut off
by the request deadline, Range headers httplib cannot parse, form bodies over 8 KB, bad
Content-Length values, categories cut at 200, searches before the collection exists,
build_info labels left at "-", 0-second samples for unrouted requests, and the Host names of a
container (LOOKALIKE_ALLOWED_HOSTS)."""
import gzip
import io
import json
import re
import socket
import time

import numpy as np
from PIL import Image

from harness import images, tempdir
from server_client import Server, encode_multipart, error_of, expect_error, indexed_gallery

JSON = {"Content-Type": "application/json"}


def exchange(port, data, timeout=5):
    """Sends raw bytes, then reads until the server closes the connection or `timeout` passes.
    Returns (reply bytes, closed by the server, seconds until the reply's first byte)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        t0 = time.time()
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)  # no more: a server still reading sees the end
        except OSError:
            pass  # the server answered and closed while we were sending
        reply, first, closed = b"", None, False
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    closed = True
                    break
                first = first or time.time() - t0
                reply += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return reply, closed, first


def status_and_error(reply):
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else None
    return status, head.decode(errors="replace"), body


def metric_lines(srv, prefix):
    text = srv.request("GET", "/metrics")[2].decode()
    return [line for line in text.splitlines() if line.startswith(prefix)]


# ---- a server whose collection does not exist yet ----------------------------------------------
# LOOKALIKE_ALLOWED_HOSTS names the hosts as repeated --allowed-host would (the Dockerfile sets
# it: the container binds 0.0.0.0, where no name is checked by default).
work = tempdir("server-defects")
empty = work / "not-yet"
srv = Server(empty, "--request-timeout-s", "1",
             env={"LOOKALIKE_ALLOWED_HOSTS": "photos.example, 127.0.0.1"})
status, _, _ = srv.request("GET", "/v1/stats", headers={"Host": f"photos.example:{srv.port}"})
assert status == 200, status
err, _ = expect_error(srv, 403, "host_not_allowed", "GET", "/v1/stats",
                      headers={"Host": f"localhost:{srv.port}"})
assert "LOOKALIKE_ALLOWED_HOSTS" in err["message"], err
print("LOOKALIKE_ALLOWED_HOSTS: a named host 200, localhost 403")

# A search before the first upload: an empty collection, not a 404 naming a server folder.
photo = images("test", classes=["dress"], per_class=1)[0]
status, res = srv.multipart("/v1/search", {"image": (photo.name, photo.read_bytes())}, expect=200)
assert res["results"] == [] and res["query"]["name"] == photo.name, res
err, _ = expect_error(srv, 404, "not_found", "POST", "/v1/search", json.dumps({"id": 1}), JSON)
assert str(work) not in err["message"] and "no image with id 1" in err["message"], err
print("search before the collection exists: 200 with no results; by id 404 without a path")

# build_info: "-" until the first upload creates the collection, then its metric and index.
build = metric_lines(srv, "lookalike_build_info{")
assert len(build) == 1 and 'metric="-"' in build[0] and 'index="-"' in build[0], build
# A 12 MB image (noise does not compress), for the slow download below.
noise = np.random.default_rng(7).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)
buf = io.BytesIO()
Image.fromarray(noise).save(buf, "PNG", compress_level=1)
big = buf.getvalue()
status, up = srv.multipart("/v1/images", {"image": ("noise.png", big)}, expect=201)
big_id = up["image"]["id"]
build = metric_lines(srv, "lookalike_build_info{")
assert len(build) == 1 and 'metric="cosine"' in build[0] and 'index="Flat"' in build[0], build
print("build_info after the first upload:", build[0])

# Responses from outside a handler are counted, never timed as 0 s in the histogram.
expect_error(srv, 404, "not_found", "GET", "/nothing")
expect_error(srv, 405, "method_not_allowed", "PUT", "/v1/search")
expect_error(srv, 411, "length_required", "POST", "/v1/search", iter([b"{}"]))  # chunked
counted = metric_lines(srv, 'lookalike_http_requests_total{method="GET",route="unmatched"')
assert counted and counted[0].endswith(" 1"), counted
timed = metric_lines(srv, 'lookalike_http_request_duration_seconds_count{route="unmatched"}')
assert timed == [], timed
print("unmatched requests: counted, not in the duration histogram")

# A download read slowly is not cut off by --request-timeout-s (1 s here): it bounds receiving
# a request, not sending the response. A small receive buffer keeps the server writing.
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.settimeout(30)
    s.connect(("127.0.0.1", srv.port))
    s.sendall(f"GET /v1/images/{big_id}/file HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data, t0 = b"", time.time()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0 and len(data) - head_end - 4 >= len(big):
            break
        time.sleep(0.015)
    took = time.time() - t0
head_end = data.find(b"\r\n\r\n")
assert head_end > 0 and data[head_end + 4:] == big, (len(data) - head_end - 4, len(big), took)
# Past the deadline and the watchdog's next look (1 s each), or it shows nothing.
assert took > 2.5, f"read in {took:.1f} s: too fast to show the deadline leaves downloads alone"
print(f"slow download: {len(big)} bytes in {took:.1f} s with a 1 s request deadline")
srv.stop()

# ---- a collection with images ----------------------------------------------------------------
# The command line wins over LOOKALIKE_ALLOWED_HOSTS.
_, collection, gallery = indexed_gallery("server-defects", per_class=1)
srv = Server(collection, "--allowed-host", "127.0.0.1", "--allowed-host", "localhost",
             env={"LOOKALIKE_ALLOWED_HOSTS": "photos.example"})
status, _, _ = srv.request("GET", "/v1/stats", headers={"Host": "localhost"})
assert status == 200, status
expect_error(srv, 403, "host_not_allowed", "GET", "/v1/stats", headers={"Host": "photos.example"})
print("--allowed-host replaces LOOKALIKE_ALLOWED_HOSTS")

# A compressed body is refused before it is read: httplib would unpack it past the upload limit
# (30 MB of JSON from 30 KB of gzip here, over the default 20 MB).
padded = json.dumps({"id": 1, "k": 1, "pad": "x" * (30 << 20)}).encode()
for coding, body in (("gzip", gzip.compress(padded)), ("br", b"\x0b\x02\x80{}\x03"),
                     ("identity, gzip", gzip.compress(b'{"id": 1}'))):
    err, hdrs = expect_error(srv, 415, "unsupported_content_encoding", "POST", "/v1/search",
                             body, {**JSON, "Content-Encoding": coding})
    assert "Content-Encoding" in err["message"] and hdrs.get("Accept-Encoding") == "identity"
res, _ = srv.json("POST", "/v1/search", {"id": 1, "k": 1},
                  headers={"Content-Encoding": "identity"})
assert len(res["results"]) == 1, res
print("compressed request bodies: 415 unsupported_content_encoding; identity accepted")

# Range headers httplib cannot parse are ignored (RFC 9110 14.2), on every route.
fresh = images("test", classes=["hat"], per_class=1)[0]
body, ctype = encode_multipart({"image": (fresh.name, fresh.read_bytes())})
status, _, data = srv.request("POST", "/v1/images", body, {"Content-Type": ctype, "Range": "foo"})
assert status == 201, (status, data[:300])
fresh_id = json.loads(data)["image"]["id"]
status, _, data = srv.request("DELETE", f"/v1/images/{fresh_id}", headers={"Range": "items=0-1"})
assert status == 200 and json.loads(data) == {"removed": fresh_id}, (status, data[:300])
status, _, data = srv.request("GET", "/v1/stats", headers={"Range": "bytes=1-0"})
assert status == 200 and "images" in json.loads(data), (status, data[:300])
whole = gallery[0].read_bytes()
for value in ("bytes=1-0", "foo", "items=0-1", "bytes=0-99999999999999999999999"):
    status, hdrs, data = srv.request("GET", "/v1/images/1/file", headers={"Range": value})
    assert status == 200 and data == whole and "Content-Range" not in hdrs, (value, status)
status, hdrs, data = srv.request("GET", "/v1/images/1/file", headers={"Range": "bytes=2-5"})
assert status == 206 and data == whole[2:6], (status, data)
_, hdrs = expect_error(srv, 416, "range_not_satisfiable", "GET", "/v1/images/1/file",
                       headers={"Range": f"bytes={len(whole)}-"})
assert hdrs["Content-Range"] == f"bytes */{len(whole)}", hdrs
print("Range: unparsable ones ignored on every route; the file's 206 and 416 as documented")

# A JSON body sent as a form (curl -d's default type) over httplib's 8,192-byte form limit.
big_json = json.dumps({"id": 1, "k": 1, "where": {"category": ["x" * 100] * 100}})
err, _ = expect_error(srv, 415, "unsupported_media_type", "POST", "/v1/search", big_json,
                      {"Content-Type": "application/x-www-form-urlencoded"})
assert "application/json" in err["message"] and "upload limit" not in err["message"], err
print("form body over 8 KB:", err["message"])

# Content-Length not a number, negative, huge: answered at once and the connection closed (the
# body must not be read as the next request); a POST without one too (httplib read until the
# client closed).
head = b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
for length, status_code, code in ((b"-1", 400, "bad_request"), (b"abc", 400, "bad_request"),
                                  (b"18446744073709551615", 413, "payload_too_large"),
                                  (b"31457280", 413, "payload_too_large"),
                                  (None, 411, "length_required")):
    framing = b"Content-Length: " + length + b"\r\n" if length else b""
    reply, closed, first = exchange(srv.port, head + framing + b"\r\n" + b'{"id": 1}' * 100)
    got, reply_head, body = status_and_error(reply)
    assert got == status_code and first is not None and first < 2, (length, reply[:300], first)
    err = error_of(body)
    assert err["code"] == code and closed, (length, err, closed)
    assert "close" in reply_head.lower() and "keep-alive" not in reply_head.lower(), reply_head
    if length in (b"-1", b"abc"):
        assert "Content-Length" in err["message"], err
# Expect: 100-continue over the limit: 413 instead of "100 Continue", so no body is sent.
reply, closed, first = exchange(srv.port, head + b"Content-Length: 31457280\r\n"
                                b"Expect: 100-continue\r\n\r\n")
assert reply.startswith(b"HTTP/1.1 413") and closed, reply[:200]
print("bad Content-Length, none, or over the limit: answered at once, connection closed")

# Every category in /v1/stats, not the first 200 (the web page's filter is built from it).
srv.json("PATCH", "/v1/images/1", {"category": [f"c{i:03d}" for i in range(250)]})
stats, _ = srv.json("GET", "/v1/stats")
assert len([c for c in stats["categories"] if re.fullmatch(r"c\d{3}", c)]) == 250, \
    len(stats["categories"])
assert stats["categories_truncated"] is False, stats
print(f"/v1/stats: {len(stats['categories'])} categories, none cut")

# OpenAPI lists what every route can answer besides its handler's own statuses.
doc, _ = srv.json("GET", "/openapi.json")
for path, item in doc["paths"].items():
    for method, op in item.items():
        if method == "parameters":
            continue
        codes = op["responses"]
        if path.startswith("/v1/"):
            assert "503" in codes, (method, path, sorted(codes))
        if path not in ("/healthz", "/readyz"):
            assert "host_not_allowed" in codes.get("403", {}).get("description", ""), (method, path)
        if "requestBody" in op:
            assert {"411", "413", "415"} <= set(codes), (method, path, sorted(codes))
assert "503" in doc["paths"]["/v1/images"]["post"]["responses"]
print("openapi: 503, 403 host_not_allowed, 411/413/415 where they apply")
srv.stop()
print("PASS")
