"""`dsv verify --remote --repair` beside other clients, temp files left on directory
remotes, and S3 answers that lack what dsv reads from them.

A repair uploads packs and deletes damaged ones, so it holds the remote's maintenance
lease as `remote maintain` and `gc --remote` do. The race tests stop one of them at a
pause point (`DSV_PAUSE_AT`, dsv/faults.py), run the other, let the first go on, and check
the remote with the independent checker (tests/servers.py `check_remote`) and by a clone.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import flip_byte, read_tree, run_dsv, write_tree
from servers import DirView, check_remote, s3_client
from test_gc_race import finish, ok, paused, spawn, wait_for
from test_sync_faults import new_bucket, setup_ok

from dsv.remotes.layout import MAINTAIN_LOCK

# Two versions, each pushed on its own: two blob packs. One byte flipped in each, and a
# repair writes the objects of both into one new pack (a new pack id).
ONE = {"a.txt": b"alpha " * 40, "b.txt": b"bravo " * 40, "c.txt": b"charlie " * 40}
SMALL = {**ONE, "d.txt": b"delta " * 40, "e.txt": b"echo " * 40}


def _damaged_remote(tmp_path: Path) -> tuple[Path, Path, Path, list[Path]]:
    """A store `src` that pushed ONE, then SMALL, to a directory remote, a clone `other`
    of it (a second client), and the remote's two blob packs, each with one byte of a
    file flipped. Returns (src, other, remote, damaged packs)."""
    src, remote, other = tmp_path / "src", tmp_path / "remote", tmp_path / "other"
    src.mkdir()
    write_tree(src, ONE)
    setup_ok("init", "--name", "data", cwd=src)
    setup_ok("commit", "-m", "one", cwd=src)
    setup_ok("remote", "add", "origin", remote, cwd=src)
    ok("push", cwd=src)
    write_tree(src, SMALL)
    setup_ok("commit", "-m", "two", cwd=src)
    ok("push", cwd=src)
    ok("clone", remote, other, cwd=tmp_path)
    damaged = []
    for blob in (SMALL["a.txt"], SMALL["d.txt"]):
        pack = next(p for p in (remote / "packs").iterdir() if blob in p.read_bytes())
        flip_byte(pack, pack.read_bytes().index(blob) + 5)
        damaged.append(pack)
    assert damaged[0] != damaged[1]
    return src, other, remote, damaged


def _remote_is_whole(src: Path, remote: Path, tmp_path: Path) -> None:
    """The independent checker, dsv's own data check, and a clone byte for byte."""
    check_remote(DirView(remote))
    r = ok("verify", "--remote", "origin", "--read-data", "--json", cwd=src)
    assert json.loads(r.stdout)["ok"], r.stdout
    clone = tmp_path / "check"
    ok("clone", remote, clone, cwd=tmp_path)
    assert read_tree(clone) == SMALL


def test_gc_while_a_repair_is_between_its_pack_and_its_index(tmp_path: Path) -> None:
    """A gc that ran while a repair had uploaded its new pack but not yet the pack's index
    deleted that pack as a leftover, and the repair then deleted the damaged pack: the two
    good files in it were gone. The repair holds the maintenance lease: the gc refuses."""
    src, other, remote, damaged = _damaged_remote(tmp_path)
    packs = {p.name for p in (remote / "packs").iterdir()}
    pause = tmp_path / "pause"
    pause.mkdir()
    point = "repair:pack-uploaded"
    repair = spawn("verify", "--remote", "origin", "--read-data", "--repair", "--json",
                   cwd=src, env=paused(point, pause))
    wait_for(pause / f"{point}.reached", repair)
    new_packs = {p.name for p in (remote / "packs").iterdir()} - packs
    assert len(new_packs) == 1, new_packs   # the repair's pack, not yet indexed
    gc = spawn("gc", "--remote", "origin", cwd=other)
    gc_out, gc_err = gc.communicate(timeout=120)
    (pause / f"{point}.go").touch()
    report = json.loads(finish(repair))
    assert report["ok"], report
    assert not any(p.exists() for p in damaged)
    _remote_is_whole(src, remote, tmp_path)
    assert gc.returncode == 1, gc_out + gc_err
    assert "error: another client is maintaining origin" in gc_err, gc_err
    assert "nothing was deleted" in gc_err and "Traceback" not in gc_err, gc_err


