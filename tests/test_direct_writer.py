"""fileio.DirectWriter: what it writes is what it was given, in order, whatever the pieces,
although full buffers are written by a background thread; a failed background write is
raised to the caller, and nothing of the writer outlives `close`."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from dsv import fileio

MiB = 1 << 20


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bytes_written_in_any_pieces_come_back_in_order(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(3 * fileio.STREAM_BUFFER + 12345)   # four buffers, the last short
    path = tmp_path / "f"
    writer = fileio.DirectWriter(str(path))
    at = 0
    while at < len(data):
        n = rng.choice([1, 511, 4096, 100_000, MiB, 9 * MiB])
        writer.write(data[at:at + n])
        at += n
    assert writer.finish() == len(data)
    assert path.read_bytes() == data


def test_copy_from_through_several_buffers(tmp_path: Path) -> None:
    data = random.Random(4).randbytes(2 * fileio.STREAM_BUFFER + 7)
    src = tmp_path / "src"
    src.write_bytes(data)
    seen = bytearray()
    writer = fileio.DirectWriter(str(tmp_path / "dst"))
    fd = os.open(src, os.O_RDONLY)
    try:
        assert writer.copy_from(fd, seen.extend) == len(data)
    finally:
        os.close(fd)
    writer.finish()
    assert (tmp_path / "dst").read_bytes() == data == bytes(seen)


def test_a_failed_background_write_is_raised(tmp_path: Path, monkeypatch) -> None:
    real = fileio._write_all
    calls = [0]

    def failing(fd: int, view: memoryview, direct: bool) -> bool:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, view, direct)

    monkeypatch.setattr(fileio, "_write_all", failing)
    writer = fileio.DirectWriter(str(tmp_path / "f"))
    with pytest.raises(OSError, match="No space left"):
        for _ in range(5):
            writer.write(bytes(fileio.STREAM_BUFFER))
        writer.finish()
    writer.close()
    assert writer.fd == -1
    assert calls[0] == 2   # nothing was written after the failure
