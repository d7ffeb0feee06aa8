"""Incremental trees (issue 11): `tree.update_tree` applies path changes to a stored tree,
reading and writing only the trees and shards on the changed paths, and must give the
very objects `tree.build_tree` writes for the changed manifest from scratch (same root
id, same bytes), including when a directory or a shard crosses SHARD_ENTRIES either way,
directories appear and disappear, and a file becomes a directory or back."""

from __future__ import annotations

import random

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsv import tree
from dsv.errors import InvalidInput, UnsafePath
from dsv.tree import FILE, LINK, Entry

Changes = dict[str, Entry | None]


class MemStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.written: list[str] = []

    def put(self, oid: str, data: bytes) -> None:
        assert blake3.blake3(data).hexdigest() == oid
        assert self.objects.setdefault(oid, data) == data
        self.written.append(oid)

    def get(self, oid: str) -> bytes:
        return self.objects[oid]


def _entry(rng: random.Random) -> Entry:
    kind = LINK if rng.random() < 0.05 else FILE
    mode = 0o777 if kind == LINK else rng.choice((0o644, 0o755))
    size = rng.randrange(0, 5000)
    return Entry(kind, mode, size, blake3.blake3(b"%d" % rng.getrandbits(64)).hexdigest())


def _applied(manifest: dict[str, Entry], changes: Changes) -> dict[str, Entry]:
    out = dict(manifest)
    for path, entry in changes.items():
        if entry is None:
            out.pop(path, None)
        else:
            out[path] = entry
    return out


def _reachable(root: str, get: object) -> dict[str, bytes]:
    read = get  # type: ignore[assignment]
    return {oid: read(oid) for oid, _rows in tree.distinct_trees(root, read)}  # type: ignore[operator]


def _check(manifest: dict[str, Entry], changes: Changes) -> tuple[str, int]:
    """Build `manifest`, update it with `changes`, and compare with a build from scratch:
    same root, same size, and the update wrote only objects that build writes."""
    store = MemStore()
    root, size = tree.build_tree(manifest, store.put)
    store.written.clear()
    new_root, new_size = tree.update_tree(root, size, changes, store.get, store.put)
    fresh = MemStore()
    expected = _applied(manifest, changes)
    want_root, want_size = tree.build_tree(expected, fresh.put)
    assert (new_root, new_size) == (want_root, want_size)
    assert set(store.written) <= set(fresh.objects)
    assert _reachable(new_root, store.get) == _reachable(want_root, fresh.get)
    assert tree.flatten(new_root, store.get, trusted=False) == expected
    return new_root, len(store.written)


def _random_manifest(rng: random.Random, dirs: list[str], n: int) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for _ in range(n):
        directory = rng.choice(dirs)
        name = f"f{rng.randrange(10 ** 6)}.{rng.choice(('bin', 'csv', 'é', 'x y'))}"
        out[f"{directory}/{name}" if directory else name] = _entry(rng)
    return out


def _random_changes(rng: random.Random, manifest: dict[str, Entry], dirs: list[str]
                    ) -> Changes:
    changes: Changes = {}
    paths = sorted(manifest)
    for _ in range(rng.randrange(0, 40)):
        roll = rng.random()
        if roll < 0.3 and paths:  # modify (sometimes to an identical entry)
            path = rng.choice(paths)
            changes[path] = manifest[path] if rng.random() < 0.2 else _entry(rng)
        elif roll < 0.6 and paths:  # delete
            changes[rng.choice(paths)] = None
        elif roll < 0.65:  # delete what is not there: no change
            changes[f"nosuch/{rng.randrange(100)}"] = None
        elif roll < 0.7 and paths:  # a whole directory goes
            gone = rng.choice(dirs)
            for path in paths:
                if path.startswith(gone + "/") or not gone:
                    changes[path] = None
        else:  # insert, maybe into a new directory
            directory = rng.choice([*dirs, "new", "new/deeper/still"])
            name = f"g{rng.randrange(10 ** 6)}"
            changes[f"{directory}/{name}" if directory else name] = _entry(rng)
    return changes


