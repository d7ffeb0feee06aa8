"""Remote backends and the cluster cache against hostile files (issue 8 items 14, 16 and
the backend half of 9; SPEC §4: input from any remote is untrusted, sizes are checked
before use, links are never followed, nothing hangs).

Real directories under tmp_path (FIFOs, sparse files, symlinks, sockets made for real);
S3 cases against moto's server mode on loopback (the `s3_endpoint` fixture), one bucket
per test, plus a tiny HTTP server that answers with a wrong `x-amz-checksum-crc32`.
Anything that could hang runs in a daemon thread with a wall-time bound.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import boto3
import pytest

from dsv import fileio
from dsv.remotes import base, s3
from dsv.remotes.base import (MAX_GET_BYTES, MAX_REF_BYTES, BadKey, CorruptDownload, NotFound,
                              NotRegular, RemoteError, TooLarge)
from dsv.remotes.cache import ClusterCache
from dsv.remotes.fs import FsBackend
from dsv.remotes.s3 import S3Backend
from servers import b3

BOUND_S = 5.0
GiB = 1 << 30
HOSTILE_KEYS = ["../escape", "refs/../../etc/passwd", "/etc/passwd", "refs//latest",
                "refs/x/", "refs/\0/latest", "", "./refs/x", "refs/./x", ".."]


# ---- helpers ---------------------------------------------------------------------------

def within(fn: Callable[[], Any], seconds: float = BOUND_S) -> Any:
    """Run `fn` in a daemon thread; fail if it takes longer than `seconds` (a hang);
    return its value or re-raise its exception."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    t0 = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish within {seconds} s (a hang)"
    assert time.monotonic() - t0 < seconds
    if "error" in out:
        raise out["error"]
    return out.get("value")


def unblock(fifo: Path) -> None:
    """Open the FIFO's write end once, so that a reader stuck in open() (a failed test)
    returns and its thread ends."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


@pytest.fixture
def remote(tmp_path: Path) -> tuple[FsBackend, Path]:
    root = tmp_path / "remote"
    root.mkdir()
    return FsBackend(str(root)), root


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside every remote and cache, standing in for /etc/passwd."""
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_bytes(b"root:x:0:0:do not read me\n")
    return path


@pytest.fixture
def bucket(s3_endpoint: str, aws_env: None) -> str:
    name = f"rb{os.urandom(5).hex()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_remote(s3_endpoint: str, bucket: str) -> S3Backend:
    return S3Backend(f"s3://{bucket}/team/ds", s3_endpoint)


def put_raw(endpoint: str, bucket: str, key: str, data: bytes) -> None:
    boto3.client("s3", endpoint_url=endpoint).put_object(Bucket=bucket, Key=key, Body=data)


# ---- fileio.open_regular / read_regular ----------------------------------------------------

