"""The cluster cache as another user of the cluster may leave it: a cache that cannot be
written, entries that grow, shrink or turn into links while they are read, locators
that lie about lengths, names that are not object ids. Every such cache costs speed (a
read of the origin), never data and never the command."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import read_tree, write_tree


def _files() -> dict[str, bytes]:
    files = {f"d{i % 3}/f{i:02d}.bin": os.urandom(200 + 31 * i) for i in range(20)}
    files["big/shard.bin"] = os.urandom((1 << 20) + 12345)  # a loose object
    return files


@pytest.fixture
def source(tmp_path: Path, dsv) -> Path:
    """A workspace `src` (dataset `data`) with one committed version, and a directory
    remote `origin` at tmp_path/remote."""
    src = tmp_path / "src"
    write_tree(src, _files())
    assert dsv("init", "--name", "data", src, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "first", cwd=src).code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=src).code == 0
    return src


def _read_only(paths: list[Path], *args: str | os.PathLike[str], cwd: Path
               ) -> subprocess.CompletedProcess:
    """`dsv ARGS` in a private mount namespace where each of `paths` is a read-only bind
    mount of itself: a cache this machine may read and not write (EROFS even for root)."""
    script = ('for p in "$@"; do [ "$p" = -- ] && break; mount --bind "$p" "$p" && '
              'mount -o remount,bind,ro "$p" || exit 99; shift; done; shift; exec "$@"')
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                           "sh", *map(str, paths), "--", sys.executable, "-m", "dsv",
                           *map(os.fspath, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def _clone_matches(tmp_path: Path, dsv, source: Path) -> None:
    """A store with no cache pulls everything from the origin and checks out `source`."""
    other = tmp_path / "other"
    assert dsv("init", "--bare", other, cwd=tmp_path).code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=other).code == 0
    assert dsv("pull", cwd=other).code == 0
    assert dsv("checkout", "data:latest", "--to", tmp_path / "out", cwd=other).code == 0
    assert read_tree(tmp_path / "out") == read_tree(source)
    assert dsv("verify", cwd=other).code == 0


# ---- 1. a cache a push cannot write --------------------------------------------------

@pytest.mark.parametrize("locked", ["whole", "entries"])
def test_a_write_through_cache_that_cannot_be_written_costs_the_copy_never_the_push(
        tmp_path: Path, source: Path, dsv, locked: str) -> None:
    """The cache is read-only here (a read-only mount, or another user's directories):
    all of it, or all but pending/ (the pending marker can be made, the entry not).
    The push warns once and goes on to the origin; no marker is left behind."""
    cache = tmp_path / "cache"
    for sub in ("packs", "loose", "pending", "tmp"):
        (cache / sub).mkdir(parents=True)
    assert dsv("remote", "add", "shared", cache, "--cache", "--write-through",
               cwd=source).code == 0
    done = _read_only([cache] if locked == "whole" else [cache / d for d in ("packs", "loose", "tmp")],
                      "push", cwd=source)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(f"warning: could not fill the cluster cache {cache}: "
                             "Read-only file system") == 1, done.stderr
    assert "error" not in done.stderr
    assert not list(cache.rglob("*.pack")) and not list((cache / "loose").iterdir())
    assert not list((cache / "pending").iterdir()) and not list((cache / "tmp").iterdir())
    _clone_matches(tmp_path, dsv, source)


def test_a_full_write_through_cache_costs_the_copy_never_the_push(
        tmp_path: Path, source: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    from dsv.remotes.cache import ClusterCache
    cache = tmp_path / "cache"
    assert dsv("remote", "add", "shared", cache, "--cache", "--write-through",
               cwd=source).code == 0

    def full(self: ClusterCache, path: str, write) -> None:  # noqa: ANN001
        raise OSError(errno.ENOSPC, "No space left on device", "tmp")

    with monkeypatch.context() as patched:
        patched.setattr(ClusterCache, "_fill", full)
        r = dsv("push", cwd=source)
    assert r.code == 0, r.err
    assert r.err.count("could not fill the cluster cache") == 1, r.err
    assert "No space left on device" in r.err
    assert not (cache / "pending").exists() or not list((cache / "pending").iterdir())
    _clone_matches(tmp_path, dsv, source)


# ---- 2. an entry that grows after its size was checked ---------------------------------

def _grows_after_fstat(monkeypatch: pytest.MonkeyPatch, entry: Path, by: int) -> list[int]:
    """Whoever checks the size of the open cache entry `entry` (fstat) sees it whole;
    right after, another user appends `by` bytes (a sparse hole: cheap to make, costly to
    read). Returns the sizes it was seen at (one per check)."""
    from dsv.remotes.cache import ClusterCache
    opened: set[int] = set()
    seen: list[int] = []
    real_open, real_fstat = ClusterCache.open_entry, os.fstat

    def open_entry(self: ClusterCache, path: str) -> int | None:
        fd = real_open(self, path)
        if fd is not None and Path(path) == entry:
            opened.add(fd)
        return fd

    def fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if fd in opened:
            opened.discard(fd)
            seen.append(st.st_size)
            os.truncate(entry, st.st_size + by)
        return st

    monkeypatch.setattr(ClusterCache, "open_entry", open_entry)
    monkeypatch.setattr(os, "fstat", fstat)
    return seen


def _fetched_with_cache(tmp_path: Path, dsv, source: Path, name: str) -> Path:
    assert dsv("push", cwd=source).code == 0
    store = tmp_path / name
    assert dsv("init", "--bare", store, cwd=tmp_path).code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=store).code == 0
    assert dsv("remote", "add", "shared", tmp_path / "cache", "--cache", cwd=store).code == 0
    assert dsv("fetch", cwd=store).code == 0
    return store


def test_a_small_cached_object_that_grows_after_its_size_check_is_read_no_further(
        tmp_path: Path, source: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small object kept loose in the cache (as readers without a store keep them),
    read by a store's download: it grows by 64 MiB after the fstat. Only the size checked
    is read, so the entry serves (its first bytes are the object)."""
    import dsv as dsv_api
    from dsv.objects import Ingest
    from dsv.reports import FetchReport, PullReport
    from dsv.sync.download import download_loose
    from dsv.sync.remote import open_remote
    store = _fetched_with_cache(tmp_path, dsv, source, "store")
    data = (source / "d1/f07.bin").read_bytes()
    oid = __import__("dsv.hashing", fromlist=["hash_bytes"]).hash_bytes(data)
    entry = tmp_path / "cache" / "loose" / oid[:2] / oid
    entry.parent.mkdir(parents=True)
    entry.write_bytes(data)
    seen = _grows_after_fstat(monkeypatch, entry, 64 << 20)
    with dsv_api.open(store) as opened:
        core = opened.core
        report = PullReport("-", FetchReport("-"))
        with core.locked("test"), Ingest(core.objects) as ingest:
            download_loose(core, open_remote(core, "origin"), [oid], {oid: len(data)},
                           report, ingest)
            core.commit_objects(ingest)
        assert bytes(core.objects.read(oid)) == data
    monkeypatch.undo()
    assert seen == [len(data)]
    assert report.from_cache == 1 and report.objects_received == 1
    assert entry.stat().st_size == len(data) + (64 << 20)  # (not dropped: it served)


def test_a_large_cached_object_that_grows_after_its_size_check_is_read_no_further(
        tmp_path: Path, source: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for a large (loose) object pulled by a store: the copy into the store
    stops at the size checked, and the object is taken from the cache."""
    first = _fetched_with_cache(tmp_path, dsv, source, "first")
    assert dsv("pull", cwd=first).code == 0  # fills the cache
    second = _fetched_with_cache(tmp_path, dsv, source, "second")
    data = (source / "big/shard.bin").read_bytes()
    oid = __import__("dsv.hashing", fromlist=["hash_bytes"]).hash_bytes(data)
    entry = tmp_path / "cache" / "loose" / oid[:2] / oid
    assert entry.stat().st_size == len(data)
    with monkeypatch.context() as patched:
        seen = _grows_after_fstat(patched, entry, 64 << 20)
        r = dsv("pull", "--json", cwd=second)
    assert r.code == 0, r.err
    assert seen == [len(data)]
    report = __import__("json").loads(r.out)
    assert report["from_cache"] == report["objects_received"], report
    assert entry.stat().st_size == len(data) + (64 << 20)
    assert dsv("checkout", "data:latest", "--to", tmp_path / "out", cwd=second).code == 0
    assert read_tree(tmp_path / "out") == read_tree(source)
    assert dsv("verify", cwd=second).code == 0


@pytest.mark.parametrize("when", ["after its size check", "after it was read"])
def test_a_cached_large_file_that_grows_while_a_reader_reads_it_is_read_no_further(
        tmp_path: Path, source: Path, dsv, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """`dsv get --cache` (no store) of a large file: the reader checks the entry's size,
    then reads and hashes it once, then gives out what it read. Grown by 64 MiB at either
    point, it is read no further than its size: the entry serves, and the file is whole."""
    from dsv.sync import reader as reader_mod
    assert dsv("push", cwd=source).code == 0
    remote, cache = tmp_path / "remote", tmp_path / "cache"
    r = dsv("get", remote, "data:latest", "big/shard.bin", "--to", tmp_path / "one",
            "--cache", cache, cwd=tmp_path)
    assert r.code == 0, r.err
    data = (source / "big/shard.bin").read_bytes()
    oid = __import__("dsv.hashing", fromlist=["hash_bytes"]).hash_bytes(data)
    entry = cache / "loose" / oid[:2] / oid
    assert entry.stat().st_size == len(data)
    with monkeypatch.context() as patched:
        if when == "after its size check":
            _grows_after_fstat(patched, entry, 64 << 20)
        else:
            pieces = reader_mod.pieces_at_most

            def grows_after(fd: int, size: int, *args: int):  # noqa: ANN202
                yield from pieces(fd, size, *args)
                os.truncate(entry, len(data) + (64 << 20))
            patched.setattr(reader_mod, "pieces_at_most", grows_after)
        r = dsv("get", remote, "data:latest", "big/shard.bin", "--to", tmp_path / "two",
                "--cache", cache, cwd=tmp_path)
    assert r.code == 0, r.err
    assert (tmp_path / "two/big/shard.bin").read_bytes() == data
    assert entry.stat().st_size == len(data) + (64 << 20)  # it served: not dropped


# ---- 3. locators in the cache that lie about where an object is ---------------------------

def _rewrite_cached_places(cache: Path, oid: str, place: tuple[str | None, int, int]) -> int:
    """Every locator in the cache that places `oid` now places it at `place`; how many."""
    from dsv.remotes import layout
    changed = 0
    for path in (cache / "loc").rglob("*"):
        if not path.is_file():
            continue
        loc = layout.parse_locator(path.read_bytes(), path.name)
        if oid in loc.places:
            loc.places[oid] = place
            path.write_bytes(layout.encode_locator(loc.data, loc.places, loc.nodes or None))
            changed += 1
    return changed


@pytest.mark.parametrize("lie", ["the whole pack", "past the pack's end", "a huge loose file"])
def test_a_cached_locator_whose_length_lies_costs_a_lookup_never_a_big_read(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch, lie: str) -> None:
    """A reader without a store, sharing a cache where another user rewrote the locators:
    a 300-byte file is placed as a whole 6 MiB pack, as a range past the pack's end, or as
    a loose file of 1 TiB. Such a place is not trusted (its length is not the file's
    size): the file is found by the pack indexes, read in a range of its own size, and
    the command succeeds."""
    from dsv.hashing import hash_bytes
    from dsv.remotes.fs import FsBackend
    files = {f"w/f{i}.bin": os.urandom((1 << 20) - 1000) for i in range(6)}
    files["small.bin"] = os.urandom(300)
    src = tmp_path / "src"
    write_tree(src, files)
    assert dsv("init", "--name", "data", src, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "first", cwd=src).code == 0
    remote, cache = tmp_path / "remote", tmp_path / "cache"
    assert dsv("remote", "add", "origin", remote, cwd=src).code == 0
    assert dsv("push", cwd=src).code == 0
    r = dsv("get", remote, "data:latest", "small.bin", "--to", tmp_path / "one",
            "--cache", cache, cwd=tmp_path)
    assert r.code == 0, r.err
    oid = hash_bytes(files["small.bin"])
    (cache / "loose" / oid[:2] / oid).unlink()  # the file itself is not in the cache
    pack = max((remote / "packs").iterdir(), key=lambda p: p.stat().st_size)
    size = pack.stat().st_size
    assert size > 5 << 20
    place = {"the whole pack": (pack.stem, 0, size),
             "past the pack's end": (pack.stem, size - 100, 300),
             "a huge loose file": (None, 0, 1 << 40)}[lie]
    assert _rewrite_cached_places(cache, oid, place) >= 1
    reads: list[int] = []
    real = FsBackend.get_range

    def counted(self: FsBackend, key: str, start: int, length: int) -> bytes:
        reads.append(length)
        return real(self, key, start, length)

    with monkeypatch.context() as patched:
        patched.setattr(FsBackend, "get_range", counted)
        r = dsv("get", remote, "data:latest", "small.bin", "--to", tmp_path / "two",
                "--cache", cache, cwd=tmp_path)
    assert r.code == 0, r.err
    assert "Traceback" not in r.err
    assert (tmp_path / "two/small.bin").read_bytes() == files["small.bin"]
    assert reads and max(reads) <= 300, reads


# ---- a directory that cannot be opened just now is not dropped ---------------------------

def _fails_once(monkeypatch: pytest.MonkeyPatch, step: list[str], code: int) -> list[int]:
    """Opening the cache directory `step` fails once with `code` (ESTALE: an NFS file
    handle gone stale; EACCES; EIO), as a shared file system does now and then."""
    from dsv.remotes import cache as cache_mod
    real, failed = cache_mod.open_dirs, []

    def open_dirs(root: str, parts, *args, **kwargs) -> int:  # noqa: ANN001
        if list(parts) == step and not failed:
            failed.append(1)
            raise OSError(code, os.strerror(code), step[-1])
        return real(root, parts, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "open_dirs", open_dirs)
    return failed


@pytest.mark.parametrize("code", [errno.ESTALE, errno.EIO, errno.EACCES])
def test_prune_never_removes_a_directory_it_could_not_open_just_now(
        tmp_path: Path, source: Path, dsv, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Only a link or a file where packs/ belongs is dropped; a real packs/ that failed
    to open (a stale NFS handle, an I/O error) stays whole, and prune says what failed."""
    cache = tmp_path / "cache"
    assert dsv("remote", "add", "shared", cache, "--cache", "--write-through",
               cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    packs = sorted((cache / "packs").iterdir())
    assert packs
    with monkeypatch.context() as patched:
        failed = _fails_once(patched, ["packs"], code)
        r = dsv("cache", "prune", "--max-size", "1T", cwd=source)
    assert failed
    assert sorted((cache / "packs").iterdir()) == packs
    assert r.code == 1 and r.err.startswith(f"error: {os.strerror(code)}: packs"), r.err
    assert "Traceback" not in r.err


def test_a_reader_warns_once_of_a_cache_it_cannot_fill(tmp_path: Path, source: Path,
                                                        dsv) -> None:
    """`dsv get --cache` through a read-only cache: one warning, not one per file."""
    assert dsv("push", cwd=source).code == 0
    cache = tmp_path / "cache"
    cache.mkdir()
    done = _read_only([cache], "get", tmp_path / "remote", "data:latest", "--to",
                      tmp_path / "out", "--cache", cache, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == (f"warning: could not fill the cluster cache {cache}: "
                           "Read-only file system\n")
    assert read_tree(tmp_path / "out") == read_tree(source)


# ---- 6. pending markers anyone may plant -------------------------------------------------

def _plant(cache: Path, data: bytes, name: str | None = None, marker_age: float = 0.0,
           used_age: float = 7200.0) -> Path:
    """A loose entry of `data` (named by its blake3 unless `name`), used `used_age` ago,
    with a pending marker made `marker_age` ago."""
    from dsv.hashing import hash_bytes
    import time
    oid = name or hash_bytes(data)
    entry = cache / "loose" / oid[:2] / oid
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_bytes(data)
    now = time.time()
    os.utime(entry, (now - used_age, now - used_age))
    marker = cache / "pending" / f"loose-{oid[:2]}-{oid}"
    marker.parent.mkdir(exist_ok=True)
    marker.touch()
    os.utime(marker, (now - marker_age, now - marker_age))
    return entry


def test_prune_honours_only_pending_markers_of_entries_a_push_uploads(
        tmp_path: Path, source: Path, dsv) -> None:
    """A marker keeps its entry only if it is fresh (24 h) and names an entry a push
    uploads (a whole pack, or a loose object of 1 MiB or more that hashes to its name);
    and what pending entries keep never takes more than half of --max-size from the
    others. (Before, any marker kept its entry for good, and a planted marker plus a big
    file made prune evict everything else.)"""
    import json
    assert dsv("push", cwd=source).code == 0
    cache = tmp_path / "cache"
    assert dsv("get", tmp_path / "remote", "data:latest", "--to", tmp_path / "one",
               "--cache", cache, cwd=tmp_path).code == 0
    real = sorted(p for p in (cache / "loose").rglob("*") if p.is_file())
    small = next(p for p in real if p.stat().st_size < 1000)
    big = next(p for p in real if p.stat().st_size > 1 << 20)
    assert dsv("remote", "add", "shared", cache, "--cache", cwd=source).code == 0

    junk = _plant(cache, os.urandom(3 << 20), name="ab" + os.urandom(31).hex())
    stale = _plant(cache, os.urandom(3 << 19), marker_age=2 * 86400)
    kept = _plant(cache, os.urandom(3 << 19))
    _plant(cache, small.read_bytes())  # a real entry, but no push uploads a small loose one
    r = dsv("cache", "prune", "--older-than", "1h", "--json", cwd=source)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["pending_kept"] == 1 and report["removed"] == 3, report
    assert kept.exists() and not junk.exists() and not stale.exists() and not small.exists()
    assert big.exists()

    # A genuine entry marked pending, larger than the whole budget: kept, but the others
    # keep half of the budget (here, all of them: 1.1 MiB of 3 MiB).
    huge = _plant(cache, os.urandom(3 << 20), used_age=0)
    r = dsv("cache", "prune", "--max-size", "3MiB", "--json", cwd=source)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["pending_kept"] == 2 and report["removed"] == 0, report
    assert huge.exists() and kept.exists() and big.exists()


@pytest.mark.parametrize("how", ["open", "list", "stat"])
@pytest.mark.parametrize("code", [errno.ESTALE, errno.EACCES])
def test_prune_removes_nothing_when_pending_cannot_be_read_just_now(
        tmp_path: Path, source: Path, dsv, monkeypatch: pytest.MonkeyPatch, how: str,
        code: int) -> None:
    """A real pending/ that cannot be opened, listed or looked into just now (a stale NFS
    handle; another user's directory) is not taken for "no markers": prune stops, naming
    it, and removes nothing, pending entries least of all. (Before: every marker counted
    as absent, and the entry a push had not uploaded yet was evicted.)"""
    from dsv.remotes import cache as cache_mod
    assert dsv("push", cwd=source).code == 0
    cache = tmp_path / "cache"
    assert dsv("remote", "add", "shared", cache, "--cache", cwd=source).code == 0
    entry = _plant(cache, os.urandom(3 << 19))          # pending upload, unused for 2 h
    old = _plant(cache, os.urandom(1000), used_age=7200)  # an ordinary entry, as old
    (cache / "pending" / f"loose-{old.name[:2]}-{old.name}").unlink()
    real_open, real_listdir, real_stat = cache_mod.open_dirs, os.listdir, os.stat
    pending_fd: list[int] = []

    def open_dirs(root: str, parts, *args, **kwargs) -> int:  # noqa: ANN001
        if list(parts) == ["pending"] and how == "open":
            raise OSError(code, os.strerror(code), "pending")
        fd = real_open(root, parts, *args, **kwargs)
        if list(parts) == ["pending"]:
            pending_fd.append(fd)
        return fd

    def listdir(path=".") -> list[str]:  # noqa: ANN001
        if how == "list" and isinstance(path, int) and path in pending_fd:
            raise OSError(code, os.strerror(code))
        return real_listdir(path)

    def stat(path, *args, dir_fd=None, **kwargs):  # noqa: ANN001, ANN202
        if how == "stat" and dir_fd is not None and dir_fd in pending_fd:
            raise OSError(code, os.strerror(code), path)
        return real_stat(path, *args, dir_fd=dir_fd, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(cache_mod, "open_dirs", open_dirs)
        patched.setattr(cache_mod.os, "listdir", listdir)
        patched.setattr(cache_mod.os, "stat", stat)
        r = dsv("cache", "prune", "--older-than", "1h", cwd=source)
    assert r.code == 1, r.out + r.err
    assert r.err.startswith(f"error: {os.strerror(code)}: pending"), r.err
    assert "Traceback" not in r.err and "bug in dsv" not in r.err
    assert entry.exists() and old.exists()
    # Once it can be read again, prune goes on: the pending entry stays, the other goes.
    r = dsv("cache", "prune", "--older-than", "1h", cwd=source)
    assert r.code == 0, r.err
    assert entry.exists() and not old.exists()


@pytest.mark.parametrize("how", ["open", "list"])
def test_prune_skips_a_tmp_it_cannot_read_with_a_warning_and_prunes_the_rest(
        tmp_path: Path, source: Path, dsv, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """tmp/ holds only temp files of fills (stale ones at worst): one another user made
    under umask 077 costs its own cleanup, with a warning, never the rest of the prune.
    (Before: prune stopped with "error: Permission denied: tmp", removing nothing.)"""
    from dsv.remotes import cache as cache_mod
    assert dsv("push", cwd=source).code == 0
    cache = tmp_path / "cache"
    assert dsv("remote", "add", "shared", cache, "--cache", cwd=source).code == 0
    old = _plant(cache, os.urandom(1000), used_age=7200)
    (cache / "pending" / f"loose-{old.name[:2]}-{old.name}").unlink()
    (cache / "tmp").mkdir()
    real_open, real_listdir = cache_mod.open_dirs, os.listdir
    tmp_fd: list[int] = []

    def open_dirs(root: str, parts, *args, **kwargs) -> int:  # noqa: ANN001
        if list(parts) == ["tmp"] and how == "open":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "tmp")
        fd = real_open(root, parts, *args, **kwargs)
        if list(parts) == ["tmp"]:
            tmp_fd.append(fd)
        return fd

    def listdir(path=".") -> list[str]:  # noqa: ANN001
        if isinstance(path, int) and path in tmp_fd:
            tmp_fd.remove(path)
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_listdir(path)

    with monkeypatch.context() as patched:
        patched.setattr(cache_mod, "open_dirs", open_dirs)
        patched.setattr(cache_mod.os, "listdir", listdir)
        r = dsv("cache", "prune", "--older-than", "1h", cwd=source)
    assert r.code == 0, r.err
    assert r.out.startswith("removed 1 entry"), r.out
    assert r.err == (f"warning: cannot clean the temp files of the cluster cache {cache}: "
                     "Permission denied: tmp (skipped)\n"), r.err
    assert not old.exists() and (cache / "tmp").is_dir()
