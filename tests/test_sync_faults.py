"""Sync under faults (SPEC §2 items 12–15, §4): a flaky or dead S3 endpoint, an
unreachable one, a remote serving corrupt bytes, and kill -9 in the middle of push and
pull.

S3 traffic goes over real HTTP with boto3 — dsv → `FaultProxy` (tests/faultproxy.py) →
the moto server of the `s3_endpoint` fixture — and what the remote holds is read back
independently (tests/servers.py `check_remote`: the remote layout parsed and re-hashed
without dsv code, straight from moto or the directory, never through the proxy).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dsv import chunking
from conftest import run_dsv, run_in_process, write_tree
from faultproxy import FAILING, FaultProxy
from servers import DirView, S3View, b3, check_remote, create_bucket, read_remote

KILLED = -signal.SIGKILL
MiB = 1 << 20
# The bound for giving up when every request fails. dsv makes 5 attempts per
# request (botocore standard mode), backing off at most 1+2+4+8 = 15 s in between.
GIVE_UP_BOUND = 60


# ---- helpers ---------------------------------------------------------------------------

def ok(*args, cwd: Path, env: dict[str, str] | None = None,
       timeout: float = 120) -> subprocess.CompletedProcess:
    r = run_dsv(*args, cwd=cwd, env=env, timeout=timeout)
    assert r.returncode == 0, \
        f"dsv {' '.join(map(str, args))} exited {r.returncode}:\n{r.stdout}{r.stderr}"
    return r


def ok_json(*args, cwd: Path, env: dict[str, str] | None = None):
    return json.loads(ok(*args, "--json", cwd=cwd, env=env).stdout)


def setup_ok(*args, cwd: Path) -> str:
    """`dsv ARGS` for a test's setup (init, commit, tag, remote add: what a test needs
    before the commands it is about), run in this process (conftest `run_in_process`):
    the same code, without an interpreter start each time. Its stdout."""
    r = run_in_process(*args, cwd=cwd)
    assert r.code == 0, f"dsv {' '.join(map(str, args))} exited {r.code}:\n{r.out}{r.err}"
    return r.out


def query_json(*args: str, cwd: Path):
    """`dsv ARGS --json` for the read-only queries the tests ask again and again (log,
    tags, verify, show), run in this process (conftest `run_in_process`); the commands
    under test still run as processes."""
    r = run_in_process(*args, "--json", cwd=cwd)
    assert r.code == 0, f"dsv {' '.join(args)} --json exited {r.code}:\n{r.out}{r.err}"
    return json.loads(r.out)


def clean_failure(r: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 1, exactly one `error:` line (a `hint:` may follow), no traceback; the error
    line mentions one of `words` (case-insensitive). Returns the error line."""
    text = f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert r.returncode == 1, text
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, text
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    others = [line for line in r.stderr.splitlines()
              if line.strip() and not line.startswith(("error:", "hint:", "warning:"))]
    assert not others, f"stray stderr lines {others}\n{text}"
    if words:
        assert any(w.lower() in errors[0].lower() for w in words), \
            f"error line does not mention any of {words}: {errors[0]}"
    return errors[0]


def dataset_files(n_small: int = 300, big: tuple[int, ...] = (2 * MiB, 3 * MiB),
                  seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {f"d{i % 12:02d}/s{i:04d}.bin": rng.randbytes(rng.randint(16, 4096))
             for i in range(n_small)}
    for j, size in enumerate(big):
        files[f"big/shard{j}.bin"] = rng.randbytes(size)
    return files


def snapshot(root: Path) -> dict[str, tuple]:
    """path → ("f", blake3, mode) or ("l", target) for everything under `root`, .dsv left out."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if not (rel == Path(".") and d == ".dsv")]
        for name in filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            p = Path(dirpath, name)
            key = (rel / name).as_posix()
            if p.is_symlink():
                out[key] = ("l", os.readlink(p))
            else:
                # Versions keep the owner-exec distinction only (0o755 / 0o644 class).
                out[key] = ("f", b3(p.read_bytes()), bool(p.stat().st_mode & stat.S_IXUSR))
    return out


def all_bytes(root: Path) -> set[str]:
    """blake3 of every regular file under root (store included)."""
    found = set()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                found.add(b3(p.read_bytes()))
    return found


def new_workspace(root: Path, files: dict[str, bytes], name: str = "data") -> Path:
    """A store at `root` with one dataset (the directory itself) committed as v1 (tagged
    `v1`); a couple of executables, an empty file and a symlink so modes, sizes and kinds
    travel too."""
    root.mkdir(parents=True)
    write_tree(root, {**files, "empty.txt": b""})
    paths = sorted(files)
    os.chmod(root / paths[0], 0o755)
    os.chmod(root / paths[-1], 0o700)
    os.symlink(paths[1].rpartition("/")[2], root / (paths[1] + ".link"))
    setup_ok("init", "--name", name, cwd=root)
    setup_ok("commit", "-m", "v1", cwd=root)
    setup_ok("tag", f"{name}:latest", "v1", cwd=root)
    return root


def log_ids(ws: Path) -> list[str]:
    return [v["id"] for v in query_json("log", cwd=ws)]


def local_refs(ws: Path) -> tuple[list, list]:
    """What a fetch may change: versions (log) and tags, as dsv prints them."""
    log = query_json("log", cwd=ws)
    return ([(v["id"], v["record"], v["tags"]) for v in log],
            sorted((t["dataset"], t["tag"], t["version"]) for t in query_json("tags", cwd=ws)))


def assert_pulled(clone: Path, src: Path) -> None:
    """`clone` has every version of `src` and its working directory is src's latest."""
    assert log_ids(clone) == log_ids(src), "the clone lacks versions of the source"
    latest = log_ids(src)[0]
    mine, theirs = snapshot(clone), snapshot(src)
    stale = sorted(p for p in set(mine) | set(theirs) if mine.get(p) != theirs.get(p))
    assert not stale, (f"`dsv pull` exited 0 and the clone's latest is {latest}, but its "
                       f"working directory is not that version; differing paths: {stale}; "
                       f"status: {ok('status', cwd=clone).stdout.strip()}")


def verify_ok(ws: Path) -> None:
    report = query_json("verify", cwd=ws)
    assert report["ok"] is True and report["problems"] == [], report


def new_bucket(endpoint: str) -> str:
    name = f"dsv-{uuid.uuid4().hex[:16]}"
    create_bucket(endpoint, name)
    return name


def flip_byte(path: Path, offset: int) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))
    os.chmod(path, mode)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_concurrently(commands: dict[str, tuple[list[str], Path]], timeout: float = 120
                     ) -> tuple[dict[str, subprocess.CompletedProcess], dict[str, float]]:
    """Start `dsv ARGS` for every entry at once; each one's result and wall time."""
    results: dict[str, subprocess.CompletedProcess] = {}
    elapsed: dict[str, float] = {}

    def run(name: str) -> None:
        args, cwd = commands[name]
        t0 = time.monotonic()
        results[name] = run_dsv(*args, cwd=cwd, timeout=timeout)
        elapsed[name] = time.monotonic() - t0

    threads = [threading.Thread(target=run, args=(name,)) for name in commands]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results) == set(commands), "a command did not finish"
    return results, elapsed


