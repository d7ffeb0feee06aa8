"""fileio.DirectWriter: what it writes is what it was given, in order, whatever the pieces,
although full buffers are written by background threads, several at once; a failed
background write is raised to the caller, and nothing of the writer outlives `close`."""

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
    real = fileio._pwrite_all
    calls = [0]

    def failing(fd: int, view: memoryview, offset: int, direct: bool) -> bool:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, view, offset, direct)

    monkeypatch.setattr(fileio, "_pwrite_all", failing)
    writer = fileio.DirectWriter(str(tmp_path / "f"))
    written = 0
    with pytest.raises(OSError, match="No space left"):
        for _ in range(2 * fileio.WRITE_DEPTH + 4):
            writer.write(bytes(fileio.STREAM_BUFFER))
            written += 1
        writer.finish()
    writer.close()
    assert writer.fd == -1
    # Raised by the first call that waited for the failed write: no more than the
    # writes already under way when it failed were made after it.
    assert written <= fileio.WRITE_DEPTH + 1
    assert calls[0] <= fileio.WRITE_DEPTH + 1


def test_buffers_are_written_side_by_side_and_observed_in_order(tmp_path: Path,
                                                                monkeypatch) -> None:
    """Up to WRITE_DEPTH buffers are being written at once (the first write here waits
    until the second has begun: one write at a time would never finish), and `observe`
    still sees them in order although the first one's hashing is the slowest."""
    import threading
    import time

    import blake3
    assert fileio.WRITE_DEPTH >= 2
    real = fileio._pwrite_all
    second_begun = threading.Event()
    offsets: list[int] = []

    def writes(fd: int, view: memoryview, offset: int, direct: bool) -> bool:
        offsets.append(offset)
        if offset == 0:
            assert second_begun.wait(10), "the second buffer was not written meanwhile"
        elif offset == MiB:
            second_begun.set()
        return real(fd, view, offset, direct)

    monkeypatch.setattr(fileio, "_pwrite_all", writes)
    hasher = blake3.blake3()

    def slow_first(view: memoryview) -> None:
        if not hasher_fed[0]:
            time.sleep(0.2)
        hasher_fed[0] += 1
        hasher.update(view)

    hasher_fed = [0]
    data = random.Random(8).randbytes(4 * MiB + 3)
    writer = fileio.DirectWriter(str(tmp_path / "f"), 0o644, MiB, slow_first)
    writer.write(data)
    assert writer.finish() == len(data)
    assert (tmp_path / "f").read_bytes() == data
    assert hasher.hexdigest() == blake3.blake3(data).hexdigest()
    assert sorted(offsets) == [0, MiB, 2 * MiB, 3 * MiB, 4 * MiB]


def test_every_buffer_a_writer_took_is_given_back(tmp_path: Path, monkeypatch) -> None:
    """Buffers go back to the pool when a writer finishes or is closed, the ones it
    wrote last included: a buffer made anew costs a page fault per 4 KiB."""
    real = fileio.take_buffer
    taken: list[object] = []

    def take(size: int):
        buf = real(size)
        taken.append(buf)
        return buf

    monkeypatch.setattr(fileio, "take_buffer", take)
    monkeypatch.setattr(fileio, "_BUFFERS", [])
    for end in ("finish", "close"):
        taken.clear()
        fileio._BUFFERS.clear()
        writer = fileio.DirectWriter(str(tmp_path / end), 0o644, MiB)
        writer.write(bytes(5 * MiB + 10))
        getattr(writer, end)()
        made = {id(buf) for buf in taken}   # (a buffer given back may be taken again)
        assert 2 <= len(made) <= fileio.WRITE_DEPTH + 1
        assert sorted(map(id, fileio._BUFFERS)) == sorted(made), end