def test_repair_refuses_while_a_gc_holds_the_lease(tmp_path: Path) -> None:
    """A repair that starts while a gc runs changes nothing and says why (exit 1); run
    again after the gc, it repairs."""
    src, other, remote, damaged = _damaged_remote(tmp_path)
    before = {p: p.read_bytes() for p in remote.rglob("*") if p.is_file()
              and p.name != MAINTAIN_LOCK}
    pause = tmp_path / "pause"
    pause.mkdir()
    point = "gc:planned"
    gc = spawn("gc", "--remote", "origin", cwd=other, env=paused(point, pause))
    wait_for(pause / f"{point}.reached", gc)
    r = spawn("verify", "--remote", "origin", "--read-data", "--repair", cwd=src)
    out, err = r.communicate(timeout=120)
    assert r.returncode == 1, out + err
    assert "error: another client is maintaining origin" in err, err
    assert "nothing was repaired" in err and "Traceback" not in err, err
    after = {p: p.read_bytes() for p in remote.rglob("*") if p.is_file()
             and p.name != MAINTAIN_LOCK}
    assert after == before
    (pause / f"{point}.go").touch()
    finish(gc)
    r2 = ok("verify", "--remote", "origin", "--read-data", "--repair", "--json", cwd=src)
    assert json.loads(r2.stdout)["ok"]
    assert not any(p.exists() for p in damaged)
    _remote_is_whole(src, remote, tmp_path)


def test_verify_without_repair_takes_no_lease(tmp_path: Path) -> None:
    """A check alone writes nothing, so it runs beside a gc, and warns that one is
    running (what a gc or a repack changes meanwhile can look like damage)."""
    src, other, _remote, _damaged = _damaged_remote(tmp_path)
    pause = tmp_path / "pause"
    pause.mkdir()
    point = "gc:planned"
    gc = spawn("gc", "--remote", "origin", cwd=other, env=paused(point, pause))
    wait_for(pause / f"{point}.reached", gc)
    r = spawn("verify", "--remote", "origin", "--read-data", cwd=src)
    out, err = r.communicate(timeout=120)
    (pause / f"{point}.go").touch()
    finish(gc)
    assert r.returncode == 1, out + err   # the flipped byte
    assert "is corrupt" in out and "Traceback" not in err, out + err
    assert "warning: another client is maintaining origin" in out, out


# ---- S3 answers that lack what dsv reads from them ------------------------------------------

Mangle = Callable[[str, str, list[tuple[str, str]], bytes],
                  tuple[list[tuple[str, str]], bytes]]


