"""The .deb end to end: cpack, its contents and control, dpkg -i (the user, /var/lib/lookalike,
the unit), the service's own command run as its user, an upload and a search over HTTP, SIGTERM,
dpkg --purge (always, in a finally block).

systemd is not PID 1 on the machines this runs on, so the service is "started" by hand: the
installed unit's ExecStart, expanded with its Environment= and EnvironmentFile= the way systemd
does, run as its User= through runuser, in its WorkingDirectory=, with a clean environment.

Needs root for dpkg -i (otherwise it checks the package, prints SKIP and exits 77). Refuses to
run (SKIP, 77) where lookalike is installed already or /var/lib/lookalike or the user exist:
the purge at the end would delete them.
"""
import grp
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from harness import DATASET, FIXTURES, MODEL, fail

BUILD = FIXTURES.parent          # the build folder: CPackConfig.cmake is there
OUT = BUILD / "e2e-package"      # cpack's output folder for this test only
UNIT = Path("/lib/systemd/system/lookalike.service")
STATE = Path("/var/lib/lookalike")
DEFAULTS = Path("/etc/default/lookalike")
T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def sh(*cmd, check=True, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        fail(f"{' '.join(map(str, cmd))}: exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
             f"stderr:\n{proc.stderr[-4000:]}")
    return proc


def dpkg_status():
    proc = sh("dpkg-query", "-W", "-f=${Status}", "lookalike", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown ok not-installed"


def installed():
    return dpkg_status() == "install ok installed"


def present():
    """Anything dpkg knows of (installed, half-configured, config-files, ...): purge it."""
    return not dpkg_status().endswith("not-installed")


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


# ---- 1. cpack -G DEB, in a folder of its own ----------------------------------------------
if not (BUILD / "CPackConfig.cmake").is_file():
    fail(f"{BUILD}/CPackConfig.cmake missing: configure with packaging/packaging.cmake present")
shutil.rmtree(OUT, ignore_errors=True)
log(f"cpack -G DEB -B {OUT}")
proc = sh("cpack", "-G", "DEB", "-B", OUT, cwd=BUILD, timeout=600)
debs = sorted(OUT.glob("*.deb"))
assert len(debs) == 1, (debs, proc.stdout)
deb = debs[0]
log(f"built {deb.name} ({deb.stat().st_size / 1e6:.1f} MB)")

# ---- 2. contents and control --------------------------------------------------------------
entries = {}
for line in sh("dpkg-deb", "-c", deb).stdout.splitlines():
    fields = line.split(None, 5)
    path = fields[5].split(" -> ")[0]
    entries[path.removeprefix(".")] = fields[0]  # path -> mode string
for path in ["/usr/bin/lookalike", str(UNIT), str(DEFAULTS),
             "/usr/share/doc/lookalike/README.md", "/usr/share/doc/lookalike/cli.md",
             "/usr/share/doc/lookalike/api.md", "/usr/share/doc/lookalike/install.md"]:
    assert path in entries, f"{path} not in the package: {sorted(entries)}"
assert any(p.startswith("/usr/share/man/man1/lookalike.1") for p in entries), sorted(entries)
assert entries["/usr/bin/lookalike"].startswith("-rwxr-xr-x"), entries["/usr/bin/lookalike"]
assert entries[str(DEFAULTS)] == "-rw-------", entries[str(DEFAULTS)]  # holds the API key
assert not [p for p in entries if p.startswith("/var/")], "state is created by postinst"

control = {}
for field in ["Package", "Version", "Architecture", "Maintainer", "Section", "Depends",
              "Description"]:
    control[field] = sh("dpkg-deb", "-f", deb, field).stdout.strip()
assert control["Package"] == "lookalike", control
assert control["Version"] and control["Version"] in deb.name, control
assert control["Maintainer"] and control["Section"] and control["Description"], control
depends = [d.strip() for d in control["Depends"].split(",") if d.strip()]
assert depends, f"empty Depends: {control}"
# dpkg-shlibdeps ran: the binary's libraries are there, not just what packaging.cmake names.
for lib in ["libtorch", "libvips", "libsqlite3", "libc6"]:
    assert any(d.startswith(lib) for d in depends), (lib, depends)
info = sh("dpkg-deb", "-I", deb).stdout
for script in ["postinst", "prerm", "postrm", "conffiles"]:
    assert script in info, (script, info)
conffiles = sh("dpkg-deb", "-I", deb, "conffiles").stdout.split()
assert conffiles == [str(DEFAULTS)], conffiles
log(f"contents and control ok: {len(entries)} entries, {len(depends)} Depends")

# ---- 3. dpkg -i needs root, and a machine where the purge destroys nothing ------------------
if os.geteuid() != 0:
    shutil.rmtree(OUT, ignore_errors=True)
    print("SKIP: dpkg -i needs root; the package itself was checked")
    sys.exit(77)
if present() or STATE.exists() or user_exists("lookalike") or group_exists("lookalike"):
    shutil.rmtree(OUT, ignore_errors=True)
    print("SKIP: lookalike is installed here (or /var/lib/lookalike, the user or the group "
          "exists): the test would purge it, with the collection and models in it")
    sys.exit(77)


def read_unit(path):
    """The [Service] section as {key: [values in order]}; continuation lines joined."""
    section, out, pending = None, {}, ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service" and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def parse_env_file(path):
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments, quotes)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if value[:1] in "\"'":
            value = " ".join(shlex.split(value))
        env[key.strip()] = value
    return env


def expand_exec(cmdline, env):
    """ExecStart= as systemd expands it: "$VAR" alone is split into words (none if empty),
    "${VAR}" is substituted as is within its word."""
    words = shlex.split(cmdline)
    words[0] = words[0].lstrip("-@:+!")
    argv = []
    for w in words:
        if w.startswith("$") and not w.startswith("${") and w[1:].isidentifier():
            argv += env.get(w[1:], "").split()
            continue
        while "${" in w:
            start = w.index("${")
            end = w.index("}", start)
            w = w[:start] + env.get(w[start + 2:end], "") + w[end + 1:]
        argv.append(w)
    return argv


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The environment must not reach the proxy: requests go to 127.0.0.1.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method, url, body=None, headers=None, timeout=60):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with HTTP.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def multipart(fields, files):
    """fields: {name: str}; files: {name: (filename, bytes, content type)}."""
    boundary = "lookalike-" + uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     .encode() + str(value).encode() + b"\r\n")
    for name, (filename, data, ctype) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n'.encode()
                     + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def server_pid(runuser_pid):
    """runuser forks the command: signals go to it, not to runuser (which answers a SIGTERM
    by killing its child with SIGKILL two seconds later)."""
    try:
        kids = Path(f"/proc/{runuser_pid}/task/{runuser_pid}/children").read_text().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


