"""Fetch, pull and clone hold a bounded window of trees in memory, never all of a
version's trees at once (the issue's item "`fetch` and `pull` hold no more than a bounded
window of trees in memory").

What bounds it, as the code stands:

* fetch (`sync.fetch._fetch_trees`): the trees of a level arrive a ranged read at a time
  (`download.RANGE_MAX` bytes each, at most `download.WORKERS` reads pending:
  `remote.bounded`); each tree is validated (`tree.decode_node`), written to the fetch's
  `_Scratch` (an unnamed temp file: only its offset and length stay in memory) and
  dropped. `tree.check_expansion` reads them back one at a time (holding the decoded
  nodes of the directories on its path), and `_store_fetched` one at a time into an
  Ingest, which stages at most `Ingest._BATCH_BYTES` before writing them to a pack.
* pull (`tree.blob_sizes`, or `_ids_beyond` against a version held whole) and the
  checkout after it (`tree.iter_files`, `tree.diff_trees`) read trees through
  `Core.read_tree`, whose cache keeps at most `core.TREE_CACHE_BYTES`; a fresh checkout
  (a clone's) places `checkout.FRESH_CHUNK` files at a time.

Those windows are made small here (KiB, not MiB), and one dataset is built with N and
with 4N directories (a quarter of them large enough to be sharded: `SHARD_ENTRIES` is
made small too). The peak of what Python allocates during each command (tracemalloc)
may grow from N to 4N by a small share of the tree bytes the 3N more directories add,
and stays below the tree bytes of the larger version. A fetch that kept every tree it
read (a dict in place of the scratch file) grows by more than those bytes.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest

import dsv as dsv_api
from conftest import Result, read_tree, run_in_process, write_tree
from dsv import checkout, core, objects, tree
from dsv.sync import download

N = 60
"""Directories of the smaller dataset; the larger has 4N."""

NAME = "n" * 190
"""Long file names: each row of a tree is about 290 bytes, so trees, not the files'
count, make up most of what a version's metadata weighs."""


def _files(dirs: int, version: int) -> dict[str, bytes]:
    """Every file of the dataset with `dirs` directories, 16 to a group; every fourth
    directory holds 40 files (sharded once SHARD_ENTRIES is 16), the others 12. Version
    2 adds a file to every directory: every tree changes."""
    files: dict[str, bytes] = {}
    for i in range(dirs):
        where = f"g{i // 16:02d}/d{i:04d}"
        for j in range(40 if i % 4 == 0 else 12):
            files[f"{where}/{i:04d}-{j:02d}-{NAME}.bin"] = b"x"
        if version == 2:
            files[f"{where}/added.txt"] = b"y"
    return files


@dataclass
class Built:
    dirs: int
    at_v1: Path           # a remote holding version 1
    at_v2: Path           # a remote holding versions 1 and 2
    tree_bytes: int       # of version 2's distinct tree objects
    trees: int


def _run(*args: str | os.PathLike[str], cwd: Path) -> Result:
    r = run_in_process(*args, cwd=cwd)
    assert r.code == 0, (args, r.err)
    return r


