"""History fetched without its trees (issue 11): a fetch brings every version record its
refs reach, but trees only for the versions a ref names (`latest`, tags); an older
version's trees come from the remote the first time something reads them, validated as
a fetch validates them. A first clone then reads trees in proportion to the content, not
to the number of pushes. `dsv fetch --history` brings them all for work offline."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import read_tree, write_tree
from dsv.index import SCHEMA_VERSION


def _unfetched(ws: Path) -> dict[str, str]:
    with sqlite3.connect(ws / ".dsv" / "index.db") as db:
        return dict(db.execute("SELECT version, remote FROM unfetched"))


def _has_object(ws: Path, oid: str) -> bool:
    with sqlite3.connect(ws / ".dsv" / "index.db") as db:
        return db.execute("SELECT 1 FROM objects WHERE oid=?", (oid,)).fetchone() is not None


def _id(ref: str) -> str:
    return ref.rpartition(":")[2]


def _version(ws: Path, ref: str) -> dict[str, object]:
    with sqlite3.connect(ws / ".dsv" / "index.db") as db:
        row = db.execute("SELECT tree, record FROM versions WHERE id=?", (_id(ref),)).fetchone()
    return {"tree": row[0], "record": row[1]}


def _ds(ref: str) -> str:
    return ref.partition(":")[0]


def _clone(remote: Path, tmp_path: Path, dsv) -> Path:
    clone = tmp_path / "clone"
    got = dsv("clone", remote, clone, cwd=tmp_path)
    assert got.code == 0, got.err
    return clone


@pytest.fixture
def aged(tmp_path: Path, dsv) -> tuple[Path, Path, list[tuple[str, dict[str, bytes]]]]:
    """A dataset pushed after each of four commits to a directory remote; the first is
    tagged `v1`. Returns the workspace, the remote and each version's (id, files)."""
    ws = tmp_path / "ws"
    files = {f"d{d}/f{i}.bin": os.urandom(64) + f"{d}/{i}".encode()
             for d in range(3) for i in range(4)}
    write_tree(ws, files)
    assert dsv("init", cwd=ws).code == 0
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=ws).code == 0
    made = []
    for n in range(4):
        if n:
            files[f"d{n % 3}/f0.bin"] = f"round {n}".encode()
            files[f"new{n}.txt"] = f"new in round {n}".encode()
            write_tree(ws, files)
        got = dsv("commit", "-m", f"round {n}", "--json", cwd=ws)
        assert got.code == 0, got.err
        made.append((json.loads(got.out)["ref"], dict(files)))
        if n == 0:
            assert dsv("tag", made[0][0], "v1", cwd=ws).code == 0
        assert dsv("push", cwd=ws).code == 0
    return ws, remote, made


def test_a_clone_fetches_trees_only_for_the_versions_refs_name(
        aged: tuple[Path, Path, list[tuple[str, dict[str, bytes]]]], tmp_path: Path, dsv) -> None:
    ws, remote, made = aged
    clone = _clone(remote, tmp_path, dsv)
    assert read_tree(clone) == made[-1][1]
    # Rounds 1 and 2 are named by no ref: their records are here, their root trees are not.
    lazy = _unfetched(clone)
    assert sorted(lazy) == sorted(_id(ref) for ref, _files in made[1:3])
    assert set(lazy.values()) == {"origin"}
    for vid in lazy:
        assert _has_object(clone, _version(clone, vid)["record"])
        assert not _has_object(clone, _version(clone, vid)["tree"])
    for vid, _files in (made[0], made[3]):
        assert _has_object(clone, _version(clone, vid)["tree"])
    # The log needs no tree; verify and gc accept history whose trees are on the remote.
    log = dsv("log", cwd=clone)
    assert log.code == 0 and "round 1" in log.out and "round 2" in log.out
    assert dsv("verify", cwd=clone).code == 0
    assert dsv("gc", cwd=clone).code == 0
    assert _unfetched(clone) == lazy