work = Path(tempfile.mkdtemp(prefix="lookalike-package-", dir=FIXTURES))
serve_log = work / "serve.log"
runner = None
purged = False
try:
    # ---- 4. dpkg -i: the user, the state folders, the unit ---------------------------------
    log(f"dpkg -i {deb.name}")
    proc = sh("dpkg", "-i", deb, timeout=300)
    assert installed(), "dpkg -i succeeded but the package is not installed"
    # postinst says there is no model yet, and must not have tried to start anything here.
    assert "no model" in proc.stderr, proc.stderr

    user = pwd.getpwnam("lookalike")
    assert user.pw_dir == str(STATE), user
    assert user.pw_shell in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false"), user
    assert user.pw_uid < 1000, f"not a system user: {user}"
    assert grp.getgrgid(user.pw_gid).gr_name == "lookalike", user
    for d in [STATE, STATE / "collection", STATE / "models"]:
        st = d.stat()
        assert stat.S_ISDIR(st.st_mode), d
        assert (st.st_uid, st.st_gid) == (user.pw_uid, user.pw_gid), (d, st)
        assert not st.st_mode & stat.S_IWOTH, (d, oct(st.st_mode))
    st = DEFAULTS.stat()
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert os.access("/usr/bin/lookalike", os.X_OK)
    assert UNIT.is_file(), UNIT
    if shutil.which("man"):
        proc = sh("man", "-w", "lookalike")
        assert "lookalike.1" in proc.stdout, proc.stdout

    # systemd-analyze verify works without systemd as PID 1 (it loads the unit and what it
    # names offline): the syntax, that ExecStart's binary exists, that Documentation=man:
    # resolves. Warnings about other units of the machine are printed, not failed on.
    if shutil.which("systemd-analyze"):
        proc = sh("systemd-analyze", "verify", UNIT, check=False, timeout=120)
        ours = [line for line in proc.stderr.splitlines() if "lookalike" in line]
        if proc.returncode != 0 or ours:
            fail(f"systemd-analyze verify {UNIT}: exit {proc.returncode}\n{proc.stderr}")
        if proc.stderr.strip():
            log(f"systemd-analyze verify, about other units:\n{proc.stderr.strip()}")
        log("systemd-analyze verify: clean")
    else:
        log("systemd-analyze not installed: unit not verified")

    # ---- 5. the model, and the settings the admin would put in /etc/default/lookalike -------
    card = json.loads(Path(MODEL).with_suffix(".json").read_text())
    for src in [Path(MODEL), Path(MODEL).with_suffix(".json")]:
        dst = STATE / "models" / src.name
        shutil.copyfile(src, dst)
        os.chown(dst, user.pw_uid, user.pw_gid)
        os.chmod(dst, 0o640)
    service = read_unit(UNIT)
    assert service["User"] == ["lookalike"] and service["Group"] == ["lookalike"], service
    env = {}
    for assignments in service.get("Environment", []):
        for a in shlex.split(assignments):
            key, value = a.split("=", 1)
            env[key] = value
    assert env.get("LOOKALIKE_MODELS") == str(STATE / "models"), env
    assert env.get("LOOKALIKE_PORT") == "8080" and env.get("LOOKALIKE_HOST") == "127.0.0.1", env

    # LOOKALIKE_SERVE_ARGS is word-split into extra options; LOOKALIKE_PORT moves the port.
    settings = ["LOOKALIKE_SERVE_ARGS=--workers 8 --threads 2"
                + ("" if card["name"] == "mobilenet_v2" else f" --model {card['name']}")]
    port = 8080
    if not port_free(port):
        port = free_port()
        settings.append(f"LOOKALIKE_PORT={port}")
        log(f"port 8080 is busy here: LOOKALIKE_PORT={port} in {DEFAULTS}")
    with DEFAULTS.open("a") as f:
        f.write("\n# added by tests/e2e/package.py\n" + "\n".join(settings) + "\n")
    for env_file in service.get("EnvironmentFile", []):
        optional = env_file.startswith("-")
        path = Path(env_file.lstrip("-"))
        if path.exists():
            env.update(parse_env_file(path))
        else:
            assert optional, f"EnvironmentFile={env_file} missing"
    argv = expand_exec(service["ExecStart"][0], env)
    assert argv[:2] == ["/usr/bin/lookalike", "serve"], argv
    assert argv[argv.index("--port") + 1] == str(port), argv
    assert "--workers" in argv and "8" in argv, argv  # the word-split LOOKALIKE_SERVE_ARGS
    stop_timeout = float(service.get("TimeoutStopSec", ["90"])[0].rstrip("s"))

    # ---- 6. start it the way systemd would ------------------------------------------------
    clean_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "LANG": "C.UTF-8", "HOME": user.pw_dir, "USER": "lookalike",
                 "LOGNAME": "lookalike", "SHELL": user.pw_shell, **env}
    cmd = ["runuser", "-u", "lookalike", "--", "env", "-i",
           *[f"{k}={v}" for k, v in clean_env.items()], *argv]
    workdir = service.get("WorkingDirectory", ["/"])[0]
    log("start: " + " ".join(shlex.quote(a) for a in cmd))
    with serve_log.open("wb") as out:
        runner = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def serve_output():
        return serve_log.read_text(errors="replace")[-6000:]

    deadline = time.monotonic() + 180
    status = None
    while time.monotonic() < deadline:
        if runner.poll() is not None:
            fail(f"the server exited with {runner.returncode} before it was ready:\n"
                 f"{serve_output()}")
        try:
            status, body = http("GET", base + "/readyz", timeout=5)
            if status == 200:
                break
            assert status == 503, (status, body)
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            pass
        time.sleep(0.5)
    else:
        fail(f"GET /readyz not 200 after 180 s (last {status}):\n{serve_output()}")
    log(f"ready on {base}")
    assert json.loads(body)["status"] == "ready", body
    pid = server_pid(runner.pid)
    assert pid is not None, "runuser has no child"
    assert Path(f"/proc/{pid}/exe").resolve() == Path("/usr/bin/lookalike"), pid
    assert os.stat(f"/proc/{pid}").st_uid == user.pw_uid, "the server does not run as lookalike"
    status, body = http("GET", base + "/healthz")
    assert status == 200, (status, body)

    # ---- 7. upload three real photos, search with the first ------------------------------
    photos = [sorted((DATASET / "test" / cls).glob("*.jpg"))[0]
              for cls in ["shoes", "dress", "hat"]]
    ids = []
    for photo in photos:
        body, headers = multipart({"category": photo.parent.name},
                                  {"image": (photo.name, photo.read_bytes(), "image/jpeg")})
        status, resp = http("POST", base + "/v1/images", body, headers)
        assert status == 201, (photo, status, resp)
        record = json.loads(resp)
        assert record["created"] is True, record
        assert record["image"]["metadata"].get("category") == photo.parent.name, record
        ids.append(record["image"]["id"])
    log(f"uploaded {len(ids)} photos: ids {ids}")

    body, headers = multipart({"k": 3}, {"image": (photos[0].name, photos[0].read_bytes(),
                                                   "image/jpeg")})
    status, resp = http("POST", base + "/v1/search", body, headers)
    assert status == 200, (status, resp)
    results = json.loads(resp)["results"]
    assert len(results) == 3, results
    top = results[0]
    assert top["id"] == ids[0] and top["score"] > 0.99, results
    assert all(r["score"] < top["score"] for r in results[1:]), results
    log(f"search: id {top['id']} first, score {top['score']:.6f}")
    status, resp = http("GET", base + "/v1/stats")
    assert status == 200 and json.loads(resp)["images"] == 3, (status, resp)
    # It wrote its collection where the unit says, as its user.
    catalog = STATE / "collection" / "catalog.db"
    assert catalog.is_file() and catalog.stat().st_uid == user.pw_uid, catalog

    # ---- 8. SIGTERM (the unit's KillSignal) -> exit 0 within TimeoutStopSec --------------
    assert service.get("KillSignal", ["SIGTERM"]) == ["SIGTERM"], service
    os.kill(pid, signal.SIGTERM)
    try:
        rc = runner.wait(timeout=stop_timeout)
    except subprocess.TimeoutExpired:
        fail(f"still running {stop_timeout:.0f} s (TimeoutStopSec) after SIGTERM:\n"
             f"{serve_output()}")
    assert rc == 0, f"exit {rc} after SIGTERM:\n{serve_output()}"
    runner = None
    log("SIGTERM: exit 0")