def _build(root: Path, dirs: int) -> Built:
    source = root / "source"
    write_tree(source / "data", _files(dirs, 1))
    _run("init", "--bare", source, cwd=root)
    _run("datasets", "create", "data", "--path", "data", cwd=source)
    _run("commit", "-m", "v1", cwd=source / "data")
    for name in ("at_v1", "at_v2"):
        _run("remote", "add", name, root / name, cwd=source)
        _run("push", name, cwd=source)
    write_tree(source / "data", _files(dirs, 2))
    _run("commit", "-m", "v2", cwd=source / "data")
    _run("push", "at_v2", cwd=source)
    with dsv_api.open(source) as store:
        version = store.resolve("data:latest")
        sizes = [len(store.read_tree(oid))
                 for oid, _node in tree.distinct_trees(version.tree, store.read_tree)]
    return Built(dirs, root / "at_v1", root / "at_v2", sum(sizes), len(sizes))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Built]:
    """The dataset with 2 (a warm-up), N and 4N directories, each pushed to two remotes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSV_AUTHOR", "tester <t@example.com>")
        mp.delenv("DSV_DIR", raising=False)
        mp.setattr(tree, "SHARD_ENTRIES", 16)
        return {dirs: _build(tmp_path_factory.mktemp(f"dirs{dirs}"), dirs)
                for dirs in (2, N, 4 * N)}


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every window that bounds the trees (and files) a sync holds, made a few KiB."""
    monkeypatch.setattr(download, "RANGE_MAX", 8 << 10)
    monkeypatch.setattr(download, "DOWNLOAD_CHUNK", 256)
    monkeypatch.setattr(objects.Ingest, "_BATCH_BYTES", 16 << 10)
    monkeypatch.setattr(core, "TREE_CACHE_BYTES", 32 << 10)
    monkeypatch.setattr(checkout, "FRESH_CHUNK", 256)


def _peak(*args: str | os.PathLike[str], cwd: Path) -> int:
    """Bytes Python allocated at most, beyond what it held before, while `dsv ARGS` ran."""
    gc.collect()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        _run(*args, cwd=cwd)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        if started:
            tracemalloc.stop()


def _clone(b: Built, where: Path) -> int:
    return _peak("clone", b.at_v2, where / f"clone{b.dirs}", cwd=where)


def _fetch(b: Built, where: Path) -> int:
    store = where / f"fetch{b.dirs}"
    _run("init", "--bare", store, cwd=where)
    _run("remote", "add", "origin", b.at_v2, cwd=store)
    return _peak("fetch", cwd=store)


def _pull_forward(b: Built, where: Path) -> int:
    """A clone at version 1 pulls version 2 (every tree new) from another remote: its
    trees fetched, its one new blob downloaded, the working directory moved forward."""
    clone = where / f"pull{b.dirs}"
    _run("clone", b.at_v1, clone, cwd=where)
    _run("remote", "add", "second", b.at_v2, cwd=clone)
    used = _peak("pull", "second", cwd=clone)
    assert read_tree(clone) == _files(b.dirs, 2)
    return used


def _pull_bare(b: Built, where: Path) -> int:
    """A store with no dataset bound pulls: version 2's trees fetched, then walked
    (blob_sizes) for the blobs to download."""
    store = where / f"bare{b.dirs}"
    _run("init", "--bare", store, cwd=where)
    _run("remote", "add", "origin", b.at_v2, cwd=store)
    return _peak("pull", cwd=store)


@pytest.mark.parametrize("command", [_clone, _fetch, _pull_forward, _pull_bare],
                         ids=["clone", "fetch", "pull", "pull-bare"])
def test_a_sync_holds_a_window_of_trees_not_a_version(
        built: dict[int, Built], command, tmp_path: Path, small_windows: None) -> None:
    command(built[2], tmp_path)   # (what a first run imports and sets up is not counted)
    small, large = built[N], built[4 * N]
    assert large.trees > 4 * large.dirs // 3   # (shard leaves: trees, not directories)
    peaks = {b.dirs: command(b, tmp_path) for b in (small, large)}
    added = large.tree_bytes - small.tree_bytes
    grew = peaks[large.dirs] - peaks[small.dirs]
    shown = (f"peak {peaks[small.dirs]:,} B with {small.dirs} directories "
             f"({small.tree_bytes:,} B of trees), {peaks[large.dirs]:,} B with {large.dirs} "
             f"({large.tree_bytes:,} B of trees, {large.trees} objects): grew {grew:,} B "
             f"for {added:,} B more trees")
    print(shown)
    assert grew < added // 4, shown
    assert peaks[large.dirs] < large.tree_bytes // 2, shown
