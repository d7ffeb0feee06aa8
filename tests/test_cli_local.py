"""The local, offline commands (SPEC §2 items 1–10, 19, 20) driven through the CLI as a user would.

Every test runs the real `dsv.cli.main` in-process against real directories under tmp_path
and asserts on exit codes, `error:` lines, bytes, hashes and modes.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import stat
import subprocess
import time
from pathlib import Path

import blake3
import pytest

import dsv as dsv_api
from dsv import native
from dsv.index import SCHEMA_VERSION
from conftest import Result, deep_chain, flip_byte, read_tree, unnumber_index, write_tree

BASE = {
    "a.txt": "alpha\n",
    "sub/b.bin": bytes(range(256)) * 4,
    "sub/deep/c.csv": "x,y\n1,2\n",
}
REF_RE = re.compile(r"^mydata:([0-9a-z]{10})$")


# ---- helpers ------------------------------------------------------------------------------

def ok(r: Result) -> Result:
    assert r.code == 0, f"exit {r.code}\nout: {r.out}\nerr: {r.err}"
    assert "Traceback" not in r.err and "Traceback" not in r.out
    return r


def fails(r: Result, *needles: str, code: int = 1) -> Result:
    """A clean failure: the exit code, one `error:` line, no traceback, and the needles in it."""
    assert r.code == code, f"expected exit {code}, got {r.code}\nout: {r.out}\nerr: {r.err}"
    assert "Traceback" not in r.err and "Traceback" not in r.out
    if code == 1:
        errors = [line for line in r.err.splitlines() if line.startswith("error: ")]
        assert errors, f"no 'error:' line in stderr: {r.err!r}"
    for needle in needles:
        assert needle.lower() in r.err.lower(), f"{needle!r} not in {r.err!r}"
    return r


def jout(r: Result):
    ok(r)
    return json.loads(r.out)


def vid_of(r: Result) -> str:
    ok(r)
    line = r.out.strip()
    assert ":" in line, line
    return line.rsplit(":", 1)[1]


def b3(data: bytes | str) -> str:
    return blake3.blake3(data.encode() if isinstance(data, str) else data).hexdigest()


def big_bytes(n: int = (1 << 20) + 4099, seed: int = 7) -> bytes:
    """Content above the pack threshold (1 MiB): stored as a loose object."""
    return random.Random(seed).randbytes(n)


def dsv_size(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / ".dsv").rglob("*") if p.is_file())


@pytest.fixture
def ws(tmp_path: Path, dsv) -> Path:
    """A single-directory workspace `mydata` holding BASE, initialised (no version yet)."""
    data = tmp_path / "mydata"
    write_tree(data, BASE)
    ok(dsv("init", cwd=data))
    return data


@pytest.fixture
def committed(ws: Path, dsv) -> tuple[Path, str]:
    """`ws` with BASE committed once; returns (workspace, version id)."""
    return ws, vid_of(dsv("commit", "-m", "first", cwd=ws))


def version_state(dsv, cwd: Path, ref: str, dest: Path) -> tuple:
    """Everything observable about a version: its details, its file list and its bytes."""
    show = jout(dsv("show", ref, "--json", cwd=cwd))
    listing = jout(dsv("files", "list", ref, "-r", "--json", cwd=cwd))
    ok(dsv("files", "get", ref, "--target-path", dest, cwd=cwd))
    return show, listing, read_tree(dest)


# ---- init ---------------------------------------------------------------------------------

def test_init_binds_the_directory_itself(tmp_path: Path, dsv) -> None:
    data = tmp_path / "mydata"
    write_tree(data, BASE)
    r = ok(dsv("init", cwd=data))
    assert "Initialized" in r.out
    assert (data / ".dsv" / "config.json").is_file()
    (ds,) = jout(dsv("datasets", "list", "--json", cwd=data))
    assert ds["name"] == "mydata" and ds["path"] == "." and ds["latest"] is None
    # the files are untouched by init
    assert read_tree(data) == {k: v.encode() if isinstance(v, str) else v for k, v in BASE.items()}


def test_init_name_option_and_path_argument(tmp_path: Path, dsv) -> None:
    target = tmp_path / "somewhere"
    target.mkdir()
    data = jout(dsv("init", target, "--name", "images", "--json", cwd=tmp_path))
    assert [d["name"] for d in data["datasets"]] == ["images"]
    assert (target / ".dsv" / "config.json").is_file()
    # from a subdirectory the store is found by walking up
    (target / "deep" / "er").mkdir(parents=True)
    (ds,) = jout(dsv("datasets", "list", "--json", cwd=target / "deep" / "er"))
    assert ds["name"] == "images"


def test_init_twice_fails_and_keeps_the_store(ws: Path, dsv) -> None:
    ok(dsv("commit", "-m", "first", cwd=ws))
    before = jout(dsv("datasets", "list", "--json", cwd=ws))
    fails(dsv("init", cwd=ws), "already")
    fails(dsv("init", "--name", "other", cwd=ws))
    assert jout(dsv("datasets", "list", "--json", cwd=ws)) == before
    assert len(jout(dsv("log", "--json", cwd=ws))) == 1


def test_init_bare_then_datasets_create_with_path(tmp_path: Path, dsv) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    r = jout(dsv("init", "--bare", "--json", cwd=proj))
    assert r["datasets"] == []
    ds = jout(dsv("datasets", "create", "raw", "--path", "data/raw", "--json", cwd=proj))
    assert ds["name"] == "raw" and ds["path"] == "data/raw"
    assert (proj / "data" / "raw").is_dir()
    write_tree(proj / "data" / "raw", {"r1.bin": b"\x01" * 100, "d/r2.txt": "two"})
    # -d from the workspace root ...
    first = ok(dsv("commit", "-m", "raw one", "-d", "raw", cwd=proj))
    assert re.fullmatch(r"raw:[0-9a-z]{10}\n", first.out)
    # ... or implied by the directory the command runs in
    (proj / "data" / "raw" / "r3.txt").write_text("three")
    second = ok(dsv("commit", "-m", "raw two", cwd=proj / "data" / "raw" / "d"))
    assert second.out.startswith("raw:")
    files = {f["path"] for f in jout(dsv("files", "list", "raw:latest", "-r", "--json", cwd=proj))}
    assert files == {"r1.bin", "d/r2.txt", "r3.txt"}


def test_bare_store_with_two_datasets_needs_a_dataset_at_root(tmp_path: Path, dsv) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    ok(dsv("init", "--bare", cwd=proj))
    ok(dsv("datasets", "create", "a", "--path", "da", cwd=proj))
    ok(dsv("datasets", "create", "b", "--path", "db", cwd=proj))
    write_tree(proj, {"da/x": "x", "db/y": "y"})
    fails(dsv("commit", "-m", "which?", cwd=proj), "dataset")
    assert jout(dsv("versions", "list", "a", "--json", cwd=proj)) == []
    assert jout(dsv("versions", "list", "b", "--json", cwd=proj)) == []


def test_nested_dataset_dir_is_left_out_of_parent(tmp_path: Path, dsv) -> None:
    proj = tmp_path / "proj"
    write_tree(proj, {"README.md": "readme", "data/other.csv": "o,t\n",
                      "data/raw/r1.bin": b"\x00" * 64, "data/raw/sub/r2.bin": b"\x02" * 32})
    ok(dsv("init", cwd=proj))
    ok(dsv("datasets", "create", "raw", "--path", "data/raw", cwd=proj))
    ok(dsv("commit", "-m", "proj", "-d", "proj", cwd=proj))
    proj_files = {f["path"] for f in jout(dsv("files", "list", "proj:latest", "-r", "--json",
                                              cwd=proj))}
    assert proj_files == {"README.md", "data/other.csv"}
    # a commit inside data/raw goes to raw, not to proj
    out = ok(dsv("commit", "-m", "raw", cwd=proj / "data" / "raw")).out
    assert out.startswith("raw:")
    raw_files = {f["path"] for f in jout(dsv("files", "list", "raw:latest", "-r", "--json",
                                             cwd=proj))}
    assert raw_files == {"r1.bin", "sub/r2.bin"}
    # a change inside the nested directory is raw's change, not proj's
    (proj / "data" / "raw" / "new.bin").write_bytes(b"new")
    (p_status,) = jout(dsv("status", "-d", "proj", "--json", cwd=proj))
    assert p_status["clean"] is True
    (r_status,) = jout(dsv("status", "-d", "raw", "--json", cwd=proj))
    assert r_status["added"] == ["new.bin"]
    # checkout of proj never deletes the nested dataset's files
    ok(dsv("checkout", "proj:latest", "--force", cwd=proj))
    assert (proj / "data" / "raw" / "new.bin").read_bytes() == b"new"
    assert (proj / "data" / "raw" / "r1.bin").read_bytes() == b"\x00" * 64


def test_nested_store_is_never_snapshotted_by_outer_dataset(tmp_path: Path, dsv) -> None:
    """A separate store inside a workspace is left out, as git leaves out a nested repository."""
    outer = tmp_path / "outer"
    write_tree(outer, {"a.txt": "a", "inner/b.txt": "b"})
    ok(dsv("init", cwd=outer))
    r = dsv("init", cwd=outer / "inner")
    assert "Traceback" not in r.err
    commit = dsv("commit", "-m", "outer", cwd=outer)
    ok(commit)
    paths = {f["path"] for f in jout(dsv("files", "list", "outer:latest", "-r", "--json",
                                         cwd=outer))}
    assert not any(p.startswith(".dsv/") or "/.dsv/" in p for p in paths), sorted(paths)
    assert "a.txt" in paths


def _api_store(tmp_path: Path, files: dict[str, str]) -> tuple[dsv_api.Store, Path]:
    """A store made through the Python API in `data` (dataset `data`) holding `files`."""
    root = tmp_path / "data"
    write_tree(root, files)
    return dsv_api.init(root), root


def test_a_nested_store_and_its_files_are_left_out(tmp_path: Path) -> None:
    store, root = _api_store(tmp_path, {"a.txt": "outer"})
    inner = root / "inner"
    write_tree(inner, {"secret.bin": "inner data"})
    dsv_api.init(inner).close()
    v = store.commit("outer only", cwd=root)
    paths = {row.path for row in store.files(f"data:{v.id}", recursive=True)}
    assert paths == {"a.txt"}


def test_commands_outside_a_store_fail_cleanly(tmp_path: Path, dsv) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (["status"], ["commit", "-m", "x"], ["log"], ["datasets", "list"], ["gc"],
                 ["verify"]):
        fails(dsv(*args, cwd=empty), "no dsv store")
    assert list(empty.iterdir()) == []


def test_a_store_of_an_unknown_format_is_refused(tmp_path: Path, dsv) -> None:
    store, root = _api_store(tmp_path, {"a.txt": "1"})
    store.close()
    config = root / ".dsv" / "config.json"
    config.write_text(json.dumps({"format": 99, "hash": "blake3"}))
    result = dsv("status", cwd=root)
    assert result.code == 1
    assert "store format 99" in result.err and "Traceback" not in result.err


# ---- status -------------------------------------------------------------------------------

def test_status_before_first_commit_lists_everything_added(ws: Path, dsv) -> None:
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert st["dataset"] == "mydata" and st["head"] is None and st["clean"] is False
    assert st["added"] == sorted(BASE)
    assert st["added_bytes"] == sum(len(v) for v in BASE.values())
    assert st["modified"] == [] and st["deleted"] == []


def test_status_counts_and_bytes(committed, dsv) -> None:
    ws, vid = committed
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert st["clean"] is True and st["head"] == vid
    assert "clean" in ok(dsv("status", cwd=ws)).out

    (ws / "new.txt").write_bytes(b"0123456789")          # added, 10 bytes
    (ws / "a.txt").write_bytes(b"ALPHA!!\n")             # modified, now 8 bytes
    (ws / "sub" / "deep" / "c.csv").unlink()             # deleted, was 8 bytes
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert st["clean"] is False
    assert (st["added"], st["modified"], st["deleted"]) == (["new.txt"], ["a.txt"],
                                                            ["sub/deep/c.csv"])
    assert (st["added_bytes"], st["modified_bytes"], st["deleted_bytes"]) == (10, 8, 8)

    human = ok(dsv("status", cwd=ws)).out
    assert "1 added (10 B), 1 modified (8 B), 1 deleted (8 B)" in human
    assert re.search(r"added\s+new\.txt", human)
    assert re.search(r"modified\s+a\.txt", human)
    assert re.search(r"deleted\s+sub/deep/c\.csv", human)


def test_entries_that_are_no_files_are_never_left_out_silently(committed, dsv) -> None:
    """A FIFO or socket is not versioned: `status` lists it also when the rest is clean,
    and a commit says it left it out (it said nothing, and `status` only "clean")."""
    import socket
    ws, vid = committed
    os.mkfifo(ws / "sub" / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(ws / "sock"))
        human = ok(dsv("status", cwd=ws)).out
        assert f"mydata ({vid}): clean" in human
        assert re.search(r"skipped\s+sock \(not a regular file or symlink\)", human), human
        assert re.search(r"skipped\s+sub/pipe \(not a regular file or symlink\)", human)
        (ws / "new.txt").write_bytes(b"new\n")
        r = ok(dsv("commit", "-m", "with a fifo", cwd=ws))
        assert "left out 2 entries, each neither a regular file nor a symlink: sock, " \
            "sub/pipe" in r.err, r.err
        (ws / "sub" / "more.txt").write_bytes(b"more\n")
        r = ok(dsv("commit", "-m", "one path", "sub", cwd=ws))   # (a scan of chosen paths)
        assert "left out 1 entry, each neither a regular file nor a symlink: sub/pipe" \
            in r.err, r.err
        listed = jout(dsv("files", "list", "mydata:latest", "-r", "--json", cwd=ws))
        assert "sock" not in str(listed) and "pipe" not in str(listed)
    finally:
        sock.close()


def test_status_sees_same_size_rewrite_and_mode_change(committed, dsv) -> None:
    ws, _ = committed
    (ws / "a.txt").write_text("ALPHA\n")  # same size as "alpha\n"
    os.chmod(ws / "sub" / "b.bin", 0o755)
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert st["modified"] == ["a.txt", "sub/b.bin"]
    assert st["added"] == [] and st["deleted"] == []


def test_a_file_dated_past_2262_is_committed_and_checked_out(ws: Path, dsv,
                                                             tmp_path: Path) -> None:
    """Its mtime in nanoseconds does not fit SQLite's integers: the commit stored it
    (it failed as "bug in dsv"), status finds it unchanged, a checkout writes it."""
    late = 10_500_000_000 * 10**9   # 2302
    os.utime(ws / "a.txt", ns=(late, late))
    if (ws / "a.txt").stat().st_mtime_ns != late:
        pytest.skip("this filesystem cannot hold a date in 2302")
    vid = vid_of(ok(dsv("commit", "-m", "late", cwd=ws)))
    from dsv.index import Index
    index = Index(ws / ".dsv" / "index.db")
    try:   # its row is never made, and so the cache vouches for no tree
        (ds,) = index.datasets()
        cached = index.stat_cache(ds.id)
        assert "a.txt" not in cached and len(cached) == len(BASE) - 1
        assert ds.cache_tree is None
    finally:
        index.close()
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert st["added"] == st["modified"] == st["deleted"] == []
    (ws / "a.txt").write_text("ALPHA\n")   # same size, and the mtime changes: seen
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert st["modified"] == ["a.txt"]
    ok(dsv("checkout", f"mydata:{vid}", "--to", tmp_path / "out", cwd=ws))
    assert (tmp_path / "out" / "a.txt").read_bytes() == BASE["a.txt"].encode()


def _files_opened_under(root: Path, monkeypatch) -> list[str]:
    """A list that fills with every file under `root` (outside .dsv) opened from now on
    (directories opened to be listed are not files read)."""
    opened: list[str] = []

    def spy(real):
        def spying(file, *args, **kwargs):
            flags = args[0] if args and isinstance(args[0], int) else 0
            if isinstance(file, (str, os.PathLike)) and str(root) in os.fspath(file) \
                    and ".dsv" not in os.fspath(file) and not flags & os.O_DIRECTORY:
                opened.append(os.fspath(file))
            return real(file, *args, **kwargs)
        return spying

    def spy_reads(real):  # (native.read_files opens its files in C: named here)
        def reading(root_fd, rels, sizes):
            top = os.readlink(f"/proc/self/fd/{root_fd}")
            opened.extend(os.path.join(top, rel) for rel in rels
                          if str(root) in top and ".dsv" not in top)
            return real(root_fd, rels, sizes)
        return reading

    monkeypatch.setattr("builtins.open", spy(open))
    monkeypatch.setattr("os.open", spy(os.open))
    monkeypatch.setattr(native, "read_files", spy_reads(native.read_files))
    return opened


def test_status_of_unchanged_tree_reads_no_file(committed, dsv, monkeypatch) -> None:
    """SPEC §2.2: files whose size, mtime and inode are unchanged are not re-read."""
    ws, _ = committed
    # Make every file old, so none is "racily clean", and let one status fill the cache.
    old = 1_600_000_000
    for p in ws.rglob("*"):
        if p.is_file() and ".dsv" not in p.parts:
            os.utime(p, (old, old))
    ok(dsv("status", cwd=ws))
    opened = _files_opened_under(ws, monkeypatch)
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert st["clean"] is True
    assert opened == []
    # one modified file is the only one read
    (ws / "a.txt").write_text("changed!")
    opened.clear()
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert st["modified"] == ["a.txt"]
    assert [Path(p).name for p in opened] == ["a.txt"]


def _clean_scans(ws: Path) -> list[tuple[str, str, str]]:
    import sqlite3
    with sqlite3.connect(ws / ".dsv" / "index.db") as conn:
        return list(conn.execute("SELECT dataset, tree, digest FROM statdigest"))


def _age(ws: Path) -> None:
    """Make every file old, so no stat-cache row of it is racily clean."""
    for p in ws.rglob("*"):
        if p.is_file() and ".dsv" not in p.parts:
            os.utime(p, (1_600_000_000, 1_600_000_000))


def _racy(path: Path) -> None:
    """Date `path` a minute ahead, so that however slowly the next command starts, its
    stat-cache row is racily clean (its mtime is not a timestamp tick before the hash)."""
    ahead = time.time_ns() + 60 * 10**9
    os.utime(path, ns=(ahead, ahead))


def test_status_trusts_a_remembered_scan_and_no_other(ws: Path, dsv, monkeypatch) -> None:
    """A clean status the cache vouched for in full leaves a digest of its scan; the next
    status compares that digest instead of reading the cache, and any change of a path, a
    stat or the head makes it fall back to the cache and to hashing."""
    write_tree(ws, {"x.bin": b"1111", "y.bin": b"2222"})
    _age(ws)
    _racy(ws / "x.bin")                                  # racily clean when committed
    vid = vid_of(dsv("commit", "-m", "first", cwd=ws))
    assert _clean_scans(ws) == []        # the cache cannot vouch for x.bin yet
    _age(ws)
    assert jout(dsv("status", "--json", cwd=ws))[0]["clean"] is True   # hashes x.bin again
    assert _clean_scans(ws) == []
    assert jout(dsv("status", "--json", cwd=ws))[0]["clean"] is True   # rows vouch: remember
    ((ds_id, tree, digest),) = _clean_scans(ws)
    assert tree == jout(dsv("show", vid, "--json", cwd=ws))["tree"]
    files, _colon, runs = digest.partition(":")
    assert len(runs) == 32 and int(files) == len(read_tree(ws))   # one run, its files

    from dsv.index import Index

    def no_rows(self: Index, ds: str, *_range: object) -> None:
        raise AssertionError("the stat cache was read")
    with monkeypatch.context() as m:
        m.setattr(Index, "iter_stat_keys", no_rows)
        m.setattr(Index, "stat_keys_between", no_rows)
        m.setattr(Index, "stat_cache", no_rows)
        assert ok(dsv("status", cwd=ws)).out == f"mydata ({vid}): clean\n"
        # Swapping two files of one size keeps every size and mtime: only the inodes move.
        os.rename(ws / "x.bin", ws / "t.bin")
        os.rename(ws / "y.bin", ws / "x.bin")
        os.rename(ws / "t.bin", ws / "y.bin")
        fails(dsv("status", cwd=ws), "the stat cache was read")
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert st["modified"] == ["x.bin", "y.bin"] and st["clean"] is False
    assert _clean_scans(ws) == [(ds_id, tree, digest)]   # a dirty status records nothing

    # The contents written back in place: clean again with other inodes, and the new scan
    # (not the old one) is what is remembered once the cache vouches for it.
    write_tree(ws, {"x.bin": b"1111", "y.bin": b"2222"})
    _age(ws)
    for _ in range(2):
        assert jout(dsv("status", "--json", cwd=ws))[0]["clean"] is True
    ((_, tree2, digest2),) = _clean_scans(ws)
    assert tree2 == tree and digest2 not in (None, digest)

    # A new head whose commit could not vouch for every file (x.bin is racily clean): the
    # remembered scan names the old tree and is not trusted for the new one.
    (ws / "x.bin").write_bytes(b"33333")
    _racy(ws / "x.bin")
    vid2 = vid_of(dsv("commit", "-m", "second", cwd=ws))
    assert _clean_scans(ws) == [(ds_id, tree2, digest2)]
    with monkeypatch.context() as m:
        m.setattr(Index, "iter_stat_keys", no_rows)
        m.setattr(Index, "stat_keys_between", no_rows)
        m.setattr(Index, "stat_cache", no_rows)
        fails(dsv("status", cwd=ws), "the stat cache was read")
    assert ok(dsv("status", cwd=ws)).out == f"mydata ({vid2}): clean\n"
    # A commit whose rows vouch for every file remembers its scan: the next status reads no
    # row.
    (ws / "y.bin").write_bytes(b"444444")
    _age(ws)
    vid3 = vid_of(dsv("commit", "-m", "third", cwd=ws))
    ((_, tree3, _),) = _clean_scans(ws)
    assert tree3 == jout(dsv("show", vid3, "--json", cwd=ws))["tree"]
    with monkeypatch.context() as m:
        m.setattr(Index, "iter_stat_keys", no_rows)
        m.setattr(Index, "stat_keys_between", no_rows)
        m.setattr(Index, "stat_cache", no_rows)
        assert ok(dsv("status", cwd=ws)).out == f"mydata ({vid3}): clean\n"


def test_a_status_racing_a_checkout_of_a_path_remembers_nothing(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """`checkout REF PATH` keeps the head but writes another version's file and rows: a
    status that read them meanwhile must not remember its runs as the head's (every later
    status would then say clean)."""
    import subprocess
    import sys

    from dsv import worktree
    monkeypatch.setattr(worktree, "RUN_FILES", 2)   # z/x in a later run than the a*
    root = tmp_path / "race"
    write_tree(root, {"a1": b"a1", "a2": b"a2", "a3": b"a3", "z/x": b"old!"})
    _age(root)
    store = dsv_api.init(root)
    v1 = store.commit("v1")
    (root / "z/x").write_bytes(b"new!")   # same size, other content, another mtime
    os.utime(root / "z/x", (1_600_000_100, 1_600_000_100))
    v2 = store.commit("v2")
    store.checkout(f"race:{v1.id}")
    assert store.status().changes.clean and store.status().changes.clean   # remembered
    store.close()
    listing = worktree._listing

    def checkout_in_between(rel_dir: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if rel_dir == "z":
            r = subprocess.run([sys.executable, "-m", "dsv", "checkout", f"race:{v2.id}", "z/x"],
                               cwd=root, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        return listing(rel_dir, *args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(worktree, "_listing", checkout_in_between)
        store = dsv_api.open(root)
        store.status()   # (what it says is a race; what it remembers must not be)
        store.close()
    assert (root / "z/x").read_bytes() == b"new!"
    for _ in range(2):
        (st,) = jout(dsv("status", "--json", cwd=root))
        assert st["modified"] == ["z/x"] and st["clean"] is False


def test_a_version_claiming_too_few_files_does_not_hide_a_deletion(ws: Path, dsv) -> None:
    """The count of files a version record claims is not checked against its tree; a
    status that trusted it to skip the cache rows past its last run would miss the
    deletion of the last file."""
    import sqlite3
    write_tree(ws, {"a": b"a", "b": b"b", "zz": b"c"})
    _age(ws)
    vid = vid_of(dsv("commit", "-m", "one", cwd=ws))
    with sqlite3.connect(ws / ".dsv" / "index.db") as conn:
        conn.execute("UPDATE versions SET files=files-1 WHERE id=?", (vid,))
    for _ in range(2):
        assert jout(dsv("status", "--json", cwd=ws))[0]["clean"] is True
    (ws / "zz").unlink()
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert st["deleted"] == ["zz"] and st["clean"] is False
    ok(dsv("commit", "-m", "two", cwd=ws))   # (not "nothing to commit")
    files = {f["path"] for f in jout(dsv("files", "list", "mydata:latest", "-r", "--json",
                                         cwd=ws))}
    assert "zz" not in files and {"a", "b"} <= files


def test_a_path_naming_a_symlink_is_the_link_itself(ws: Path, dsv) -> None:
    """A path given to checkout names the entry itself, a symlink too (not what it points
    to); a path that goes through a symlink loop is refused with one clear line."""
    write_tree(ws, {"a.txt": b"a", "b.txt": b"b"})
    os.symlink("a.txt", ws / "l")
    ok(dsv("commit", "-m", "links", cwd=ws))
    os.unlink(ws / "l")
    os.symlink("b.txt", ws / "l")
    (ws / "a.txt").write_bytes(b"changed")
    ok(dsv("checkout", "mydata:latest", "l", "--force", cwd=ws))
    assert os.readlink(ws / "l") == "a.txt" and (ws / "a.txt").read_bytes() == b"changed"
    os.symlink("x", ws / "y")
    os.symlink("y", ws / "x")
    for path, message in (("x/a.txt", "cannot follow the directories above it"),
                          ("x", "x is not in this version")):
        r = dsv("checkout", "mydata:latest", path, cwd=ws)
        assert r.code == 1 and message in r.err and "bug in dsv" not in r.err, r.err


@pytest.mark.parametrize("damage", ["\u00b2:" + "0" * 32, "9" * 5000 + ":" + "0" * 32, "x"])
def test_a_damaged_scan_digest_is_ignored(ws: Path, dsv, damage: str) -> None:
    """`statdigest` is a cache another process may have written anything into: a count
    that is no plain decimal (a superscript digit, 5,000 digits) means nothing, and the
    next clean status stores a good one."""
    import sqlite3
    _age(ws)
    vid = vid_of(dsv("commit", "-m", "first", cwd=ws))
    with sqlite3.connect(ws / ".dsv" / "index.db") as conn:
        conn.execute("UPDATE statdigest SET digest=?", (damage,))
    assert ok(dsv("status", cwd=ws)).out == f"mydata ({vid}): clean\n"
    ((_, _, digest),) = _clean_scans(ws)
    assert digest.partition(":")[0] == str(len(read_tree(ws)))


def test_status_remembers_no_scan_while_another_process_holds_the_lock(ws: Path, dsv) -> None:
    from dsv.lock import StoreLock
    _age(ws)
    ok(dsv("commit", "-m", "first", cwd=ws))
    assert len(_clean_scans(ws)) == 1
    import sqlite3
    with sqlite3.connect(ws / ".dsv" / "index.db") as conn:
        conn.execute("DELETE FROM statdigest")
    holder = StoreLock(ws / ".dsv" / "lock")
    holder.acquire("test")
    try:
        assert "clean" in ok(dsv("status", cwd=ws)).out
        assert _clean_scans(ws) == []
    finally:
        holder.release()
    ok(dsv("status", cwd=ws))
    assert len(_clean_scans(ws)) == 1


def test_a_schema_3_store_gains_the_scan_digest_table(ws: Path, dsv) -> None:
    import sqlite3
    _age(ws)
    vid = vid_of(dsv("commit", "-m", "first", cwd=ws))
    with sqlite3.connect(ws / ".dsv" / "index.db") as conn:
        conn.execute("DROP TABLE statdigest")
        conn.execute("UPDATE meta SET value='3' WHERE key='schema'")
    for _ in range(2):
        assert ok(dsv("status", cwd=ws)).out == f"mydata ({vid}): clean\n"
    with sqlite3.connect(ws / ".dsv" / "index.db") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (str(SCHEMA_VERSION),)
    assert len(_clean_scans(ws)) == 1


@pytest.mark.parametrize("fmt", [1, 2])
def test_a_store_of_an_older_dsv_is_migrated_and_reads_as_before(ws: Path, dsv, fmt: int,
                                                                  tmp_path: Path) -> None:
    """A store written by the dsv before schema 10 (its index's object rows name packs by
    id): the first command raises its format to 3 and numbers its packs; every object is
    where it was, the store checks clean, and a checkout gives back the same bytes."""
    import sqlite3
    from storecheck import inspect_store
    _age(ws)
    files = read_tree(ws)
    vid = vid_of(dsv("commit", "-m", "first", cwd=ws))
    unnumber_index(ws / ".dsv", fmt)
    assert ok(dsv("status", cwd=ws)).out == f"mydata ({vid}): clean\n"
    assert json.loads((ws / ".dsv" / "config.json").read_text())["format"] == 3
    with sqlite3.connect(ws / ".dsv" / "index.db") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (str(SCHEMA_VERSION),)
        assert "pack_num" in {row[1] for row in conn.execute("PRAGMA table_info(objects)")}
    ok(dsv("verify", cwd=ws))
    assert inspect_store(ws).content(vid) == {p: blake3.blake3(d).hexdigest()
                                              for p, d in files.items()}
    ok(dsv("checkout", f"mydata:{vid}", "--to", str(tmp_path / "out"), cwd=ws))
    assert read_tree(tmp_path / "out") == files


def test_a_migration_the_disk_cannot_hold_leaves_the_store_readable(tmp_path: Path,
                                                                    dsv) -> None:
    """An older dsv's store opened where the migration's writes fail (here a file-size
    limit of 128 KiB, as a full disk does): commands that read work on the index as it
    is, a write fails with a clear message, and the next open that can write migrates.
    Before, every command failed, even `status`."""
    import resource
    import sqlite3
    import subprocess
    import sys
    ws = tmp_path / "ws"
    files = {f"d{i // 100}/f{i}.txt": f"file {i}\n".encode() for i in range(3000)}
    write_tree(ws, files)
    ok(dsv("init", "--name", "mydata", str(ws), cwd=tmp_path))
    vid = vid_of(dsv("commit", "-m", "first", cwd=ws))
    unnumber_index(ws / ".dsv", 2)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}

    def limited(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dsv", *args], cwd=ws, env=env, capture_output=True,
            text=True, timeout=120,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (128 << 10, hard)))

    import gc
    gc.collect()   # (stores the in-process commands left to the cycle collector: closed)
    os.utime(ws / "d3" / "f333.txt", ns=(1, 1))   # (hashed again: its row would be kept)
    got = limited("status", "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)[0]["clean"] is True
    got = limited("files", "get", f"mydata:{vid}", "d7/f777.txt", "--target-path",
                  str(tmp_path / "got"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "got" / "d7" / "f777.txt").read_bytes() == b"file 777\n"
    with sqlite3.connect(ws / ".dsv" / "index.db") as conn:   # not migrated
        assert "pack" in {row[1] for row in conn.execute("PRAGMA table_info(objects)")}
    conn.close()
    (ws / "new.txt").write_text("new\n")
    got = limited("commit", "-m", "second")
    assert got.returncode == 1 and "Traceback" not in got.stderr, got.stderr
    assert "error: cannot write the index" in got.stderr and "ulimit -f" in got.stderr
    assert "bug in dsv" not in got.stderr
    # Nothing else is written either (state.json, which mirrors tags, is not kept then).
    got = limited("tag", f"mydata:{vid}", "v1")
    assert got.returncode == 1 and "error: cannot write the index" in got.stderr, got.stderr
    assert json.loads((ws / ".dsv" / "state.json").read_text())["tags"] == []
    # With room again: migrated, and nothing was lost.
    assert ok(dsv("status", cwd=ws)).out.startswith(f"mydata ({vid}): 1 added")
    with sqlite3.connect(ws / ".dsv" / "index.db") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (str(SCHEMA_VERSION),)
        assert conn.execute("SELECT count(*) FROM tags").fetchone() == (0,)
    conn.close()
    ok(dsv("verify", cwd=ws))
    ok(dsv("checkout", f"mydata:{vid}", "--to", str(tmp_path / "out"), cwd=ws))
    assert read_tree(tmp_path / "out") == files


QUICK_LINES = [["status"], ["status", "--json"], ["status", "-s"], ["status", "--short", "--json"],
               ["status", "-d", "mydata"], ["status", "--dataset", "mydata", "-s"],
               ["status", "--dataset=mydata"], ["status", "-d", "nope"], ["--debug", "status", "-s"],
               ["--store", "{ws}", "status"], ["--store={ws}/.dsv", "status", "--json"],
               ["--store", "{ws}/nowhere", "status"], ["status", "--ignored", "--json"]]
TYPER_LINES = [["status", "-h"], ["status", "--bogus"], ["status", "-sd", "mydata"],
               ["status", "extra"], ["status", "-d"], ["status", "--json", "--json"],
               ["status", "-d=mydata"], ["status", "--dataset="], ["status", "-d", "-s"],
               ["status", "--", "-s"], ["--store", "status"], ["statu"],
               ["status", "-d", "caf\udce9"]]


def test_plain_status_lines_skip_typer_and_print_what_typer_would(ws: Path, dsv,
                                                                 monkeypatch) -> None:
    """`dsv status` in its plain forms is read without typer (start-up); every line, read
    either way, prints the same bytes and exits with the same status."""
    from dsv.cli import quick
    vid_of(dsv("commit", "-m", "first", cwd=ws))
    (ws / "a.txt").write_text("changed\n")
    (ws / "new.txt").write_text("new\n")
    real = quick.command
    for lines, quick_reads in ((QUICK_LINES, True), (TYPER_LINES, False)):
        for line in lines:
            args = [a.format(ws=ws) for a in line]
            assert (real(args) is not None) is quick_reads, args
            both = dsv(*args, cwd=ws)
            with monkeypatch.context() as m:
                m.setattr(quick, "command", lambda args: None)
                assert dsv(*args, cwd=ws) == both, args
            assert both.code in (0, 1, 2) and "Traceback" not in both.err
    assert ok(dsv("status", "-s", cwd=ws)).out == \
        "mydata ({}): 1 added (4 B), 1 modified (8 B), 0 deleted (0 B)\n".format(
            jout(dsv("log", "--json", cwd=ws))[0]["id"])
    fails(dsv("status", "-d", "nope", cwd=ws), "nope")
    fails(dsv("status", "--bogus", cwd=ws), "no such option: --bogus", code=2)
    # DSV_DIR names the store, as typer reads it; an empty one is left to typer.
    monkeypatch.setenv("DSV_DIR", os.fspath(ws))
    assert real(["status"]) is not None
    assert "1 modified" in ok(dsv("status", cwd=ws.parent)).out
    monkeypatch.setenv("DSV_DIR", "")
    assert real(["status"]) is None


def test_status_of_all_datasets_and_one(tmp_path: Path, dsv) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    ok(dsv("init", "--bare", cwd=proj))
    ok(dsv("datasets", "create", "a", "--path", "da", cwd=proj))
    ok(dsv("datasets", "create", "b", "--path", "db", cwd=proj))
    write_tree(proj, {"da/x": "xx", "db/y": "yyy"})
    reports = jout(dsv("status", "--json", cwd=proj))
    assert {r["dataset"]: r["added"] for r in reports} == {"a": ["x"], "b": ["y"]}
    (only_b,) = jout(dsv("status", "--json", cwd=proj / "db"))
    assert only_b["dataset"] == "b" and only_b["added_bytes"] == 3
    (only_a,) = jout(dsv("status", "-d", "a", "--json", cwd=proj / "db"))
    assert only_a["dataset"] == "a"


# ---- commit -------------------------------------------------------------------------------

def test_commit_prints_name_and_version_id(ws: Path, dsv) -> None:
    r = ok(dsv("commit", "-m", "first", cwd=ws))
    m = REF_RE.match(r.out.strip())
    assert m, r.out
    (entry,) = jout(dsv("log", "--json", cwd=ws))
    assert entry["id"] == m.group(1) and entry["message"] == "first"
    assert entry["author"] == "tester <t@example.com>" and entry["parents"] == []
    assert entry["files"] == 3 and entry["size"] == sum(len(v) for v in BASE.values())
    # the version holds exactly the files, hash for hash
    listing = jout(dsv("files", "list", "mydata:latest", "-r", "--json", cwd=ws))
    assert {f["path"]: f["hash"] for f in listing} == {k: b3(v) for k, v in BASE.items()}


def test_commit_with_nothing_to_commit_fails(committed, dsv) -> None:
    ws, vid = committed
    fails(dsv("commit", "-m", "again", cwd=ws), "nothing to commit")
    assert [v["id"] for v in jout(dsv("log", "--json", cwd=ws))] == [vid]


def test_commit_allow_empty(committed, dsv) -> None:
    ws, vid = committed
    second = vid_of(dsv("commit", "-m", "empty", "--allow-empty", cwd=ws))
    assert second != vid
    log = jout(dsv("log", "--json", cwd=ws))
    assert [v["id"] for v in log] == [second, vid]
    assert log[0]["parents"] == [vid] and log[0]["tree"] == log[1]["tree"]


def test_commit_json_and_dataset_option(tmp_path: Path, dsv) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    ok(dsv("init", "--bare", cwd=proj))
    ok(dsv("datasets", "create", "raw", "--path", "raw", cwd=proj))
    (proj / "raw" / "f").write_bytes(b"f" * 10)
    v = jout(dsv("commit", "-m", "msg", "-d", "raw", "--json", cwd=proj))
    assert v["state"] == "committed" and v["message"] == "msg" and v["files"] == 1
    assert v["ref"] == f"raw:{v['id']}" and v["size"] == 10
    fails(dsv("commit", "-m", "msg", "-d", "nope", cwd=proj), "nope")


def test_commit_needs_a_message(ws: Path, dsv) -> None:
    fails(dsv("commit", cwd=ws), code=2)
    fails(dsv("commit", "-m", "", cwd=ws), "message")
    fails(dsv("commit", "-m", "   ", cwd=ws), "message")
    assert jout(dsv("log", "--json", cwd=ws)) == []


def test_commit_refuses_symlink_escaping_the_dataset(ws: Path, dsv) -> None:
    os.symlink("../../etc/passwd", ws / "sub" / "evil")
    fails(dsv("commit", "-m", "bad link", cwd=ws), "evil")
    assert jout(dsv("log", "--json", cwd=ws)) == []
    assert os.readlink(ws / "sub" / "evil") == "../../etc/passwd"


def test_commit_and_checkout_deeply_nested_directories(tmp_path: Path, dsv) -> None:
    """Directories that hold only directories (train/images/cats/x.png) are ordinary datasets."""
    data = tmp_path / "mydata"
    files = {"train/images/cats/0001.png": b"\x89PNG cat", "train/images/dogs/0002.png": b"dog",
             "l1/l2/l3/l4/l5/deep.txt": "deep", "top.txt": "top"}
    write_tree(data, files)
    ok(dsv("init", cwd=data))
    v1 = vid_of(dsv("commit", "-m", "nested", cwd=data))
    listing = jout(dsv("files", "list", f"mydata:{v1}", "-r", "--json", cwd=data))
    assert {f["path"] for f in listing} == set(files)
    out = tmp_path / "out"
    ok(dsv("checkout", f"mydata:{v1}", "--to", out, cwd=data))
    assert read_tree(out) == read_tree(data)
    (data / "train" / "images" / "cats" / "0001.png").write_bytes(b"other cat")
    ok(dsv("commit", "-m", "changed a cat", cwd=data))
    ok(dsv("verify", cwd=data))



def _read_deep(root: Path, rel: str) -> bytes:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for name in rel.split("/")[:-1]:
        inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    try:
        with open(os.open("f", os.O_RDONLY, dir_fd=fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def test_a_version_as_deep_as_a_path_may_be_checks_out_and_clones(tmp_path: Path, dsv) -> None:
    """2,000 directories, one in the other (a 4,001-byte path: within the 4,096 a version
    path may have): commit, checkout to a new directory and back into the worktree, clone
    and pull all place it. Checkout opened each directory by recursion, one level a frame,
    and failed past Python's 1,000 frames ("input nested too deeply to read")."""
    try:
        _deep_version(tmp_path, dsv)
    finally:   # (pytest's own clean-up recurses a frame per level too)
        subprocess.run(["rm", "-rf", tmp_path], check=True)