def test_reading_an_older_version_fetches_its_trees_once(
        aged: tuple[Path, Path, list[tuple[str, dict[str, bytes]]]], tmp_path: Path, dsv) -> None:
    ws, remote, made = aged
    clone = _clone(remote, tmp_path, dsv)
    (v1, files1), (v2, _files2) = made[1], made[2]
    diff = dsv("diff", v1, v2, "--json", cwd=clone)
    assert diff.code == 0, diff.err
    assert "fetching the trees of version" in diff.err
    changes = json.loads(diff.out)
    assert changes["added"] == ["new2.txt"] and changes["modified"] == ["d2/f0.bin"]
    assert not _unfetched(clone)
    assert _has_object(clone, _version(clone, v1)["tree"])
    # Now the trees are here: reading them again goes to no remote.
    shutil.move(remote, tmp_path / "gone")
    again = dsv("diff", v1, v2, "--json", cwd=clone)
    assert again.code == 0 and json.loads(again.out) == changes
    shutil.move(tmp_path / "gone", remote)
    # Its files come as a checkout of any version's do.
    out = tmp_path / "out"
    got = dsv("checkout", v1, "--to", out, cwd=clone)
    assert got.code == 0, got.err
    assert read_tree(out) == files1
    assert dsv("verify", cwd=clone).code == 0


def test_fetch_history_brings_every_tree(
        aged: tuple[Path, Path, list[tuple[str, dict[str, bytes]]]], tmp_path: Path, dsv) -> None:
    ws, remote, made = aged
    clone = _clone(remote, tmp_path, dsv)
    plain = dsv("fetch", cwd=clone)
    assert plain.code == 0 and "2 older versions: trees left on the remote" in plain.out
    got = dsv("fetch", "--history", "--json", cwd=clone)
    assert got.code == 0, got.err
    assert json.loads(got.out)["unfetched"] == 0 and not _unfetched(clone)
    shutil.rmtree(remote)  # offline now: every version can still be read
    diff = dsv("diff", made[1][0], made[2][0], "--json", cwd=clone)
    assert diff.code == 0 and json.loads(diff.out)["added"] == ["new2.txt"]
    assert dsv("verify", cwd=clone).code == 0


def test_an_older_version_whose_remote_is_gone_is_one_clear_error(
        aged: tuple[Path, Path, list[tuple[str, dict[str, bytes]]]], tmp_path: Path, dsv) -> None:
    ws, remote, made = aged
    clone = _clone(remote, tmp_path, dsv)
    shutil.rmtree(remote)
    got = dsv("diff", made[1][0], made[2][0], cwd=clone)
    assert got.code != 0
    assert "bug in dsv" not in got.err and "Traceback" not in got.err
    assert "remote" in got.err
    assert sorted(_unfetched(clone)) == sorted(_id(ref) for ref, _f in made[1:3])
    # No remote configured at all: said so, with what to do.
    assert dsv("remote", "remove", "origin", cwd=clone).code == 0
    got = dsv("diff", made[1][0], made[2][0], cwd=clone)
    assert got.code != 0 and "bug in dsv" not in got.err
    assert f"the trees of version {_id(made[1][0])}" in got.err or \
        f"the trees of version {_id(made[2][0])}" in got.err