@pytest.mark.parametrize("shard_entries", [2, 4, 16])
@pytest.mark.parametrize("seed", range(12))
def test_random_edits_match_a_build_from_scratch(monkeypatch: pytest.MonkeyPatch,
                                                 shard_entries: int, seed: int) -> None:
    # A small threshold makes every directory cross it often and shard several levels deep.
    monkeypatch.setattr(tree, "SHARD_ENTRIES", shard_entries)
    rng = random.Random(seed)
    dirs = ["", "a", "a/b", "a/b/c", "flat", "z"]
    manifest = _random_manifest(rng, dirs, rng.randrange(0, 30 * shard_entries))
    for _round in range(6):  # edits on top of edits
        changes = _random_changes(rng, manifest, dirs)
        _check(manifest, changes)
        manifest = _applied(manifest, changes)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_edit_matches_a_build_from_scratch(data: st.DataObject) -> None:
    names = st.sampled_from(["a", "b", "c", "d", "é", "x y", "0", "Z"])
    paths = st.lists(names, min_size=1, max_size=3).map("/".join)
    entries = st.builds(lambda size, b: Entry(FILE, 0o644, size,
                                              blake3.blake3(bytes([b])).hexdigest()),
                        st.integers(0, 9), st.integers(0, 3))
    base_paths = data.draw(st.lists(paths, max_size=12, unique=True))
    manifest = {p: data.draw(entries) for p in base_paths}
    # Leave out manifests that are not trees (a path that is both a file and a directory).
    if any(q.startswith(p + "/") for p in manifest for q in manifest):
        return
    changes = data.draw(st.dictionaries(paths, st.none() | entries, max_size=6))
    after = _applied(manifest, changes)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tree, "SHARD_ENTRIES", 2)
        if any(q.startswith(p + "/") for p in after for q in after):
            store = MemStore()
            root, size = tree.build_tree(manifest, store.put)
            with pytest.raises(InvalidInput, match="both a file and a directory"):
                tree.update_tree(root, size, changes, store.get, store.put)
            with pytest.raises(InvalidInput, match="both a file and a directory"):
                tree.build_tree(after, MemStore().put)
        else:
            _check(manifest, changes)


def _flat(n: int, directory: str = "flat") -> dict[str, Entry]:
    return {f"{directory}/f{i:06d}.bin": Entry(FILE, 0o644, i % 977 + 1,
                                               blake3.blake3(b"%d" % i).hexdigest())
            for i in range(n)}


def _names_in_one_shard(n: int, digit: str, directory: str = "flat") -> list[str]:
    out: list[str] = []
    i = 0
    while len(out) < n:
        name = f"s{i}"
        if tree.name_hash(name).startswith(digit):
            out.append(f"{directory}/{name}")
        i += 1
    return out


def test_a_directory_crosses_the_shard_threshold_both_ways() -> None:
    limit = tree.SHARD_ENTRIES
    at_limit = _flat(limit)
    one = Entry(FILE, 0o644, 1, "0" * 64)
    grown, _ = _check(at_limit, {"flat/zzz.bin": one})              # plain tree → sharded
    _check(_flat(limit + 1), {"flat/f000000.bin": None})            # sharded → plain tree
    _check(_flat(limit + 3), {f"flat/f{i:06d}.bin": None for i in range(3)})
    _check(_flat(limit + 3), {"flat/f000000.bin": None, "flat/new": one})  # stays sharded
    _check(_flat(limit + 2), {"flat/f000000.bin": None, "flat/f000001.bin": None,
                              "flat/f000002.bin": None, "flat/f000003.bin": None})
    assert grown


def test_a_shard_crosses_the_threshold_both_ways() -> None:
    limit = tree.SHARD_ENTRIES
    one = Entry(FILE, 0o644, 1, "0" * 64)
    # One leaf (digit "a") filled to the limit in a sharded directory, then one more: it
    # becomes a node of 16 leaves; and back.
    full = {p: one for p in _names_in_one_shard(limit, "a")}
    base = {**_flat(3 * limit), **full}
    extra = _names_in_one_shard(limit + 1, "a")[-1]
    _check(base, {extra: one})
    _check({**base, extra: one}, {extra: None})
    _check({**base, extra: one}, {p: None for p in list(full)[:40]})


def test_a_one_file_change_in_200k_entries_rewrites_a_few_objects() -> None:
    manifest = _flat(200_000)
    store = MemStore()
    root, size = tree.build_tree(manifest, store.put)
    store.written.clear()
    change = {"flat/f123456.bin": Entry(FILE, 0o644, 5, "1" * 64)}
    new_root, new_size = tree.update_tree(root, size, change, store.get, store.put)
    # One leaf, the shard nodes above it, the directory's row in the root tree.
    assert len(store.written) <= 5
    assert sum(len(store.objects[o]) for o in store.written) < 16 << 10
    assert new_size == size - manifest["flat/f123456.bin"].size + 5
    fresh = MemStore()
    assert tree.build_tree(_applied(manifest, change), fresh.put) == (new_root, new_size)