finally:
    if runner is not None and runner.poll() is None:
        pid = server_pid(runner.pid)
        for p in [pid, runner.pid]:
            if p:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        runner.wait(timeout=30)
    if runner is not None and serve_log.exists():
        print("server output:\n" + serve_log.read_text(errors="replace")[-6000:], file=sys.stderr)
    # Always: a failing test must not leave the package (or its user) on the machine.
    if present() or user_exists("lookalike"):
        log("dpkg --purge lookalike")
        purge = subprocess.run(["dpkg", "--purge", "lookalike"], capture_output=True,
                               text=True, timeout=300)
        purged = purge.returncode == 0
        if not purged:
            print(f"dpkg --purge lookalike: exit {purge.returncode}\n{purge.stdout}\n"
                  f"{purge.stderr}", file=sys.stderr)

# ---- 9. the purge removed everything -----------------------------------------------------
assert purged, "dpkg --purge lookalike failed"
assert not present(), dpkg_status()
for path in ["/usr/bin/lookalike", UNIT, DEFAULTS, STATE, "/etc/systemd/system/lookalike.service",
             "/etc/systemd/system/multi-user.target.wants/lookalike.service"]:
    assert not os.path.lexists(path), f"{path} left after dpkg --purge"
assert not user_exists("lookalike") and not group_exists("lookalike"), "user/group left"
shutil.rmtree(work, ignore_errors=True)
shutil.rmtree(OUT, ignore_errors=True)
log("package: ok")
