"""Streaming walks and commits (issue 11): a walk yields files in path order (the order
SQLite keeps the stat cache in), status and commit merge it with the cache as both
stream, and a commit without a usable cache builds its trees directory by directory
(tree.TreeBuilder) a chunk of files at a time, never holding the dataset's manifest.
Chunks and runs are made tiny here, so every boundary is crossed many times."""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import pytest

import dsv as dsv_api
from conftest import read_tree, write_tree
from dsv import tree, versions, worktree
from dsv.errors import DirtyWorktree, UnsafePath
from dsv.tree import FILE, LINK, Entry

NAMES = ["a", "a.b", "a-b", "a0", "a b", "b", "é", "Z", "_", "aa"]


def _tricky_tree(root: Path, seed: int, count: int) -> dict[str, bytes]:
    """Files whose names sort differently as names and as paths ('a.b' < 'a/…' < 'a0')."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for i in range(count):
        parts = [rng.choice(NAMES) for _ in range(rng.randrange(0, 4))] + [rng.choice(NAMES)]
        path = "/".join(parts)
        if any(p == path or p.startswith(path + "/") or path.startswith(p + "/")
               for p in files):
            continue
        files[path] = b"%d" % i
    write_tree(root, files)
    return files


@pytest.mark.parametrize("seed", range(4))
def test_a_walk_yields_every_file_in_path_order(tmp_path: Path, seed: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worktree, "RUN_FILES", 3)
    files = _tricky_tree(tmp_path / "w", seed, 120)
    (tmp_path / "w/inner/.dsv").mkdir(parents=True)   # another store: left out
    (tmp_path / "w/inner/x").write_bytes(b"x")
    os.symlink("a", tmp_path / "w/zlink")
    skipped: list[str] = []
    stores: list[str] = []
    runs = list(worktree.walk(tmp_path / "w", skipped, stores=stores))
    paths = [rel for run in runs for rel, _fs in run]
    assert paths == sorted([*files, "zlink"])
    assert len(runs) > 3 and stores == ["inner"]
    kinds = {rel: fs[4] for run in runs for rel, fs in run}
    assert kinds["zlink"] == LINK and {kinds[p] for p in files} == {FILE}
    # The same walk gives the same run digests; a change of stat gives its own run
    # another, and only that one.
    first = _run_digests(worktree.walk(tmp_path / "w", []))
    assert first == _run_digests(worktree.walk(tmp_path / "w", []))
    assert len(set(first)) == len(first) == len(runs)
    some = sorted(files)[len(files) // 2]
    os.utime(tmp_path / "w" / some, ns=(1, 1))
    now = _run_digests(worktree.walk(tmp_path / "w", []))
    changed = [i for i, (a, b) in enumerate(zip(first, now, strict=True)) if a != b]
    assert [some in dict(runs[i]) for i in changed] == [True]


def _run_digests(runs: Iterable[worktree.Run]) -> list[str | None]:
    digest = worktree.ScanDigest()
    return [digest.add(run) for run in runs]


def _rows_between(rows: list[tuple[str, int, int, int, int, int]]) -> worktree.RowsBetween:
    def between(after: str, upto: str | None) -> list[tuple[str, int, int, int, int, int]]:
        return [r for r in rows if after < r[0] and (upto is None or r[0] <= upto)]
    return between


def test_a_large_directory_is_walked_in_pieces_that_an_insert_does_not_move(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory of many files comes in pieces cut where a path's hash says: a file
    added (or removed) changes the digest of its own piece only, so a commit or status
    after it reads the stat-cache rows of that piece only."""
    monkeypatch.setattr(worktree, "RUN_FILES", 16)
    names = [f"img{i:05d}.jpg" for i in range(0, 4000, 2)]
    write_tree(tmp_path / "w", {n: b"x" for n in names})
    before = list(worktree.walk(tmp_path / "w", []))
    assert [rel for run in before for rel, _fs in run] == sorted(names)
    assert len(before) > 2000 // (4 * 16) and max(map(len, before)) <= 4 * 16
    digests = _run_digests(before)
    write_tree(tmp_path / "w", {"img01001.jpg": b"new"})   # between two files
    after = list(worktree.walk(tmp_path / "w", []))
    moved = set(_run_digests(after)) - set(digests)
    assert len(moved) == 1 and len(after) == len(before)
    (piece,) = [run for run, d in zip(after, _run_digests(after), strict=True) if d in moved]
    assert "img01001.jpg" in dict(piece)


def test_stat_changes_merges_runs_with_rows_in_path_order() -> None:
    fs = (5, 1_000, 7, 0o644, FILE)
    runs = [[("a.b", fs), ("a/x", fs)], [("a/y", (6, 1_000, 7, 0o644, FILE)), ("b", fs)]]
    late = 10 ** 12
    rows = [("a", 5, 1_000, 7, 0o644, late),      # gone (a directory now)
            ("a/x", 5, 1_000, 7, 0o644, late),    # vouched for
            ("a/y", 5, 1_000, 7, 0o644, late),    # size changed
            ("b", 5, 1_000, 7, 0o644, 1_000),     # racily clean: hashed again
            ("c", 5, 1_000, 7, 0o644, late)]      # gone
    seen = worktree.stat_changes(runs, _rows_between(rows))
    assert sorted(seen.unvouched) == ["a.b", "a/y", "b"]
    assert seen.gone == ["a", "c"] and seen.rows == 5 and seen.files == 4
    assert seen.runs == _run_digests(runs) and seen.kept == seen.clean == []
    with pytest.raises(AssertionError, match="bug in dsv"):
        worktree.stat_changes([[("b", fs)], [("a", fs)]], _rows_between([]))


