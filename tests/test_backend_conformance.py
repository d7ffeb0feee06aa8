"""One conformance suite for every remote backend: the `Backend` protocol of
dsv/remotes/base.py, run against the directory backend (FsBackend under tmp_path), the S3
backend (S3Backend over HTTP against moto's server mode, the `s3_endpoint` fixture, one
bucket per test since every moto server of a process shares one store) and the in-memory
backend (dsv/remotes/memory.py).

Each test asserts bytes, exception types and returned values. Where the backends
legitimately differ, the test's docstring says so and its asserts spell out each
backend's answer; no backend is ever skipped or marked as an expected failure.

Hostile files on disk (FIFOs, symlinks, sparse files) and hostile S3 endpoints are
tests/test_remote_backends.py's business; this file is about the shared contract.
"""

from __future__ import annotations

import builtins
import fcntl
import inspect
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from dsv.errors import RemoteError
from dsv.hashing import hash_bytes
from dsv.remotes import fs, memory, s3
from dsv.remotes.layout import REMOTE_MARKER
from dsv.remotes.base import (MAX_GET_BYTES, MAX_REF_BYTES, Backend, BadKey,
                              NotFound, NotRegular, RemoteRefused, TooLarge)
from dsv.remotes.fs import FsBackend
from dsv.remotes.memory import MemoryBackend
from dsv.remotes.s3 import S3Backend

KINDS = ["fs", "s3", "memory"]
MiB = 1 << 20
HOSTILE_KEYS = ["../escape", "refs/../../etc/passwd", "/etc/passwd", "refs//latest",
                "refs/x/", "refs/\0/latest", "", "./refs/x", "refs/./x", ".."]
FS_LOCK = "refs.lock"  # directory remotes only (docs/format.md, "Remotes"): the ref lock


@dataclass
class Remote:
    kind: str                # "fs" | "s3" | "memory"
    backend: Backend
    module: ModuleType       # the module whose MAX_GET_BYTES the backend reads
    beside: Callable[[], Backend]  # another remote right beside it: a sibling directory,
                                   # the prefix `team/dsx` beside `team/ds`, another
                                   # MemoryBackend


_S3_CLIENTS: dict[tuple[Any, ...], Any] = {}


@pytest.fixture(params=KINDS)
def remote(request: pytest.FixtureRequest, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Remote:
    kind = request.param
    if kind == "fs":
        # The root is not created: the first write makes it (as for a fresh push).
        return Remote(kind, FsBackend(str(tmp_path / "remote")), fs,
                      lambda: FsBackend(str(tmp_path / "remotex")))
    if kind == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        request.getfixturevalue("aws_env")
        # One real client per endpoint (s3.make_client, kept): a new boto3 session costs
        # ~0.15 s, which would be most of this file's time. Requests still go over HTTP.
        real_make_client = s3.make_client

        def make_client(*args: Any, **kwargs: Any) -> Any:
            key = (args, tuple(sorted(kwargs.items())))
            if key not in _S3_CLIENTS:
                _S3_CLIENTS[key] = real_make_client(*args, **kwargs)
            return _S3_CLIENTS[key]
        monkeypatch.setattr(s3, "make_client", make_client)
        bucket = f"conf{os.urandom(5).hex()}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        return Remote(kind, S3Backend(f"s3://{bucket}/team/ds", endpoint), s3,
                      lambda: S3Backend(f"s3://{bucket}/team/dsx", endpoint))
    return Remote(kind, MemoryBackend("memory://conformance"), memory,
                  lambda: MemoryBackend("memory://beside"))


def files(r: Remote, prefix: str = "") -> dict[str, int]:
    """key → size of `list(prefix)`, without the directory backend's `refs.lock` (made
    by its first `write_ref`; see test_list_of_everything_shows_the_fs_ref_lock)."""
    out = dict(r.backend.list(prefix))
    if r.kind == "fs":
        out.pop(FS_LOCK, None)
    return out


def is_plain_remote_error(exc: BaseException) -> bool:
    """A RemoteError that is neither NotFound nor a refusal (TooLarge, BadKey, …)."""
    return isinstance(exc, RemoteError) and not isinstance(exc, (NotFound, RemoteRefused))


# ---- the protocol itself ----------------------------------------------------------------

PROTOCOL_METHODS = sorted(name for name, value in vars(Backend).items()
                          if inspect.isfunction(value) and not name.startswith("_"))


