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
  (a clone's) places `checkout.FRESH_CHUNK` files at a time, and a checkout from the
  head walks the directory `worktree.RUN_FILES` files at a time.

Those windows are made a few KiB here, and one dataset is built with N and with 4N
directories (some sharded: `SHARD_ENTRIES` is made small too). The peak of what Python
allocates while each command runs (tracemalloc) may grow from N to 4N by a quarter of
the tree bytes the 3N more directories add, besides PER_TREE bytes of each tree object's
id and location; and it stays below the tree bytes of the larger version. A fetch that
kept every tree it read (a dict in place of the scratch file) grows by about all of
those bytes, twice what is allowed; so does a pull whose tree cache has no budget, or a
download that makes every ranged read of a level before handing over the first.

A checkout from the head (`checkout._place_changes`: the one a pull ends with, and `dsv
checkout` in a dataset's directory) walks the paths the two versions differ by once for
each step, placing or removing `checkout.FRESH_CHUNK` of them at a time: its peak does
not grow with them either (it held an entry for every changed path, about 1.5 KB each,
before it did).
"""

from __future__ import annotations

import gc
import json
import os
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import dsv as dsv_api
from conftest import Result, read_tree, run_in_process, write_tree
from dsv import checkout, core, objects, tree, worktree
from dsv.sync import download

N = 40
"""Directories of the smaller dataset; the larger has 4N."""

NAME = "n" * 240
"""Long file names: each row of a tree is about 330 bytes, so that what a tree weighs,
not what its id costs, is what would grow if trees were held."""

PER_TREE = 1536
"""Bytes a sync may hold for each tree object of the version besides its bytes: its id
and where it is (on the remote, in the scratch file, in the index rows of the pack it
lands in). About 1.3 KiB here, where a tree object averages 6 KiB."""


def _files(dirs: int, version: int) -> dict[str, bytes | str]:
    """The dataset with `dirs` directories, 16 to a group: every 16th directory holds
    128 files (sharded once SHARD_ENTRIES is 64), the others 32. Version 2 adds a file
    to every directory: every directory's tree changes (a sharded one's node and one
    leaf), few files do."""
    files: dict[str, bytes | str] = {}
    for i in range(dirs):
        where = f"g{i // 16:02d}/d{i:04d}"
        for j in range(128 if i % 16 == 0 else 32):
            files[f"{where}/{i:04d}-{j:03d}-{NAME}.bin"] = b"x"
        if version == 2:
            files[f"{where}/added.txt"] = b"y"
    return files


@dataclass
class Trees:
    """A version's distinct tree objects."""

    bytes: int
    objects: int
    sharded: int          # directories stored as shards
    new_bytes: int        # of those the version before it does not hold


@dataclass
class Built:
    dirs: int
    at_v1: Path           # a remote holding version 1
    at_v2: Path           # a remote holding versions 1 and 2
    v1: Trees
    v2: Trees


def _run(*args: str | os.PathLike[str], cwd: Path) -> Result:
    r = run_in_process(*args, cwd=cwd)
    assert r.code == 0, (args, r.err)
    return r


def _trees(store: dsv_api.Store, root: str, before: set[str]) -> Trees:
    nodes = [(oid, len(store.read_tree(oid)), node)
             for oid, node in tree.distinct_trees(root, store.read_tree)]
    return Trees(sum(size for _o, size, _n in nodes), len(nodes),
                 sum(1 for _o, _s, node in nodes if node.shards),
                 sum(size for oid, size, _n in nodes if oid not in before))


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
        v1, v2 = (store.resolve(f"data:latest{back}").tree for back in ("~1", ""))
        held = {oid for oid, _node in tree.distinct_trees(v1, store.read_tree)}
        return Built(dirs, root / "at_v1", root / "at_v2", _trees(store, v1, set()),
                     _trees(store, v2, held))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Built]:
    """The dataset with 2 (a warm-up), N and 4N directories, each pushed to two remotes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSV_AUTHOR", "tester <t@example.com>")
        mp.delenv("DSV_DIR", raising=False)
        mp.setattr(tree, "SHARD_ENTRIES", 64)
        made = {dirs: _build(tmp_path_factory.mktemp(f"dirs{dirs}"), dirs)
                for dirs in (2, N, 4 * N)}
    large = made[4 * N]
    assert large.v2.sharded == 4 * N // 16 and large.v2.objects > 2 * large.dirs
    return made


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every window that bounds the trees (and files) a sync holds, made a few KiB."""
    monkeypatch.setattr(download, "RANGE_MAX", 8 << 10)
    monkeypatch.setattr(download, "DOWNLOAD_CHUNK", 256)
    monkeypatch.setattr(objects.Ingest, "_BATCH_BYTES", 16 << 10)
    monkeypatch.setattr(core, "TREE_CACHE_BYTES", 32 << 10)
    monkeypatch.setattr(checkout, "FRESH_CHUNK", 256)
    monkeypatch.setattr(worktree, "RUN_FILES", 128)