# ---- a flaky endpoint -------------------------------------------------------------------

def first_of_each(plan: dict[str, str]):
    """A proxy rule: the first request whose target contains KEY gets fault plan[KEY]."""
    done: set[str] = set()

    def rule(method: str, target: str) -> str | None:
        for key, fault in plan.items():
            if key not in done and key in target:
                done.add(key)
                return fault
        return None
    return rule


class _Echo(BaseHTTPRequestHandler):
    """Upstream for the proxy's own test: answers with what it received."""

    protocol_version = "HTTP/1.1"

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or ""):
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.read(2)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, send_body: bool) -> None:
        body = self._body()
        size = int(self.path.rpartition("size=")[2] or 0) if "size=" in self.path else 0
        payload = json.dumps({"method": self.command, "path": self.path, "body": b3(body),
                              "host": self.headers.get("Host"),
                              "expect": self.headers.get("Expect")}).encode()
        payload += b" " * size
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if send_body:
            self.wfile.write(payload)

    def do_PUT(self) -> None:  # noqa: N802 (http.server API)
        self._answer(True)

    do_GET = do_POST = do_PUT

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(False)

    def log_message(self, *args) -> None:
        pass


def test_fault_proxy_forwards_verbatim_and_injects_faults():
    """The proxy itself: bodies framed by Content-Length and by chunked encoding reach the
    server intact (Expect: 100-continue answered by the proxy), Host is kept, HEAD and
    large responses come back whole; at p = 1.0 every request fails, with failing kinds
    only; the XML error bodies carry the S3 codes."""
    import http.client

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        with FaultProxy(f"http://127.0.0.1:{upstream.server_address[1]}") as proxy:
            def call(method, path, body=None, headers=None, chunked=False):
                conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
                conn.request(method, path, body=body, headers=headers or {},
                             encode_chunked=chunked)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                return resp, data

            payload = random.Random(1).randbytes(300_000)
            resp, data = call("PUT", "/b/k?x=1", payload, {"Expect": "100-continue"})
            echo = json.loads(data)
            assert resp.status == 200 and echo["body"] == b3(payload)
            assert echo["path"] == "/b/k?x=1" and echo["host"] == f"127.0.0.1:{proxy.port}"
            assert echo["expect"] is None
            pieces = [payload[i:i + 70_000] for i in range(0, len(payload), 70_000)]
            resp, data = call("PUT", "/b/chunked", iter(pieces), chunked=True)
            assert json.loads(data)["body"] == b3(payload)
            resp, data = call("HEAD", "/b/k")
            assert resp.status == 200 and data == b"" and int(resp.headers["Content-Length"]) > 0
            resp, data = call("GET", "/b/big?size=3000000")
            assert len(data) == int(resp.headers["Content-Length"]) > 3_000_000
            assert proxy.forwarded == 4 and not proxy.faults

            proxy.set_rate(1.0)
            codes = []
            for i in range(40):
                try:
                    resp, data = call("GET", f"/b/{i}")
                    codes.append(resp.status)
                    assert resp.status in (500, 503), resp.status
                    code = "InternalError" if resp.status == 500 else "SlowDown"
                    assert f"<Code>{code}</Code>".encode() in data
                except (ConnectionError, http.client.RemoteDisconnected):
                    codes.append(0)
            assert proxy.forwarded == 4 and sum(proxy.faults.values()) == 40
            assert set(proxy.faults) <= set(FAILING) and len(proxy.faults) == 4, proxy.faults
            assert {500, 503, 0} == set(codes)
    finally:
        upstream.shutdown()
        upstream.server_close()


@pytest.mark.slow
def test_push_and_clone_through_10_percent_faults(tmp_path, s3_endpoint, aws_env):
    """10 % of requests fail (drop, reset, 500, 503) or stall; dsv retries through all of
    it, and a clone through the same faults reproduces every byte, mode and symlink. On
    top of the random faults, the first upload of a pack, of a loose object and of a ref
    and the first download of each fail for sure, so every path is exercised."""
    bucket = new_bucket(s3_endpoint)
    src = new_workspace(tmp_path / "src", dataset_files(seed=1))
    write_tree(src, {"d01/s0001.bin": b"changed in v2\n", "extra/new.txt": b"new\n"})
    setup_ok("commit", "-m", "v2", cwd=src)
    url = f"s3://{bucket}/team/data"
    push_rule = first_of_each({"/packs/": "500", "/loose/": "reset", "/refs/": "drop",
                               "/index/": "503"})
    with FaultProxy(s3_endpoint, p=0.10, seed=7, rule=push_rule) as proxy:
        setup_ok("remote", "add", "origin", url, "--endpoint-url", proxy.url, cwd=src)
        report = ok_json("push", cwd=src)
        assert report["rejected"] == [] and report["versions"] == 2, report
        forced = dict(proxy.faults)
        assert sum(forced[k] for k in FAILING) >= 4, proxy.summary()
    state = check_remote(S3View(s3_endpoint, bucket, "team/data"))
    assert len(state.versions) == 2 and len(state.refs) == 2, state.refs

    clone_rule = first_of_each({"/index/": "reset", "/refs/": "500", "/packs/": "drop",
                                "/loose/": "503"})
    with FaultProxy(s3_endpoint, p=0.10, seed=11, rule=clone_rule) as proxy:
        ok("clone", url, tmp_path / "dst", "--endpoint-url", proxy.url, cwd=tmp_path)
        assert sum(proxy.faults[k] for k in FAILING) >= 4, proxy.summary()
    dst = tmp_path / "dst"
    assert snapshot(dst) == snapshot(src)
    verify_ok(dst)
    assert log_ids(dst) == log_ids(src)