def test_a_known_run_reads_no_row_and_a_gone_path_is_found_in_its_stretch() -> None:
    """Rows are read run by run, for the stretch of paths from the end of the run before;
    a run whose digest is known reads none. A path gone between two runs belongs to the
    stretch of the run after it, whose digest covers where the run before it ended."""
    fs = (5, 1_000, 7, 0o644, FILE)
    late = 10 ** 12
    rows = [(p, 5, 1_000, 7, 0o644, late) for p in ("a", "b", "c", "d", "e", "f")]
    runs = [[("a", fs), ("b", fs)], [("c", fs), ("d", fs)], [("e", fs), ("f", fs)]]
    asked: list[tuple[str, str | None]] = []

    def between(after: str, upto: str | None) -> list[tuple[str, int, int, int, int, int]]:
        asked.append((after, upto))
        return _rows_between(rows)(after, upto)
    seen = worktree.stat_changes(runs, between)
    assert not seen.unvouched and not seen.gone and seen.rows == 6
    assert seen.kept == seen.clean == seen.runs and len(set(seen.runs)) == 3
    assert asked == [("", "b"), ("b", "d"), ("d", "f"), ("f", None)]
    known = set(seen.clean)
    # Every run known, holding as many files as the tree: no row at all.
    asked.clear()
    seen = worktree.stat_changes(runs, between, known, 6)
    assert asked == [] and seen.rows == 6 and not seen.gone and not seen.unvouched
    # (With a tree of more files, some are gone: the rows past the last run say which.)
    seen = worktree.stat_changes(runs, between, known, 7)
    assert asked == [("f", None)]
    asked.clear()
    # One file changed: only its run's rows are read, and it is neither kept nor clean.
    asked.clear()
    runs[1][1] = ("d", (6, 1_000, 7, 0o644, FILE))
    seen = worktree.stat_changes(runs, between, known)
    assert list(seen.unvouched) == ["d"] and seen.rows == 6
    assert asked == [("b", "d"), ("f", None)]
    assert seen.kept == seen.clean == [seen.runs[0], seen.runs[2]]
    # "b" gone: the first run now ends at "a", so the second run's digest is new though
    # its files are not; its stretch ("a", "d"] holds the gone path.
    asked.clear()
    runs = [[("a", fs)], [("c", fs), ("d", fs)], [("e", fs), ("f", fs)]]
    seen = worktree.stat_changes(runs, between, known)
    assert seen.gone == ["b"] and not seen.unvouched and seen.rows == 6
    assert asked == [("", "a"), ("a", "d"), ("f", None)]
    assert seen.runs[2] in seen.clean and seen.runs[1] in seen.kept
    assert seen.runs[1] not in seen.clean
    # A path gone at the end is found past the last run.
    seen = worktree.stat_changes(runs[:2], between, known)
    assert seen.gone == ["b", "e", "f"]


@pytest.mark.parametrize("shard_entries", [2, 5, 512])
@pytest.mark.parametrize("seed", range(5))
def test_a_tree_built_in_path_order_is_the_tree_build_tree_makes(
        monkeypatch: pytest.MonkeyPatch, shard_entries: int, seed: int) -> None:
    monkeypatch.setattr(tree, "SHARD_ENTRIES", shard_entries)
    rng = random.Random(seed)
    manifest: dict[str, Entry] = {}
    for i in range(rng.randrange(0, 400)):
        parts = [rng.choice(NAMES) for _ in range(rng.randrange(0, 3))] + [f"f{i}"]
        path = "/".join(parts)
        if any(p.startswith(path + "/") or path.startswith(p + "/") for p in manifest):
            continue
        manifest[path] = Entry(FILE, 0o644, rng.randrange(100),
                               blake3.blake3(b"%d" % i).hexdigest())
    whole: dict[str, bytes] = {}
    streamed: dict[str, bytes] = {}
    expected = tree.build_tree(manifest, whole.__setitem__)
    builder = tree.TreeBuilder(streamed.__setitem__)
    for path in sorted(manifest):
        builder.add(path, manifest[path])
    assert builder.finish() == expected and streamed == whole
    late = tree.TreeBuilder(streamed.__setitem__)
    late.add("b", Entry(FILE, 0o644, 1, "0" * 64))
    with pytest.raises(AssertionError, match="bug in dsv"):
        late.add("a", Entry(FILE, 0o644, 1, "0" * 64))


def _cache_paths(ws: Path) -> list[str]:
    with sqlite3.connect(ws / ".dsv" / "index.db") as conn:
        return [r[0] for r in conn.execute("SELECT path FROM statcache ORDER BY path")]


def _age(root: Path) -> None:
    old = 1_600_000_000
    for dirpath, _dirs, names in os.walk(root):
        if ".dsv" in dirpath:
            continue
        for name in names:
            os.utime(os.path.join(dirpath, name), (old, old), follow_symlinks=False)


def test_a_commit_in_chunks_makes_the_version_a_whole_build_makes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions, "COMMIT_CHUNK", 4)
    monkeypatch.setattr(worktree, "RUN_FILES", 3)
    monkeypatch.setattr(tree, "SHARD_ENTRIES", 4)
    ws = tmp_path / "ws"
    files = _tricky_tree(ws, 7, 90)
    _age(ws)
    store = dsv_api.init(ws, name="raw")
    first = store.commit("first")
    manifest = store.manifest(first)
    assert {p: e.size for p, e in manifest.items()} == {p: len(b) for p, b in files.items()}
    whole: dict[str, bytes] = {}
    assert tree.build_tree(manifest, whole.__setitem__) == (first.tree, first.size)
    assert first.files == len(files)
    assert _cache_paths(ws) == sorted(files)   # every row, staged chunk by chunk
    assert store.status().changes.clean

    # A cache that no longer describes the head (as after a --to checkout): the next
    # commit walks in chunks again, reuses the rows it can, drops rows of gone files
    # that fall between chunks, and hashes what changed.
    store.core.index.update_dataset(store.dataset("raw").id, cache_tree=None)
    gone = sorted(files)[::5]
    for path in gone:
        (ws / path).unlink()
    changed = sorted(files)[1]
    (ws / changed).write_bytes(b"changed!")
    _age(ws)
    second = store.commit("second")
    kept = {p: b for p, b in files.items() if p not in gone}
    kept[changed] = b"changed!"
    assert _cache_paths(ws) == sorted(kept)
    out = tmp_path / "out"
    store.checkout(f"raw:{second.id}", to=out)
    assert read_tree(out) == kept
    assert store.status().changes.clean


def test_links_are_checked_across_chunks(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions, "COMMIT_CHUNK", 2)
    monkeypatch.setattr(worktree, "RUN_FILES", 1)
    ws = tmp_path / "ws"
    write_tree(ws, {f"m/f{i}": b"%d" % i for i in range(6)})
    os.mkdir(ws / "a")
    os.symlink("..", ws / "a/up")                 # stays inside by itself
    os.mkdir(ws / "z")
    os.symlink("../a/up/../x", ws / "z/through")  # leaves the dataset only through a/up
    store = dsv_api.init(ws, name="raw")
    with pytest.raises(UnsafePath):
        store.commit("escape through another chunk's link")
    os.unlink(ws / "z/through")
    version = store.commit("fine")
    assert store.manifest(version)["a/up"].kind == LINK


def _no_manifest(*_a: object, **_k: object) -> object:
    raise AssertionError("a whole manifest was read")


