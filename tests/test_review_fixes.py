"""Behaviours fixed after review: each one a way a user could lose or misread data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import dsv
from conftest import read_tree, write_tree
from dsv.errors import DsvError, InvalidInput


def _store(tmp_path: Path, files: dict[str, str]) -> tuple[dsv.Store, Path]:
    root = tmp_path / "data"
    write_tree(root, files)
    return dsv.init(root), root


def test_a_version_cannot_start_from_a_draft(tmp_path: Path) -> None:
    store, root = _store(tmp_path, {"a.txt": "1"})
    store.commit("one", cwd=root)
    draft = store.create_version("data", "wip")
    with pytest.raises(InvalidInput) as info:
        store.create_version("data", "child", from_ref=draft.id)
    assert "draft" in info.value.message
    assert [v.id for v in store.versions("data", "draft")] == [draft.id]


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


def test_debug_flag_is_accepted_after_the_command(tmp_path: Path, dsv) -> None:
    root = tmp_path / "data"
    write_tree(root, {"a.txt": "1"})
    assert dsv("init", cwd=root).code == 0
    with pytest.raises(DsvError):
        dsv("show", "nope:latest", "--debug", cwd=root)
    result = dsv("show", "nope:latest", cwd=root)
    assert result.code == 1 and result.err.startswith("error: no dataset named 'nope'")


def test_a_nested_store_and_its_files_are_left_out(tmp_path: Path) -> None:
    store, root = _store(tmp_path, {"a.txt": "outer"})
    inner = root / "inner"
    write_tree(inner, {"secret.bin": "inner data"})
    dsv.init(inner).close()
    v = store.commit("outer only", cwd=root)
    paths = {row.path for row in store.files(f"data:{v.id}", recursive=True)}
    assert paths == {"a.txt"}


def test_a_store_of_an_unknown_format_is_refused(tmp_path: Path, dsv) -> None:
    store, root = _store(tmp_path, {"a.txt": "1"})
    store.close()
    config = root / ".dsv" / "config.json"
    config.write_text(json.dumps({"format": 99, "hash": "blake3"}))
    result = dsv("status", cwd=root)
    assert result.code == 1
    assert "store format 99" in result.err and "Traceback" not in result.err


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