def test_with_the_origin_down_older_trees_come_from_the_cluster_cache(
        tmp_path: Path, dsv) -> None:
    """Pushed through a write-through cluster cache, a version's trees are read from the
    cache when they are first read and the origin cannot be reached (as its files are)."""
    ws, remote, cache = tmp_path / "ws", tmp_path / "remote", tmp_path / "cache"
    files = {f"d{i}/f.bin": os.urandom(50) for i in range(3)}
    write_tree(ws, files)
    assert dsv("init", cwd=ws).code == 0
    assert dsv("remote", "add", "origin", remote, cwd=ws).code == 0
    assert dsv("remote", "add", "shared", cache, "--cache", "--write-through", cwd=ws).code == 0
    refs = []
    for n in range(3):
        write_tree(ws, {"d1/f.bin": f"round {n}".encode()})
        got = dsv("commit", "-m", f"round {n}", "--json", cwd=ws)
        assert got.code == 0, got.err
        refs.append(json.loads(got.out)["ref"])
        assert dsv("push", cwd=ws).code == 0
    clone = tmp_path / "clone"
    assert dsv("init", "--bare", clone, cwd=tmp_path).code == 0
    assert dsv("remote", "add", "origin", remote, cwd=clone).code == 0
    assert dsv("remote", "add", "shared", cache, "--cache", cwd=clone).code == 0
    assert dsv("fetch", cwd=clone).code == 0
    assert sorted(_unfetched(clone)) == sorted(_id(ref) for ref in refs[:2])
    shutil.move(remote, tmp_path / "away")   # the origin is down
    got = dsv("diff", refs[0], refs[1], "--json", cwd=clone)
    assert got.code == 0, got.err
    assert "cluster cache only" in got.err
    assert json.loads(got.out)["modified"] == ["d1/f.bin"]
    assert not _unfetched(clone)
    # A cache that lacks them: the error says the origin is gone, not the objects.
    other = tmp_path / "other"
    assert dsv("init", "--bare", other, cwd=tmp_path).code == 0
    shutil.move(tmp_path / "away", remote)
    assert dsv("remote", "add", "origin", remote, cwd=other).code == 0
    assert dsv("remote", "add", "shared", tmp_path / "empty", "--cache", cwd=other).code == 0
    assert dsv("fetch", cwd=other).code == 0
    shutil.move(remote, tmp_path / "away")
    got = dsv("diff", refs[0], refs[1], cwd=other)
    assert got.code == 1 and "bug in dsv" not in got.err
    [error] = [line for line in got.err.splitlines() if line.startswith("error:")]
    assert error == f"error: remote directory {remote} does not exist", got.err


def test_trees_come_from_the_default_origin_when_theirs_was_removed(
        aged: tuple[Path, Path, list[tuple[str, dict[str, bytes]]]], tmp_path: Path, dsv) -> None:
    ws, remote, made = aged
    clone = _clone(remote, tmp_path, dsv)
    assert dsv("remote", "remove", "origin", cwd=clone).code == 0
    assert dsv("remote", "add", "backup", remote, cwd=clone).code == 0
    got = dsv("diff", made[1][0], made[2][0], "--json", cwd=clone)
    assert got.code == 0, got.err
    assert "from backup" in got.err and json.loads(got.out)["modified"] == ["d2/f0.bin"]