@pytest.mark.slow
def test_lost_responses_to_ref_writes_are_recognised(tmp_path, s3_endpoint, aws_env):
    """The server applies a conditional ref write but the answer is lost: botocore
    retries, the retry meets 412, and dsv must see that the ref already holds its value
    (creating a ref, then moving it) instead of reporting a conflict."""
    bucket = new_bucket(s3_endpoint)
    src = new_workspace(tmp_path / "src", dataset_files(n_small=20, big=(), seed=2))
    url = f"s3://{bucket}/data"

    def lose_first_ref_put():
        seen = set()

        def rule(method: str, target: str) -> str | None:
            if method == "PUT" and "/refs/" in target and target not in seen:
                seen.add(target)
                return "lost"
            return None
        return rule

    with FaultProxy(s3_endpoint, rule=lose_first_ref_put()) as proxy:
        setup_ok("remote", "add", "origin", url, "--endpoint-url", proxy.url, cwd=src)
        report = ok_json("push", cwd=src)
        assert proxy.faults["lost"] == 2, proxy.summary()     # latest and tags/v1
        assert report["rejected"] == [] and len(report["refs_updated"]) == 2, report
    write_tree(src, {"more.txt": b"more\n"})
    setup_ok("commit", "-m", "v2", cwd=src)
    with FaultProxy(s3_endpoint, rule=lose_first_ref_put()) as proxy:
        setup_ok("remote", "remove", "origin", cwd=src)
        setup_ok("remote", "add", "origin", url, "--endpoint-url", proxy.url, cwd=src)
        report = ok_json("push", cwd=src)
        assert proxy.faults["lost"] == 1, proxy.summary()     # latest moved (If-Match)
        assert report["rejected"] == [], report
    state = check_remote(S3View(s3_endpoint, bucket, "data"))
    latest = [r for k, r in state.refs.items() if k.endswith("/latest")]
    assert [r["version"] for r in latest] == [log_ids(src)[0]]


@pytest.mark.slow
def test_every_request_failing(tmp_path, s3_endpoint, aws_env):
    """At 100 % faults push, fetch, pull and clone each give up within 60 s with exit 1
    and one clear error line, and change nothing: the bucket (listed straight from moto)
    keeps its keys and ETags, the fetching/pulling stores keep their versions, tags and
    working directory, and the clone leaves no directory. Once the endpoint heals, the
    same commands succeed."""
    bucket = new_bucket(s3_endpoint)
    url = f"s3://{bucket}/data"
    src = new_workspace(tmp_path / "src", dataset_files(n_small=40, big=(MiB + 17,), seed=3))
    with FaultProxy(s3_endpoint, p=0.0, seed=5) as proxy:
        # (the healthy remote and stores this test starts from: set up in process)
        setup_ok("remote", "add", "origin", url, "--endpoint-url", proxy.url, cwd=src)
        setup_ok("push", cwd=src)
        for name in ("fetcher", "puller"):
            setup_ok("clone", url, tmp_path / name, "--endpoint-url", proxy.url, cwd=tmp_path)
        # The remote moves on (v2, tagged) so that a fetch or pull would have news ...
        write_tree(src, {"d00/s0000.bin": b"v2 bytes\n", "v2.txt": b"two\n"})
        setup_ok("commit", "-m", "v2", cwd=src)
        setup_ok("tag", "data:latest", "v2", cwd=src)
        setup_ok("push", cwd=src)
        # ... and the pusher has news (v3) that must not reach the remote.
        write_tree(src, {"v3.txt": b"three\n"})
        setup_ok("commit", "-m", "v3", cwd=src)

        view = S3View(s3_endpoint, bucket)
        remote_before = view.listing()
        fetcher, puller = tmp_path / "fetcher", tmp_path / "puller"
        before = {ws: (local_refs(ws), snapshot(ws)) for ws in (fetcher, puller)}

        v2 = log_ids(src)[1]
        forwarded = proxy.forwarded
        proxy.set_rate(1.0)
        commands = {
            "push": (["push"], src),
            "fetch": (["fetch"], fetcher),
            "pull": (["pull"], puller),
            "clone": (["clone", url, str(tmp_path / "clone"), "--endpoint-url", proxy.url],
                      tmp_path),
        }
        results, elapsed = run_concurrently(commands)
        failing_requests = proxy.summary()
        proxy.set_rate(0.0)

        for name, r in results.items():
            clean_failure(r, "s3://", "endpoint", bucket)
            assert elapsed[name] < GIVE_UP_BOUND, \
                f"{name} took {elapsed[name]:.1f} s to give up " \
                f"({ {k: round(v, 1) for k, v in elapsed.items()} }; {failing_requests})"
        assert proxy.forwarded == forwarded, "a request reached the server at 100 % faults"
        assert view.listing() == remote_before
        latest = [r["version"] for k, r in check_remote(S3View(s3_endpoint, bucket, "data"))
                  .refs.items() if k.endswith("/latest")]
        assert latest == [v2]
        for ws, (refs_before, files_before) in before.items():
            assert local_refs(ws) == refs_before, ws.name
            assert snapshot(ws) == files_before, ws.name
            verify_ok(ws)
        assert not (tmp_path / "clone").exists()

        # Healed: everything that failed now works.
        ok("push", cwd=src)
        healed, _ = run_concurrently({"fetch": (["fetch"], fetcher), "pull": (["pull"], puller)})
        for name, r in healed.items():
            assert r.returncode == 0, f"dsv {name} once healed:\n{r.stdout}{r.stderr}"
        assert_pulled(puller, src)
        assert log_ids(fetcher) == log_ids(src)
        check_remote(S3View(s3_endpoint, bucket, "data"))


