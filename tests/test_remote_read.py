"""Reading a remote with no store (issue 13): `dsv ls`, `dsv get`, `dsv cat`.

A push writes a locator (`loc/<oid>`) for each tree object and version record it sends:
the object's bytes and where each blob or chunk it names lies. A reader resolves a ref
from the remote's refs, walks the path one locator per step and reads the file by a
ranged GET, through the cluster cache when one is given. Every byte is checked; a
missing locator or a stale place falls back to the pack indexes; damage is reported,
never returned."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import Result, flip_byte, in_a_forked_child, read_tree, write_tree
from faultproxy import FaultProxy
from servers import b3, create_bucket, seaweedfs_endpoint  # noqa: F401
from dsv.errors import CorruptObject
from dsv.remotes import layout


def _ok(res: Result) -> Result:
    assert res.code == 0, res.err
    return res


def _workspace(tmp_path: Path, dsv, files: dict[str, bytes], name: str = "mldata") -> Path:
    ws = tmp_path / "ws"
    write_tree(ws, files)
    _ok(dsv("init", ws, "--name", name, cwd=tmp_path))
    _ok(dsv("commit", "-m", "first", cwd=ws))
    return ws


def _small(tmp_path: Path, dsv) -> tuple[Path, Path]:
    """A dataset of two versions (a symlink, an executable, a chunked file) pushed to a
    directory remote; v1.0 tags the first."""
    big = os.urandom(5 << 20)
    files = {"a.txt": b"alpha\n", "run.sh": b"#!/bin/sh\necho hi\n", "sub/b.bin": b"b" * 3000,
             "sub/deep/c.txt": b"c\n", "big.bin": big}
    ws = _workspace(tmp_path, dsv, files)
    os.chmod(ws / "run.sh", 0o755)
    os.symlink("sub/b.bin", ws / "link")
    _ok(dsv("commit", "-m", "with link", cwd=ws))
    _ok(dsv("tag", "mldata:latest", "v1.0", cwd=ws))
    write_tree(ws, {"a.txt": b"alpha two\n", "new.txt": b"new\n"})
    _ok(dsv("commit", "-m", "second", cwd=ws))
    remote = tmp_path / "remote"
    _ok(dsv("remote", "add", "origin", remote, cwd=ws))
    _ok(dsv("push", cwd=ws))
    return ws, remote


def test_push_writes_a_locator_for_every_tree_and_record(tmp_path, dsv):
    ws, remote = _small(tmp_path, dsv)
    from dsv import tree
    from dsv.store import Store
    store = Store.open(ws)
    core = store.core
    ds = core.index.dataset_by("name", "mldata")
    nodes = set()
    for v in core.index.versions(ds.id):
        nodes.add(v.record)
        nodes |= {oid for oid, _node in tree.distinct_trees(v.tree, core.read_tree)}
    store.close()
    for oid in nodes:
        raw = (remote / layout.locator_key(oid)).read_bytes()
        loc = layout.parse_locator(raw, oid)
        assert b3(loc.data) == oid
    # a directory's locator places each of its files' blobs, where the pack holds them
    root = json.loads(_ok(dsv("files", "list", "mldata:v1.0", "--path", "sub", "--json",
                              cwd=ws)).out)
    sub_tree = [r for r in json.loads(_ok(dsv("files", "list", "mldata:v1.0", "--json",
                                              cwd=ws)).out) if r["path"] == "sub"][0]["hash"]
    loc = layout.parse_locator((remote / layout.locator_key(sub_tree)).read_bytes(), sub_tree)
    blob = [r for r in root if r["path"] == "sub/b.bin"][0]["hash"]
    pack, offset, length = loc.places[blob]
    with open(remote / layout.pack_key(pack), "rb") as f:
        f.seek(offset)
        assert f.read(length) == b"b" * 3000


def test_ls_get_and_cat_without_a_store(tmp_path, dsv):
    ws, remote = _small(tmp_path, dsv)
    listed = json.loads(_ok(dsv("ls", remote, "--json", cwd=tmp_path)).out)
    assert [d["name"] for d in listed] == ["mldata"] and list(listed[0]["tags"]) == ["v1.0"]
    versions = json.loads(_ok(dsv("ls", remote, "mldata", "--json", cwd=tmp_path)).out)
    assert [v["message"] for v in versions] == ["second", "with link", "first"]
    assert versions[1]["tags"] == ["v1.0"]
    files = json.loads(_ok(dsv("ls", remote, "mldata:v1.0", "--json", "-r",
                               cwd=tmp_path)).out)
    assert {f["path"] for f in files} == {"a.txt", "run.sh", "sub/b.bin", "sub/deep/c.txt",
                                         "big.bin", "link"}
    assert [f for f in files if f["path"] == "big.bin"][0]["hash"] == \
        b3((ws / "big.bin").read_bytes())
    top = json.loads(_ok(dsv("ls", remote, "mldata:latest", "sub", "--json",
                             cwd=tmp_path)).out)
    assert [(f["path"], f["type"]) for f in top] == [("sub/b.bin", "file"), ("sub/deep", "dir")]

    # get: the whole of v1.0 (by tag, by version prefix, by ~1) is the committed tree
    expected = {k: v for k, v in read_tree(ws).items() if k not in ("new.txt", "a.txt")}
    expected["a.txt"] = b"alpha\n"
    for ref in ("mldata:v1.0", f"mldata:{versions[1]['id'][:6]}", "mldata:latest~1"):
        out = tmp_path / f"got-{ref.replace(':', '_').replace('~', '_')}"
        _ok(dsv("get", remote, ref, "--to", out, cwd=tmp_path))
        assert read_tree(out) == expected
        assert os.readlink(out / "link") == "sub/b.bin"
        assert os.stat(out / "run.sh").st_mode & 0o111 and \
            not os.stat(out / "a.txt").st_mode & 0o111
    part = tmp_path / "part"
    _ok(dsv("get", remote, "mldata:latest", "sub/deep", "new.txt", "--to", part, cwd=tmp_path))
    assert read_tree(part) == {"sub/deep/c.txt": b"c\n", "new.txt": b"new\n"}

    res = _ok(dsv("cat", remote, "mldata:latest", "a.txt", cwd=tmp_path))
    assert res.out == "alpha two\n"
    for ref, path, why in (("mldata:latest", "nope.txt", "nope.txt is not in version"),
                           ("mldata:latest", "sub", "sub is not a file"),
                           ("other:latest", "a.txt", "no dataset named 'other'"),
                           ("mldata:v9", "a.txt", "matches no tag or version")):
        res = dsv("cat", remote, ref, path, cwd=tmp_path)
        assert res.code == 1 and why in res.err and res.out == "", res.err


def test_cat_of_a_chunked_file_streams_checked_chunks(tmp_path, dsv):
    ws, remote = _small(tmp_path, dsv)
    import dsv as api
    reader = api.open_remote(str(remote))
    v = reader.resolve("mldata:v1.0")
    assert b"".join(reader.cat(v, "big.bin")) == (ws / "big.bin").read_bytes()
    entry = dict(reader.entries(v, "big.bin"))["big.bin"]
    f = reader.open(entry)
    f.seek(3_000_000)
    assert f.read(5000) == (ws / "big.bin").read_bytes()[3_000_000:3_005_000]


def test_a_sequential_read_asking_a_little_out_of_order_reads_each_byte_once(tmp_path, dsv):
    """Reads in flight arrive out of order (the kernel's read-ahead through a mount): a
    read a few MiB behind the furthest one is still part of the sequential read, so the
    file's bytes are fetched about once, not again after each step back."""
    data = os.urandom(24 << 20)
    ws = _workspace(tmp_path, dsv, {"big.bin": data})
    remote = tmp_path / "remote"
    _ok(dsv("remote", "add", "origin", remote, cwd=ws))
    _ok(dsv("push", cwd=ws))
    import dsv as api
    reader = api.open_remote(str(remote))
    v = reader.resolve("mldata:latest")
    entry = dict(reader.entries(v, "big.bin"))["big.bin"]
    fetched = []
    get_range = reader.backend.get_range
    reader.backend.get_range = lambda key, start, n: fetched.append(n) or get_range(key, start, n)
    f = reader.open(entry)
    block = 128 << 10
    offsets = list(range(0, len(data), block))
    for i in range(0, len(offsets) - 24, 24):  # every 3 MiB, a step back of 2.5 MiB
        offsets[i + 23], offsets[i + 3] = offsets[i + 3], offsets[i + 23]
    for offset in offsets:
        f.seek(offset)
        assert f.read(block) == data[offset:offset + block], offset
    assert sum(fetched) <= len(data) * 1.1, (sum(fetched), len(data))


def test_a_remote_without_locators_is_read_by_its_pack_indexes(tmp_path, dsv):
    """Pushed by an older dsv (no `loc/`), or its locators lost: the reader reads the
    dataset's catalog and pack indexes instead."""
    ws, remote = _small(tmp_path, dsv)
    shutil.rmtree(remote / "loc")
    out = tmp_path / "out"
    _ok(dsv("get", remote, "mldata:v1.0", "sub", "big.bin", "--to", out, cwd=tmp_path))
    assert read_tree(out) == {"sub/b.bin": b"b" * 3000, "sub/deep/c.txt": b"c\n",
                              "big.bin": (ws / "big.bin").read_bytes()}


def test_stale_and_forged_places_fall_back_and_damage_is_never_returned(tmp_path, dsv):
    ws, remote = _small(tmp_path, dsv)
    files = {f["path"]: f for f in json.loads(_ok(dsv("files", "list", "mldata:latest",
                                                      "--json", cwd=ws)).out)}
    root_tree = json.loads(_ok(dsv("versions", "details", "mldata:latest", "--json",
                                   cwd=ws)).out)["tree"]
    key = remote / layout.locator_key(root_tree)
    loc = layout.parse_locator(key.read_bytes(), root_tree)
    blob = files["a.txt"]["hash"]
    pack, offset, length = loc.places[blob]
    # A place that names other bytes (a maintainer moved the object, or a forger): the
    # reader checks what it read, then looks the object up in the pack indexes.
    forged = dict(loc.places)
    forged[blob] = (pack, offset + 1, length)
    os.chmod(key, 0o644)
    key.write_bytes(layout.encode_locator(loc.data, forged))
    res = _ok(dsv("cat", remote, "mldata:latest", "a.txt", cwd=tmp_path))
    assert res.out == "alpha two\n"
    # A locator whose object is not the one its name says: a warning, then the pack indexes.
    key.write_bytes(layout.encode_locator(b'{"entries":[],"type":"tree","v":1}', {}))
    res = _ok(dsv("cat", remote, "mldata:latest", "a.txt", cwd=tmp_path))
    assert res.out == "alpha two\n" and "damaged" in res.err
    # The object itself damaged in its pack: an error, and nothing written under its name.
    flip_byte(remote / layout.pack_key(pack), offset)
    res = dsv("cat", remote, "mldata:latest", "a.txt", cwd=tmp_path)
    assert res.code == 1 and res.out == "" and "damaged" in res.err, res.err
    out = tmp_path / "out"
    res = dsv("get", remote, "mldata:latest", "a.txt", "new.txt", "--to", out, cwd=tmp_path)
    assert res.code == 1 and not (out / "a.txt").exists()


def test_a_locator_padded_with_places_its_objects_do_not_name_is_damage(tmp_path, dsv):
    """A reader keeps every place it learns: a locator padded with 200,000 places of
    objects its tree does not name held ~70 MB each (six took a `get` past 1 GB). More
    places than its objects can name (64 hex digits each) is damage: a warning, then
    the object by the pack indexes, and the right bytes."""
    ws, remote = _small(tmp_path, dsv)
    root_tree = json.loads(_ok(dsv("versions", "details", "mldata:latest", "--json",
                                   cwd=ws)).out)["tree"]
    key = remote / layout.locator_key(root_tree)
    loc = layout.parse_locator(key.read_bytes(), root_tree)
    (pack, _offset, _length) = next(p for p in loc.places.values() if p[0] is not None)
    padded = dict(loc.places)
    padded.update((os.urandom(32).hex(), (pack, i, 100)) for i in range(200_000))
    os.chmod(key, 0o644)
    key.write_bytes(layout.encode_locator(loc.data, padded))
    with pytest.raises(CorruptObject, match="damaged"):
        layout.parse_locator(key.read_bytes(), root_tree)
    res = _ok(dsv("cat", remote, "mldata:latest", "a.txt", cwd=tmp_path))
    assert res.out == "alpha two\n"
    assert f"locator of {root_tree[:12]} on the remote is damaged" in res.err, res.err


def test_a_damaged_file_read_ahead_with_its_neighbours_costs_only_itself(tmp_path, dsv):
    """Files opened in order through dsv:// are read a window at a time: a damaged one
    in the window fails its own open, never its neighbours', and gives no byte."""
    files = {f"img/{i:02d}.bin": os.urandom(500 + i) for i in range(40)}
    ws = _workspace(tmp_path, dsv, files)
    remote = tmp_path / "remote"
    _ok(dsv("remote", "add", "origin", remote, cwd=ws))
    _ok(dsv("push", cwd=ws))
    import dsv as api
    reader = api.open_remote(str(remote))
    v = reader.resolve("mldata:latest")
    damaged = "img/13.bin"
    oid = dict(reader.entries(v, damaged))[damaged].oid
    img = next(row.oid for row in reader.files(v) if row.path == "img")
    places = layout.parse_locator((remote / layout.locator_key(img)).read_bytes(), img).places
    pack, offset, _length = places[oid]
    flip_byte(remote / layout.pack_key(pack), offset + 3)

    from dsv.errors import CorruptObject
    from dsv.fs import DsvFileSystem
    fs = DsvFileSystem(remote=str(remote), skip_instance_cache=True)
    for rel, data in sorted(files.items()):
        if rel == damaged:
            with pytest.raises(CorruptObject):
                fs.open(f"mldata:latest/{rel}")
            continue
        with fs.open(f"mldata:latest/{rel}") as f:
            assert f.read() == data, rel


def test_a_damaged_cache_entry_is_read_again_from_the_origin(tmp_path, dsv):
    ws, remote = _small(tmp_path, dsv)
    cache = tmp_path / "cache"
    _ok(dsv("get", remote, "mldata:latest", "sub/b.bin", "--to", tmp_path / "one",
            "--cache", cache, cwd=tmp_path))
    blob = b3(b"b" * 3000)
    entry = cache / "loose" / blob[:2] / blob
    assert entry.read_bytes() == b"b" * 3000
    flip_byte(entry, 10)
    _ok(dsv("get", remote, "mldata:latest", "sub/b.bin", "--to", tmp_path / "two",
            "--cache", cache, cwd=tmp_path))
    assert (tmp_path / "two" / "sub" / "b.bin").read_bytes() == b"b" * 3000
    assert entry.read_bytes() == b"b" * 3000  # filled again with good bytes


@pytest.mark.parametrize("damage", ["flipped", "truncated", "sparse"])
def test_a_damaged_cache_entry_of_a_large_file_is_read_again_from_the_origin(tmp_path, dsv,
                                                                            damage):
    """A file over PACK_THRESHOLD and not chunked is a loose object, streamed from the
    cache: a damaged entry costs a download (and is filled again), never the read."""
    remote, cache, data, entry = _cached_big_file(tmp_path, dsv)

    def damage_entry() -> None:
        if damage == "flipped":
            flip_byte(entry, 1 << 20)
        elif damage == "truncated":
            os.truncate(entry, 1000)
        else:
            os.truncate(entry, 1 << 40)  # a huge sparse file: never read to its end

    damage_entry()
    res = dsv("get", remote, "mldata:latest", "--to", tmp_path / "two", "--cache", cache,
              cwd=tmp_path)
    assert res.code == 0, res.err
    assert (tmp_path / "two" / "big.bin").read_bytes() == data
    assert entry.read_bytes() == data  # filled again with good bytes
    damage_entry()  # (what `cat`, dsv:// and mounts read through)
    import dsv as api
    reader = api.open_remote(str(remote), cache=cache)
    assert b"".join(reader.cat(reader.resolve("mldata:latest"), "big.bin")) == data


def _workload(root: Path) -> bytes:
    """The 20,000-file workload's shape (100 directories of 200 files) with tiny files,
    and one 8 KiB file: what a reader of one file pays does not depend on the others'
    sizes."""
    target = os.urandom(8192)
    for d in range(100):
        folder = root / f"d{d:03d}"
        folder.mkdir(parents=True)
        for i in range(200):
            (folder / f"f{i:03d}.bin").write_bytes(f"{d}/{i}\n".encode() * 8)
    (root / "d042" / "f117.bin").write_bytes(target)
    return target


@pytest.mark.slow
def test_get_of_one_file_of_20000_through_s3_and_a_shared_cache(tmp_path, dsv, s3_endpoint,
                                                               aws_env):
    ws = tmp_path / "ws"
    target = _workload(ws)
    _ok(dsv("init", ws, "--name", "mldata", cwd=tmp_path))
    _ok(dsv("commit", "-m", "workload", cwd=ws))
    _ok(dsv("tag", "mldata:latest", "v1.0", cwd=ws))
    bucket = f"dsv-read-{os.urandom(6).hex()}"
    create_bucket(s3_endpoint, bucket)
    url = f"s3://{bucket}/data"
    _ok(dsv("remote", "add", "origin", url, "--endpoint-url", s3_endpoint, cwd=ws))
    _ok(dsv("push", cwd=ws))

    cache = tmp_path / "cache"
    with FaultProxy(s3_endpoint) as proxy:
        _ok(dsv("get", url, "mldata:v1.0", "d042/f117.bin", "--to", tmp_path / "node1",
                "--endpoint-url", proxy.url, "--cache", cache, cwd=tmp_path))
        log = list(proxy.log)
        assert proxy.requests <= 10, log
        assert proxy.body_bytes <= 1 << 20, (proxy.body_bytes, log)
    assert (tmp_path / "node1" / "d042" / "f117.bin").read_bytes() == target
    assert os.listdir(tmp_path / "node1") == ["d042"]

    # Another machine sharing the cache: refs from the origin, no object data.
    with FaultProxy(s3_endpoint) as proxy:
        _ok(dsv("get", url, "mldata:v1.0", "d042/f117.bin", "--to", tmp_path / "node2",
                "--endpoint-url", proxy.url, "--cache", cache, cwd=tmp_path))
        objects = [t for _m, t, _w in proxy.log
                   if any(f"/{p}" in t for p in ("packs/", "loc/", "loose/", "index/"))]
        assert objects == [], proxy.log
    assert (tmp_path / "node2" / "d042" / "f117.bin").read_bytes() == target

    # The endpoint down (nothing listens on the port): the cache still serves it.
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    res = _ok(dsv("get", url, "mldata:v1.0", "d042/f117.bin", "--to", tmp_path / "node3",
                  "--endpoint-url", dead, "--cache", cache, cwd=tmp_path))
    assert "cannot reach" in res.err
    assert (tmp_path / "node3" / "d042" / "f117.bin").read_bytes() == target


def test_verify_remote_reads_locators_and_repair_deletes_a_damaged_one(tmp_path, dsv):
    ws, remote = _small(tmp_path, dsv)
    tree_id = json.loads(_ok(dsv("versions", "details", "mldata:latest", "--json",
                                 cwd=ws)).out)["tree"]
    key = remote / layout.locator_key(tree_id)
    os.chmod(key, 0o644)
    key.write_bytes(key.read_bytes()[:-3])
    report = json.loads(_ok(dsv("verify", "--remote", "origin", "--read-data", "--json",
                                cwd=ws)).out)
    assert report["ok"] is True, report
    assert any(tree_id[:12] in w and "damaged" in w for w in report["warnings"]), report
    report = json.loads(_ok(dsv("verify", "--remote", "origin", "--read-data", "--repair",
                                "--json", cwd=ws)).out)
    assert any(tree_id[:12] in r for r in report["repaired"]) and not key.exists(), report
    res = _ok(dsv("cat", remote, "mldata:latest", "a.txt", cwd=tmp_path))
    assert res.out == "alpha two\n"


def _pushed_to_a_volume(tmp_path: Path, dsv, files: dict[str, bytes]) -> Path:
    """`files` committed and pushed to a directory remote at MOUNT/remote; MOUNT (which
    a test may take away, as a volume that is gone)."""
    ws = _workspace(tmp_path, dsv, files)
    mount = tmp_path / "mnt"
    mount.mkdir()
    _ok(dsv("remote", "add", "origin", mount / "remote", cwd=ws))
    _ok(dsv("push", cwd=ws))
    return mount


def test_an_unreachable_origin_leaves_what_the_cache_holds_readable(tmp_path, dsv):
    """The origin's volume is gone: with the cache, refs are those it last saw there,
    files it holds are read and checked as ever; a file it lacks fails with one line."""
    files = {"a.txt": b"alpha\n", "sub/b.txt": b"beta\n", "c.txt": b"gamma\n"}
    mount = _pushed_to_a_volume(tmp_path, dsv, files)
    cache = tmp_path / "cache"
    _ok(dsv("get", mount / "remote", "mldata:latest", "a.txt", "sub", "--to",
            tmp_path / "one", "--cache", cache, cwd=tmp_path))
    mount.rename(tmp_path / "elsewhere")

    res = _ok(dsv("get", mount / "remote", "mldata:latest", "a.txt", "sub", "--to",
                  tmp_path / "two", "--cache", cache, cwd=tmp_path))
    assert "does not exist" in res.err and "as the cluster cache saw them" in res.err
    assert read_tree(tmp_path / "two") == {"a.txt": b"alpha\n", "sub/b.txt": b"beta\n"}
    res = dsv("cat", mount / "remote", "mldata:latest", "c.txt", "--cache", cache,
              cwd=tmp_path)
    assert res.code == 1 and res.out == "" and "not in the cluster cache" in res.err, res.err
    # Without the cache, the same read fails at once.
    res = dsv("cat", mount / "remote", "mldata:latest", "a.txt", cwd=tmp_path)
    assert res.code == 1 and "does not exist" in res.err
    # A saved ref file that is not one (planted, cut short) is no ref at all.
    saved = next((cache / "refs").iterdir())
    saved.write_bytes(b'{"refs": {"refs/x/latest": ["%%%", 1]}, "saved": 1}')
    res = dsv("cat", mount / "remote", "mldata:latest", "a.txt", "--cache", cache,
              cwd=tmp_path)
    assert res.code == 1 and "does not exist" in res.err, res.err


@pytest.mark.parametrize("saved", ["1e300", "-1e300", "1e20", "NaN", "Infinity"])
def test_saved_refs_of_a_time_out_of_range_are_no_refs(tmp_path, dsv, saved):
    """A saved ref file in the cache (planted, or written by a broken clock) whose time
    cannot be shown is no ref at all: the origin's own error, never a bug in dsv."""
    mount = _pushed_to_a_volume(tmp_path, dsv, {"a.txt": b"alpha\n"})
    cache = tmp_path / "cache"
    _ok(dsv("ls", mount / "remote", "mldata:latest", "--cache", cache, cwd=tmp_path))
    mount.rename(tmp_path / "elsewhere")
    path = next((cache / "refs").iterdir())
    body = path.read_text()
    path.write_text(body.replace(f'"saved": {json.loads(body)["saved"]!r}',
                                 f'"saved": {saved}'))
    assert json.loads(path.read_text())["refs"]  # (the refs themselves are good)
    res = dsv("ls", mount / "remote", "mldata:latest", "--cache", cache, cwd=tmp_path)
    assert res.code == 1 and "does not exist" in res.err, res.err
    assert "bug in dsv" not in res.err and "Error" not in res.err


def test_files_read_ahead_the_cache_lacks_cost_nothing_with_the_origin_down(tmp_path, dsv):
    """A file the cluster cache holds opens with the origin down even when it is opened in
    order after another: the neighbours read ahead with it, which the cache lacks (and
    the origin cannot give), are left for their own opens."""
    files = {f"img/{i:02d}.bin": os.urandom(300 + i) for i in range(8)}
    mount = _pushed_to_a_volume(tmp_path, dsv, files)
    cache = tmp_path / "cache"
    from dsv.errors import MissingObject
    from dsv.fs import DsvFileSystem

    def fs() -> DsvFileSystem:
        return DsvFileSystem(remote=str(mount / "remote"), cache=str(cache),
                             skip_instance_cache=True)
    first = fs()
    for rel in ["img/01.bin", "img/00.bin"]:   # (out of order: read one by one)
        with first.open(f"mldata:latest/{rel}") as f:
            assert f.read() == files[rel]
    mount.rename(tmp_path / "elsewhere")
    offline = fs()
    for rel in ["img/00.bin", "img/01.bin"]:   # in order: 01 with 02 ahead of it
        with offline.open(f"mldata:latest/{rel}") as f:
            assert f.read() == files[rel], rel
    with pytest.raises(MissingObject):
        offline.open("mldata:latest/img/02.bin")


def test_clone_of_some_paths_without_checkout_and_through_a_cache(tmp_path, dsv,
                                                                  monkeypatch):
    ws, remote = _small(tmp_path, dsv)
    part = tmp_path / "part"
    _ok(dsv("clone", remote, part, "--path", "sub", "--path", "big.bin", cwd=tmp_path))
    assert read_tree(part) == {"sub/b.bin": b"b" * 3000, "sub/deep/c.txt": b"c\n",
                               "big.bin": (ws / "big.bin").read_bytes()}
    report = json.loads(_ok(dsv("verify", "--json", cwd=part)).out)
    assert report["ok"] is True, report
    # the other files were not downloaded: reading one fetches it then
    res = _ok(dsv("files", "get", "mldata:latest", "a.txt", "--target-path", tmp_path / "x",
                  cwd=part))
    assert (tmp_path / "x" / "a.txt").read_bytes() == b"alpha two\n", res.err

    bare = tmp_path / "bare"
    _ok(dsv("clone", remote, bare, "--no-checkout", cwd=tmp_path))
    assert sorted(os.listdir(bare)) == [".dsv"]
    _ok(dsv("checkout", "mldata:v1.0", cwd=bare))
    assert (bare / "a.txt").read_bytes() == b"alpha\n"

    cache = tmp_path / "cache"
    one = tmp_path / "one"
    _ok(dsv("clone", remote, one, "--cache", cache, cwd=tmp_path))
    remotes = json.loads(_ok(dsv("remote", "list", "--json", cwd=one)).out)
    assert {(r["name"], r["kind"]) for r in remotes} == {("origin", "origin"),
                                                         ("cache", "cache")}
    assert os.listdir(cache / "packs")  # the clone's first download filled the cache
    # A second machine sharing the cache reads no object data from the origin.
    from dsv.remotes.fs import FsBackend
    read: list[str] = []
    for name in ("get", "get_range", "download"):
        real = getattr(FsBackend, name)

        def spy(self, key, *args, _real=real, **kwargs):
            read.append(key)
            return _real(self, key, *args, **kwargs)
        monkeypatch.setattr(FsBackend, name, spy)
    two = tmp_path / "two"
    _ok(dsv("clone", remote, two, "--cache", cache, cwd=tmp_path))
    assert read_tree(two) == read_tree(one)
    assert not [k for k in read if k.startswith(("packs/", "loose/"))], read
    assert any(k.startswith("index/") for k in read)  # (the spy saw the clone's reads)
    monkeypatch.undo()
    res = dsv("clone", remote, tmp_path / "three", "--path", "nowhere", cwd=tmp_path)
    assert res.code == 1 and "none of nowhere" in res.err and \
        not (tmp_path / "three").exists(), res.err


@pytest.mark.slow
def test_readers_racing_to_fill_one_cache_on_seaweedfs(tmp_path, dsv, seaweedfs_endpoint,
                                                       aws_env):
    """Four machines' readers start at once with one empty cache (each `dsv get` of the
    whole version, one `dsv cat` of the chunked file): every one gets exactly the
    version's bytes, and every entry the cache ends with is whole and checks out."""
    import subprocess
    import sys
    ws, _remote = _small(tmp_path, dsv)
    bucket = f"dsv-race-{os.urandom(6).hex()}"
    create_bucket(seaweedfs_endpoint, bucket)
    url = f"s3://{bucket}/data"
    _ok(dsv("remote", "add", "sw", url, "--endpoint-url", seaweedfs_endpoint, cwd=ws))
    _ok(dsv("push", "sw", cwd=ws))
    cache = tmp_path / "cache"
    base = [sys.executable, "-m", "dsv"]
    common = ["--endpoint-url", seaweedfs_endpoint, "--cache", str(cache)]
    procs = [subprocess.Popen(base + ["get", url, "mldata:v1.0", "--to",
                                      str(tmp_path / f"m{i}"), *common],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(4)]
    procs.append(subprocess.Popen(base + ["cat", url, "mldata:latest", "big.bin", *common],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert all(code == 0 for _o, _e, code in results), [e for _o, e, _c in results]
    expected = {k: v for k, v in read_tree(ws).items() if k not in ("new.txt", "a.txt")}
    expected["a.txt"] = b"alpha\n"
    for i in range(4):
        assert read_tree(tmp_path / f"m{i}") == expected
    assert results[4][0] == (ws / "big.bin").read_bytes()
    entries = [p for p in (cache / "loose").rglob("*") if p.is_file()]
    assert entries and all(b3(p.read_bytes()) == p.name for p in entries)
    for p in (cache / "loc").rglob("*"):
        if p.is_file():
            layout.parse_locator(p.read_bytes(), p.name)  # whole, and its object checks out
    assert not [p for p in (cache / "tmp").iterdir()]  # no fill left half-done


def test_a_large_unchunked_file_is_checked_whole_before_it_is_read(tmp_path, dsv):
    """Files of 1-4 MiB are loose objects: `open` and `cat` put one aside and check it
    whole first, so a damaged one gives no byte at all."""
    data = os.urandom(2 << 20)
    ws = _workspace(tmp_path, dsv, {"mid.bin": data})
    remote = tmp_path / "remote"
    _ok(dsv("remote", "add", "origin", remote, cwd=ws))
    _ok(dsv("push", cwd=ws))
    import dsv as api
    reader = api.open_remote(str(remote))
    v = reader.resolve("mldata:latest")
    entry = dict(reader.entries(v))["mid.bin"]
    assert not entry.chunks
    with reader.open(entry) as f:
        f.seek(1 << 20)
        assert f.read(100) == data[1 << 20:(1 << 20) + 100]
    loose = remote / layout.loose_key(b3(data))
    flip_byte(loose, 12345)
    res = dsv("cat", remote, "mldata:latest", "mid.bin", cwd=tmp_path)
    assert res.code == 1 and res.out == "" and "damaged" in res.err, res.err
    with pytest.raises(api.DsvError):
        api.open_remote(str(remote)).open(entry)


def test_get_refuses_links_that_escape_through_each_other(tmp_path, dsv):
    """A version (as a hostile pusher can write one) whose links each look inside the
    dataset but escape through one another: `get` places none of them."""
    from dsv import tree as trees
    from dsv.hashing import hash_bytes
    from dsv.objects import KIND_BLOB, Ingest
    from dsv.store import Store
    from dsv.versions import commit_manifest
    ws = _workspace(tmp_path, dsv, {"a.txt": b"alpha\n"})
    store = Store.open(ws)
    core = store.core
    targets = {"d/l": b".", "e": b"d/l/../.."}
    with core.locked("test"), Ingest(core.objects) as ingest:
        for data in targets.values():
            ingest.add(hash_bytes(data), KIND_BLOB, data)
        core.commit_objects(ingest, lambda: None)
    manifest = {p: trees.Entry(trees.LINK, 0o777, len(t), hash_bytes(t))
                for p, t in targets.items()}
    manifest["a.txt"] = trees.Entry(trees.FILE, 0o644, 6, hash_bytes(b"alpha\n"))
    commit_manifest(core, "mldata", manifest, "hostile")
    store.close()
    remote = tmp_path / "remote"
    _ok(dsv("remote", "add", "origin", remote, cwd=ws))
    _ok(dsv("push", cwd=ws))
    out = tmp_path / "out"
    res = dsv("get", remote, "mldata:latest", "--to", out, cwd=tmp_path)
    assert res.code == 1 and "e" in res.err, res.err
    assert not os.path.lexists(out / "e") and not os.path.lexists(out / "d" / "l")


def test_a_sharded_directory_costs_one_locator_that_carries_its_leaf_shards(
        tmp_path, dsv, monkeypatch):
    """A leaf shard of a big directory has no locator of its own: its parent's carries it
    (one upload per directory, not one per shard). A reader walks the directory through
    those locators alone, also after it let the leaves go, and never needs the pack
    indexes; a carried leaf that is not what its id says is refused."""
    from dsv import tree
    from dsv.sync import reader as reader_mod
    monkeypatch.setattr(tree, "SHARD_ENTRIES", 6)  # 120 names: leaves, and shards of shards
    files = {f"big/{i:03d}.txt": f"file {i}\n".encode() for i in range(120)}
    files["top.txt"] = b"top\n"
    ws = _workspace(tmp_path, dsv, files)
    remote = tmp_path / "remote"
    _ok(dsv("remote", "add", "origin", remote, cwd=ws))
    _ok(dsv("push", cwd=ws))
    import dsv as api
    from dsv.store import Store
    store = Store.open(ws)
    core = store.core
    version = core.index.versions(core.index.dataset_by("name", "mldata").id)[0]
    nodes = dict(tree.distinct_trees(version.tree, core.read_tree))
    store.close()
    leaves = {oid for oid, node in nodes.items() if node.prefix and not node.shards}
    carriers = {oid: node for oid, node in nodes.items() if node.shards}
    assert leaves and carriers and any(
        c in carriers for node in carriers.values() for _d, c in node.shards)
    written = {p.name for p in (remote / "loc").iterdir()}
    assert written == (set(nodes) - leaves) | {version.record}
    carried: set[str] = set()
    for oid, node in carriers.items():
        loc = layout.parse_locator((remote / layout.locator_key(oid)).read_bytes(), oid)
        assert set(loc.nodes) == {c for _d, c in node.shards if c in leaves}
        carried |= set(loc.nodes)
        for leaf in loc.nodes:  # and it places the files of the leaves it carries
            for name, _k, _m, size, blob, _c in nodes[leaf].rows:
                pack, offset, length = loc.places[blob]
                assert length == size
                with open(remote / layout.pack_key(pack), "rb") as f:
                    f.seek(offset)
                    assert f.read(length) == files[f"big/{name}"]
    assert carried == leaves

    monkeypatch.setattr(reader_mod, "NODES_KEPT", 1)  # every node let go once read
    reader = api.open_remote(str(remote))
    v = reader.resolve("mldata:latest")
    got = {row.path: b"".join(reader.cat(v, row.path))
           for row in reader.files(v, recursive=True) if row.path.startswith("big/")}
    assert got == {k: v for k, v in files.items() if k.startswith("big/")}
    assert reader._picture is None  # (no locator was missing: no pack index was read)

    # A locator carrying a leaf whose bytes are not its id's: damaged, never used.
    top = next(oid for oid, node in carriers.items() if node.prefix == "" and
               any(c in leaves for _d, c in node.shards))
    key = remote / layout.locator_key(top)
    loc = layout.parse_locator(key.read_bytes(), top)
    leaf = sorted(loc.nodes)[0]
    forged = dict(loc.nodes)
    forged[leaf] = loc.nodes[leaf].replace(b"txt", b"bin", 1)
    with pytest.raises(Exception, match="damaged"):
        layout.parse_locator(layout.encode_locator(loc.data, loc.places, forged), top)
    os.chmod(key, 0o644)
    key.write_bytes(layout.encode_locator(loc.data, loc.places, forged))
    res = _ok(dsv("get", remote, "mldata:latest", "big", "--to", tmp_path / "out",
                  cwd=tmp_path))
    assert "damaged" in res.err
    assert read_tree(tmp_path / "out") == {k: v for k, v in files.items()
                                           if k.startswith("big/")}


@pytest.mark.parametrize("how", ["get", "cat", "open"])
def test_a_large_cache_entry_changed_in_place_while_read_costs_nothing(tmp_path, dsv,
                                                                       monkeypatch, how):
    """The owner of a cache entry of a loose object rewrites it in place (same inode,
    same size) just after dsv has read it: the bytes dsv returns are the ones it read
    and checked, never a second read's. (A check, then a second read that was returned,
    failed `dsv get` with "did not arrive whole".)"""
    import dsv.sync.reader as reader_module
    remote, cache, data, entry = _cached_big_file(tmp_path, dsv)
    real = reader_module.pieces_at_most
    rewrites = []

    def then_rewritten(fd: int, size: int, *args: int):
        yield from real(fd, size, *args)
        if os.readlink(f"/proc/self/fd/{fd}") == str(entry):
            with open(entry, "r+b") as f:  # (in place: the open fd sees it)
                f.write(os.urandom(4096))
            rewrites.append(fd)
    monkeypatch.setattr(reader_module, "pieces_at_most", then_rewritten)
    if how == "get":
        res = dsv("get", remote, "mldata:latest", "--to", tmp_path / "two", "--cache", cache,
                  cwd=tmp_path)
        assert res.code == 0, res.err
        assert (tmp_path / "two" / "big.bin").read_bytes() == data
    else:
        import dsv as api
        reader = api.open_remote(str(remote), cache=str(cache))
        version = reader.resolve("mldata:latest")
        if how == "cat":
            assert b"".join(reader.cat(version, "big.bin")) == data
        else:
            with reader.open(dict(reader.entries(version))["big.bin"]) as f:
                f.seek(1 << 20)
                assert f.read() == data[1 << 20:]
    assert rewrites  # (the entry was read from the cache, then changed)


def _cached_big_file(tmp_path: Path, dsv) -> tuple[Path, Path, bytes, Path]:
    """A 2 MiB unchunked file (a loose object) pushed to a directory remote and read once
    through a cluster cache: (remote, cache, its bytes, its cache entry)."""
    data = os.urandom((2 << 20) + 17)
    ws = _workspace(tmp_path, dsv, {"big.bin": data})
    remote = tmp_path / "remote"
    _ok(dsv("remote", "add", "origin", remote, cwd=ws))
    _ok(dsv("push", cwd=ws))
    cache = tmp_path / "cache"
    _ok(dsv("get", remote, "mldata:latest", "--to", tmp_path / "one", "--cache", cache,
            cwd=tmp_path))
    oid = b3(data)
    entry = cache / "loose" / oid[:2] / oid
    assert entry.read_bytes() == data
    return remote, cache, data, entry


def _dsv_with_a_1mib_tmpdir(tmp_path: Path, *lines: str):
    """Run shell `lines` in a private mount namespace where TMPDIR is a tmpfs of 1 MiB
    (`tmp_path/small`), `DSV` in them running dsv with LOOSE_CACHE_MEMORY at 1 MiB (so a
    2 MiB loose file is put aside on that disk): (the tmpfs, the finished process)."""
    import subprocess
    import sys
    small = tmp_path / "small"
    small.mkdir()
    run = ("import sys, dsv.sync.reader as r; r.LOOSE_CACHE_MEMORY = 1 << 20; "
           "sys.argv[0] = 'dsv'; from dsv.cli import main; main()")
    dsv = f'"{sys.executable}" -c "{run}"'
    script = (f'mount -t tmpfs -o size=1m tmpfs "{small}" || exit 99\n'
              f'export TMPDIR="{small}"\n' + "".join(line.replace("DSV ", dsv + " ") + "\n"
                                                     for line in lines))
    return small, subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                  script], cwd=tmp_path, capture_output=True, text=True,
                                 timeout=120)


def test_a_temp_dir_without_room_for_a_cached_file_keeps_the_cache_entry(tmp_path, dsv):
    """TMPDIR on a disk of 1 MiB, a cached loose object larger than a reader keeps in
    memory (here 1 MiB, as if LOOSE_CACHE_MEMORY were that): the reader cannot put its
    private copy aside. That is this machine's temp directory's fault, not the shared
    entry's: `get` and `cat` say so before copying, and the entry stays for every other
    user. (Before: the copy failed with ENOSPC and the entry was dropped from the cache.)"""
    remote, cache, data, entry = _cached_big_file(tmp_path, dsv)
    small, done = _dsv_with_a_1mib_tmpdir(
        tmp_path,
        f'DSV get "{remote}" mldata:latest --to "{tmp_path}/two" --cache "{cache}"; '
        'echo "get=$?"',
        f'DSV cat "{remote}" mldata:latest big.bin --cache "{cache}" > "{tmp_path}/cat.out"; '
        'echo "cat=$?"')
    out = done.stdout + done.stderr
    assert "get=1" in out and "cat=1" in out, out
    assert out.count(f"error: putting big.bin aside needs {len(data):,} bytes in {small} "
                     "and its disk has") == 2, out
    assert "TMPDIR" in out and "Traceback" not in out and "bug in dsv" not in out, out
    assert (tmp_path / "cat.out").read_bytes() == b""
    assert entry.read_bytes() == data


@pytest.mark.parametrize("how", ["get", "cat"])
def test_a_failed_write_of_the_private_copy_keeps_the_cache_entry(tmp_path, dsv,
                                                                   monkeypatch, how):
    """The temp directory had room when checked, and fills up while the private copy of
    a cached loose object is written (ENOSPC): a clear error about the temp directory,
    and the shared cache entry stays. (Before: any OSError dropped the entry.)"""
    import errno
    import tempfile
    import dsv.sync.reader as reader_module
    remote, cache, data, entry = _cached_big_file(tmp_path, dsv)
    real = tempfile.TemporaryFile

    class Full:
        def __init__(self) -> None:
            self._f = real()

        def write(self, piece: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name: str):  # noqa: ANN204
            return getattr(self._f, name)

    monkeypatch.setattr(reader_module, "LOOSE_CACHE_MEMORY", 1 << 20)
    monkeypatch.setattr(reader_module.tempfile, "TemporaryFile", Full)
    if how == "get":
        res = dsv("get", remote, "mldata:latest", "--to", tmp_path / "two", "--cache", cache,
                  cwd=tmp_path)
    else:
        res = dsv("cat", remote, "mldata:latest", "big.bin", "--cache", cache, cwd=tmp_path)
    assert res.code == 1, res.err
    assert res.err.startswith(f"error: cannot put big.bin aside in {tempfile.gettempdir()}: "
                              "No space left on device"), res.err
    assert "TMPDIR" in res.err and "Traceback" not in res.err
    assert entry.read_bytes() == data


@pytest.mark.parametrize("marker, said", [
    (b'{"format":4,"hash":"sha256"}\n', "names its objects by hash sha256"),
    (b'{"format":4}\n', "names its objects by hash ?"),
    (b'{"format":true,"hash":"blake3"}\n', "has remote format true"),
    (b'{"format":4.0,"hash":"blake3"}\n', "has remote format 4.0"),
])
def test_ls_refuses_a_marker_naming_another_hash_or_no_integer_format(tmp_path, dsv,
                                                                       marker, said):
    """A reader without a store checks the marker as fetch and push do (one check, in
    remotes/layout.py): JSON true or 4.0 is no format, and only blake3 ids are read.
    (Before: all four were read, `true` as format 1.)"""
    ws = _workspace(tmp_path, dsv, {"f.txt": b"good"})
    remote = tmp_path / "remote"
    _ok(dsv("remote", "add", "origin", remote, cwd=ws))
    _ok(dsv("push", cwd=ws))
    (remote / "dsv-remote.json").write_bytes(marker)
    res = dsv("ls", remote, cwd=tmp_path)
    assert res.code == 1, res.out + res.err
    assert res.err.startswith(f"error: {remote} {said}"), res.err
    assert "Traceback" not in res.err and "bug in dsv" not in res.err
    assert (remote / "dsv-remote.json").read_bytes() == marker


def test_a_temp_dir_without_room_for_an_origin_file_fails_before_downloading(tmp_path, dsv):
    """`cat` of a large unchunked file straight from the origin (no cache) checks it
    whole in the temp directory first. TMPDIR on a disk of 1 MiB and a 2 MiB file (kept
    in memory only up to 1 MiB here): one clear line naming TMPDIR before any byte is
    downloaded. (Before: the download filled the temp disk and failed with "cannot write
    a file: no space left on the device".)"""
    data = os.urandom((2 << 20) + 17)
    ws = _workspace(tmp_path, dsv, {"big.bin": data})
    remote = tmp_path / "remote"
    _ok(dsv("remote", "add", "origin", remote, cwd=ws))
    _ok(dsv("push", cwd=ws))
    small, done = _dsv_with_a_1mib_tmpdir(
        tmp_path,
        f'DSV cat "{remote}" mldata:latest big.bin > "{tmp_path}/cat.out"; echo "cat=$?"',
        f'df -k "{tmp_path}/small" | tail -1')
    out = done.stdout + done.stderr
    assert "cat=1" in out, out
    assert f"error: putting big.bin aside needs {len(data):,} bytes in {small} and its " \
           "disk has" in out, out
    assert "TMPDIR" in out and "Traceback" not in out and "bug in dsv" not in out, out
    assert (tmp_path / "cat.out").read_bytes() == b""
    # the temp disk was left empty (1024 KiB, none used)
    assert done.stdout.splitlines()[-1].split()[2] == "0", out


@pytest.mark.parametrize("where", ["dir", "s3"])
def test_a_reader_used_before_a_fork_reads_in_the_forked_worker(tmp_path, dsv, request,
                                                                 monkeypatch, where):
    """A PyTorch DataLoader (fork start method) copies a Dataset holding a reader from
    `dsv.open_remote` that has already read, and an open chunked file partway through a
    sequential read. The worker must not wait on the parent's GET threads (they do not
    exist in the child: it waited for ever) nor use its connections; the parent reads on
    as before. Small files lie in two packs (neighbours alternate: parallel GETs), and a
    sequential read keeps one job of one span in flight (so the child needs new ones)."""
    import uuid
    import dsv as api
    import dsv.sync.reader as reader_module
    monkeypatch.setattr(reader_module, "AHEAD", 1)
    monkeypatch.setattr(reader_module, "SEQUENTIAL_SPANS", 1)
    small = {f"d/{i:03d}.bin": os.urandom(500 + i) for i in range(40)}
    big = os.urandom(12 << 20)
    evens = {rel: data for i, (rel, data) in enumerate(small.items()) if i % 2 == 0}
    ws = _workspace(tmp_path, dsv, {**evens, "big.bin": big})
    if where == "s3":
        request.getfixturevalue("aws_env")
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = f"fork-{uuid.uuid4().hex[:12]}"
        create_bucket(endpoint, bucket)
        url, options = f"s3://{bucket}/r", {"endpoint_url": endpoint}
        _ok(dsv("remote", "add", "origin", url, "--endpoint-url", endpoint, cwd=ws))
    else:
        url, options = str(tmp_path / "remote"), {}
        _ok(dsv("remote", "add", "origin", url, cwd=ws))
    _ok(dsv("push", cwd=ws))
    write_tree(ws, small)
    _ok(dsv("commit", "-m", "odds", cwd=ws))
    _ok(dsv("push", cwd=ws))   # (a second pack)
    reader = api.open_remote(url, **options)
    v = reader.resolve("mldata:latest")
    entries = dict(reader.entries(v))
    order = sorted(small)

    def read(rel: str, ahead: int = len(order)) -> bytes:
        at = order.index(rel)
        with reader.open(entries[rel], [entries[r] for r in order[at + 1:at + 1 + ahead]]) as f:
            return f.read()

    assert [read(rel, 1) for rel in order[:2]] == [small[rel] for rel in order[:2]]
    f = reader.open(entries["big.bin"])
    assert f.read(3 << 20) == big[:3 << 20]   # (a sequential read: a job ahead in flight)
    rest = big[3 << 20:]
    in_a_forked_child(lambda: [read(rel) for rel in order[2:]] ==
                      [small[rel] for rel in order[2:]] and f.read() == rest)
    assert f.read() == rest   # the parent
    assert [read(rel) for rel in order[2:]] == [small[rel] for rel in order[2:]]


def test_a_ref_whose_record_is_another_version_is_refused_and_verify_reports_it(tmp_path,
                                                                              dsv):
    """`latest` rewritten to carry v1.0's record under the second version's id: `ls` of
    the dataset showed the second version as latest while `get mldata:latest` wrote the
    first, and `verify --remote` found nothing (the tag named that record first). Readers
    now refuse the ref as a fetch ignores it, and verify reports it."""
    ws, remote = _small(tmp_path, dsv)
    (ds_dir,) = (remote / "refs").iterdir()
    latest, tag = ds_dir / "latest", ds_dir / "tags" / "v1.0"
    body = json.loads(latest.read_bytes())
    second = body["version"]
    first = json.loads(tag.read_bytes())["version"]
    body["record"] = json.loads(tag.read_bytes())["record"]
    latest.chmod(0o644)
    latest.write_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    r = dsv("get", remote, "mldata:latest", "--to", tmp_path / "out", cwd=tmp_path)
    assert r.code == 1 and not (tmp_path / "out").exists(), r.out
    assert f"error: remote ref mldata:latest on {remote} names version {second}, but its " \
           f"record is version {first}" in r.err, r.err
    r = dsv("ls", remote, "--json", cwd=tmp_path)   # (the datasets: no latest shown)
    assert r.code == 0 and f"names version {second}, but its record is" in r.err, r.err
    assert [d["latest"] for d in json.loads(r.out)] == [None], r.out
    r = dsv("ls", remote, "mldata", "--json", cwd=tmp_path)
    assert r.code == 0 and f"ignored remote ref {ds_dir.name}/latest" in r.err, r.err
    listed = [(v["id"], v["tags"]) for v in json.loads(r.out)]
    assert listed[0] == (first, ["v1.0"]) and second not in {i for i, _t in listed}, listed
    _ok(dsv("get", remote, "mldata:v1.0", "--to", tmp_path / "v1", cwd=tmp_path))
    assert (tmp_path / "v1" / "a.txt").read_bytes() == b"alpha\n"
    r = dsv("verify", "--remote", "origin", cwd=ws)
    assert r.code == 1 and f"ref {ds_dir.name}/latest names record " in r.out, r.out
    assert f"which is version {first} of dataset {ds_dir.name}" in r.out, r.out


def test_a_damaged_ref_is_ignored_with_a_warning_never_silently(tmp_path, dsv):
    """A byte of `latest` flipped: readers and clone dropped the ref without a word, and
    `cat` then said the remote had no such dataset, with an empty list of its datasets."""
    ws, remote = _small(tmp_path, dsv)
    (ds_dir,) = (remote / "refs").iterdir()
    latest = ds_dir / "latest"
    latest.chmod(0o644)
    flip_byte(latest, 0)
    warning = f"warning: ignored remote ref refs/{ds_dir.name}/latest: it is not a ref dsv " \
              f"writes (damaged)"
    r = _ok(dsv("ls", remote, cwd=tmp_path))
    assert warning in r.err, r.err
    r = dsv("cat", remote, "mldata:latest", "a.txt", cwd=tmp_path)
    assert r.code == 1 and warning in r.err, r.err
    assert f"hint: its datasets: {ds_dir.name} (no readable latest ref)" in r.err, r.err
    r = _ok(dsv("clone", remote, tmp_path / "clone", cwd=tmp_path))
    assert warning in r.err, r.err
    r = dsv("verify", "--remote", "origin", cwd=ws)
    assert r.code == 1 and f"ref refs/{ds_dir.name}/latest is not a ref dsv writes" in r.out


def test_a_catalog_cut_short_falls_back_to_every_pack_index(tmp_path, dsv):
    """A catalog is an economy, never a reason to fail: with the locators gone and the
    dataset's catalog naming only one of its packs, `get` and `cat` failed ("object … is
    not on", "damaged or missing"); they now read every pack index once and succeed."""
    ws, remote = _small(tmp_path, dsv)
    shutil.rmtree(remote / "loc")
    (catalog,) = (remote / "catalog").iterdir()
    entries = sorted(catalog.iterdir())
    assert len(entries) >= 2, entries
    for entry in entries[1:]:
        entry.unlink()
    out = tmp_path / "out"
    _ok(dsv("get", remote, "mldata:latest", "--to", out, cwd=tmp_path))
    expected = read_tree(ws)
    assert read_tree(out) == expected
    assert _ok(dsv("cat", remote, "mldata:v1.0", "a.txt", cwd=tmp_path)).out == "alpha\n"


def test_a_loose_file_longer_on_the_remote_than_its_entry_is_named_by_its_path(tmp_path,
                                                                             dsv):
    remote, _cache, data, _entry = _cached_big_file(tmp_path, dsv)
    loose = remote / "loose" / b3(data)[:2] / b3(data)
    loose.chmod(0o644)
    with open(loose, "ab") as f:
        f.write(b"x" * 1000)
    for args in (("cat", remote, "mldata:latest", "big.bin"),
                 ("get", remote, "mldata:latest", "--to", tmp_path / "two")):
        r = dsv(*args, cwd=tmp_path)
        assert r.code == 1 and r.out == "", r.out
        assert f"error: big.bin arrived longer than its entry says ({len(data):,} bytes)" \
            in r.err, r.err
    assert not (tmp_path / "two" / "big.bin").exists()


def test_a_clone_of_a_remote_whose_every_ref_is_damaged_fails_and_leaves_nothing(tmp_path,
                                                                                dsv):
    """Every ref ignored as damaged (each with its warning): the clone exited 0 with an
    empty workspace, which a script took for a clone; it is an error now."""
    _ws, remote = _small(tmp_path, dsv)
    refs = sorted(p for p in (remote / "refs").rglob("*") if p.is_file())
    assert len(refs) == 2, refs
    for ref in refs:
        ref.chmod(0o644)
        flip_byte(ref, 0)
    r = dsv("clone", remote, tmp_path / "clone", cwd=tmp_path)
    assert r.code == 1, r.out
    assert r.err.count("warning: ignored remote ref refs/") == 2, r.err
    assert f"error: nothing to clone: every ref read of {remote} (2) was ignored as damaged" \
        in r.err, r.err
    assert not (tmp_path / "clone").exists()


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_locator_that_is_no_regular_file_is_routed_around(tmp_path, dsv, kind):
    """A locator is a hint: a FIFO or link in its place failed ls, get and cat (`… is not
    a regular file; refusing to read it`) though the pack indexes hold the object."""
    ws, remote = _small(tmp_path, dsv)
    root_tree = json.loads(_ok(dsv("versions", "details", "mldata:latest", "--json",
                                   cwd=ws)).out)["tree"]
    key = remote / layout.locator_key(root_tree)
    key.unlink()
    if kind == "fifo":
        os.mkfifo(key)
    else:
        key.symlink_to(remote / "dsv-remote.json")
    r = _ok(dsv("cat", remote, "mldata:latest", "a.txt", cwd=tmp_path))
    assert r.out == "alpha two\n" and "reading the object itself" in r.err, r.err
    _ok(dsv("get", remote, "mldata:latest", "--to", tmp_path / "out", cwd=tmp_path))
    assert read_tree(tmp_path / "out") == read_tree(ws)


def test_a_tag_naming_another_datasets_record_is_left_out_with_a_warning(tmp_path, dsv):
    """A forged tag of mldata carrying another dataset's record and version id: `ls
    mldata` and every read of mldata failed (`version record … belongs to another
    dataset`), where fetch ignores such a ref. The tag is left out, with a warning."""
    ws, remote = _small(tmp_path, dsv)
    other = tmp_path / "other"
    write_tree(other, {"o.txt": b"other\n"})
    _ok(dsv("init", other, "--name", "other", cwd=tmp_path))
    _ok(dsv("commit", "-m", "o", cwd=other))
    _ok(dsv("remote", "add", "origin", remote, cwd=other))
    _ok(dsv("push", cwd=other))
    mine = json.loads(_ok(dsv("ls", remote, "--json", cwd=tmp_path)).out)
    ids = {d["name"]: d["id"] for d in mine}
    theirs = json.loads((remote / "refs" / ids["other"] / "latest").read_bytes())
    tag = remote / "refs" / ids["mldata"] / "tags" / "v1.0"
    body = json.loads(tag.read_bytes())
    body.update(record=theirs["record"], version=theirs["version"])
    tag.chmod(0o644)
    tag.write_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    r = _ok(dsv("ls", remote, "mldata", "--json", cwd=tmp_path))
    assert f"warning: ignored remote ref {ids['mldata']}/tags/v1.0: version record " in r.err
    assert all(v["tags"] == [] for v in json.loads(r.out)), r.out
    assert _ok(dsv("cat", remote, "mldata:latest", "a.txt", cwd=tmp_path)).out == "alpha two\n"
    r = dsv("cat", remote, "mldata:v1.0", "a.txt", cwd=tmp_path)
    assert r.code == 1 and "belongs to another dataset" in r.err, r.err


def test_a_damaged_pack_index_is_read_from_its_pack_without_a_store(tmp_path, dsv):
    """Every index damaged and the locators gone: clone read each index from its pack's
    end, but `cat` and `get` dropped every index without a word and failed (`object …
    is not on …`). They read it from the pack too now, with a warning."""
    ws, remote = _small(tmp_path, dsv)
    shutil.rmtree(remote / "loc")
    for index in (remote / "index").iterdir():
        index.chmod(0o644)
        index.write_bytes(b"garbage")
    r = _ok(dsv("cat", remote, "mldata:latest", "a.txt", cwd=tmp_path))
    assert r.out == "alpha two\n" and "read from its pack instead" in r.err, r.err
    _ok(dsv("get", remote, "mldata:latest", "--to", tmp_path / "out", cwd=tmp_path))
    assert read_tree(tmp_path / "out") == read_tree(ws)


def test_places_of_ids_picked_to_collide_do_not_pile_up() -> None:
    """The reader's places are an open-addressing table. A hostile locator names any ids
    it likes: ids whose first 64 bits agree in all their low bits (the slot a plain mask
    would pick), or step by the table's size, still land near their own slots on average (the slot
    comes from Python's keyed hash), and each is found."""
    from dsv.sync.reader import _Places

    for step in (1 << 40, 1 << 17, 1 << 23):
        places = _Places()
        ids = {f"{i * step:016x}" + "00" * 24: ("p1", i, 1) for i in range(1, 40001)}
        places.update(ids)
        assert places.get("00" * 32) is None   # (an id of 64 zero bits is no place)
        for oid, (pack, offset, _n) in list(ids.items())[::997]:
            assert places.get(oid) == (pack, offset, 1)
        keys = places._table.keys
        away = [(slot - hash(f"{key:016x}")) % len(keys) for slot, key in enumerate(keys) if key]
        assert sum(away) / len(away) < 8, (step, sum(away) / len(away))   # (random: ~1.8)


def test_a_place_two_ids_share_costs_a_read_never_the_wrong_bytes(tmp_path, dsv):
    """The reader keeps where locators place objects by an id's first 64 bits (a
    million-file version's places took 230 MB as hex ids to tuples). Two ids sharing them
    would share a place: the bytes read there do not check, the read goes to the pack
    indexes, and the right bytes come back. A place too large to encode is left out."""
    ws, remote = _small(tmp_path, dsv)
    import dsv as api
    from dsv.sync.reader import _Places

    places = _Places()
    places.update({"ab" * 32: ("p1", 8, 300), "cd" * 32: (None, 0, 5),
                   "ef" * 32: ("p1", 1 << 56, 1), "01" * 32: ("p2", 9, 1 << 40)})
    assert places.get("ab" * 32) == ("p1", 8, 300) and places.get("cd" * 32) == (None, 0, 5)
    assert places.get("ef" * 32) is None and places.get("01" * 32) is None
    assert places.get("ab" * 8 + "00" * 24) == ("p1", 8, 300)   # (a hint, checked on read)
    assert places.get("zz" * 32) is None and places.get("ab") is None   # (no id: no place)

    reader = api.open_remote(str(remote))
    v = reader.resolve("mldata:latest")
    rows = {r.path: r for r in reader.files(v, recursive=True)}   # (places learnt)
    a, b = rows["a.txt"], rows["new.txt"]
    assert reader._places.get(a.oid) is not None
    pack, offset, _n = reader._places.get(b.oid)
    reader._places.update({a.oid: (pack, offset, a.size)})   # b's place under a's key
    pictures = []
    read_picture = reader._read_picture
    reader._read_picture = lambda: pictures.append(1) or read_picture()
    assert b"".join(reader.cat(v, "a.txt")) == (ws / "a.txt").read_bytes()
    assert pictures   # (the bytes at the shared place did not check: the indexes read)
    out = tmp_path / "got"
    assert reader.get(v, ["a.txt", "new.txt"], out) == 2
    assert read_tree(out) == {"a.txt": b"alpha two\n", "new.txt": b"new\n"}


def test_get_walks_the_version_twice_and_never_holds_it(tmp_path, dsv, monkeypatch):
    """`get` without a store counts and checks in a first walk of the trees and writes in
    a second, a batch at a time, never holding the version's files in one list (a million
    files took 850 MB). Paths named under one another are written once; a path the
    version lacks is refused before anything is written."""
    import dsv as api
    from dsv import worktree
    from dsv.errors import InvalidInput
    from dsv.sync import reader as reader_module

    files = {f"d{i}/f{j}.txt": b"%d-%d\n" % (i, j) for i in range(6) for j in range(5)}
    ws = _workspace(tmp_path, dsv, files)
    remote = tmp_path / "remote"
    _ok(dsv("remote", "add", "origin", remote, cwd=ws))
    _ok(dsv("push", cwd=ws))
    monkeypatch.setattr(reader_module, "GET_BATCH_FILES", 4)
    batches: list[int] = []
    write_files = worktree.write_files

    def counted(dest, batch, content, advance):
        batches.append(len(batch))
        return write_files(dest, batch, content, advance)

    monkeypatch.setattr(worktree, "write_files", counted)
    reader = api.open_remote(str(remote))
    v = reader.resolve("mldata:latest")
    for paths, want in (([], files),
                        (["d1", "d1/f2.txt", "d1", "d3/f0.txt"],
                         {p: d for p, d in files.items() if p.startswith("d1/") or
                          p == "d3/f0.txt"}),
                        (["", "d2"], files)):
        out = tmp_path / f"out{len(batches)}"
        batches.clear()
        assert reader.get(v, paths, out) == len(want)
        assert read_tree(out) == want
        assert sum(batches) == len(want) and max(batches) <= 4, batches
    for paths in (["d1", "nope"], ["d1", "d1/f2.txt/x"], ["", "nope/x"]):
        with pytest.raises(InvalidInput, match="is not in version"):
            reader.get(v, paths, tmp_path / "none")
        assert not (tmp_path / "none").exists()