def test_open_regular_refuses_every_kind_of_non_regular_file(tmp_path: Path,
                                                             secret: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(secret)
    directory = tmp_path / "dir"
    directory.mkdir()
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        for path, code in ((fifo, errno.EINVAL), (link, errno.ELOOP),
                           (directory, errno.EISDIR), (sock_path, errno.EINVAL)):
            with pytest.raises(fileio.NotRegularFile) as info:
                within(lambda: fileio.open_regular(path))
            assert info.value.errno == code, path
            with pytest.raises(fileio.NotRegularFile):
                within(lambda: fileio.read_regular(path, 1 << 20))
        if os.path.exists("/dev/null"):
            with pytest.raises(fileio.NotRegularFile):
                fileio.open_regular("/dev/null")
    finally:
        sock.close()
        unblock(fifo)
    with pytest.raises(FileNotFoundError):
        fileio.open_regular(tmp_path / "absent")


def test_open_regular_caps_size_and_returns_a_blocking_fd(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    with pytest.raises(fileio.FileTooLarge) as info:
        fileio.open_regular(path, 99)
    assert info.value.errno == errno.EFBIG
    fd = fileio.open_regular(path, 100)
    try:
        import fcntl
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert os.read(fd, 200) == b"x" * 100
    finally:
        os.close(fd)
    assert fileio.read_regular(path, 100) == b"x" * 100
    with pytest.raises(fileio.FileTooLarge):
        fileio.read_regular(path, 10)
    # relative to a directory fd, as the backends use it
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert fileio.read_regular("f", 100, dir_fd=dir_fd) == b"x" * 100
    finally:
        os.close(dir_fd)


def test_read_regular_of_a_sparse_4gib_file_is_refused_not_read(tmp_path: Path) -> None:
    path = tmp_path / "huge"
    with open(path, "wb") as f:
        f.truncate(4 * GiB)
    with pytest.raises(fileio.FileTooLarge):
        within(lambda: fileio.read_regular(path, 64 << 10))


# ---- directory remote: refs and small files ---------------------------------------------------

def test_fs_fifo_ref_never_hangs(remote: tuple[FsBackend, Path]) -> None:
    backend, root = remote
    fifo = root / "refs" / "x" / "latest"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    try:
        with pytest.raises(NotRegular, match="FIFO"):
            within(lambda: backend.read_ref("refs/x/latest"))
        with pytest.raises(NotRegular):
            within(lambda: backend.get("refs/x/latest"))
        with pytest.raises(NotRegular):
            within(lambda: backend.get_range("refs/x/latest", 0, 1))
        with pytest.raises(NotRegular):
            within(lambda: list(backend.download("refs/x/latest")))
        assert within(lambda: backend.head("refs/x/latest")) is None
        assert within(lambda: list(backend.list("refs/"))) == []
    finally:
        unblock(fifo)


def test_fs_sparse_4gib_ref_and_index_are_refused_before_reading(
        remote: tuple[FsBackend, Path]) -> None:
    backend, root = remote
    ref = root / "refs" / "x" / "latest"
    ref.parent.mkdir(parents=True)
    index = root / "index" / ("a" * 64)
    index.parent.mkdir()
    for path in (ref, index):
        with open(path, "wb") as f:
            f.truncate(4 * GiB)
    with pytest.raises(TooLarge, match="too large"):
        within(lambda: backend.read_ref("refs/x/latest"))
    with pytest.raises(TooLarge):
        within(lambda: backend.get("index/" + "a" * 64))
    assert within(lambda: backend.head("index/" + "a" * 64)) == 4 * GiB
    # a range claimed past the end is an error, not an allocation
    with pytest.raises(RemoteError, match="holds"):
        within(lambda: backend.get_range("index/" + "a" * 64, 4 * GiB - 10, 100))
    # and no single range larger than the cap, even inside the file
    with pytest.raises(TooLarge):
        within(lambda: backend.get_range("index/" + "a" * 64, 0, MAX_GET_BYTES + 1))
    # a small ref is read whole, with its tag; the cap is the documented one
    ref.unlink()
    ref.write_bytes(b"x" * MAX_REF_BYTES)
    data, tag = backend.read_ref("refs/x/latest")
    assert data == b"x" * MAX_REF_BYTES and tag == b3(data)
    ref.write_bytes(b"x" * (MAX_REF_BYTES + 1))
    with pytest.raises(TooLarge):
        backend.read_ref("refs/x/latest")
    assert backend.get("refs/x/latest") == b"x" * (MAX_REF_BYTES + 1)  # `get` has its own cap
    with pytest.raises(TooLarge):
        backend.get("refs/x/latest", max_size=10)


def test_fs_symlinks_are_never_followed(remote: tuple[FsBackend, Path], secret: Path) -> None:
    backend, root = remote
    (root / "refs" / "x").mkdir(parents=True)
    (root / "refs" / "x" / "latest").symlink_to(secret)
    (root / "refs" / "evil").symlink_to(secret.parent, target_is_directory=True)
    (root / "index").symlink_to(secret.parent, target_is_directory=True)
    (root / "refs" / "ok").mkdir()
    (root / "refs" / "ok" / "latest").write_bytes(b"{}")
    for call in (lambda: backend.read_ref("refs/x/latest"),
                 lambda: backend.get("refs/x/latest"),
                 lambda: backend.get_range("refs/x/latest", 0, 4),
                 lambda: list(backend.download("refs/x/latest")),
                 lambda: backend.get("refs/evil/secret.txt"),
                 lambda: backend.read_ref("refs/evil/secret.txt"),
                 lambda: backend.get("index/secret.txt")):
        with pytest.raises(NotRegular):
            call()
    assert backend.head("refs/x/latest") is None
    assert backend.head("refs/evil/secret.txt") is None
    # a listing reports regular files only and never leaves the root
    assert list(backend.list("refs/")) == [("refs/ok/latest", 2)]
    assert list(backend.list("index/")) == []
    assert sorted(k for k, _ in backend.list("")) == ["refs/ok/latest"]
    # writing through a symlinked directory is refused; the outside is untouched
    with pytest.raises(NotRegular):
        backend.write_ref("refs/evil/latest", b"{}", None)
    with pytest.raises(NotRegular):
        backend.put_bytes("index/" + "b" * 64, b"data")
    assert sorted(p.name for p in secret.parent.iterdir()) == ["secret.txt"]
    # a ref that is a link is replaced by the rename, never written through
    before = secret.read_bytes()
    data = backend.read_ref("refs/ok/latest")
    assert data is not None
    with pytest.raises(NotRegular):
        backend.write_ref("refs/x/latest", b"{}", None)
    assert secret.read_bytes() == before


def test_fs_refs_lock_link_is_not_followed(remote: tuple[FsBackend, Path], tmp_path: Path
                                           ) -> None:
    backend, root = remote
    target = tmp_path / "outside-lock"
    (root / "refs.lock").symlink_to(target)
    with pytest.raises(NotRegular):
        backend.write_ref("refs/x/latest", b"{}", None)
    assert not target.exists()
    assert not (root / "refs" / "x" / "latest").exists()


def test_fs_hostile_keys_are_refused(remote: tuple[FsBackend, Path], secret: Path) -> None:
    backend, root = remote
    (root / "refs").mkdir()
    for key in HOSTILE_KEYS:
        for call in (lambda: backend.get(key), lambda: backend.read_ref(key),
                     lambda: backend.head(key), lambda: backend.get_range(key, 0, 1),
                     lambda: list(backend.download(key)), lambda: backend.delete(key),
                     lambda: backend.put_bytes(key, b"x"),
                     lambda: backend.write_ref(key, b"x", None)):
            with pytest.raises(BadKey):
                call()
    with pytest.raises(BadKey):
        list(backend.list("../"))
    assert secret.read_bytes().startswith(b"root:")
    assert not (root.parent / "escape").exists()


def test_fs_roundtrip_and_delete(remote: tuple[FsBackend, Path], tmp_path: Path) -> None:
    backend, root = remote
    backend.put_bytes("index/" + "c" * 64, b"tail")
    src = tmp_path / "big"
    src.write_bytes(os.urandom(3 << 20))
    backend.put_file("loose/ab/" + "ab" * 32, str(src))
    assert backend.get("index/" + "c" * 64) == b"tail"
    assert backend.get_range("loose/ab/" + "ab" * 32, 100, 50) == src.read_bytes()[100:150]
    assert b"".join(backend.download("loose/ab/" + "ab" * 32)) == src.read_bytes()
    assert backend.head("loose/ab/" + "ab" * 32) == 3 << 20
    tag = backend.write_ref("refs/d/latest", b'{"a":1}', None)
    assert backend.read_ref("refs/d/latest") == (b'{"a":1}', tag)
    assert dict(backend.list("")) == {"index/" + "c" * 64: 4, "loose/ab/" + "ab" * 32: 3 << 20,
                                      "refs/d/latest": 7, "refs.lock": 0}
    for key in ("index/" + "c" * 64, "loose/ab/" + "ab" * 32, "refs/d/latest"):
        backend.delete(key)
        backend.delete(key)  # idempotent
        assert backend.head(key) is None
        with pytest.raises(NotFound):
            backend.get(key)
    backend.delete("never/was/here")
    # a FIFO at a key is deleted (unlink never opens it); a directory is refused
    os.mkfifo(root / "index" / "fifo")
    backend.delete("index/fifo")
    assert not (root / "index" / "fifo").exists()
    (root / "index" / "dir").mkdir()
    (root / "index" / "dir" / "keep").write_bytes(b"k")
    with pytest.raises(NotRegular):
        backend.delete("index/dir")
    with pytest.raises(NotRegular):
        backend.put_bytes("index/dir", b"x")
    with pytest.raises(NotRegular):
        backend.put_file("index/dir", str(src))
    assert (root / "index" / "dir" / "keep").read_bytes() == b"k"
    assert [p.name for p in (root / "tmp").iterdir()] == []  # no temp file left behind
    # a FIFO or link where an upload goes is replaced, never opened or followed
    os.mkfifo(root / "index" / "fifo")
    assert within(lambda: backend.head("index/fifo")) is None
    within(lambda: backend.put_bytes("index/fifo", b"now a file"))
    assert backend.get("index/fifo") == b"now a file"


# ---- S3 remote (moto) -----------------------------------------------------------------------

def test_s3_ref_and_get_over_the_cap_are_refused_before_reading(
        s3_endpoint: str, bucket: str, s3_remote: S3Backend,
        monkeypatch: pytest.MonkeyPatch) -> None:
    put_raw(s3_endpoint, bucket, "team/ds/refs/x/latest", b"x" * (MAX_REF_BYTES + 1))
    put_raw(s3_endpoint, bucket, "team/ds/refs/y/latest", b'{"ok":1}')
    put_raw(s3_endpoint, bucket, "team/ds/index/big", b"y" * 5000)
    data, etag = s3_remote.read_ref("refs/y/latest")
    assert data == b'{"ok":1}' and etag

    def must_not_read(*_a: object, **_k: object) -> bytes:
        raise AssertionError("the body was read before its Content-Length was checked")

    with monkeypatch.context() as m:
        m.setattr(s3, "read_bounded", must_not_read)
        with pytest.raises(TooLarge):
            within(lambda: s3_remote.read_ref("refs/x/latest"))
        with pytest.raises(TooLarge):
            within(lambda: s3_remote.get("index/big", max_size=4999))
        m.setattr(s3, "MAX_GET_BYTES", 4096)  # the default cap, made small
        with pytest.raises(TooLarge):
            within(lambda: s3_remote.get("index/big"))
    assert s3_remote.get("index/big") == b"y" * 5000
    assert s3_remote.get("index/big", max_size=5000) == b"y" * 5000
    assert s3_remote.read_ref("refs/nope/latest") is None
    with pytest.raises(NotFound):
        s3_remote.get("refs/nope/latest")


def test_read_bounded_never_reads_an_endless_body_to_its_end() -> None:
    class Endless:
        """A body that claims nothing and never ends."""

        def __init__(self) -> None:
            self.handed_out = 0
            self.closed = False

        def read(self, amt: int | None = None) -> bytes:
            assert amt is not None and 0 < amt <= (8 << 20) + 1, amt
            self.handed_out += amt
            return b"z" * amt

        def close(self) -> None:
            self.closed = True

    body = Endless()
    with pytest.raises(TooLarge):
        within(lambda: s3.read_bounded(body, 10 << 20, "s3://b/k"))
    assert body.handed_out == (10 << 20) + 1 and body.closed


def test_s3_ranges_heads_and_delete(s3_endpoint: str, bucket: str,
                                    s3_remote: S3Backend) -> None:
    data = os.urandom(10000)
    s3_remote.put_bytes("packs/p.pack", data)
    assert s3_remote.get_range("packs/p.pack", 100, 200) == data[100:300]
    assert s3_remote.get_range("packs/p.pack", 5, 0) == b""
    with pytest.raises(RemoteError):
        s3_remote.get_range("packs/p.pack", 9990, 100)  # past the end
    with pytest.raises(TooLarge):
        s3_remote.get_range("packs/p.pack", 0, MAX_GET_BYTES + 1)
    assert s3_remote.head("packs/p.pack") == 10000
    assert b"".join(s3_remote.download("packs/p.pack")) == data
    s3_remote.delete("packs/p.pack")
    s3_remote.delete("packs/p.pack")  # idempotent
    s3_remote.delete("never/was")
    assert s3_remote.head("packs/p.pack") is None
    with pytest.raises(NotFound):
        s3_remote.get("packs/p.pack")


def test_s3_hostile_keys_refused_and_listing_outside_the_prefix_skipped(
        s3_endpoint: str, bucket: str, s3_remote: S3Backend) -> None:
    for key in HOSTILE_KEYS:
        for call in (lambda: s3_remote.get(key), lambda: s3_remote.read_ref(key),
                     lambda: s3_remote.head(key), lambda: s3_remote.delete(key),
                     lambda: s3_remote.put_bytes(key, b"x"),
                     lambda: s3_remote.write_ref(key, b"x", None),
                     lambda: list(s3_remote.download(key))):
            with pytest.raises(BadKey):
                call()
    put_raw(s3_endpoint, bucket, "team/ds/refs/a/latest", b"{}")
    put_raw(s3_endpoint, bucket, "team/ds/refs/a//latest", b"{}")
    put_raw(s3_endpoint, bucket, "team/ds/refs/../../x", b"{}")
    put_raw(s3_endpoint, bucket, "team/dsx/refs/b/latest", b"{}")
    assert list(s3_remote.list("refs/")) == [("refs/a/latest", 2)]

    class Hostile:  # an endpoint whose listing holds keys it was not asked for
        def get_paginator(self, _name: str) -> Any:
            class Pages:
                def paginate(self, **_kw: Any) -> list[dict]:
                    return [{"Contents": [{"Key": "elsewhere/refs/z/latest", "Size": 1},
                                          {"Key": "team/refs/z/latest", "Size": 1},
                                          {"Key": "team/ds/refs/../../../etc", "Size": 1},
                                          {"Key": "team/ds/refs/q/latest", "Size": -1},
                                          {"Key": "team/ds/refs/ok/latest", "Size": 3}]}]
            return Pages()

    s3_remote.client = Hostile()
    assert list(s3_remote.list("refs/")) == [("refs/ok/latest", 3)]


class _BadChecksum(BaseHTTPRequestHandler):
    """An S3 endpoint whose bytes do not match the checksum it sends with them."""

    protocol_version = "HTTP/1.1"
    requests = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        type(self).requests += 1
        body = b'{"dataset":"damaged"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"0123"')
        self.send_header("x-amz-checksum-crc32", "AAAAAA==")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_s3_damaged_bytes_are_a_clear_corrupt_download(aws_env: None) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BadChecksum)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = S3Backend("s3://bkt/p", f"http://127.0.0.1:{server.server_address[1]}")
        for call in (lambda: backend.get("index/x"), lambda: backend.read_ref("refs/a/latest"),
                     lambda: list(backend.download("loose/ab/x"))):
            with pytest.raises(CorruptDownload, match="damaged") as info:
                within(call, 30)
            assert isinstance(info.value, RemoteError) and info.value.hint
        assert _BadChecksum.requests >= 3
    finally:
        server.shutdown()
        server.server_close()