@pytest.mark.slow
def test_connection_errors_get_one_retry_budget(tmp_path, s3_endpoint, aws_env):
    """A request that keeps failing must be given up after one retry budget, so that a
    dead endpoint is reported within a minute. botocore's standard mode (dsv: 5 attempts)
    backs off up to rand·2^n s between attempts, at most 1+2+4+8 = 15 s. Here the first
    5 attempts of the first GET are reset and the next would succeed: dsv must have given
    up by then (exit 1, a clear error), not start the budget over."""
    bucket = new_bucket(s3_endpoint)
    src = new_workspace(tmp_path / "src", dataset_files(n_small=5, big=(), seed=14))
    attempts = []

    def rule(method: str, target: str) -> str | None:
        if armed and target.endswith("/dsv-remote.json"):
            attempts.append(time.monotonic())
            return "reset" if len(attempts) <= 5 else "forward"
        return None

    armed = False
    with FaultProxy(s3_endpoint, rule=rule) as proxy:
        setup_ok("remote", "add", "origin", f"s3://{bucket}/data", "--endpoint-url", proxy.url,
           cwd=src)
        ok("push", cwd=src)
        armed = True
        t0 = time.monotonic()
        r = run_dsv("fetch", cwd=src, timeout=150)
        took = time.monotonic() - t0
    assert len(attempts) == 5 and r.returncode == 1 and took < 60, (
        f"`dsv fetch` made {len(attempts)} attempts at dsv-remote.json against resets and "
        f"exited {r.returncode} after {took:.1f} s\n{r.stdout}{r.stderr}")
    clean_failure(r, "s3://", "endpoint", "connection")


@pytest.mark.slow
def test_push_dies_before_refs_publishes_nothing(tmp_path, s3_endpoint, aws_env):
    """Every write to refs/ fails (reads work): the objects go up but the push fails
    (exit 1, clear error) and the remote has no ref. Once refs/ works again the next push
    sends no object again and only writes the refs."""
    bucket = new_bucket(s3_endpoint)
    src = new_workspace(tmp_path / "src", dataset_files(n_small=50, big=(MiB,), seed=4))
    url = f"s3://{bucket}/data"
    refs_down = [True]

    def rule(method: str, target: str) -> str | None:
        return "500" if refs_down[0] and method == "PUT" and "/refs/" in target else None

    with FaultProxy(s3_endpoint, rule=rule) as proxy:
        setup_ok("remote", "add", "origin", url, "--endpoint-url", proxy.url, cwd=src)
        r = run_dsv("push", cwd=src, timeout=90)
        clean_failure(r, "refs/", "InternalError", "500")
        view = S3View(s3_endpoint, bucket, "data")
        assert view.keys("refs/") == []
        assert view.keys("packs/") and view.keys("loose/")
        assert check_remote(view).refs == {}
        refs_down[0] = False
        report = ok_json("push", cwd=src)
    assert report["objects_sent"] == 0 and report["bytes_sent"] == 0, report
    assert len(report["refs_updated"]) == 2, report
    state = check_remote(view)
    assert len(state.refs) == 2 and len(state.versions) == 1


# ---- an unreachable endpoint ------------------------------------------------------------

@pytest.mark.slow
def test_unreachable_endpoint_fails_fast_and_local_work_goes_on(tmp_path, s3_endpoint,
                                                                aws_env):
    """With the endpoint's port closed, push, fetch, pull and clone fail within 10 s
    (exit 1, one line saying the endpoint cannot be reached) and change nothing; status,
    commit, log, checkout, tag and verify work as ever."""
    bucket = new_bucket(s3_endpoint)
    url = f"s3://{bucket}/data"
    src = new_workspace(tmp_path / "src", dataset_files(n_small=30, big=(MiB,), seed=6))
    with FaultProxy(s3_endpoint) as proxy:
        # (the pushed remote and its clone this test starts from: set up in process)
        setup_ok("remote", "add", "origin", url, "--endpoint-url", proxy.url, cwd=src)
        setup_ok("push", cwd=src)
        setup_ok("clone", url, tmp_path / "other", "--endpoint-url", proxy.url, cwd=tmp_path)
    # The proxy is gone: its port is closed, so the endpoint refuses connections.
    other = tmp_path / "other"
    write_tree(src, {"later.txt": b"later\n"})
    setup_ok("commit", "-m", "v2", cwd=src)
    before = {ws: (local_refs(ws), snapshot(ws)) for ws in (src, other)}
    dead = f"http://127.0.0.1:{proxy.port}"
    for args, cwd in ((["push"], src), (["fetch"], other), (["pull"], other),
                      (["clone", url, str(tmp_path / "c"), "--endpoint-url", dead], tmp_path),
                      (["clone", url, str(tmp_path / "c"), "--endpoint-url",
                        f"http://127.0.0.1:{closed_port()}"], tmp_path)):
        t0 = time.monotonic()
        r = run_dsv(*args, cwd=cwd, timeout=60)
        took = time.monotonic() - t0
        clean_failure(r, "reach", "connect", "refused")
        assert took < 10, f"dsv {args[0]} took {took:.1f} s against a closed port"
    assert not (tmp_path / "c").exists()
    for ws, (refs_before, files_before) in before.items():
        assert local_refs(ws) == refs_before and snapshot(ws) == files_before

    # Offline, local work goes on.
    assert "clean" in ok("status", cwd=other).stdout
    write_tree(other, {"offline.txt": b"written offline\n"})
    assert "offline.txt" in ok("status", cwd=other).stdout
    ok("commit", "-m", "offline work", cwd=other)
    ids = log_ids(other)
    assert len(ids) == 2
    ok("checkout", f"data:{ids[1]}", cwd=other)
    assert not (other / "offline.txt").exists()
    ok("checkout", f"data:{ids[0]}", cwd=other)
    assert (other / "offline.txt").read_bytes() == b"written offline\n"
    ok("tag", "data:latest", "offline", cwd=other)
    verify_ok(other)