class _Mangler:
    """An HTTP proxy in front of an S3 server that relays every request and lets
    `mangle(method, path, headers, body)` change each answer: an endpoint that leaves out
    a field dsv reads. (Answers are relayed with a Content-Length the proxy sets, unless
    `mangle` removes it; every connection carries one request.)"""

    def __init__(self, upstream: str, mangle: Mangle) -> None:
        host, _, port = upstream.split("://", 1)[1].rstrip("/").partition(":")
        target = (host, int(port or 80))

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                conn = http.client.HTTPConnection(*target, timeout=60)
                conn.putrequest(self.command, self.path, skip_host=True,
                                skip_accept_encoding=True)
                for k, v in self.headers.items():
                    if k.lower() not in ("connection", "keep-alive"):
                        conn.putheader(k, v)
                conn.putheader("Connection", "close")
                conn.endheaders(body)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                headers = [(k, v) for k, v in resp.getheaders()
                           if k.lower() not in ("connection", "transfer-encoding")
                           and (self.command == "HEAD" or k.lower() != "content-length")]
                if self.command != "HEAD":
                    headers.append(("Content-Length", str(len(data))))
                headers, data = mangle(self.command, self.path, headers, data)
                self.send_response(resp.status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                self.close_connection = True

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _relay

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _without(name: str, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() != name.lower()]


@pytest.fixture
def mangler(s3_endpoint: str, aws_env: None):
    made: list[_Mangler] = []

    def make(mangle: Mangle) -> str:
        made.append(_Mangler(s3_endpoint, mangle))
        return made[-1].url
    yield make
    for m in made:
        m.close()


def _clean_error(r: subprocess.CompletedProcess[str], *words: str) -> str:
    text = f"exit {r.returncode}\n{r.stdout}{r.stderr}"
    assert r.returncode == 1, text
    assert "Traceback" not in text and "bug in dsv" not in text, text
    error = next(line for line in r.stderr.splitlines() if line.startswith("error:"))
    for word in words:
        assert word in error, text
    return error


def _store(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    write_tree(ws, {"x.txt": b"x"})
    setup_ok("init", "--name", "data", cwd=ws)
    setup_ok("commit", "-m", "one", cwd=ws)
    return ws


def test_import_of_an_object_whose_head_has_no_length(tmp_path: Path, s3_endpoint: str,
                                                      mangler) -> None:
    bucket = new_bucket(s3_endpoint)
    client = s3_client(s3_endpoint)
    client.put_object(Bucket=bucket, Key="data/file.bin", Body=b"payload " * 100)
    etag = client.head_object(Bucket=bucket, Key="data/file.bin")["ETag"].strip('"')
    url = mangler(lambda method, path, headers, body: (
        _without("Content-Length", headers) if method == "HEAD" else headers, body))
    ws = _store(tmp_path)
    r = run_dsv("import", f"s3://{bucket}/data/file.bin", "--etag", etag,
                "--endpoint-url", url, cwd=ws)
    _clean_error(r, f"s3://{bucket}/data/file.bin", "answer has no valid Content-Length")


def test_import_of_a_listing_without_sizes(tmp_path: Path, s3_endpoint: str,
                                           mangler) -> None:
    bucket = new_bucket(s3_endpoint)
    client = s3_client(s3_endpoint)
    for name in ("a", "b"):
        client.put_object(Bucket=bucket, Key=f"data/{name}.txt", Body=name.encode() * 10)

    def no_sizes(method: str, path: str, headers: list[tuple[str, str]], body: bytes):
        if method == "GET" and "list-type=2" in path:
            body = re.sub(rb"<Size>[^<]*</Size>", b"", body)
            headers = _without("Content-Length", headers) + [("Content-Length",
                                                             str(len(body)))]
        return headers, body
    url = mangler(no_sizes)
    ws = _store(tmp_path)
    r = run_dsv("import", f"s3://{bucket}/data/", "--endpoint-url", url, cwd=ws)
    _clean_error(r, f"listing s3://{bucket}/data/", "answer has no valid Size for 'data/a.txt'")


def test_remote_whose_gets_carry_no_etag(tmp_path: Path, s3_endpoint: str, mangler) -> None:
    """A ref read without an ETag cannot be changed safely: a clean error, never a
    KeyError."""
    bucket = new_bucket(s3_endpoint)
    ws = _store(tmp_path)
    setup_ok("remote", "add", "origin", f"s3://{bucket}/r", "--endpoint-url", s3_endpoint,
             cwd=ws)
    ok("push", cwd=ws)
    url = mangler(lambda method, path, headers, body: (
        _without("ETag", headers) if method == "GET" else headers, body))
    r = run_dsv("clone", f"s3://{bucket}/r", tmp_path / "clone", "--endpoint-url", url,
                cwd=tmp_path)
    _clean_error(r, f"s3://{bucket}/r/", "answer has no valid ETag")
    assert not (tmp_path / "clone").exists()


def test_remote_whose_puts_carry_no_etag(tmp_path: Path, s3_endpoint: str, mangler) -> None:
    bucket = new_bucket(s3_endpoint)
    url = mangler(lambda method, path, headers, body: (
        _without("ETag", headers) if method == "PUT" else headers, body))
    ws = _store(tmp_path)
    setup_ok("remote", "add", "origin", f"s3://{bucket}/r", "--endpoint-url", url, cwd=ws)
    r = run_dsv("push", cwd=ws)
    _clean_error(r, f"updating s3://{bucket}/r/", "answer has no valid ETag")


def test_remote_whose_heads_carry_no_length(tmp_path: Path, s3_endpoint: str,
                                            mangler) -> None:
    """A second store pushes a large file the remote already holds: its HEAD (is it
    there?) comes back without a Content-Length."""
    bucket = new_bucket(s3_endpoint)
    big = os.urandom(2 << 20)
    first = _store(tmp_path)
    write_tree(first, {"big.bin": big})
    setup_ok("commit", "-m", "big", cwd=first)
    setup_ok("remote", "add", "origin", f"s3://{bucket}/r", "--endpoint-url", s3_endpoint,
             cwd=first)
    ok("push", cwd=first)
    url = mangler(lambda method, path, headers, body: (
        _without("Content-Length", headers) if method == "HEAD" else headers, body))
    second = tmp_path / "second"
    write_tree(second, {"big.bin": big})
    setup_ok("init", "--name", "other", cwd=second)
    setup_ok("commit", "-m", "same big file", cwd=second)
    setup_ok("remote", "add", "origin", f"s3://{bucket}/r", "--endpoint-url", url,
             cwd=second)
    r = run_dsv("push", cwd=second)
    _clean_error(r, f"s3://{bucket}/r/loose/", "answer has no valid Content-Length")


# ---- temp files that killed uploads leave on a directory remote ------------------------------

BIG = {"big.bin": os.urandom(3 << 20), "small.txt": b"small\n"}
DAY = 24 * 3600


def _big_store(tmp_path: Path) -> tuple[Path, Path]:
    ws, remote = tmp_path / "ws", tmp_path / "remote"
    ws.mkdir()
    write_tree(ws, BIG)
    setup_ok("init", "--name", "data", cwd=ws)
    setup_ok("commit", "-m", "big", cwd=ws)
    setup_ok("remote", "add", "origin", remote, cwd=ws)
    return ws, remote


def _temp_files(remote: Path) -> list[Path]:
    return sorted((remote / "tmp").glob(".dsv-tmp-*"))


def _big_temp(remote: Path) -> Path:
    """The large file's temp file, whole (the push stopped before renaming it)."""
    [path] = [p for p in _temp_files(remote) if p.stat().st_size == len(BIG["big.bin"])]
    return path


def _age(path: Path, seconds: float) -> None:
    then = path.stat().st_mtime - seconds
    os.utime(path, (then, then))


def _expire_push_leases(remote: Path) -> None:
    """As if the killed push's lease had run out (15 minutes on)."""
    for lease in (remote / "locks").glob("*"):
        lease.write_text(json.dumps({"owner": lease.name, "until": 1}))


def test_maintain_and_gc_remove_a_killed_uploads_temp_file(tmp_path: Path) -> None:
    """A push killed while its large file's temp file was whole but not yet renamed
    left 3 MiB in tmp/ for good. `remote maintain` and `gc --remote` remove such files
    once nothing has written to them for a day, and leave younger ones alone."""
    ws, remote = _big_store(tmp_path)
    r = run_dsv("push", cwd=ws, env={"DSV_CRASH_AT": "fs:temp-written"})
    assert r.returncode == -9, r.stdout + r.stderr
    # (the large file's, and any pack's the parallel uploads were writing)
    left = _temp_files(remote)
    assert len(BIG["big.bin"]) in [p.stat().st_size for p in left]
    out = ok("remote", "maintain", "--json", cwd=ws).stdout
    assert json.loads(out)["stale_uploads_removed"] == 0   # too young
    assert _temp_files(remote) == left
    for path in left:
        _age(path, DAY + 60)
    out = ok("remote", "maintain", cwd=ws).stdout
    assert f"origin: removed {len(left)} temp file" in out and "of killed uploads (3." in out, \
        out
    assert _temp_files(remote) == []

    # The same through gc (once the killed push's lease has run out).
    r = run_dsv("push", cwd=ws, env={"DSV_CRASH_AT": "fs:temp-written"})
    assert r.returncode == -9, r.stdout + r.stderr
    left = _temp_files(remote)
    young = remote / "tmp" / ".dsv-tmp-still-being-written"
    young.write_bytes(b"x" * 1000)
    for path in left:
        _age(path, DAY + 60)
    _expire_push_leases(remote)
    report = json.loads(ok("gc", "--remote", "origin", "--json", cwd=ws).stdout)
    assert report["stale_uploads_removed"] == len(left), report
    assert report["bytes_freed"] >= len(BIG["big.bin"]), report
    assert _temp_files(remote) == [young]
    ok("push", cwd=ws)
    check_remote(DirView(remote))


PAUSED_AT = "fs:temp-written"


def _push_paused_with_its_temp_file(tmp_path: Path):
    """A push of `_big_store` paused with its large file's temp file whole but not yet
    renamed: (workspace, remote, pause dir, the push, the temp file)."""
    ws, remote = _big_store(tmp_path)
    pause = tmp_path / "pause"
    pause.mkdir()
    push = spawn("push", cwd=ws, env=paused(PAUSED_AT, pause))
    wait_for(pause / f"{PAUSED_AT}.reached", push)
    return ws, remote, pause, push, _big_temp(remote)


def _maintain_from_another_client(tmp_path: Path, remote: Path) -> dict:
    """`dsv remote maintain --json` of `remote` from a second, bare store."""
    other = tmp_path / "other"
    other.mkdir()
    setup_ok("init", "--bare", cwd=other)
    setup_ok("remote", "add", "origin", remote, cwd=other)
    return json.loads(ok("remote", "maintain", "--json", cwd=other).stdout)


def test_maintain_beside_a_push_writing_its_temp_file(tmp_path: Path) -> None:
    """A push whose temp file is whole but not yet renamed, while `remote maintain`
    runs: the file is young, so it stays, and the push completes."""
    ws, remote, pause, push, writing = _push_paused_with_its_temp_file(tmp_path)
    out = _maintain_from_another_client(tmp_path, remote)
    assert out["stale_uploads_removed"] == 0 and writing.exists()
    (pause / f"{PAUSED_AT}.go").touch()
    finish(push)
    check_remote(DirView(remote))
    clone = tmp_path / "clone"
    ok("clone", remote, clone, cwd=tmp_path)
    assert read_tree(clone) == BIG


def test_push_stopped_for_a_day_before_its_rename_fails_clearly(tmp_path: Path) -> None:
    """A pusher stopped for over a day between writing its temp file and renaming it:
    a maintainer removed the file meanwhile. The push fails with one clear line and
    publishes nothing; run again, it completes."""
    ws, remote, pause, push, writing = _push_paused_with_its_temp_file(tmp_path)
    _age(writing, DAY + 60)
    out = _maintain_from_another_client(tmp_path, remote)
    assert out["stale_uploads_removed"] == 1 and not writing.exists()
    (pause / f"{PAUSED_AT}.go").touch()
    out, err = push.communicate(timeout=120)
    assert push.returncode == 1, out + err
    assert "was removed before it was renamed into place" in err, err
    assert "Traceback" not in err and "bug in dsv" not in err, err
    assert not (remote / "refs").exists() or not any((remote / "refs").rglob("latest"))
    ok("push", cwd=ws)
    check_remote(DirView(remote))
    clone = tmp_path / "clone"
    ok("clone", remote, clone, cwd=tmp_path)
    assert read_tree(clone) == BIG


def test_a_big_repair_uploads_packs_of_a_pushs_size(tmp_path: Path) -> None:
    """A repair of 36 MiB of small objects puts them in packs of about UPLOAD_PACK_SIZE,
    one kind each, as a push does, holding one in memory at a time. (Before: every object
    went into one pack built in memory: here 37 MB, for a large remote any size.)"""
    from dsv.sync.remote import UPLOAD_PACK_SIZE
    src, remote = tmp_path / "src", tmp_path / "remote"
    files = {f"f{i:02d}.bin": os.urandom(900 << 10) for i in range(40)}
    write_tree(src, files)
    setup_ok("init", "--name", "data", cwd=src)
    setup_ok("commit", "-m", "forty", cwd=src)
    setup_ok("remote", "add", "origin", remote, cwd=src)
    ok("push", cwd=src)
    before = set(os.listdir(remote / "packs"))
    for name in sorted(before):   # one byte of every pack
        pack = remote / "packs" / name
        flip_byte(pack, 100)
    r = ok("verify", "--remote", "origin", "--read-data", "--repair", "--json", cwd=src)
    assert json.loads(r.stdout)["ok"], r.stdout
    new = set(os.listdir(remote / "packs")) - before
    sizes = sorted((remote / "packs" / n).stat().st_size for n in new)
    assert len(new) >= 3 and sizes[-1] <= UPLOAD_PACK_SIZE + (1 << 20), sizes
    check_remote(DirView(remote))
    clone = tmp_path / "check"
    ok("clone", remote, clone, cwd=tmp_path)
    assert read_tree(clone) == files


# ---- unfinished multipart uploads that killed pushes leave on S3 ---------------------------

def _begin_upload(client, bucket: str, key: str, part: bytes) -> str:
    """What a push killed during a large file's multipart upload leaves: an upload begun,
    one part sent, never completed nor aborted (no listing of keys shows it)."""
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=part)
    return upload


def _uploads(client, bucket: str) -> set[str]:
    return {u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def _with_initiated(when: bytes | None):
    """An answer to ListMultipartUploads whose uploads began at `when` (None: without a
    start time)."""
    def mangle(method: str, path: str, headers: list[tuple[str, str]], body: bytes):
        if method == "GET" and "uploads" in path.partition("?")[2]:
            body = re.sub(rb"<Initiated>[^<]*</Initiated>",
                          b"" if when is None else b"<Initiated>" + when + b"</Initiated>",
                          body)
            headers = _without("Content-Length", headers) + [("Content-Length",
                                                             str(len(body)))]
        return headers, body
    return mangle


def test_maintain_and_gc_abort_unfinished_uploads_of_loose_objects(
        tmp_path: Path, s3_endpoint: str, mangler) -> None:
    """A push killed while it uploaded a large file in parts left the parts on the
    bucket, billed for good and shown by no listing of keys. `remote maintain` and
    `gc --remote` abort such uploads of the remote's own `loose/` keys once a day old;
    younger ones, undated ones, and every other upload in the bucket stay."""
    bucket = new_bucket(s3_endpoint)
    client = s3_client(s3_endpoint)
    ws = _store(tmp_path)
    setup_ok("remote", "add", "origin", f"s3://{bucket}/r", "--endpoint-url", s3_endpoint,
             cwd=ws)
    ok("push", cwd=ws)
    oid = "ab" + "c" * 62
    ours = f"r/loose/ab/{oid}"
    others = {f"r/loose/{oid}", f"r/packs/{oid}.pack", f"elsewhere/loose/ab/{oid}",
              f"loose/ab/{oid}"}   # (not a loose key of this remote)
    for key in (ours, *others):
        _begin_upload(client, bucket, key, b"p" * 5000)
    assert _uploads(client, bucket) == {ours, *others}

    # Begun just now, or at a time the endpoint does not say: left alone.
    now = __import__("datetime").datetime.now(__import__("datetime").timezone.utc)
    for mangle in (_with_initiated(now.strftime("%Y-%m-%dT%H:%M:%S.000Z").encode()),
                   _with_initiated(None)):
        setup_ok("remote", "add", "young", f"s3://{bucket}/r", "--endpoint-url",
                 mangler(mangle), cwd=ws)
        report = json.loads(ok("remote", "maintain", "young", "--json", cwd=ws).stdout)
        assert report["stale_uploads_removed"] == 0, report
        assert _uploads(client, bucket) == {ours, *others}
        setup_ok("remote", "remove", "young", cwd=ws)

    # (moto says every upload began in 2010)
    out = ok("remote", "maintain", cwd=ws).stdout
    assert "origin: removed 1 temp file of killed uploads (4.9 KiB)" in out, out
    assert _uploads(client, bucket) == others

    _begin_upload(client, bucket, ours, b"q" * 7000)
    report = json.loads(ok("gc", "--remote", "origin", "--json", cwd=ws).stdout)
    assert report["stale_uploads_removed"] == 1 and report["bytes_freed"] >= 7000, report
    assert _uploads(client, bucket) == others
    clone = tmp_path / "clone"
    ok("clone", f"s3://{bucket}/r", clone, "--endpoint-url", s3_endpoint, cwd=tmp_path)
    assert read_tree(clone) == {"x.txt": b"x"}


def _catalog(remote: Path) -> set[tuple[str, str]]:
    """(dataset id, pack id) of every catalog entry on a directory remote."""
    root = remote / "catalog"
    return {(d.name, p.name) for d in root.iterdir() for p in d.iterdir()} \
        if root.exists() else set()


def test_a_repair_names_its_new_packs_in_the_catalogs_and_drops_the_deleted_ones(
        tmp_path: Path) -> None:
    """A reader of one dataset reads only the packs its catalog names. A repair that
    writes the damaged packs' objects into a new pack names it in the catalog of every
    dataset that needs it, and removes the entries of the packs it deletes. (Before: the
    entries naming the deleted packs stayed until the next gc, and every verify warned of
    them.)"""
    src, other, remote, damaged = _damaged_remote(tmp_path)
    before = _catalog(remote)
    gone = {p.name.removesuffix(".pack") for p in damaged}
    assert gone <= {pack for _ds, pack in before}
    packs = {p.name for p in (remote / "packs").iterdir()}
    report = json.loads(ok("verify", "--remote", "origin", "--read-data", "--repair",
                           "--json", cwd=src).stdout)
    assert report["ok"] and not any("catalog" in w for w in report["warnings"]), report
    [new] = [p.removesuffix(".pack") for p in
             {p.name for p in (remote / "packs").iterdir()} - packs]
    after = _catalog(remote)
    datasets = {ds for ds, _pack in before}
    assert after == {(ds, p) for ds, p in before if p not in gone} | \
        {(ds, new) for ds in datasets}, (before, after)
    r = ok("verify", "--remote", "origin", "--json", cwd=src)
    checked = json.loads(r.stdout)
    assert checked["ok"] and checked["problems"] == [] and not any(
        "catalog" in w for w in checked["warnings"]), checked
    # A reader of the one dataset alone finds every file.
    scoped = tmp_path / "scoped"
    ok("clone", remote, scoped, "--dataset", "data", cwd=tmp_path)
    assert read_tree(scoped) == SMALL
