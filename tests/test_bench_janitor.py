"""The bench's janitor (bench/run.py): a repetition that no longer fits the disk is not
begun, after the trash is emptied to make room for it."""
from __future__ import annotations

import sys
from collections import namedtuple
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import run  # noqa: E402  (bench/run.py, found through the path above)

_Usage = namedtuple("_Usage", "total used free")


def _disk(monkeypatch: pytest.MonkeyPatch, trash: Path, free: int) -> None:
    """A disk with `free` bytes free while the trash is empty (what it holds is not)."""
    def usage(_path: object) -> _Usage:
        held = sum(p.stat().st_size for p in trash.rglob("*") if p.is_file()) \
            if trash.exists() else 0
        return _Usage(1 << 40, 0, free - held)
    monkeypatch.setattr(run.shutil, "disk_usage", usage)


def _trash_holding(tmp_path: Path, nbytes: int) -> run.Janitor:
    janitor = run.Janitor(tmp_path / "trash", min_free=100)
    tree = tmp_path / "rep0"
    tree.mkdir()
    (tree / "data").write_bytes(b"x" * nbytes)
    janitor.discard(tree)
    return janitor


def test_a_repetition_that_fits_leaves_the_trash_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _disk(monkeypatch, tmp_path / "trash", free=1500)
    janitor = _trash_holding(tmp_path, 500)
    assert janitor.make_room(900) is True         # 1000 free, 100 kept
    assert (tmp_path / "trash" / "1-rep0" / "data").stat().st_size == 500


def test_the_trash_is_emptied_when_that_makes_the_next_repetition_fit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _disk(monkeypatch, tmp_path / "trash", free=1500)
    janitor = _trash_holding(tmp_path, 500)
    assert janitor.make_room(1300) is True        # 1500 free once emptied, 100 kept
    assert not (tmp_path / "trash").exists()
    assert "emptying the trash between repetitions" in capsys.readouterr().err


def test_a_repetition_that_cannot_fit_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _disk(monkeypatch, tmp_path / "trash", free=1500)
    janitor = _trash_holding(tmp_path, 500)
    assert janitor.make_room(1401) is False
    assert janitor.free() == 1500                 # (emptied on the way: all it could do)


def test_what_a_repetition_took_counts_a_trash_emptied_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    used = [0]   # bytes the repetition's own files take (outside the trash)

    def usage(_path: object) -> _Usage:
        trash = tmp_path / "trash"
        held = sum(p.stat().st_size for p in trash.rglob("*") if p.is_file()) \
            if trash.exists() else 0
        return _Usage(1 << 40, 0, 5000 - held - used[0])
    monkeypatch.setattr(run.shutil, "disk_usage", usage)
    janitor = _trash_holding(tmp_path, 500)       # (an earlier repetition's)
    mark = janitor.mark()
    used[0] = 1200
    janitor.empty()                               # (mid-run: 500 bytes come back)
    assert janitor.free() == 5000 - 1200
    assert janitor.used_since(mark) == 1200