def test_a_forged_history_tree_is_refused_when_it_is_read(
        aged: tuple[Path, Path, list[tuple[str, dict[str, bytes]]]], tmp_path: Path, dsv) -> None:
    """A tree the remote serves later is checked as one served at clone time is: here the
    remote's pack holding round 1's trees is altered after the clone; the bytes no
    longer hash to their names, nothing is stored, and the version stays unfetched."""
    ws, remote, made = aged
    clone = _clone(remote, tmp_path, dsv)
    root = _version(clone, made[1][0])["tree"]
    from dsv.objects import parse_pack_index
    damaged = 0
    for index_file in (remote / "index").iterdir():
        entries, _size = parse_pack_index(index_file.read_bytes(), index_file.name)
        for e in entries:
            if e.oid == root:
                pack = remote / "packs" / f"{index_file.name}.pack"
                data = bytearray(pack.read_bytes())
                data[e.offset + e.length // 2] ^= 0xFF
                pack.write_bytes(bytes(data))
                damaged += 1
    assert damaged
    got = dsv("diff", made[1][0], made[3][0], cwd=clone)
    assert got.code != 0 and "bug in dsv" not in got.err
    assert "corrupt" in got.err or "not match" in got.err
    assert not _has_object(clone, root) and _id(made[1][0]) in _unfetched(clone)


def test_an_index_rebuild_remembers_which_trees_are_on_the_remote(
        aged: tuple[Path, Path, list[tuple[str, dict[str, bytes]]]], tmp_path: Path, dsv) -> None:
    ws, remote, made = aged
    clone = _clone(remote, tmp_path, dsv)
    lazy = _unfetched(clone)
    (clone / ".dsv" / "index.db").unlink()
    got = dsv("index", "rebuild", cwd=clone)
    assert got.code == 0, got.err
    assert _unfetched(clone) == lazy
    diff = dsv("diff", made[1][0], made[2][0], "--json", cwd=clone)
    assert diff.code == 0 and json.loads(diff.out)["modified"] == ["d2/f0.bin"]


def test_a_lazy_clone_pushes_whole_history_to_another_remote(
        aged: tuple[Path, Path, list[tuple[str, dict[str, bytes]]]], tmp_path: Path, dsv) -> None:
    """Pushing older versions elsewhere needs their trees and files: a pull of those
    versions brings both (the trees first, as any read does)."""
    ws, remote, made = aged
    clone = _clone(remote, tmp_path, dsv)
    other = tmp_path / "other"
    assert dsv("remote", "add", "backup", other, cwd=clone).code == 0
    refused = dsv("push", "backup", cwd=clone)
    assert refused.code != 0 and "pull those versions completely first" in refused.err
    got = dsv("pull", "origin", *(ref for ref, _files in made[:3]), "--no-checkout",
              cwd=clone)
    assert got.code == 0, got.err
    assert not _unfetched(clone)
    got = dsv("push", "backup", cwd=clone)
    assert got.code == 0, got.err
    again = tmp_path / "again"
    assert dsv("clone", other, again, cwd=tmp_path).code == 0
    out = tmp_path / "out"
    got = dsv("checkout", made[2][0], "--to", out, cwd=again)
    assert got.code == 0, got.err
    assert read_tree(out) == made[2][1]


def test_a_schema_5_store_gains_the_unfetched_table(
        aged: tuple[Path, Path, list[tuple[str, dict[str, bytes]]]], tmp_path: Path, dsv) -> None:
    """A store an older dsv wrote holds every tree it fetched: it opens, gains the table,
    and its next fetch leaves history on the remote as a new store's does."""
    ws, remote, made = aged
    clone = _clone(remote, tmp_path, dsv)
    assert dsv("fetch", "--history", cwd=clone).code == 0
    with sqlite3.connect(clone / ".dsv" / "index.db") as db:
        db.execute("DROP TABLE unfetched")
        db.execute("UPDATE meta SET value='5' WHERE key='schema'")
    files = dict(made[-1][1], **{"late.txt": b"pushed after the clone"})
    write_tree(ws, files)
    assert dsv("commit", "-m", "late", cwd=ws).code == 0
    write_tree(ws, {"later.txt": b"and another"})
    assert dsv("commit", "-m", "later", cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    got = dsv("pull", cwd=clone)
    assert got.code == 0, got.err
    with sqlite3.connect(clone / ".dsv" / "index.db") as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (str(SCHEMA_VERSION),)
    assert len(_unfetched(clone)) == 1   # "late": neither latest nor tagged
    assert read_tree(clone) == dict(files, **{"later.txt": b"and another"})


def test_history_a_remote_gc_removed_is_one_clear_error(
        aged: tuple[Path, Path, list[tuple[str, dict[str, bytes]]]], tmp_path: Path, dsv) -> None:
    """A `push --force` back to the tagged first round leaves rounds 1-3 unreachable on the
    remote, and its gc deletes them; a clone that left their trees there says so."""
    ws, remote, made = aged
    clone = _clone(remote, tmp_path, dsv)
    assert dsv("push", "--force", made[0][0], cwd=ws).code == 0
    got = dsv("gc", "--remote", "origin", cwd=ws)
    assert got.code == 0, got.err
    got = dsv("diff", made[1][0], made[0][0], cwd=clone)
    assert got.code != 0 and "bug in dsv" not in got.err
    assert f"the trees of version {_id(made[1][0])} are no longer on origin" in got.err
    assert _id(made[1][0]) in _unfetched(clone)


# ---- 1. a draft started from an unfetched version -------------------------------------

def test_a_draft_from_an_unfetched_version_is_not_damage(aged, tmp_path, dsv):
    """`versions create --from OLD` copies OLD's root tree id into a draft: its trees are
    on the remote as OLD's are, which verify accepts."""
    ws, remote, made = aged
    clone = _clone(remote, tmp_path, dsv)
    old = made[1][0]
    assert _id(old) in _unfetched(clone)
    got = dsv("versions", "create", _ds(old), "--from", _id(old), "--json", cwd=clone)
    assert got.code == 0, got.err
    v = dsv("verify", cwd=clone)
    assert v.code == 0, v.out + v.err


def test_gc_with_such_a_draft_needs_no_remote(aged, tmp_path, dsv):
    """Local gc skips that draft's trees as it skips OLD's: no remote is asked."""
    ws, remote, made = aged
    clone = _clone(remote, tmp_path, dsv)
    old = made[1][0]
    got = dsv("versions", "create", _ds(old), "--from", _id(old), "--json", cwd=clone)
    assert got.code == 0, got.err
    shutil.move(remote, tmp_path / "gone")
    g = dsv("gc", cwd=clone)
    assert g.code == 0, g.err


# ---- 2. index rebuild without an origin -----------------------------------------------

def test_a_rebuild_without_an_origin_keeps_the_marks(aged, tmp_path, dsv):
    """A lazy clone whose origin was removed: `index rebuild` restores the marks from the
    state file, so gc still skips those trees."""
    ws, remote, made = aged
    clone = _clone(remote, tmp_path, dsv)
    assert dsv("gc", cwd=clone).code == 0          # fine before the rebuild
    assert dsv("remote", "remove", "origin", cwd=clone).code == 0
    assert dsv("gc", cwd=clone).code == 0          # still fine: marks kept
    (clone / ".dsv" / "index.db").unlink()
    assert dsv("index", "rebuild", cwd=clone).code == 0
    assert sorted(_unfetched(clone)) == sorted(_id(ref) for ref, _f in made[1:3])
    g = dsv("gc", cwd=clone)
    assert g.code == 0, g.err


# ---- 3. hostile: a forged root tree whose bytes are also a file the store holds -------

def _forge_commit(ws: Path, dsv, monkeypatch, forged: bytes, message: str) -> str:
    """The attacker's (modified) dsv: commit a version whose record names `forged` as its
    root tree (stored as a tree object)."""
    from dsv import versions as dv
    from dsv.hashing import hash_bytes
    real = dv._snapshot_changes
    oid = hash_bytes(forged)

    def fake(core, ds, head, root, excluded, ingest):
        made = real(core, ds, head, root, excluded, ingest)
        core.tree_writer(ingest)(oid, forged)
        made.tree = oid
        return made

    monkeypatch.setattr(dv, "_snapshot_changes", fake)
    got = dsv("commit", "-m", message, "--json", cwd=ws)
    monkeypatch.setattr(dv, "_snapshot_changes", real)
    assert got.code == 0, got.err
    with sqlite3.connect(ws / ".dsv" / "index.db") as db:   # next commit: built whole
        db.execute("UPDATE datasets SET cache_tree=NULL")
        db.execute("DELETE FROM statcache")
    return json.loads(got.out)["ref"]


def test_a_forged_root_is_refused_even_once_its_bytes_arrive_as_a_file(tmp_path, dsv,
                                                                    monkeypatch):
    """Fault-in validates a forged tree and refuses it; a file with the same bytes pulled
    later (stored as a blob of the same id) must not let the tree be read unvalidated
    (a name '../escape.txt' here): the root of an unfetched version is always fetched and
    validated as a tree, whatever is stored under its id."""
    from dsv.hashing import hash_bytes
    ws = tmp_path / "ws"
    files = {"a.bin": b"A" * 100, "b.bin": b"B" * 100}
    write_tree(ws, files)
    assert dsv("init", cwd=ws).code == 0
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=ws).code == 0
    assert dsv("commit", "-m", "r0", cwd=ws).code == 0
    blob = hash_bytes(files["a.bin"])
    forged = json.dumps({"entries": [["../escape.txt", "f", 0o644, 100, blob]],
                         "type": "tree", "v": 1}, separators=(",", ":")).encode()
    write_tree(ws, {"c.bin": b"C" * 10})
    bad = _forge_commit(ws, dsv, monkeypatch, forged, "forged")
    write_tree(ws, {"d.bin": b"D" * 10})
    assert dsv("commit", "-m", "r2", cwd=ws).code == 0
    import dsv.tree as dt
    with monkeypatch.context() as m:   # the attacker's dsv checks nothing it sends
        m.setattr(dt, "_check_name", lambda name: None)
        got = dsv("push", cwd=ws)
    assert got.code == 0, got.err

    victim = _clone(remote, tmp_path, dsv)
    assert _id(bad) in _unfetched(victim)
    # Control: fault-in fetches the forged tree and refuses it, as a fetch would.
    first = dsv("files", "list", _id(bad), cwd=victim)
    assert first.code != 0 and "'../escape.txt' contains '/'" in first.err, first.err
    assert _id(bad) in _unfetched(victim)

    # The attacker now pushes a file whose bytes are the forged tree.
    write_tree(ws, {"payload.json": forged})
    assert dsv("commit", "-m", "payload", cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    got = dsv("pull", cwd=victim)
    assert got.code == 0, got.err
    assert (victim / "payload.json").read_bytes() == forged
    after = dsv("files", "list", _id(bad), cwd=victim)
    out = tmp_path / "out"
    co = dsv("checkout", _id(bad), "--to", out, cwd=victim)
    assert after.code != 0, ("the forged tree is read as valid: " + after.out +
                             f" | checkout --to: {co.code} {co.err.strip()} "
                             f"escaped={os.path.exists(tmp_path / 'escape.txt')}")


# ---- 4. concurrency --------------------------------------------------------------------

def test_processes_reading_one_unfetched_version_at_once(aged, tmp_path, dsv):
    ws, remote, made = aged
    clone = _clone(remote, tmp_path, dsv)
    (v1, _f1), (v2, _f2) = made[1], made[2]
    for _round in range(3):
        procs = [subprocess.Popen([sys.executable, "-m", "dsv", "diff", _id(v1), _id(v2),
                                   "--json"], cwd=clone, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err
            assert json.loads(out)["added"] == ["new2.txt"]
        assert not _unfetched(clone)
        v = dsv("verify", cwd=clone)
        assert v.code == 0, v.out
        # again from scratch: a new clone
        shutil.rmtree(clone)
        clone = _clone(remote, tmp_path, dsv)


# ---- 6. index rebuild calls a lost root tree of a local version "unfetched" ----------

def _drop_object(ws: Path, oid: str) -> None:
    """Simulated damage: the pack holding `oid` loses it (rewritten without it)."""
    from dsv.objects import encode_pack, parse_pack_table
    packs = ws / ".dsv" / "objects" / "packs"
    for path in packs.glob("*.pack"):
        entries = parse_pack_table(path)
        if not any(e.oid == oid for e in entries):
            continue
        data = path.read_bytes()
        keep = [(e.oid, e.kind, data[e.offset:e.offset + e.length])
                for e in entries if e.oid != oid]
        pack_id, new, _entries = encode_pack(keep)
        (packs / f"{pack_id}.pack").write_bytes(new)
        path.unlink()
        return
    raise AssertionError("not found")


def test_a_rebuild_never_takes_a_lost_root_for_an_unfetched_one(aged, tmp_path, dsv):
    ws, remote, made = aged
    files = dict(made[-1][1], **{"local-only.bin": os.urandom(5000)})
    write_tree(ws, files)
    got = dsv("commit", "-m", "never pushed", "--json", cwd=ws)
    assert got.code == 0
    local = json.loads(got.out)["ref"]
    root = _version(ws, local)["tree"]
    _drop_object(ws, root)
    (ws / ".dsv" / "index.db").unlink()
    assert dsv("index", "rebuild", cwd=ws).code == 0
    v = dsv("verify", cwd=ws)
    marks = _unfetched(ws)
    g = dsv("gc", cwd=ws)
    d = dsv("diff", _id(local), "--json", cwd=ws)
    assert v.code != 0 and _id(local) not in marks, (
        f"verify: {v.code} {v.out.strip()!r}; marked unfetched: {_id(local) in marks}; "
        f"gc: {g.out.strip()!r}; diff: {d.err.strip()!r}")
