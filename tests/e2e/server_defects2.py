"""`lookalike serve` against what a review of the web page and server (2026-12-06) found, each
through the real server process: a method the route does not take answered 411 or 413 (the body
framing was checked first) instead of 405 with Allow; a server started on a folder with no
collection (a mistyped -c) said nothing about it; and the documented shape of a search by id's
timings (every key present, 0 for the stages that did not run)."""
import json
import socket

from harness import images, tempdir
from server_client import Server, error_of

JSON = {"Content-Type": "application/json"}


def exchange(port, data, timeout=10):
    """Sends raw bytes, then reads until the server closes the connection or `timeout` passes.
    Returns the reply's bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server answered and closed while we were sending
        reply = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
                if b"\r\n\r\n" in reply:
                    head, _, body = reply.partition(b"\r\n\r\n")
                    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")]
                    if length and len(body) >= length[0]:
                        break
        except (socket.timeout, ConnectionResetError):
            pass
        return reply


def parse(reply):
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    status = int(lines[0].split(" ", 2)[1]) if lines[0].startswith("HTTP/1.1 ") else None
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    return status, headers, body


work = tempdir("server-defects2")

# ---- a folder with no collection yet: said at start --------------------------------------------
typo = work / "typo" / "collection"  # parents missing too: the first upload creates them
srv = Server(typo)
photo = images("test", classes=["dress"], per_class=1)[0]

# ---- 405 before the body's framing is looked at ------------------------------------------------
# (request line, extra headers, body): each names a path whose routes do not take the method.
cases = [
    ("PUT /v1/images/1", "", b""),                                    # no Content-Length: was 411
    ("PUT /v1/images/1", "Content-Length: 0\r\n", b""),               # was already 405
    ("PUT /v1/images/1", "Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),  # was 411
    ("PATCH /v1/search", "", b""),                                    # was 411
    ("POST /v1/images/1", f"Content-Length: {1 << 40}\r\n", b""),     # was 413
    ("PUT /v1/stats", "Content-Encoding: gzip\r\nContent-Length: 3\r\n", b"abc"),  # was 415
]
allow = {"/v1/images/1": "DELETE, GET, PATCH", "/v1/search": "POST", "/v1/stats": "GET"}
for line, extra, body in cases:
    reply = exchange(srv.port, f"{line} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode() + body)
    status, headers, data = parse(reply)
    path = line.split(" ")[1]
    assert status == 405, f"{line} ({extra.strip() or 'no framing'}): {status}, expected 405\n{reply[:400]!r}"
    assert headers.get("allow") == allow[path], (line, headers)
    err = error_of(data)
    assert err["code"] == "method_not_allowed" and allow[path] in err["message"], err
print(f"405 with Allow before the body framing: {len(cases)} requests")

# Expect: 100-continue with a method the route does not take: 405 instead of "100 Continue".
reply = exchange(srv.port, b"PUT /v1/images/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n"
                           b"Expect: 100-continue\r\n\r\n")
status, headers, _ = parse(reply)
assert status == 405 and headers.get("allow") == allow["/v1/images/1"], reply[:300]
assert b"100 Continue" not in reply, reply[:300]

# The routes' own methods still get the framing checks, and HEAD / OPTIONS their answers.
status, _, data = parse(exchange(srv.port, b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
assert status == 411 and error_of(data)["code"] == "length_required", (status, data)
status, _, _ = parse(exchange(srv.port, b"HEAD /v1/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                        b"Connection: close\r\n\r\n"))
assert status == 200, status
status, headers, _ = srv.request("OPTIONS", "/v1/images/1")
assert status == 204 and "PATCH" in headers.get("Allow", ""), (status, headers)
print("own methods: 411 without Content-Length; HEAD 200; OPTIONS 204")

# ---- a search by id: every timing key, 0 for the stages that did not run -------------------------
status, res = srv.multipart("/v1/images", {"image": (photo.name, photo.read_bytes())}, expect=201)
assert typo.is_dir(), "the first upload did not create the collection folder"
image_id = res["image"]["id"]
res, _ = srv.json("POST", "/v1/search", {"id": image_id, "include_self": True})
t = res["timings"]
assert set(t) == {"decode_ms", "embed_ms", "search_ms", "total_ms"}, t
assert t["decode_ms"] == 0 and t["embed_ms"] == 0 and t["total_ms"] > 0, t
status, res = srv.multipart("/v1/search", {"image": (photo.name, photo.read_bytes())}, expect=200)
t = res["timings"]
assert t["decode_ms"] > 0 and t["embed_ms"] > 0 and t["total_ms"] > 0, t
print(f"timings by id {res['timings']}: decode and embed 0; by upload all > 0")

log = srv.stop()
want = f"no collection at {typo} yet: the first upload creates it"
assert want in log, f"the log does not say {want!r}:\n{log[-3000:]}"
assert log.index(want) < log.index("ready: collection"), log[-3000:]
print(f"log at start: {want!r}")

# Once it exists the line is gone.
srv = Server(typo)
log = srv.stop()
assert "no collection at" not in log and "ready: collection" in log, log[-3000:]
print("a server on the created collection does not say it is missing")