def _deep_version(tmp_path: Path, dsv) -> None:
    data = tmp_path / "mydata"
    data.mkdir()
    deep = deep_chain(data, 2000, leaf=("f", b"at the bottom"))
    (data / "top.txt").write_text("top")
    ok(dsv("init", cwd=data))
    v1 = vid_of(dsv("commit", "-m", "deep", cwd=data))
    assert {f["path"] for f in jout(dsv("files", "list", f"mydata:{v1}", "-r", "--json",
                                        cwd=data))} == {deep, "top.txt"}
    out = tmp_path / "out"
    ok(dsv("checkout", f"mydata:{v1}", "--to", out, cwd=data))
    assert _read_deep(out, deep) == b"at the bottom"
    subprocess.run(["rm", "-rf", data / "d"], check=True)
    ok(dsv("commit", "-m", "shallow", cwd=data))
    ok(dsv("checkout", f"mydata:{v1}", cwd=data))
    assert _read_deep(data, deep) == b"at the bottom"
    ok(dsv("remote", "add", "origin", tmp_path / "remote", cwd=data))
    ok(dsv("push", cwd=data))
    ok(dsv("clone", tmp_path / "remote", tmp_path / "clone", cwd=tmp_path))
    clone = tmp_path / "clone"   # (a clone of the store's own directory dataset)
    assert (clone / "top.txt").read_text() == "top" and not (clone / "d").exists()
    ok(dsv("checkout", f"mydata:{v1}", cwd=clone))
    assert _read_deep(clone, deep) == b"at the bottom"
    ok(dsv("verify", cwd=tmp_path / "clone"))