def _blind_and_chunked(m: pytest.MonkeyPatch, store: dsv_api.Store) -> None:
    """No whole manifest may be read; comparisons go 3 paths at a time, walks 2 files."""
    from dsv import checkout as checkout_module
    m.setattr(store.core, "manifest", _no_manifest)
    m.setattr(checkout_module, "FRESH_CHUNK", 3)
    m.setattr(worktree, "RUN_FILES", 2)


def _edit(ws: Path, rng: random.Random, round_no: int) -> None:
    """Random edits of a working directory: files changed, added, deleted, a directory
    emptied, a file replaced by a directory and back, links added."""
    present = sorted(p for p in read_tree(ws))
    for path in rng.sample(present, min(len(present), rng.randrange(1, 6))):
        action = rng.random()
        if action < 0.4:
            (ws / path).write_bytes(b"r%d %s" % (round_no, path.encode()))
        elif action < 0.7:
            (ws / path).unlink()
        elif action < 0.85 and not (ws / path).is_symlink():
            (ws / path).unlink()
            (ws / path).mkdir()
            (ws / path / "inner").write_bytes(b"inner %d" % round_no)
        else:
            os.chmod(ws / path, 0o755)
    for i in range(rng.randrange(0, 4)):
        directory = ws / rng.choice(["", "new", "a/b", "flat"])
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"n{round_no}_{i}").write_bytes(b"n%d" % i)
    if rng.random() < 0.3:
        os.symlink("../flat", ws / f"new/link{round_no}") if (ws / "new").is_dir() else None
    _age(ws)


@dataclass
class _History:
    """A dataset's random history, and a twin of its store and directory."""

    ws: Path
    store: dsv_api.Store
    made: list[Any]                       # the versions, in order
    contents: dict[str, dict[str, bytes]]  # version id → its files
    twin: Path
    whole: dsv_api.Store                   # the twin's store


def _history(tmp_path: Path, rng: random.Random, rounds: int) -> _History:
    """`rounds` random edits (`_edit`) committed after a first version, and a copy of
    it all (the twin, checked out by comparing whole manifests)."""
    import shutil
    ws = tmp_path / "ws"
    write_tree(ws, {**{f"flat/f{i:02d}": b"%d" % i for i in range(30)},
                    "a/b/c": b"c", "a/x": b"x", "top": b"t"})
    _age(ws)
    store = dsv_api.init(ws, name="raw")
    made = [store.commit("v0")]
    contents = {made[0].id: read_tree(ws)}
    for round_no in range(1, rounds + 1):
        _edit(ws, rng, round_no)
        made.append(store.commit(f"v{round_no}"))
        contents[made[-1].id] = read_tree(ws)
    twin = tmp_path / "twin"
    shutil.copytree(ws, twin, symlinks=True)
    return _History(ws, store, made, contents, twin, dsv_api.open(twin))


def _check_out_both_ways(h: _History, target: Any, monkeypatch: pytest.MonkeyPatch,
                         force: bool = False) -> None:
    """Check `target` out in the store from the head (by the tree diff: no whole
    manifest read) and in the twin by comparing whole manifests: the same report, and
    both directories hold exactly the version, clean, with a cache that describes it."""
    from dsv import checkout as checkout_module
    planned = checkout_module._place_changes
    streamed = []

    def spy(*args: object) -> object:
        streamed.append(planned(*args))  # type: ignore[arg-type]
        return streamed[-1]

    with monkeypatch.context() as m:
        m.setattr(h.store.core, "manifest", _no_manifest)
        m.setattr(checkout_module, "_place_changes", spy)
        fast = h.store.checkout(f"raw:{target.id}", force=force)
    assert len(streamed) == 1 and streamed[0] is fast
    with monkeypatch.context() as m:
        m.setattr(checkout_module, "_place_changes", lambda *_a: None)
        slow = h.whole.checkout(f"raw:{target.id}", force=force)
    assert (fast.written, fast.removed, fast.unchanged, fast.bytes_written) == \
        (slow.written, slow.removed, slow.unchanged, slow.bytes_written)
    assert read_tree(h.ws) == h.contents[target.id] == read_tree(h.twin)
    assert h.store.status().changes.clean
    assert h.store.dataset("raw").cache_tree == target.tree


@pytest.mark.parametrize("seed", range(3))
def test_a_checkout_from_the_head_touches_only_what_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Checkouts between random versions, in the dataset's directory, from a head the stat
    cache describes: what the tree diff plans is what comparing whole manifests plans
    (same report), the directory ends up holding exactly the version, and nothing reads
    a whole manifest."""
    monkeypatch.setattr(tree, "SHARD_ENTRIES", 4)
    rng = random.Random(seed)
    h = _history(tmp_path, rng, 4)
    for _step in range(6):
        _check_out_both_ways(h, rng.choice(h.made), monkeypatch)


@pytest.mark.parametrize("seed", range(3))
def test_a_forced_checkout_from_the_head_discards_what_the_directory_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """`checkout --force` in the dataset's directory, over random edits there (files
    changed, added, deleted, a file made a directory, links): planned by the tree diff
    (no whole manifest read), it does what comparing whole manifests does (same report),
    and the directory holds exactly the version."""
    monkeypatch.setattr(tree, "SHARD_ENTRIES", 4)
    rng = random.Random(100 + seed)
    h = _history(tmp_path, rng, 3)
    for step in range(4):
        state = rng.getstate()
        _edit(h.ws, rng, 10 + step)
        mirror = random.Random()
        mirror.setstate(state)
        _edit(h.twin, mirror, 10 + step)
        assert read_tree(h.ws) == read_tree(h.twin)
        _check_out_both_ways(h, rng.choice(h.made), monkeypatch, force=True)


@pytest.mark.parametrize("seed", range(3))
def test_a_checkout_over_any_directory_compares_it_a_chunk_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Checkouts the head cannot plan (`checkout._Placement`), judged and placed 3 paths
    at a time from walks of 2 files: into a `--to` directory holding another version
    and random edits, and of one path in the dataset's directory. Without --force a
    change there is refused and nothing is touched; with it the directory (or the path)
    holds exactly the version, whatever stood there, and the rest is left as it was. No
    whole manifest is read."""
    from dsv import checkout as checkout_module
    from dsv.errors import DirtyWorktree
    monkeypatch.setattr(tree, "SHARD_ENTRIES", 4)
    rng = random.Random(200 + seed)
    h = _history(tmp_path, rng, 4)
    monkeypatch.setattr(checkout_module, "FRESH_CHUNK", 3)
    monkeypatch.setattr(worktree, "RUN_FILES", 2)

    monkeypatch.setattr(h.store.core, "manifest", _no_manifest)
    other = tmp_path / "other"
    for step in range(4):
        source, target = rng.sample(h.made, 2)
        h.store.checkout(f"raw:{source.id}", to=other, force=True)
        assert read_tree(other) == h.contents[source.id]
        _edit(other, rng, 20 + step)
        (other / f"junk{step}").write_bytes(b"mine")
        before = read_tree(other)
        with pytest.raises(DirtyWorktree, match="uncommitted change"):
            h.store.checkout(f"raw:{target.id}", to=other)
        assert read_tree(other) == before
        report = h.store.checkout(f"raw:{target.id}", to=other, force=True)
        assert read_tree(other) == h.contents[target.id]
        assert report.written + report.unchanged == target.files

        there = read_tree(h.ws)
        picked = rng.choice(sorted({p.split("/")[0] for p in h.contents[target.id]}))
        h.store.checkout(f"raw:{target.id}", paths=[picked], force=True, cwd=h.ws)
        expected = {p: c for p, c in there.items() if p != picked and
                    not p.startswith(picked + "/")}
        expected.update((p, c) for p, c in h.contents[target.id].items()
                        if p == picked or p.startswith(picked + "/"))
        assert read_tree(h.ws) == expected