# ---- a remote serving corrupt bytes -----------------------------------------------------

@pytest.fixture(scope="module")
def _dir_remote_template(tmp_path_factory):
    """What `dir_remote_pair` hands out, built once per module (and xdist worker): in
    `live`, with a pristine copy beside it."""
    base = tmp_path_factory.mktemp("dir-remote-pair")
    live = base / "live"
    remote = live / "remote"
    src = new_workspace(live / "src", dataset_files(n_small=60, big=(2 * MiB,), seed=8))
    setup_ok("remote", "add", "origin", remote, cwd=src)
    ok("push", cwd=src)
    ok("clone", remote, live / "clone", cwd=live)
    new_small = b"v2: this small file changed " * 40
    new_large = random.Random(9).randbytes(2 * MiB + 5)
    chunked = random.Random(10).randbytes(4 * MiB + 7)   # stored in chunks (>= 4 MiB)
    write_tree(src, {"d05/s0005.bin": new_small, "big/new.bin": new_large,
                     "big/chunked.bin": chunked})
    setup_ok("commit", "-m", "v2", cwd=src)
    ok("push", cwd=src)
    pristine = base / "pristine"
    shutil.copytree(live, pristine, symlinks=True)
    return live, pristine, new_small, new_large


def _rmtree(root: Path) -> None:
    """Remove `root` whatever modes dsv left on its files and directories."""
    def writable_again(func, path, _exc) -> None:
        os.chmod(os.path.dirname(path), 0o755)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o755)
        func(path)
    if sys.version_info >= (3, 12):
        shutil.rmtree(root, onexc=writable_again)
    else:
        shutil.rmtree(root, onerror=writable_again)


@pytest.fixture
def dir_remote_pair(_dir_remote_template):
    """src pushes v1 to a directory remote; `clone` is a clone at v1; then src commits v2
    (one small file changed, one large file added) and pushes it.

    Built once (five pushes, clones and commits took 10 s of every test's setup on a busy
    machine) and restored from its pristine copy for each test, at the same paths: the
    remote URL each store holds is an absolute path, so the copy must live where the
    original was. Tests of one module in one xdist worker run one at a time."""
    live, pristine, new_small, new_large = _dir_remote_template
    _rmtree(live)
    shutil.copytree(pristine, live, symlinks=True)
    return live / "src", live / "remote", live / "clone", new_small, new_large