def test_commit_only_hashes_changed_files(committed, dsv) -> None:
    ws, first = committed
    (ws / "a.txt").write_text("second\n")
    second = vid_of(dsv("commit", "-m", "second", cwd=ws))
    diff = jout(dsv("diff", f"mydata:{first}", f"mydata:{second}", "--json", cwd=ws))
    assert (diff["added"], diff["modified"], diff["deleted"]) == ([], ["a.txt"], [])
    assert jout(dsv("show", "mydata:latest", "--json", cwd=ws))["parents"] == [first]


# ---- log / show / diff ----------------------------------------------------------------------

def test_log_show_with_tags_and_ancestry(committed, dsv) -> None:
    ws, v1 = committed
    (ws / "a.txt").write_text("two\n")
    v2 = vid_of(dsv("commit", "-m", "second message", cwd=ws))
    ok(dsv("tag", f"mydata:{v1}", "v1", cwd=ws))
    log = jout(dsv("log", "--json", cwd=ws))
    assert [v["id"] for v in log] == [v2, v1]
    for entry in log:
        for key in ("id", "dataset", "state", "tree", "parents", "message", "author",
                    "created", "committed", "record", "size", "files", "tags", "ref"):
            assert key in entry
    assert log[1]["tags"] == ["v1"] and log[0]["tags"] == []
    assert log[0]["committed"] >= log[1]["committed"]
    human = ok(dsv("log", cwd=ws)).out
    assert "second message" in human and "first" in human and "v1" in human
    assert f"mydata:{v2}" in human and "tester <t@example.com>" in human
    assert len(jout(dsv("log", "mydata", "-n", "1", "--json", cwd=ws))) == 1

    show = jout(dsv("show", "mydata:latest~1", "--json", cwd=ws))
    assert show["id"] == v1 and show["tags"] == ["v1"] and show["message"] == "first"
    assert jout(dsv("show", "mydata:v1", "--json", cwd=ws))["id"] == v1
    assert jout(dsv("show", "mydata", "--json", cwd=ws))["id"] == v2
    human_show = ok(dsv("show", f"mydata:{v2}", cwd=ws)).out
    assert v2 in human_show and "second message" in human_show and v1 in human_show