@pytest.mark.parametrize("seed", range(3))
def test_a_diff_of_the_head_and_its_directory_reads_what_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """`dsv diff` with no ref (the head against its directory) and `dsv diff REF` (an
    older version against it, compared 3 paths at a time from walks of 2 files), over
    random edits, with and without paths: what comparing the version's whole manifest
    with a scan of the whole directory gives (added, modified, deleted, their bytes and
    sizes), without reading a whole manifest."""
    monkeypatch.setattr(tree, "SHARD_ENTRIES", 4)
    rng = random.Random(200 + seed)
    ws = tmp_path / "ws"
    write_tree(ws, {**{f"flat/f{i:02d}": b"%d" % i for i in range(30)},
                    "a/b/c": b"c", "a/x": b"x", "top": b"t"})
    _age(ws)
    store = dsv_api.init(ws, name="raw")
    first = store.commit("v0")
    store.status()
    for round_no in range(3):
        _edit(ws, rng, round_no)
        head = store.core.head(store.dataset("raw"))
        files, _ = worktree.scan(ws, store.core.excluded(store.dataset("raw")),
                                 ignore_files=True)
        there = worktree.snapshot(ws, files, {}, None).manifest
        for ref, version in ((None, head), (f"raw:{first.id}", first)):
            whole = worktree.compare(store.core.manifest(version), there)
            assert ref is not None or not whole.clean
            for paths in (None, ["flat"], ["a", "new"], ["nothing-here"]):
                want = whole
                if paths:
                    kept = {p for p in whole.sizes if any(p == q or p.startswith(q + "/")
                                                          for q in paths)}
                    want = worktree.compare(
                        {p: e for p, e in store.core.manifest(version).items() if p in kept},
                        {p: e for p, e in there.items() if p in kept})

                with monkeypatch.context() as m:
                    _blind_and_chunked(m, store)
                    got = store.diff(ref, paths=paths, cwd=ws)
                assert (got.added, got.modified, got.deleted) == \
                    (want.added, want.modified, want.deleted), (ref, paths)
                assert (got.added_bytes, got.modified_bytes, got.deleted_bytes,
                        got.sizes) == (want.added_bytes, want.modified_bytes,
                                       want.deleted_bytes, want.sizes)
        store.commit(f"v{round_no + 1}")


def _forget_cache(store: dsv_api.Store) -> None:
    """Make the stat cache describe no version (as a killed checkout leaves it)."""
    with store.core.index.transaction():
        store.core.index.update_dataset(store.dataset("raw").id, cache_tree=None)
    assert store.dataset("raw").cache_tree is None


@pytest.mark.parametrize("seed", range(2))
def test_a_status_the_cache_cannot_vouch_for_compares_a_chunk_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """`status` with no cache that describes the head (as after a killed checkout): the
    walk and the head's files merged 3 paths at a time, over random edits, give what
    comparing whole manifests gives, without reading one; a clean directory then gets a
    cache that describes the head, and the next status hashes nothing."""
    monkeypatch.setattr(tree, "SHARD_ENTRIES", 4)
    rng = random.Random(300 + seed)
    h = _history(tmp_path, rng, 3)
    ws, store = h.ws, h.store
    for step in range(3):
        _edit(ws, rng, 30 + step)
        store.checkout(f"raw:{h.made[0].id}", paths=["top"], force=True, cwd=ws)
        _forget_cache(store)
        ds = store.dataset("raw")
        head = store.core.head(ds)
        files, _ = worktree.scan(ws, store.core.excluded(ds), ignore_files=True)
        want = worktree.compare(store.core.manifest(head),
                                worktree.snapshot(ws, files, {}, None).manifest)

        with monkeypatch.context() as m:
            _blind_and_chunked(m, store)
            m.setattr(store.core.index, "clean_scan", lambda *_a: (set(), -1))
            got = store.status().changes
        assert (got.added, got.modified, got.deleted, got.sizes) == \
            (want.added, want.modified, want.deleted, want.sizes)
        assert store.dataset("raw").cache_tree is None or got.clean
        store.commit(f"s{step}")
    store.checkout(f"raw:{h.made[0].id}", paths=["top"], force=True, cwd=ws)
    _forget_cache(store)
    time.sleep(0.1)   # (nothing racily clean: each file hashed gets a row that vouches)
    with monkeypatch.context() as m:
        m.setattr(store.core.index, "clean_scan", lambda *_a: (set(), -1))
        assert store.status().changes.clean
    head = store.core.head(store.dataset("raw"))
    assert store.dataset("raw").cache_tree == head.tree
    hashed = []
    snapshot = worktree.snapshot

    def counting(*args: Any, **kwargs: Any) -> worktree.Snapshot:
        snap = snapshot(*args, **kwargs)
        hashed.append(snap.hashed_files)
        return snap
    monkeypatch.setattr(worktree, "snapshot", counting)
    assert store.status().changes.clean and sum(hashed) == 0


