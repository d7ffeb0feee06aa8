"""Progress by bytes inside large files: checkout copies and push uploads move the bar piece
by piece while a large file moves, and every byte is counted exactly once (a recording
reporter sees what a progress bar would). Copy pieces are made 1 MiB here, so a few MiB
show several of them."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest

from dsv import chunking, fileio
from dsv.remotes import s3
from dsv.remotes.layout import loose_key
from dsv.reporting import Advance, FileBytes, Reporter
from dsv.store import Store
from dsv.worktree import Materializer

MiB = 1 << 20
BIG = 5 * MiB + 123   # above PACK_THRESHOLD: a loose object, copied and uploaded whole


class Recorder(Reporter):
    """Every advance of every task, in order, with the totals the task announced."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[int, int]]] = {}
        self.totals: dict[str, tuple[int | None, int | None]] = {}

    @contextmanager
    def task(self, label: str, total_items: int | None = None,
             total_bytes: int | None = None) -> Iterator[Advance]:
        seen = self.calls.setdefault(label, [])
        self.totals[label] = (total_items, total_bytes)
        yield lambda items, nbytes: seen.append((items, nbytes))

    def sums(self, label: str) -> tuple[int, int]:
        calls = self.calls[label]
        return sum(i for i, _ in calls), sum(n for _, n in calls)


@pytest.fixture(autouse=True)
def _small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileio, "PROGRESS_CHUNK", MiB)
    # Loose objects are what these tests follow (stores written before chunking, imports):
    # no file here is stored in chunks.
    monkeypatch.setattr(chunking, "CHUNK_THRESHOLD", 1 << 40)


def _store(root: Path, files: dict[str, bytes]) -> Store:
    root.mkdir()
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    store = Store.init(root, name="data")
    store.commit("first", key="data")
    return store


# ---- fileio.copy_into ----------------------------------------------------------------------

def _copy(tmp_path: Path, data: bytes) -> tuple[list[int], bytes]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    calls: list[int] = []
    s = os.open(src, os.O_RDONLY)
    d = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fileio.copy_into(s, d, len(data), calls.append)
    finally:
        os.close(s)
        os.close(d)
    return calls, dst.read_bytes()


def test_copy_into_reports_each_piece_once(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 512)
    calls, copied = _copy(tmp_path, data)
    assert calls == [MiB, MiB, MiB, 512]
    assert copied == data