def _peak(*args: str | os.PathLike[str], cwd: Path, fetches: int) -> int:
    """What Python allocated at most, beyond what it held before, while `dsv ARGS`
    ran; the fetch in it must have brought `fetches` bytes of trees at least."""
    gc.collect()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        r = _run(*args, "--json", cwd=cwd)
        used = tracemalloc.get_traced_memory()[1] - before
    finally:
        if started:
            tracemalloc.stop()
    report = json.loads(r.out)
    fetched = report.get("fetch", report)["bytes_received"]
    assert fetched >= fetches, (args, fetched, fetches)
    return used


def _judge(what: str, peaks: tuple[int, int], small: Trees, large: Trees) -> list[str]:
    """Whether, from the smaller dataset to the larger, the peak grows by no more than a
    quarter of the tree bytes added and PER_TREE a tree object added, and stays below
    the larger version's tree bytes: what is wrong, if anything."""
    grew = peaks[1] - peaks[0]
    added = large.bytes - small.bytes
    allowed = added // 4 + PER_TREE * (large.objects - small.objects)
    shown = (f"{what}: peak {peaks[0]:,} B with {N} directories ({small.bytes:,} B of "
             f"trees in {small.objects} objects), {peaks[1]:,} B with {4 * N} "
             f"({large.bytes:,} B in {large.objects}): grew {grew:,} B for {added:,} B "
             f"more trees (allowed {allowed:,} B)")
    print(shown)
    return [] if grew < allowed and peaks[1] < large.bytes else [shown]


def _fetch(b: Built, where: Path) -> int:
    store = where / f"fetch{b.dirs}"
    _run("init", "--bare", store, cwd=where)
    _run("remote", "add", "origin", b.at_v2, cwd=store)
    return _peak("fetch", cwd=store, fetches=b.v2.bytes)


def _pull_bare(b: Built, where: Path) -> int:
    """A store with no dataset bound pulls: version 2's trees fetched, then walked
    (`blob_sizes`) for the blobs to download."""
    store = where / f"bare{b.dirs}"
    _run("init", "--bare", store, cwd=where)
    _run("remote", "add", "origin", b.at_v2, cwd=store)
    return _peak("pull", cwd=store, fetches=b.v2.bytes)


@pytest.mark.parametrize("command", [_fetch, _pull_bare], ids=["fetch", "pull-bare"])
def test_a_fetch_holds_a_window_of_trees_not_a_version(
        built: dict[int, Built], command: Callable[[Built, Path], int],
        tmp_path: Path, small_windows: None) -> None:
    command(built[2], tmp_path)   # (what a first run imports and sets up is not counted)
    small, large = built[N], built[4 * N]
    wrong = _judge(command.__name__.strip("_").replace("_", "-"),
                   (command(small, tmp_path), command(large, tmp_path)), small.v2, large.v2)
    assert not wrong, wrong[0]


