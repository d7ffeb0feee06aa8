"""Property tests for path safety (dsv.paths) and manifests as Merkle trees (dsv.tree).

Paths and trees may come from a remote or an import, so they are untrusted input: every
way out of the dataset must be refused, and trees must round-trip and share structure.
"""

from __future__ import annotations

import json
import os
import posixpath
import random
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dsv
from dsv import tree
from dsv.errors import CorruptObject, DsvError, UnsafePath
from dsv.paths import check_name, check_relpath, check_symlink_target, normalize_user_path
from dsv.tree import DIR, FILE, LINK, Entry

# ---- strategies ---------------------------------------------------------------------------

components = st.text(alphabet="abcXYZ019._- é~", min_size=1, max_size=8) \
    .filter(lambda c: c not in (".", ".."))
rel_paths = st.lists(components, min_size=1, max_size=5).map("/".join)


def _oid(seed: object) -> str:
    return blake3.blake3(repr(seed).encode()).hexdigest()


entries = st.builds(
    lambda kind, mode, size, seed: Entry(kind, 0o777 if kind == LINK else mode, size, _oid(seed)),
    st.sampled_from([FILE, FILE, FILE, LINK]),
    st.sampled_from([0o644, 0o755, 0o600, 0o444]),
    st.integers(0, 1 << 40),
    st.integers(0, 1_000_000))


def _without_conflicts(paths: list[str]) -> list[str]:
    """Drop paths that are also a directory of another path (a file cannot be both)."""
    unique = sorted(set(paths))
    dirs = {p.rsplit("/", i)[0] for p in unique for i in range(1, p.count("/") + 1)}
    return [p for p in unique if p not in dirs]


manifests = st.lists(st.tuples(rel_paths, entries), max_size=40).map(
    lambda pairs: {p: e for p, e in pairs if p in set(_without_conflicts([q for q, _ in pairs]))})
nonempty_manifests = manifests.filter(bool)


class MemStore:
    """Tree objects in a dict, counting writes."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.calls = 0

    def put(self, oid: str, data: bytes) -> None:
        self.calls += 1
        assert blake3.blake3(data).hexdigest() == oid
        self.objects.setdefault(oid, data)

    def get(self, oid: str) -> bytes:
        return self.objects[oid]


def _dir_ids(root: str, store: MemStore) -> dict[str, str]:
    """Directory path → tree id, walked from the root."""
    out = {"": root}
    stack = [("", root)]
    while stack:
        base, oid = stack.pop()
        for name, kind, _mode, _size, child, _chunks in tree.decode_tree(store.get(oid), oid):
            if kind == DIR:
                path = f"{base}/{name}" if base else name
                out[path] = child
                stack.append((path, child))
    return out


# ---- check_relpath ------------------------------------------------------------------------

@given(rel_paths)
def test_safe_relative_paths_pass_unchanged(path: str) -> None:
    assert check_relpath(path) == path
    assert normalize_user_path(path) == path


@given(rel_paths)
def test_absolute_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafePath):
        check_relpath("/" + path)
    with pytest.raises(UnsafePath):
        check_relpath("//" + path)


@given(st.lists(components, max_size=4), st.lists(components, max_size=4))
def test_dotdot_anywhere_is_refused(before: list[str], after: list[str]) -> None:
    with pytest.raises(UnsafePath):
        check_relpath("/".join([*before, "..", *after]))


@given(st.lists(components, min_size=1, max_size=4), st.integers(0, 4))
def test_dot_component_is_refused(parts: list[str], where: int) -> None:
    parts.insert(min(where, len(parts)), ".")
    with pytest.raises(UnsafePath):
        check_relpath("/".join(parts))


@given(rel_paths, st.integers(0, 50))
def test_nul_anywhere_is_refused(path: str, where: int) -> None:
    where = min(where, len(path))
    with pytest.raises(UnsafePath):
        check_relpath(path[:where] + "\0" + path[where:])


@given(st.lists(components, min_size=1, max_size=4), st.integers(0, 4),
       st.sampled_from(["lead", "trail", "inner"]))
def test_empty_components_are_refused(parts: list[str], where: int, how: str) -> None:
    path = "/".join(parts)
    if how == "lead":
        bad = "/" + path  # also absolute
    elif how == "trail":
        bad = path + "/"
    else:
        parts.insert(min(where, len(parts)), "")
        bad = "/".join(parts) if len(parts) > 1 else "a//b"
    with pytest.raises(UnsafePath):
        check_relpath(bad)


@pytest.mark.parametrize("bad", ["", "/", ".", "..", "../x", "x/..", "a/../b", "a//b", "a/",
                                 "/etc/passwd", "a/./b", "a\0", "x" * 256, "a/" * 2049 + "a"])
def test_relpath_examples_refused(bad: str) -> None:
    with pytest.raises(UnsafePath):
        check_relpath(bad)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\0b", "n" * 256])
def test_check_name_refuses(bad: str) -> None:
    with pytest.raises(UnsafePath):
        check_name(bad)


def _slow_check(path: str) -> str | None:
    """check_relpath's verdict by its component-by-component rules only."""
    import dsv.paths as paths
    plain, paths._PLAIN_PATH = paths._PLAIN_PATH, __import__("re").compile("(?!)")
    try:
        return check_relpath(path)
    except UnsafePath:
        return None
    finally:
        paths._PLAIN_PATH = plain


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(alphabet="aZ09._-~+/\0é .DSVdsvtmp", max_size=12), min_size=1,
                max_size=4).map("/".join))