def test_the_protocol_is_what_this_suite_covers() -> None:
    # A method added to Backend must get conformance tests here (and a memory version).
    assert PROTOCOL_METHODS == ["check_reachable", "delete", "download", "get", "get_range",
                                "get_range_into", "head", "list", "put_bytes", "put_file",
                                "read_ref",
                                "remove_stale_uploads", "write_ref"]
    assert "url" in Backend.__annotations__


@pytest.mark.parametrize("cls", [FsBackend, S3Backend, MemoryBackend])
def test_every_backend_has_every_method_with_the_protocols_signature(cls: type) -> None:
    for name in PROTOCOL_METHODS:
        want = inspect.signature(getattr(Backend, name))
        got = inspect.signature(getattr(cls, name))
        assert [(p.name, p.kind, p.default) for p in got.parameters.values()] == \
            [(p.name, p.kind, p.default) for p in want.parameters.values()], (cls, name)
    # the streaming methods are generators: a missing key is reported when iterated
    assert inspect.isgeneratorfunction(cls.download) and inspect.isgeneratorfunction(cls.list)


def test_remove_stale_uploads_never_touches_a_file(remote: Remote, tmp_path: Path) -> None:
    """Whatever age it is given, only leftovers of killed uploads go (a directory
    remote's temp files: tests/test_remote_repair.py); every file, and a ref, stays."""
    b = remote.backend
    src = tmp_path / "src.bin"
    src.write_bytes(b"f" * 1000)
    b.put_bytes("packs/a.pack", b"pack")
    b.put_file("loose/ab/cd", str(src))
    b.write_ref("refs/d/latest", b"ref", None)
    before = {k: b.get(k) for k, _size in b.list("")}
    assert b.remove_stale_uploads(0.0) == (0, 0)
    assert {k: b.get(k) for k, _size in b.list("")} == before


def test_url_and_reachable(remote: Remote) -> None:
    assert isinstance(remote.backend.url, str) and remote.backend.url
    assert remote.backend.check_reachable() is None
    assert remote.beside().url != remote.backend.url


def test_an_unreachable_remote_fails_check_reachable(remote: Remote, tmp_path: Path) -> None:
    """Documented difference: a memory remote cannot be unreachable."""
    if remote.kind == "memory":
        assert MemoryBackend("memory://anything").check_reachable() is None
        return
    if remote.kind == "fs":  # neither the directory nor its parent exists
        gone: Backend = FsBackend(str(tmp_path / "no" / "such" / "remote"))
    else:
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        gone = S3Backend("s3://bucket/prefix", f"http://127.0.0.1:{port}")
    with pytest.raises(RemoteError) as info:
        gone.check_reachable()
    assert is_plain_remote_error(info.value) and info.value.hint


# ---- put / get / head / download --------------------------------------------------------

PAYLOADS = {"small": b"hello, remote\n", "empty": b"", "every-byte": bytes(range(256)) * 3,
            "5MiB": os.urandom(5 * MiB)}


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_put_bytes_round_trip(remote: Remote, name: str) -> None:
    data = PAYLOADS[name]
    b = remote.backend
    key = f"loose/ab/{name}"
    assert b.put_bytes(key, data) is None
    assert b.get(key) == data
    assert type(b.get(key)) is bytes
    assert b.head(key) == len(data)
    pieces = list(b.download(key))
    assert all(type(p) is bytes and p for p in pieces)  # no empty piece; none at all if empty
    assert b"".join(pieces) == data
    assert files(remote) == {key: len(data)}
    if data:
        assert b.get_range(key, 0, len(data)) == data


def test_put_bytes_replaces_and_keys_may_be_top_level_or_deep(remote: Remote) -> None:
    b = remote.backend
    deep = "a/b/c/d/e/f/g"
    b.put_bytes(REMOTE_MARKER, b"first")
    b.put_bytes(deep, b"deep")
    b.put_bytes(REMOTE_MARKER, b"second, longer")  # rewriting is allowed; the last one wins
    assert b.get(REMOTE_MARKER) == b"second, longer"
    assert b.head(REMOTE_MARKER) == len(b"second, longer")
    assert b.get(deep) == b"deep"
    assert files(remote) == {REMOTE_MARKER: 14, deep: 4}


# ---- size caps ------------------------------------------------------------------------------

