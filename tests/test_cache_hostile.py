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