def test_a_checkout_from_the_head_refuses_to_discard_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dsv.errors import DirtyWorktree
    ws = tmp_path / "ws"
    write_tree(ws, {"a": b"1", "b": b"2", "d/c": b"3"})
    _age(ws)
    store = dsv_api.init(ws, name="raw")
    one = store.commit("one")
    (ws / "a").write_bytes(b"changed")
    _age(ws)
    two = store.commit("two")
    for edit, name in ((lambda: (ws / "a").write_bytes(b"mine"), "a"),     # changed on both
                       (lambda: (ws / "b").write_bytes(b"mine"), "b"),     # only here
                       (lambda: (ws / "new").write_bytes(b"mine"), "new")):  # untracked
        edit()
        _age(ws)
        with pytest.raises(DirtyWorktree, match=f"1 uncommitted change in .*: {name}$"):
            store.checkout(f"raw:{one.id}")
        assert store.dataset("raw").head == two.id
        store.checkout(f"raw:{two.id}", force=True)
        assert read_tree(ws) == {"a": b"changed", "b": b"2", "d/c": b"3"}
    # A file deleted here discards nothing: the checkout brings it back.
    (ws / "d/c").unlink()
    _age(ws)
    report = store.checkout(f"raw:{one.id}")
    assert read_tree(ws) == {"a": b"1", "b": b"2", "d/c": b"3"}
    assert (report.written, report.removed, report.unchanged) == (2, 0, 1)
    # A file deleted here that the version deletes too leaves no row behind.
    (ws / "b").unlink()
    _age(ws)
    three = store.commit("three", force=True)   # one without b
    store.checkout(f"raw:{one.id}")
    (ws / "b").unlink()
    _age(ws)
    store.checkout(f"raw:{three.id}")
    assert read_tree(ws) == {"a": b"1", "d/c": b"3"} and _cache_paths(ws) == ["a", "d/c"]


def test_a_diff_of_two_versions_reads_only_what_differs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tree, "SHARD_ENTRIES", 4)
    rng = random.Random(11)
    ws = tmp_path / "ws"
    write_tree(ws, {**{f"flat/f{i:02d}": b"%d" % i for i in range(30)}, "a/b/c": b"c"})
    _age(ws)
    store = dsv_api.init(ws, name="raw")
    made = [store.commit("v0")]
    for round_no in range(1, 4):
        _edit(ws, rng, round_no)
        made.append(store.commit(f"v{round_no}"))
    manifests = {v.id: store.manifest(v) for v in made}

    monkeypatch.setattr(store.core, "manifest", _no_manifest)
    for a in made:
        for b in made:
            got = store.diff(f"raw:{a.id}", f"raw:{b.id}")
            want = worktree.compare(manifests[a.id], manifests[b.id])
            assert (got.added, got.modified, got.deleted, got.sizes) == \
                (want.added, want.modified, want.deleted, want.sizes)
            assert (a.id == b.id) == got.clean
    first, last = made[0], made[-1]
    only_flat = store.diff(f"raw:{first.id}", f"raw:{last.id}", paths=["flat"], cwd=tmp_path)
    assert only_flat.added + only_flat.modified + only_flat.deleted and all(
        p.startswith("flat/") for p in only_flat.added + only_flat.modified + only_flat.deleted)