def _corrupt_packed(remote: Path, oid: str) -> tuple[Path, int]:
    pack_id, off, length, kind = read_remote(DirView(remote)).located[oid]
    assert kind == 0
    path = remote / "packs" / f"{pack_id}.pack"
    flip_byte(path, off + length // 2)
    return path, off + length // 2


def test_corrupt_packed_blob_on_remote_is_refused(dir_remote_pair, tmp_path):
    src, remote, clone, new_small, _ = dir_remote_pair
    oid = b3(new_small)
    v1_bytes = (clone / "d05/s0005.bin").read_bytes()
    path, at = _corrupt_packed(remote, oid)
    bad = bytearray(new_small)
    bad[len(bad) // 2] ^= 0x5A
    bad_hash = b3(bytes(bad))

    r = run_dsv("pull", cwd=clone)
    line = clean_failure(r, "corrupt")
    assert oid[:12] in line, line
    assert (clone / "d05/s0005.bin").read_bytes() == v1_bytes
    assert bad_hash not in all_bytes(clone)
    verify_ok(clone)

    r = run_dsv("clone", remote, tmp_path / "fresh", cwd=tmp_path)
    line = clean_failure(r, "corrupt")
    assert oid[:12] in line, line
    assert not (tmp_path / "fresh").exists() or bad_hash not in all_bytes(tmp_path / "fresh")

    flip_byte(path, at)  # the remote is repaired: the same pull now completes
    ok("pull", cwd=clone)
    verify_ok(clone)
    assert_pulled(clone, src)


def test_corrupt_loose_object_on_remote_is_refused(dir_remote_pair, tmp_path):
    src, remote, clone, _, new_large = dir_remote_pair
    oid = b3(new_large)
    path = remote / "loose" / oid[:2] / oid
    assert path.is_file()
    flip_byte(path, len(new_large) - 100)
    bad = bytearray(new_large)
    bad[len(bad) - 100] ^= 0x5A
    bad_hash = b3(bytes(bad))

    r = run_dsv("pull", cwd=clone)
    line = clean_failure(r, "corrupt")
    assert oid[:12] in line, line
    assert not (clone / "big/new.bin").exists()
    assert bad_hash not in all_bytes(clone)
    local = clone / ".dsv" / "objects" / "loose" / oid[:2] / oid
    assert not local.exists() or b3(local.read_bytes()) == oid
    verify_ok(clone)

    r = run_dsv("clone", remote, tmp_path / "fresh", cwd=tmp_path)
    clean_failure(r, "corrupt")
    assert not (tmp_path / "fresh").exists() or bad_hash not in all_bytes(tmp_path / "fresh")

    flip_byte(path, len(new_large) - 100)
    ok("pull", cwd=clone)
    verify_ok(clone)
    assert_pulled(clone, src)


def test_corrupt_chunk_on_remote_is_refused(dir_remote_pair, tmp_path):
    """A chunk of a chunked file damaged on the remote: pull and clone fail cleanly,
    naming it; the file is not written and no damaged byte is stored."""
    src, remote, clone, _, _ = dir_remote_pair
    chunked = (src / "big" / "chunked.bin").read_bytes()
    first = next(iter(chunking.chunker().cut_buf(chunked)))
    oid = b3(bytes(first.data))
    path, at = _corrupt_packed(remote, oid)

    r = run_dsv("pull", cwd=clone)
    line = clean_failure(r, "corrupt")
    assert oid[:12] in line, line
    assert not (clone / "big" / "chunked.bin").exists()
    verify_ok(clone)
    r = run_dsv("clone", remote, tmp_path / "fresh", cwd=tmp_path)
    clean_failure(r, "corrupt")
    assert not (tmp_path / "fresh" / "big" / "chunked.bin").exists()

    flip_byte(path, at)
    ok("pull", cwd=clone)
    verify_ok(clone)
    assert_pulled(clone, src)
    assert (clone / "big" / "chunked.bin").read_bytes() == chunked


def _flaky_backend(monkeypatch, bad_reads: int) -> dict[str, int]:
    """Make the directory backend hand out damaged bytes for the first `bad_reads` ranged
    reads and whole-object downloads (a flipped byte, as a bad link or gateway would)."""
    from dsv.remotes.fs import FsBackend
    real_range, real_download = FsBackend.get_range, FsBackend.download
    calls = {"range": 0, "download": 0}

    def get_range(self, key: str, start: int, length: int) -> bytes:
        data = real_range(self, key, start, length)
        calls["range"] += 1
        if key.startswith("packs/") and calls["range"] <= bad_reads:
            data = data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0x5A]) + \
                data[len(data) // 2 + 1:]
        return data

    def download(self, key: str):
        calls["download"] += 1
        damage = key.startswith("loose/") and calls["download"] <= bad_reads
        for chunk in real_download(self, key):
            if damage and chunk:
                chunk, damage = bytes([chunk[0] ^ 0x5A]) + chunk[1:], False
            yield chunk

    monkeypatch.setattr(FsBackend, "get_range", get_range)
    monkeypatch.setattr(FsBackend, "download", download)
    return calls


@pytest.mark.parametrize("bad_reads", [1, 2])
def test_bytes_damaged_in_transit_are_read_again(dir_remote_pair, dsv, monkeypatch,
                                                 bad_reads: int) -> None:
    """A download whose bytes do not hash to their id is read again, twice at most, before
    the command fails: a transfer damaged once (or twice) does not fail a pull."""
    src, _remote, clone, _small, _large = dir_remote_pair
    calls = _flaky_backend(monkeypatch, bad_reads)
    r = dsv("pull", cwd=clone)
    assert r.code == 0, r.err
    assert calls["range"] >= bad_reads + 1 and calls["download"] >= bad_reads + 1
    monkeypatch.undo()
    verify_ok(clone)
    assert_pulled(clone, src)


@pytest.mark.parametrize("bad_reads", [1, 1000])
def test_bytes_damaged_in_transit_are_read_again_through_a_cluster_cache(
        dir_remote_pair, dsv, monkeypatch, tmp_path, bad_reads: int) -> None:
    """With a cluster cache, a large object's first download fills the cache: bytes
    damaged on that read are read again (never cached), three reads in all, as without
    a cache."""
    src, _remote, clone, _small, _large = dir_remote_pair
    cache = tmp_path / "cache"
    assert dsv("remote", "add", "shared", cache, "--cache", cwd=clone).code == 0
    from dsv.remotes.fs import FsBackend
    real_download = FsBackend.download
    calls = {"download": 0}

    def download(self: FsBackend, key: str) -> Iterator[bytes]:
        calls["download"] += 1
        damage = calls["download"] <= bad_reads
        for chunk in real_download(self, key):
            if damage and chunk:
                chunk, damage = bytes([chunk[0] ^ 0x5A]) + chunk[1:], False
            yield chunk

    monkeypatch.setattr(FsBackend, "download", download)
    r = dsv("pull", cwd=clone)
    if bad_reads == 1:
        assert r.code == 0, r.err
        assert calls["download"] >= 2
    else:
        assert r.code == 1 and "corrupt" in r.err and "Traceback" not in r.err, r.err
        assert calls["download"] == 3   # one read and two more
    monkeypatch.undo()
    verify_ok(clone)
    if bad_reads == 1:
        assert_pulled(clone, src)
    for entry in (cache / "loose").rglob("*"):
        assert entry.is_dir() or b3(entry.read_bytes()) == entry.name


def test_bytes_damaged_three_times_fail_the_pull_cleanly(dir_remote_pair, dsv,
                                                         monkeypatch) -> None:
    _src, _remote, clone, _small, _large = dir_remote_pair
    calls = _flaky_backend(monkeypatch, bad_reads=1000)
    r = dsv("pull", cwd=clone)
    assert r.code == 1 and "corrupt" in r.err and "Traceback" not in r.err
    assert calls["range"] == 3 or calls["download"] == 3   # one read and two more
    monkeypatch.undo()
    verify_ok(clone)


# ---- kill -9 during push ----------------------------------------------------------------

@pytest.fixture(scope="module")
def push_template(tmp_path_factory):
    """A workspace with two versions (v1 tagged `v1`): 300 small files and two large
    ones in v1, a few changes and a third large file in v2."""
    root = tmp_path_factory.mktemp("push-template") / "ws"
    new_workspace(root, dataset_files(seed=12))
    rng = random.Random(13)
    write_tree(root, {**{f"d{i:02d}/s{i:04d}.bin": rng.randbytes(200) for i in range(5)},
                      "big/shard2.bin": rng.randbytes(MiB + 3), "v2/notes.txt": b"v2\n",
                      "big/chunked.bin": rng.randbytes(4 * MiB + 11)})
    setup_ok("commit", "-m", "v2", cwd=root)
    return root


def _copy(template: Path, dst: Path) -> Path:
    shutil.copytree(template, dst, symlinks=True)
    return dst


def _remote_for(kind: str, tmp_path: Path, s3_endpoint: str):
    """(url, extra `remote add` args, view) for a fresh remote of `kind`."""
    if kind == "dir":
        return str(tmp_path / "remote"), [], DirView(tmp_path / "remote")
    bucket = new_bucket(s3_endpoint)
    return (f"s3://{bucket}/r", ["--endpoint-url", s3_endpoint],
            S3View(s3_endpoint, bucket, "r"))


CRASHES = [("dir", "push:uploaded", 1), ("dir", "push:uploaded", 3),
           ("dir", "push:phase-sent", 1), ("dir", "push:phase-sent", 2),
           ("dir", "push:phase-sent", 3), ("dir", "push:objects-sent", 1),
           ("dir", "push:ref-written", 1),
           # on S3 (moto) a representative subset
           ("s3", "push:uploaded", 2), ("s3", "push:phase-sent", 2),
           ("s3", "push:ref-written", 1)]


@pytest.mark.parametrize("kind,point,after", CRASHES,
                         ids=[f"{k}-{p}-{n}" for k, p, n in CRASHES])
def test_kill_push_at_crash_point(tmp_path, push_template, s3_endpoint, aws_env, kind,
                                  point, after):
    ws = _copy(push_template, tmp_path / "ws")
    url, extra, view = _remote_for(kind, tmp_path, s3_endpoint)
    setup_ok("remote", "add", "origin", url, *extra, cwd=ws)
    r = run_dsv("push", cwd=ws, env={"DSV_CRASH_AT": point, "DSV_CRASH_AFTER": str(after)})
    assert r.returncode == KILLED, f"not killed at {point}#{after}: {r.returncode}\n{r.stderr}"

    state = check_remote(view)            # every ref names complete data
    had = state.objects
    if point in ("push:objects-sent", "push:ref-written"):
        assert had, "objects were all sent before the crash point"
    if point == "push:ref-written":
        assert len(state.refs) == 1
    else:
        assert state.refs == {}, f"a ref was written before all objects: {state.refs}"

    report = ok_json("push", cwd=ws)
    final = check_remote(view)
    assert len(final.refs) == 2 and len(final.versions) == 2
    needed = final.reachable
    # Only what was still missing went up again.
    assert report["objects_sent"] == len(needed - had), (report, len(needed), len(had))
    if report["objects_sent"] and not report["based_on"]:
        assert report["objects_sent"] + report["objects_skipped"] == len(needed), report
    # (compared with a version the remote holds whole, what they share is not looked at)
    assert report["objects_sent"] + report["objects_skipped"] <= len(needed), report
    if had & needed:
        assert report["objects_sent"] < len(needed)
    assert ok_json("push", cwd=ws)["objects_sent"] == 0

    ok("clone", url, tmp_path / "clone", *extra, cwd=tmp_path)
    verify_ok(tmp_path / "clone")
    assert snapshot(tmp_path / "clone") == snapshot(ws)


SCOPED_CRASHES = [("push:uploaded", 1), ("push:uploaded", 2), ("push:phase-sent", 1)]


@pytest.mark.parametrize("point,after", SCOPED_CRASHES,
                         ids=[f"{p}-{n}" for p, n in SCOPED_CRASHES])
def test_kill_push_of_a_store_that_reads_one_dataset(tmp_path, push_template, point, after):
    """A store made by `clone --dataset` refreshes from its dataset's catalog, and lists
    no `index/`: the packs a killed push uploaded are in no catalog yet. The store noted
    each one before uploading it, so the push run again finds them and sends only what
    is still missing (it sent everything again before)."""
    ws = _copy(push_template, tmp_path / "ws")
    url, _extra, view = _remote_for("dir", tmp_path, "")
    setup_ok("remote", "add", "origin", url, cwd=ws)
    ok("push", cwd=ws)
    ok("clone", url, tmp_path / "scoped", "--dataset", "data", cwd=tmp_path)
    work = tmp_path / "scoped"   # (the one dataset, at the clone's root)
    rng = random.Random(14)
    write_tree(work, {**{f"new{i // 50}/n{i:04d}.bin": rng.randbytes(300 + i)
                         for i in range(400)},
                      "big/chunked.bin": rng.randbytes(6 * MiB + 5)})
    setup_ok("commit", "-m", "v3", cwd=work)
    before = check_remote(view)
    r = run_dsv("push", cwd=work, env={"DSV_CRASH_AT": point, "DSV_CRASH_AFTER": str(after)})
    assert r.returncode == KILLED, f"not killed at {point}#{after}: {r.returncode}\n{r.stderr}"
    had = check_remote(view).objects
    assert had - before.objects, "the killed push uploaded nothing"

    report = ok_json("push", cwd=work)
    final = check_remote(view)
    assert len(final.versions) == len(before.versions) + 1
    missing = final.reachable - had
    assert report["objects_sent"] == len(missing), (report, len(missing))
    assert ok_json("push", cwd=work)["objects_sent"] == 0
    ok("clone", url, tmp_path / "clone", cwd=tmp_path)
    verify_ok(tmp_path / "clone")
    assert snapshot(tmp_path / "clone") == snapshot(work)


def test_kill_push_at_random_times(tmp_path):
    """SIGKILL pushes of ~2000 small files and a few large ones at random moments
    (0.05–1.0 s after start); after every kill each remote ref names complete data. A
    push that finishes before its kill gets a new version to push next round. The last
    push completes, sends only what is still missing, and a clone reproduces the
    workspace."""
    rng = random.Random(2024)
    files = {f"s{i // 100:02d}/f{i:05d}.txt": rng.randbytes(rng.randint(64, 2048))
             for i in range(2000)}
    files.update({f"large/{j}.bin": rng.randbytes(3 * MiB + j * 300_000) for j in range(4)})
    ws = new_workspace(tmp_path / "ws", files)
    remote = tmp_path / "remote"
    setup_ok("remote", "add", "origin", remote, cwd=ws)
    view = DirView(remote)
    kills = completed = 0
    for round_ in range(6):
        proc = subprocess.Popen([sys.executable, "-m", "dsv", "push"], cwd=ws,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.05, 1.0))
        proc.send_signal(signal.SIGKILL)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode in (KILLED, 0), err.decode()
        check_remote(view)
        if proc.returncode == KILLED:
            kills += 1
            continue
        completed += 1
        write_tree(ws, {**{f"s{round_:02d}/f{i:05d}.txt": b"round %d file %d\n" % (round_, i)
                           for i in range(round_ * 100, round_ * 100 + 150)},
                        f"large/round{round_}.bin": rng.randbytes(2 * MiB)})
        ok("commit", "-m", f"round {round_}", cwd=ws)
    had = read_remote(view).objects
    report = ok_json("push", cwd=ws)
    final = check_remote(view)
    assert report["objects_sent"] == len(final.reachable - had), report
    assert len(final.versions) == len(log_ids(ws)) == completed + 1
    assert len(final.refs) == 2
    ok("clone", remote, tmp_path / "clone", cwd=tmp_path)
    verify_ok(tmp_path / "clone")
    assert snapshot(tmp_path / "clone") == snapshot(ws)
    assert kills >= 1, "no push was killed: every push finished within its delay"


