"""Sharded directories (issue 11): a directory with more than SHARD_ENTRIES entries is
stored as shard nodes over leaves, by the hash of each name, so that a one-file change
rewrites one small leaf and the nodes above it; every reader (flatten, lookups, expansion
bounds, content comparison, fetch, verify, gc) works across shards, hostile shards are
refused, and trees written before sharding keep working."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import blake3
import pytest

import dsv as dsv_api
from conftest import read_tree, write_tree
from dsv import tree, worktree
from dsv.errors import CorruptObject, UnsafePath
from dsv.paths import check_name
from dsv.tree import FILE, Entry


def _oid(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


class MemStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, oid: str, data: bytes) -> None:
        assert _oid(data) == oid
        self.objects.setdefault(oid, data)

    def get(self, oid: str) -> bytes:
        return self.objects[oid]


def _manifest(n: int, directory: str = "flat", seed: int = 1) -> dict[str, Entry]:
    rng = random.Random(seed)
    return {f"{directory}/f{i:06d}.bin": Entry(FILE, 0o644, rng.randrange(1, 5000),
                                               _oid(b"%d-%d" % (seed, i)))
            for i in range(n)}


def _kinds(store: MemStore) -> dict[str, int]:
    out: dict[str, int] = {}
    for data in store.objects.values():
        kind = json.loads(data)["type"]
        out[kind] = out.get(kind, 0) + 1
    return out


def test_a_large_directory_is_sharded_and_reads_back_whole() -> None:
    manifest = {**_manifest(20_000), **_manifest(300, "small"), "top.txt": Entry(
        FILE, 0o644, 3, _oid(b"top"))}
    store = MemStore()
    root, size = tree.build_tree(manifest, store.put)
    assert size == sum(e.size for e in manifest.values())
    kinds = _kinds(store)
    assert kinds["shards"] >= 1 + 16 and kinds["leaf"] >= 256  # 20,000 entries: 2 levels
    assert kinds["tree"] == 2  # the root and `small` stay plain trees
    assert tree.flatten(root, store.get) == manifest
    assert tree.flatten(root, store.get, trusted=False) == manifest
    rows = tree.list_dir(root, store.get, "flat")
    assert [r[0] for r in rows] == sorted(p.split("/")[1] for p in manifest if
                                          p.startswith("flat/"))
    assert tree.find(root, store.get, "flat/f012345.bin")[4] == manifest["flat/f012345.bin"].oid
    assert tree.find(root, store.get, "flat/nosuch.bin") is None
    assert tree.find(root, store.get, "top.txt/x") is None
    assert tree.check_expansion(root, store.get) == len(manifest)
    assert {oid for _k, oid in tree.subtree_ids(root, store.get)} >= set(store.objects)
    assert sum(1 for _ in tree.blob_sizes(root, store.get)) == len(manifest)
    for data in store.objects.values():  # every object small: no 2 MB directory object
        assert len(data) < 64 << 10


def test_a_version_walked_in_path_order_meets_a_directory_walk(tmp_path: Path) -> None:
    """tree.iter_sorted yields a version's files in the order worktree.walk yields a
    directory holding them (what checkout merges the two by), across shards and for the
    names that sort between a directory and its files."""
    rng = random.Random(5)
    names = ["a", "a.b", "a-", "a!", "a0", "b", "\u00e9t\u00e9", "z\u4e2d", "_x", "A"]
    files: dict[str, bytes | str] = {}
    for top in names:
        files[f"{top}/x"] = "x"
        files[f"{top}.txt"] = "t"
        files[f"{top}/{top}/deep"] = "d"
    for i in range(700):   # (sharded, with names that sort around its subdirectories)
        files[f"big/{rng.choice(names)}{i:03d}" + rng.choice(["", "/in", ".z"])] = str(i)
    manifest = {rel: Entry(FILE, 0o644, len(data), _oid(data.encode()))
                for rel, data in files.items() if isinstance(data, str)}
    store = MemStore()
    root, _size = tree.build_tree(manifest, store.put)
    assert _kinds(store)["shards"] >= 1
    walked_tree = [path for path, _e in tree.iter_sorted(root, store.get)]
    write_tree(tmp_path, files)
    walked_dir = [rel for run in worktree.walk(tmp_path, []) for rel, _fs in run]
    assert walked_tree == sorted(manifest) == walked_dir
    assert dict(tree.iter_sorted(root, store.get)) == manifest


def test_a_one_file_change_rewrites_one_leaf_and_the_nodes_above_it() -> None:
    manifest = _manifest(200_000)
    old = MemStore()
    root1, _ = tree.build_tree(manifest, old.put)
    changed = dict(manifest)
    changed["flat/f100000.bin"] = Entry(FILE, 0o644, 7, _oid(b"new"))
    changed["flat/zz-inserted.bin"] = Entry(FILE, 0o644, 9, _oid(b"inserted"))
    new = MemStore()
    root2, _ = tree.build_tree(changed, new.put)
    fresh = {oid: data for oid, data in new.objects.items() if oid not in old.objects}
    # Two leaves (one per changed name), the shard nodes above them, the root: nothing
    # else moved, because a name's shard depends on that name alone.
    assert len(fresh) <= 2 * 4 + 1, len(fresh)
    assert sum(map(len, fresh.values())) <= 64 << 10
    assert tree.flatten(root2, new.get) == changed
    assert not tree.same_content(root1, root2, lambda o: new.objects.get(o) or old.get(o))


def test_many_paths_are_looked_up_reading_each_tree_and_shard_once() -> None:
    manifest = {**_manifest(5_000), **_manifest(40, "small"), **_manifest(3, "small/sub")}
    store = MemStore()
    root, _ = tree.build_tree(manifest, store.put)
    reads: list[str] = []

    def counted(oid: str) -> bytes:
        reads.append(oid)
        return store.get(oid)

    wanted = [*manifest, "flat/nope.bin", "small/sub", "small/f000001.bin/x", "gone/x"]
    random.Random(3).shuffle(wanted)
    found = tree.find_many(root, counted, wanted)
    assert {p: Entry(*r[1:]) for p, r in found.items() if r[1] == FILE} == manifest
    assert found["small/sub"][1] == tree.DIR and "flat/nope.bin" not in found
    assert "small/f000001.bin/x" not in found and "gone/x" not in found
    # Each tree and shard on the way was decoded once (the store holds nothing else).
    assert len(reads) == len(set(reads)) == len(store.objects), (len(reads), len(store.objects))
    # One at a time (`find`), the root and flat/'s top node are read for every path.
    reads.clear()
    for path in list(manifest)[:100]:
        tree.find(root, counted, path)
    assert len(reads) >= 300


def test_a_plain_tree_written_before_sharding_still_reads_and_compares_equal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = _manifest(3000)
    plain = MemStore()
    monkeypatch.setattr(tree, "SHARD_ENTRIES", 1 << 30)
    old_root, _ = tree.build_tree(manifest, plain.put)
    monkeypatch.undo()
    assert _kinds(plain) == {"tree": 2}
    sharded = MemStore()
    new_root, _ = tree.build_tree(manifest, sharded.put)
    assert new_root != old_root
    both = {**plain.objects, **sharded.objects}.__getitem__
    assert tree.flatten(old_root, both) == tree.flatten(new_root, both) == manifest
    assert tree.same_content(old_root, new_root, both)
    assert tree.list_dir(old_root, both, "flat") == tree.list_dir(new_root, both, "flat")


def _first(store: MemStore, kind: str) -> tuple[str, dict]:
    for oid, data in store.objects.items():
        obj = json.loads(data)
        if obj["type"] == kind:
            return oid, obj
    raise AssertionError(kind)


def _encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def test_hostile_shards_are_refused() -> None:
    store = MemStore()
    root, _ = tree.build_tree(_manifest(2000), store.put)
    leaf_oid, leaf = _first(store, "leaf")
    # A leaf naming a file whose hash is not in its shard.
    stray = next(f"x{i}" for i in range(100) if not tree.name_hash(f"x{i}").startswith(
        leaf["prefix"]))
    bad = _encode({**leaf, "entries": sorted([*leaf["entries"], [stray, "f", 420, 1,
                                                                  "0" * 64]])})
    with pytest.raises(CorruptObject, match="not in its shard"):
        tree.decode_node(bad, _oid(bad))
    # Shard nodes: unsorted or repeated digits, too many shards, a bad prefix.
    node_oid, node = _first(store, "shards")
    for broken in ({**node, "shards": node["shards"][::-1]},
                   {**node, "shards": [node["shards"][0]] * 2},
                   {**node, "prefix": "xyz"},
                   {**node, "prefix": "0" * 65},
                   {**node, "shards": []}):
        data = _encode(broken)
        with pytest.raises(CorruptObject):
            tree.decode_node(data, _oid(data))
    # A shard put where another belongs (each valid alone): caught when it is walked.
    swapped = dict(node)
    first, second = node["shards"][0], node["shards"][1]
    swapped["shards"] = [[first[0], second[1]], [second[0], first[1]], *node["shards"][2:]]
    data = _encode(swapped)
    store.put(_oid(data), data)
    with pytest.raises(CorruptObject, match="out of place"):
        tree.entries(_oid(data), store.get)
    # A leaf where a directory's tree belongs is refused too.
    with pytest.raises(CorruptObject, match="out of place"):
        tree.entries(leaf_oid, store.get)
    assert tree.flatten(root, store.get)  # the real tree is fine


# ---- end to end ----------------------------------------------------------------------

def _files(n: int) -> dict[str, bytes]:
    return {f"flat/img{i:05d}.png": b"%05d" % i * 20 for i in range(n)}


def _pushed(dsv, alice: Path, remote: Path, files: dict[str, bytes], message: str = "v1"
            ) -> None:
    """Dataset `ds` of `files` at `alice`, committed and pushed to directory remote
    `remote` (as origin)."""
    write_tree(alice, files)
    assert dsv("init", "--name", "ds", alice, cwd=alice.parent).code == 0
    assert dsv("commit", "-m", message, cwd=alice).code == 0
    assert dsv("remote", "add", "origin", remote, cwd=alice).code == 0
    assert dsv("push", cwd=alice).code == 0


def _dsv_bytes(ws: Path) -> int:
    return sum(p.stat().st_size for p in (ws / ".dsv" / "objects").rglob("*") if p.is_file())


def test_a_sharded_dataset_commits_pushes_clones_and_verifies(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    files = _files(3000)
    write_tree(ws, files)
    assert dsv("init", "--name", "raw", ws, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "first", cwd=ws).code == 0
    with dsv_api.open(ws) as store:
        root = store.resolve("raw:latest").tree
        flat = tree.find(root, store.read_tree, "flat")
        assert json.loads(store.read_tree(flat[4]))["type"] == "shards"
    # One file changed: a small commit, and the diff names just it.
    before = _dsv_bytes(ws)
    (ws / "flat/img01234.png").write_bytes(b"changed")
    assert dsv("commit", "-m", "one file", cwd=ws).code == 0
    assert _dsv_bytes(ws) - before < 64 << 10
    diff = dsv("diff", "raw:latest~1", "raw:latest", cwd=ws)
    assert diff.code == 0 and "flat/img01234.png" in diff.out and "img01235" not in diff.out
    assert dsv("status", cwd=ws).out.strip().endswith("clean") or \
        "0 added" in dsv("status", cwd=ws).out
    assert dsv("commit", "-m", "again", cwd=ws).code == 1  # nothing to commit
    # Push, clone, partial checkout and file listing across shards.
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    clone = tmp_path / "clone"
    assert dsv("clone", tmp_path / "remote", clone, cwd=tmp_path).code == 0
    expected = {**files, "flat/img01234.png": b"changed"}
    assert read_tree(clone / "raw") == expected or read_tree(clone) == expected
    # A partial clone and a partial pull of files in the sharded directory: just those.
    part = tmp_path / "part"
    assert dsv("clone", tmp_path / "remote", part, "--path", "flat/img01234.png",
               cwd=tmp_path).code == 0
    assert read_tree(part) == {"flat/img01234.png": b"changed"}
    pulled = dsv("pull", "raw:latest", "--path", "flat/img00020.png", "--json", cwd=part)
    assert pulled.code == 0 and json.loads(pulled.out)["objects_received"] == 1
    with dsv_api.open(part) as store:
        assert store.open_file("raw:latest", "flat/img00020.png").read() == \
            files["flat/img00020.png"]
    out = tmp_path / "one"
    assert dsv("checkout", "raw:latest~1", "flat/img00007.png", "--to", out, cwd=ws).code == 0
    assert read_tree(out) == {"flat/img00007.png": files["flat/img00007.png"]}
    listing = dsv("files", "list", "raw:latest", "--path", "flat", "--json", cwd=ws)
    assert listing.code == 0 and len(json.loads(listing.out)) == 3000
    # gc keeps every shard; verify walks them.
    assert dsv("gc", cwd=ws).code == 0
    assert dsv("verify", cwd=ws).code == 0
    assert dsv("verify", "--remote", "origin", "--read-data", cwd=ws).code == 0


def test_a_store_written_before_sharding_works_end_to_end(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big directory committed as one plain tree (as a dsv before sharding wrote it),
    then used by this dsv through the command line: nothing to commit while nothing
    changed, a one-file change committed (the directory sharded then), push, clone,
    verify of the store and of the remote, and both versions checked out whole."""
    ws = tmp_path / "ws"
    files = _files(1500)
    write_tree(ws, files)
    assert dsv("init", "--name", "raw", ws, cwd=tmp_path).code == 0
    monkeypatch.setattr(tree, "SHARD_ENTRIES", 1 << 30)
    assert dsv("commit", "-m", "plain", cwd=ws).code == 0
    monkeypatch.undo()
    with dsv_api.open(ws) as store:
        root = store.resolve("raw:latest").tree
        flat = tree.find(root, store.read_tree, "flat")
        assert json.loads(store.read_tree(flat[4]))["type"] == "tree"   # one plain tree
    for rel in files:   # (new times: the files are hashed again, a sharded tree built)
        os.utime(ws / rel, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    assert dsv("status", cwd=ws).out.strip().endswith("clean")
    assert dsv("commit", "-m", "again", cwd=ws).code == 1   # nothing to commit
    (ws / "flat/img00042.png").write_bytes(b"changed")
    assert dsv("commit", "-m", "one file", cwd=ws).code == 0
    with dsv_api.open(ws) as store:
        root = store.resolve("raw:latest").tree
        flat = tree.find(root, store.read_tree, "flat")
        assert json.loads(store.read_tree(flat[4]))["type"] == "shards"
    diff = dsv("diff", "raw:latest~1", "raw:latest", "--json", cwd=ws)
    assert diff.code == 0 and "flat/img00042.png" in diff.out and "img00043" not in diff.out
    assert dsv("verify", cwd=ws).code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    assert dsv("verify", "--remote", "origin", "--read-data", cwd=ws).code == 0
    clone = tmp_path / "clone"
    assert dsv("clone", tmp_path / "remote", clone, cwd=tmp_path).code == 0
    assert read_tree(clone) == {**files, "flat/img00042.png": b"changed"}
    assert dsv("checkout", "raw:latest~1", cwd=clone).code == 0
    assert read_tree(clone) == files
    assert dsv("verify", cwd=clone).code == 0


def test_a_damaged_leaf_is_named_and_repaired(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, _files(1500))
    assert dsv("init", "--name", "raw", ws, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "first", cwd=ws).code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    with dsv_api.open(ws) as store:
        root = store.resolve("raw:latest").tree
        flat = tree.find(root, store.read_tree, "flat")[4]
        shard = tree.decode_node(store.read_tree(flat), flat).shards[3][1]
        pack_id, offset, _length = store.index.locate(shard)
    path = ws / ".dsv/objects/packs" / f"{pack_id}.pack"
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset + 10] ^= 1
    path.write_bytes(bytes(data))
    r = dsv("verify", "--json", cwd=ws)
    rep = json.loads(r.out)
    assert r.code == 1 and any(a["path"] == "flat/" and a["object"] == shard
                               for a in rep["affected"])
    fixed = dsv("verify", "--repair", cwd=ws)
    assert fixed.code == 0, fixed.out
    assert dsv("verify", cwd=ws).code == 0
    assert dsv("checkout", "raw:latest", "--to", tmp_path / "out", cwd=ws).code == 0
    assert read_tree(tmp_path / "out") == _files(1500)