def test_copy_into_falling_back_to_read_write_counts_on_from_where_it_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel copy gives up after one piece (another filesystem, say): the read/write
    loop carries on, and the piece already reported is not reported again."""
    real = os.copy_file_range
    done = [0]

    def once(src: int, dst: int, count: int, offset_src: int | None = None,
             offset_dst: int | None = None) -> int:
        if done[0]:
            raise OSError(errno.EXDEV, "cross-device")
        done[0] += 1
        return real(src, dst, count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", once)
    monkeypatch.setattr(fileio, "_READ_CHUNK", 2 * MiB)
    data = os.urandom(5 * MiB + 7)
    calls, copied = _copy(tmp_path, data)
    assert calls == [MiB, 2 * MiB, 2 * MiB, 7]
    assert copied == data


# ---- checkout ------------------------------------------------------------------------------

def test_checkout_of_a_large_file_moves_the_bar_while_it_is_copied(tmp_path: Path) -> None:
    """The large file's pieces arrive before it counts as a file done, alongside small
    files placed by another thread; bytes and files add up to the totals exactly."""
    big = os.urandom(BIG)
    store = _store(tmp_path / "ws", {"big.bin": big, "a.txt": b"alpha\n", "b/c.txt": b"c" * 99})
    store.close()
    rec = Recorder()
    with Store.open(tmp_path / "ws", reporter=rec) as st:
        st.checkout("data:latest", to=tmp_path / "out", link="copy")
    calls = rec.calls["checkout"]
    pieces = [n for items, n in calls if items == 0]
    assert pieces == [MiB] * 5 + [123], calls
    done_big = calls.index((1, 0))          # the large file, done: nothing left to count
    assert all(calls.index((0, n)) < done_big for n in pieces)
    assert rec.sums("checkout") == rec.totals["checkout"] == (3, BIG + 6 + 99)
    assert (tmp_path / "out" / "big.bin").read_bytes() == big


def test_a_redone_copy_is_not_counted_twice(tmp_path: Path) -> None:
    """A twin that fails verification (here larger than the object, and damaged) is
    copied, then the object: the bar still moves by exactly the file's size."""
    big = os.urandom(BIG)
    store = _store(tmp_path / "ws", {"big.bin": big})
    core = store.core
    entry = core.manifest(core.resolve("data:latest"))["big.bin"]
    twin = tmp_path / "twin"
    twin.write_bytes(os.urandom(BIG + 3 * MiB))
    out = tmp_path / "out"
    out.mkdir()
    calls: list[tuple[int, int]] = []
    placer = Materializer(core.objects, out, "copy", stat_rows=False,
                          twins={entry.oid: str(twin)})
    placer.place([("big.bin", entry)], lambda items, n: calls.append((items, n)))
    store.close()
    assert (out / "big.bin").read_bytes() == big
    assert sum(n for _, n in calls) == BIG and sum(i for i, _ in calls) == 1, calls
    assert all(n >= 0 for _, n in calls), calls   # not made up for by a negative advance
    assert len([c for c in calls if c[0] == 0]) >= 5 and calls[-1][0] == 1


def test_copy_out_reports_a_redone_copy_only_beyond_where_the_first_got(tmp_path: Path) -> None:
    big = os.urandom(BIG)
    store = _store(tmp_path / "ws", {"big.bin": big})
    core = store.core
    oid = core.manifest(core.resolve("data:latest"))["big.bin"].oid
    twin = tmp_path / "twin"
    twin.write_bytes(big[:2 * MiB])         # a shorter, stale copy
    advances: list[tuple[int, int]] = []
    size = core.objects.copy_out(oid, str(tmp_path / "dest"), 0o644, "never", str(twin),
                                 FileBytes(lambda i, n: advances.append((i, n)), BIG))
    store.close()
    calls = [n for _i, n in advances]
    assert size == BIG and sum(calls) == BIG
    assert calls == [MiB, MiB, MiB, MiB, MiB, 123]
    assert (tmp_path / "dest").read_bytes() == big


# ---- push ----------------------------------------------------------------------------------

def _pushed(rec: Recorder, size: int) -> list[tuple[int, int]]:
    """The push's advances; checks the large file's pieces come first (blobs are sent before
    trees and records, and the dataset holds no other blob), then it counts as done with
    nothing left over, and the totals add up."""
    calls = rec.calls["pushing"]
    first_done = next(i for i, (items, _) in enumerate(calls) if items)
    pieces = calls[:first_done]
    assert len(pieces) >= 3, calls
    assert sum(n for _, n in pieces) == size and all(n > 0 for _, n in pieces)
    assert calls[first_done] == (1, 0), calls
    assert rec.sums("pushing") == rec.totals["pushing"]
    assert all(n >= 0 for _, n in calls), calls
    return calls


def test_push_to_a_directory_moves_the_bar_while_a_large_file_uploads(tmp_path: Path) -> None:
    big = os.urandom(BIG)
    store = _store(tmp_path / "ws", {"big.bin": big})
    store.add_remote("origin", str(tmp_path / "remote"), cwd=tmp_path / "ws")
    store.close()
    rec = Recorder()
    with Store.open(tmp_path / "ws", reporter=rec) as st:
        st.push()
    calls = _pushed(rec, BIG)
    assert calls[:6] == [(0, MiB)] * 5 + [(0, 123)]