def test_show_errors(committed, dsv) -> None:
    ws, _ = committed
    fails(dsv("show", "mydata:nosuchtag", cwd=ws), "nosuchtag")
    fails(dsv("show", "nodataset:latest", cwd=ws), "nodataset")
    fails(dsv("show", "mydata:latest~5", cwd=ws))
    fails(dsv("show", "my data:latest", cwd=ws), "invalid ref")


def test_diff_between_versions_and_against_worktree(committed, dsv) -> None:
    ws, v1 = committed
    (ws / "a.txt").write_text("modified\n")
    (ws / "sub" / "b.bin").unlink()
    (ws / "z.txt").write_text("zz")
    v2 = vid_of(dsv("commit", "-m", "second", cwd=ws))
    d = jout(dsv("diff", f"mydata:{v1}", f"mydata:{v2}", "--json", cwd=ws))
    assert (d["added"], d["modified"], d["deleted"]) == (["z.txt"], ["a.txt"], ["sub/b.bin"])
    assert d["added_bytes"] == 2 and d["deleted_bytes"] == 1024
    back = jout(dsv("diff", f"mydata:{v2}", f"mydata:{v1}", "--json", cwd=ws))
    assert (back["added"], back["modified"], back["deleted"]) == (["sub/b.bin"], ["a.txt"],
                                                                  ["z.txt"])
    human = ok(dsv("diff", f"mydata:{v1}", f"mydata:{v2}", cwd=ws)).out.splitlines()
    assert human == ["M a.txt", "D sub/b.bin", "A z.txt", "1 added, 1 modified, 1 deleted"]
    # against the working directory
    clean = jout(dsv("diff", "mydata:latest", "--json", cwd=ws))
    assert clean["added"] == clean["modified"] == clean["deleted"] == []
    (ws / "z.txt").unlink()
    (ws / "w.txt").write_text("w")
    wd = jout(dsv("diff", f"mydata:{v1}", "--json", cwd=ws))
    assert (wd["added"], wd["modified"], wd["deleted"]) == (["w.txt"], ["a.txt"], ["sub/b.bin"])
    fails(dsv("diff", "mydata:nope", cwd=ws), "nope")


# ---- tags ---------------------------------------------------------------------------------

def test_tag_create_list_move_delete(committed, dsv) -> None:
    ws, v1 = committed
    (ws / "a.txt").write_text("2")
    v2 = vid_of(dsv("commit", "-m", "second", cwd=ws))
    r = ok(dsv("tag", f"mydata:{v1}", "v1", cwd=ws))
    assert f"mydata:v1 -> {v1}" in r.out
    tags = jout(dsv("tags", "--json", cwd=ws))
    assert [(t["dataset"], t["tag"], t["version"]) for t in tags] == [("mydata", "v1", v1)]
    # moving needs --force; without it nothing changes
    fails(dsv("tag", f"mydata:{v2}", "v1", cwd=ws), "v1", "--force")
    assert jout(dsv("show", "mydata:v1", "--json", cwd=ws))["id"] == v1
    # re-tagging the same version is harmless
    ok(dsv("tag", f"mydata:{v1}", "v1", cwd=ws))
    moved = jout(dsv("tag", f"mydata:{v2}", "v1", "--force", "--json", cwd=ws))
    assert moved["id"] == v2 and moved["tag"] == "v1"
    assert jout(dsv("show", "mydata:v1", "--json", cwd=ws))["id"] == v2
    assert [t["tag"] for t in jout(dsv("tags", "mydata", "--json", cwd=ws))] == ["v1"]
    assert "v1" in ok(dsv("tags", cwd=ws)).out
    # delete
    d = ok(dsv("tag", "-d", "mydata:v1", cwd=ws))
    assert v2 in d.out
    assert jout(dsv("tags", "--json", cwd=ws)) == []
    fails(dsv("show", "mydata:v1", cwd=ws), "v1")
    fails(dsv("tag", "-d", "mydata:v1", cwd=ws), "v1")


def test_tag_name_rules(committed, dsv) -> None:
    ws, v1 = committed
    for bad in ("latest", "has space", "a/b", "-dash", "..", "a..b", "x" * 129, "a:b", "a~1"):
        fails(dsv("tag", f"mydata:{v1}", bad, cwd=ws))
    r = dsv("tag", f"mydata:{v1}", "", cwd=ws)  # an empty NAME is a missing NAME
    assert r.code in (1, 2) and "Traceback" not in r.err
    assert jout(dsv("tags", "--json", cwd=ws)) == []


def test_tag_of_a_draft_is_refused(committed, dsv) -> None:
    ws, _ = committed
    draft = vid_of(dsv("versions", "create", "mydata", "-m", "draft", cwd=ws))
    fails(dsv("tag", f"mydata:{draft}", "d1", cwd=ws), "draft")
    assert jout(dsv("tags", "--json", cwd=ws)) == []


def test_tags_are_per_dataset(tmp_path: Path, dsv) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    ok(dsv("init", "--bare", cwd=proj))
    for name in ("a", "b"):
        ok(dsv("datasets", "create", name, "--path", name, cwd=proj))
        (proj / name / "f").write_text(name)
        ok(dsv("commit", "-m", name, "-d", name, cwd=proj))
        ok(dsv("tag", f"{name}:latest", "v1", cwd=proj))
    assert {(t["dataset"], t["tag"]) for t in jout(dsv("tags", "--json", cwd=proj))} == \
        {("a", "v1"), ("b", "v1")}
    assert [t["dataset"] for t in jout(dsv("tags", "b", "--json", cwd=proj))] == ["b"]
    ok(dsv("tag", "-d", "a:v1", cwd=proj))
    assert [t["dataset"] for t in jout(dsv("tags", "--json", cwd=proj))] == ["b"]


# ---- checkout -----------------------------------------------------------------------------

def _two_versions(ws: Path, dsv) -> tuple[str, str, dict, dict]:
    v1 = vid_of(dsv("commit", "-m", "first", cwd=ws))
    t1 = read_tree(ws)
    (ws / "a.txt").write_text("second version\n")
    (ws / "sub" / "deep" / "c.csv").unlink()
    write_tree(ws, {"extra/e.txt": "extra"})
    v2 = vid_of(dsv("commit", "-m", "second", cwd=ws))
    t2 = read_tree(ws)
    return v1, v2, t1, t2


def test_checkout_worktree_to_older_version_and_back(ws: Path, dsv) -> None:
    v1, v2, t1, t2 = _two_versions(ws, dsv)
    r = ok(dsv("checkout", f"mydata:{v1}", cwd=ws))
    assert v1 in r.out
    assert read_tree(ws) == t1
    assert not (ws / "extra").exists(), "empty directories of removed files are removed"
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert st["clean"] is True and st["head"] == v1
    ok(dsv("checkout", "mydata:latest", cwd=ws))
    assert read_tree(ws) == t2
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert st["clean"] is True and st["head"] == v2


def test_checkout_to_directory(ws: Path, dsv, tmp_path: Path) -> None:
    v1, v2, t1, t2 = _two_versions(ws, dsv)
    out = tmp_path / "out"
    rep = jout(dsv("checkout", f"mydata:{v1}", "--to", out, "--json", cwd=ws))
    assert rep["version"] == v1 and rep["written"] == 3
    assert read_tree(out) == t1
    assert read_tree(ws) == t2, "checkout --to never touches the working directory"
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert st["clean"] is True and st["head"] == v2


def test_checkout_to_directory_switches_between_versions(ws: Path, dsv, tmp_path: Path) -> None:
    """Files that hold committed content are safe in the store: replacing them discards nothing."""
    v1, v2, t1, t2 = _two_versions(ws, dsv)
    out = tmp_path / "out"
    ok(dsv("checkout", f"mydata:{v1}", "--to", out, cwd=ws))
    ok(dsv("checkout", f"mydata:{v2}", "--to", out, cwd=ws))
    assert read_tree(out) == t2
    assert not (out / "sub" / "deep").exists()
    ok(dsv("checkout", f"mydata:{v1}", "--to", out, cwd=ws))
    assert read_tree(out) == t1


