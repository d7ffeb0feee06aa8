"""`dsv commit -m M PATH…` (issue 11): a commit of some paths looks only at them. The new
version is the head with those paths as the directory holds them now; everything else
stays as the head has it, even where the directory changed; `.dsvignore` files, nested
stores, links and the stat cache are treated as a whole commit treats them, so that a
commit of every changed path makes the very tree a whole commit makes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import dsv as dsv_api
from conftest import Result, read_tree, write_tree


def _ok(res: Result) -> Result:
    assert res.code == 0, res.err
    return res


def _files(dsv, ws: Path, ref: str = "data:latest") -> dict[str, str]:
    rows = json.loads(_ok(dsv("files", "list", ref, "--recursive", "--json", cwd=ws)).out)
    return {r["path"]: r["hash"] for r in rows}


def _tree(dsv, ws: Path, ref: str = "data:latest") -> str:
    return json.loads(_ok(dsv("versions", "details", ref, "--json", cwd=ws)).out)["tree"]


def _workspace(tmp_path: Path, dsv) -> Path:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a", "sub/b.txt": "b", "sub/c.txt": "c", "sub/deep/x.txt": "x",
                    "d/e.txt": "e", "big/f.bin": os.urandom(3000)})
    _ok(dsv("init", "--name", "data", cwd=ws))
    _ok(dsv("commit", "-m", "one", cwd=ws))
    return ws


def test_only_the_named_paths_change(tmp_path: Path, dsv) -> None:
    ws = _workspace(tmp_path, dsv)
    before = _files(dsv, ws)
    write_tree(ws, {"a.txt": "a2", "sub/b.txt": "b2", "sub/new.txt": "n"})
    (ws / "sub" / "c.txt").unlink()
    (ws / "d" / "e.txt").unlink()
    _ok(dsv("commit", "-m", "sub only", "sub", cwd=ws))
    after = _files(dsv, ws)
    assert after["a.txt"] == before["a.txt"] and after["d/e.txt"] == before["d/e.txt"]
    assert after["sub/b.txt"] != before["sub/b.txt"] and "sub/new.txt" in after
    assert "sub/c.txt" not in after and after["sub/deep/x.txt"] == before["sub/deep/x.txt"]
    status = json.loads(_ok(dsv("status", "--json", cwd=ws)).out)[0]
    assert status["modified"] == ["a.txt"] and status["deleted"] == ["d/e.txt"], status
    assert status["added"] == []
    # a path the directory no longer has, given relative to the current directory
    _ok(dsv("commit", "-m", "gone", "e.txt", cwd=ws / "d"))
    assert "d/e.txt" not in _files(dsv, ws)
    assert json.loads(_ok(dsv("versions", "details", "data:latest", "--json",
                              cwd=ws)).out)["files"] == len(_files(dsv, ws))


def test_committing_every_changed_path_makes_the_tree_a_whole_commit_makes(
        tmp_path: Path, dsv) -> None:
    ws = _workspace(tmp_path, dsv)
    write_tree(ws, {"a.txt": "a3", "sub/deep/x.txt": "x3", "new/one.txt": "1"})
    (ws / "big" / "f.bin").unlink()
    os.rmdir(ws / "big")
    os.symlink("sub/b.txt", ws / "link")
    _ok(dsv("commit", "-m", "paths", "a.txt", "sub/deep", "new", "big", "link", cwd=ws))
    res = dsv("commit", "-m", "whole", cwd=ws)
    assert res.code == 1 and "nothing to commit" in res.err, res.err
    assert json.loads(_ok(dsv("status", "--json", cwd=ws)).out)[0]["clean"]
    # the same files committed whole, in a second store, give the same tree id
    other = tmp_path / "other"
    os.makedirs(other)
    for rel, _oid in _files(dsv, ws).items():
        src = ws / rel
        os.makedirs((other / rel).parent, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), other / rel)
        else:
            (other / rel).write_bytes(src.read_bytes())
    _ok(dsv("init", "--name", "data", cwd=other))
    _ok(dsv("commit", "-m", "whole", cwd=other))
    assert _tree(dsv, other) == _tree(dsv, ws)


def test_ignored_paths_nested_stores_and_unknown_paths(tmp_path: Path, dsv) -> None:
    ws = _workspace(tmp_path, dsv)
    write_tree(ws, {".dsvignore": "*.tmp\n", "sub/junk.tmp": "j", "sub/keep.txt": "k",
                    "junk.tmp": "j"})
    res = dsv("commit", "-m", "ignored", "junk.tmp", cwd=ws)
    assert res.code == 1 and "matches no file" in res.err, res.err
    _ok(dsv("commit", "-m", "sub", "sub", cwd=ws))
    files = _files(dsv, ws)
    assert "sub/keep.txt" in files and "sub/junk.tmp" not in files
    # a directory holding another store is left out, as a whole commit leaves it out
    write_tree(ws, {"inner/f.txt": "f"})
    _ok(dsv("init", "--name", "inner", cwd=ws / "inner"))
    res = dsv("commit", "-m", "inner", "-d", "data", "inner/f.txt", cwd=ws)
    assert res.code == 1 and "matches no file" in res.err, res.err
    res = dsv("commit", "-m", "nothing", "nowhere.txt", cwd=ws)
    assert res.code == 1 and "nowhere.txt matches no file" in res.err, res.err
    res = dsv("commit", "-m", "outside", str(tmp_path), cwd=ws)
    assert res.code == 1 and "outside the dataset" in res.err, res.err


def test_a_link_committed_by_path_is_checked_through_the_versions_links(
        tmp_path: Path, dsv) -> None:
    ws = _workspace(tmp_path, dsv)
    os.symlink(".", ws / "sub" / "l")
    _ok(dsv("commit", "-m", "loop link", "sub/l", cwd=ws))
    os.symlink("sub/l/../..", ws / "s")   # escapes only through sub/l, not committed now
    res = dsv("commit", "-m", "escape", "s", cwd=ws)
    assert res.code == 1 and "outside the dataset" in res.err, res.err
    assert "s" not in _files(dsv, ws)


def test_the_first_commit_takes_the_whole_directory(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a"})
    _ok(dsv("init", "--name", "data", cwd=ws))
    res = dsv("commit", "-m", "first", "a.txt", cwd=ws)
    assert res.code == 1 and "whole directory" in res.err, res.err
    # the root itself is the whole directory; an empty path (an unset variable) is refused
    for empty in ("",):
        res = dsv("commit", "-m", "first", empty, cwd=ws)
        assert res.code == 1 and "empty path" in res.err, res.err
    _ok(dsv("commit", "-m", "first", ".", cwd=ws))
    assert list(_files(dsv, ws)) == ["a.txt"]


def test_links_outside_the_paths_are_checked_as_the_version_holds_them(
        tmp_path: Path, dsv) -> None:
    """The links a commit of some paths keeps from the head are checked through as the
    head holds them, not as the directory holds them now: a link there changed (or
    gone) since is not what the new version will place."""
    ws = _workspace(tmp_path, dsv)
    os.symlink("..", ws / "sub" / "l")          # sub/l -> the dataset's root
    _ok(dsv("commit", "-m", "up link", "sub/l", cwd=ws))
    os.unlink(ws / "sub" / "l")
    os.symlink(".", ws / "sub" / "l")           # now sub/l -> sub, not committed
    os.symlink("sub/l/..", ws / "s")            # through the committed sub/l: above root
    res = dsv("commit", "-m", "escape", "s", cwd=ws)
    assert res.code == 1 and "outside the dataset" in res.err, res.err
    assert "s" not in _files(dsv, ws)
    # a kept link the directory no longer has is read from the version, not the disk
    os.unlink(ws / "s")
    os.unlink(ws / "sub" / "l")
    os.symlink("a.txt", ws / "t")
    res = _ok(dsv("commit", "-m", "t", "t", cwd=ws))
    assert "bug in dsv" not in res.err
    files = _files(dsv, ws)
    assert "t" in files and "sub/l" in files


def test_a_commit_reads_back_the_trees_it_made_after_the_tree_cache_let_them_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trees a commit makes stay in its ingest, unpublished, until the commit is
    written; when the tree cache has dropped them (a commit that rewrites many
    directories: a million-file dataset with 2,000 files changed failed about one time in
    three), reading one back must still work. Here the cache holds one tree."""
    import dsv.core
    monkeypatch.setattr(dsv.core, "TREE_CACHE_BYTES", 0)
    ws = tmp_path / "ws"
    write_tree(ws, {f"d{i}/s{j}/f.txt": f"{i} {j}\n" for i in range(4) for j in range(3)})
    store = dsv_api.init(ws, name="raw")
    first = store.commit("one")
    write_tree(ws, {f"d{i}/s{j}/f.txt": f"{i} {j} changed\n" for i in range(4)
                    for j in range(3)})
    second = store.commit("two")
    assert second.tree != first.tree
    store.close()
    again = dsv_api.open(ws)
    assert again.verify().ok
    assert read_tree(ws) == {f"d{i}/s{j}/f.txt": f"{i} {j} changed\n".encode()
                             for i in range(4) for j in range(3)}
