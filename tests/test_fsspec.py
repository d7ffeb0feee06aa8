"""`dsv://` through fsspec (issue 13): pandas and pyarrow read any version's files from a
workspace's store or straight from an S3 remote with no store, and a Dask cluster of
worker processes computes over a versioned directory of Parquet files on S3."""

from __future__ import annotations

import json
import os
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from conftest import Result, in_a_forked_child, write_tree
from faultproxy import FaultProxy
from servers import create_bucket


def _ok(res: Result) -> Result:
    assert res.code == 0, res.err
    return res


def _frame(seed: int, rows: int = 400) -> pd.DataFrame:
    return pd.DataFrame({"key": [f"k{(i * 7 + seed) % 13}" for i in range(rows)],
                         "value": [(i * 31 + seed) % 1000 for i in range(rows)]})


def _dataset(tmp_path: Path, dsv) -> Path:
    """`raw`: train.csv and four Parquet parts; v1 is tagged, then train.csv changes."""
    ws = tmp_path / "raw"
    (ws / "parts").mkdir(parents=True)
    _frame(0).to_csv(ws / "train.csv", index=False)
    for i in range(4):
        _frame(i + 1).to_parquet(ws / "parts" / f"part-{i}.parquet")
    (ws / "big.bin").write_bytes(os.urandom(5 << 20))   # a chunked file
    _ok(dsv("init", ws, cwd=tmp_path))
    _ok(dsv("commit", "-m", "v1", cwd=ws))
    _ok(dsv("tag", "raw:latest", "v1", cwd=ws))
    _frame(9).to_csv(ws / "train.csv", index=False)
    _ok(dsv("commit", "-m", "v2", cwd=ws))
    return ws


def test_pandas_reads_versions_of_a_workspace(tmp_path, dsv, monkeypatch):
    ws = _dataset(tmp_path, dsv)
    v1 = json.loads(_ok(dsv("versions", "details", "raw:v1", "--json", cwd=ws)).out)["id"]
    monkeypatch.chdir(ws)  # the store is found as the CLI finds it
    for ref in ("raw:v1", f"raw:{v1}", "raw:latest~1", f"raw:{v1[:6]}"):
        pd.testing.assert_frame_equal(pd.read_csv(f"dsv://{ref}/train.csv"), _frame(0))
    pd.testing.assert_frame_equal(pd.read_csv("dsv://raw/train.csv"), _frame(9))
    pd.testing.assert_frame_equal(pd.read_parquet("dsv://raw:v1/parts/part-2.parquet"),
                                  _frame(3))
    monkeypatch.chdir(tmp_path)  # elsewhere: the store named
    opts = {"store": str(ws)}
    pd.testing.assert_frame_equal(
        pd.read_csv("dsv://raw:latest/train.csv", storage_options=opts), _frame(9))
    fs = fsspec.filesystem("dsv", **opts)
    assert fs.glob("raw:v1/parts/*.parquet") == [f"raw:v1/parts/part-{i}.parquet"
                                                for i in range(4)]
    info = fs.info("raw:v1/train.csv")
    assert info["type"] == "file" and info["size"] == len(_frame(0).to_csv(index=False).encode())
    assert fs.ls("raw:v1", detail=False) == ["raw:v1/big.bin", "raw:v1/parts",
                                             "raw:v1/train.csv"]
    big = (ws / "big.bin").read_bytes()
    assert fs.cat_file("raw:v1/big.bin", start=4_000_000, end=4_000_100) == \
        big[4_000_000:4_000_100]
    with fs.open("raw:v1/big.bin") as f:
        f.seek(-10, os.SEEK_END)
        assert f.read() == big[-10:]
    with pytest.raises(FileNotFoundError):
        fs.info("raw:v1/nope.csv")
    with pytest.raises(PermissionError):
        fs.open("raw:v1/train.csv", "wb")


def _pushed(tmp_path: Path, dsv, endpoint: str) -> tuple[Path, str]:
    ws = _dataset(tmp_path, dsv)
    bucket = f"dsv-fs-{os.urandom(6).hex()}"
    create_bucket(endpoint, bucket)
    url = f"s3://{bucket}/data"
    _ok(dsv("remote", "add", "origin", url, "--endpoint-url", endpoint, cwd=ws))
    _ok(dsv("push", cwd=ws))
    return ws, url