def _clone_then_pull(b: Built, where: Path) -> tuple[int, int]:
    """A clone of version 1 (its trees fetched, its files placed a chunk at a time),
    which then pulls version 2 from another remote: its trees fetched (all but the
    untouched leaves of sharded directories), its new blob downloaded, the working
    directory moved forward (a checkout from the head: `diff_trees`)."""
    clone = where / f"clone{b.dirs}"
    cloned = _peak("clone", b.at_v1, clone, cwd=where, fetches=b.v1.bytes)
    assert read_tree(clone / "data") == _files(b.dirs, 1)
    _run("remote", "add", "second", b.at_v2, cwd=clone)
    pulled = _peak("pull", "second", cwd=clone, fetches=b.v2.new_bytes)
    assert read_tree(clone / "data") == _files(b.dirs, 2)
    return cloned, pulled


def test_clone_and_pull_hold_a_window_of_trees_not_a_version(
        built: dict[int, Built], tmp_path: Path, small_windows: None) -> None:
    _clone_then_pull(built[2], tmp_path)   # (a warm-up, as above)
    small, large = built[N], built[4 * N]
    (clone_n, pull_n), (clone_4n, pull_4n) = (_clone_then_pull(b, tmp_path)
                                               for b in (small, large))
    wrong = _judge("clone", (clone_n, clone_4n), small.v1, large.v1) + \
        _judge("pull", (pull_n, pull_4n), small.v2, large.v2)
    assert not wrong, "\n".join(wrong)


def _two_versions(work: Path, dirs: int) -> None:
    """Dataset `data` in `work`: version 1 (tagged `one`) is one file, version 2 adds the
    `dirs` directories."""
    write_tree(work, {"README": b"r"})
    _run("init", "--name", "data", cwd=work)
    _run("commit", "-m", "v1", cwd=work)
    _run("tag", "data:latest", "one", cwd=work)
    write_tree(work, _files(dirs, 2))
    _run("commit", "-m", "v2", cwd=work)


def _switch(root: Path, dirs: int, spied: list[object]) -> tuple[int, int]:
    """A dataset whose version 1 is one file and version 2 the `dirs` directories: the
    peaks of checking out version 2 over version 1 (every path written), then version 1
    over it (every path removed), each from the head."""
    work = root / f"switch{dirs}"
    _two_versions(work, dirs)
    _run("checkout", "data:one", cwd=work)
    assert read_tree(work) == {"README": b"r"}
    peaks = []
    for ref, files in (("data:latest", {"README": b"r", **_files(dirs, 2)}),
                       ("data:one", {"README": b"r"})):
        gc.collect()
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            report = json.loads(_run("checkout", ref, "--json", cwd=work).out)
            peaks.append(tracemalloc.get_traced_memory()[1] - before)
        finally:
            tracemalloc.stop()
        assert read_tree(work) == files
        changed = len(_files(dirs, 2))
        assert (report["written"], report["removed"]) == \
            ((changed, 0) if ref == "data:latest" else (0, changed)), report
    assert spied and all(r is not None for r in spied), "not checked out from the head"
    spied.clear()
    return peaks[0], peaks[1]


def test_a_checkout_from_the_head_holds_a_window_of_the_paths_it_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_windows: None) -> None:
    spied: list[object] = []
    place_changes = checkout._place_changes

    def spy(*args: object, **kwargs: object) -> object:
        spied.append(place_changes(*args, **kwargs))
        return spied[-1]

    monkeypatch.setattr(checkout, "_place_changes", spy)
    _switch(tmp_path, 2, spied)   # (a warm-up, as above)
    small, large = _switch(tmp_path, N, spied), _switch(tmp_path, 4 * N, spied)
    added = len(_files(4 * N, 2)) - len(_files(N, 2))
    for what, n, four_n in (("write", small[0], large[0]), ("remove", small[1], large[1])):
        print(f"checkout from the head, {what} every path: peak {n:,} B with "
              f"{len(_files(N, 2))} paths, {four_n:,} B with {len(_files(4 * N, 2))}")
        assert four_n - n < 150 * added, (what, n, four_n, added)


