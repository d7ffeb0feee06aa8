"""Hostile input: remotes, trees, refs and working directories built by an attacker.

Each remote here is built by hand (tests/hostile.py) with correct blake3 ids, so that
only dsv's semantic checks stand in the way. The numbers in test names are the items of
the untrusted-input issue; the classes (reserved `.dsv`, links resolved through links,
modes, history, bounds) are tested through every door that reaches them.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import flip_byte, read_tree, run_dsv, write_tree
from dsv.core import STORE_FORMAT
from dsv.hashing import hash_bytes
from dsv.paths import check_links, placed_mode
from dsv.errors import UnsafePath
from hostile import HostileRemote

DS = "vict1m"


def _clone(dsv, remote: Path, dest: Path):
    return dsv("clone", remote, dest, cwd=dest.parent)


def _no_store_planted(root: Path) -> None:
    """Nothing but dsv itself wrote into `.dsv/`, and no nested store appeared."""
    config = json.loads((root / ".dsv" / "config.json").read_bytes())
    assert config == {"format": STORE_FORMAT, "hash": "blake3"}
    nested = [p for p in root.rglob(".dsv") if p != root / ".dsv"]
    assert nested == []


# ---- 1, 2: `.dsv` is reserved --------------------------------------------------------

@pytest.mark.parametrize("path", [".dsv/config.json", ".dsv/index.db", "sub/.dsv/config.json",
                                  ".DSV/config.json", "a/b/.dsv"])
def test_1_2_tree_naming_a_store_is_refused_by_clone(tmp_path: Path, dsv, path: str) -> None:
    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", DS, {path: b'{"format": 1, "evil": true}', "ok.txt": b"ok"})
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 1, r.out + r.err
    assert r.err.startswith("error: ")
    assert "reserved" in r.err
    assert "bug in dsv" not in r.err
    assert not (tmp_path / "victim").exists()  # a failed clone leaves nothing


def test_1_symlink_named_dsv_in_tree_is_refused(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", DS, {"x": ("l", ".dsv/lock"), "ok.txt": b"ok"})
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 1 and "store" in r.err, r.err


def test_1_local_doors_to_dsv_are_refused(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a"})
    assert dsv("init", "--name", "data", cwd=ws).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    draft = json.loads(dsv("versions", "create", "data", "--json", cwd=ws).out)["id"]
    evil = tmp_path / "evil.json"
    evil.write_text('{"format": 99}')
    r = dsv("files", "put", f"data:{draft}", evil, "--target-path", ".dsv", cwd=ws)
    assert r.code == 1 and "reserved" in r.err, r.err
    r = dsv("files", "put", f"data:{draft}", evil, "--target-path", "x/.Dsv", cwd=ws)
    assert r.code == 1 and "reserved" in r.err, r.err
    r = dsv("datasets", "create", "nest", "--path", "sub/.dsv", cwd=ws)
    assert r.code == 1 and "store" in r.err, r.err
    r = dsv("datasets", "create", "nest2", "--path", ".dsv/objects", cwd=ws)
    assert r.code == 1 and "store" in r.err, r.err
    assert json.loads((ws / ".dsv" / "config.json").read_text())["format"] == STORE_FORMAT


def test_1_file_named_dsv_in_worktree_is_never_content(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a", "sub/.dsv": "not a store", "sub/b.txt": "b"})
    assert dsv("init", "--name", "data", cwd=ws).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    listing = json.loads(dsv("files", "list", "data:latest", "--recursive", "--json",
                             cwd=ws).out)
    assert sorted(row["path"] for row in listing) == ["a.txt", "sub/b.txt"]


def test_1_lock_symlink_is_never_followed(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a"})
    assert dsv("init", "--name", "data", cwd=ws).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    lock = ws / ".dsv" / "lock"
    lock.unlink(missing_ok=True)
    os.symlink(outside, lock)
    r = dsv("tag", "data:latest", "v1", cwd=ws)
    assert r.code == 1 and r.err.startswith("error: "), r.err
    assert "regular file" in r.err
    assert outside.read_text() == "keep me"


def test_1_a_link_in_place_of_a_loose_objects_directory_is_refused(tmp_path: Path,
                                                                     dsv) -> None:
    """`objects/loose/<xx>/` replaced by a link to a directory elsewhere would take loose
    objects' reads, writes and deletions (gc) out of the store: every command refuses
    the store, naming it, and nothing outside is touched."""
    ws = tmp_path / "ws"
    write_tree(ws, {"big.bin": os.urandom(3 << 20)})
    assert dsv("init", "--name", "data", cwd=ws).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    (sub,) = (ws / ".dsv/objects/loose").iterdir()
    outside = tmp_path / "outside"
    sub.rename(outside)
    sub.symlink_to(outside)
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    (ws / "big.bin").write_bytes(os.urandom(3 << 20))
    for args in (["status"], ["commit", "-m", "two"], ["gc"], ["verify"]):
        r = dsv(*args, cwd=ws)
        assert r.code == 1, (args, r.out, r.err)
        assert r.err.startswith(f"error: {sub} is not a directory (a link or something else "
                                f"was put there)"), r.err
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before


def test_2_ref_path_into_a_store_is_not_bound(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", DS, {"f.txt": b"data"}, path="x/.dsv")
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 0, r.err
    victim = tmp_path / "victim"
    assert not (victim / "x").exists()
    _no_store_planted(victim)
    details = json.loads(dsv("datasets", "list", "--json", cwd=victim).out)
    assert [d["path"] for d in details] == [None]


# ---- 3: links through links ------------------------------------------------------------

def test_3_link_escaping_through_another_link_is_refused_pure() -> None:
    check_links({"d/l": ".", "ok": "d/l"})
    with pytest.raises(UnsafePath):
        check_links({"d/l": ".", "s": "d/l/../.."})
    chain = "/".join(["l"] * 12)
    with pytest.raises(UnsafePath):
        check_links({"l": ".", "s": chain + "/../../etc"})
    with pytest.raises(UnsafePath):
        check_links({"a": "b", "b": "a", "c": "a/x"})  # a loop
    with pytest.raises(UnsafePath):
        check_links({"d/l": "..", "s": "d/l/.dsv"})


def test_3_commit_refuses_escaping_link_chain(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a", "d/keep.txt": "k"})
    os.symlink(".", ws / "d" / "l")
    os.symlink("d/l/../..", ws / "s")
    assert dsv("init", "--name", "data", cwd=ws).code == 0
    r = dsv("commit", "-m", "one", cwd=ws)
    assert r.code == 1 and "outside the dataset" in r.err, r.err


def test_3_clone_refuses_escaping_link_chain(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", DS, {"d/l": ("l", "."), "s": ("l", "d/l/../.."),
                                      "f.txt": b"x"})
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 1 and "outside the dataset" in r.err, r.err
    assert not (tmp_path / "victim").exists()


# ---- 4: modes ------------------------------------------------------------------------------

def test_4_setuid_tree_from_remote_is_normalised(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", DS, {"run.sh": b"#!/bin/sh\n"}, mode=0o4777)
    remote2 = HostileRemote(tmp_path / "remote2")
    remote2.version("v1aaaaaaaa", DS, {"data.txt": b"x"}, mode=0o2666)
    umask = os.umask(0o022)
    os.umask(umask)
    for source, name, want in ((remote, "run.sh", 0o777), (remote2, "data.txt", 0o666)):
        victim = tmp_path / f"victim-{name}"
        r = _clone(dsv, source.root, victim)
        assert r.code == 0, r.err
        assert stat.S_IMODE(os.lstat(victim / name).st_mode) == want & ~umask
        status = json.loads(dsv("status", "--json", cwd=victim).out)
        assert status[0]["clean"], status


def test_4_modes_placed_never_special() -> None:
    assert placed_mode(0o4755, 0o022) == 0o755
    assert placed_mode(0o2755, 0o022) == 0o755
    assert placed_mode(0o1777, 0o022) == 0o755
    assert placed_mode(0o666, 0o002) == 0o664
    assert placed_mode(0o600, 0o022) == 0o644
    assert placed_mode(0o000, 0o000) == 0o666
    assert placed_mode(0o100, 0o077) == 0o700


def test_4_local_setuid_bit_is_not_recorded(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"run.sh": "#!/bin/sh\n"})
    os.chmod(ws / "run.sh", 0o4755)
    assert dsv("init", "--name", "data", cwd=ws).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    rows = json.loads(dsv("files", "list", "data:latest", "--json", cwd=ws).out)
    assert rows[0]["mode"] == "0o755"
    out = tmp_path / "out"
    assert dsv("checkout", "data:latest", "--to", out, cwd=ws).code == 0
    assert stat.S_IMODE(os.lstat(out / "run.sh").st_mode) == 0o755


# ---- 5: remotes, mount roots and --to targets inside or above the store ------------------

def test_5_remote_inside_store_and_checkout_to_root_are_refused(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a"})
    assert dsv("init", "--name", "data", cwd=ws).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    r = dsv("remote", "add", "x", ".dsv/objects", cwd=ws)
    assert r.code == 1 and "store" in r.err, r.err
    r = dsv("remote", "add", "y", str(ws / ".dsv"), cwd=ws)
    assert r.code == 1 and "store" in r.err, r.err
    started = time.monotonic()
    r = dsv("checkout", "data:latest", "--to", "/", cwd=ws)
    assert r.code == 1 and "holds this workspace" in r.err, r.err
    assert time.monotonic() - started < 5
    r = dsv("checkout", "data:latest", "--to", tmp_path, cwd=ws)
    assert r.code == 1 and "holds this workspace" in r.err, r.err


# ---- 6, 7: checkout never discards what it did not place ---------------------------------

def test_6_checkout_leaves_nested_dataset_alone(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"top.txt": "t", "sub/f.txt": "original"})
    assert dsv("init", "--name", "A", cwd=ws).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    assert dsv("datasets", "create", "B", "--path", "sub", cwd=ws).code == 0
    (ws / "sub" / "f.txt").write_text("edited in B")
    r = dsv("checkout", "A:latest", cwd=ws)
    assert r.code == 0, r.err
    assert (ws / "sub" / "f.txt").read_text() == "edited in B"
    r = dsv("checkout", "A:latest", "--force", cwd=ws)
    assert r.code == 0, r.err
    assert (ws / "sub" / "f.txt").read_text() == "edited in B"


def test_7_resumed_checkout_keeps_user_changes(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {f"f{i}.txt": f"one {i}" for i in range(20)})
    assert dsv("init", "--name", "data", cwd=ws).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    assert dsv("tag", "data:latest", "v1", cwd=ws).code == 0
    write_tree(ws, {f"f{i}.txt": f"two {i}" for i in range(20)})
    assert dsv("commit", "-m", "two", cwd=ws).code == 0
    killed = run_dsv("checkout", "data:v1", cwd=ws, env={"DSV_CRASH_AT": "checkout:journal-written"})
    assert killed.returncode == -9
    (ws / "mine.txt").write_text("created after the crash")
    (ws / "f3.txt").write_text("edited after the crash")
    r = run_dsv("checkout", "data:v1", cwd=ws)
    assert r.returncode == 1 and "uncommitted" in r.stderr, r.stderr
    assert (ws / "mine.txt").read_text() == "created after the crash"
    assert (ws / "f3.txt").read_text() == "edited after the crash"
    r = run_dsv("checkout", "data:v1", "--force", cwd=ws)
    assert r.returncode == 0, r.stderr
    assert (ws / "f3.txt").read_text() == "one 3"


def test_7_checkout_killed_mid_write_resumes_without_force(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {f"f{i}.txt": f"one {i}" * 100 for i in range(50)})
    assert dsv("init", "--name", "data", cwd=ws).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    assert dsv("tag", "data:latest", "v1", cwd=ws).code == 0
    write_tree(ws, {f"f{i}.txt": f"two {i}" for i in range(50)})
    assert dsv("commit", "-m", "two", cwd=ws).code == 0
    killed = run_dsv("checkout", "data:v1", cwd=ws,
                     env={"DSV_CRASH_AT": "checkout:file-written", "DSV_CRASH_AFTER": "10"})
    assert killed.returncode == -9
    r = run_dsv("checkout", "data:v1", cwd=ws)
    assert r.returncode == 0, r.stderr
    assert read_tree(ws) == {f"f{i}.txt": (f"one {i}" * 100).encode() for i in range(50)}


# ---- 8: clone races and kills -------------------------------------------------------------

def _pushed(tmp_path: Path, dsv, n: int = 300) -> Path:
    src = tmp_path / "src"
    write_tree(src, {f"d{i % 7}/f{i}.bin": os.urandom(200 + i) for i in range(n)})
    assert dsv("init", "--name", "data", cwd=src).code == 0
    assert dsv("commit", "-m", "one", cwd=src).code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=src).code == 0
    assert dsv("push", cwd=src).code == 0
    return src


def test_8_two_clones_into_one_directory(tmp_path: Path, dsv) -> None:
    src = _pushed(tmp_path, dsv)
    expected = read_tree(src)
    for round_ in range(4):
        dest = tmp_path / f"dest{round_}"
        procs = [subprocess.Popen([sys.executable, "-m", "dsv", "clone", str(tmp_path / "remote"),
                                   str(dest)], cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        codes = sorted(code for code, _err in results)
        assert codes[0] == 0, results
        assert read_tree(dest) == expected, results
        assert run_dsv("verify", cwd=dest).returncode == 0
        for code, err in results:
            if code:
                assert err.startswith("error: ") and "bug in dsv" not in err, err


@pytest.mark.parametrize("point", ["fetch:objects-written", "checkout:file-written"])
def test_8_killed_clone_completes_when_run_again(tmp_path: Path, dsv, point: str) -> None:
    src = _pushed(tmp_path, dsv)
    dest = tmp_path / "dest"
    killed = run_dsv("clone", tmp_path / "remote", dest, cwd=tmp_path,
                     env={"DSV_CRASH_AT": point})
    assert killed.returncode == -9
    r = run_dsv("clone", tmp_path / "remote", dest, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert read_tree(dest) == read_tree(src)
    assert not (dest / ".dsv" / "clone.json").exists()
    assert run_dsv("verify", cwd=dest).returncode == 0


def test_8_pull_inside_killed_clone_completes_it(tmp_path: Path, dsv) -> None:
    src = _pushed(tmp_path, dsv)
    dest = tmp_path / "dest"
    killed = run_dsv("clone", tmp_path / "remote", dest, cwd=tmp_path,
                     env={"DSV_CRASH_AT": "fetch:objects-written"})
    assert killed.returncode == -9
    r = run_dsv("pull", cwd=dest)
    assert r.returncode == 0, r.stderr
    assert read_tree(dest) == read_tree(src)
    status = json.loads(run_dsv("status", "--json", cwd=dest).stdout)
    assert status[0]["clean"] and status[0]["path"] == "."


def test_8_clone_of_another_url_into_unfinished_clone_is_refused(tmp_path: Path, dsv) -> None:
    _pushed(tmp_path, dsv)
    dest = tmp_path / "dest"
    killed = run_dsv("clone", tmp_path / "remote", dest, cwd=tmp_path,
                     env={"DSV_CRASH_AT": "fetch:objects-written"})
    assert killed.returncode == -9
    (tmp_path / "other").mkdir()
    r = run_dsv("clone", tmp_path / "other", dest, cwd=tmp_path)
    assert r.returncode == 1 and "unfinished clone" in r.stderr, r.stderr
    assert (dest / ".dsv" / "clone.json").exists()


# ---- 9: push re-hashes what it sends -------------------------------------------------------

def test_9_push_refuses_flipped_loose_object(tmp_path: Path, dsv) -> None:
    src = tmp_path / "src"
    big = os.urandom((1 << 20) + 10)
    write_tree(src, {"big.bin": big, "a.txt": "a"})
    assert dsv("init", "--name", "data", cwd=src).code == 0
    assert dsv("commit", "-m", "one", cwd=src).code == 0
    oid = hash_bytes(big)
    loose = src / ".dsv" / "objects" / "loose" / oid[:2] / oid
    os.chmod(loose, 0o644)
    with open(loose, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=src).code == 0
    r = dsv("push", cwd=src)
    assert r.code == 1 and "corrupt" in r.err and oid[:12] in r.err, r.err
    assert not (tmp_path / "remote" / "loose" / oid[:2] / oid).exists()
    assert not list((tmp_path / "remote").glob("refs/*/latest"))


# ---- 11, 12, 13: history is a DAG within one dataset ------------------------------------

def test_11_self_parent_record_is_ignored(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    good = remote.version("v1aaaaaaaa", DS, {"f.txt": b"one"})
    root = remote.files({"f.txt": b"two"})
    evil = remote.record("v2bbbbbbbb", DS, root,
                         parents=[{"id": "v2bbbbbbbb", "record": good}])
    remote.publish()
    remote.ref(DS, "tags/evil", "v2bbbbbbbb", evil)
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 0, r.err
    assert "names itself" in r.err
    victim = tmp_path / "victim"
    log = json.loads(dsv("log", "--json", cwd=victim).out)
    assert [v["id"] for v in log] == ["v1aaaaaaaa"]
    assert dsv("show", "victim:evil", cwd=victim).code == 1


def test_11_parent_from_another_dataset_is_refused(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    other = remote.version("o1cccccccc", "other1", {"g.txt": b"other"}, path="o")
    root = remote.files({"f.txt": b"two"})
    child = remote.record("v2bbbbbbbb", DS, root, parents=[{"id": "o1cccccccc", "record": other}])
    remote.publish()
    remote.ref(DS, "latest", "v2bbbbbbbb", child)
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 1 and "not a version of its own dataset" in r.err, r.err


def test_12_ref_naming_another_datasets_version_is_ignored(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    remote.version("a1aaaaaaaa", "dsa", {"a.txt": b"a"}, path="A")
    b_record = remote.version("b1bbbbbbbb", "dsb", {"b.txt": b"b"}, path="B")
    remote.ref("dsa", "tags/t1", "b1bbbbbbbb", b_record)
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 0, r.err
    victim = tmp_path / "victim"
    r = dsv("checkout", "dsa:t1", cwd=victim)
    assert r.code == 1 and r.err.startswith("error: "), r.err
    assert (victim / "A" / "a.txt").read_bytes() == b"a"
    assert not (victim / "A" / "b.txt").exists()


def test_13_dataset_name_that_is_another_id_is_refused(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a"})
    assert dsv("init", "--name", "data", cwd=ws).code == 0
    ds_id = json.loads(dsv("datasets", "list", "--json", cwd=ws).out)[0]["id"]
    r = dsv("datasets", "create", ds_id, cwd=ws)
    assert r.code == 1 and "id of another dataset" in r.err, r.err
    assert dsv("datasets", "create", "other", cwd=ws).code == 0
    r = dsv("datasets", "update", "other", "--name", ds_id, cwd=ws)
    assert r.code == 1 and "id of another dataset" in r.err, r.err


# ---- 14, 15: sizes, counts and nesting ---------------------------------------------------

def test_14_pack_index_claiming_huge_object_is_refused(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    root = remote.files({"f.txt": b"x"})
    record = remote.record("v1aaaaaaaa", DS, root)
    remote.publish(entries_override={root: 1 << 40})
    remote.ref(DS, "latest", "v1aaaaaaaa", record)
    r = _clone(dsv, remote.root, tmp_path / "victim")
    # The index is ignored (one bad index must not stop every clone), so the one ref's
    # record is nowhere: with every ref ignored, there is nothing to clone (an error).
    assert r.code == 1 and "bug in dsv" not in r.err, r.err
    assert "ignored pack index" in r.err and "out of bounds" in r.err
    assert "error: nothing to clone: every ref read of" in r.err, r.err
    assert not (tmp_path / "victim").exists()


def test_14_tree_bomb_is_refused_quickly(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    blob = remote.blob(b"x")
    child = remote.tree([["a", "f", 0o644, 1, blob], ["b", "f", 0o644, 1, blob]])
    for _level in range(40):  # each level names the one below twice: 2^41 paths
        child = remote.tree([["a", "d", 0, 0, child], ["b", "d", 0, 0, child]])
    record = remote.record("v1aaaaaaaa", DS, child)
    remote.publish()
    remote.ref(DS, "latest", "v1aaaaaaaa", record)
    started = time.monotonic()
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert time.monotonic() - started < 20
    assert r.code == 1 and "paths" in r.err and "bug in dsv" not in r.err, r.err


def test_15_deeply_nested_json_ref_is_ignored(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", DS, {"f.txt": b"good"})
    remote.ref(DS, "tags/deep", "x", "y", raw=b"[" * 100_000 + b"]" * 100_000)
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 0, r.err
    assert (tmp_path / "victim" / "f.txt").read_bytes() == b"good"


def test_15_deeply_nested_record_is_ignored(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", DS, {"f.txt": b"good"})
    deep = remote.add(b'{"type":"version","v":1,"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}", 2)
    remote.publish()
    remote.ref(DS, "tags/deep", "v9", deep)
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 0, r.err
    assert "bug in dsv" not in r.err
    assert (tmp_path / "victim" / "f.txt").read_bytes() == b"good"


# ---- attacks that held before, kept held ------------------------------------------------

@pytest.mark.parametrize("name", ["..", "a/b", "nul\0x", "."])
def test_bad_names_in_tree_are_refused(tmp_path: Path, dsv, name: str) -> None:
    remote = HostileRemote(tmp_path / "remote")
    blob = remote.blob(b"evil")
    root = remote.tree([[name, "f", 0o644, 4, blob]])
    record = remote.record("v1aaaaaaaa", DS, root)
    remote.publish()
    remote.ref(DS, "latest", "v1aaaaaaaa", record)
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 1 and r.err.startswith("error: ") and "bug in dsv" not in r.err, r.err
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("entry", [
    ["f.txt", ["f"], 0o644, 4, None],        # a kind that is a list (unhashable)
    ["f.txt", "f", True, 4, None],           # a JSON true for a mode
    ["f.txt", "f", 0o644, 4, "A" * 64],      # an id in upper case
    ["f.txt", "f", 0o644, 4, "\u00e9" * 64],  # an id of non-ASCII letters
])
def test_malformed_tree_entries_are_refused(tmp_path: Path, dsv, entry: list) -> None:
    remote = HostileRemote(tmp_path / "remote")
    blob = remote.blob(b"evil")
    root = remote.tree([[*entry[:4], entry[4] or blob]])
    record = remote.record("v1aaaaaaaa", DS, root)
    remote.publish()
    remote.ref(DS, "latest", "v1aaaaaaaa", record)
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 1 and "has a malformed entry" in r.err and "bug in dsv" not in r.err, r.err
    assert not (tmp_path / "victim").exists()


def test_absolute_symlink_is_refused(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", DS, {"etc": ("l", "/etc"), "f.txt": b"x"})
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 1 and "absolute" in r.err, r.err


def test_wrong_bytes_in_pack_are_refused(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", DS, {"f.txt": b"the true bytes"})
    pack = next((remote.root / "packs").iterdir())
    data = bytearray(pack.read_bytes())
    at = data.index(b"the true bytes")
    data[at] ^= 1
    pack.write_bytes(bytes(data))
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 1 and "corrupt" in r.err, r.err
    assert not (tmp_path / "victim").exists()


def test_secrets_are_never_stored_or_printed(tmp_path: Path, dsv, monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekrit-value-123")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a"})
    assert dsv("init", "--name", "data", cwd=ws).code == 0
    r = dsv("remote", "add", "s3", "s3://bucket/prefix", "--endpoint-url",
            "http://127.0.0.1:9", cwd=ws)
    assert r.code == 0
    r2 = dsv("push", "s3", cwd=ws)
    for text in (r.out, r.err, r2.out, r2.err):
        assert "sekrit" not in text and "AKIAEXAMPLE" not in text
    for path in (ws / ".dsv").rglob("*"):
        if path.is_file():
            assert b"sekrit" not in path.read_bytes()


# ---- 9: checking and repairing a remote ---------------------------------------------------

def test_9_verify_remote_finds_and_repairs_damage(tmp_path: Path, dsv) -> None:
    src = tmp_path / "src"
    big = os.urandom((1 << 20) + 10)
    small = b"small file contents " * 10
    write_tree(src, {"big.bin": big, "small.txt": small, "other.txt": "other"})
    assert dsv("init", "--name", "data", cwd=src).code == 0
    assert dsv("commit", "-m", "one", cwd=src).code == 0
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=src).code == 0
    assert dsv("push", cwd=src).code == 0
    r = dsv("verify", "--remote", "origin", "--read-data", "--json", cwd=src)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["ok"] and report["versions_checked"] == 1 and report["objects_read"] >= 5

    big_oid = hash_bytes(big)
    flip_byte(remote / "loose" / big_oid[:2] / big_oid, 4096)
    pack = next(p for p in (remote / "packs").iterdir() if small in p.read_bytes())
    flip_byte(pack, pack.read_bytes().index(small) + 3)
    # Structure alone is intact; reading the data finds both.
    assert dsv("verify", "--remote", "origin", cwd=src).code == 0
    r = dsv("verify", "--remote", "origin", "--read-data", cwd=src)
    assert r.code == 1, r.out + r.err
    assert big_oid[:12] in r.out and hash_bytes(small)[:12] in r.out
    # push cannot fix it (the remote "has" both); --repair can.
    r = dsv("verify", "--remote", "origin", "--read-data", "--repair", "--json", cwd=src)
    assert r.code == 0, r.out + r.err
    report = json.loads(r.out)
    assert report["ok"] and len(report["found"]) >= 2 and report["repaired"]
    # The damaged pack is gone, or (rebuilt from the same objects in the same order, so
    # under the same id) holds the good bytes again.
    assert not pack.exists() or small in pack.read_bytes()
    clone = tmp_path / "clone"
    r = dsv("clone", remote, clone, cwd=tmp_path)
    assert r.code == 0, r.err
    assert read_tree(clone) == read_tree(src)


def test_9_verify_remote_finds_missing_objects_and_bad_refs(tmp_path: Path, dsv) -> None:
    src = tmp_path / "src"
    write_tree(src, {"a.txt": "a" * 100, "b.txt": "b" * 100})
    assert dsv("init", "--name", "data", cwd=src).code == 0
    assert dsv("commit", "-m", "one", cwd=src).code == 0
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=src).code == 0
    assert dsv("push", cwd=src).code == 0
    # A blob pack vanished with its index.
    blob_pack = next(p for p in (remote / "packs").iterdir() if b"a" * 100 in p.read_bytes())
    (remote / "index" / blob_pack.name.removesuffix(".pack")).unlink()
    blob_pack.unlink()
    (remote / "refs" / "bogus").mkdir()
    (remote / "refs" / "bogus" / "latest").write_bytes(b"[" * 10_000)
    r = dsv("verify", "--remote", "origin", "--json", cwd=src)
    assert r.code == 1
    problems = json.loads(r.out)["problems"]
    assert any("not on the remote" in p for p in problems), problems
    assert any("bogus" in p for p in problems), problems
    (remote / "refs" / "bogus" / "latest").unlink()
    r = dsv("verify", "--remote", "origin", "--repair", "--json", cwd=src)
    assert r.code == 0, r.out + r.err
    clone = tmp_path / "clone"
    assert dsv("clone", remote, clone, cwd=tmp_path).code == 0
    assert read_tree(clone) == read_tree(src)


def test_14_loose_object_claiming_a_terabyte_is_refused_before_download(tmp_path: Path,
                                                                         dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    fake = "ab" * 32
    root = remote.tree([["huge.bin", "f", 0o644, 1 << 40, fake]])
    record = remote.record("v1aaaaaaaa", DS, root)
    remote.publish()
    remote.ref(DS, "latest", "v1aaaaaaaa", record)
    r = _clone(dsv, remote.root, tmp_path / "victim")
    # (refused before the download: the checkout finds first that the disk cannot hold it)
    # (the file, and the object it is downloaded as first, on the same disk)
    assert r.code == 1 and "the checkout needs 2,199,023,255,552 bytes in" in r.err, r.err
    assert " free" in r.err and not (tmp_path / "victim").exists()


# ---- 16: cluster-cache entries that are not files -----------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_16_bad_cache_entries_are_dropped_and_read_from_origin(tmp_path: Path, dsv,
                                                               kind: str) -> None:
    src = tmp_path / "src"
    big = os.urandom((1 << 20) + 99)
    write_tree(src, {"big.bin": big, "small.txt": "small"})
    assert dsv("init", "--name", "data", cwd=src).code == 0
    assert dsv("commit", "-m", "one", cwd=src).code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=src).code == 0
    assert dsv("push", cwd=src).code == 0
    dest = tmp_path / "dest"
    assert dsv("init", "--bare", dest, cwd=tmp_path).code == 0
    cache = tmp_path / "cache"
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=dest).code == 0
    assert dsv("remote", "add", "shared", cache, "--cache", cwd=dest).code == 0
    oid = hash_bytes(big)
    entry = cache / "loose" / oid[:2] / oid
    entry.parent.mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for you")
    if kind == "fifo":
        os.mkfifo(entry)
    elif kind == "symlink":
        os.symlink(secret, entry)
    else:
        entry.mkdir()
    proc = subprocess.run([sys.executable, "-m", "dsv", "pull", "--json"], cwd=dest,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert dsv("datasets", "update", "data", "--path", "data", cwd=dest).code == 0
    assert dsv("checkout", "data:latest", cwd=dest).code == 0
    assert (dest / "data" / "big.bin").read_bytes() == big
    assert secret.read_bytes() == b"not for you"
    assert entry.is_file() and not entry.is_symlink() and entry.read_bytes() == big


# ---- 1 through an import; 14 through refs that are not files ------------------------------

@pytest.mark.parametrize("key", ["pfx/.dsv/config.json", "pfx/sub/.DSV/index.db"])
def test_1_import_key_naming_a_store_is_refused(tmp_path: Path, dsv, s3_endpoint: str,
                                                aws_env: None, key: str) -> None:
    import uuid

    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"h-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="pfx/ok.txt", Body=b"ok")
    client.put_object(Bucket=bucket, Key=key, Body=b'{"format": 1, "evil": true}')
    ws = tmp_path / "ws"
    ws.mkdir()
    assert dsv("init", "--name", "data", cwd=ws).code == 0
    r = dsv("import", f"s3://{bucket}/pfx", "--endpoint-url", s3_endpoint, cwd=ws)
    assert r.code == 1 and "reserved" in r.err and "bug in dsv" not in r.err, r.err
    assert json.loads((ws / ".dsv" / "config.json").read_text()) == {"format": STORE_FORMAT,
                                                                    "hash": "blake3"}


@pytest.mark.parametrize("kind", ["fifo", "sparse", "symlink"])
def test_14_ref_that_is_not_a_small_file_is_ignored(tmp_path: Path, dsv, kind: str) -> None:
    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", DS, {"f.txt": b"good"})
    bad = remote.root / "refs" / "x" / "latest"
    bad.parent.mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(bad)
    elif kind == "sparse":
        with open(bad, "wb") as f:
            f.truncate(4 << 30)
    else:
        os.symlink("/etc/passwd", bad)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "dsv", "clone", str(remote.root),
                           str(tmp_path / "victim")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert proc.returncode == 0, proc.stderr
    assert "bug in dsv" not in proc.stderr
    assert (tmp_path / "victim" / "f.txt").read_bytes() == b"good"


def test_15_deeply_nested_marker_and_tree_are_refused(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", DS, {"f.txt": b"good"})
    marker = remote.root / "dsv-remote.json"
    marker.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 1 and r.err.startswith("error: ") and "bug in dsv" not in r.err, r.err
    assert "dsv-remote.json" in r.err

    remote2 = HostileRemote(tmp_path / "remote2")
    deep = remote2.add(b'{"entries":' + b"[" * 50_000 + b"]" * 50_000 + b',"type":"tree","v":1}',
                       1)
    record = remote2.record("v1aaaaaaaa", DS, deep)
    remote2.publish()
    remote2.ref(DS, "latest", "v1aaaaaaaa", record)
    r = _clone(dsv, remote2.root, tmp_path / "victim2")
    assert r.code == 1 and "not a valid tree" in r.err and "bug in dsv" not in r.err, r.err


def test_shifted_pack_offsets_are_refused(tmp_path: Path, dsv) -> None:
    """A pack index that hashes to its name but points each entry one byte off."""
    import struct

    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", DS, {"f.txt": b"payload bytes"})
    index = next((remote.root / "index").iterdir())
    tail = index.read_bytes()
    entry = struct.Struct(">32sQQB")
    count = (len(tail) - 24) // entry.size
    shifted = b"".join(
        entry.pack(raw, offset + 1, length, kind)
        for raw, offset, length, kind in entry.iter_unpack(tail[:count * entry.size]))
    n, table_offset, end = struct.unpack(">QQ8s", tail[-24:])
    new_tail = shifted + struct.pack(">QQ8s", n, table_offset + 1, end)
    new_id = hash_bytes(new_tail)
    pack = remote.root / "packs" / f"{index.name}.pack"
    body = pack.read_bytes()[:-len(tail)]
    index.unlink()
    pack.unlink()
    (remote.root / "index" / new_id).write_bytes(new_tail)
    (remote.root / "packs" / f"{new_id}.pack").write_bytes(body + b"\0" + new_tail)
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 1 and "corrupt" in r.err and "bug in dsv" not in r.err, r.err
    assert not (tmp_path / "victim").exists()


def test_9_verify_remote_catches_a_corrupt_tree_and_repair_keeps_good_data(tmp_path: Path,
                                                                          dsv) -> None:
    src = tmp_path / "src"
    write_tree(src, {"d/a.txt": "alpha " * 20, "e/b.txt": "beta " * 20})
    assert dsv("init", "--name", "data", cwd=src).code == 0
    assert dsv("commit", "-m", "one", cwd=src).code == 0
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=src).code == 0
    assert dsv("push", cwd=src).code == 0
    marker = b'"a.txt"'
    pack = next(p for p in (remote / "packs").iterdir() if marker in p.read_bytes())
    flip_byte(pack, pack.read_bytes().index(marker) + 2)
    # Structure alone already reads trees back: the damage is found without --read-data.
    r = dsv("verify", "--remote", "origin", cwd=src)
    assert r.code == 1 and "corrupt" in r.out, r.out + r.err
    r = dsv("verify", "--remote", "origin", "--repair", "--json", cwd=src)
    assert r.code == 0, r.out + r.err
    assert json.loads(r.out)["ok"]
    r = dsv("verify", "--remote", "origin", "--read-data", cwd=src)
    assert r.code == 0, r.out + r.err
    clone = tmp_path / "clone"
    assert dsv("clone", remote, clone, cwd=tmp_path).code == 0
    assert read_tree(clone) == read_tree(src)


def test_9_verify_remote_reads_trees_a_level_at_a_time_and_damage_still_one_by_one(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """`verify --remote` reads a version's trees many to a ranged GET, a level at a time
    (one GET a tree made a million-file check take minutes). Bytes read that way are
    still checked one tree at a time: a damaged tree among them is read again alone and
    reported, and a range that cannot be read (a pack cut short) leaves each of its trees
    to be read alone, so only the trees really lost are reported."""
    from dsv.remotes.fs import FsBackend
    src = tmp_path / "src"
    write_tree(src, {f"d{i:02d}/{n}.txt": f"{i} {n} " * 9 for i in range(40) for n in "ab"})
    assert dsv("init", "--name", "data", cwd=src).code == 0
    assert dsv("commit", "-m", "one", cwd=src).code == 0
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=src).code == 0
    assert dsv("push", cwd=src).code == 0
    ranges: list[tuple[str, int]] = []
    get_range = FsBackend.get_range

    def counted(self: FsBackend, key: str, start: int, length: int) -> bytes:
        ranges.append((key, length))
        return get_range(self, key, start, length)

    monkeypatch.setattr(FsBackend, "get_range", counted)
    r = dsv("verify", "--remote", "origin", "--json", cwd=src)
    assert r.code == 0 and json.loads(r.out)["ok"], r.out + r.err
    assert 1 <= len(ranges) <= 3, ranges   # (41 trees: before, 41 GETs)

    pack = next(p for p in (remote / "packs").iterdir() if b'"a.txt"' in p.read_bytes())
    body = pack.read_bytes()
    flip_byte(pack, body.index(b'"a.txt"') + 2)   # (the first directory's tree)
    ranges.clear()
    r = dsv("verify", "--remote", "origin", "--json", cwd=src)
    report = json.loads(r.out)
    corrupt = [p for p in report["problems"] if "corrupt" in p]
    assert r.code == 1 and len(corrupt) == 1 and len(report["problems"]) == 1, report
    assert len(ranges) <= 4, ranges

    flip_byte(pack, body.index(b'"a.txt"') + 2)   # (mended)
    from dsv.remotes.base import RemoteRefused

    def refusing(self: FsBackend, key: str, start: int, length: int) -> bytes:
        ranges.append((key, length))
        if length > 4096:   # (a range of many trees: refused, as a flaky endpoint may)
            raise RemoteRefused("refused")
        return get_range(self, key, start, length)

    monkeypatch.setattr(FsBackend, "get_range", refusing)
    ranges.clear()
    r = dsv("verify", "--remote", "origin", "--json", cwd=src)
    assert r.code == 0 and json.loads(r.out)["ok"], r.out + r.err
    assert any(n > 4096 for _k, n in ranges), ranges   # (refused, then read tree by tree)


def test_9_verify_remote_finds_objects_by_their_whole_id_in_the_packs_tables() -> None:
    """`verify --remote` keeps no map of hex ids (873 MB for a million-file remote): it
    finds an object in the packs' own tables by the first 64 bits of its id, then
    compares the whole id. Ids that share those bits (as a hostile index may list) are
    each found, and only they; an object in two packs names both; a damaged pack is no
    holder; a loose object is held."""
    from dsv.objects import PackInfo, _ENTRY
    from dsv.remotecheck import _Where

    def table(*rows: tuple[bytes, int]) -> bytes:
        return b"".join(_ENTRY.pack(raw, offset, 10, 1) for raw, offset in rows)

    a = bytes(range(32))
    b = a[:8] + bytes(24)               # (a's first 64 bits, another id)
    c = bytes(8) + a[8:]                # (a's last 192 bits)
    d = bytes([7]) * 32
    tables = {"p1": PackInfo("p1", 0, table((a, 8), (b, 18))),
              "p2": PackInfo("p2", 0, table((b, 8), (d, 18))),
              "bad": PackInfo("bad", 0, table((c, 8)))}
    where = _Where(tables, {"bad"}, {"ef" * 32: 5})
    assert where.get(a.hex()) == ("p1", 8, 10, 1) and where.get(b.hex()) == ("p1", 18, 10, 1)
    assert where.holders(a.hex()) == ["p1"] and where.holders(b.hex()) == ["p1", "p2"]
    assert where.get(d.hex()) == ("p2", 18, 10, 1)
    for absent in (c.hex(), (a[:31] + b"x").hex(), "zz" * 32, "ab"):
        assert where.get(absent) is None and not where.holds(absent)
        assert where.holders(absent) == []
    assert where.holds("ef" * 32) and where.get("ef" * 32) is None


def test_9_verify_remote_finds_an_id_among_thousands_sharing_its_first_64_bits() -> None:
    """A hostile index may list thousands of ids that share their first 64 bits. Each is
    still found, by a binary search among them (a few dozen rows read, never a scan of
    the thousands), and an id listed in two packs names both, first pack first."""
    import random

    from dsv.objects import PackInfo, _ENTRY
    from dsv.remotecheck import _Where

    reads = [0]

    class Counted(PackInfo):
        def row_at(self, i: int) -> tuple[bytes, int, int, int]:
            reads[0] += 1
            return super().row_at(i)

    prefix = b"\x01" * 8
    ids = [prefix + bytes.fromhex(hash_bytes(b"%d" % i))[:24] for i in range(5000)]
    random.Random(7).shuffle(ids)
    other = bytes.fromhex(hash_bytes(b"other"))
    p1 = b"".join(_ENTRY.pack(raw, 8 + 10 * i, 10, 1) for i, raw in enumerate(ids))
    p2 = _ENTRY.pack(ids[42], 8, 10, 1) + _ENTRY.pack(other, 18, 10, 1)
    p3 = _ENTRY.pack(other, 8, 10, 1) * 3000   # (one id listed 3,000 times)
    where = _Where({"p2": Counted("p2", 0, p2), "p1": Counted("p1", 0, p1),
                    "p3": Counted("p3", 0, p3)}, set(), {})
    for i in (0, 41, 42, 2500, 4999):
        reads[0] = 0
        assert where.get(ids[i].hex()) == (("p2", 8, 10, 1) if i == 42 else
                                           ("p1", 8 + 10 * i, 10, 1))
        assert reads[0] <= 40, reads[0]
    assert where.holders(ids[42].hex()) == ["p2", "p1"]
    assert where.holders(ids[41].hex()) == ["p1"]
    assert where.get(other.hex()) == ("p2", 18, 10, 1)
    reads[0] = 0
    assert where.holders(other.hex()) == ["p2", "p3"] and reads[0] <= 80, reads[0]
    for absent in (prefix + bytes(24), prefix + b"\xff" * 24, b"\x01" * 7 + b"\x02" + bytes(24)):
        reads[0] = 0
        assert not where.holds(absent.hex()) and where.holders(absent.hex()) == []
        assert reads[0] <= 40, reads[0]


def test_9_verify_remote_reads_overlapping_trees_of_a_hostile_index_once() -> None:
    """A hostile pack index may list many "trees" over nearly the same 16 MiB. verify
    --remote reads a batch of trees with one ranged GET per stretch of a pack, and keeps
    each tree's bytes: a batch reads at most AHEAD_BYTES and keeps at most AHEAD_BYTES of
    trees (64 such trees once held 1 GiB); the others are read alone in their turn."""
    from dsv import remotecheck
    from dsv.objects import KIND_TREE, PackInfo, _ENTRY

    size = 16 << 20
    ids = [hash_bytes(b"%d" % i) for i in range(300)]
    table = b"".join(_ENTRY.pack(bytes.fromhex(oid), 8 + i, size - 64, KIND_TREE)
                     for i, oid in enumerate(ids[:64]))
    table += b"".join(_ENTRY.pack(bytes.fromhex(oid), 8 + i * 1024, 1000, KIND_TREE)
                      for i, oid in enumerate(ids[64:]))
    asked: list[int] = []

    class Backend:
        def get_range(self, key: str, start: int, length: int) -> bytes:
            asked.append(length)
            return bytes(length)

    class Remote:
        backend = Backend()

    where = remotecheck._Where({"p" * 64: PackInfo("p" * 64, 1 << 30, table)}, set(), {})
    got = remotecheck._read_ahead(Remote(), where, ids)  # type: ignore[arg-type]
    assert sum(asked) <= remotecheck.AHEAD_BYTES and len(asked) == 1, asked
    assert 2 <= len(got) and sum(map(len, got.values())) <= remotecheck.AHEAD_BYTES
    assert all(len(data) == (size - 64 if oid in ids[:64] else 1000)
               for oid, data in got.items())

    asked.clear()   # ten trees of 16 MiB in ten packs: a batch reads two of them
    tables = {f"{n:064x}": PackInfo(f"{n:064x}", 1 << 30, _ENTRY.pack(
        bytes.fromhex(ids[n]), 8, size - 8, KIND_TREE)) for n in range(10)}
    got = remotecheck._read_ahead(Remote(), remotecheck._Where(tables, set(), {}),  # type: ignore[arg-type]
                                  ids[:10])
    assert len(got) == 2 and sum(asked) <= remotecheck.AHEAD_BYTES, asked


def test_9_repair_that_rebuilds_the_same_pack_keeps_it(tmp_path: Path, dsv) -> None:
    """A pack rebuilt from the same objects has the same id: never delete it after."""
    src = tmp_path / "src"
    write_tree(src, {"only.txt": "the only small file " * 5})
    assert dsv("init", "--name", "data", cwd=src).code == 0
    assert dsv("commit", "-m", "one", cwd=src).code == 0
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=src).code == 0
    assert dsv("push", cwd=src).code == 0
    blob = b"the only small file " * 5
    pack = next(p for p in (remote / "packs").iterdir() if blob in p.read_bytes())
    flip_byte(pack, pack.read_bytes().index(blob) + 1)
    r = dsv("verify", "--remote", "origin", "--read-data", "--repair", "--json", cwd=src)
    assert r.code == 0, r.out + r.err
    r = dsv("verify", "--remote", "origin", "--read-data", cwd=src)
    assert r.code == 0, r.out + r.err
    clone = tmp_path / "clone"
    assert dsv("clone", remote, clone, cwd=tmp_path).code == 0
    assert read_tree(clone) == read_tree(src)


# ---- found in review: more doors to the same classes --------------------------------------

def test_6_file_where_a_nested_dataset_has_its_directory(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"sub": "a file named sub", "top.txt": "t"})
    assert dsv("init", "--name", "A", cwd=ws).code == 0
    assert dsv("commit", "-m", "v1", cwd=ws).code == 0
    (ws / "sub").unlink()
    (ws / "sub" / "y").mkdir(parents=True)
    assert dsv("datasets", "create", "B", "--path", "sub/y", cwd=ws).code == 0
    (ws / "sub" / "y" / "f.txt").write_text("precious")
    assert dsv("commit", "-m", "v2", "-d", "A", cwd=ws).code == 0
    r = dsv("checkout", "A:latest~1", "--force", cwd=ws)
    assert r.code == 0, r.err
    assert (ws / "sub" / "y" / "f.txt").read_text() == "precious"


def test_6_nested_foreign_store_is_left_alone(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"proj/data.csv": "orig", "top.txt": "t"})
    assert dsv("init", "--name", "A", cwd=ws).code == 0
    assert dsv("commit", "-m", "v1", cwd=ws).code == 0
    assert dsv("init", "--name", "inner", cwd=ws / "proj").code == 0
    (ws / "top.txt").write_text("t2")
    assert dsv("commit", "-m", "v2", "-d", "A", cwd=ws).code == 0
    (ws / "proj" / "data.csv").write_text("edited inside the nested store")
    r = dsv("checkout", "A:latest~1", cwd=ws)
    assert r.code == 0, r.err
    assert (ws / "proj" / "data.csv").read_text() == "edited inside the nested store"
    assert (ws / "proj" / ".dsv" / "config.json").is_file()


def test_files_get_never_deletes_a_directory_in_the_way(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"data/thesis.tex": "version's file"})
    assert dsv("init", "--name", "F", cwd=ws).code == 0
    assert dsv("commit", "-m", "v1", cwd=ws).code == 0
    out = tmp_path / "out"
    write_tree(out, {"data/thesis.tex/chapter1.tex": "the user's work"})
    r = dsv("files", "get", "F:latest", "--target-path", out, cwd=ws)
    assert r.code == 1 and "left alone" in r.err, r.err
    assert (out / "data/thesis.tex/chapter1.tex").read_text() == "the user's work"


def test_3_links_through_links_refused_for_dsv_run_inputs(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    chain = "/".join(["l"] * 12) + "/" + "/".join([".."] * 13) + "/etc/passwd"
    remote.version("v1aaaaaaaa", DS, {"d/l": ("l", "."), "f.txt": b"x"})
    root = remote.files({"d/l": ("l", "."), "s": ("l", "d/" + chain), "f.txt": b"x"})
    record = remote.record("v2bbbbbbbb", DS, root)
    remote.publish()
    remote.ref(DS, "tags/evil", "v2bbbbbbbb", record)
    victim = tmp_path / "victim"
    assert _clone(dsv, remote.root, victim).code == 0
    assert dsv("pull", "origin", "victim:evil", cwd=victim).code == 0
    for mode in (["--no-mount"], []):
        r = run_dsv("run", *mode, "--input", "x=victim:evil", "--", "sh", "-c",
                    'head -c 4 "$DSV_INPUT_X/s"', cwd=victim)
        assert r.returncode != 0, r.stdout
        assert "root" not in r.stdout and "outside the dataset" in r.stderr, r.stderr


def test_3_links_may_not_resolve_into_another_dataset(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    chain = "/".join(["l"] * 12) + "/" + "/".join([".."] * 13) + "/etc/passwd"
    remote.version("b1bbbbbbbb", "dsb", {"l": ("l", "."), "g.txt": b"g"}, path="nd")
    remote.version("a1aaaaaaaa", "dsa", {"s": ("l", "nd/" + chain), "f.txt": b"f"}, path=".")
    victim = tmp_path / "victim"
    r = _clone(dsv, remote.root, victim)
    assert r.code == 1 and "nested dataset" in r.err, r.err
    assert not (victim / "s").is_symlink() if victim.exists() else True


def test_3_draft_links_are_checked_together(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a"})
    assert dsv("init", "--name", "P", cwd=ws).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    src1 = tmp_path / "src1"
    (src1 / "d").mkdir(parents=True)
    os.symlink(".", src1 / "d" / "l")
    src2 = tmp_path / "src2"
    src2.mkdir()
    os.symlink("d/l/../..", src2 / "s")
    draft = json.loads(dsv("versions", "create", "P", "--json", cwd=ws).out)["id"]
    assert dsv("files", "put", f"P:{draft}", src1, cwd=ws).code == 0
    r = dsv("files", "put", f"P:{draft}", src2 / "s", cwd=ws)
    assert r.code == 1 and "outside the dataset" in r.err, r.err


def test_11_junk_parent_records_make_no_cycle(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    root = remote.files({"f.txt": b"x"})
    junk = "cd" * 32
    a = remote.record("aaaaaaaaaa", DS, root, parents=[{"id": "bbbbbbbbbb", "record": junk}])
    b = remote.record("bbbbbbbbbb", DS, root, parents=[{"id": "aaaaaaaaaa", "record": junk}],
                      message="b")
    remote.publish()
    remote.ref(DS, "latest", "aaaaaaaaaa", a)
    remote.ref(DS, "tags/t", "bbbbbbbbbb", b)
    victim = tmp_path / "victim"
    assert _clone(dsv, remote.root, victim).code == 0
    assert dsv("show", "victim:latest~1", cwd=victim).code == 1
    r = dsv("versions", "delete", "victim:t", "--force", cwd=victim)
    assert "later versions" not in r.err


def test_11_parent_id_of_a_local_version_of_another_dataset_is_refused(tmp_path: Path,
                                                                       dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"b/x.txt": "bee's data"})
    assert dsv("init", "--bare", cwd=ws).code == 0
    assert dsv("datasets", "create", "bee", "--path", "b", cwd=ws).code == 0
    bee_v = vid = dsv("commit", "-m", "bee", "-d", "bee", cwd=ws).out.strip().split(":")[1]
    remote = HostileRemote(tmp_path / "remote")
    root = remote.files({"f.txt": b"x"})
    rec = remote.record("v2bbbbbbbb", "att1", root, parents=[{"id": bee_v, "record": "cd" * 32}],
                        dataset_name="att")
    remote.publish()
    remote.ref("att1", "latest", "v2bbbbbbbb", rec, name="att", path="att")
    assert dsv("remote", "add", "origin", remote.root, cwd=ws).code == 0
    r = dsv("pull", cwd=ws)
    assert r.code == 1 and "forged" in r.err, r.err
    assert vid
    assert (ws / "b" / "x.txt").read_text() == "bee's data"


def test_5_unreferenced_records_never_enter_the_store(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", DS, {"mine.txt": b"the real bytes"})
    root = remote.files({"mine.txt": b"attacker bytes"})
    remote.record("zzzzzzzzzz", DS, root, committed="2030-01-01T00:00:00.000000Z")
    remote.publish()
    victim = tmp_path / "victim"
    assert _clone(dsv, remote.root, victim).code == 0
    assert dsv("index", "rebuild", cwd=victim).code == 0
    log = json.loads(dsv("log", "--json", cwd=victim).out)
    assert [v["id"] for v in log] == ["v1aaaaaaaa"]
    assert (victim / "mine.txt").read_bytes() == b"the real bytes"


def test_13_remote_dataset_id_equal_to_a_local_name_is_ignored(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a"})
    assert dsv("init", "--name", "raw", cwd=ws).code == 0
    assert dsv("commit", "-m", "mine", cwd=ws).code == 0
    mine = json.loads(dsv("log", "raw", "--json", cwd=ws).out)[0]["id"]
    remote = HostileRemote(tmp_path / "remote")
    remote.version("aaaaaaaaaa", "raw", {"evil.txt": b"x"}, path="elsewhere")
    assert dsv("remote", "add", "origin", remote.root, cwd=ws).code == 0
    r = dsv("pull", cwd=ws)
    assert r.code == 0 and "ignored remote dataset raw" in r.err, r.err
    assert [v["id"] for v in json.loads(dsv("log", "raw", "--json", cwd=ws).out)] == [mine]


def test_4_group_writable_files_round_trip_clean(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a", "b.txt": "b"})
    os.chmod(ws / "a.txt", 0o664)
    assert dsv("init", "--name", "g", cwd=ws).code == 0
    assert dsv("commit", "-m", "v1", cwd=ws).code == 0
    (ws / "b.txt").write_text("b2")
    assert dsv("commit", "-m", "v2", cwd=ws).code == 0
    assert dsv("checkout", "g:latest~1", cwd=ws).code == 0
    (ws / "a.txt").unlink()
    assert dsv("checkout", "g:latest", "--force", cwd=ws).code == 0
    assert json.loads(dsv("status", "--json", cwd=ws).out)[0]["clean"]
    assert dsv("checkout", "g:latest~1", cwd=ws).code == 0


def test_user_files_named_like_temp_files_are_content(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a"})
    assert dsv("init", "--name", "L", cwd=ws).code == 0
    assert dsv("commit", "-m", "v1", cwd=ws).code == 0
    (ws / "a.txt").write_text("a2")
    assert dsv("commit", "-m", "v2", cwd=ws).code == 0
    (ws / ".dsv-tmp-notes").write_text("my notes")
    status = json.loads(dsv("status", "--json", cwd=ws).out)[0]
    assert status["added"] == [".dsv-tmp-notes"]
    r = dsv("checkout", "L:latest~1", cwd=ws)
    assert r.code == 1 and ".dsv-tmp-notes" in r.err
    assert (ws / ".dsv-tmp-notes").read_text() == "my notes"


def test_a_lying_working_file_is_never_copied_into_a_checkout(tmp_path: Path, dsv) -> None:
    root = tmp_path / "data"
    big = os.urandom(2 << 20)
    write_tree(root, {"big.bin": big})
    assert dsv("init", cwd=root).code == 0
    assert dsv("commit", "-m", "one", cwd=root).code == 0
    path = root / "big.bin"
    st = path.stat()
    with open(path, "r+b") as f:  # same inode, same size, same mtime: the cache is fooled
        f.write(b"\\xff" * 4096)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    out = tmp_path / "out"
    assert dsv("checkout", "data:latest", "--to", out, cwd=root).code == 0
    assert (out / "big.bin").read_bytes() == big


def test_14_sparse_pack_index_and_huge_record_numbers(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", DS, {"f.txt": b"good"})
    with open(remote.root / "index" / ("ab" * 32), "wb") as f:
        f.truncate(1 << 40)
    # (with a pack beside it: an index without its pack is passed over unread)
    (remote.root / "packs" / ("ab" * 32 + ".pack")).write_bytes(b"DSVPACK1")
    root = remote.files({"g.txt": b"g"})
    big = remote.record("v2bbbbbbbb", DS, root, size=2 ** 64)
    remote.publish()
    remote.ref(DS, "tags/big", "v2bbbbbbbb", big)
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 0 and "bug in dsv" not in r.err and "out of memory" not in r.err, r.err
    assert "ignored pack index" in r.err and "bad size" in r.err
    assert (tmp_path / "victim" / "f.txt").read_bytes() == b"good"


@pytest.mark.parametrize("name", ["tmp", "objects/packs", "objects/loose", "index.db"])
def test_store_paths_replaced_by_links_are_refused(tmp_path: Path, dsv, name: str) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a"})
    assert dsv("init", "--name", "data", cwd=ws).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = ws / ".dsv" / name
    path.rename(elsewhere / "moved")
    os.symlink(elsewhere / "moved", path)
    (ws / "b.txt").write_text("b")
    r = dsv("commit", "-m", "two", cwd=ws)
    assert r.code == 1 and "not a" in r.err and "bug in dsv" not in r.err, r.err


# ---- found in the second review ----------------------------------------------------------

def test_11_rebuild_brings_back_no_unchecked_parent(tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    root = remote.files({"f.txt": b"x"})
    r1 = remote.record("v111111111", DS, root, parents=[{"id": "vaaaaaaaaa", "record": "cd" * 32}])
    remote.publish()
    remote.ref(DS, "latest", "v111111111", r1)
    victim = tmp_path / "victim"
    assert _clone(dsv, remote.root, victim).code == 0
    r2 = remote.record("vaaaaaaaaa", DS, root, parents=[{"id": "v111111111", "record": r1}],
                       message="second")
    remote.publish()
    remote.ref(DS, "latest", "vaaaaaaaaa", r2)
    assert dsv("pull", cwd=victim).code == 0
    assert dsv("index", "rebuild", cwd=victim).code == 0
    shown = json.loads(dsv("show", "victim:v111111111", "--json", cwd=victim).out)
    assert shown["parents"] == []
    assert dsv("show", "victim:latest~2", cwd=victim).code == 1


def test_6_older_version_with_links_in_a_now_nested_directory(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"sub/f": "f", "top.txt": "t"})
    os.symlink("f", ws / "sub" / "l")
    assert dsv("init", "--name", "A", cwd=ws).code == 0
    assert dsv("commit", "-m", "v1", cwd=ws).code == 0
    (ws / "top.txt").write_text("t2")
    assert dsv("commit", "-m", "v2", cwd=ws).code == 0
    assert dsv("datasets", "create", "B", "--path", "sub", cwd=ws).code == 0
    r = dsv("checkout", "A:latest~1", cwd=ws)
    assert r.code == 0, r.err
    assert (ws / "top.txt").read_text() == "t"


def test_3_link_into_nested_dataset_commits_but_may_not_climb_out(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"data/v2/x.bin": "x", "top.txt": "t"})
    assert dsv("init", "--name", "ws", cwd=ws).code == 0
    assert dsv("datasets", "create", "data", "--path", "data", cwd=ws).code == 0
    os.symlink("data/v2", ws / "cur")
    r = dsv("commit", "-m", "with a link into data", "-d", "ws", cwd=ws)
    assert r.code == 0, r.err
    out = tmp_path / "out"
    assert dsv("checkout", "ws:latest", "--to", out, cwd=ws).code == 0
    assert os.readlink(out / "cur") == "data/v2"
    # A nested store whose own link would be climbed back out of: refused at commit.
    write_tree(ws, {"n/keep.txt": "k"})
    assert dsv("init", "--name", "inner", cwd=ws / "n").code == 0
    os.symlink(".", ws / "n" / "l")
    os.symlink("n/l/../..", ws / "x")
    r = dsv("commit", "-m", "escape", "-d", "ws", cwd=ws)
    assert r.code == 1 and "climbs back out" in r.err, r.err


def test_7_partial_checkout_keeps_an_edited_link_in_the_way(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"d/x": "x", "e/y": "y"})
    os.symlink("d", ws / "L")
    assert dsv("init", "--name", "A", cwd=ws).code == 0
    assert dsv("commit", "-m", "v1", cwd=ws).code == 0
    (ws / "L").unlink()
    write_tree(ws, {"L/f": "f"})
    assert dsv("commit", "-m", "v2", cwd=ws).code == 0
    assert dsv("checkout", "A:latest~1", cwd=ws).code == 0
    (ws / "L").unlink()
    os.symlink("e", ws / "L")   # the user's edit
    r = dsv("--store", ws, "checkout", "A:latest", "L/f", cwd=tmp_path)
    assert r.code == 1 and "uncommitted" in r.err, r.err
    assert os.readlink(ws / "L") == "e"


def test_4_commit_of_an_old_fine_mode_tree_with_no_change_is_nothing(tmp_path: Path,
                                                                    dsv) -> None:
    import dsv as api
    from dsv.errors import NothingToCommit
    from dsv.tree import Entry

    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a"})
    assert dsv("init", "--name", "g", cwd=ws).code == 0
    assert dsv("commit", "-m", "v1", cwd=ws).code == 0
    oid = json.loads(dsv("files", "list", "g:latest", "--json", cwd=ws).out)[0]["hash"]
    with api.open(ws) as store:  # a tree as an older dsv wrote it: mode 0o664
        store.commit_manifest("g", {"a.txt": Entry("f", 0o664, 1, oid)}, "old modes")
    assert dsv("checkout", "g:latest", "--force", cwd=ws).code == 0
    assert json.loads(dsv("status", "--json", cwd=ws).out)[0]["clean"]
    with api.open(ws) as store, pytest.raises(NothingToCommit):
        store.commit("no change", "g")


# ---- 14: a small tree that names one blob many times --------------------------------------

def _amplified(remote: HostileRemote, levels: int, blob: bytes) -> str:
    """A tree of 2**(levels + 1) files, each naming the one blob `blob`: each level names
    the one below twice (distinct trees: levels + 1)."""
    oid = remote.loose(blob)
    child = remote.tree([["a", "f", 0o644, len(blob), oid], ["b", "f", 0o644, len(blob), oid]])
    for _level in range(levels):
        child = remote.tree([["a", "d", 0, 0, child], ["b", "d", 0, 0, child]])
    return child


@pytest.mark.parametrize("claim", ["low", "true"])
def test_14_a_version_writing_more_than_the_disk_holds_is_refused_before_writing(
        tmp_path: Path, dsv, claim: str) -> None:
    remote = HostileRemote(tmp_path / "remote")
    blob = os.urandom(64 << 20)
    root = _amplified(remote, 13, blob)            # 16,384 files of 64 MiB: 1 TiB
    size = 1 if claim == "low" else (1 << 14) * len(blob)
    record = remote.record("v1aaaaaaaa", DS, root, size=size, files=1 << 14)
    remote.publish()
    remote.ref(DS, "latest", "v1aaaaaaaa", record)
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 1 and "bug in dsv" not in r.err, r.err
    # (a record that says less is found out by the first chunk, before it is written;
    # the blob the files name is downloaded into the store, on the same disk)
    assert f"the checkout needs {(1 << 14) * len(blob) + len(blob):,} bytes in" in r.err, r.err
    assert " free" in r.err
    assert not (tmp_path / "victim").exists()


def test_14_a_checkout_writing_more_than_the_disk_holds_leaves_the_directory_alone(
        tmp_path: Path, dsv) -> None:
    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", DS, {"a.txt": b"one"})
    blob = os.urandom(64 << 20)
    root = _amplified(remote, 13, blob)
    record = remote.record("v2bbbbbbbb", DS, root, size=(1 << 14) * len(blob), files=1 << 14)
    remote.publish()
    remote.ref(DS, "tags/big", "v2bbbbbbbb", record)
    victim = tmp_path / "victim"
    assert _clone(dsv, remote.root, victim).code == 0
    r = dsv("checkout", f"{DS}:big", cwd=victim)
    # (1 TiB of files and the 64 MiB blob they name, to download; less the 3 bytes of
    # a.txt, which the checkout removes)
    whole = (1 << 40) + len(blob)
    assert r.code == 1 and f"the checkout needs {whole - 3:,} bytes in" in r.err, r.err
    assert read_tree(victim) == {"a.txt": b"one"}
    r = dsv("checkout", f"{DS}:big", "--to", tmp_path / "out", cwd=victim)
    assert r.code == 1 and f"the checkout needs {whole:,} bytes in" in r.err, r.err
    assert not any((tmp_path / "out").rglob("*"))
    r = dsv("files", "get", f"{DS}:big", "--target-path", tmp_path / "got", cwd=victim)
    assert r.code == 1 and f"the checkout needs {whole:,} bytes in" in r.err, r.err
    r = dsv("get", remote.root, f"{DS}:big", "--to", tmp_path / "read", cwd=tmp_path)
    assert r.code == 1 and "the download needs 1,099,511,627,776 bytes in" in r.err, r.err
    assert not (tmp_path / "got").exists() and not (tmp_path / "read").exists()