def test_get_is_capped_by_max_size_and_by_max_get_bytes(remote: Remote,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    b = remote.backend
    data = os.urandom(5000)
    b.put_bytes("index/i", data)
    b.put_bytes("index/empty", b"")
    assert b.get("index/i", max_size=5000) == data  # the cap is inclusive
    with pytest.raises(TooLarge) as info:
        b.get("index/i", max_size=4999)
    assert isinstance(info.value, RemoteRefused) and isinstance(info.value, RemoteError)
    assert b.get("index/empty", max_size=0) == b""
    with pytest.raises(TooLarge):
        b.get("index/i", max_size=0)
    with pytest.raises(NotFound):  # absence wins over any cap
        b.get("index/absent", max_size=0)
    # the default cap is MAX_GET_BYTES, as the backend's module reads it (made small here)
    monkeypatch.setattr(remote.module, "MAX_GET_BYTES", 4096)
    with pytest.raises(TooLarge):
        b.get("index/i")
    assert b.get("index/i", max_size=5000) == data  # an explicit max_size overrides it
    with pytest.raises(TooLarge):
        b.get_range("index/i", 0, 4097)
    assert b.get_range("index/i", 0, 4096) == data[:4096]
    monkeypatch.undo()
    assert b.get("index/i") == data


def test_a_range_above_max_get_bytes_is_refused_before_anything_else(remote: Remote) -> None:
    b = remote.backend
    b.put_bytes("packs/p.pack", b"x" * 100)
    with pytest.raises(TooLarge):
        b.get_range("packs/p.pack", 0, MAX_GET_BYTES + 1)
    with pytest.raises(TooLarge):  # no lookup first: even a missing key is refused so
        b.get_range("packs/absent.pack", 0, MAX_GET_BYTES + 1)


def test_read_ref_is_capped_at_max_ref_bytes(remote: Remote) -> None:
    b = remote.backend
    b.put_bytes("refs/x/latest", b"x" * MAX_REF_BYTES)
    got = b.read_ref("refs/x/latest")
    assert got is not None and got[0] == b"x" * MAX_REF_BYTES
    b.put_bytes("refs/x/latest", b"y" * (MAX_REF_BYTES + 1))
    with pytest.raises(TooLarge):
        b.read_ref("refs/x/latest")
    assert b.get("refs/x/latest") == b"y" * (MAX_REF_BYTES + 1)  # `get` has its own cap


# ---- ranged get ---------------------------------------------------------------------------

RANGE_DATA = bytes(range(256)) * 40  # 10,240 bytes
N = len(RANGE_DATA)


def test_get_range_returns_exactly_the_bytes_asked_for(remote: Remote) -> None:
    b = remote.backend
    b.put_bytes("packs/p.pack", RANGE_DATA)
    for label, start, length in [("start", 0, 10), ("middle", 4000, 1000), ("end", N - 10, 10),
                                 ("last byte", N - 1, 1), ("whole", 0, N),
                                 ("zero at start", 0, 0), ("zero in the middle", 500, 0),
                                 ("zero at the end", N, 0)]:
        got = b.get_range("packs/p.pack", start, length)
        assert type(got) is bytes and got == RANGE_DATA[start:start + length], label


def test_get_range_past_the_end_or_negative_is_an_error(remote: Remote) -> None:
    b = remote.backend
    b.put_bytes("packs/p.pack", RANGE_DATA)
    b.put_bytes("packs/empty.pack", b"")
    for label, key, start, length in [("runs past the end", "packs/p.pack", N - 5, 10),
                                      ("one byte too many", "packs/p.pack", 0, N + 1),
                                      ("starts past the end", "packs/p.pack", N + 10, 1),
                                      ("starts at the end", "packs/p.pack", N, 1),
                                      ("negative start", "packs/p.pack", -1, 1),
                                      ("negative length", "packs/p.pack", 0, -1),
                                      ("a byte of an empty file", "packs/empty.pack", 0, 1)]:
        with pytest.raises(RemoteError) as info:
            b.get_range(key, start, length)
        assert is_plain_remote_error(info.value), (label, info.value)
    assert b.get_range("packs/empty.pack", 0, 0) == b""


def test_get_range_into_fills_exactly_the_buffer_and_checks_as_get_range(
        remote: Remote) -> None:
    """base.Backend.get_range_into: the bytes of `get_range`, written into the caller's
    buffer (the rest of the buffer untouched), with `get_range`'s errors."""
    b = remote.backend
    b.put_bytes("packs/p.pack", RANGE_DATA)
    buf = bytearray(b"\xee" * (N + 8))
    for label, start, length in [("start", 0, 10), ("middle", 4000, 1000), ("end", N - 10, 10),
                                 ("whole", 0, N), ("zero in the middle", 500, 0)]:
        buf[:] = b"\xee" * (N + 8)
        b.get_range_into("packs/p.pack", start, memoryview(buf)[:length])
        assert bytes(buf[:length]) == RANGE_DATA[start:start + length], label
        assert buf[length:] == b"\xee" * (N + 8 - length), label
    for label, key, start, length in [("runs past the end", "packs/p.pack", N - 5, 10),
                                      ("starts past the end", "packs/p.pack", N + 10, 1),
                                      ("negative start", "packs/p.pack", -1, 1)]:
        with pytest.raises(RemoteError) as info:
            b.get_range_into(key, start, memoryview(buf)[:length])
        assert is_plain_remote_error(info.value), (label, info.value)
    with pytest.raises(NotFound):
        b.get_range_into("packs/absent.pack", 0, memoryview(buf)[:10])
    with pytest.raises(BadKey):
        b.get_range_into("packs/../x", 0, memoryview(buf)[:10])


def test_a_zero_length_range_still_needs_the_file_and_its_start(
        remote: Remote, request: pytest.FixtureRequest) -> None:
    """base.Backend.get_range: 'a range past the end, is an error', also for zero bytes
    (S3 cannot ask for an empty range, so S3Backend asks for the key's size instead)."""
    b = remote.backend
    b.put_bytes("packs/p.pack", RANGE_DATA)
    with pytest.raises(NotFound):
        b.get_range("packs/absent.pack", 0, 0)
    with pytest.raises(RemoteError) as info:
        b.get_range("packs/p.pack", N + 1, 0)
    assert is_plain_remote_error(info.value)


# ---- missing keys and delete ----------------------------------------------------------

def assert_absent(b: Backend, key: str) -> None:
    with pytest.raises(NotFound):
        b.get(key)
    with pytest.raises(NotFound):
        b.get_range(key, 0, 1)
    with pytest.raises(NotFound):
        list(b.download(key))
    assert b.head(key) is None
    assert b.read_ref(key) is None


def test_a_missing_key_is_not_found(remote: Remote) -> None:
    b = remote.backend
    assert_absent(b, "loose/ab/never")          # an empty remote (no fs root yet)
    b.put_bytes("loose/ab/other", b"x")
    assert_absent(b, "loose/ab/never")          # beside a file
    assert_absent(b, "loose/cd/never")          # in a "directory" that was never made
    assert_absent(b, "refs/x/latest")
    it = b.download("loose/ab/never")           # a generator: nothing happens until iterated
    with pytest.raises(NotFound):
        next(it)
    assert issubclass(NotFound, RemoteError) and not issubclass(NotFound, RemoteRefused)


def test_delete(remote: Remote) -> None:
    b = remote.backend
    b.put_bytes("loose/ab/x", b"gone soon")
    b.put_bytes("loose/ab/y", b"stays")
    tag = b.write_ref("refs/d/latest", b'{"v":1}', None)
    assert tag is not None
    for key in ("loose/ab/x", "refs/d/latest"):
        assert b.delete(key) is None
        assert_absent(b, key)
        b.delete(key)  # a missing key is fine: deleting twice is no error
    b.delete("never/was/here")
    b.delete(REMOTE_MARKER)
    assert files(remote) == {"loose/ab/y": 5}
    assert b.get("loose/ab/y") == b"stays"
    # a deleted ref can be created again (a stale tag on it is a conflict: see below)
    new = b.write_ref("refs/d/latest", b'{"v":2}', None)
    assert new is not None and b.read_ref("refs/d/latest") == (b'{"v":2}', new)


# ---- list -----------------------------------------------------------------------------------

LAYOUT = {"refs/a/latest": b"{1}", "refs/a/tags/v1": b"{22}", "refs/b/latest": b"{333}",
          "refsx/c": b"c", "index/" + "1" * 64: b"i" * 10, "loose/ab/" + "ab" * 32: b"",
          REMOTE_MARKER: b"{}"}


def test_list_of_an_empty_remote_is_empty(remote: Remote) -> None:
    assert list(remote.backend.list("")) == []
    assert list(remote.backend.list("refs/")) == []
    remote.backend.put_bytes("index/x", b"x")
    assert list(remote.backend.list("refs/")) == []
    assert list(remote.backend.list("nothing/here/")) == []


def test_list_reports_every_file_under_the_prefix_and_nothing_else(remote: Remote) -> None:
    b = remote.backend
    for key, data in LAYOUT.items():
        b.put_bytes(key, data)
    beside = remote.beside()
    beside.put_bytes("refs/n/latest", b"{neighbour}")
    beside.put_bytes("index/n", b"n")
    everything = {k: len(v) for k, v in LAYOUT.items()}
    assert files(remote, "") == everything
    assert all(type(k) is str and type(s) is int for k, s in b.list(""))
    assert files(remote, "refs/") == {"refs/a/latest": 3, "refs/a/tags/v1": 4,
                                      "refs/b/latest": 5}
    assert files(remote, "refs/a/") == {"refs/a/latest": 3, "refs/a/tags/v1": 4}
    assert files(remote, "refs/a/tags/") == {"refs/a/tags/v1": 4}
    assert files(remote, "index/") == {"index/" + "1" * 64: 10}
    assert files(remote, "loose/") == {"loose/ab/" + "ab" * 32: 0}  # empty files are listed
    assert files(remote, "refs/c/") == {}
    # the remote beside this one is invisible, and this one is invisible to it
    assert files(Remote(remote.kind, beside, remote.module, lambda: b), "") == \
        {"refs/n/latest": 11, "index/n": 1}
    # each key is listed once; the listing reflects a delete
    keys = [k for k, _ in b.list("") if k != FS_LOCK]
    assert len(keys) == len(set(keys)) == len(LAYOUT)
    b.delete("refs/a/latest")
    assert files(remote, "refs/") == {"refs/a/tags/v1": 4, "refs/b/latest": 5}


def test_list_many_keys_across_pages(remote: Remote, monkeypatch: pytest.MonkeyPatch) -> None:
    b = remote.backend
    pages: list[int] = []
    if isinstance(b, S3Backend):  # S3 lists in pages: make them small, so several are read
        real = b.client.get_paginator

        def small_pages(name: str) -> Any:
            paginator = real(name)
            paginate = paginator.paginate

            def paginate_small(**kw: Any) -> Iterator[dict[str, Any]]:
                for page in paginate(PaginationConfig={"PageSize": 10}, **kw):
                    pages.append(len(page.get("Contents", [])))
                    yield page
            paginator.paginate = paginate_small
            return paginator
        monkeypatch.setattr(b.client, "get_paginator", small_pages)
    expected = {f"loose/{i % 7:02x}/{i:04d}": i % 5 for i in range(84)}
    for key, size in expected.items():
        b.put_bytes(key, b"z" * size)
    b.put_bytes("index/outside", b"x")
    assert files(remote, "loose/") == expected
    assert sorted(b.list("loose/03/")) == sorted((k, s) for k, s in expected.items()
                                                 if k.startswith("loose/03/"))
    if isinstance(b, S3Backend):
        assert len(pages) >= 9 and max(pages) == 10


def test_list_prefix_without_a_trailing_slash(remote: Remote) -> None:
    """Documented difference. Every caller lists `""` or a prefix ending in `/` (sync.py,
    remotecheck.py), where all backends agree. Without the slash, the directory backend
    (and the memory one, following it and the protocol's 'under `prefix`') take the prefix
    as a directory; S3 takes it as a string prefix of the key."""
    b = remote.backend
    for key in ("refs/a", "refsx/b", "refs.json"):
        b.put_bytes(key, b"1")
    by_kind: dict[str, tuple[dict[str, int], dict[str, int]]] = {
        "fs": ({"refs/a": 1}, {}),
        "memory": ({"refs/a": 1}, {}),
        "s3": ({"refs/a": 1, "refsx/b": 1, "refs.json": 1}, {"refs/a": 1}),
    }
    want_dir, want_file = by_kind[remote.kind]
    assert files(remote, "refs") == want_dir
    assert files(remote, "refs/a") == want_file  # a prefix naming a file, not a directory
    assert files(remote, "refs/") == {"refs/a": 1}  # with the slash: one answer for all
    # Extra trailing slashes: all three check the prefix without them (so "/" and "refs//"
    # are no BadKey), the directory and memory backends then list it without them too,
    # S3 lists the literal prefix (`team/ds//`), which holds nothing.
    everything = {"refs/a": 1, "refsx/b": 1, "refs.json": 1}
    if remote.kind == "s3":
        assert files(remote, "/") == {} and files(remote, "refs//") == {}
    else:
        assert files(remote, "/") == everything and files(remote, "refs//") == {"refs/a": 1}


def test_list_of_everything_shows_the_fs_ref_lock(remote: Remote) -> None:
    """Documented difference (docs/format.md: `refs.lock`, directory remotes only): the
    directory backend's first `write_ref` creates an empty `refs.lock` at the root, and a
    listing of `""` reports it; remotecheck.py expects it there."""
    b = remote.backend
    b.write_ref("refs/d/latest", b"{}", None)
    want = {"refs/d/latest": 2}
    if remote.kind == "fs":
        want[FS_LOCK] = 0
    assert dict(b.list("")) == want
    assert dict(b.list("refs/")) == {"refs/d/latest": 2}


# ---- refs: compare-and-swap ---------------------------------------------------------------

def test_cas_create_succeeds_once(remote: Remote) -> None:
    b = remote.backend
    for key in ("refs/ds1/latest", REMOTE_MARKER):
        assert b.read_ref(key) is None
        tag = b.write_ref(key, b'{"v":1}', None)
        assert isinstance(tag, str) and tag
        assert b.read_ref(key) == (b'{"v":1}', tag)
        assert b.write_ref(key, b'{"v":2}', None) is None  # it exists now: a conflict
        assert b.read_ref(key) == (b'{"v":1}', tag)        # …that changed nothing
        assert b.get(key) == b'{"v":1}'


def test_cas_replace(remote: Remote) -> None:
    b = remote.backend
    key = "refs/ds1/tags/v1"
    t1 = b.write_ref(key, b"one", None)
    assert t1 is not None
    t2 = b.write_ref(key, b"two", t1)                      # the current tag: replaced
    assert t2 is not None and t2 != t1
    assert b.read_ref(key) == (b"two", t2)
    assert b.write_ref(key, b"three", t1) is None          # a stale tag: a conflict
    assert b.write_ref(key, b"three", "not-a-tag") is None
    assert b.write_ref(key, b"three", '"0123456789abcdef0123456789abcdef"') is None
    assert b.read_ref(key) == (b"two", t2)
    t3 = b.write_ref(key, b"three", t2)
    assert t3 is not None and b.read_ref(key) == (b"three", t3)


def test_cas_tags_are_a_function_of_the_bytes(remote: Remote) -> None:
    """Shared by all three (and so a property callers may meet): a ref's tag depends on
    its bytes only (FsBackend and MemoryBackend: their blake3 digest; S3: the ETag, the
    MD5 of a single-part upload). So a tag read before a ref was rewritten with the same
    bytes still matches (A→B→A), and the same bytes under two keys carry one tag."""
    b = remote.backend
    t1 = b.write_ref("refs/a/latest", b"same", None)
    t2 = b.write_ref("refs/b/latest", b"same", None)
    assert t1 is not None and t1 == t2
    other = b.write_ref("refs/a/latest", b"other", t1)
    assert other is not None and other != t1
    back = b.write_ref("refs/a/latest", b"same", other)
    assert back == t1
    assert b.write_ref("refs/a/latest", b"next", t1) is not None
    if remote.kind in ("fs", "memory"):
        assert t1 == hash_bytes(b"same")
    else:
        import hashlib
        assert t1 == f'"{hashlib.md5(b"same").hexdigest()}"'


def test_cas_works_on_a_ref_written_by_put_bytes(remote: Remote) -> None:
    b = remote.backend
    b.put_bytes("refs/x/latest", b"planted")
    got = b.read_ref("refs/x/latest")
    assert got is not None and got[0] == b"planted"
    assert b.write_ref("refs/x/latest", b"new", None) is None
    new = b.write_ref("refs/x/latest", b"new", got[1])
    assert new is not None and b.read_ref("refs/x/latest") == (b"new", new)
    assert b.get("refs/x/latest") == b"new"


def test_cas_replace_of_a_missing_ref_is_a_conflict(remote: Remote,
                                                    request: pytest.FixtureRequest) -> None:
    """base.Backend.write_ref: 'Returns the new tag, or None when the ref changed' — and a
    ref deleted since it was read has changed (sync._push_ref then reads it again). S3
    answers a conditional PUT (If-Match) on a missing key with 404 NoSuchKey (some servers
    with 412): both are a conflict."""
    b = remote.backend
    tag = b.write_ref("refs/d/latest", b"v1", None)
    assert tag is not None
    b.delete("refs/d/latest")
    assert b.write_ref("refs/d/latest", b"v2", tag) is None
    assert b.write_ref("refs/never/latest", b"v2", tag) is None
    assert b.read_ref("refs/d/latest") is None and b.read_ref("refs/never/latest") is None


def test_cas_with_an_empty_tag_is_a_conflict(remote: Remote,
                                             request: pytest.FixtureRequest) -> None:
    """base.Backend.write_ref: write 'only if the ref's tag is still `expect`'; no ref has
    the tag "" (on S3 an empty If-Match would go out as no condition at all: a lost
    update, were a caller ever to hold an empty tag)."""
    b = remote.backend
    assert b.write_ref("refs/e/latest", b"one", None) is not None
    assert b.write_ref("refs/e/latest", b"two", "") is None
    got = b.read_ref("refs/e/latest")
    assert got is not None and got[0] == b"one"


def test_cas_concurrent_creates_have_one_winner(remote: Remote) -> None:
    b = remote.backend
    n = 8
    barrier = threading.Barrier(n)
    results: dict[int, str | None] = {}

    def create(i: int) -> None:
        barrier.wait()
        results[i] = b.write_ref("refs/race/latest", f"writer {i}".encode(), None)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [i for i, tag in results.items() if tag is not None]
    assert len(results) == n and len(winners) == 1
    assert b.read_ref("refs/race/latest") == (f"writer {winners[0]}".encode(),
                                              results[winners[0]])


def test_cas_concurrent_read_modify_write_loses_no_update(remote: Remote) -> None:
    b = remote.backend
    key = "refs/counter/latest"
    assert b.write_ref(key, b"0", None) is not None
    threads_n, each = 4, 5

    def bump() -> None:
        for _ in range(each):
            while True:
                got = b.read_ref(key)
                assert got is not None
                if b.write_ref(key, str(int(got[0]) + 1).encode(), got[1]) is not None:
                    break

    threads = [threading.Thread(target=bump) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    got = b.read_ref(key)
    assert got is not None and got[0] == str(threads_n * each).encode()


# ---- put_file (streaming upload) ----------------------------------------------------------

def test_put_file_round_trip_with_progress(remote: Remote, tmp_path: Path) -> None:
    """Shared: the progress calls add up to the file's size, and an empty file makes none.
    Documented difference in how they are split: FsBackend calls once per piece copied
    (fileio.PROGRESS_CHUNK, so once here), S3 (boto3's callback) once per chunk sent,
    MemoryBackend once per piece read (at most 8 MiB)."""
    b = remote.backend
    data = os.urandom(5 * MiB + 123)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    calls: list[int] = []
    assert b.put_file("loose/ab/big", str(src), calls.append) is None
    assert sum(calls) == len(data) and all(c >= 0 for c in calls)
    if remote.kind == "fs":
        assert calls == [len(data)]
    assert b.head("loose/ab/big") == len(data)
    assert b.get("loose/ab/big") == data
    assert b"".join(b.download("loose/ab/big")) == data
    assert b.get_range("loose/ab/big", 5 * MiB, 123) == data[5 * MiB:]
    # the stored file is a copy: changing the source afterwards changes nothing
    src.write_bytes(b"changed")
    assert b.get("loose/ab/big") == data
    # without a progress callback, and an empty file
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    calls.clear()
    b.put_file("loose/ab/empty", str(empty), calls.append)
    assert calls == []
    b.put_file("loose/ab/small", str(empty))
    assert b.get("loose/ab/empty") == b"" == b.get("loose/ab/small")
    assert files(remote, "loose/") == {"loose/ab/big": len(data), "loose/ab/empty": 0,
                                       "loose/ab/small": 0}


def test_put_file_of_a_missing_source(remote: Remote, tmp_path: Path) -> None:
    """Documented difference in the error type: the directory and memory backends let the
    OSError of opening the source through; S3Backend wraps every upload failure in a
    RemoteError. Either way nothing is stored."""
    b = remote.backend
    want: type[Exception] = RemoteError if remote.kind == "s3" else FileNotFoundError
    with pytest.raises(want):
        b.put_file("loose/ab/x", str(tmp_path / "no-such-file"))
    assert b.head("loose/ab/x") is None
    assert files(remote) == {}


# ---- keys ---------------------------------------------------------------------------------

def test_hostile_keys_are_refused_by_every_method(remote: Remote, tmp_path: Path) -> None:
    b = remote.backend
    src = tmp_path / "src"
    src.write_bytes(b"payload")
    b.put_bytes("refs/x/latest", b"{}")
    calls: list[Callable[[str], object]] = [
        lambda k: b.get(k), lambda k: b.get(k, max_size=10), lambda k: b.read_ref(k),
        lambda k: b.head(k), lambda k: b.get_range(k, 0, 1), lambda k: b.get_range(k, 0, 0),
        lambda k: list(b.download(k)), lambda k: b.delete(k),
        lambda k: b.put_bytes(k, b"x"), lambda k: b.put_file(k, str(src)),
        lambda k: b.write_ref(k, b"x", None)]
    for key in HOSTILE_KEYS:
        for call in calls:
            with pytest.raises(BadKey):
                call(key)
    for prefix in ("../", "/etc/", "refs//x/", "./refs/", "refs/../../", "a/\0/", ".."):
        with pytest.raises(BadKey):
            list(b.list(prefix))

    assert issubclass(BadKey, RemoteRefused)
    assert files(remote) == {"refs/x/latest": 2}  # nothing was written anywhere
    assert b.get("refs/x/latest") == b"{}"


def test_a_key_and_a_key_below_it(remote: Remote) -> None:
    """Documented difference: S3 and the memory backend are flat key spaces, where `a` and
    `a/b` may both exist; a directory remote cannot hold both, and says NotRegular (a file
    where a directory belongs, or a directory where a file belongs) — never a partial
    write. dsv's layout never needs both."""
    b = remote.backend
    b.put_bytes("a/b", b"below")
    b.put_bytes("c", b"file")
    assert b.head("a") is None and b.head("c/d") is None  # all agree: no file there
    if remote.kind == "fs":
        refused: list[Callable[[], object]] = [
            lambda: b.get("a"), lambda: b.read_ref("a"),        # `a` is a directory
            lambda: b.put_bytes("a", b"x"), lambda: b.delete("a"),
            lambda: b.put_bytes("c/d", b"x"),                   # `c` is a file
            lambda: b.write_ref("c/d", b"x", None)]
        for call in refused:
            with pytest.raises(NotRegular):
                call()
        assert b.get("c") == b"file"
    else:
        with pytest.raises(NotFound):
            b.get("a")
        assert b.read_ref("a") is None
        b.put_bytes("a", b"above")
        assert b.write_ref("c/d", b"x", None) is not None
        assert b.get("a") == b"above" and b.get("c/d") == b"x" and b.get("c") == b"file"
        b.delete("a")
        assert b.head("a") is None
    assert b.get("a/b") == b"below"


# ---- the memory backend's own promises ----------------------------------------------------

def test_memory_backend_never_touches_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every method but put_file (which reads the caller's source) runs with the file
    system calls that write or lock made to fail."""
    b = MemoryBackend()

    def forbidden(*_a: object, **_k: object) -> Any:
        raise AssertionError("the memory backend touched the disk")

    for mod, name in [(builtins, "open"), (os, "open"), (os, "mkdir"), (os, "makedirs"),
                      (os, "rename"), (os, "replace"), (os, "unlink"), (os, "stat"),
                      (os, "scandir"), (fcntl, "flock")]:
        monkeypatch.setattr(mod, name, forbidden)
    b.check_reachable()
    b.put_bytes("index/i", b"index")
    tag = b.write_ref("refs/d/latest", b"{}", None)
    assert tag is not None and b.write_ref("refs/d/latest", b"{1}", tag) is not None
    assert b.get("index/i") == b"index" and b.get_range("index/i", 1, 3) == b"nde"
    assert b"".join(b.download("index/i")) == b"index" and b.head("index/i") == 5
    assert dict(b.list("")) == {"index/i": 5, "refs/d/latest": 3}
    b.delete("index/i")
    assert b.read_ref("refs/d/latest") == (b"{1}", hash_bytes(b"{1}"))


def test_memory_backends_share_nothing() -> None:
    one, two = MemoryBackend("memory://one"), MemoryBackend("memory://two")
    one.put_bytes("k", b"1")
    assert two.head("k") is None and list(two.list("")) == []
    data = bytearray(b"mutable")
    one.put_bytes("m", data)  # type: ignore[arg-type]  # a copy is kept, not the buffer
    data[:] = b"changed"
    assert one.get("m") == b"mutable"