def _over(root: Path, dirs: int, spied: list[object]) -> list[int]:
    """Peaks of three checkouts into directories that hold files already, which the
    checkout from the head cannot take (`checkout._Placement`): version 2 into a `--to`
    directory holding version 1 (every path written), version 1 into it then (every
    path removed), and version 2 into the working directory whose stat cache describes
    no version (as a killed checkout leaves it; every path written)."""
    work, other = root / f"over{dirs}", root / f"other{dirs}"
    _two_versions(work, dirs)
    _run("checkout", "data:one", "--to", other, cwd=work)
    _run("checkout", "data:one", cwd=work)
    with dsv_api.open(work) as store:   # (a cache that describes no version)
        with store.core.index.transaction():
            store.core.index.update_dataset(store.dataset("data").id, cache_tree=None)
    v2 = {"README": b"r", **{p: c.encode() if isinstance(c, str) else c
                             for p, c in _files(dirs, 2).items()}}
    peaks = []
    for args, where, files in (
            (("data:latest", "--to", other), other, v2),
            (("data:one", "--to", other), other, {"README": b"r"}),
            (("data:latest",), work, v2)):
        gc.collect()
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            report = json.loads(_run("checkout", *args, "--json", cwd=work).out)
            peaks.append(tracemalloc.get_traced_memory()[1] - before)
        finally:
            tracemalloc.stop()
        assert read_tree(where) == files
        changed = len(files) - 1 if files is v2 else len(v2) - 1
        assert (report["written"], report["removed"]) == \
            ((changed, 0) if files is v2 else (0, changed)), (args, report)
    assert len(spied) == 3, spied
    spied.clear()
    return peaks


def test_a_checkout_over_a_directory_holds_a_window_not_the_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_windows: None) -> None:
    spied: list[object] = []
    run = checkout._Placement.run

    def spy(self: checkout._Placement, *args: object, **kwargs: object) -> object:
        spied.append(self.key)
        return run(self, *args, **kwargs)   # type: ignore[arg-type]

    monkeypatch.setattr(checkout._Placement, "run", spy)
    _over(tmp_path, 2, spied)   # (a warm-up, as above)
    small, large = _over(tmp_path, N, spied), _over(tmp_path, 4 * N, spied)
    added = len(_files(4 * N, 2)) - len(_files(N, 2))
    wrong = []
    for what, n, four_n in zip(("write --to", "remove --to", "write in place"), small, large,
                               strict=True):
        print(f"checkout over a directory, {what}: peak {n:,} B with "
              f"{len(_files(N, 2))} paths, {four_n:,} B with {len(_files(4 * N, 2))}")
        if four_n - n >= 150 * added:
            wrong.append((what, n, four_n, added))
    assert not wrong, wrong


def _read_counted(root: Path, ahead: bool, monkeypatch: pytest.MonkeyPatch
                  ) -> tuple[dict[str, tree.Entry], list[int], int]:
    """Every file under the head of the store at `root`, walked with a cold tree cache
    (with `Core.read_trees_ahead`, or without), and how the trees were read: the size of
    each batch `read_many_packed` was asked for, and how many `read` calls reached a pack."""
    batches: list[int] = []
    singles = 0
    many, one = objects.ObjectStore.read_many_packed, objects.ObjectStore.read

    def read_many(self, oids, max_bytes):  # type: ignore[no-untyped-def]
        batches.append(len(oids))
        return many(self, oids, max_bytes)

    def read(self, oid, verify=True):  # type: ignore[no-untyped-def]
        nonlocal singles
        singles += 1
        return one(self, oid, verify)
    monkeypatch.setattr(objects.ObjectStore, "read_many_packed", read_many)
    monkeypatch.setattr(objects.ObjectStore, "read", read)
    c = core.Core(root)
    try:
        head = c.index.datasets()[0].head
        version = c.index.version(head or "")
        assert version is not None
        root_tree = version.tree
        walked = dict(tree.iter_files(root_tree, c.read_tree,
                                      read_ahead=c.read_trees_ahead if ahead else None))
    finally:
        c.close()
        monkeypatch.undo()
    return walked, batches, singles