def test_the_one_match_check_agrees_with_the_full_rules(path: str) -> None:
    try:
        fast: str | None = check_relpath(path)
    except UnsafePath:
        fast = None
    assert fast == _slow_check(path)


@pytest.mark.parametrize("path", [".dsv", "a/.dsv", "a/.DSV", "a/..", "a/./b", "a//b", "/a",
                                  "a/", "x" * 256, "a/" + "y" * 256, ".dsv-tmp-0123456789abcdef",
                                  "a/b\0c", "\udcff/a", "\u00e9/.dsv", ("a/" * 2049)[:-1]])
def test_paths_the_one_match_check_leaves_to_the_full_rules(path: str) -> None:
    with pytest.raises(UnsafePath):
        check_relpath(path)
    assert _slow_check(path) is None


def test_long_plain_names_and_paths_pass() -> None:
    assert check_relpath("x" * 255) == "x" * 255
    path = "/".join(["d" * 200] * 20)   # 4,019 bytes
    assert check_relpath(path) == path and _slow_check(path) == path


def test_normalize_user_path_cleans_but_never_escapes() -> None:
    assert normalize_user_path("./a//b/") == "a/b"
    assert normalize_user_path("") == "" and normalize_user_path(".") == ""
    assert normalize_user_path("a/b/../c") == "a/c"
    for bad in ("..", "../x", "a/../../x", "/abs"):
        with pytest.raises(UnsafePath):
            normalize_user_path(bad)


# ---- check_symlink_target -------------------------------------------------------------------

def _escapes(link_path: str, target: str) -> bool:
    """Oracle: walking `target` from the link's directory, do we ever climb above the root?"""
    stack = link_path.split("/")[:-1]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return True
            stack.pop()
        else:
            stack.append(part)
    return False


target_parts = st.lists(st.sampled_from(["..", "..", ".", "a", "b", "c d"]), min_size=1,
                        max_size=8).map("/".join)


@given(rel_paths, target_parts)
@settings(max_examples=300)
def test_symlink_target_refused_exactly_when_it_escapes(link: str, target: str) -> None:
    if _escapes(link, target):
        with pytest.raises(UnsafePath):
            check_symlink_target(link, target)
    else:
        assert check_symlink_target(link, target) == target


@given(rel_paths, rel_paths)
def test_absolute_symlink_targets_are_refused(link: str, target: str) -> None:
    with pytest.raises(UnsafePath):
        check_symlink_target(link, "/" + target)