# ---- hostile remotes ------------------------------------------------------------------

from hostile import HostileRemote, encode  # noqa: E402
from dsv.objects import KIND_TREE  # noqa: E402

DS = "victimds"


def _publish_version(remote: HostileRemote, root: str, vid: str = "v1aaaaaaaa") -> None:
    record = remote.record(vid, DS, root)
    remote.publish()
    remote.ref(DS, "latest", vid, record)


def _shards_node(remote: HostileRemote, prefix: str, shards: list[list[str]]) -> str:
    return remote.add(encode({"prefix": prefix, "shards": shards, "type": "shards", "v": 1}),
                      KIND_TREE)


def _leaf(remote: HostileRemote, prefix: str, rows: list[list]) -> str:
    return remote.add(encode({"entries": rows, "prefix": prefix, "type": "leaf", "v": 1}),
                      KIND_TREE)


def _refused(dsv, remote: HostileRemote, tmp_path: Path, *needles: str) -> None:
    r = dsv("clone", remote.root, tmp_path / "victim", cwd=tmp_path)
    assert r.code == 1, r.out + r.err
    assert r.err.startswith("error: ") and "bug in dsv" not in r.err, r.err
    for needle in needles:
        assert needle in r.err, r.err
    assert not (tmp_path / "victim").exists()