# ---- kill -9 during pull ----------------------------------------------------------------

def test_kill_clone_while_a_chunked_file_is_written_as_it_downloads(dir_remote_pair,
                                                                   tmp_path):
    """A clone killed while it writes a chunked file from its arriving chunks (a
    worktree.Spool) leaves that file under a temp name: the checkout run again writes
    every file, removes the leftover, and the store checks out clean."""
    src, remote, _clone, _, _ = dir_remote_pair
    fresh = tmp_path / "fresh"
    r = run_dsv("clone", remote, fresh, cwd=tmp_path,
                env={"DSV_CRASH_AT": "checkout:chunk-spooled", "DSV_CRASH_AFTER": "5"})
    assert r.returncode == KILLED, f"not killed: {r.returncode}\n{r.stderr}"
    left = [p for p in fresh.glob("big/.dsv-tmp-*")]
    # (cut short: the chunks handed to it in one stretch, less what its writer held)
    whole = (src / "big" / "chunked.bin").stat().st_size
    assert len(left) == 1 and left[0].stat().st_size < whole, (left, whole)
    assert not (fresh / "big" / "chunked.bin").exists()
    ok("checkout", "data:latest", cwd=fresh)
    assert not list(fresh.glob("big/.dsv-tmp-*"))
    verify_ok(fresh)
    assert_pulled(fresh, src)