@given(rel_paths)
def test_climbing_one_level_too_many_is_refused(link: str) -> None:
    depth = link.count("/")
    # exactly to the dataset root is fine, one more level is not
    assert check_symlink_target(link, "../" * depth + "x") == "../" * depth + "x"
    with pytest.raises(UnsafePath):
        check_symlink_target(link, "../" * (depth + 1) + "x")
    with pytest.raises(UnsafePath):
        check_symlink_target(link, "x/../" + "../" * (depth + 1))


@pytest.mark.parametrize("target", ["", "a\0b", "/", "/etc/passwd", "..", "../", "a/../../b"])
def test_symlink_examples_refused_at_top_level(target: str) -> None:
    with pytest.raises(UnsafePath):
        check_symlink_target("link", target)


# ---- build_tree / flatten ------------------------------------------------------------------

@given(manifests)
@settings(max_examples=150, deadline=None)
def test_build_then_flatten_round_trips(manifest: dict[str, Entry]) -> None:
    store = MemStore()
    root, size = tree.build_tree(manifest, store.put)
    assert size == sum(e.size for e in manifest.values())
    assert tree.flatten(root, store.get) == manifest
    assert tree.flatten(root, store.get, trusted=False) == manifest
    # every directory is written once per build, and each object decodes with validation
    dirs = {""} | {p.rsplit("/", i)[0] for p in manifest for i in range(1, p.count("/") + 1)}
    assert store.calls == len(dirs)
    for oid, data in store.objects.items():
        tree.decode_tree(data, oid)
    assert set(_dir_ids(root, store)) == dirs
    # a walk of one kind yields exactly the entries of that kind
    for kind in (tree.FILE, tree.LINK):
        assert dict(tree.iter_files(root, store.get, only=kind)) == \
            {p: e for p, e in manifest.items() if e.kind == kind}


@given(manifests, st.randoms(use_true_random=False))
@settings(max_examples=100, deadline=None)
def test_tree_ids_are_deterministic_and_order_independent(manifest, rnd: random.Random) -> None:
    a, b = MemStore(), MemStore()
    root_a, size_a = tree.build_tree(manifest, a.put)
    items = list(manifest.items())
    rnd.shuffle(items)
    root_b, size_b = tree.build_tree(dict(items), b.put)
    assert (root_a, size_a) == (root_b, size_b)
    assert a.objects == b.objects


def test_empty_manifest_is_the_empty_tree() -> None:
    store = MemStore()
    root, size = tree.build_tree({}, store.put)
    assert (root, size) == (tree.empty_tree()[0], 0)
    assert tree.flatten(root, store.get) == {}


@given(nonempty_manifests, st.data())
@settings(max_examples=150, deadline=None)
def test_changing_one_file_changes_only_the_trees_on_its_path(manifest, data) -> None:
    path = data.draw(st.sampled_from(sorted(manifest)))
    old = MemStore()
    root1, _ = tree.build_tree(manifest, old.put)
    changed = dict(manifest)
    changed[path] = Entry(FILE, 0o644, manifest[path].size + 1, _oid(("changed", path)))
    new = MemStore()
    new.objects = dict(old.objects)
    root2, _ = tree.build_tree(changed, new.put)
    assert root2 != root1
    on_path = {""} | {path.rsplit("/", i)[0] for i in range(1, path.count("/") + 1)}
    created = set(new.objects) - set(old.objects)
    assert len(created) == len(on_path) == path.count("/") + 1
    ids1, ids2 = _dir_ids(root1, old), _dir_ids(root2, new)
    assert set(ids1) == set(ids2)
    for d in ids1:
        if d in on_path:
            assert ids1[d] != ids2[d], d
        else:
            assert ids1[d] == ids2[d], d
    assert tree.flatten(root2, new.get) == changed


@given(st.lists(st.tuples(components, st.sampled_from([FILE, LINK, DIR]),
                          st.sampled_from([0, 0o644, 0o755, 0o777]), st.integers(0, 1 << 50),
                          st.integers(0, 10 ** 6).map(_oid),
                          st.one_of(st.just(""), st.integers(0, 10 ** 6).map(_oid))),
                unique_by=lambda r: r[0], max_size=20))
