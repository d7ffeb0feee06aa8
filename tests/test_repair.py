"""`dsv verify --repair`: damaged and missing objects are brought back from the remotes
(a directory remote, and an S3 server over HTTP), verified by hash, and written back
safely; what no remote has is named with the versions and paths it reaches."""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import boto3
import pytest

import dsv as dsv_api
from conftest import deep_chain, flip_byte, read_tree, run_dsv, write_tree
from dsv import tree
from dsv.hashing import hash_bytes


def _files() -> dict[str, bytes]:
    rng = random.Random(11)
    return {"a.txt": rng.randbytes(3000), "sub/b.bin": rng.randbytes(5000),
            "sub/deep/big.bin": rng.randbytes((1 << 20) + 777), "c.bin": rng.randbytes(900)}


def _out(r) -> dict:
    return json.loads(r.out)


@pytest.fixture
def pushed(tmp_path: Path, dsv):
    """A workspace (dataset `data`, one version) pushed to a directory remote."""
    ws = tmp_path / "ws"
    write_tree(ws, _files())
    assert dsv("init", "--name", "data", ws, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "first", cwd=ws).code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    return ws


def _where(ws: Path, oid: str) -> tuple[str, int, int] | None:
    store = dsv_api.open(ws)
    try:
        return store.index.locate(oid)
    finally:
        store.close()


def _tree_of(ws: Path, path: str) -> str:
    """The tree id of directory `path` in data:latest."""
    store = dsv_api.open(ws)
    try:
        oid = store.core.resolve("data:latest").tree
        for part in path.split("/"):
            rows = {r[0]: r for r in tree.decode_tree(store.core.read_tree(oid), oid)}
            oid = rows[part][4]
        return oid
    finally:
        store.close()


def _checkout_matches(ws: Path, tmp_path: Path, dsv, name: str) -> None:
    out = tmp_path / name
    r = dsv("checkout", "data:latest", "--to", out, cwd=ws)
    assert r.code == 0, r.err
    assert read_tree(out) == _files()