def test_pandas_reads_straight_from_s3_with_no_store(tmp_path, dsv, s3_endpoint, aws_env):
    ws, url = _pushed(tmp_path, dsv, s3_endpoint)
    opts = {"remote": url, "endpoint_url": s3_endpoint, "cache": str(tmp_path / "cache")}
    pd.testing.assert_frame_equal(
        pd.read_csv("dsv://raw:v1/train.csv", storage_options=opts), _frame(0))
    pd.testing.assert_frame_equal(
        pd.read_parquet("dsv://raw:latest/parts/part-0.parquet", storage_options=opts),
        _frame(1))
    fs = fsspec.filesystem("dsv", **opts)
    big = (ws / "big.bin").read_bytes()
    assert fs.cat_file("raw:latest/big.bin", start=3 << 20, end=(3 << 20) + 4096) == \
        big[3 << 20:(3 << 20) + 4096]
    assert fs.ukey("raw:v1/big.bin") == fs.info("raw:latest/big.bin")["hash"]
    assert os.listdir(tmp_path / "cache" / "loc") and os.listdir(tmp_path / "cache" / "loose")


@pytest.mark.slow
def test_dask_workers_aggregate_parquet_of_a_version_on_s3(tmp_path, dsv, s3_endpoint,
                                                           aws_env):
    """A LocalCluster of two worker processes reads a versioned directory of Parquet
    files through dsv:// from S3 (no store anywhere): the aggregate equals pandas'
    over the original files."""
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    ws, url = _pushed(tmp_path, dsv, s3_endpoint)
    expected = pd.concat([pd.read_parquet(ws / "parts" / f"part-{i}.parquet")
                          for i in range(4)]).groupby("key")["value"].sum().sort_index()
    opts = {"remote": url, "endpoint_url": s3_endpoint, "cache": str(tmp_path / "cache")}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        frame = dd.read_parquet("dsv://raw:v1/parts", storage_options=opts)
        assert frame.npartitions == 4
        got = frame.groupby("key")["value"].sum().compute().sort_index()
    assert {str(k): int(v) for k, v in got.items()} == \
        {str(k): int(v) for k, v in expected.items()} and len(expected) == 13


def test_reads_from_many_short_lived_threads_keep_descriptors_bounded(tmp_path, dsv):
    """Each operation borrows a Store from a small pool: a caller that runs every read on
    a new thread (libfuse does, for `dsv mount`) must not open new descriptors each
    time (it ran out of them after about 9,900 files)."""
    import threading
    ws = _dataset(tmp_path, dsv)
    fs = fsspec.filesystem("dsv", store=str(ws), skip_instance_cache=True)
    expected = (ws / "big.bin").read_bytes()[:1000]

    def read(i: int, out: list[bytes]) -> None:
        out.append(fs.cat_file("raw:v1/big.bin", start=0, end=1000) if i % 2 else
                   fs.cat_file("raw:v1/parts/part-1.parquet", start=0, end=4))
    fs.cat_file("raw:v1/train.csv")  # (the pool's first Stores)
    before = len(os.listdir("/proc/self/fd"))
    got: list[bytes] = []
    for i in range(300):
        t = threading.Thread(target=read, args=(i, got))
        t.start()
        t.join()
    assert len(got) == 300 and expected in got and b"PAR1" in got
    assert len(os.listdir("/proc/self/fd")) - before < 20


def test_files_of_a_directory_opened_in_order_are_read_ahead(tmp_path, dsv, s3_endpoint,
                                                           aws_env):
    """Opening a directory's small files one after another (a `cat` through a mount, a
    data loader walking a folder) reads them a window at a time, the window doubling;
    opened out of order, each is one ranged GET. Every byte is the pushed file's."""
    ws = tmp_path / "imgs"
    files = {f"img/{i:03d}.bin": os.urandom(900 + i) for i in range(120)}
    for rel, data in files.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_bytes(data)
    _ok(dsv("init", ws, cwd=tmp_path))
    _ok(dsv("commit", "-m", "v1", cwd=ws))
    bucket = f"dsv-fs-{os.urandom(6).hex()}"
    create_bucket(s3_endpoint, bucket)
    url = f"s3://{bucket}/data"
    _ok(dsv("remote", "add", "origin", url, "--endpoint-url", s3_endpoint, cwd=ws))
    _ok(dsv("push", cwd=ws))

    def pack_gets(order: list[str]) -> int:
        with FaultProxy(s3_endpoint) as proxy:
            fs = fsspec.filesystem("dsv", remote=url, endpoint_url=proxy.url,
                                   skip_instance_cache=True)
            for rel in order:
                with fs.open(f"imgs:latest/{rel}") as f:
                    assert f.read() == files[rel], rel
            return sum(1 for _m, target, _w in proxy.log if "/packs/" in target)

    in_order = sorted(files)
    # windows of 1, 2, 4, … files after the first two opens: 1 + log2(120) GETs or so
    assert pack_gets(in_order) <= 9
    assert pack_gets(in_order[::-1]) == len(files)