def test_describe_turns_a_checksum_error_into_a_corrupt_download() -> None:
    from botocore.exceptions import FlexibleChecksumError
    err = s3.describe(FlexibleChecksumError(error_msg="Expected checksum X"), "s3://b/k")
    assert isinstance(err, CorruptDownload) and "s3://b/k" in err.message


# ---- cluster cache ------------------------------------------------------------------------------

PACK = "d" * 64
OID = "ab" + "e" * 62


@pytest.fixture
def cache(tmp_path: Path) -> ClusterCache:
    root = tmp_path / "cache"
    root.mkdir()
    return ClusterCache(str(root))


def test_cache_fifo_symlink_directory_socket_entries_are_dropped_quickly(
        cache: ClusterCache, secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(cache.root)
    (root / "packs").mkdir()
    (root / "loose" / "ab").mkdir(parents=True)
    pack = Path(cache.pack_path(PACK))
    loose = Path(cache.loose_path(OID))

    os.mkfifo(pack)
    try:
        assert not cache.has(str(pack))
        assert within(lambda: cache.read_range(str(pack), 0, 8)) is None
        assert not os.path.lexists(pack)
    finally:
        unblock(pack)

    pack.symlink_to(secret)
    assert not cache.has(str(pack))
    assert within(lambda: cache.read_range(str(pack), 0, 4)) is None
    assert not os.path.lexists(pack) and secret.read_bytes().startswith(b"root:")

    # a directory (holding a link out of the cache) is removed without following the link
    loose.mkdir()
    (loose / "inner").symlink_to(secret.parent, target_is_directory=True)
    assert not cache.has(str(loose))
    assert within(lambda: cache.open_entry(str(loose))) is None
    assert not os.path.lexists(loose)
    assert secret.read_bytes().startswith(b"root:")

    sock = socket.socket(socket.AF_UNIX)
    monkeypatch.chdir(loose.parent)  # the full path is longer than AF_UNIX allows
    sock.bind(loose.name)
    try:
        assert within(lambda: cache.open_entry(str(loose))) is None
        assert not os.path.lexists(loose)
    finally:
        sock.close()

    os.mkfifo(loose)
    try:
        assert within(lambda: cache.open_entry(str(loose))) is None
        assert not os.path.lexists(loose)
    finally:
        unblock(loose)

    # a link where a directory of the layout belongs is dropped too
    (root / "loose" / "ab").rmdir()
    (root / "loose" / "ab").symlink_to(secret.parent, target_is_directory=True)
    assert not cache.has(str(loose))
    assert within(lambda: cache.open_entry(str(loose))) is None
    assert not os.path.lexists(root / "loose" / "ab")
    assert sorted(p.name for p in secret.parent.iterdir()) == ["secret.txt"]


def test_cache_regular_entries_read_and_open(cache: ClusterCache) -> None:
    data = os.urandom(5000)
    cache.fill_bytes(cache.pack_path(PACK), data)
    assert cache.has(cache.pack_path(PACK))
    old = time.time() - 7200
    os.utime(cache.pack_path(PACK), (old, old))
    assert cache.read_range(cache.pack_path(PACK), 10, 20) == data[10:30]
    assert os.stat(cache.pack_path(PACK)).st_mtime > old + 3600  # the LRU clock moved
    assert cache.read_range(cache.pack_path(PACK), 4990, 20) is None  # past the end
    assert cache.has(cache.pack_path(PACK))  # …which is no reason to drop it
    blob = os.urandom(3000)
    cache.fill_stream(cache.loose_path(b3(blob)), [blob[:1000], blob[1000:]], b3(blob))
    fd = cache.open_entry(cache.loose_path(b3(blob)))
    assert fd is not None
    try:
        assert os.read(fd, 10000) == blob
    finally:
        os.close(fd)
    assert cache.open_entry(cache.loose_path("f" * 64)) is None
    assert not cache.has(cache.loose_path("f" * 64))
    # a damaged entry is dropped by the caller; dropping never leaves the cache
    cache.drop(cache.loose_path(b3(blob)))
    assert not os.path.lexists(cache.loose_path(b3(blob)))
    cache.drop(cache.loose_path(b3(blob)))
    outside = Path(cache.root).parent / "not-in-cache"
    outside.write_bytes(b"keep")
    cache.drop(str(outside))
    cache.drop(os.path.join(cache.root, "..", "not-in-cache"))
    assert outside.read_bytes() == b"keep"


def test_cache_fills_never_write_through_planted_links(cache: ClusterCache, secret: Path,
                                                       tmp_path: Path) -> None:
    root = Path(cache.root)
    before = secret.read_bytes()
    (root / "packs").mkdir()
    Path(cache.pack_path(PACK)).symlink_to(secret)
    cache.fill_bytes(cache.pack_path(PACK), b"pack bytes")
    assert secret.read_bytes() == before
    assert not Path(cache.pack_path(PACK)).is_symlink()
    assert Path(cache.pack_path(PACK)).read_bytes() == b"pack bytes"

    # tmp/ and loose/xx/ planted as links out of the cache: replaced, nothing written out there
    outside = secret.parent
    (root / "tmp").rmdir()  # made by the fill above
    (root / "tmp").symlink_to(outside, target_is_directory=True)
    (root / "loose").mkdir()
    (root / "loose" / OID[:2]).symlink_to(outside, target_is_directory=True)
    blob = os.urandom(2000)
    oid = b3(blob)
    if oid[:2] != OID[:2]:
        (root / "loose" / oid[:2]).symlink_to(outside, target_is_directory=True)
    cache.fill_stream(cache.loose_path(oid), [blob], oid)
    assert Path(cache.loose_path(oid)).read_bytes() == blob
    assert not (root / "tmp").is_symlink() and not (root / "loose" / oid[:2]).is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert secret.read_bytes() == before

    # a directory where an entry goes is replaced; a corrupt stream publishes nothing
    os.unlink(cache.pack_path(PACK))
    os.mkdir(cache.pack_path(PACK))
    cache.fill_file(cache.pack_path(PACK), str(secret))
    assert Path(cache.pack_path(PACK)).read_bytes() == before
    from dsv.errors import CorruptObject
    with pytest.raises(CorruptObject):
        cache.fill_stream(cache.loose_path("0" * 64), [b"wrong"], "0" * 64)
    assert not os.path.lexists(cache.loose_path("0" * 64))
    assert list((root / "tmp").iterdir()) == []
    # a path outside the cache is never filled
    with pytest.raises(ValueError):
        cache.fill_bytes(str(tmp_path / "elsewhere"), b"x")
    assert not (tmp_path / "elsewhere").exists()


def test_cache_prune_never_follows_links_or_leaves_the_root(cache: ClusterCache,
                                                            tmp_path: Path) -> None:
    root = Path(cache.root)
    outside = tmp_path / "victim"
    outside.mkdir()
    for i in range(3):
        (outside / f"f{i}").write_bytes(b"v" * 100)
    old = time.time() - 30 * 86400
    for p in outside.iterdir():
        os.utime(p, (old, old))
    real = os.urandom(100)
    cache.fill_bytes(cache.pack_path(PACK), real)
    os.utime(cache.pack_path(PACK), (old, old))
    (root / "packs" / "link.pack").symlink_to(outside / "f0")
    os.mkfifo(root / "packs" / "fifo.pack")
    (root / "loose").mkdir()
    (root / "loose" / "ab").symlink_to(outside, target_is_directory=True)
    (root / "tmp").rmdir()  # made by the fill above
    (root / "tmp").symlink_to(outside, target_is_directory=True)
    report = within(lambda: cache.prune(older_than=60, max_size=0))
    assert sorted(p.name for p in outside.iterdir()) == ["f0", "f1", "f2"]
    assert all(p.read_bytes() == b"v" * 100 for p in outside.iterdir())
    assert report.removed == 1 and report.freed_bytes == 100
    assert report.bad_removed == 3  # the link, the FIFO, and loose/ab
    assert not os.path.lexists(cache.pack_path(PACK))
    assert list((root / "packs").iterdir()) == []
    assert not os.path.lexists(root / "loose" / "ab") and not os.path.lexists(root / "tmp")
    # packs/ itself a link out of the cache: dropped, never walked
    (root / "packs").rmdir()
    (root / "packs").symlink_to(outside, target_is_directory=True)
    within(lambda: cache.prune(older_than=0, max_size=0))
    assert sorted(p.name for p in outside.iterdir()) == ["f0", "f1", "f2"]
    assert not os.path.lexists(root / "packs")


def test_cache_pending_names_are_validated_and_markers_never_followed(
        cache: ClusterCache, secret: Path) -> None:
    root = Path(cache.root)
    pending = root / "pending"
    pending.mkdir()
    good_loose = "ab" + "1" * 62
    for name in ("packs-../../../etc/passwd", f"loose-zz-{good_loose}", "junk",
                 f"packs-{'A' * 64}.pack", f"loose-ab-{good_loose[:-1]}", "packs-.pack",
                 f"packs-{PACK}.pack", f"loose-ab-{good_loose}"):
        if "/" in name:
            continue  # cannot be a file name; shown for completeness
        (pending / name).touch()
    assert sorted(cache.pending()) == sorted([cache.pack_path(PACK),
                                              cache.loose_path(good_loose)])
    before = secret.read_bytes()
    marker = pending / f"packs-{'9' * 64}.pack"
    marker.symlink_to(secret)
    cache.mark_pending(cache.pack_path("9" * 64))
    assert secret.read_bytes() == before and not marker.is_symlink() and marker.is_file()
    cache.clear_pending(cache.pack_path("9" * 64))
    assert not os.path.lexists(marker)
    cache.clear_pending(cache.pack_path("9" * 64))  # absent: fine


def test_remote_caps_are_the_documented_ones() -> None:
    assert base.MAX_REF_BYTES == 64 << 10
    assert base.MAX_GET_BYTES == 256 << 20
    doc = (Path(__file__).resolve().parents[1] / "docs" / "format.md").read_text()
    assert "64 KiB" in doc and "256 MiB" in doc


def test_clients_share_the_service_models_but_not_the_credentials(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """make_client reads botocore's service models once a process (a shared loader whose
    search paths do not grow), while each client still looks up its own credentials: a
    client made after the credentials went away sends unsigned requests, and an unknown
    profile is refused at once."""
    from botocore import UNSIGNED

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    signed = s3.make_client("http://127.0.0.1:9")
    paths = list(s3._LOADER.search_paths)
    assert signed.meta.config.signature_version is not UNSIGNED
    assert signed.meta.region_name == "us-east-1"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    unsigned = s3.make_client("http://127.0.0.1:9")
    assert unsigned.meta.config.signature_version is UNSIGNED
    assert s3._LOADER.search_paths == paths and len(set(paths)) == len(paths)
    assert unsigned._loader is signed._loader is s3._LOADER
    with pytest.raises(RemoteError, match=r"AWS profile problem: .*nope"):
        s3.make_client("http://127.0.0.1:9", profile="nope", unsigned=False)
    # An unsigned client never asks a profile for credentials (which may fail, or run a
    # program): `--no-sign-request --profile P` only takes P's region.
    (tmp_path / "config").write_text("[profile broken]\nregion = eu-west-3\n"
                                     "credential_process = /bin/false\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    public = s3.make_client("http://127.0.0.1:9", profile="broken", unsigned=True)
    assert public.meta.config.signature_version is UNSIGNED
    assert public.meta.region_name == "eu-west-3"
    with pytest.raises(RemoteError, match=r"AWS profile problem: .*custom-process"):
        s3.make_client("http://127.0.0.1:9", profile="broken")


def test_s3_range_into_fills_the_buffer_and_keeps_the_connection_usable(
        s3_endpoint: str, bucket: str, s3_remote: S3Backend) -> None:
    data = os.urandom(3 << 20)
    s3_remote.put_bytes("packs/p.pack", data)
    buf = bytearray(4 << 20)
    for start, length in [(0, 3 << 20), (12345, 1 << 20), (5, 1), (7, 0)] * 3:
        view = memoryview(buf)[:length]
        s3_remote.get_range_into("packs/p.pack", start, view)   # (one pooled connection)
        assert bytes(view) == data[start:start + length]
    with pytest.raises(RemoteError):
        s3_remote.get_range_into("packs/p.pack", (3 << 20) - 10, memoryview(buf)[:100])
    with pytest.raises(TooLarge):
        s3_remote.get_range_into("packs/p.pack", 0, memoryview(bytearray(MAX_GET_BYTES + 1)))
    with pytest.raises(NotFound):
        s3_remote.get_range_into("packs/q.pack", 0, memoryview(buf)[:10])
    with pytest.raises(BadKey):
        s3_remote.get_range_into("../escape", 0, memoryview(buf)[:10])


class _Ranges(BaseHTTPRequestHandler):
    """An S3 endpoint answering every ranged GET with `body` under a Content-Length of
    `claim` (none: the body ends where the connection does), and `checksum` if set."""

    protocol_version = "HTTP/1.1"
    body = b""
    claim: int | None = 0
    checksum: str | None = None
    requests = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        type(self).requests += 1
        self.send_response(206)
        if self.claim is not None:
            self.send_header("Content-Length", str(self.claim))
        self.send_header("ETag", '"0123"')
        if self.checksum is not None:
            self.send_header("x-amz-checksum-crc32", self.checksum)
        self.end_headers()
        self.wfile.write(self.body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("case", ["short", "long", "bad checksum"])
def test_s3_range_into_refuses_a_body_that_is_not_the_range(aws_env: None, case: str) -> None:
    """The answer is read straight into the caller's buffer; one that breaks off, runs on
    past the range (no Content-Length: it ends where the connection does), or fails S3's
    checksum (botocore's checking body: read and copied) is asked again and then
    refused, never taken as the range's bytes."""
    handler = type("Answer", (_Ranges,), {
        "body": {"short": b"x" * 600, "long": b"y" * 1500, "bad checksum": b"z" * 1000}[case],
        "claim": {"short": 1000, "long": None, "bad checksum": 1000}[case],
        "checksum": "AAAAAA==" if case == "bad checksum" else None, "requests": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = S3Backend("s3://bkt/p", f"http://127.0.0.1:{server.server_address[1]}")
        buf = memoryview(bytearray(1000))
        error = CorruptDownload if case == "bad checksum" else RemoteError
        with pytest.raises(error) as info:
            within(lambda: backend.get_range_into("packs/a.pack", 0, buf), 60)
        assert "damaged" in str(info.value) if case == "bad checksum" else \
            "broke off 3 times" in str(info.value)
        assert handler.requests >= 3
    finally:
        server.shutdown()
        server.server_close()