@pytest.mark.parametrize("mode", ["copy", "hardlink", "symlink"])
def test_a_to_directory_can_switch_versions_in_any_link_mode(tmp_path: Path, dsv,
                                                              mode: str) -> None:
    root = tmp_path / "data"
    big_v1, big_v2 = os.urandom(2 << 20), os.urandom(2 << 20)
    write_tree(root, {"big.bin": big_v1, "a.txt": "1"})
    assert dsv("init", cwd=root).code == 0
    assert dsv("commit", "-m", "one", cwd=root).code == 0
    write_tree(root, {"big.bin": big_v2, "a.txt": "2"})
    assert dsv("commit", "-m", "two", cwd=root).code == 0
    out = tmp_path / "out"
    assert dsv("checkout", "data:latest~1", "--to", out, "--link", mode, cwd=root).code == 0
    switched = dsv("checkout", "data:latest", "--to", out, "--link", mode, cwd=root)
    assert switched.code == 0, switched.err
    assert (out / "big.bin").read_bytes() == big_v2 and (out / "a.txt").read_text() == "2"
    # An edit made in the directory is an uncommitted change like any other.
    (out / "a.txt").unlink()
    (out / "a.txt").write_text("edited")
    refused = dsv("checkout", "data:latest~1", "--to", out, "--link", mode, cwd=root)
    assert refused.code == 1 and "a.txt" in refused.err
    assert (out / "a.txt").read_text() == "edited"


def test_checkout_paths_subset(ws: Path, dsv, tmp_path: Path) -> None:
    v1, v2, t1, t2 = _two_versions(ws, dsv)
    out = tmp_path / "out"
    ok(dsv("checkout", f"mydata:{v1}", "sub", "--to", out, cwd=ws))
    assert read_tree(out) == {k: v for k, v in t1.items() if k.startswith("sub/")}
    out2 = tmp_path / "out2"
    ok(dsv("checkout", f"mydata:{v1}", "a.txt", "sub/deep/c.csv", "--to", out2, cwd=ws))
    assert read_tree(out2) == {"a.txt": t1["a.txt"], "sub/deep/c.csv": t1["sub/deep/c.csv"]}
    fails(dsv("checkout", f"mydata:{v1}", "nope.txt", "--to", tmp_path / "out3", cwd=ws),
          "nope.txt")
    # a path subset in the working directory restores only that path
    (ws / "a.txt").write_text("dirty a")
    (ws / "sub" / "b.bin").write_bytes(b"dirty b")
    fails(dsv("checkout", "mydata:latest", "a.txt", cwd=ws), "a.txt")
    assert (ws / "a.txt").read_text() == "dirty a"
    ok(dsv("checkout", "mydata:latest", "a.txt", "--force", cwd=ws))
    assert (ws / "a.txt").read_bytes() == t2["a.txt"]
    assert (ws / "sub" / "b.bin").read_bytes() == b"dirty b"


def test_checkout_paths_are_relative_to_the_current_directory(tmp_path: Path, dsv) -> None:
    root = tmp_path / "data"
    write_tree(root, {"sub/a.txt": "1", "b.txt": "1"})
    assert dsv("init", cwd=root).code == 0
    assert dsv("commit", "-m", "one", cwd=root).code == 0
    (root / "sub/a.txt").write_text("2")
    (root / "b.txt").write_text("2")
    result = dsv("checkout", "data:latest", "a.txt", "--force", cwd=root / "sub")
    assert result.code == 0, result.err
    assert (root / "sub/a.txt").read_text() == "1"
    assert (root / "b.txt").read_text() == "2"


def test_checkout_refuses_dirty_worktree_and_changes_nothing(ws: Path, dsv) -> None:
    v1, v2, t1, t2 = _two_versions(ws, dsv)
    (ws / "a.txt").write_text("uncommitted edit")
    before = read_tree(ws)
    head_before = jout(dsv("datasets", "details", "mydata", "--json", cwd=ws))["head"]
    fails(dsv("checkout", f"mydata:{v1}", cwd=ws), "a.txt", "--force")
    assert read_tree(ws) == before
    assert jout(dsv("datasets", "details", "mydata", "--json", cwd=ws))["head"] == head_before
    # --force discards the edit
    ok(dsv("checkout", f"mydata:{v1}", "--force", cwd=ws))
    assert read_tree(ws) == t1


def test_checkout_protects_a_permission_only_change(tmp_path: Path, dsv) -> None:
    root = tmp_path / "data"
    write_tree(root, {"run.sh": "echo hi\n"})
    assert dsv("init", cwd=root).code == 0
    assert dsv("commit", "-m", "one", cwd=root).code == 0
    (root / "run.sh").write_text("echo bye\n")
    assert dsv("commit", "-m", "two", cwd=root).code == 0
    os.chmod(root / "run.sh", 0o755)
    result = dsv("checkout", "data:latest~1", cwd=root)
    assert result.code == 1 and "run.sh" in result.err
    assert (root / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (root / "run.sh").read_text() == "echo bye\n"


def test_checkout_refuses_to_delete_untracked_file(ws: Path, dsv) -> None:
    v1, v2, t1, t2 = _two_versions(ws, dsv)
    (ws / "extra" / "mine.txt").write_text("precious, never committed")
    before = read_tree(ws)
    fails(dsv("checkout", f"mydata:{v1}", cwd=ws), "mine.txt")
    assert read_tree(ws) == before
    ok(dsv("checkout", f"mydata:{v1}", "--force", cwd=ws))
    assert read_tree(ws) == t1, "--force removes files the version lacks"


def test_checkout_to_nonempty_directory_needs_force(ws: Path, dsv, tmp_path: Path) -> None:
    v1, _v2, t1, _t2 = _two_versions(ws, dsv)
    out = tmp_path / "out"
    write_tree(out, {"junk.txt": "junk", "a.txt": "other a"})
    fails(dsv("checkout", f"mydata:{v1}", "--to", out, cwd=ws))
    assert read_tree(out) == {"junk.txt": b"junk", "a.txt": b"other a"}
    ok(dsv("checkout", f"mydata:{v1}", "--to", out, "--force", cwd=ws))
    assert read_tree(out) == t1


def test_checkout_restores_modes_and_symlinks(ws: Path, dsv, tmp_path: Path) -> None:
    script = ws / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    os.chmod(script, 0o755)
    os.chmod(ws / "sub" / "b.bin", 0o600)
    os.symlink("a.txt", ws / "link.txt")
    os.symlink("../a.txt", ws / "sub" / "up.txt")
    os.symlink("deep", ws / "sub" / "deeplink")
    v1 = vid_of(dsv("commit", "-m", "modes", cwd=ws))
    listing = {f["path"]: f for f in jout(dsv("files", "list", "mydata:latest", "-r", "--json",
                                               cwd=ws))}
    assert listing["link.txt"]["type"] == "link" and listing["run.sh"]["mode"] == "0o755"

    out = tmp_path / "out"
    ok(dsv("checkout", f"mydata:{v1}", "--to", out, cwd=ws))
    assert stat.S_IMODE(os.lstat(out / "run.sh").st_mode) == 0o755
    # Only the owner-exec distinction is versioned (as in git): the umask decides the rest.
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.lstat(out / "sub" / "b.bin").st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.lstat(out / "a.txt").st_mode) == \
        stat.S_IMODE(os.lstat(ws / "a.txt").st_mode)
    assert os.readlink(out / "link.txt") == "a.txt"
    assert os.readlink(out / "sub" / "up.txt") == "../a.txt"
    assert os.readlink(out / "sub" / "deeplink") == "deep"
    assert (out / "link.txt").read_text() == "alpha\n"

    # in the working directory: change modes and links, commit, then go back to v1
    os.chmod(script, 0o644)
    (ws / "link.txt").unlink()
    os.symlink("sub/b.bin", ws / "link.txt")
    ok(dsv("commit", "-m", "changed modes", cwd=ws))
    ok(dsv("checkout", f"mydata:{v1}", cwd=ws))
    assert stat.S_IMODE(os.lstat(script).st_mode) == 0o755
    assert os.readlink(ws / "link.txt") == "a.txt"


def _hardlinked_checkout(ws: Path, dsv, tmp_path: Path) -> tuple[str, bytes, Path]:
    big = big_bytes()
    (ws / "big.bin").write_bytes(big)
    v1 = vid_of(dsv("commit", "-m", "big", cwd=ws))
    out = tmp_path / "out"
    ok(dsv("checkout", f"mydata:{v1}", "--to", out, "--link", "hardlink", cwd=ws))
    f = out / "big.bin"
    assert f.read_bytes() == big
    st = os.stat(f)
    assert st.st_nlink >= 2, "--link hardlink should hard-link large files"
    assert stat.S_IMODE(st.st_mode) & 0o222 == 0, oct(st.st_mode)
    assert read_tree(out) == read_tree(ws)
    return v1, big, f


def _store_still_holds(dsv, ws: Path, tmp_path: Path, v1: str, big: bytes) -> None:
    ok(dsv("verify", cwd=ws))
    check = tmp_path / "check"
    ok(dsv("checkout", f"mydata:{v1}", "--to", check, cwd=ws))
    assert (check / "big.bin").read_bytes() == big


def test_checkout_hardlink_write_attempt_cannot_change_store(ws: Path, dsv,
                                                             tmp_path: Path) -> None:
    v1, big, f = _hardlinked_checkout(ws, dsv, tmp_path)
    try:  # an in-place edit of the read-only file (succeeds only where mode bits do not bind)
        with open(f, "r+b") as fh:
            fh.write(b"EDITED")
    except PermissionError:
        pass
    _store_still_holds(dsv, ws, tmp_path, v1, big)


def test_checkout_hardlink_chmod_and_write_cannot_change_store(ws: Path, dsv,
                                                               tmp_path: Path) -> None:
    v1, big, f = _hardlinked_checkout(ws, dsv, tmp_path)
    try:  # the user makes the file writable first, then edits it in place
        os.chmod(f, 0o644)
        with open(f, "r+b") as fh:
            fh.write(b"EDITED")
    except PermissionError:
        pass
    _store_still_holds(dsv, ws, tmp_path, v1, big)


def test_checkout_hardlink_replace_by_rename_leaves_store_intact(ws: Path, dsv,
                                                                 tmp_path: Path) -> None:
    """How editors save (write a new file, rename it over) never reaches the store."""
    v1, big, f = _hardlinked_checkout(ws, dsv, tmp_path)
    tmp = f.with_name("big.bin.tmp")
    tmp.write_bytes(b"new content")
    os.replace(tmp, f)
    f.unlink()
    _store_still_holds(dsv, ws, tmp_path, v1, big)


def test_checkout_symlink_mode_is_read_only(ws: Path, dsv, tmp_path: Path) -> None:
    big = big_bytes(seed=3)
    (ws / "big.bin").write_bytes(big)
    v1 = vid_of(dsv("commit", "-m", "big", cwd=ws))
    out = tmp_path / "out"
    ok(dsv("checkout", f"mydata:{v1}", "--to", out, "--link", "symlink", cwd=ws))
    f = out / "big.bin"
    assert f.read_bytes() == big
    if f.is_symlink():
        assert stat.S_IMODE(os.stat(f).st_mode) & 0o222 == 0
    assert read_tree(out) | {"big.bin": big} == {**read_tree(ws), "big.bin": big}


def test_checkout_with_unknown_link_mode_changes_nothing(ws: Path, dsv) -> None:
    v1, v2, t1, t2 = _two_versions(ws, dsv)
    r = dsv("checkout", f"mydata:{v1}", "--link", "teleport", cwd=ws)
    assert r.code in (1, 2) and "Traceback" not in r.err
    assert "teleport" in r.err
    assert read_tree(ws) == t2, "a rejected option must not half-do the checkout"
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert st["clean"] is True and st["head"] == v2


@pytest.mark.parametrize("mode", ["hardlink", "symlink"])
def test_link_modes_refused_in_a_working_directory(tmp_path: Path, dsv, mode: str) -> None:
    root = tmp_path / "data"
    write_tree(root, {"big.bin": os.urandom(2 << 20), "a.txt": "x"})
    assert dsv("init", cwd=root).code == 0
    assert dsv("commit", "-m", "one", cwd=root).code == 0
    before = read_tree(root)
    result = dsv("checkout", "data:latest", "--force", "--link", mode, cwd=root)
    assert result.code == 1
    assert f"--link {mode} is only for --to directories" in result.err
    assert read_tree(root) == before
    assert dsv("status", cwd=root).out.strip().endswith("clean")


def test_checkout_errors(committed, dsv, tmp_path: Path) -> None:
    ws, v1 = committed
    fails(dsv("checkout", "mydata:nope", cwd=ws), "nope")
    fails(dsv("checkout", f"mydata:{v1}", "--to", ws / ".dsv" / "x", cwd=ws), "store")
    assert not (ws / ".dsv" / "x").exists()
    fails(dsv("checkout", cwd=ws), code=2)


# ---- datasets -----------------------------------------------------------------------------