def _named(tmp_path: Path, dsv) -> tuple[Path, str]:
    """`data`: a.txt, a file named `%61.txt`, sub2/b.txt; pushed to a directory remote."""
    ws = tmp_path / "data"
    (ws / "sub2").mkdir(parents=True)
    (ws / "a.txt").write_bytes(b"hello")
    (ws / "%61.txt").write_bytes(b"percent")
    (ws / "sub2" / "b.txt").write_bytes(b"bee")
    _ok(dsv("init", ws, cwd=tmp_path))
    _ok(dsv("commit", "-m", "v1", cwd=ws))
    _ok(dsv("remote", "add", "origin", tmp_path / "remote", cwd=ws))
    _ok(dsv("push", cwd=ws))
    return ws, str(tmp_path / "remote")


# Paths that name nothing: a path is taken literally, as fsspec's memory file system and
# object stores take it (`.`, `..` and empty components are no names; `%61` is not `a`).
_NAMING_NOTHING = ["data/sub/../a.txt", "data/./a.txt", "data//a.txt", "data/../a.txt",
                   "data/sub2/../../x", "data/.", "data/sub2/./b.txt", "data/a.txt\0",
                   "data/%61%2etxt", "data/.dsv/index.db", "nope:v1/a.txt", "data:nope/a.txt"]


@pytest.mark.parametrize("where", ["store", "remote"])
def test_every_method_takes_a_path_literally(tmp_path, dsv, where):
    """ls, info, exists, isdir, isfile, open, cat, cat_file, find, glob, walk, du and get
    agree on every path: one that names nothing (`..`, `.`, `//`, NUL, an unknown ref) is
    FileNotFoundError (an OSError), or absent, for each of them, never a dsv error."""
    ws, remote = _named(tmp_path, dsv)
    opts = {"store": str(ws)} if where == "store" else {"remote": remote}
    fs = fsspec.filesystem("dsv", skip_instance_cache=True, **opts)
    assert fs.cat("dsv://data/%61.txt") == b"percent" and fs.cat("data/a.txt/") == b"hello"
    assert fs.cat_file("data/sub2/b.txt", start=1, end=3) == b"ee"
    for path in _NAMING_NOTHING:
        for call in (fs.ls, fs.info, fs.open, fs.cat, fs.ukey,
                     lambda p: fs.cat_file(p, start=1, end=3),
                     lambda p: fs.get(p, str(tmp_path / "out"))):
            with pytest.raises(FileNotFoundError):
                call(f"dsv://{path}")
        assert not fs.exists(path) and not fs.isdir(path) and not fs.isfile(path), path
        assert fs.find(path) == [] and fs.glob(path) == [] and fs.glob(f"{path}*") == []
        assert list(fs.walk(path)) == [] and fs.du(path) == 0, path
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["store", "remote", "cache"])
def test_ranges_of_every_kind_of_file_read_as_python_slices(tmp_path, dsv, where):
    """cat_file with a negative, reversed or too long range, cat_ranges, read_block (what
    Dask's read_csv calls), head and tail, and the open file's `size`, as fsspec's own
    files have, on a small, a loose and a chunked file. (Before: AttributeError "no
    attribute 'size'" for a negative start, and a reversed range read the rest of a small
    file or raised ValueError.)"""
    ws = tmp_path / "data"
    files = {"small.txt": b"0123456789", "loose.bin": os.urandom((2 << 20) + 7),
             "big.bin": os.urandom(5 << 20)}
    for name, data in files.items():
        (ws / name).parent.mkdir(exist_ok=True)
        (ws / name).write_bytes(data)
    _ok(dsv("init", ws, cwd=tmp_path))
    _ok(dsv("commit", "-m", "v1", cwd=ws))
    _ok(dsv("remote", "add", "origin", tmp_path / "remote", cwd=ws))
    _ok(dsv("push", cwd=ws))
    opts = {"store": {"store": str(ws)}, "remote": {"remote": str(tmp_path / "remote")},
            "cache": {"remote": str(tmp_path / "remote"), "cache": str(tmp_path / "c")}}[where]
    fs = fsspec.filesystem("dsv", skip_instance_cache=True, **opts)
    for name, d in files.items():
        path, n = f"data/{name}", len(d)
        for start, end in [(None, None), (-5, None), (1, -1), (-3, -1), (n + 10, None),
                           (5, 2), (0, n + 100), (-n - 9, 4), (3, 3), (None, -2)]:
            assert fs.cat_file(path, start=start, end=end) == d[start:end], (name, start, end)
        assert fs.cat_ranges([path, path], [0, 3], [2, 9]) == [d[0:2], d[3:9]]
        assert fs.read_block(path, 2, 5) == d[2:7] and fs.read_block(path, n - 3, 50) == d[-3:]
        assert fs.head(path, 4) == d[:4] and fs.tail(path, 4) == d[-4:]
        with fs.open(path) as f:
            assert f.size == n
            f.seek(n + 100)
            assert f.read() == b""