def test_encode_decode_round_trip(rows) -> None:
    # (a chunk list only for a file: any other row naming one is refused)
    rows = sorted(((*r[:5], r[5] if r[1] == FILE else "") for r in rows),
                  key=lambda r: r[0].encode())
    data = tree.encode_tree(rows)
    assert [tuple(r) for r in tree.decode_tree(data)] == rows
    assert tree.encode_tree(rows) == data, "encoding is canonical"


# ---- malicious tree objects ----------------------------------------------------------------

GOOD = _oid("good")


def _raw_tree(rows: list, **over) -> bytes:
    body = {"entries": rows, "type": "tree", "v": tree.TREE_FORMAT, **over}
    return json.dumps(body).encode()


@pytest.mark.parametrize("name", ["..", ".", "", "../x", "../../etc/passwd", "/etc/passwd", "/",
                                  "a/b", "a\0b", "x" * 256])
@pytest.mark.parametrize("kind", [FILE, LINK, DIR])
def test_tree_with_unsafe_name_is_refused(name: str, kind: str) -> None:
    data = _raw_tree([[name, kind, 0o644, 1, GOOD]])
    with pytest.raises(DsvError):
        tree.decode_tree(data, _oid(data))
    store = MemStore()
    store.objects[_oid(data)] = data
    with pytest.raises(DsvError):
        tree.flatten(_oid(data), store.get, trusted=False)


@given(st.lists(st.tuples(components, st.integers(0, 100)), unique_by=lambda r: r[0],
                max_size=10),
       st.sampled_from(["..", "../x", "/abs", "a/b", ".", "", "x\0"]), st.integers(0, 10))
def test_one_bad_name_among_good_ones_is_refused(good, bad: str, where: int) -> None:
    rows = [[n, FILE, 0o644, s, GOOD] for n, s in sorted(good, key=lambda r: r[0].encode())]
    rows.insert(min(where, len(rows)), [bad, FILE, 0o644, 1, GOOD])
    with pytest.raises(DsvError):
        tree.decode_tree(_raw_tree(rows))


@pytest.mark.parametrize("data", [
    b"not json",
    b"[]",
    json.dumps({"entries": [], "type": "blob", "v": 1}).encode(),
    json.dumps({"entries": [], "type": "tree", "v": 99}).encode(),
    json.dumps({"entries": {}, "type": "tree", "v": 1}).encode(),
    json.dumps({"type": "tree", "v": 1}).encode(),
    _raw_tree([["a", "x", 0o644, 1, GOOD]]),            # unknown kind
    _raw_tree([["a", FILE, -1, 1, GOOD]]),              # bad mode
    _raw_tree([["a", FILE, 0o10000, 1, GOOD]]),
    _raw_tree([["a", FILE, 0o644, -1, GOOD]]),          # negative size
    _raw_tree([["a", FILE, 0o644, "1", GOOD]]),
    _raw_tree([["a", FILE, 0o644, 1, "nothex"]]),       # bad hash
    _raw_tree([["a", FILE, 0o644, 1, GOOD.upper()]]),
    _raw_tree([["a", FILE, 0o644, 1, GOOD[:-1]]]),
    _raw_tree([["a", FILE, 0o644, 1]]),                 # too few fields
    _raw_tree([["a", FILE, 0o644, 1, GOOD, "extra"]]),
    _raw_tree([["b", FILE, 0o644, 1, GOOD], ["a", FILE, 0o644, 1, GOOD]]),  # unsorted
    _raw_tree([["a", FILE, 0o644, 1, GOOD], ["a", DIR, 0, 1, GOOD]]),       # duplicate
    _raw_tree([[1, FILE, 0o644, 1, GOOD]]),
    _raw_tree(["a"]),
])
def test_malformed_tree_objects_are_refused(data: bytes) -> None:
    with pytest.raises(DsvError) as info:
        tree.decode_tree(data, "f" * 64)
    assert isinstance(info.value, (CorruptObject, UnsafePath))