def test_repair_replaces_damaged_packed_and_loose_objects_from_the_remote(
        pushed: Path, dsv, tmp_path: Path) -> None:
    files = _files()
    small, big = hash_bytes(files["a.txt"]), hash_bytes(files["sub/deep/big.bin"])
    pack_id, offset, length = _where(pushed, small)
    pack = pushed / ".dsv/objects/packs" / f"{pack_id}.pack"
    flip_byte(pack, offset + length // 2)
    loose = pushed / ".dsv/objects/loose" / big[:2] / big
    flip_byte(loose, 4321)
    for name in ("a.txt", "sub/deep/big.bin"):  # (intact working copies would be used)
        (pushed / name).unlink()

    before = _out(dsv("verify", "--json", cwd=pushed))
    assert before["ok"] is False
    rows = {(a["path"], a["problem"]) for a in before["affected"]}
    assert ("a.txt", "corrupt") in rows and ("sub/deep/big.bin", "corrupt") in rows

    r = dsv("verify", "--repair", cwd=pushed)
    assert r.code == 0, r.out + r.err
    assert f"found: object {small[:12]} in pack {pack_id[:12]} is corrupt" in r.out
    assert f"repaired: pack {pack_id[:12]} rewritten: 1 damaged object replaced by a good " \
           f"copy from origin" in r.out
    assert f"repaired: object {big[:12]}: damaged loose file replaced by a good copy from " \
           f"origin" in r.out
    assert r.out.rstrip().endswith(": ok")
    # The damaged pack is gone, its objects in a new one (or, rewritten with the same
    # objects in the same order, under the same id with the good bytes).
    assert not pack.exists() or files["a.txt"] in pack.read_bytes()
    assert hash_bytes(loose.read_bytes()) == big and (loose.stat().st_mode & 0o777) == 0o444
    again = _out(dsv("verify", "--json", cwd=pushed))
    assert again["ok"] is True and again["affected"] == []
    _checkout_matches(pushed, tmp_path, dsv, "out")
    assert not list((pushed / ".dsv/tmp").rglob("damaged-*"))


def test_a_pack_rewritten_with_the_same_objects_keeps_its_name(tmp_path: Path, dsv) -> None:
    # The damaged object is the pack's first: its good copy is written first again, so
    # the new pack has the old one's name. It must be kept (and read afresh), not deleted.
    ws = tmp_path / "ws"
    content = random.Random(9).randbytes(4000)
    write_tree(ws, {"only.bin": content})
    assert dsv("init", "--name", "data", ws, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "first", cwd=ws).code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    oid = hash_bytes(content)
    pack_id, offset, _length = _where(ws, oid)
    pack = ws / ".dsv/objects/packs" / f"{pack_id}.pack"
    assert offset == 8  # (just after the magic: the first object)
    flip_byte(pack, offset + 5)
    r = dsv("verify", "--repair", cwd=ws)
    assert r.code == 0, r.out
    assert f"repaired: pack {pack_id[:12]} rewritten" in r.out
    assert pack.exists() and hash_bytes(pack.read_bytes()[8:8 + 4000]) == oid
    assert dsv("verify", cwd=ws).code == 0
    out = tmp_path / "out"
    assert dsv("checkout", "data:latest", "--to", out, cwd=ws).code == 0
    assert (out / "only.bin").read_bytes() == content


def test_repair_brings_back_a_lost_pack_and_what_lay_below_a_damaged_tree(
        pushed: Path, dsv, tmp_path: Path) -> None:
    files = _files()
    # A damaged tree hides what is below it from the first check: the big file under it
    # is gone too, and is found once the good tree is back.
    deep = _tree_of(pushed, "sub/deep")
    pack_id, offset, length = _where(pushed, deep)
    flip_byte(pushed / ".dsv/objects/packs" / f"{pack_id}.pack", offset + 1)
    big = hash_bytes(files["sub/deep/big.bin"])
    (pushed / ".dsv/objects/loose" / big[:2] / big).unlink()
    first = _out(dsv("verify", "--json", cwd=pushed))
    assert not any(big[:12] in p for p in first["problems"])  # hidden below the tree
    assert {"version", "path", "object", "problem"} <= set(first["affected"][0])
    assert any(a["path"] == "sub/deep/" and a["object"] == deep for a in first["affected"])

    r = dsv("verify", "--repair", "--json", cwd=pushed)
    rep = _out(r)
    assert r.code == 0 and rep["ok"] is True, rep
    assert any("1 missing object brought back from origin" in line for line in rep["repaired"])
    _checkout_matches(pushed, tmp_path, dsv, "out1")

    # A pack deleted outright: every object in it comes back, the index forgets it.
    (pack,) = (pushed / ".dsv/objects/packs").glob("*.pack")
    pack.unlink()
    r = dsv("verify", "--repair", cwd=pushed)
    assert r.code == 0, r.out
    assert f"repaired: pack {pack.stem[:12]} (gone from disk) forgotten; " in r.out
    assert "brought back from origin" in r.out
    assert dsv("verify", cwd=pushed).code == 0
    _checkout_matches(pushed, tmp_path, dsv, "out2")


def test_what_no_remote_has_is_named_with_its_versions_and_paths(pushed: Path, dsv,
                                                                 tmp_path: Path) -> None:
    # v2 adds a file that was never pushed: no remote can repair it.
    fresh = random.Random(3).randbytes(2000)
    (pushed / "sub/new.bin").write_bytes(fresh)
    r = dsv("commit", "-m", "second", cwd=pushed)
    assert r.code == 0
    oid = hash_bytes(fresh)
    pack_id, offset, length = _where(pushed, oid)
    pack = pushed / ".dsv/objects/packs" / f"{pack_id}.pack"
    flip_byte(pack, offset + 7)
    damaged = pack.read_bytes()
    (pushed / "sub/new.bin").write_bytes(b"edited since")  # no intact copy anywhere

    r = dsv("verify", "--repair", cwd=pushed)
    assert r.code == 1
    assert f"problem: object {oid[:12]} in pack {pack_id[:12]} is corrupt" in r.out
    assert "affected: data:" in r.out and "sub/new.bin (corrupt object" in r.out
    # Nothing better was found: the pack is left exactly as it was, never dropped.
    assert pack.read_bytes() == damaged
    rep = _out(dsv("verify", "--repair", "--json", cwd=pushed))
    assert rep["ok"] is False and rep["repaired"] == []
    (row,) = rep["affected"]
    assert row["path"] == "sub/new.bin" and row["object"] == oid and row["problem"] == "corrupt"
    assert row["version"].startswith("data:")
    # The older version does not reach the damage and checks out whole.
    out = tmp_path / "old"
    vids = [v["id"] for v in _out(dsv("log", "--json", cwd=pushed))]
    assert dsv("checkout", f"data:{vids[-1]}", "--to", out, cwd=pushed).code == 0
    assert read_tree(out) == _files()

    # Once the working directory holds the file's bytes again, they are the good copy.
    (pushed / "sub/new.bin").write_bytes(fresh)
    r = dsv("verify", "--repair", cwd=pushed)
    assert r.code == 0, r.out
    assert f"repaired: pack {pack_id[:12]} rewritten: 1 damaged object replaced by a good " \
           f"copy from the working directory" in r.out
    assert dsv("verify", cwd=pushed).code == 0


def test_a_working_directory_copy_repairs_a_large_file_but_a_link_is_never_followed(
        tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, _files())
    assert dsv("init", "--name", "data", ws, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "first", cwd=ws).code == 0
    big = hash_bytes(_files()["sub/deep/big.bin"])
    loose = ws / ".dsv/objects/loose" / big[:2] / big
    flip_byte(loose, 10)
    # A symlink to an intact copy elsewhere is not read (O_NOFOLLOW), nor is a link to
    # a directory on the way: not repaired.
    (tmp_path / "elsewhere.bin").write_bytes(_files()["sub/deep/big.bin"])
    (ws / "sub/deep/big.bin").unlink()
    (ws / "sub/deep/big.bin").symlink_to(tmp_path / "elsewhere.bin")
    assert dsv("verify", "--repair", cwd=ws).code == 1
    (tmp_path / "other/deep").mkdir(parents=True)
    (tmp_path / "other/deep/big.bin").write_bytes(_files()["sub/deep/big.bin"])
    (ws / "sub").rename(tmp_path / "sub-moved")
    (ws / "sub").symlink_to(tmp_path / "other")
    assert dsv("verify", "--repair", cwd=ws).code == 1
    (ws / "sub").unlink()
    (tmp_path / "sub-moved").rename(ws / "sub")
    (ws / "sub/deep/big.bin").unlink()
    (ws / "sub/deep/big.bin").write_bytes(_files()["sub/deep/big.bin"])
    r = dsv("verify", "--repair", cwd=ws)
    assert r.code == 0, r.out
    assert f"repaired: object {big[:12]}: damaged loose file replaced by a good copy from " \
           f"the working directory" in r.out
    assert hash_bytes(loose.read_bytes()) == big


def test_repair_without_a_remote_says_so_and_changes_nothing(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, _files())
    assert dsv("init", "--name", "data", ws, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "first", cwd=ws).code == 0
    big = hash_bytes(_files()["sub/deep/big.bin"])
    loose = ws / ".dsv/objects/loose" / big[:2] / big
    flip_byte(loose, 10)
    damaged = loose.read_bytes()
    (ws / "sub/deep/big.bin").unlink()  # (an intact working copy would be used)
    r = dsv("verify", "--repair", cwd=ws)
    assert r.code == 1
    assert "no remote is configured" in r.err
    assert "affected: data:" in r.out and "sub/deep/big.bin (corrupt object" in r.out
    assert loose.read_bytes() == damaged  # the damaged copy is put back, not lost


def test_repair_from_s3_over_http(tmp_path: Path, dsv, s3_endpoint: str, aws_env: None) -> None:
    bucket = f"b{os.urandom(4).hex()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    ws = tmp_path / "ws"
    write_tree(ws, _files())
    assert dsv("init", "--name", "data", ws, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "first", cwd=ws).code == 0
    assert dsv("remote", "add", "s3", f"s3://{bucket}/p", "--endpoint-url", s3_endpoint,
               cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    small = hash_bytes(_files()["sub/b.bin"])
    pack_id, offset, length = _where(ws, small)
    flip_byte(ws / ".dsv/objects/packs" / f"{pack_id}.pack", offset)
    big = hash_bytes(_files()["sub/deep/big.bin"])
    (ws / ".dsv/objects/loose" / big[:2] / big).unlink()
    for name in ("sub/b.bin", "sub/deep/big.bin"):  # (intact working copies would be used)
        (ws / name).unlink()
    r = dsv("verify", "--repair", cwd=ws)
    assert r.code == 0, r.out + r.err
    assert "replaced by a good copy from s3" in r.out
    assert "1 missing object brought back from s3" in r.out
    assert dsv("verify", cwd=ws).code == 0
    _checkout_matches(ws, tmp_path, dsv, "out")


def test_repair_reads_the_cluster_cache_when_the_origin_is_gone(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, _files())
    assert dsv("init", "--name", "data", ws, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "first", cwd=ws).code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=ws).code == 0
    assert dsv("remote", "add", "shared", tmp_path / "cache", "--cache", "--write-through",
               cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    (tmp_path / "remote").rename(tmp_path / "remote-unmounted")
    small = hash_bytes(_files()["c.bin"])
    pack_id, offset, _length = _where(ws, small)
    flip_byte(ws / ".dsv/objects/packs" / f"{pack_id}.pack", offset + 3)
    big = hash_bytes(_files()["sub/deep/big.bin"])
    flip_byte(ws / ".dsv/objects/loose" / big[:2] / big, 99)
    for name in ("c.bin", "sub/deep/big.bin"):  # (intact working copies would be used)
        (ws / name).unlink()
    r = dsv("verify", "--repair", cwd=ws)
    assert r.code == 0, r.out + r.err
    assert "warning:" in r.err and "does not exist" in r.err  # the origin is unreachable
    assert dsv("verify", cwd=ws).code == 0
    _checkout_matches(ws, tmp_path, dsv, "out")


def test_an_interrupted_repair_leaves_the_store_as_it_found_it(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    from dsv import verify
    ws = tmp_path / "ws"
    write_tree(ws, _files())
    assert dsv("init", "--name", "data", ws, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "first", cwd=ws).code == 0
    big = hash_bytes(_files()["sub/deep/big.bin"])
    loose = ws / ".dsv/objects/loose" / big[:2] / big
    flip_byte(loose, 77)
    small = hash_bytes(_files()["a.txt"])
    pack_id, offset, _length = _where(ws, small)
    pack = ws / ".dsv/objects/packs" / f"{pack_id}.pack"
    flip_byte(pack, offset + 1)
    before = (loose.read_bytes(), pack.read_bytes())

    def interrupted(*_args: object) -> dict[str, str]:
        raise KeyboardInterrupt  # (after the working-directory copies were staged)

    monkeypatch.setattr(verify, "_obtain", interrupted)
    with dsv_api.open(ws) as store, pytest.raises(KeyboardInterrupt):
        store.verify(repair=True)
    assert (loose.read_bytes(), pack.read_bytes()) == before  # nothing lost, nothing half-done
    assert not [p for p in (ws / ".dsv/tmp").rglob("*") if p.is_file()]
    monkeypatch.undo()
    r = dsv("verify", "--repair", cwd=ws)
    assert r.code == 0, r.out
    assert hash_bytes(loose.read_bytes()) == big


def test_a_damaged_file_below_a_damaged_tree_is_repaired_not_dropped(pushed: Path,
                                                                    dsv) -> None:
    files = _files()
    sub = _tree_of(pushed, "sub")
    blob = hash_bytes(files["sub/b.bin"])
    for oid in (sub, blob):
        pack_id, offset, _length = _where(pushed, oid)
        flip_byte(pushed / ".dsv/objects/packs" / f"{pack_id}.pack", offset + 2)
    (pushed / "sub/b.bin").unlink()  # (an intact working copy would be used)
    r = dsv("verify", "--repair", cwd=pushed)
    assert r.code == 0, r.out
    assert "no version needs removed" not in r.out
    assert dsv("verify", cwd=pushed).code == 0
    out = pushed.parent / "out"
    assert dsv("checkout", "data:latest", "--to", out, cwd=pushed).code == 0
    assert read_tree(out) == files


def test_the_shown_cap_does_not_limit_what_is_repaired(pushed: Path, dsv,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from dsv import verify
    monkeypatch.setattr(verify, "MAX_AFFECTED", 1)
    files = _files()
    for name in ("a.txt", "c.bin"):
        pack_id, offset, _length = _where(pushed, hash_bytes(files[name]))
        flip_byte(pushed / ".dsv/objects/packs" / f"{pack_id}.pack", offset + 3)
    shown = _out(dsv("verify", "--json", cwd=pushed))
    assert len(shown["affected"]) == 1
    r = dsv("verify", "--repair", cwd=pushed)
    assert r.code == 0, r.out
    assert "2 damaged objects replaced by good copies from the working directory" in r.out


def test_repair_replaces_an_index_row_that_names_no_pack(pushed: Path, dsv) -> None:
    """A damaged index's row naming a pack number no pack has hides its object (verify
    calls it missing). The repair's new row must replace it: before, the old row was
    kept, and the repair said "repaired" every time while the object stayed missing."""
    a = hash_bytes(_files()["a.txt"])
    store = dsv_api.open(pushed)
    try:
        with store.index.transaction():
            store.index.conn.execute("UPDATE objects SET pack_num = 999 WHERE oid = ?", (a,))
    finally:
        store.close()
    assert _where(pushed, a) is None
    r = dsv("verify", cwd=pushed)
    assert r.code == 1 and f"file {a[:12]} is missing" in r.out
    r = dsv("verify", "--repair", cwd=pushed)
    assert r.code == 0, r.out + r.err
    assert "repaired: 1 missing object" in r.out
    assert _where(pushed, a) is not None
    again = dsv("verify", cwd=pushed)
    assert again.code == 0 and again.out.rstrip().endswith(": ok"), again.out
    _checkout_matches(pushed, pushed.parent, dsv, "after")


@pytest.mark.parametrize("length", [1 << 40, -5])
def test_an_index_row_claiming_a_length_no_pack_holds_is_reported_and_repaired(
        pushed: Path, dsv, length: int) -> None:
    """A damaged index's row that gives a tree a length no packed object has (1 TiB, or
    less than nothing): every read of it says so, naming the object, where before a
    checkout tried to allocate 1 TiB ("out of memory") or failed with a bare "Invalid
    argument"; verify names the row, and its repair writes it again from the pack's
    own table (no remote needed: the pack is whole)."""
    sub = _tree_of(pushed, "sub")
    store = dsv_api.open(pushed)
    try:
        with store.index.transaction():
            store.index.conn.execute("UPDATE objects SET length = ? WHERE oid = ?",
                                     (length, sub))
    finally:
        store.close()
    said = f"the index places object {sub[:12]} at offset "
    claim = f"for {length:,} bytes, which no packed object has"
    for args in (("checkout", "data:latest", "--to", pushed.parent / "out"),
                 ("diff", "data:latest")):
        r = dsv(*args, cwd=pushed)
        assert r.code == 1 and said in r.err and claim in r.err, r.err
        assert "out of memory" not in r.err and "bug in dsv" not in r.err
    assert not (pushed.parent / "out").exists()
    r = dsv("verify", cwd=pushed)
    assert r.code == 1 and f"object {sub[:12]}: the index places it at offset " in r.out
    assert f"for {length:,} bytes; the pack's table says " in r.out, r.out
    r = dsv("verify", "--repair", cwd=pushed)
    assert r.code == 0, r.out + r.err
    assert "repaired: 1 index row written again from the pack's own table" in r.out, r.out
    where = _where(pushed, sub)
    assert where is not None and 0 < where[2] < 1 << 20
    assert dsv("verify", cwd=pushed).code == 0
    _checkout_matches(pushed, pushed.parent, dsv, "after")


@pytest.mark.parametrize("offset", [-5, 1 << 62])
def test_a_blob_row_placing_it_where_no_pack_holds_it_is_reported_by_the_checkout(
        pushed: Path, dsv, offset: int) -> None:
    """A damaged index's row for a file's blob at an offset no pack has (negative, or
    far past any end): the checkout names the object and writes nothing for it, where
    the negative one reached the native read ("an fd, offset or length out of range",
    "this is a bug in dsv")."""
    a = hash_bytes(_files()["a.txt"])
    store = dsv_api.open(pushed)
    try:
        with store.index.transaction():
            store.index.conn.execute("UPDATE objects SET offset = ? WHERE oid = ?", (offset, a))
    finally:
        store.close()
    r = dsv("checkout", "data:latest", "--to", pushed.parent / "out", cwd=pushed)
    assert r.code == 1 and "bug in dsv" not in r.err, r.err
    assert f"object {a[:12]}" in r.err, r.err
    assert not (pushed.parent / "out" / "a.txt").exists()


# (a loose object behind a link to nothing is missing, and a checkout downloads it)
@pytest.mark.parametrize("what, kind", [("pack", "fifo"), ("pack", "symlink"),
                                        ("pack", "dangling"), ("pack", "dir"),
                                        ("loose", "fifo"), ("loose", "symlink"),
                                        ("loose", "dir")])
def test_a_fifo_or_link_in_place_of_a_store_file_is_damage_never_a_hang(
        pushed: Path, tmp_path: Path, what: str, kind: str) -> None:
    """A FIFO put where a pack or a loose object was would hang every reader's open(); a
    link there would be followed to a file elsewhere. Every command that reads the file
    (each a real process, with a deadline) ends at once with a message naming it; the
    whole store is checked by verify (where push refuses to send the object, for a loose
    one), and `--repair` puts a good copy back from the remote."""
    files = _files()
    oid = hash_bytes(files["a.txt" if what == "pack" else "sub/deep/big.bin"])
    if what == "pack":
        pack_id = _where(pushed, oid)[0]
        path = pushed / ".dsv/objects/packs" / f"{pack_id}.pack"
        name = f"pack {pack_id[:12]}"
    else:
        path = pushed / ".dsv/objects/loose" / oid[:2] / oid
        name = f"object {oid[:12]}"
    path.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(path.name.encode() if what == "pack" else files["sub/deep/big.bin"])
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":   # (1,500 levels deep, a link inside: removed by a loop, unfollowed)
        path.mkdir()
        (path / "x").write_bytes(b"x")
        (path / "out").symlink_to(tmp_path)
        deep_chain(path, 1500)
    else:   # (for the loose object: even bytes that match; or a link to nothing)
        path.symlink_to(elsewhere if kind == "symlink" else tmp_path / "nothing")
    (pushed / "sub/deep/big.bin").unlink()   # (else its working copy would be used)
    shown = {"fifo": "a FIFO", "dir": "a directory"}.get(kind, "a symlink")
    for args in (["checkout", "data:latest", "--to", tmp_path / "out"],
                 ["files", "get", "data:latest", "--target-path", tmp_path / "got"]):
        r = run_dsv(*args, cwd=pushed, timeout=60)
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"error: {name} in the store is not a regular file ({shown})" in r.stderr
        assert "bug in dsv" not in r.stderr and "Traceback" not in r.stderr
    r = run_dsv("verify", cwd=pushed, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    if what == "pack":
        assert f"problem: {name} in the store is not a regular file ({shown})" in r.stdout
        assert f"problem: object {oid[:12]} in {name} is corrupt" in r.stdout
    else:
        assert f"problem: {name} is corrupt" in r.stdout
    r = run_dsv("verify", "--repair", cwd=pushed, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith(": ok")
    assert stat.S_ISREG(path.lstat().st_mode) \
        if os.path.lexists(path) else what == "pack"   # (a pack rewritten: a new name)
    r = run_dsv("checkout", "data:latest", "--to", tmp_path / "after", cwd=pushed, timeout=60)
    assert r.returncode == 0, r.stderr
    assert read_tree(tmp_path / "after") == files
    assert elsewhere.read_bytes() == (path.name.encode() if what == "pack"
                                      else files["sub/deep/big.bin"])


def test_a_fifo_pack_whose_objects_only_partly_have_a_good_copy_stays_reported(
        tmp_path: Path, dsv) -> None:
    """With no remote, a pack replaced by a FIFO can get good copies only of the files
    still in the working directory: the rest cannot be kept (there are no bytes to
    keep), so the pack is not rewritten, the repair ends normally, and the damage is
    still reported, not hidden by a half-written pack."""
    ws = tmp_path / "ws"
    write_tree(ws, _files())
    assert dsv("init", "--name", "data", ws, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "first", cwd=ws).code == 0
    pack_id = _where(ws, hash_bytes(_files()["a.txt"]))[0]
    write_tree(ws, {"d.txt": "new"})   # (the second version's trees: in another pack)
    assert dsv("commit", "-m", "second", cwd=ws).code == 0
    path = ws / ".dsv/objects/packs" / f"{pack_id}.pack"
    path.unlink()
    os.mkfifo(path)
    (ws / "c.bin").unlink()   # (a.txt and sub/b.bin keep working copies)
    r = run_dsv("verify", "--repair", cwd=ws, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "bug in dsv" not in r.stderr and "error:" not in r.stderr, r.stderr
    assert f"problem: pack {pack_id[:12]} in the store is not a regular file (a FIFO)" \
        in r.stdout
    assert f"problem: object {hash_bytes(_files()['c.bin'])[:12]} in pack {pack_id[:12]} " \
           f"is corrupt" in r.stdout
    assert stat.S_ISFIFO(path.lstat().st_mode)