def test_a_file_system_used_before_a_fork_reads_in_the_forked_worker(tmp_path, dsv):
    """A PyTorch DataLoader (fork start method) copies a Dataset whose file system has
    already read: the worker must not use the parent's reader threads (they do not exist
    in the child: a read through them waited for ever) nor its remote connections and
    SQLite handles. Files of one directory lie in two packs, so reads read ahead with
    several GETs at once."""
    ws = tmp_path / "imgs"
    files = {f"d/{i:03d}.bin": os.urandom(500 + i) for i in range(80)}
    for i, (rel, data) in enumerate(files.items()):
        if i % 2 == 0:
            (ws / rel).parent.mkdir(parents=True, exist_ok=True)
            (ws / rel).write_bytes(data)
    _ok(dsv("init", ws, cwd=tmp_path))
    _ok(dsv("commit", "-m", "evens", cwd=ws))
    _ok(dsv("remote", "add", "origin", tmp_path / "remote", cwd=ws))
    _ok(dsv("push", cwd=ws))
    for i, (rel, data) in enumerate(files.items()):
        if i % 2:
            (ws / rel).write_bytes(data)
    _ok(dsv("commit", "-m", "odds", cwd=ws))
    _ok(dsv("push", cwd=ws))   # (a second pack: neighbours alternate between the two)
    order = sorted(files)
    for opts in ({"remote": str(tmp_path / "remote")}, {"store": str(ws)}):
        fs = fsspec.filesystem("dsv", skip_instance_cache=True, **opts)
        for rel in order[:4]:   # (in order: read ahead, several GETs in parallel)
            assert fs.cat(f"imgs/{rel}") == files[rel]
        in_a_forked_child(lambda: all(fs.cat(f"imgs/{rel}") == files[rel]
                                      for rel in order[4:]))
        assert all(fs.cat(f"imgs/{rel}") == files[rel] for rel in order[4:])  # the parent


@pytest.mark.parametrize("where", ["store", "remote"])
def test_a_symlink_opens_as_the_file_it_leads_to_within_the_version(tmp_path, dsv, where):
    """`find` lists a symlink, and the kernel would open one through to its file: `open`
    and `cat_file` raised FileNotFoundError. A link (a chain of them, each resolved as
    the kernel resolves it) now opens as the file it leads to; one that leads to a
    directory or nowhere is FileNotFoundError still. `info` and `readlink` show the link."""
    ws = tmp_path / "data"
    write_tree(ws, {"sub/b.txt": b"bee", "big.bin": os.urandom(5 << 20)})
    os.symlink("sub/b.txt", ws / "cur")
    os.symlink("../cur", ws / "sub" / "again")     # (a link to a link)
    os.symlink("big.bin", ws / "big.link")
    os.symlink("sub", ws / "dir.link")
    os.symlink("gone.txt", ws / "dangling")
    _ok(dsv("init", ws, cwd=tmp_path))
    _ok(dsv("commit", "-m", "v1", cwd=ws))
    _ok(dsv("remote", "add", "origin", tmp_path / "remote", cwd=ws))
    _ok(dsv("push", cwd=ws))
    opts = {"store": str(ws)} if where == "store" else {"remote": str(tmp_path / "remote")}
    fs = fsspec.filesystem("dsv", skip_instance_cache=True, **opts)
    assert fs.cat_file("data/cur") == b"bee" and fs.cat_file("data/sub/again") == b"bee"
    assert fs.cat_file("data/big.link") == (ws / "big.bin").read_bytes()
    with fs.open("data/sub/again") as f:
        assert f.size == 3 and f.read() == b"bee"
    for path in ("data/dir.link", "data/dangling"):
        with pytest.raises(FileNotFoundError):
            fs.cat_file(path)
    assert fs.info("data/cur")["type"] == "link" and fs.readlink("data/cur") == "sub/b.txt"