def test_a_push_lets_each_finished_upload_go_before_the_phase_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fast remote finishes uploads before the in-flight window fills; each one is
    staged and let go as the next pack is made, not all of them when the phase ends
    (at 1M files that held every uploaded pack's entries at once)."""
    from dsv.sync import push, remote
    monkeypatch.setattr(push, "UPLOAD_PACK_SIZE", 1024)
    ws = tmp_path / "ws"
    write_tree(ws, {f"d{i % 3}/f{i:03d}": os.urandom(200) for i in range(120)})
    store = dsv_api.init(ws, name="raw")
    store.commit("v0")
    store.add_remote("origin", str(tmp_path / "remote"))
    batches: list[int] = []
    staged = remote.stage_sent

    def spy(core: object, rem: object, sent: list[remote.Sent]) -> None:
        batches.append(sum(s.count for s in sent))
        staged(core, rem, sent)  # type: ignore[arg-type]
    monkeypatch.setattr(push, "stage_sent", spy)
    # Each upload finishes before the next pack is made (as on a fast remote).
    uploaded = threading.Semaphore(0)
    upload, read_batches = push._upload_pack, push._read_batches

    def upload_then_say(*args: object) -> remote.Sent:
        try:
            return upload(*args)  # type: ignore[arg-type]
        finally:
            uploaded.release()

    def batches_one_by_one(*args: object) -> Iterator[object]:
        for batch in read_batches(*args):  # type: ignore[arg-type]
            yield batch
            assert uploaded.acquire(timeout=30)
            time.sleep(0.02)  # (the future is marked done just after the call returns)
    monkeypatch.setattr(push, "_upload_pack", upload_then_say)
    monkeypatch.setattr(push, "_read_batches", batches_one_by_one)
    store.push("origin")
    assert sum(batches) == 120 + 4 + 1  # blobs, trees (root and 3 directories), the record
    assert len(batches) >= 20 and max(batches) <= 5 * push.IN_FLIGHT, batches
    clone = tmp_path / "clone"
    dsv_api.Store.clone(str(tmp_path / "remote"), clone)
    assert read_tree(clone) == read_tree(ws)


def test_files_get_walks_the_trees_a_chunk_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`files get` of a whole version and of paths (one under another named too, a file,
    a sharded directory) places what comparing with the manifest would, a few files at
    a time, without reading a whole manifest; a path the version lacks is refused."""
    from dsv import checkout as checkout_module
    from dsv.errors import InvalidInput

    monkeypatch.setattr(tree, "SHARD_ENTRIES", 4)
    monkeypatch.setattr(checkout_module, "FRESH_CHUNK", 3)
    ws = tmp_path / "ws"
    files = {**{f"flat/f{i:02d}": b"%d" % i for i in range(30)},
             "a/b/c": b"c", "a/x": b"x", "top": b"t"}
    write_tree(ws, files)
    os.symlink("x", ws / "a" / "to-x")
    store = dsv_api.init(ws, name="raw")
    store.commit("v")
    want = read_tree(ws)
    placed: list[int] = []
    place = worktree.Materializer.place

    def counting(self: worktree.Materializer, items: list, *args: object) -> object:
        placed.append(len(items))
        return place(self, items, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(store.core, "manifest", _no_manifest)
    monkeypatch.setattr(worktree.Materializer, "place", counting)
    for n, (paths, kept) in enumerate([
            (None, want),
            (["a", "a/b", "top"], {p: d for p, d in want.items()
                                   if p.startswith("a/") or p == "top"}),
            (["flat"], {p: d for p, d in want.items() if p.startswith("flat/")})]):
        out = tmp_path / f"out{n}"
        placed.clear()
        with_link = paths is None or "a" in paths     # (read_tree leaves links out)
        count = len(kept) + with_link
        assert store.get_files("raw:latest", out, paths, cwd=tmp_path) == count
        assert read_tree(out) == kept
        assert (out / "a" / "to-x").is_symlink() == with_link
        assert max(placed) <= 3 and sum(placed) == count
    with pytest.raises(InvalidInput, match="nope is not in this version"):
        store.get_files("raw:latest", tmp_path / "out9", ["nope"], cwd=tmp_path)


def test_files_get_of_a_fetched_version_opens_the_remote_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`files get` of a version only fetched downloads its blobs a chunk at a time through
    one source: the remote is refreshed once, not once a chunk."""
    from dsv import checkout as checkout_module
    from dsv.sync import remote as remote_module

    ws = tmp_path / "ws"
    write_tree(ws, {f"d{i % 4}/f{i}": b"v0 %d" % i for i in range(40)})
    store = dsv_api.init(ws, name="raw")
    store.commit("v0")
    store.add_remote("origin", str(tmp_path / "remote"))
    store.push("origin")
    clone = dsv_api.Store.clone(str(tmp_path / "remote"), tmp_path / "clone")[0]
    write_tree(ws, {f"d{i % 4}/f{i}": b"v1 %d" % i for i in range(40)})
    store.commit("v1")
    store.push("origin")
    clone.fetch("origin")
    monkeypatch.setattr(checkout_module, "FRESH_CHUNK", 5)
    refreshes: list[object] = []
    refresh = remote_module.Remote.refresh

    def counting(self: remote_module.Remote, *args: object) -> None:
        refreshes.append(args)
        refresh(self, *args)  # type: ignore[arg-type]
    monkeypatch.setattr(remote_module.Remote, "refresh", counting)
    assert clone.get_files("raw:origin/latest", tmp_path / "out") == 40
    assert read_tree(tmp_path / "out") == {f"d{i % 4}/f{i}": b"v1 %d" % i for i in range(40)}
    assert len(refreshes) == 1


def _model_put(manifest: dict[str, Entry], path: str, entry: Entry) -> None:
    """`files put` of one path on a whole manifest, as it was done before drafts were
    edited on their trees: a file in the way of a directory goes, and a directory in the
    way of a file."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        manifest.pop("/".join(parts[:i]), None)
    for existing in [p for p in manifest if p.startswith(path + "/")]:
        del manifest[existing]
    manifest[path] = entry


@pytest.mark.parametrize("seed", range(3))
def test_a_draft_edited_on_its_tree_is_the_draft_a_whole_manifest_makes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Random `files put` (several sources at once, files put where directories are and
    back, into sharded directories) and `files delete` on a draft, applied to its tree
    without reading a whole manifest: after each, the draft's tree id, file count and
    size are those of the edited whole manifest built afresh."""
    monkeypatch.setattr(tree, "SHARD_ENTRIES", 4)
    rng = random.Random(400 + seed)
    ws = tmp_path / "ws"
    write_tree(ws, {**{f"flat/f{i:02d}": b"%d" % i for i in range(30)},
                    "a/b/c": b"c", "a/x": b"x", "top": b"t"})
    store = dsv_api.init(ws, name="raw")
    store.commit("v0")
    draft = store.create_version("raw", "edits")
    model = dict(store.core.manifest(store.resolve(f"raw:{draft.id}")))
    names = ["a", "a/b", "a/b/c", "flat", "flat/f03", "top", "new", "new/deep", "z"]

    for step in range(12):
        if rng.random() < 0.6 or not model:
            sources = []
            for k in range(rng.randrange(1, 3)):
                src = tmp_path / f"src{step}_{k}"
                if rng.random() < 0.5:   # a directory of files (maybe one named as a dir)
                    write_tree(src, {f"{rng.choice(names)}/n{step}{k}{i}": b"%d %d" % (step, i)
                                     for i in range(rng.randrange(1, 8))})
                    if rng.random() < 0.5:
                        write_tree(src, {rng.choice(names): b"file %d" % step})
                else:
                    src = src / rng.choice(["x", "a", "top", "flat"])
                    write_tree(src.parent, {src.name: b"one %d" % step})
                sources.append(src)
            target = rng.choice(["", "", "flat", "a", "a/b/c", "deep/er"])
            with monkeypatch.context() as m:
                m.setattr(store.core, "manifest", _no_manifest)
                made = store.put_files(f"raw:{draft.id}", sources, target_path=target or None)
            for src in sources:
                base = src if src.is_dir() else src.parent
                found = sorted(read_tree(src).items()) if src.is_dir() else \
                    [(src.name, src.read_bytes())]
                for rel, data in found:
                    path = f"{target}/{rel}" if target else rel
                    _model_put(model, path, Entry(FILE, 0o644, len(data),
                                                  blake3.blake3(data).hexdigest()))
                assert base.exists()
        else:
            gone = rng.sample(sorted({p.rsplit("/", rng.randrange(1, 3))[0] if "/" in p else p
                                      for p in model}), 1)
            with monkeypatch.context() as m:
                m.setattr(store.core, "manifest", _no_manifest)
                made = store.delete_files(f"raw:{draft.id}", gone)
            model = {p: e for p, e in model.items()
                     if not any(p == g or p.startswith(g + "/") for g in gone)}
        built: dict[str, bytes] = {}
        root, size = tree.build_tree(model, lambda oid, data: built.setdefault(oid, data))
        assert (made.tree, made.files, made.size) == (root, len(model), size), step
    assert store.verify().ok


def test_a_draft_counts_its_files_from_its_tree_and_delete_all_needs_something_left(
        tmp_path: Path) -> None:
    """A draft's file count after an edit comes from its tree, not from the index's record
    (which another hand may have touched); deleting "" (everything) needs something left
    to delete."""
    from dsv.errors import InvalidInput
    ws = tmp_path / "ws"
    write_tree(ws, {"a/x": b"x", "a/y": b"y", "b": b"b"})
    store = dsv_api.init(ws, name="raw")
    store.commit("v0")
    draft = store.create_version("raw", "edits")
    store.core.index.update_version(draft.id, files=0)   # (a damaged record)
    (tmp_path / "new.txt").write_bytes(b"n")
    assert store.put_files(f"raw:{draft.id}", [tmp_path / "new.txt"]).files == 4
    with pytest.raises(InvalidInput, match="not in draft"):
        store.delete_files(f"raw:{draft.id}", ["a", "b", "new.txt", ""])
    assert store.resolve(f"raw:{draft.id}").files == 4   # (nothing was deleted)
    assert store.delete_files(f"raw:{draft.id}", [""]).files == 0


def test_a_path_held_only_where_a_nested_store_now_stands_is_refused(tmp_path: Path) -> None:
    """`checkout REF PATH` of a file of the version where the directory now holds a
    nested store below that path is refused (the store's directory is left alone);
    a directory of the version that holds a placeable file beside a nested store is not."""
    from dsv.errors import InvalidInput
    ws = tmp_path / "ws"
    write_tree(ws, {"a": b"file a", "b/x": b"x"})
    store = dsv_api.init(ws, name="raw")
    v1 = store.commit("v1")
    (ws / "a").unlink()
    dsv_api.init(ws / "a" / "n", name="inner").close()
    dsv_api.init(ws / "b" / "n", name="inner2").close()
    (ws / "b" / "x").write_bytes(b"changed")
    with pytest.raises(InvalidInput, match="not in this version"):
        store.checkout(f"raw:{v1.id}", paths=["a"], cwd=ws)
    assert (ws / "a" / "n" / ".dsv").is_dir()
    report = store.checkout(f"raw:{v1.id}", paths=["b"], force=True, cwd=ws)
    assert (ws / "b" / "x").read_bytes() == b"x" and report.written == 1
    assert (ws / "b" / "n" / ".dsv").is_dir()


@pytest.mark.parametrize("meddle", [False, True])
def test_a_status_marks_no_cache_when_rows_were_written_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, meddle: bool) -> None:
    """A status with no usable cache that finds the directory clean marks the cache as
    describing the head, but not when someone else wrote cache rows while it compared
    (here: a row naming another object for a file it had already found clean, as a
    checkout of some paths that leaves the head alone would write)."""
    from dsv import checkout as checkout_module
    ws = tmp_path / "ws"
    write_tree(ws, {f"f{i:02d}": b"%d" % i for i in range(12)})
    _age(ws)
    store = dsv_api.init(ws, name="raw")
    first = store.commit("v0")
    store.checkout(f"raw:{first.id}", paths=["f00"], force=True, cwd=ws)
    _forget_cache(store)
    ds = store.dataset("raw")
    monkeypatch.setattr(checkout_module, "FRESH_CHUNK", 3)
    monkeypatch.setattr(store.core.index, "clean_scan", lambda *_a: (set(), -1))
    snapshot = worktree.snapshot
    calls = []

    def meddling(*args: Any, **kwargs: Any) -> worktree.Snapshot:
        calls.append(1)
        if meddle and len(calls) == 2:
            st = os.lstat(ws / "f00")
            with store.core.index.transaction():
                store.core.index.put_stat_rows(ds.id, [("f00", (
                    st.st_size, st.st_mtime_ns, st.st_ino, 0o644, "0" * 64, time.time_ns()))])
        return snapshot(*args, **kwargs)
    monkeypatch.setattr(worktree, "snapshot", meddling)
    time.sleep(0.1)   # (nothing racily clean)
    assert store.status().changes.clean and len(calls) == 4
    assert store.dataset("raw").cache_tree == (None if meddle else first.tree)