def test_datasets_create_list_details_update_delete(tmp_path: Path, dsv) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    ok(dsv("init", "--bare", cwd=proj))
    r = ok(dsv("datasets", "create", "raw", "--path", "data/raw", "--description", "raw data",
               cwd=proj))
    assert "raw" in r.out
    ds = jout(dsv("datasets", "details", "raw", "--json", cwd=proj))
    assert (ds["name"], ds["path"], ds["description"]) == ("raw", "data/raw", "raw data")
    assert re.fullmatch(r"[0-9a-z]{8}", ds["id"])
    assert jout(dsv("datasets", "details", ds["id"], "--json", cwd=proj)) == ds
    assert "raw data" in ok(dsv("datasets", "details", "raw", cwd=proj)).out
    assert [d["id"] for d in jout(dsv("datasets", "list", "--json", cwd=proj))] == [ds["id"]]
    assert "raw" in ok(dsv("datasets", "list", cwd=proj)).out

    # errors: duplicate name, taken path, bad names, outside the workspace, inside .dsv
    fails(dsv("datasets", "create", "raw", cwd=proj), "raw")
    fails(dsv("datasets", "create", "raw2", "--path", "data/raw", cwd=proj), "data/raw")
    for bad in ("latest", "with space", "a/b", ".hidden"):
        fails(dsv("datasets", "create", bad, cwd=proj))
    fails(dsv("datasets", "create", "out", "--path", tmp_path / "elsewhere", cwd=proj))
    assert not (tmp_path / "elsewhere").exists()
    fails(dsv("datasets", "create", "inside", "--path", ".dsv/x", cwd=proj))
    assert len(jout(dsv("datasets", "list", "--json", cwd=proj))) == 1

    # update: rename, description, path; the id keeps working
    write_tree(proj / "data" / "raw", {"f": "f"})
    ok(dsv("commit", "-m", "one", "-d", "raw", cwd=proj))
    up = jout(dsv("datasets", "update", "raw", "--name", "images", "--description", "imgs",
                  "--json", cwd=proj))
    assert (up["id"], up["name"], up["description"]) == (ds["id"], "images", "imgs")
    assert jout(dsv("show", "images:latest", "--json", cwd=proj))["message"] == "one"
    assert jout(dsv("show", f"{ds['id']}:latest", "--json", cwd=proj))["message"] == "one"
    fails(dsv("show", "raw:latest", cwd=proj), "raw")
    # Binding a dataset that has versions to a missing directory does not create it empty
    # (a commit of it would delete every file): it says how to fill it, and commit refuses.
    moved = dsv("datasets", "update", ds["id"], "--path", "imgs", "--json", cwd=proj)
    up = jout(moved)
    assert up["path"] == "imgs" and not (proj / "imgs").exists()
    assert "does not exist yet: `dsv checkout images:latest` fills it" in moved.err
    (st,) = jout(dsv("status", "-d", "images", "--json", cwd=proj))
    assert (st["missing"], st["clean"], st["deleted"]) == (True, False, [])
    assert "imgs does not exist (`dsv checkout images:latest` fills it)" in \
        ok(dsv("status", "-d", "images", cwd=proj)).out
    fails(dsv("commit", "-m", "empty?", "-d", "images", cwd=proj), "does not exist",
          "dsv checkout images:latest")
    assert len(jout(dsv("log", "images", "--json", cwd=proj))) == 1
    ok(dsv("checkout", "images:latest", cwd=proj))
    assert read_tree(proj / "imgs") == {"f": b"f"}
    assert jout(dsv("status", "-d", "images", "--json", cwd=proj))[0]["clean"] is True
    ok(dsv("datasets", "create", "other", cwd=proj))
    fails(dsv("datasets", "update", "other", "--name", "images", cwd=proj), "images")
    fails(dsv("datasets", "update", "nosuch", "--name", "x", cwd=proj), "nosuch")

    # delete
    fails(dsv("datasets", "delete", "nosuch", "--yes", cwd=proj), "nosuch")
    ok(dsv("datasets", "delete", "images", "--yes", cwd=proj))
    assert [d["name"] for d in jout(dsv("datasets", "list", "--json", cwd=proj))] == ["other"]
    fails(dsv("datasets", "details", "images", cwd=proj), "images")
    fails(dsv("show", f"{ds['id']}:latest", cwd=proj))
    assert (proj / "data" / "raw" / "f").read_text() == "f", "files on disk stay"


def test_datasets_delete_asks_first(committed, dsv, monkeypatch) -> None:
    ws, _ = committed
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    r = dsv("datasets", "delete", "mydata", cwd=ws)
    assert r.code != 0 and "Traceback" not in r.err
    assert [d["name"] for d in jout(dsv("datasets", "list", "--json", cwd=ws))] == ["mydata"]
    assert len(jout(dsv("log", "--json", cwd=ws))) == 1


# ---- versions (drafts) ---------------------------------------------------------------------

def test_draft_lifecycle(committed, dsv, tmp_path: Path) -> None:
    ws, v1 = committed
    draft = vid_of(dsv("versions", "create", "mydata", "-m", "draft one", cwd=ws))
    details = jout(dsv("versions", "details", f"mydata:{draft}", "--json", cwd=ws))
    assert details["state"] == "draft" and details["parents"] == [v1]
    assert details["tree"] == jout(dsv("show", f"mydata:{v1}", "--json", cwd=ws))["tree"]
    assert [v["id"] for v in jout(dsv("versions", "list", "mydata", "--drafts", "--json",
                                      cwd=ws))] == [draft]
    assert [v["id"] for v in jout(dsv("versions", "list", "mydata", "--committed", "--json",
                                      cwd=ws))] == [v1]
    assert {v["id"] for v in jout(dsv("versions", "list", "mydata", "--json", cwd=ws))} == \
        {v1, draft}
    assert draft in ok(dsv("versions", "list", "mydata", cwd=ws)).out
    # a draft is not `latest`, and not in the plain log
    assert jout(dsv("show", "mydata:latest", "--json", cwd=ws))["id"] == v1
    assert [v["id"] for v in jout(dsv("log", "--json", cwd=ws))] == [v1]
    assert draft in {v["id"] for v in jout(dsv("log", "--drafts", "--json", cwd=ws))}

    # change it: put a file, a directory under a target path, delete a file, change message
    src = tmp_path / "src"
    write_tree(src, {"one.txt": "1", "dir/two.txt": "22", "dir/three/3.bin": b"\x03" * 3})
    put = jout(dsv("files", "put", f"mydata:{draft}", src / "one.txt", "--json", cwd=ws))
    assert put["files"] == 4 and put["state"] == "draft"
    ok(dsv("files", "put", f"mydata:{draft}", src / "dir", "--target-path", "imported", cwd=ws))
    ok(dsv("files", "delete", f"mydata:{draft}", "sub/deep", cwd=ws))
    fails(dsv("files", "delete", f"mydata:{draft}", "not-there.txt", cwd=ws), "not-there.txt")
    ok(dsv("versions", "update", f"mydata:{draft}", "-m", "better message", cwd=ws))
    listing = {f["path"]: f["hash"] for f in jout(dsv("files", "list", f"mydata:{draft}", "-r",
                                                      "--json", cwd=ws))}
    assert listing == {"a.txt": b3(BASE["a.txt"]), "sub/b.bin": b3(BASE["sub/b.bin"]),
                       "one.txt": b3("1"), "imported/two.txt": b3("22"),
                       "imported/three/3.bin": b3(b"\x03" * 3)}
    # v1 is untouched by the draft's changes
    assert {f["path"] for f in jout(dsv("files", "list", f"mydata:{v1}", "-r", "--json",
                                        cwd=ws))} == set(BASE)

    committed_v = jout(dsv("versions", "commit", f"mydata:{draft}", "--json", cwd=ws))
    assert committed_v["id"] == draft and committed_v["state"] == "committed"
    assert committed_v["message"] == "better message" and committed_v["record"]
    assert jout(dsv("show", "mydata:latest", "--json", cwd=ws))["id"] == draft
    out = tmp_path / "out"
    ok(dsv("files", "get", f"mydata:{draft}", "--target-path", out, cwd=ws))
    assert read_tree(out) == {"a.txt": b"alpha\n", "sub/b.bin": BASE["sub/b.bin"],
                              "one.txt": b"1", "imported/two.txt": b"22",
                              "imported/three/3.bin": b"\x03" * 3}
    ok(dsv("verify", cwd=ws))


def test_versions_create_from_ref_and_first_draft_is_empty(tmp_path: Path, dsv) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    ok(dsv("init", "--bare", cwd=proj))
    ok(dsv("datasets", "create", "d", cwd=proj))
    empty = jout(dsv("versions", "create", "d", "--json", cwd=proj))
    assert empty["state"] == "draft" and empty["files"] == 0 and empty["parents"] == []
    src = tmp_path / "src"
    write_tree(src, {"x": "1"})
    ok(dsv("files", "put", f"d:{empty['id']}", src / "x", cwd=proj))
    ok(dsv("versions", "commit", f"d:{empty['id']}", "-m", "v1", cwd=proj))
    ok(dsv("tag", f"d:{empty['id']}", "v1", cwd=proj))
    write_tree(src, {"y": "2"})
    draft2 = vid_of(dsv("versions", "create", "d", cwd=proj))
    ok(dsv("files", "put", f"d:{draft2}", src / "y", cwd=proj))
    ok(dsv("versions", "commit", f"d:{draft2}", "-m", "v2", cwd=proj))
    from_v1 = jout(dsv("versions", "create", "d", "--from", "v1", "--json", cwd=proj))
    assert from_v1["parents"] == [empty["id"]] and from_v1["files"] == 1
    assert from_v1["tree"] == jout(dsv("show", "d:v1", "--json", cwd=proj))["tree"]
    fails(dsv("versions", "create", "d", "--from", "nosuchtag", cwd=proj), "nosuchtag")
    fails(dsv("versions", "create", "nosuch", cwd=proj), "nosuch")


def test_versions_create_with_source_path(committed, dsv, tmp_path: Path) -> None:
    ws, v1 = committed
    src = tmp_path / "job-output"
    write_tree(src, {"model.pt": b"\x10" * 500, "metrics/acc.json": '{"acc": 0.9}'})
    os.chmod(src / "model.pt", 0o640)
    v = jout(dsv("versions", "create", "mydata", "--source-path", src, "-m", "from dir",
                 "--json", cwd=ws))
    assert v["state"] == "committed" and v["message"] == "from dir" and v["files"] == 2
    assert v["parents"] == [v1]
    out = tmp_path / "out"
    ok(dsv("files", "get", f"mydata:{v['id']}", "--target-path", out, cwd=ws))
    assert read_tree(out) == read_tree(src)
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out / "model.pt").st_mode) == 0o666 & ~umask
    fails(dsv("versions", "create", "mydata", "--source-path", tmp_path / "missing", "-m", "x",
              cwd=ws), "missing")
    ok(dsv("verify", cwd=ws))


def test_versions_delete_rules(committed, dsv, tmp_path: Path) -> None:
    ws, v1 = committed
    draft = vid_of(dsv("versions", "create", "mydata", cwd=ws))
    ok(dsv("versions", "delete", f"mydata:{draft}", cwd=ws))
    fails(dsv("versions", "details", f"mydata:{draft}", cwd=ws), draft)
    # a committed version: refused without --force; refused with --force while in use
    fails(dsv("versions", "delete", f"mydata:{v1}", cwd=ws), "committed")
    ok(dsv("tag", f"mydata:{v1}", "keep", cwd=ws))
    fails(dsv("versions", "delete", f"mydata:{v1}", "--force", cwd=ws), "keep")
    assert jout(dsv("show", f"mydata:{v1}", "--json", cwd=ws))["id"] == v1
    # an unreferenced committed version can go with --force; latest moves back
    src = tmp_path / "src"
    write_tree(src, {"only.txt": "only"})
    side = jout(dsv("versions", "create", "mydata", "--source-path", src, "-m", "side",
                    "--json", cwd=ws))["id"]
    assert jout(dsv("show", "mydata:latest", "--json", cwd=ws))["id"] == side
    assert jout(dsv("versions", "delete", f"mydata:{side}", "--force", "--json",
                    cwd=ws)) == {"deleted": side}
    assert jout(dsv("show", "mydata:latest", "--json", cwd=ws))["id"] == v1
    ok(dsv("verify", cwd=ws))


MUTATIONS = {
    "files put": lambda ref, src: ("files", "put", ref, src),
    "files put target": lambda ref, src: ("files", "put", ref, src, "--target-path", "x"),
    "files delete": lambda ref, src: ("files", "delete", ref, "a.txt"),
    "files delete dir": lambda ref, src: ("files", "delete", ref, "sub"),
    "versions update": lambda ref, src: ("versions", "update", ref, "-m", "rewritten"),
    "versions commit": lambda ref, src: ("versions", "commit", ref),
    "versions commit -m": lambda ref, src: ("versions", "commit", ref, "-m", "again"),
}


@pytest.mark.parametrize("op", sorted(MUTATIONS))
@pytest.mark.parametrize("ref_form", ["id", "latest", "tag"])
def test_committed_version_is_immutable(committed, dsv, tmp_path: Path, op: str,
                                        ref_form: str) -> None:
    ws, v1 = committed
    ok(dsv("tag", f"mydata:{v1}", "t1", cwd=ws))
    ref = {"id": f"mydata:{v1}", "latest": "mydata:latest", "tag": "mydata:t1"}[ref_form]
    src = tmp_path / "new.txt"
    src.write_text("new content")
    before = version_state(dsv, ws, f"mydata:{v1}", tmp_path / "before")
    fails(dsv(*MUTATIONS[op](ref, src), cwd=ws), "committed")
    after = version_state(dsv, ws, f"mydata:{v1}", tmp_path / "after")
    assert after == before
    assert [v["id"] for v in jout(dsv("versions", "list", "mydata", "--json", cwd=ws))] == [v1]
    ok(dsv("verify", cwd=ws))