def test_a_shard_chain_deeper_than_a_hash_is_refused(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    name = "data.csv"
    digits = tree.name_hash(name)
    blob = remote.blob(b"x")
    child = _leaf(remote, digits, [[name, "f", 420, 1, blob]])
    for depth in range(63, -1, -1):  # nodes of prefix 63 … 0 digits, then one of 64
        child = _shards_node(remote, digits[:depth], [[digits[depth], child]])
    deep = _shards_node(remote, digits, [["0", child]])  # 64 digits: no node may be there
    root = remote.tree([["d", "d", 0, 1, deep]])
    _publish_version(remote, root)
    _refused(dsv, remote, tmp_path, "not a valid tree")


def test_misplaced_shards_are_refused_at_fetch(tmp_path: Path, dsv) -> None:
    blob_rows = []
    remote = HostileRemote(tmp_path / "remote")
    for i in range(3):
        blob_rows.append([f"f{i}", "f", 420, 1, remote.blob(b"%d" % i)])
    # A plain tree where a shard belongs, under a valid top node.
    plain = remote.tree(blob_rows)
    top = _shards_node(remote, "", [["0", plain]])
    _publish_version(remote, remote.tree([["d", "d", 0, 3, top]]))
    _refused(dsv, remote, tmp_path, "out of place")


def test_verify_remote_finds_a_leaf_also_named_as_a_directory(tmp_path: Path, dsv) -> None:
    """One leaf in its place under a shard node and also named as a directory (met there
    second): `verify --remote` reports what clone refuses, whichever place it met first."""
    remote = HostileRemote(tmp_path / "remote")
    digit = tree.name_hash("x.txt")[0]
    leaf = _leaf(remote, digit, [["x.txt", "f", 420, 5, remote.blob(b"hello")]])
    top = _shards_node(remote, "", [[digit, leaf]])
    _publish_version(remote, remote.tree([["a", "d", 0, 5, leaf], ["b", "d", 0, 5, top]]))
    _refused(dsv, remote, tmp_path, f"tree {leaf[:12]}")
    ws = tmp_path / "ws"
    ws.mkdir()
    assert dsv("init", "--name", "mine", ws, cwd=tmp_path).code == 0
    assert dsv("remote", "add", "origin", remote.root, cwd=ws).code == 0
    r = dsv("verify", "--remote", "origin", cwd=ws)
    assert r.code == 1, r.out + r.err
    assert f"tree {leaf[:12]} is named in two different places" in r.out + r.err, r.out + r.err


def test_a_leaf_named_as_a_directory_is_refused_at_fetch(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    name = "a.txt"
    leaf = _leaf(remote, tree.name_hash(name)[:1], [[name, "f", 420, 1, remote.blob(b"a")]])
    _publish_version(remote, remote.tree([["d", "d", 0, 1, leaf]]))
    _refused(dsv, remote, tmp_path, "out of place")


@pytest.mark.parametrize("rows", [
    lambda blob: [["a.txt", "q", 420, 5, blob]],                         # no such kind
    lambda blob: [5],                                                     # no row at all
    lambda blob: [["a.txt", "f", 420, 5, "0" * 64], ["a.txt", "f", 420, 5, blob]],  # twice
], ids=["kind", "row", "twice"])
def test_a_path_looked_up_in_a_hostile_leaf_without_a_store_is_refused(
        tmp_path: Path, dsv, rows) -> None:
    """`ls`, `get` and `cat` of one path read only the shards on its way: each is checked
    as `ls -r` checks it, so a malformed leaf is refused, never listed or written."""
    remote = HostileRemote(tmp_path / "remote")
    digit = tree.name_hash("a.txt")[0]
    leaf = _leaf(remote, digit, rows(remote.blob(b"hello")))
    _publish_version(remote, remote.tree([["d", "d", 0, 5, _shards_node(
        remote, "", [[digit, leaf]])]]))
    out = tmp_path / "out"
    for args in (("ls", "--json"), ("get", "--to", out), ("cat",)):
        r = dsv(args[0], remote.root, "victim:latest", "d/a.txt", *args[1:], cwd=tmp_path)
        assert r.code == 1 and r.out == "", (args, r.out, r.err)
        assert r.err.startswith("error: ") and f"tree {leaf[:12]}" in r.err, (args, r.err)
    assert not out.exists()
    listed = dsv("ls", remote.root, "victim:latest", "-r", cwd=tmp_path)   # (as before)
    assert listed.code == 1 and f"tree {leaf[:12]}" in listed.err, listed.err


def test_a_version_naming_one_directory_many_times_is_refused_without_a_store(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """26 small trees, each naming the next twice, describe 2^25 paths (of one sharded
    directory): `ls -r` and `get` without a store bound the version by its distinct trees
    first, as a fetch does, instead of listing paths until the limit (minutes, GBs)."""
    remote = HostileRemote(tmp_path / "remote")
    digit = tree.name_hash("a.txt")[0]
    child = _shards_node(remote, "", [[digit, _leaf(
        remote, digit, [["a.txt", "f", 420, 5, remote.blob(b"hello")]])]])
    for _ in range(25):
        child = remote.tree([["x", "d", 0, 5, child], ["y", "d", 0, 5, child]])
    _publish_version(remote, remote.tree([["top", "d", 0, 5, child]]))
    decode, calls = tree.decode_node, []

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) > 10_000:
            raise AssertionError("the walk reads trees far beyond the version's 29")
        return decode(*args, **kwargs)
    monkeypatch.setattr(tree, "decode_node", counted)
    out = tmp_path / "out"
    for args in (("ls", "victim:latest", "-r"), ("ls", "victim:latest", "top/x", "-r"),
                 ("get", "victim:latest", "--to", out), ("get", "victim:latest", "top/y",
                                                           "--to", out)):
        calls.clear()
        r = dsv(args[0], remote.root, *args[1:], cwd=tmp_path)
        assert r.code == 1 and "expands to more than 16,000,000 paths" in r.err, (args, r.err)
        assert r.out == "" and "bug in dsv" not in r.err, (args, r.err)
    assert not out.exists()


def test_a_leaf_naming_a_lone_surrogate_is_refused_as_a_bad_name(tmp_path: Path, dsv) -> None:
    """JSON may spell a name no UTF-8 can hold ("\\ud800"): refused as the name it is,
    not blamed on the user's arguments or environment."""
    remote = HostileRemote(tmp_path / "remote")
    rows = [["\ud800", "f", 420, 5, remote.blob(b"hello")]]
    leaf = remote.add(json.dumps({"entries": rows, "prefix": "0", "type": "leaf", "v": 1},
                                 separators=(",", ":"), sort_keys=True).encode(), KIND_TREE)
    _publish_version(remote, remote.tree([["d", "d", 0, 5, _shards_node(
        remote, "", [["0", leaf]])]]))
    _refused(dsv, remote, tmp_path, "error: tree ", " on origin: file name ", "is not valid UTF-8",
             "nothing was fetched")
    r = dsv("ls", remote.root, "victim:latest", "-r", cwd=tmp_path)
    assert r.code == 1 and r.err.startswith("error: file name "), r.err
    assert "is not valid UTF-8" in r.err and "environment" not in r.err, r.err
    with pytest.raises(UnsafePath, match="not valid UTF-8"):
        check_name("\ud800")


def test_a_stored_file_named_as_a_directory_is_fetched_and_checked(tmp_path: Path,
                                                                  dsv) -> None:
    """v1 holds a file whose bytes are a tree naming `../../pwned`; v2 names that file's
    id as a directory. The file, stored as a blob, is not trusted as a tree."""
    remote = HostileRemote(tmp_path / "remote")
    evil = json.dumps({"entries": [["../../pwned", "f", 420, 1, "0" * 64]], "type": "tree",
                       "v": 1}, separators=(",", ":")).encode()
    v1 = remote.files({"evil.json": evil})
    rec1 = remote.record("v1aaaaaaaa", DS, v1)
    remote.publish()
    remote.ref(DS, "latest", "v1aaaaaaaa", rec1)
    victim = tmp_path / "victim"
    assert dsv("clone", remote.root, victim, cwd=tmp_path).code == 0
    blob = blake3.blake3(evil).hexdigest()
    remote.add(evil, KIND_TREE)  # the remote also offers it as a tree
    v2 = remote.tree([["d", "d", 0, 1, blob]])
    rec2 = remote.record("v2bbbbbbbb", DS, v2,
                         parents=[{"id": "v1aaaaaaaa", "record": rec1}])
    remote.publish()
    remote.ref(DS, "latest", "v2bbbbbbbb", rec2)
    r = dsv("fetch", cwd=victim)
    # Before, the stored blob was read as a trusted tree: a TypeError ("bug in dsv"), or
    # with a well-formed tree, `../../pwned` listed. Now it must come as a tree, checked.
    assert r.code == 1 and "bug in dsv" not in r.err, r.err
    assert f"tree {blob[:12]} is on neither the remote nor here" in r.err
    assert dsv("verify", cwd=victim).code == 0
    assert dsv("files", "list", "victim:latest", "-r", cwd=victim).out.count("pwned") == 0


# ---- what a version holds beyond one the remote has (a push after a small commit) -------

def _chunked(store: MemStore, n: int, tag: bytes) -> Entry:
    """A chunked file's entry: a chunk list of `n` chunks of 100 bytes, written to `store`."""
    chunks = [(_oid(tag + b"%d" % i), 100) for i in range(n)]
    data = tree.encode_chunks(tree.ChunkList(_oid(tag + b"whole%d" % n), 100 * n, chunks))
    store.put(_oid(data), data)
    return Entry(FILE, 0o644, 100 * n, _oid(tag + b"whole%d" % n), _oid(data))


def _beyond(old: dict[str, Entry], new: dict[str, Entry], store: MemStore
            ) -> tuple[set[str], set[str], set[str], list[str]]:
    """(every id under the new tree, every id under the old, the ids `subtree_ids` finds
    beyond the old, the tree objects that walk read)."""
    root_old, _ = tree.build_tree(old, store.put)
    root_new, _ = tree.build_tree(new, store.put)
    reads: list[str] = []

    def counted(oid: str) -> bytes:
        reads.append(oid)
        return store.get(oid)

    beyond = {oid for _k, oid in tree.subtree_ids(root_new, counted, base=root_old)}
    return ({oid for _k, oid in tree.subtree_ids(root_new, store.get)},
            {oid for _k, oid in tree.subtree_ids(root_old, store.get)}, beyond, reads)


def test_what_a_tree_holds_beyond_a_base_costs_what_differs() -> None:
    limit = tree.SHARD_ENTRIES
    one = Entry(FILE, 0o644, 1, _oid(b"one"))
    big = _manifest(20_000)
    store = MemStore()
    cases = [
        (big, {**big, "flat/f000123.bin": one}),                        # one file in 20,000
        (big, {p: e for p, e in big.items() if p != "flat/f000042.bin"}),  # one removed
        (_manifest(limit), {**_manifest(limit), "flat/zzz": one}),      # plain → sharded
        ({**_manifest(limit), "flat/zzz": one}, _manifest(limit)),      # sharded → plain
        ({**_manifest(300, "a"), "b/x": one},                           # dirs come and go,
         {**_manifest(300, "a", seed=2), "b": one, "c/d/e": one}),      # a dir becomes a file
        ({"m.bin": _chunked(store, 40, b"c")}, {"m.bin": _chunked(store, 41, b"c")}),  # append
        ({}, _manifest(700)),                                           # nothing in common
    ]
    for old, new in cases:
        full_new, full_old, beyond, _reads = _beyond(old, new, store)
        # Everything left out is under the base; nothing outside the new tree is named.
        assert full_new - full_old <= beyond <= full_new, (len(full_new - full_old), len(beyond))
    # A one-file change in 20,000 entries: the root, the nodes and the leaf on its way,
    # the blob; and only the tree objects that differ (on both sides) are read.
    full_new, full_old, beyond, reads = _beyond(big, {**big, "flat/f000123.bin": one}, store)
    assert len(beyond) <= 5 and one.oid in beyond, len(beyond)
    assert len(reads) <= 2 * 4, len(reads)
    # An append to a chunked file: its new list and its one new chunk.
    _n, _o, beyond, _r = _beyond({"m.bin": _chunked(store, 40, b"c")},
                                 {"m.bin": _chunked(store, 41, b"c")}, store)
    assert len(beyond) == 3 and _oid(b"c40") in beyond  # (the root, the list, the chunk)


def test_a_push_after_a_small_commit_looks_only_at_what_changed(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    files = _files(1500)
    write_tree(ws, files)
    assert dsv("init", "--name", "raw", ws, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "first", cwd=ws).code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=ws).code == 0
    first = json.loads(dsv("push", "--json", cwd=ws).out)
    assert first["based_on"] == [] and first["objects_sent"] > 1500
    (ws / "flat/img01234.png").write_bytes(b"changed")
    (ws / "flat/new.png").write_bytes(_files(1)["flat/img00000.png"])  # content it holds
    assert dsv("commit", "-m", "two files", cwd=ws).code == 0
    with dsv_api.open(ws) as store:
        parent = store.resolve("raw:latest~1").id
    r = dsv("push", "--json", cwd=ws)
    second = json.loads(r.out)
    # The parent is on the remote whole: only the changed path was looked at (a blob,
    # leaves, shard node, root, record), and the unchanged 1,498 files were not.
    assert second["based_on"] == [parent], second
    assert second["objects_sent"] + second["objects_skipped"] <= 8, second
    assert second["objects_sent"] >= 3, second
    line = dsv("push", cwd=ws)
    assert line.code == 0 and "up to date" in line.out
    clone = tmp_path / "clone"
    assert dsv("clone", tmp_path / "remote", clone, cwd=tmp_path).code == 0
    expected = {**files, "flat/img01234.png": b"changed",
                "flat/new.png": files["flat/img00000.png"]}
    assert read_tree(clone / "raw") == expected or read_tree(clone) == expected
    assert dsv("verify", "--remote", "origin", "--read-data", cwd=ws).code == 0
    assert dsv("checkout", "raw:latest~1", "--to", tmp_path / "old", cwd=clone).code == 0
    assert read_tree(tmp_path / "old") == files
    # The clone pulls a further change comparing it with the version it holds whole:
    # only the changed file's blob is looked at (and downloaded).
    with dsv_api.open(clone) as store:
        held = store.resolve("raw:latest").id
    (ws / "flat/img00500.png").write_bytes(b"third")
    assert dsv("commit", "-m", "third", cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    pulled = dsv("pull", "--json", cwd=clone)
    assert pulled.code == 0, pulled.err
    report = json.loads(pulled.out)
    assert report["based_on"] == [held], report
    assert report["objects_received"] == 1 and report["objects_skipped"] == 0, report
    expected["flat/img00500.png"] = b"third"
    assert read_tree(clone / "raw") == expected or read_tree(clone) == expected
    assert dsv("verify", cwd=clone).code == 0
    line = dsv("pull", cwd=clone)
    assert line.code == 0, line.err


def test_a_diff_of_sharded_directories_reads_only_the_shards_that_differ() -> None:
    limit = tree.SHARD_ENTRIES
    one = Entry(FILE, 0o644, 1, _oid(b"one"))
    big = _manifest(20_000)
    cases = [
        (big, {**big, "flat/f000123.bin": one}),
        (big, {p: e for p, e in big.items() if p != "flat/f000042.bin"}),
        (_manifest(limit), {**_manifest(limit), "flat/zzz": one}),
        ({**_manifest(limit), "flat/zzz": one}, _manifest(limit)),
        ({**_manifest(300, "a"), "b/x": one}, {**_manifest(300, "a", seed=2), "b": one,
                                               "c/d/e": one}),
        ({}, _manifest(700)),
        (_manifest(3 * limit), _manifest(3 * limit, seed=5)),  # every file differs
    ]
    store = MemStore()
    for old, new in cases:
        a, _ = tree.build_tree(old, store.put)
        b, _ = tree.build_tree(new, store.put)
        expected = {p: (old.get(p), new.get(p)) for p in old.keys() | new.keys()
                    if old.get(p) != new.get(p)}
        got = {p: (x, y) for p, x, y in tree.diff_trees(a, b, store.get)}
        assert got == expected
    a, _ = tree.build_tree(big, store.put)
    b, _ = tree.build_tree({**big, "flat/f000123.bin": one}, store.put)
    reads: list[str] = []

    def counted(oid: str) -> bytes:
        reads.append(oid)
        return store.get(oid)

    assert [p for p, _x, _y in tree.diff_trees(a, b, counted)] == ["flat/f000123.bin"]
    # The roots, flat/'s top nodes, one inner node and one leaf on each side: not the
    # 256 leaves of a 20,000-entry directory.
    assert len(reads) <= 2 * 4, len(reads)


def test_a_draft_of_a_partly_pulled_version_is_never_a_pull_base(tmp_path: Path, dsv) -> None:
    """A version made from one pulled for some paths holds blobs this store never had:
    it stays promised once committed, so a later pull does not take it for a version
    held whole (and skip the blobs they share)."""
    alice, bob, remote = tmp_path / "alice", tmp_path / "bob", tmp_path / "remote"
    files = {**_files(1100), "sub/k.txt": b"keep"}
    _pushed(dsv, alice, remote, files)
    r = dsv("clone", remote, bob, "--dataset", "ds", "--path", "sub", cwd=tmp_path)
    assert r.code == 0, r.err
    (tmp_path / "extra.txt").write_bytes(b"extra")
    draft = dsv("versions", "create", "ds", "--from", "latest", "-m", "draft", cwd=bob)
    assert draft.code == 0, draft.err
    vid = draft.out.strip().rpartition(":")[2]
    assert dsv("files", "put", vid, tmp_path / "extra.txt", cwd=bob).code == 0
    assert dsv("versions", "commit", vid, cwd=bob).code == 0
    with dsv_api.open(bob) as store:
        assert store.core.index.promised().get(vid) == "origin"
    assert dsv("push", cwd=bob).code == 0
    assert dsv("pull", cwd=alice).code == 0
    (alice / "flat/alice3.png").write_bytes(b"alice3")
    assert dsv("commit", "-m", "v3", cwd=alice).code == 0
    assert dsv("push", cwd=alice).code == 0
    pulled = dsv("pull", "--no-checkout", "--json", cwd=bob)
    assert pulled.code == 0, pulled.err
    report = json.loads(pulled.out)
    assert vid not in report["based_on"], report
    assert report["objects_received"] >= 1100, report
    remote.rename(tmp_path / "away")  # everything v3 needs is in bob's store now
    assert dsv("checkout", "ds:latest", "--to", tmp_path / "out", cwd=bob).code == 0
    assert read_tree(tmp_path / "out") == {**files, "extra.txt": b"extra",
                                           "flat/alice3.png": b"alice3"}


def test_a_small_draft_of_a_partly_pulled_version_pushes_to_its_origin(
        tmp_path: Path, dsv) -> None:
    """A version of fewer files than a push compares (no base) made from one pulled for
    some paths: the blobs it never had are in the packs of the remote it came from, so
    a push there sends only what it added."""
    alice, bob, remote = tmp_path / "alice", tmp_path / "bob", tmp_path / "remote"
    files = {**_files(50), "sub/k.txt": b"keep"}
    _pushed(dsv, alice, remote, files)
    assert dsv("clone", remote, bob, "--dataset", "ds", "--path", "sub",
               cwd=tmp_path).code == 0
    (tmp_path / "extra.txt").write_bytes(b"extra")
    draft = dsv("versions", "create", "ds", "--from", "latest", "-m", "d", cwd=bob)
    vid = draft.out.strip().rpartition(":")[2]
    assert dsv("files", "put", vid, tmp_path / "extra.txt", cwd=bob).code == 0
    assert dsv("versions", "commit", vid, cwd=bob).code == 0
    # Another remote has none of them: nothing is pushed there.
    assert dsv("remote", "add", "other", tmp_path / "other", cwd=bob).code == 0
    elsewhere = dsv("push", "other", cwd=bob)
    assert elsewhere.code != 0 and "is not in this store" in elsewhere.err, elsewhere.err
    assert (remote / "refs").is_dir() and not (tmp_path / "other" / "refs").exists()
    r = dsv("push", "--json", cwd=bob)
    assert r.code == 0, r.err
    assert json.loads(r.out)["based_on"] == [], r.out
    assert dsv("pull", cwd=alice).code == 0
    assert read_tree(alice) == {**files, "extra.txt": b"extra"}


def test_verify_finds_a_lost_file_a_promised_draft_added(tmp_path: Path, dsv) -> None:
    """A draft of a version pulled for some paths is promised (the base's blobs are on
    the remote), but a file it added is on no remote: verify reports it lost, and still
    not the base's blobs it never had."""
    from dsv.hashing import hash_bytes
    alice, bob, remote = tmp_path / "alice", tmp_path / "bob", tmp_path / "remote"
    files = {**_files(1100), "sub/k.txt": b"keep"}
    _pushed(dsv, alice, remote, files)
    assert dsv("clone", remote, bob, "--dataset", "ds", "--path", "sub",
               cwd=tmp_path).code == 0
    big = bytes(range(256)) * 8192 + b"bob"  # stored loose
    (tmp_path / "big.bin").write_bytes(big)
    draft = dsv("versions", "create", "ds", "--from", "latest", "-m", "d", cwd=bob)
    vid = draft.out.strip().rpartition(":")[2]
    assert dsv("files", "put", vid, tmp_path / "big.bin", cwd=bob).code == 0
    assert dsv("versions", "commit", vid, cwd=bob).code == 0
    ok = dsv("verify", cwd=bob)
    assert ok.code == 0, ok.out + ok.err
    oid = hash_bytes(big)
    lost = [p for p in (bob / ".dsv/objects").rglob(oid) if p.is_file()]
    assert len(lost) == 1
    lost[0].unlink()
    r = dsv("verify", cwd=bob)
    assert r.code == 1, r.out + r.err
    assert f"file {oid[:12]} is missing" in r.out + r.err, r.out + r.err
    assert (r.out + r.err).count("is missing") == 1, r.out + r.err


def test_verify_reports_a_lost_tree_of_a_promised_draft(tmp_path: Path, dsv) -> None:
    """A tree of a version made here from a partly pulled one, gone from the store, is
    reported as missing (and verify goes on), not an error that stops it."""
    alice, bob, remote = tmp_path / "alice", tmp_path / "bob", tmp_path / "remote"
    write_tree(alice, {"a/sub/x.txt": b"a1", "a/y.txt": b"a2", "b/z.txt": b"b1"})
    assert dsv("init", "--name", "ds", alice, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "v1", cwd=alice).code == 0
    assert dsv("remote", "add", "origin", remote, cwd=alice).code == 0
    assert dsv("push", cwd=alice).code == 0
    assert dsv("clone", remote, bob, "--dataset", "ds", "--path", "a",
               cwd=tmp_path).code == 0
    packs = set((bob / ".dsv/objects").rglob("*.pack"))
    draft = dsv("versions", "create", "ds", "--from", "latest", "-m", "d", cwd=bob)
    vid = draft.out.strip().rpartition(":")[2]
    (tmp_path / "new.txt").write_bytes(b"new")
    assert dsv("files", "put", vid, tmp_path / "new.txt", cwd=bob).code == 0
    assert dsv("versions", "commit", vid, cwd=bob).code == 0
    assert dsv("verify", cwd=bob).code == 0
    with dsv_api.open(bob) as store:
        root = store.core.version(vid).tree
        pack_id = store.core.index.locate(root)[0]
    made = [p for p in set((bob / ".dsv/objects").rglob("*.pack")) - packs
            if p.name.startswith(pack_id)]
    assert len(made) == 1
    made[0].unlink()
    r = dsv("verify", cwd=bob)
    assert r.code == 1, r.out + r.err
    assert f"version {vid}: tree {root[:12]} is missing" in r.out + r.err, r.out + r.err


def test_a_commit_of_some_paths_on_a_promised_head_is_never_a_pull_base(
        tmp_path: Path, dsv) -> None:
    """`commit PATH` keeps the rest of the head: on a head that is only fetched (its
    blobs on the remote), the new versions are promised by the same remote, so a pull
    downloads what they name instead of taking them for versions held whole."""
    alice, bob, remote = tmp_path / "alice", tmp_path / "bob", tmp_path / "remote"
    files = {**_files(1100), "sub/k.txt": b"keep"}
    _pushed(dsv, alice, remote, files)
    assert dsv("init", "--bare", bob, cwd=tmp_path).code == 0
    assert dsv("remote", "add", "origin", remote, cwd=bob).code == 0
    assert dsv("fetch", cwd=bob).code == 0
    assert dsv("datasets", "update", "ds", "--path", "ds", cwd=bob).code == 0
    write_tree(bob / "ds", {"sub/k.txt": b"bob"})
    made = []
    for text in (b"bob", b"bob2"):
        (bob / "ds/sub/k.txt").write_bytes(text)
        r = dsv("commit", "sub/k.txt", "-m", text.decode(), cwd=bob / "ds")
        assert r.code == 0, r.err
        made.append(r.out.strip().rpartition(":")[2])
    with dsv_api.open(bob) as store:
        promised = store.core.index.promised()
    assert [promised.get(vid) for vid in made] == ["origin", "origin"], promised
    pulled = dsv("pull", "--no-checkout", "--json", cwd=bob)
    assert pulled.code == 0, pulled.err
    report = json.loads(pulled.out)
    assert report["based_on"] == [] and report["objects_received"] >= 1100, report
    remote.rename(tmp_path / "away")  # everything the latest needs is in bob's store now
    assert dsv("checkout", "ds:latest", "--to", tmp_path / "out", cwd=bob).code == 0
    assert read_tree(tmp_path / "out") == {**files, "sub/k.txt": b"bob2"}


def _push_after_loss(dsv, tmp_path: Path, remote: Path, bob: Path, path: str,
                     content: bytes = b"changed") -> tuple[dict, str]:
    """Clone dataset `ds` of `remote` as `bob`, reading that dataset only; lose the
    remote's blob packs; write `content` at `path`, commit and push: the push's JSON
    report and its stderr."""
    assert dsv("clone", remote, bob, "--dataset", "ds", cwd=tmp_path).code == 0
    assert _lose_blob_packs(remote) >= 1
    (bob / path).write_bytes(content)
    assert dsv("commit", "-m", "v2", cwd=bob).code == 0
    r = dsv("push", "--json", cwd=bob)
    assert r.code == 0, r.err
    return json.loads(r.out), r.err


def _lose_blob_packs(remote: Path) -> int:
    """Delete every pack (and its index) of directory remote `remote` that holds a blob,
    as a storage fault or a stray delete would; how many."""
    from dsv.objects import KIND_BLOB, parse_pack_index
    lost = 0
    for index in sorted((remote / "index").iterdir()):
        entries, _size = parse_pack_index(index.read_bytes(), index.name)
        if any(e.kind == KIND_BLOB for e in entries):
            index.unlink()
            (remote / "packs" / f"{index.name}.pack").unlink()
            lost += 1
    return lost


def test_a_push_never_compares_with_a_version_whose_packs_the_remote_lost(
        tmp_path: Path, dsv) -> None:
    """A remote that lost a pack (not by gc or maintain: those take it out of the
    catalogs first) no longer holds its versions whole: a later push of a child of one
    checks each object again and sends what was lost, so the ref it publishes is whole."""
    ws, remote = tmp_path / "ws", tmp_path / "remote"
    files = {**_files(1100), "only_b.txt": b"only in B"}
    write_tree(ws, files)
    assert dsv("init", "--name", "ds", ws, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "B", cwd=ws).code == 0
    with dsv_api.open(ws) as store:
        b = store.resolve("ds:latest").id
    assert dsv("remote", "add", "origin", remote, cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    assert _lose_blob_packs(remote) >= 1
    (ws / "only_b.txt").unlink()
    (ws / "flat/img00001.png").write_bytes(b"changed")
    assert dsv("commit", "-m", "V1", cwd=ws).code == 0
    v1 = json.loads(dsv("push", "--json", cwd=ws).out)
    assert v1["based_on"] == [], v1
    draft = dsv("versions", "create", "ds", "--from", b, "-m", "W", cwd=ws)
    vid = draft.out.strip().rpartition(":")[2]
    (tmp_path / "w.txt").write_bytes(b"w")
    assert dsv("files", "put", vid, tmp_path / "w.txt", cwd=ws).code == 0
    assert dsv("versions", "commit", vid, "--force", cwd=ws).code == 0
    r = dsv("push", "--force", "--json", cwd=ws)
    assert r.code == 0, r.err
    w = json.loads(r.out)
    assert w["based_on"] == [], w
    assert "lost 1 pack" in r.err and "ds" in r.err, r.err
    assert w["objects_sent"] >= 1, w   # only_b.txt, lost with B's pack
    assert dsv("clone", remote, tmp_path / "c", cwd=tmp_path).code == 0
    assert read_tree(tmp_path / "c") == {**files, "w.txt": b"w"}


def test_a_store_reading_one_dataset_never_compares_with_a_version_whose_packs_were_lost(
        tmp_path: Path, dsv) -> None:
    """A clone of one dataset lists no pack of the remote: before comparing with a
    version there, its push asks for the packs the dataset's catalog names, and one the
    remote lost makes it check (and send) every object, so the ref it publishes is whole."""
    alice, remote = tmp_path / "alice", tmp_path / "remote"
    files = {**_files(1100), "only_b.txt": b"only in B"}
    _pushed(dsv, alice, remote, files, "B")
    bob = tmp_path / "bob"
    report, err = _push_after_loss(dsv, tmp_path, remote, bob, "flat/img00001.png")
    assert report["based_on"] == [], report
    assert "lost 1 pack" in err, err
    assert report["objects_sent"] >= 1100, report
    # What only B held (img00001's old content) stays lost: V2 does not need it.
    check = dsv("verify", "--remote", "origin", cwd=bob)
    assert check.out.count("not on the remote") == 1, check.out + check.err
    assert dsv("clone", remote, tmp_path / "c", cwd=tmp_path).code == 0
    assert read_tree(tmp_path / "c") == {**files, "flat/img00001.png": b"changed"}


def test_a_store_reading_one_dataset_resends_what_a_lost_pack_held_without_a_base(
        tmp_path: Path, dsv) -> None:
    """A small version (no base to compare with) pushed from a clone of one dataset: the
    store asks for each pack it knows of first, and what a lost one held is sent again."""
    alice, remote = tmp_path / "alice", tmp_path / "remote"
    files = {f"d/f{i}.txt": b"f%d" % i for i in range(1, 4)}
    _pushed(dsv, alice, remote, files)
    bob = tmp_path / "bob"
    report, err = _push_after_loss(dsv, tmp_path, remote, bob, "d/f2.txt", b"new")
    assert "lost 1 pack" in err, err
    assert report["objects_sent"] >= 3, report   # f1, f3 again, and f2
    check = dsv("verify", "--remote", "origin", cwd=bob)
    # (only v1's old f2 stays lost: v2 does not need it)
    assert check.out.count("not on the remote") == 1, check.out + check.err
    assert dsv("clone", remote, tmp_path / "c", cwd=tmp_path).code == 0
    assert read_tree(tmp_path / "c") == {**files, "d/f2.txt": b"new"}


def test_a_push_never_compares_with_a_version_whose_large_file_the_remote_lost(
        tmp_path: Path, dsv) -> None:
    """A large (loose) file shared with the base that the remote lost is found when the
    push writes the locator of its directory: the push then checks every object, sends
    the file again, and only then moves the ref. (A store reading one dataset: one that
    pushed the file itself remembers it there and asks nothing, as before bases.)"""
    alice, remote = tmp_path / "alice", tmp_path / "remote"
    big = bytes(range(256)) * 8192  # 2 MiB: stored loose, below the chunking threshold
    files = {**_files(1100), "big.bin": big}
    _pushed(dsv, alice, remote, files)
    ws = tmp_path / "bob"
    assert dsv("clone", remote, ws, "--dataset", "ds", cwd=tmp_path).code == 0
    lost = [p for p in (remote / "loose").rglob("*") if p.is_file()]
    assert len(lost) == 1
    lost[0].unlink()
    (ws / "top.txt").write_bytes(b"new")
    assert dsv("commit", "-m", "v2", cwd=ws).code == 0
    r = dsv("push", "--json", cwd=ws)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["based_on"] == [], report
    assert "lacks object" in r.err, r.err
    assert lost[0].is_file() and lost[0].read_bytes() == big
    assert dsv("clone", remote, tmp_path / "c", cwd=tmp_path).code == 0
    assert read_tree(tmp_path / "c") == {**files, "top.txt": b"new"}


def test_versions_of_two_datasets_with_one_tree_each_get_a_whole_catalog(
        tmp_path: Path, dsv) -> None:
    """A push of two versions with the same root tree, one compared with a base of its
    own dataset, the other (another dataset) with none: the other dataset's catalog
    names every pack its version needs, so a clone of that dataset alone reads only it."""
    ws, remote = tmp_path / "ws", tmp_path / "remote"
    write_tree(ws / "zzz", _files(1100))
    assert dsv("init", "--bare", ws, cwd=tmp_path).code == 0
    assert dsv("datasets", "create", "zzz", "--path", "zzz", cwd=ws).code == 0
    assert dsv("datasets", "create", "aaa", cwd=ws).code == 0
    assert dsv("commit", "-m", "v0", cwd=ws / "zzz").code == 0
    assert dsv("remote", "add", "origin", remote, cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    (ws / "zzz/flat/img00001.png").write_bytes(b"changed")
    assert dsv("commit", "-m", "v1", cwd=ws / "zzz").code == 0
    assert dsv("versions", "create", "aaa", "--source-path", "zzz", "-m", "copy",
               cwd=ws).code == 0
    r = dsv("push", "--json", cwd=ws)
    assert r.code == 0, r.err
    assert len(json.loads(r.out)["based_on"]) == 1, r.out
    check = dsv("verify", "--remote", "origin", cwd=ws)
    assert check.code == 0 and "catalog" not in check.out + check.err, check.out + check.err
    c = dsv("clone", remote, tmp_path / "c", "--dataset", "aaa", cwd=tmp_path)
    assert c.code == 0 and "do not name everything" not in c.err, c.err


def test_a_locator_names_the_place_of_a_large_file_shared_with_the_base(
        tmp_path: Path, dsv) -> None:
    """A store that reads one dataset knows nothing of the remote's loose files; its push
    compares with the base and never looks at the large file they share, yet the new
    root's locator gives that file's place (a reader without a store finds it in one
    request, not by reading every pack index)."""
    from dsv.remotes import layout
    alice, bob, remote = tmp_path / "alice", tmp_path / "bob", tmp_path / "remote"
    big = os.urandom(3 << 20)
    write_tree(alice, {**_files(1100), "big.bin": big})
    assert dsv("init", "--name", "ds", alice, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "v1", cwd=alice).code == 0
    assert dsv("remote", "add", "origin", remote, cwd=alice).code == 0
    assert dsv("push", cwd=alice).code == 0
    assert dsv("clone", remote, bob, "--dataset", "ds", cwd=tmp_path).code == 0
    (bob / "top.txt").write_bytes(b"new")
    assert dsv("commit", "-m", "v2", cwd=bob).code == 0
    pushed = json.loads(dsv("push", "--json", cwd=bob).out)
    assert len(pushed["based_on"]) == 1, pushed
    with dsv_api.open(bob) as store:
        root = store.resolve("ds:latest").tree
    locator = layout.parse_locator((remote / layout.locator_key(root)).read_bytes(), root)
    assert locator.places[blake3.blake3(big).hexdigest()][0] is None  # loose, on the remote
    reader = dsv_api.open_remote(str(remote))
    reader.get(reader.resolve("ds:latest"), ["big.bin"], tmp_path / "got")
    assert (tmp_path / "got" / "big.bin").read_bytes() == big
