"""fileio.remove_tree (on fileio.walk_dirs): removes a directory of any depth (a loop with
a bounded number of descriptors, not a recursion), never through a link, and stops when a
directory it is in is moved elsewhere."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from conftest import deep_chain
from dsv import fileio


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory with a file, beside the trees removed: links point at it."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "keep.txt").write_bytes(b"keep me")
    return out


@pytest.mark.parametrize("window", [fileio._OPEN_DIRS, 3])
def test_a_tree_deeper_than_recursion_allows_goes_whole_and_its_links_are_not_followed(
        tmp_path: Path, outside: Path, monkeypatch, window: int) -> None:
    """3,000 levels (shutil.rmtree fails past ~1,000) with files on the way, a link to a
    directory and one to a file outside, and a FIFO: all of it goes, nothing outside does.
    With a window of 3 descriptors, every step back up reopens a directory from the top
    and checks it is the one it left."""
    monkeypatch.setattr(fileio, "_OPEN_DIRS", window)
    top = tmp_path / "top"
    top.mkdir()
    deep_chain(top, 3000, every=500)
    (top / "to-dir").symlink_to(outside)
    (top / "to-file").symlink_to(outside / "keep.txt")
    os.mkfifo(top / "fifo")
    (top / "wide").mkdir()
    for i in range(50):
        (top / "wide" / f"w{i}").write_bytes(b"w")
    opened = len(os.listdir("/proc/self/fd"))
    fileio.remove_tree(top)
    assert not os.path.lexists(top)
    assert len(os.listdir("/proc/self/fd")) == opened   # (every descriptor closed)
    assert sorted(os.listdir(outside)) == ["keep.txt"]
    assert (outside / "keep.txt").read_bytes() == b"keep me"


def test_a_link_or_file_at_the_top_is_refused_and_a_missing_one_is_nothing(
        tmp_path: Path, outside: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(outside)
    with pytest.raises(OSError) as caught:
        fileio.remove_tree(link)
    assert caught.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert os.readlink(link) == str(outside) and (outside / "keep.txt").exists()
    with pytest.raises(NotADirectoryError):
        fileio.remove_tree(outside / "keep.txt")
    assert (outside / "keep.txt").read_bytes() == b"keep me"
    fileio.remove_tree(tmp_path / "nothing")   # (gone already: nothing to do)
    parent = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (tmp_path / "rel").mkdir()
        (tmp_path / "rel" / "x").write_bytes(b"x")
        fileio.remove_tree("rel", dir_fd=parent)
    finally:
        os.close(parent)
    assert not (tmp_path / "rel").exists()


def test_a_directory_moved_elsewhere_while_it_is_removed_stops_the_removal(
        tmp_path: Path, outside: Path, monkeypatch) -> None:
    """Someone moves the part being removed under another parent: what was moved is
    emptied (it was the tree's), but the step back up out of it reaches the new parent,
    not the directory it came from: the removal stops there with EBUSY (TreeChanged), and
    the new parent and everything else in it stay."""
    monkeypatch.setattr(fileio, "_OPEN_DIRS", 3)
    top = tmp_path / "top"
    top.mkdir()
    deep_chain(top, 20)
    real_listdir = os.listdir
    moved = []

    def listdir(fd: int) -> list[str]:
        names = real_listdir(fd)
        if not moved and os.readlink(f"/proc/self/fd/{fd}").endswith("/d" * 12):
            os.rename(top / "/".join(["d"] * 8), outside / "moved")
            moved.append(True)
        return names

    monkeypatch.setattr(fileio.os, "listdir", listdir)
    with pytest.raises(OSError) as caught:
        fileio.remove_tree(top)
    assert isinstance(caught.value, fileio.TreeChanged)
    assert caught.value.errno == errno.EBUSY and moved
    assert sorted(os.listdir(outside)) == ["keep.txt", "moved"]
    assert (outside / "keep.txt").read_bytes() == b"keep me"
    assert os.listdir(outside / "moved") == []   # (emptied: it was the tree's)
    assert (top / "/".join(["d"] * 7)).is_dir()   # (above where it stopped: left)
    subprocess.run(["rm", "-rf", top, outside], check=True)