# ---- files --------------------------------------------------------------------------------

def test_files_list_and_get(committed, dsv, tmp_path: Path) -> None:
    ws, v1 = committed
    top = jout(dsv("files", "list", f"mydata:{v1}", "--json", cwd=ws))
    assert {(f["path"], f["type"]) for f in top} == {("a.txt", "file"), ("sub", "dir")}
    a = next(f for f in top if f["path"] == "a.txt")
    assert a["size"] == 6 and a["hash"] == b3("alpha\n")
    sub = {(f["path"], f["type"], f["size"]) for f in
           jout(dsv("files", "list", f"mydata:{v1}", "--path", "sub", "--json", cwd=ws))}
    assert sub == {("sub/b.bin", "file", 1024), ("sub/deep", "dir", 8)}
    rec = jout(dsv("files", "list", f"mydata:{v1}", "--path", "sub", "-r", "--json", cwd=ws))
    assert {f["path"]: f["hash"] for f in rec} == {"sub/b.bin": b3(BASE["sub/b.bin"]),
                                                   "sub/deep/c.csv": b3(BASE["sub/deep/c.csv"])}
    one = jout(dsv("files", "list", f"mydata:{v1}", "--path", "sub/deep/c.csv", "--json",
                   cwd=ws))
    assert [f["path"] for f in one] == ["sub/deep/c.csv"]
    human = ok(dsv("files", "list", f"mydata:{v1}", cwd=ws)).out
    assert "a.txt" in human and "sub/" in human and b3("alpha\n")[:16] in human
    fails(dsv("files", "list", f"mydata:{v1}", "--path", "nope", cwd=ws), "nope")

    out = tmp_path / "out"
    r = jout(dsv("files", "get", f"mydata:{v1}", "--target-path", out, "--json", cwd=ws))
    assert r["files"] == 3
    assert read_tree(out) == read_tree(ws)
    part = tmp_path / "part"
    ok(dsv("files", "get", f"mydata:{v1}", "sub/deep", "a.txt", "--target-path", part, cwd=ws))
    assert read_tree(part) == {"a.txt": b"alpha\n", "sub/deep/c.csv": b"x,y\n1,2\n"}
    fails(dsv("files", "get", f"mydata:{v1}", "missing.txt", "--target-path", tmp_path / "m",
              cwd=ws), "missing.txt")
    fails(dsv("files", "get", f"mydata:{v1}", "--target-path", ws / ".dsv" / "x", cwd=ws))
    fails(dsv("files", "get", f"mydata:{v1}", cwd=ws), code=2)


def test_files_put_refuses_missing_source_and_bad_target(committed, dsv, tmp_path: Path) -> None:
    ws, _ = committed
    draft = vid_of(dsv("versions", "create", "mydata", cwd=ws))
    before = jout(dsv("files", "list", f"mydata:{draft}", "-r", "--json", cwd=ws))
    fails(dsv("files", "put", f"mydata:{draft}", tmp_path / "missing", cwd=ws), "missing")
    src = tmp_path / "s.txt"
    src.write_text("s")
    fails(dsv("files", "put", f"mydata:{draft}", src, "--target-path", "../escape", cwd=ws))
    fails(dsv("files", "put", f"mydata:{draft}", src, "--target-path", "/abs", cwd=ws))
    assert jout(dsv("files", "list", f"mydata:{draft}", "-r", "--json", cwd=ws)) == before


# ---- gc -----------------------------------------------------------------------------------

def test_gc_removes_objects_of_deleted_draft_and_keeps_the_rest(committed, dsv,
                                                                tmp_path: Path) -> None:
    ws, v1 = committed
    (ws / "a.txt").write_text("v2\n")
    v2 = vid_of(dsv("commit", "-m", "second", cwd=ws))
    unique = random.Random(11).randbytes(4096)
    unique_big = big_bytes(seed=12)
    kept = random.Random(13).randbytes(2048)
    write_tree(tmp_path / "src", {"unique.bin": unique, "unique_big.bin": unique_big,
                                  "kept.bin": kept})
    doomed = vid_of(dsv("versions", "create", "mydata", cwd=ws))
    ok(dsv("files", "put", f"mydata:{doomed}", tmp_path / "src" / "unique.bin",
           tmp_path / "src" / "unique_big.bin", cwd=ws))
    survivor = vid_of(dsv("versions", "create", "mydata", cwd=ws))
    ok(dsv("files", "put", f"mydata:{survivor}", tmp_path / "src" / "kept.bin", cwd=ws))
    store = dsv_api.open(ws)
    try:
        assert store.objects.has(b3(unique)) and store.objects.has(b3(unique_big))
    finally:
        store.close()
    states = {v: version_state(dsv, ws, f"mydata:{v}", tmp_path / f"before-{v}")
              for v in (v1, v2, survivor)}

    ok(dsv("versions", "delete", f"mydata:{doomed}", cwd=ws))
    dry = jout(dsv("gc", "--dry-run", "--json", cwd=ws))
    assert dry["dry_run"] is True and dry["removed_objects"] >= 2
    size_before = dsv_size(ws)
    report = jout(dsv("gc", "--json", cwd=ws))
    assert report["removed_objects"] >= 2 and report["freed_bytes"] >= len(unique_big)
    assert dsv_size(ws) < size_before - len(unique_big)
    store = dsv_api.open(ws)
    try:
        assert not store.objects.has(b3(unique))
        assert not store.objects.has(b3(unique_big))
        assert store.objects.has(b3(kept))
    finally:
        store.close()
    for pack in (ws / ".dsv" / "objects" / "packs").glob("*.pack"):
        assert unique not in pack.read_bytes()
    ok(dsv("verify", cwd=ws))
    for v, state in states.items():
        assert version_state(dsv, ws, f"mydata:{v}", tmp_path / f"after-{v}") == state
    # gc of a clean store removes nothing
    again = jout(dsv("gc", "--json", cwd=ws))
    assert again["removed_objects"] == 0
    assert "freed" in ok(dsv("gc", cwd=ws)).out
    ok(dsv("verify", cwd=ws))


# ---- verify and corruption ----------------------------------------------------------------

def test_verify_good_store(committed, dsv) -> None:
    ws, _ = committed
    r = ok(dsv("verify", cwd=ws))
    assert "ok" in r.out
    rep = jout(dsv("verify", "--json", cwd=ws))
    assert rep["ok"] is True and rep["problems"] == [] and rep["versions_checked"] == 1
    assert rep["objects_checked"] >= 1


def test_verify_detects_flipped_byte_in_pack_and_checkout_refuses(ws: Path, dsv,
                                                                   tmp_path: Path) -> None:
    content = random.Random(5).randbytes(3000)
    (ws / "victim.bin").write_bytes(content)
    v1 = vid_of(dsv("commit", "-m", "v", cwd=ws))
    oid = b3(content)
    store = dsv_api.open(ws)
    try:
        pack_id, offset, length = store.index.locate(oid)
    finally:
        store.close()
    flip_byte(ws / ".dsv" / "objects" / "packs" / f"{pack_id}.pack", offset + length // 2)

    r = dsv("verify", cwd=ws)
    assert r.code == 1 and "Traceback" not in r.err
    assert oid[:12] in r.out and "corrupt" in r.out
    rep = json.loads(dsv("verify", "--json", cwd=ws).out)
    assert rep["ok"] is False and any(oid[:12] in p for p in rep["problems"])

    out = tmp_path / "out"
    fails(dsv("checkout", f"mydata:{v1}", "--to", out, cwd=ws), "corrupt")
    target = out / "victim.bin"
    assert not target.exists() or target.read_bytes() == content
    fails(dsv("files", "get", f"mydata:{v1}", "victim.bin", "--target-path", tmp_path / "g",
              cwd=ws), "corrupt")
    g = tmp_path / "g" / "victim.bin"
    assert not g.exists() or g.read_bytes() == content
    # the working directory copy is not replaced by bad bytes either
    (ws / "victim.bin").unlink()
    fails(dsv("checkout", "mydata:latest", cwd=ws), "corrupt")
    assert not (ws / "victim.bin").exists() or (ws / "victim.bin").read_bytes() == content


def test_verify_detects_damaged_pack_table(committed, dsv) -> None:
    ws, _ = committed
    (pack,) = list((ws / ".dsv" / "objects" / "packs").glob("*.pack"))
    flip_byte(pack, pack.stat().st_size - 30)  # inside the entry table / trailer
    r = dsv("verify", cwd=ws)
    assert r.code == 1 and "Traceback" not in r.err
    assert pack.stem[:12] in r.out


def test_verify_detects_flipped_byte_in_loose_object(ws: Path, dsv, tmp_path: Path) -> None:
    big = big_bytes(seed=21)
    (ws / "big.bin").write_bytes(big)
    v1 = vid_of(dsv("commit", "-m", "big", cwd=ws))
    oid = b3(big)
    loose = ws / ".dsv" / "objects" / "loose" / oid[:2] / oid
    assert loose.is_file()
    flip_byte(loose, 12345)

    r = dsv("verify", cwd=ws)
    assert r.code == 1 and "Traceback" not in r.err
    assert oid[:12] in r.out and "corrupt" in r.out

    # While the working directory still holds the file unchanged, a checkout elsewhere
    # copies that verified twin: the right bytes, although the object is damaged.
    twin = tmp_path / "out-twin"
    assert dsv("checkout", f"mydata:{v1}", "--to", twin, cwd=ws).code == 0
    assert (twin / "big.bin").read_bytes() == big
    assert dsv("verify", cwd=ws).code == 1  # the damage is still reported
    (ws / "big.bin").write_bytes(b"edited")  # no twin any more: only the damaged object
    for mode in ("auto", "copy", "hardlink", "symlink"):
        out = tmp_path / f"out-{mode}"
        fails(dsv("checkout", f"mydata:{v1}", "--to", out, "--link", mode, cwd=ws), "corrupt")
        target = out / "big.bin"
        assert not target.exists() or target.read_bytes() == big, mode
    (ws / "big.bin").unlink()
    fails(dsv("checkout", f"mydata:{v1}", cwd=ws), "corrupt")
    assert not (ws / "big.bin").exists() or (ws / "big.bin").read_bytes() == big


# ---- usage errors, --json everywhere --------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["no-such-command"],
    ["status", "--no-such-option"],
    ["commit"],
    ["show"],
    ["diff", "--no-such-option"],   # (`dsv diff` alone compares the directory with its head)
    ["checkout"],
    ["tag", "mydata:latest"],
    ["files", "get", "mydata:latest"],
    ["files", "put", "mydata:latest"],
    ["versions", "create"],
    ["versions", "update", "mydata:latest"],
    ["datasets", "details"],
    ["log", "-n", "notanumber"],
])
def test_usage_errors_exit_2(committed, dsv, args: list[str]) -> None:
    ws, _ = committed
    r = dsv(*args, cwd=ws)
    assert r.code == 2, (args, r)
    assert "Traceback" not in r.err


def test_every_data_command_speaks_json(tmp_path: Path, dsv) -> None:
    data = tmp_path / "mydata"
    write_tree(data, BASE)
    src = tmp_path / "src.txt"
    src.write_text("src")
    bad: list[str] = []

    def j(*args):
        r = dsv(*args, "--json", cwd=data)
        try:
            assert r.code == 0 and "Traceback" not in r.err
            return json.loads(r.out)
        except (AssertionError, ValueError):
            bad.append(f"{' '.join(map(str, args))}: exit {r.code}, out {r.out[:200]!r}, "
                       f"err {r.err[:200]!r}")
            return None

    j("init")
    j("status")
    v = j("commit", "-m", "one")
    ref = v["ref"] if v else "mydata:latest"
    (data / "a.txt").write_text("2")
    j("commit", "-m", "two")
    j("log")
    j("show", ref)
    j("diff", ref)
    j("diff", ref, "mydata:latest")
    j("tag", ref, "v1")
    j("tags")
    j("checkout", "mydata:v1", "--to", tmp_path / "co")
    j("datasets", "list")
    j("datasets", "details", "mydata")
    j("datasets", "create", "other")
    j("datasets", "update", "other", "--description", "d")
    d = j("versions", "create", "mydata", "-m", "draft")
    draft = d["ref"] if d else "mydata:nodraft"
    j("files", "put", draft, src)
    j("files", "delete", draft, "src.txt")
    j("versions", "update", draft, "-m", "draft 2")
    j("versions", "list", "mydata")
    j("versions", "details", draft)
    j("versions", "commit", draft)
    d2 = j("versions", "create", "mydata")
    j("versions", "delete", d2["ref"] if d2 else "mydata:nodraft")
    j("versions", "create", "other", "--source-path", tmp_path / "co", "-m", "x")
    j("files", "list", ref)
    j("files", "get", ref, "--target-path", tmp_path / "get")
    j("tag", "-d", "mydata:v1")
    j("gc")
    j("verify")
    j("datasets", "delete", "other", "--yes")
    assert bad == []


# ---- history: no committed version leaves latest's history without --force -----------------

def _parents(dsv, ws: Path, vid: str) -> list[str]:
    return jout(dsv("show", vid, "--json", cwd=ws))["parents"]