def test_an_upload_rewound_or_overcounted_by_the_backend_moves_the_bar_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3 reports a negative count when it rewinds a part to retry it; a backend might
    even report more than the file holds. The bar moves only past the furthest point
    reached, never beyond the file's size."""
    from dsv.remotes.fs import FsBackend

    real = FsBackend.put_file

    def flaky(self: FsBackend, key: str, path: str, progress=None) -> None:  # noqa: ANN001
        assert progress is not None
        progress(3 * MiB)
        progress(-3 * MiB)      # rewound: sent again from the start
        real(self, key, path, progress)
        progress(MiB)           # more than the file holds

    monkeypatch.setattr(FsBackend, "put_file", flaky)
    store = _store(tmp_path / "ws", {"big.bin": os.urandom(BIG)})
    store.add_remote("origin", str(tmp_path / "remote"), cwd=tmp_path / "ws")
    store.close()
    rec = Recorder()
    with Store.open(tmp_path / "ws", reporter=rec) as st:
        st.push()
    calls = _pushed(rec, BIG)
    assert calls[:4] == [(0, 3 * MiB), (0, MiB), (0, MiB), (0, 123)], calls


def test_push_to_s3_moves_the_bar_while_a_large_file_uploads_in_parts(
        tmp_path: Path, s3_endpoint: str, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A multipart upload (three parts, sent by several threads) moves the bar as boto3
    reports, and the file's bytes are counted once."""
    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", 5 * MiB)
    monkeypatch.setattr(s3, "MULTIPART_CHUNK", 5 * MiB)  # S3's smallest part
    bucket = f"b{os.urandom(4).hex()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    size = 11 * MiB + 123
    big = os.urandom(size)
    store = _store(tmp_path / "ws", {"big.bin": big})
    store.add_remote("origin", f"s3://{bucket}/ds", endpoint_url=s3_endpoint,
                     cwd=tmp_path / "ws")
    store.close()
    rec = Recorder()
    with Store.open(tmp_path / "ws", reporter=rec) as st:
        st.push()
    _pushed(rec, size)
    with Store.open(tmp_path / "ws") as st:
        oid = st.core.manifest(st.core.resolve("data:latest"))["big.bin"].oid
    body = boto3.client("s3", endpoint_url=s3_endpoint).get_object(
        Bucket=bucket, Key=f"ds/{loose_key(oid)}")["Body"].read()
    assert body == big


def test_a_download_read_again_after_bad_bytes_counts_each_byte_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large file that arrives corrupt is read again from the origin; the bar shows the
    second read only beyond where the first got, and the totals stay exact."""
    from dsv.remotes.fs import FsBackend

    big = os.urandom(BIG)
    store = _store(tmp_path / "ws", {"big.bin": big})
    store.add_remote("origin", str(tmp_path / "remote"), cwd=tmp_path / "ws")
    store.push()
    store.close()
    real = FsBackend.download
    served: list[str] = []

    def flaky(self: FsBackend, key: str) -> Iterator[bytes]:
        first = not served
        served.append(key)
        for i, chunk in enumerate(real(self, key)):
            yield bytes([chunk[0] ^ 1]) + chunk[1:] if first and i == 0 else chunk

    monkeypatch.setattr(FsBackend, "download", flaky)
    monkeypatch.setattr("dsv.remotes.fs._PIECE", MiB)
    rec = Recorder()
    dest = tmp_path / "clone"
    cloned, _report = Store.clone(str(tmp_path / "remote"), dest, reporter=rec)
    cloned.close()
    assert (dest / "big.bin").read_bytes() == big and len(served) == 2
    calls = rec.calls["pulling large files"]
    assert rec.sums("pulling large files") == rec.totals["pulling large files"] == (1, BIG)
    assert calls[:6] == [(0, MiB)] * 5 + [(0, 123)], calls  # the second read shows nothing new
    assert all(n >= 0 for _, n in calls)