def test_a_walk_reads_the_trees_it_meets_next_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A walk given `read_ahead` (a fresh checkout's) reads the trees it will meet next in
    one go, READ_AHEAD at most, where it would read them one at a time: the same files,
    from 71 trees (the root and 70 directories) in one read of the root and two of 64 and
    6 trees. A tree damaged in its pack is not taken from such a read: the walk meets it
    as it would without one, and reports it."""
    files = {f"d{i:02d}/f{j}.txt": f"{i} {j}\n" for i in range(70) for j in range(2)}
    write_tree(tmp_path / "ws", files)
    _run("init", "ws", cwd=tmp_path)
    _run("commit", "-m", "one", cwd=tmp_path / "ws")
    store = tmp_path / "ws"
    plain, none, singles = _read_counted(store, False, monkeypatch)
    assert none == [] and singles == 71
    walked, batches, singles = _read_counted(store, True, monkeypatch)
    assert walked == plain and sorted(walked) == sorted(files)
    assert (batches, singles) == ([64, 6], 1)
    # A read ahead that fails (a pack gone, a read error) leaves each tree to its own
    # read, which reports what is wrong with it, if anything.
    def failing(self, oids, max_bytes):  # type: ignore[no-untyped-def]
        raise OSError(5, "Input/output error (for the test)")
    monkeypatch.setattr(objects.ObjectStore, "read_many_packed", failing)
    walked, batches, singles = _read_counted(store, True, monkeypatch)
    assert walked == plain and (len(batches), singles) == (69, 71)   # (a try a miss)
    # An index that claims a tree longer than a read ahead may take: that tree is left
    # out of it (and read on its own), the others read.
    c = core.Core(store)
    try:
        top = c.index.version(c.index.datasets()[0].head or "")
        assert top is not None
        d05, d06 = (next(row[4] for row in tree.entries(top.tree, c.read_tree)
                         if row[0] == name) for name in ("d05", "d06"))
        (length,), = c.index.conn.execute("SELECT length FROM objects WHERE oid = ?", (d05,))
        c.index.conn.execute("UPDATE objects SET length = ? WHERE oid = ?", (1 << 40, d05))
        assert set(c.objects.read_many_packed([d05, d06], 1 << 20)) == {d06}
        assert c.objects.read_many_packed([d06], 10) == {}
        c.index.conn.execute("UPDATE objects SET length = ? WHERE oid = ?", (length, d05))
    finally:
        c.close()
    # A directory's tree damaged in its pack (the same length, other bytes, which a
    # walk of trusted trees would take for the directory's).
    c = core.Core(store)
    try:
        version = c.index.version(c.index.datasets()[0].head or "")
        assert version is not None
        d33 = next(row[4] for row in tree.entries(version.tree, c.read_tree)
                   if row[0] == "d33")
        pack, offset, length = c.index.locate(d33) or ("", 0, 0)
        path = c.objects.pack_path(pack)
    finally:
        c.close()
    assert length > 8
    with open(path, "r+b") as f:   # (still a tree that decodes: a file renamed F0.txt)
        f.seek(offset)
        at = offset + f.read(length).index(b'"f0.txt"') + 1
        f.seek(at)
        f.write(b"F")
    with pytest.raises(objects.CorruptObject, match=d33[:12]):
        _read_counted(store, True, monkeypatch)
    with pytest.raises(objects.CorruptObject, match=d33[:12]):
        _read_counted(store, False, monkeypatch)