def _cut_short_unstored(fresh: Path) -> tuple[Path, bytes]:
    """A file a killed clone's spool made under its own name (not a chunked file's temp
    name) whose object the store does not hold (its chunk's packs were not recorded
    yet), cut short as a kill in its write would leave it: (path, its whole bytes)."""
    import sqlite3
    db = sqlite3.connect(fresh / ".dsv" / "index.db")
    try:
        stored = {oid for (oid,) in db.execute("SELECT oid FROM objects")}
    finally:
        db.close()
    for path in sorted(p for p in fresh.rglob("*") if p.is_file() and ".dsv" not in p.parts
                       and not p.name.startswith(".dsv-tmp-") and p.stat().st_size > 1):
        data = path.read_bytes()
        if b3(data) not in stored:
            with open(path, "r+b") as f:
                f.truncate(len(data) // 2)
            return path, data
    raise AssertionError("every file the spool made has its object in the store")


def test_kill_clone_while_small_files_are_written_as_they_download(dir_remote_pair,
                                                                  tmp_path):
    """A clone killed once the spool has made some small files under their own names (the
    next batch perhaps cut short in its writing thread), one of them cut short with its
    object not yet in the store: the checkout run again downloads that object before it
    compares, so it replaces the file instead of calling it the user's change, and the
    store checks out clean."""
    src, remote, _clone, _, _ = dir_remote_pair
    fresh = tmp_path / "fresh"
    r = run_dsv("clone", remote, fresh, cwd=tmp_path,
                env={"DSV_CRASH_AT": "checkout:file-written", "DSV_CRASH_AFTER": "5"})
    assert r.returncode == KILLED, f"not killed: {r.returncode}\n{r.stderr}"
    made = [p for p in fresh.rglob("*") if p.is_file() and ".dsv" not in p.parts]
    assert len(made) >= 5, made
    cut, whole = _cut_short_unstored(fresh)
    ok("checkout", "data:latest", cwd=fresh)
    assert cut.read_bytes() == whole
    verify_ok(fresh)
    assert_pulled(fresh, src)


def test_a_killed_clone_whose_remote_is_gone_stops_with_the_remote_error(dir_remote_pair,
                                                                         tmp_path):
    """The same killed clone, run again with its remote unreachable: the objects of the
    files that may be cut short cannot be downloaded, so the checkout stops with that
    error; it neither calls the cut-short file the user's change nor touches it."""
    _src, remote, _clone, _, _ = dir_remote_pair
    fresh = tmp_path / "fresh"
    r = run_dsv("clone", remote, fresh, cwd=tmp_path,
                env={"DSV_CRASH_AT": "checkout:file-written", "DSV_CRASH_AFTER": "5"})
    assert r.returncode == KILLED, f"not killed: {r.returncode}\n{r.stderr}"
    cut, whole = _cut_short_unstored(fresh)
    short = cut.read_bytes()
    remote.rename(remote.with_name("gone"))
    got = run_dsv("checkout", "data:latest", cwd=fresh)
    assert got.returncode not in (0, KILLED), got.stdout
    assert "remote" in got.stderr.lower(), got.stderr
    assert "commit" not in got.stderr.lower() and "bug in dsv" not in got.stderr, got.stderr
    assert cut.read_bytes() == short != whole


@pytest.mark.parametrize("point", ["fetch:objects-written", "pull:objects-written"])
def test_kill_pull_at_crash_point(dir_remote_pair, point):
    src, _remote, clone, _, _ = dir_remote_pair
    r = run_dsv("pull", cwd=clone, env={"DSV_CRASH_AT": point})
    assert r.returncode == KILLED, f"not killed at {point}: {r.returncode}\n{r.stderr}"
    verify_ok(clone)
    ok("pull", cwd=clone)
    verify_ok(clone)
    assert_pulled(clone, src)