def test_observe_sees_every_byte_written_in_order(tmp_path: Path, monkeypatch) -> None:
    """A writer given `observe` (a hasher) shows it each full buffer, from its writing
    thread, and the tail at `finish`: exactly the file's bytes. Not durable: no fsync."""
    import blake3
    data = random.Random(5).randbytes(2 * MiB + 4097)
    hasher = blake3.blake3()
    syncs: list[int] = []
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: syncs.append(fd))
    writer = fileio.DirectWriter(str(tmp_path / "f"), 0o600, MiB, hasher.update)
    for at in range(0, len(data), 300_001):
        writer.write(data[at:at + 300_001])
    assert writer.finish(durable=False) == len(data)
    assert (tmp_path / "f").read_bytes() == data
    assert hasher.hexdigest() == blake3.blake3(data).hexdigest()
    assert syncs == []
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("where", ["tmp", "shm"])
def test_read_ranges_gives_exactly_the_ranges(tmp_path: Path, where: str) -> None:
    """Unaligned ranges, ranges longer than the buffer, neighbouring ones: the bytes of
    each, in order, read with O_DIRECT (tmp_path) or without it (tmpfs refuses it)."""
    base = Path("/dev/shm") if where == "shm" and Path("/dev/shm").is_dir() else tmp_path
    path = base / f"ranges-{os.getpid()}-{where}"
    data = random.Random(6).randbytes(3 * MiB + 123)
    path.write_bytes(data)
    try:
        for ranges in ([(0, 10)], [(5, 4096)], [(4095, 2)], [(len(data) - 7, 7)],
                       [(100, 2 * MiB + 7), (2 * MiB + 107, 5), (3 * MiB, 123)],
                       [(0, len(data))]):
            for buffer in (64 << 10, MiB):
                got = b"".join(bytes(p) for p in fileio.read_ranges(path, ranges, buffer))
                assert got == b"".join(data[o:o + n] for o, n in ranges), (ranges, buffer)
    finally:
        path.unlink()


def test_read_ranges_refuses_a_short_file_and_a_link(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(OSError) as short:
        list(fileio.read_ranges(path, [(4990, 20)]))
    assert short.value.errno == errno.EIO
    with pytest.raises(OSError):
        list(fileio.read_ranges(path, [(6000, 1)]))
    (tmp_path / "link").symlink_to(path)
    with pytest.raises(OSError) as link:
        list(fileio.read_ranges(tmp_path / "link", [(0, 1)]))
    assert link.value.errno == errno.ELOOP


def test_a_filesystem_that_refuses_o_direct_gets_buffered_writes(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """As ramfs does (and tmpfs before Linux 6.6): an open asking for O_DIRECT creates
    the file and then fails with EINVAL, and so does turning O_DIRECT on. The writer
    and read_ranges go on buffered: every byte lands, nothing else is left."""
    if not hasattr(os, "O_DIRECT"):
        pytest.fail("this test needs Linux (O_DIRECT)")
    real_open, real_fcntl = os.open, fileio.fcntl.fcntl

    def ramfs_open(path, flags, mode=0o777, *, dir_fd=None):
        fd = real_open(path, flags & ~os.O_DIRECT, mode, dir_fd=dir_fd)
        if flags & os.O_DIRECT:
            os.close(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return fd

    def ramfs_fcntl(fd, cmd, arg=0):
        if cmd == fileio.fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(fileio.os, "open", ramfs_open)
    monkeypatch.setattr(fileio.fcntl, "fcntl", ramfs_fcntl)
    data = random.Random(7).randbytes(MiB + 4097)
    writer = fileio.DirectWriter(str(tmp_path / "f"), 0o644, 64 << 10)
    assert writer.direct is False
    writer.write(data)
    assert writer.finish() == len(data)
    assert (tmp_path / "f").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    got = b"".join(bytes(p) for p in fileio.read_ranges(tmp_path / "f", [(3, MiB)], 64 << 10))
    assert got == data[3:3 + MiB]


def test_a_filesystem_that_takes_o_direct_and_then_fails_is_closed_cleanly(
        tmp_path: Path, monkeypatch) -> None:
    """As overlayfs over a filesystem without O_DIRECT does: turning it on succeeds, and
    then every fsync and close of the file fails with EINVAL while it is on. A writer
    that never flushed a buffer still finishes, and one abandoned still closes."""
    if not hasattr(os, "O_DIRECT"):
        pytest.fail("this test needs Linux (O_DIRECT)")
    real_fsync, real_close = os.fsync, os.close

    def direct(fd: int) -> bool:
        return bool(fileio.fcntl.fcntl(fd, fileio.fcntl.F_GETFL) & os.O_DIRECT)

    def overlay_fsync(fd: int) -> None:
        if direct(fd):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    def overlay_close(fd: int) -> None:
        on = direct(fd)
        real_close(fd)
        if on:
            raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(fileio.os, "fsync", overlay_fsync)
    monkeypatch.setattr(fileio.os, "close", overlay_close)
    writer = fileio.DirectWriter(str(tmp_path / "small"))
    assert writer.direct
    writer.write(b"twelve bytes")
    assert writer.finish() == 12
    assert (tmp_path / "small").read_bytes() == b"twelve bytes"
    abandoned = fileio.DirectWriter(str(tmp_path / "abandoned"))
    abandoned.write(b"x")
    abandoned.close()
    assert abandoned.fd == -1