def test_directories_appear_and_disappear_and_files_become_directories() -> None:
    one = Entry(FILE, 0o644, 1, "0" * 64)
    base = {"a/b/c/d.txt": one, "a/x": one, "top": one, **_flat(600)}
    _check(base, {"a/b/c/d.txt": None})                        # a/b/c and a/b go
    _check(base, {"a/b/c/d.txt": None, "a/x": None})            # a goes too
    _check(base, {p: None for p in base})                       # everything: the empty tree
    _check({}, {"n/e/w.txt": one})                              # from the empty tree
    _check(base, {"top": None, "top/inner": one})               # a file becomes a directory
    _check(base, {"a/b/c/d.txt": None, "a/b": one})             # and back
    _check(base, {p: None for p in base if p.startswith("flat/")} | {"flat": one})
    _check(base, {"top": base["top"], "a/x": base["a/x"]})      # no change at all
    for bad in ({"top/inner": one}, {"a/x/y": one}, {"a": one}, {"flat/f000001.bin/z": one}):
        store = MemStore()
        root, size = tree.build_tree(base, store.put)
        with pytest.raises(InvalidInput, match="both a file and a directory"):
            tree.update_tree(root, size, bad, store.get, store.put)
        with pytest.raises(InvalidInput, match="both a file and a directory"):
            tree.build_tree(_applied(base, bad), MemStore().put)


def test_a_directory_written_before_sharding_is_sharded_once_it_changes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = _flat(2000)
    store = MemStore()
    monkeypatch.setattr(tree, "SHARD_ENTRIES", 1 << 30)
    root, size = tree.build_tree(manifest, store.put)   # one plain 2,000-entry tree
    monkeypatch.undo()
    change = {"flat/f000007.bin": Entry(FILE, 0o644, 3, "2" * 64)}
    new_root, new_size = tree.update_tree(root, size, change, store.get, store.put)
    assert (new_root, new_size) == tree.build_tree(_applied(manifest, change), MemStore().put)


# ---- commit and status through the stat cache -----------------------------------------

def _age(ws: object) -> None:
    """Make every file old, so that none is "racily clean" (all are vouched for)."""
    import os
    from pathlib import Path

    for path in Path(str(ws)).rglob("*"):
        if ".dsv" not in path.parts and not path.is_dir():
            os.utime(path, (1_600_000_000, 1_600_000_000), follow_symlinks=False)


def test_commit_and_status_apply_only_what_changed(tmp_path: object,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit whose stat cache describes the head applies the changed files to the
    head's tree (no manifest of every file, no build from scratch), and the version it
    makes is the one a build from scratch makes; status hashes and looks up only the
    changed files, and reports what the full comparison reports."""
    import os
    from pathlib import Path

    import dsv as dsv_api
    from conftest import write_tree
    from dsv import versions

    monkeypatch.setattr(tree, "SHARD_ENTRIES", 4)   # every directory here is sharded
    ws = Path(str(tmp_path)) / "ws"
    files = {f"flat/f{i:03d}.bin": b"%d" % i for i in range(40)}
    files.update({"a/b/c.txt": b"c", "a/x.txt": b"x", "top.txt": b"t", "gone/one": b"1"})
    write_tree(ws, files)
    os.symlink("top.txt", ws / "link")
    _age(ws)
    store = dsv_api.init(ws, name="raw")
    store.commit("first")
    # Changes of every kind: modified, added (new directories too), deleted (a directory
    # emptied), a file replaced by a directory, a new link, a mode change.
    (ws / "flat/f007.bin").write_bytes(b"seven")
    (ws / "flat/new.bin").write_bytes(b"new")
    (ws / "flat/f008.bin").unlink()
    (ws / "gone/one").unlink()
    (ws / "top.txt").unlink()
    (ws / "top.txt").mkdir()
    (ws / "top.txt/inner").write_bytes(b"i")
    (ws / "n/e").mkdir(parents=True)
    (ws / "n/e/w").write_bytes(b"w")
    os.symlink("../a/x.txt", ws / "n/l")
    os.chmod(ws / "a/x.txt", 0o755)
    _age(ws)

    def no_full_manifest(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("the whole directory was compared or built")
    monkeypatch.setattr(store.core.index, "stat_cache", no_full_manifest)
    monkeypatch.setattr(store.core, "manifest", no_full_manifest)
    report = store.status()
    assert report.changes.added == ["flat/new.bin", "n/e/w", "n/l", "top.txt/inner"]
    assert report.changes.modified == ["a/x.txt", "flat/f007.bin"]
    assert report.changes.deleted == ["flat/f008.bin", "gone/one", "top.txt"]
    monkeypatch.setattr(versions.tree, "build_tree", no_full_manifest)
    version = store.commit("second")
    monkeypatch.undo()
    monkeypatch.setattr(tree, "SHARD_ENTRIES", 4)
    manifest = store.manifest(version)
    assert sorted(manifest) == sorted(
        [p for p in files if p not in ("flat/f008.bin", "gone/one", "top.txt")]
        + ["flat/new.bin", "n/e/w", "n/l", "top.txt/inner", "link"])
    assert manifest["a/x.txt"].mode == 0o755 and manifest["n/l"].kind == tree.LINK
    fresh = MemStore()
    assert tree.build_tree(manifest, fresh.put) == (version.tree, version.size)
    assert version.files == len(manifest)
    assert store.status().changes.clean
    # Links are still checked when only what changed is snapshot.
    os.symlink("../../outside", ws / "flat/escape")
    with pytest.raises(UnsafePath):
        store.commit("third")
