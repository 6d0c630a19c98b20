"""A client for the end-to-end tests of `lookalike serve`: start the real server process on a
free 127.0.0.1 port, wait until it is ready, send requests, stop it with SIGTERM."""
import atexit
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import time
import uuid

from harness import BIN, MODEL, images, label_of, run_json, tempdir


STARTS_WITH_503 = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, collection, *extra, env=None):
        """env: variables added to this process's for the server."""
        self.port = free_port()
        self.cmd = [BIN, "--collection", str(collection), "--model", MODEL, "serve",
                    "--port", str(self.port), *map(str, extra)]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})})
        atexit.register(self.kill)  # a failed assertion must not leave a server running
        self.saw_503 = False
        extra = list(map(str, extra))
        key = extra[extra.index("--api-key") + 1] if "--api-key" in extra else None
        auth = {"X-API-Key": key} if key else {}
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                status, _, data = self.request("GET", "/v1/stats", headers=auth)
                if status == 200:
                    assert self.request("GET", "/readyz")[0] == 200
                    return
                assert status == 503 and error_of(data)["code"] == "not_ready", (status, data)
                assert self.request("GET", "/healthz")[0] == 200  # up, not ready
                self.saw_503 = True
                STARTS_WITH_503.append(1)
            except OSError:
                pass
            assert self.proc.poll() is None, self.proc.communicate()
            time.sleep(0.02)
        raise AssertionError("server not ready in 120 s")

    def request(self, method, path, body=None, headers=None, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            return r.status, dict(r.getheaders()), data
        finally:
            conn.close()

    def json(self, method, path, obj=None, headers=None, expect=200):
        body = None if obj is None else json.dumps(obj)
        h = {"Content-Type": "application/json", **(headers or {})}
        status, hdrs, data = self.request(method, path, body, h)
        assert status == expect, f"{method} {path}: {status}, expected {expect}: {data[:500]!r}"
        return json.loads(data) if data else None, hdrs

    def multipart(self, path, fields, expect=None, headers=None):
        body, ctype = encode_multipart(fields)
        status, hdrs, data = self.request("POST", path, body,
                                          {"Content-Type": ctype, **(headers or {})})
        if expect is not None:
            assert status == expect, f"POST {path}: {status}, expected {expect}: {data[:500]!r}"
        return status, json.loads(data) if data.startswith(b"{") else data

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}\n{err[-3000:]}"
        return err


def encode_multipart(fields):
    """fields: name -> str, or (filename, bytes)."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f"--{boundary}\r\n".encode())
        if isinstance(value, tuple):
            filename, data = value
            out.write(f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                      "Content-Type: application/octet-stream\r\n\r\n".encode())
            out.write(data)
        else:
            out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode())
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def error_of(data):
    obj = json.loads(data) if isinstance(data, (bytes, str)) else data
    assert set(obj) == {"error"} and {"code", "message"} <= set(obj["error"]), obj
    return obj["error"]


def expect_error(srv, status, code, method, path, body=None, headers=None):
    """Sends one request to `srv` and asserts its status and error code: (error, headers)."""
    got, hdrs, data = srv.request(method, path, body, headers)
    assert got == status, f"{method} {path}: {got}, expected {status}: {data[:300]!r}"
    err = error_of(data)
    assert err["code"] == code, err
    return err, hdrs


def indexed_gallery(name, per_class):
    """A fresh collection of `per_class` clothing-small train photos of each class, indexed
    through a CSV manifest with their class as `category`: (work folder, collection, photos)."""
    work = tempdir(name)
    gallery = images("train", per_class=per_class)
    manifest = work / "catalog.csv"
    manifest.write_text("path,category\n" + "".join(f"{p},{label_of(p)}\n" for p in gallery))
    collection = work / "collection"
    summary, _ = run_json("index", manifest, collection=collection, check=0)
    assert summary["added"] == len(gallery), summary
    return work, collection, gallery