def test_a_checkout_of_some_paths_walks_only_them(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`checkout REF PATH…` in the dataset's directory walks only the paths named (and
    what stands where they need a directory: a file there is replaced, with --force),
    and reads only their subtrees of the version: the rest of the directory, edits
    included, is never looked at."""
    monkeypatch.setattr(tree, "SHARD_ENTRIES", 4)
    ws = tmp_path / "ws"
    write_tree(ws, {**{f"big/f{i:02d}": b"%d" % i for i in range(20)},
                    "a/b/c": b"c", "a/b/d": b"d", "top": b"t", "c/x": b"x"})
    _age(ws)
    store = dsv_api.init(ws, name="raw")
    v1 = store.commit("v1")
    (ws / "a" / "b" / "c").write_bytes(b"edited")
    (ws / "big" / "f03").write_bytes(b"edited too")
    store.commit("v2")
    import shutil
    shutil.rmtree(ws / "a")
    (ws / "a").write_bytes(b"a file where a directory was")
    (ws / "big" / "f05").write_bytes(b"an uncommitted edit")
    walked: list[str] = []
    walk = worktree.walk

    def spy(*args: Any, **kwargs: Any) -> Iterator[worktree.Run]:
        walked.append(kwargs.get("start", ""))
        return walk(*args, **kwargs)
    monkeypatch.setattr(worktree, "walk", spy)

    def no_whole_walk(*_a: object, **_k: object) -> object:
        raise AssertionError("the whole version was walked")
    monkeypatch.setattr(tree, "iter_files", no_whole_walk)
    with pytest.raises(DirtyWorktree):   # ("a" is not as the head left it)
        store.checkout(f"raw:{v1.id}", paths=["a/b", "top", "c"], cwd=ws)
    report = store.checkout(f"raw:{v1.id}", paths=["a/b", "top", "c"], force=True, cwd=ws)
    assert read_tree(ws / "a") == {"b/c": b"c", "b/d": b"d"}
    assert (report.written, report.removed, report.unchanged) == (2, 1, 2)
    assert (ws / "big" / "f05").read_bytes() == b"an uncommitted edit"
    assert walked and set(walked) == {"c"}, walked


@pytest.mark.parametrize("seed", range(3))
def test_a_checkout_of_some_paths_keeps_a_cache_that_describes_the_head(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """After `checkout OLD PATH…` (random paths of random versions, with --force over
    random edits), the stat cache still describes the head: status takes its fast path
    (never the whole comparison) and reports exactly what comparing whole manifests
    reports, and a commit then records exactly the directory."""
    from dsv import checkout as checkout_module
    monkeypatch.setattr(tree, "SHARD_ENTRIES", 4)
    rng = random.Random(500 + seed)
    h = _history(tmp_path, rng, 4)
    ws, store = h.ws, h.store
    store.status()

    def whole() -> tuple[Any, dict[str, Entry]]:
        ds = store.dataset("raw")
        files, _ = worktree.scan(ws, store.core.excluded(ds), ignore_files=True)
        there = worktree.snapshot(ws, files, {}, None).manifest
        return worktree.compare(store.core.manifest(store.core.head(ds)), there), there

    def no_fallback(*_a: object, **_k: object) -> object:
        raise AssertionError("status compared the whole directory")
    for step in range(5):
        target = rng.choice(h.made)
        tops = sorted({p.split("/")[0] for p in h.contents[target.id]})
        picked = rng.sample(tops, min(len(tops), rng.randrange(1, 3)))
        if rng.random() < 0.5:
            _edit(ws, rng, 50 + step)
            # (_edit dates every file alike: a same-size rewrite that got a freed inode
            # back would then look unchanged to any stat cache; real edits move mtime)
            for i, (dirpath, _dirs, names) in enumerate(os.walk(ws)):
                for j, name in enumerate(names):
                    if ".dsv" not in dirpath:
                        when = (1_600_000_000 + 1000 * step + i) * 10**9 + j
                        os.utime(os.path.join(dirpath, name), ns=(when, when),
                                 follow_symlinks=False)
        store.checkout(f"raw:{target.id}", paths=picked, force=True, cwd=ws)
        head = store.core.head(store.dataset("raw"))
        assert store.dataset("raw").cache_tree == head.tree, step
        want, there = whole()
        with monkeypatch.context() as m:
            m.setattr(checkout_module, "_compare_directory", no_fallback)
            got = store.status().changes
        assert (got.added, got.modified, got.deleted) == \
            (want.added, want.modified, want.deleted), (step, picked)
        if not got.clean and step % 2:
            made = store.commit(f"s{step}")
            assert {p: (e.kind, e.oid) for p, e in store.core.manifest(made).items()} == \
                {p: (e.kind, e.oid) for p, e in there.items()}
            assert store.status().changes.clean
        elif not got.clean:   # (or back to the head: refused, then from the head, forced)
            with pytest.raises(DirtyWorktree):
                store.checkout(f"raw:{head.id}", cwd=ws)
            report = store.checkout(f"raw:{head.id}", force=True, cwd=ws)
            assert report.written + report.removed > 0
            assert {p: (e.kind, e.oid) for p, e in whole()[1].items()} == \
                {p: (e.kind, e.oid) for p, e in store.core.manifest(head).items()}
            assert store.status().changes.clean


def test_a_link_put_back_where_the_head_has_a_file_of_its_target_is_seen(
        tmp_path: Path) -> None:
    """A partial checkout that puts a symlink where the head has an executable file
    holding the link's target text (the same blob id, the same mode class) leaves no
    row that vouches for it: status reports the path modified."""
    ws = tmp_path / "ws"
    write_tree(ws, {"keep": b"k"})
    os.symlink("tool.sh", ws / "run")
    store = dsv_api.init(ws, name="raw")
    v1 = store.commit("link")
    (ws / "run").unlink()
    (ws / "run").write_bytes(b"tool.sh")
    os.chmod(ws / "run", 0o755)
    store.commit("file")
    time.sleep(0.1)
    assert store.status().changes.clean
    store.checkout(f"raw:{v1.id}", paths=["run"], force=True, cwd=ws)
    assert (ws / "run").is_symlink()
    time.sleep(0.1)
    assert store.status().changes.modified == ["run"]


@pytest.mark.parametrize("meddle", [False, True])
def test_a_status_stores_no_digest_of_a_walk_that_rows_were_made_during(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, meddle: bool) -> None:
    """A clean status stores its walk's run digests for the head (the next one then reads
    no rows), but not when a cache row was made while it walked: a checkout of some
    paths meanwhile leaves the head and `cache_tree` as they were, and its rows may have
    vouched for what the walk saw."""
    ws = tmp_path / "ws"
    write_tree(ws, {f"d{i}/f": b"%d" % i for i in range(6)})
    _age(ws)
    store = dsv_api.init(ws, name="raw")
    store.commit("v1")
    time.sleep(0.1)
    ds = store.dataset("raw")
    monkeypatch.setattr(store.core.index, "clean_scan", lambda *_a: (set(), -1))
    stored: list[object] = []
    monkeypatch.setattr(store.core.index, "put_clean_scan", lambda *a: stored.append(a))
    walk = worktree.walk

    def meddling(*args: Any, **kwargs: Any) -> Iterator[worktree.Run]:
        for i, run in enumerate(walk(*args, **kwargs)):
            if meddle and i == 0:
                row = store.core.index.stat_rows_at(ds.id, ["d5/f"])["d5/f"]
                with store.core.index.transaction():
                    store.core.index.put_stat_rows(ds.id, [("d5/f", (*row[:5],
                                                                     time.time_ns()))])
            yield run
    monkeypatch.setattr(worktree, "RUN_FILES", 1)
    monkeypatch.setattr(worktree, "walk", meddling)
    assert store.status().changes.clean
    assert len(stored) == (0 if meddle else 1)


def test_a_files_listing_streams_in_path_order(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`files` (store and remote reader) gives a version's rows in path order, sharded
    directories and names that sort differently as names and as paths included, as a
    stream: the first row comes after a few trees are read, never a whole manifest; a
    path the version lacks is refused at the call, before any row."""
    from dsv.errors import InvalidInput

    monkeypatch.setattr(tree, "SHARD_ENTRIES", 4)
    ws = tmp_path / "ws"
    files = _tricky_tree(ws, 7, 150)
    write_tree(ws, {f"flat/f{i:02d}": b"%d" % i for i in range(40)})
    os.symlink("flat/f01", ws / "zlink")
    store = dsv_api.init(ws, name="raw")
    v = store.commit("v")
    every = sorted([*files, *(f"flat/f{i:02d}" for i in range(40)), "zlink"])
    monkeypatch.setattr(store.core, "manifest", _no_manifest)
    reads: list[str] = []
    read_tree = store.core.read_tree

    def counting(oid: str) -> bytes:
        reads.append(oid)
        return read_tree(oid)

    monkeypatch.setattr(store.core, "read_tree", counting)
    rows = store.files("raw:latest", recursive=True)
    assert not isinstance(rows, list)
    first = next(rows)
    trees = len({oid for oid, _node in tree.distinct_trees(v.tree, read_tree)})
    assert first.path == every[0] and len(reads) < trees / 3, (len(reads), trees)
    listed = [first, *rows]
    assert [r.path for r in listed] == every
    assert {r.path: r.kind for r in listed}["zlink"] == "link"
    assert [r.path for r in store.files("raw:latest", "flat", recursive=True)] == \
        [f"flat/f{i:02d}" for i in range(40)]
    assert [(r.path, r.size) for r in store.files("raw:latest", "flat/f07")] == [("flat/f07", 1)]
    assert sorted(r.path for r in store.files("raw:latest", "flat")) == \
        [f"flat/f{i:02d}" for i in range(40)]
    for recursive in (False, True):
        with pytest.raises(InvalidInput, match="nope is not in version"):
            store.files("raw:latest", "flat/nope", recursive=recursive)

    store.add_remote("origin", str(tmp_path / "remote"))
    store.push()
    reader = dsv_api.open_remote(str(tmp_path / "remote"))
    version = reader.resolve("raw:latest")
    remote_rows = reader.files(version, recursive=True)
    assert not isinstance(remote_rows, list)
    assert [(r.path, r.kind, r.size, r.oid) for r in remote_rows] == \
        [(r.path, r.kind, r.size, r.oid) for r in listed]
    assert [r.path for r in reader.files(version, "flat", recursive=True)] == \
        [f"flat/f{i:02d}" for i in range(40)]
    for recursive in (False, True):
        with pytest.raises(InvalidInput, match="nope is not in version"):
            reader.files(version, "flat/nope", recursive=recursive)