def test_dangerous_symlink_blobs_are_refused() -> None:
    blobs = {_oid(1): b"../../etc/passwd", _oid(2): b"/etc/shadow", _oid(3): b"ok.txt",
             _oid(4): b"..", _oid(5): b""}
    for oid, target in blobs.items():
        manifest = {"dir/link": Entry(LINK, 0o777, len(target), oid)}
        if target == b"ok.txt":
            assert tree.validate_links(manifest, blobs.__getitem__) == {"dir/link": "ok.txt"}
        elif target == b"..":
            assert tree.validate_links(manifest, blobs.__getitem__) == {"dir/link": ".."}
        else:
            with pytest.raises(UnsafePath):
                tree.validate_links(manifest, blobs.__getitem__)


# ---- malicious manifests never touch the filesystem outside the target ----------------------

@pytest.fixture
def objects(tmp_path: Path):
    store = dsv.init(tmp_path / "ws", bind=False)
    yield store.objects
    store.close()


def _store_blob(objects, data: bytes) -> str:
    from dsv.objects import KIND_BLOB, Ingest
    ingest = Ingest(objects)
    oid = blake3.blake3(data).hexdigest()
    ingest.add(oid, KIND_BLOB, data)
    packs = ingest.publish()
    index = objects._locator
    with index.transaction():
        index.add_packs(packs)
    return oid


@pytest.mark.parametrize("path", ["../evil", "a/../../evil", "/tmp/evil-abs", "a/./b", "a//b"])
def test_materializer_refuses_unsafe_paths(objects, tmp_path: Path, path: str) -> None:
    from dsv.worktree import Materializer
    oid = _store_blob(objects, b"payload")
    target = tmp_path / "target" / "inner"
    target.mkdir(parents=True)
    with pytest.raises(UnsafePath):
        Materializer(objects, target).place([(path, Entry(FILE, 0o644, 7, oid))])
    assert not (tmp_path / "target" / "evil").exists()
    assert not (tmp_path / "evil").exists()
    assert not Path("/tmp/evil-abs").exists()
    assert list(target.iterdir()) == []


def test_malicious_tree_read_as_trusted_still_cannot_escape(objects, tmp_path: Path) -> None:
    """Even if a bad tree got into the store, placing its files re-checks every path."""
    from dsv.worktree import Materializer
    oid = _store_blob(objects, b"payload")
    data = _raw_tree([["../escaped", FILE, 0o644, 7, oid]])
    store = MemStore()
    store.objects[_oid(data)] = data
    try:
        manifest = tree.flatten(_oid(data), store.get, trusted=True)
    except DsvError:
        return  # refused while reading: also fine
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(UnsafePath):
        Materializer(objects, target).place(list(manifest.items()))
    assert not (tmp_path / "escaped").exists()


def test_materializer_refuses_symlink_escape_and_does_not_follow_links(objects,
                                                                       tmp_path: Path) -> None:
    from dsv.worktree import Materializer
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    bad_link = _store_blob(objects, b"../../outside")
    with pytest.raises(UnsafePath):
        Materializer(objects, target).place([("d/link", Entry(LINK, 0o777, 13, bad_link))])
    assert not os.path.lexists(target / "d" / "link")
    # a symlink already in the target where a directory belongs is never written through
    os.symlink(outside, target / "sub")
    oid = _store_blob(objects, b"data")
    Materializer(objects, target).place([("sub/file.txt", Entry(FILE, 0o644, 4, oid))])
    assert list(outside.iterdir()) == []
    assert not (target / "sub").is_symlink()
    assert (target / "sub" / "file.txt").read_bytes() == b"data"


@given(rel_paths)
@settings(max_examples=50, deadline=None)
def test_posix_normpath_agrees_on_safe_paths(path: str) -> None:
    """Safe paths are already normal: no '.', '..' or empty parts to clean up."""
    assert posixpath.normpath(path) == path