def test_a_commit_behind_latest_is_refused_and_status_says_so(ws: Path, dsv) -> None:
    """The trial: a draft committed beside the working directory moved latest on; a commit
    from the directory (head v1) would have parent v1 and drop the draft's version."""
    v1 = vid_of(dsv("commit", "-m", "one", cwd=ws))
    draft = vid_of(dsv("versions", "create", "mydata", "-m", "side", cwd=ws))
    write_tree(ws.parent / "side", {"side.txt": "side\n"})
    ok(dsv("files", "put", f"mydata:{draft}", ws.parent / "side" / "side.txt", cwd=ws))
    ok(dsv("versions", "commit", f"mydata:{draft}", cwd=ws))
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert (st["head"], st["latest"], st["behind"], st["diverged"], st["clean"]) == \
        (v1, draft, 1, False, True)
    human = ok(dsv("status", cwd=ws)).out
    assert f"mydata ({v1}; latest {draft} has 1 version this directory lacks): clean" in human
    assert "`dsv checkout mydata:latest` brings it up to date" in human

    (ws / "a.txt").write_text("edited\n")
    r = fails(dsv("commit", "-m", "two", cwd=ws), f"is at {v1}, 1 version behind latest {draft}",
              f"would leave {draft} out of latest's history", "--force")
    assert "dsv checkout mydata:latest" in r.err
    assert [v["id"] for v in jout(dsv("log", "--json", cwd=ws))] == [draft, v1]
    assert jout(dsv("show", "mydata:latest", "--json", cwd=ws))["id"] == draft

    forced = vid_of(dsv("commit", "-m", "two", "--force", cwd=ws))
    assert _parents(dsv, ws, forced) == [v1]
    assert jout(dsv("show", "mydata:latest", "--json", cwd=ws))["id"] == forced
    assert jout(dsv("show", draft, "--json", cwd=ws))["id"] == draft   # still in the store
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert (st["head"], st["behind"], st["diverged"]) == (forced, 0, False)


def test_after_checking_out_an_older_version_commit_waits_for_latest(ws: Path, dsv) -> None:
    v1 = vid_of(dsv("commit", "-m", "one", cwd=ws))
    (ws / "a.txt").write_text("two\n")
    v2 = vid_of(dsv("commit", "-m", "two", cwd=ws))
    (ws / "a.txt").write_text("three\n")
    v3 = vid_of(dsv("commit", "-m", "three", cwd=ws))
    ok(dsv("checkout", f"mydata:{v1}", cwd=ws))
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert (st["head"], st["behind"], st["diverged"]) == (v1, 2, False)
    (ws / "new.txt").write_text("new\n")
    fails(dsv("commit", "-m", "from v1", cwd=ws), f"is at {v1}, 2 versions behind latest {v3}")
    assert [v["id"] for v in jout(dsv("log", "--json", cwd=ws))] == [v3, v2, v1]
    # the way forward the message gives: bring the directory to latest, then commit
    (ws / "new.txt").unlink()
    ok(dsv("checkout", "mydata:latest", cwd=ws))
    (ws / "new.txt").write_text("new\n")
    v4 = vid_of(dsv("commit", "-m", "on top", cwd=ws))
    assert _parents(dsv, ws, v4) == [v3]
    # a directory at a version off latest's line says so
    ok(dsv("checkout", f"mydata:{v1}", cwd=ws))
    (ws / "b.txt").write_text("b\n")
    v5 = vid_of(dsv("commit", "-m", "side line", "--force", cwd=ws))
    ok(dsv("checkout", f"mydata:{v4}", cwd=ws))
    assert jout(dsv("status", "--json", cwd=ws))[0]["behind"] == 1   # v5, on another line
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert st["diverged"] is True and st["latest"] == v5
    fails(dsv("commit", "-m", "x", "--allow-empty", cwd=ws),
          f"is at {v4}, which latest {v5} does not descend from")


def test_a_draft_started_before_latest_moved_is_not_committed_over_it(ws: Path, dsv) -> None:
    vid_of(dsv("commit", "-m", "one", cwd=ws))
    draft = vid_of(dsv("versions", "create", "mydata", "-m", "slow draft", cwd=ws))
    (ws / "a.txt").write_text("two\n")
    v2 = vid_of(dsv("commit", "-m", "two", cwd=ws))
    fails(dsv("versions", "commit", f"mydata:{draft}", cwd=ws),
          f"moving mydata:latest from {v2} to {draft} would leave {v2} out", "--force")
    assert jout(dsv("show", f"mydata:{draft}", "--json", cwd=ws))["state"] == "draft"
    assert jout(dsv("show", "mydata:latest", "--json", cwd=ws))["id"] == v2
    ok(dsv("versions", "commit", f"mydata:{draft}", "--force", cwd=ws))
    assert jout(dsv("show", "mydata:latest", "--json", cwd=ws))["id"] == draft


def test_a_working_directory_never_checked_out_does_not_commit_over_latest(tmp_path: Path,
                                                                         dsv) -> None:
    proj = tmp_path / "proj"
    write_tree(proj / "src", {"x": "x"})
    ok(dsv("init", "--bare", cwd=proj))
    ok(dsv("datasets", "create", "raw", "--path", "raw", cwd=proj))
    v1 = vid_of(dsv("versions", "create", "raw", "--source-path", proj / "src", "-m", "one",
                    cwd=proj))
    (st,) = jout(dsv("status", "-d", "raw", "--json", cwd=proj))
    assert (st["head"], st["latest"]) == (None, v1)
    (proj / "raw" / "y").write_text("y")
    fails(dsv("commit", "-m", "two", "-d", "raw", cwd=proj), "is not checked out",
          f"would leave {v1} out of latest's history", "dsv checkout raw:latest")
    (proj / "raw" / "y").rename(proj / "y.aside")        # the way forward: copy aside,
    ok(dsv("checkout", "raw:latest", cwd=proj))          # bring the directory to latest,
    (proj / "y.aside").rename(proj / "raw" / "y")        # put the change back, commit
    assert read_tree(proj / "raw") == {"x": b"x", "y": b"y"}
    v2 = vid_of(dsv("commit", "-m", "two", "-d", "raw", cwd=proj))
    assert _parents(dsv, proj, f"raw:{v2}") == [v1]


def test_diff_with_no_ref_stat_and_paths(committed, dsv) -> None:
    """As git: no REF compares the working directory with its head; PATHs (relative to the
    current directory inside the dataset) limit it; --stat gives sizes before and after."""
    ws, vid = committed
    (ws / "a.txt").write_text("alpha, longer\n")
    (ws / "sub" / "deep" / "c.csv").unlink()
    (ws / "sub" / "new.txt").write_text("new\n")
    r = ok(dsv("diff", cwd=ws))
    assert r.out.splitlines() == ["M a.txt", "D sub/deep/c.csv", "A sub/new.txt",
                                  "1 added, 1 modified, 1 deleted"]
    assert ok(dsv("diff", cwd=ws)).out == ok(dsv("diff", f"mydata:{vid}", cwd=ws)).out
    stat = ok(dsv("diff", "--stat", cwd=ws)).out.splitlines()
    assert stat[0] == "M a.txt  6 B -> 14 B (+8 B)"
    assert stat[1] == "D sub/deep/c.csv  8 B -> - (-8 B)"
    assert stat[-1] == "1 added, 1 modified, 1 deleted; +4 B in all"
    # paths: from inside sub/, `deep` means sub/deep; a dataset-relative path from the root
    assert ok(dsv("diff", "deep", cwd=ws / "sub")).out.splitlines() == \
        ["D sub/deep/c.csv", "0 added, 0 modified, 1 deleted"]
    assert ok(dsv("diff", "latest", "a.txt", cwd=ws)).out.splitlines() == \
        ["M a.txt", "0 added, 1 modified, 0 deleted"]
    data = jout(dsv("diff", "--stat", "--json", "sub", cwd=ws))
    assert data["files"] == [{"path": "sub/deep/c.csv", "before": 8, "after": None},
                             {"path": "sub/new.txt", "before": None, "after": 4}]
    # two versions, limited to a path
    vid2 = vid_of(dsv("commit", "-m", "two", cwd=ws))
    assert jout(dsv("diff", f"mydata:{vid}", f"mydata:{vid2}", "sub", "--json",
                    cwd=ws))["added"] == ["sub/new.txt"]


def test_changing_a_committed_version_hints_with_the_real_dataset_name(committed, dsv) -> None:
    ws, vid = committed
    for args in (["versions", "update", f"mydata:{vid}", "-m", "again"],
                 ["files", "delete", f"mydata:{vid}", "a.txt"]):
        r = fails(dsv(*args, cwd=ws), "is committed and cannot change")
        assert f"`dsv versions create mydata --from {vid}`" in r.err and "DATASET" not in r.err


def test_the_first_status_after_a_clone_or_checkout_reads_no_file(tmp_path: Path, dsv,
                                                                   monkeypatch) -> None:
    """Files a checkout writes are stat'ed again once their timestamp tick is past, so the
    stat cache vouches for them: a fresh clone of 200,000 files took 49 s for its first
    status (every file hashed again as racily clean), 2 s now."""
    ws = tmp_path / "ws"
    write_tree(ws, {f"d{i % 3}/f{i}.txt": f"file {i}\n" for i in range(40)})
    ok(dsv("init", "--name", "raw", ws, cwd=tmp_path))
    ok(dsv("commit", "-m", "one", cwd=ws))
    ok(dsv("remote", "add", "origin", tmp_path / "remote", cwd=ws))
    ok(dsv("push", cwd=ws))
    clone = tmp_path / "clone"
    ok(dsv("clone", tmp_path / "remote", clone, cwd=tmp_path))
    (clone / "d0" / "f0.txt").unlink()
    ok(dsv("checkout", "raw:latest", cwd=clone))  # puts one file back: its row is fresh too
    opened = _files_opened_under(clone, monkeypatch)
    (st,) = jout(dsv("status", "--json", cwd=clone))
    assert st["clean"] is True
    assert opened == []


def test_a_checkout_into_an_empty_directory_places_the_version_in_chunks(
        tmp_path: Path, dsv, monkeypatch) -> None:
    """An empty target is filled as the trees are walked, a chunk at a time (no flat
    manifest of the version): with chunks of 3, every file, link and mode lands, the
    stat cache vouches for all of them, and the report counts them."""
    from dsv import checkout as checkouts
    monkeypatch.setattr(checkouts, "FRESH_CHUNK", 3)
    ws = tmp_path / "ws"
    files = {f"d{i % 3}/f{i}.txt": f"file {i}\n" for i in range(10)}
    write_tree(ws, files)
    (ws / "d0" / "run.sh").write_text("#!/bin/sh\n")
    (ws / "d0" / "run.sh").chmod(0o755)
    os.symlink("../d1/f1.txt", ws / "d0" / "to-f1")
    ok(dsv("init", "--name", "raw", ws, cwd=tmp_path))
    ok(dsv("commit", "-m", "one", cwd=ws))
    from dsv import tree
    flatten = tree.flatten

    def no_manifest(*args, **kwargs):
        raise AssertionError("a checkout into an empty directory built a flat manifest")

    monkeypatch.setattr(tree, "flatten", no_manifest)
    out = tmp_path / "out"
    report = jout(dsv("checkout", "raw:latest", "--to", out, "--json", cwd=ws))
    assert report["written"] == 12 and report["removed"] == 0
    assert read_tree(out) == read_tree(ws)
    assert os.readlink(out / "d0" / "to-f1") == "../d1/f1.txt"
    assert (out / "d0" / "run.sh").stat().st_mode & 0o111
    # The dataset's own directory emptied and checked out again: status is clean at
    # once, and a commit finds nothing to commit.
    for p in sorted(ws.rglob("*"), reverse=True):
        if ".dsv" not in p.relative_to(ws).parts[:1]:
            p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
    ok(dsv("checkout", "raw:latest", cwd=ws))
    monkeypatch.setattr(tree, "flatten", flatten)
    assert read_tree(ws) == read_tree(out)
    (st,) = jout(dsv("status", "--json", cwd=ws))
    assert st["clean"] is True


def test_the_cli_collects_cycles_rarely_and_switches_threads_often_and_the_library_leaves_both_alone(
        ) -> None:
    import subprocess
    import sys
    script = ("import gc, io, contextlib, json, sys\n"
              "seen = [[*gc.get_threshold(), sys.getswitchinterval()]]\n"
              "import dsv\n"
              "from dsv.cli import main\n"
              "seen.append([*gc.get_threshold(), sys.getswitchinterval()])\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n"
              "    main(['--version'])\n"
              "frozen = gc.get_freeze_count()\n"
              "made = [[n] for n in range(10_000)]\n"
              "import atexit\n"
              "atexit._run_exitfuncs()\n"
              "print(json.dumps([*seen, [*gc.get_threshold(), sys.getswitchinterval()],\n"
              "                  frozen, gc.get_freeze_count() - frozen]))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    python, library, cli, frozen, frozen_at_exit = json.loads(out)
    assert library == python   # (Python's own defaults, whatever this Python's are)
    assert python[3] == 0.005
    assert cli == [100_000, 20, 100, 0.0005] and frozen > 0
    # At exit, what the command made is frozen too: the last collections skip it.
    assert frozen_at_exit > 9_000
